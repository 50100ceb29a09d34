//! The README's tour, run as printed: every `sh` block between "A short
//! tour" and "Separate processes", line by line, in one shell, against a
//! fresh `cairn up` in a fresh directory, with the `cairn` under test first
//! on `PATH`. What the harness changes, and only this:
//! - `localhost:8080` / `127.0.0.1:8080` become the address the server got;
//! - `<demo password>` and `<platform password>` become what it printed
//!   (any other `<…>` left in a command fails the test: an example must
//!   not need the reader to invent values);
//! - lines running `cairn bench` are left out (minutes each; `bench_cli.rs`
//!   runs every suite small), and so are lines naming a `postgres://`
//!   database, which the reader brings (`events_cli.rs` runs those).
//!
//! A line whose comment says `exit N` must exit with N; every other line
//! must exit 0.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

/// The README's runnable tour as a bash script, and the lines left out.
fn tour_script(readme: &str, base: &str, passwords: &[(&str, &str)]) -> (String, Vec<String>) {
    let start = readme.find("## A short tour").expect("the tour heading");
    let end = readme[start..]
        .find("### Separate processes")
        .map_or(readme.len(), |i| start + i);
    let mut script = String::from("set -o pipefail\n");
    let mut left_out = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme[start..end].lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        let full = std::mem::take(&mut pending) + line;
        let code = command_part(&full).trim().to_owned();
        if code.is_empty() {
            continue;
        }
        if code.starts_with("cairn bench") || code.contains("postgres://") {
            left_out.push(full);
            continue;
        }
        let mut command = code
            .replace("localhost:8080", base)
            .replace("127.0.0.1:8080", base);
        for (placeholder, value) in passwords {
            command = command.replace(placeholder, value);
        }
        assert!(
            !has_placeholder(&command),
            "a README example needs a value the reader must invent: {full}"
        );
        let expected = expected_exit(&full);
        let shown = full.replace('\'', r"'\''");
        script.push_str(&format!(
            "printf '+ %s\\n' '{shown}'\n{command}\nrc=$?\n\
             if [ $rc -ne {expected} ]; then printf 'README: exit %s, not {expected}: %s\\n' \"$rc\" '{shown}' >&2; exit 1; fi\n\
             echo\n"
        ));
    }
    (script, left_out)
}

/// A line without its trailing comment (a `#` after white space).
fn command_part(line: &str) -> &str {
    if line.trim_start().starts_with('#') {
        return "";
    }
    let bytes = line.as_bytes();
    (1..bytes.len())
        .find(|&i| bytes[i] == b'#' && bytes[i - 1].is_ascii_whitespace())
        .map_or(line, |i| &line[..i])
}

