//! Node's test runner on the JavaScript tests of `cairn/tests/js`, for the
//! tests that start a server (`js_clients.rs`: `cairn up`; `run_e2e.rs`:
//! the gateway in front of services run apart).
//!
//! They need `node`, the packages of `cairn/tests/js` (`npm ci` there,
//! which `.ci/run` does) and, for the console, `/usr/bin/chromium`: when
//! one is missing they say so and skip, unless
//! `CAIRN_TEST_SERVICES=required`, where its absence is a failure.

#![allow(dead_code)]

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long one file's tests may run in all (each test bounds itself
/// well within this).
const LIMIT: Duration = Duration::from_secs(300);

pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

pub(crate) fn required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").as_deref() == Ok("required")
}

pub(crate) fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Whether everything `file` needs is here; if not, says what is missing
/// and skips, or fails when `CAIRN_TEST_SERVICES=required`.
pub(crate) fn ready(file: &str, needs_chromium: bool) -> bool {
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

/// Where screenshots go: `<target dir>/test-artifacts/console/<under>`,
/// the target dir being the one this test's `cairn` was built into.
pub(crate) fn artifacts(under: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("cairn is built under <target>/<profile>/");
    target.join("test-artifacts/console").join(under)
}

/// Runs `node --test` on `file` against the server at `base` (host:port,
/// its `/realms` serving demo's admin with `demo_password`) and fails,
/// printing everything node printed, unless every test passed. Its
/// screenshots go to [`artifacts`]`(under)`.
pub(crate) fn run_node(file: &str, base: &str, demo_password: &str, under: &str) {
    let artifacts = artifacts(under);
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut node = Command::new("node");
    // A group of its own, so that a run past the limit is ended with
    // everything it started (the test file's process, Chromium).
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut node, 0);
    let mut child = node
        .args(["--test", "--test-reporter=spec", file])
        .current_dir(js_dir())
        .env("CAIRN_BASE", base)
        .env("CAIRN_DEMO_PASSWORD", demo_password)
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
