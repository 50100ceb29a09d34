//! Real clients against a real `cairn up`: the JavaScript tests in
//! `cairn/tests/js` run with Node's test runner, one `#[test]` per file.
//! `resclient.test.mjs` speaks the live API with Resgate's own client
//! (`resclient` from npm); `console.test.mjs` drives the web console in
//! Debian's Chromium through `playwright-core`, saving screenshots under
//! `<target dir>/test-artifacts/console`.
//!
//! They need `node`, the packages of `cairn/tests/js` (`npm ci` there,
//! which `.ci/run` does) and, for the console, `/usr/bin/chromium`: when
//! one is missing they say so and skip, unless
//! `CAIRN_TEST_SERVICES=required`, where its absence is a failure.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long one file's tests may run in all (each test bounds itself
/// well within this).
const LIMIT: Duration = Duration::from_secs(300);

const CHROMIUM: &str = "/usr/bin/chromium";

struct Up {
    child: Child,
    base: String,
    demo_password: String,
    _dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cairn up --ephemeral` on a free port, with its address and demo's
/// admin password as it printed them.
fn start() -> Up {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["up", "--ephemeral", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, _) in std::env::vars() {
        if key.starts_with("CAIRN_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().expect("cairn up starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut demo_password) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("cairn up: listening on http://") {
            base = Some(rest.trim().to_owned());
        }
        if line.contains("tenant demo") {
            demo_password = line
                .split_once("password: ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned);
        }
        if line.trim_start().starts_with("stop:") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Up {
        child,
        base: base.expect("cairn up printed its address"),
        demo_password: demo_password.expect("cairn up printed demo's password"),
        _dir: dir,
    }
}

fn required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").as_deref() == Ok("required")
}

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Whether everything `file` needs is here; if not, says what is missing
/// and skips, or fails when `CAIRN_TEST_SERVICES=required`.
fn ready(file: &str, needs_chromium: bool) -> bool {
    let mut missing = Vec::new();
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node {
        missing.push("node is not installed".to_owned());
    }
    let modules = js_dir().join("node_modules");
    if !modules.is_dir() {
        missing.push(format!(
            "{} is missing (`npm ci` in cairn/tests/js; .ci/run does it)",
            modules.display()
        ));
    }
    if needs_chromium && !Path::new(CHROMIUM).exists() {
        missing.push(format!(
            "{CHROMIUM} is missing (apt-get install chromium; .ci/run does it)"
        ));
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("{file} cannot run: {}", missing.join("; "));
    assert!(!required(), "{why}; CAIRN_TEST_SERVICES=required");
    eprintln!("skipping: {why}; set CAIRN_TEST_SERVICES=required to fail instead");
    false
}

/// Where screenshots go: `<target dir>/test-artifacts/console`, the target
/// dir being the one this test's `cairn` was built into.
fn artifacts() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("cairn is built under <target>/<profile>/");
    target.join("test-artifacts/console")
}

/// Runs `node --test` on `file` against a fresh `cairn up` and fails,
/// printing everything node printed, unless every test passed.
fn run(file: &str) {
    let up = start();
    let artifacts = artifacts();
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut node = Command::new("node");
    // A group of its own, so that a run past the limit is ended with
    // everything it started (the test file's process, Chromium).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut node, 0);
    let mut child = node
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(js_dir())
        .env("CAIRN_BASE", &up.base)
        .env("CAIRN_DEMO_PASSWORD", &up.demo_password)
        .env("CAIRN_ARTIFACTS", &artifacts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let readers = [
        read_all(child.stdout.take().unwrap()),
        read_all(child.stderr.take().unwrap()),
    ];
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let [out, err] = readers.map(|r| r.join().unwrap());
    let output = format!("--- node stdout ---\n{out}\n--- node stderr ---\n{err}");
    match status {
        Some(status) if status.success() => println!("{output}"),
        Some(status) => panic!("node --test {file} failed ({status}):\n{output}"),
        None => panic!("node --test {file} ran past {LIMIT:?} and was killed:\n{output}"),
    }
}

fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = from.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[test]
fn resclient_speaks_the_live_api() {
    if ready("resclient.test.mjs", false) {
        run("resclient.test.mjs");
    }
}

#[test]
fn the_console_runs_a_flight_in_chromium() {
    if ready("console.test.mjs", true) {
        run("console.test.mjs");
    }
}
