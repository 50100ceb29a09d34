//! Real clients against a real `cairn up`: the JavaScript tests in
//! `cairn/tests/js` run with Node's test runner, one `#[test]` per file.
//! `resclient.test.mjs` speaks the live API with Resgate's own client
//! (`resclient` from npm); `console.test.mjs` drives the web console in
//! Debian's Chromium through `playwright-core`, saving screenshots under
//! `<target dir>/test-artifacts/console/up`.
//! What they need, and when they skip, is in `support/js.rs`.

#[path = "support/js.rs"]
mod js;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use js::{ready, run_node};

/// Runs `node --test` on `file` against a fresh `cairn up`.
fn run(file: &str) {
    let up = start();
    run_node(file, &up.base, &up.demo_password, "up");
}

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