/// The exit code a line's comment promises (`exit N`), else 0.
fn expected_exit(line: &str) -> i32 {
    let comment = &line[command_part(line).len()..];
    comment
        .split("exit ")
        .skip(1)
        .find_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// A `<word …>` left for the reader to fill in (not a shell redirection).
fn has_placeholder(command: &str) -> bool {
    let mut rest = command;
    while let Some(i) = rest.find('<') {
        let after = &rest[i + 1..];
        if let Some(j) = after.find('>') {
            let inner = &after[..j];
            if !inner.is_empty()
                && inner
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                && inner
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            {
                return true;
            }
        }
        rest = after;
    }
    false
}

#[test]
fn the_harness_reads_lines_as_a_reader_would() {
    assert_eq!(command_part("curl -s x   # 409 until"), "curl -s x   ");
    assert_eq!(command_part("# a comment"), "");
    assert_eq!(command_part("echo a#b"), "echo a#b");
    assert_eq!(expected_exit("cairn x   # stale: error, exit 1"), 1);
    assert_eq!(expected_exit("cairn x   # refused, exit 2: missing"), 2);
    assert_eq!(expected_exit("cairn x   # exits early"), 0);
    assert!(has_placeholder("curl -d password=<printed>"));
    assert!(has_placeholder("curl x/<id>/departure"));
    assert!(!has_placeholder("cairn x < input.json"));
    assert!(!has_placeholder("jq -n '{a: 1}' | curl -d @-"));
    let (script, left_out) = tour_script(
        "## A short tour\n```sh\nPW='<demo password>'\ncurl localhost:8080/x \\\n  -d a   # exit 3\ncairn bench store\n```\n### Separate processes\n```sh\nnot this\n```\n",
        "127.0.0.1:9",
        &[("<demo password>", "secret")],
    );
    assert!(script.contains("PW='secret'"), "{script}");
    assert!(script.contains("curl 127.0.0.1:9/x   -d a"), "{script}");
    assert!(script.contains("if [ $rc -ne 3 ]"), "{script}");
    assert!(!script.contains("not this"));
    assert_eq!(left_out, ["cairn bench store"]);
}

#[test]
fn the_readme_tour_runs_as_printed() {
    for tool in ["curl", "jq", "timeout"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let required = std::env::var("CAIRN_TEST_SERVICES").is_ok_and(|v| v == "required");
            assert!(
                !required,
                "{tool} is needed to run the README tour (.ci/run installs it)"
            );
            eprintln!("skipping the README tour: {tool} is not installed");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let cairn = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let clean_env = |cmd: &mut Command| {
        for (key, _) in std::env::vars() {
            if key.starts_with("CAIRN_") {
                cmd.env_remove(key);
            }
        }
    };
    let mut up = Command::new(cairn);
    up.args(["up", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    clean_env(&mut up);
    let mut server = up.spawn().expect("cairn up starts");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let (mut base, mut demo, mut platform) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("cairn up: listening on http://") {
            base = Some(rest.trim().to_owned());
        }
        let password = line
            .split_once("password: ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned);
        if line.contains("tenant demo") {
            demo = password.clone();
        }
        if line.contains("tenant platform") {
            platform = password;
        }
        if line.trim_start().starts_with("stop:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let base = base.expect("cairn up printed its address");
    let (demo, platform) = (
        demo.expect("demo's password"),
        platform.expect("platform's"),
    );

    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let (script, left_out) = tour_script(
        &readme,
        &base,
        &[
            ("<demo password>", demo.as_str()),
            ("<platform password>", platform.as_str()),
        ],
    );
    eprintln!("left out of the run: {left_out:#?}");
    let path = format!(
        "{}:{}",
        cairn.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut shell = Command::new("timeout");
    shell
        .args(["300", "bash", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("RUST_LOG", "error");
    clean_env(&mut shell);
    let out = shell.output().expect("bash runs");
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the tour stopped:\n{stderr}\n--- its output:\n{stdout}"
    );

    // It did what the README says it does.
    for (said, what) in [
        ("HTTP/1.1 201 Created", "a flight was scheduled"),
        (
            "\"status\":\"departed\"",
            "the flight departed once boarded",
        ),
        ("\"rule\":", "the early departure was refused with its rule"),
        (
            "\"status\":\"degraded\"",
            "readiness named the stopped read model",
        ),
        (
            "\"state\":\"failed\"",
            "the CLI listed the failed projection",
        ),
        (
            "\"reason\":\"skipped\"",
            "the skipped event is in the dead letters",
        ),
        ("\"id\":\"globex\"", "a tenant was created"),
        ("\"openapi\":", "the OpenAPI document was served"),
        ("cairn_http_requests_total", "metrics were served"),
    ] {
        assert!(stdout.contains(said), "{what}: no {said:?} in\n{stdout}");
    }
    for refused in [
        "\"status\":500",
        "\"status\":502",
        "\"status\":503",
        "\"code\":\"missing_token\"",
        "\"code\":\"malformed_token\"",
        "\"code\":\"invalid_signature\"",
    ] {
        assert!(!stdout.contains(refused), "{refused} in\n{stdout}");
    }
}
