//! Interoperability: tokens minted by an independent implementation (PyJWT,
//! RS256, its own JWKS served on loopback) are accepted by `cairn up` when
//! that issuer is trusted for a tenant, and refused when it is not.
//!
//! PyJWT and `cryptography` are installed from PyPI into a virtual
//! environment outside the clone (`CAIRN_TEST_PYENV`, default
//! `~/.cache/cairn-test-pyjwt`), once. Without Python or PyPI the test
//! skips, unless `CAIRN_TEST_SERVICES=required`.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").as_deref() == Ok("required")
}

/// A Python with PyJWT and cryptography, installed on first use.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("CAIRN_TEST_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/cairn-test-pyjwt")
        });
    let python = venv.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import jwt, cryptography"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready() {
        return Some(python);
    }
    let made = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "PyJWT>=2.8",
                "cryptography>=42",
            ])
            .status()
            .is_ok_and(|s| s.success());
    if made && ready() {
        return Some(python);
    }
    assert!(
        !required(),
        "PyJWT could not be installed into {}",
        venv.display()
    );
    eprintln!("skipping: PyJWT could not be installed (Python or PyPI unavailable)");
    None
}

fn start_cairn(trust: Option<String>) -> (Killed, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(["up", "--ephemeral", "--listen", "127.0.0.1:0"]);
    if let Some(spec) = trust {
        cmd.args(["--trust-issuer", &spec]);
    }
    let mut child = cmd
        .env_remove("CAIRN_STORE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cairn starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("cairn up printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("cairn up: listening on ") {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_an_independent_issuer_work_only_when_it_is_trusted() {
    let Some(python) = python() else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/pyjwt_issuer.py");
    let mut issuer = Command::new(python)
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the PyJWT issuer starts");
    let mut first = String::new();
    BufReader::new(issuer.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _issuer = Killed(issuer);
    let minted: Value = serde_json::from_str(&first).expect("the issuer printed its tokens");
    let token = |name: &str| minted["tokens"][name].as_str().unwrap().to_owned();
    let spec = format!(
        "tenant=acme,issuer={},jwks={},audience=account,alg=RS256",
        minted["issuer"].as_str().unwrap(),
        minted["jwks"].as_str().unwrap()
    );
    let client = Client::new();
    let flight = json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
        "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z", "capacity": 180});

    // Trusted for tenant acme: the operator writes and reads acme's flights.
    let (_cairn, base) = start_cairn(Some(spec));
    let r = client
        .post(format!("{base}/api/flights"))
        .bearer_auth(token("valid"))
        .json(&flight)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let url = format!("{base}/api/flights/{}", created["id"].as_str().unwrap());
    let r = client
        .get(&url)
        .bearer_auth(token("valid"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Keycloak-style roles: a viewer reads, does not write.
    let r = client
        .get(&url)
        .bearer_auth(token("viewer"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client
        .post(format!("{base}/api/flights"))
        .bearer_auth(token("viewer"))
        .json(&flight)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // Expired, wrong audience, another tenant claimed: refused.
    for name in ["expired", "wrong_audience", "wrong_tenant"] {
        let r = client
            .get(&url)
            .bearer_auth(token(name))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{name}");
    }

    // Not trusted: the same valid token is refused.
    let (_untrusting, other) = start_cairn(None);
    let r = client
        .get(format!("{other}/api/flights"))
        .bearer_auth(token("valid"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
