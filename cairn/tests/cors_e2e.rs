//! End-to-end on the real binary: CORS on `cairn up` and `cairn run
//! gateway`, and the gateway's own `/openapi.json` and `/api/projections`
//! composed from a real upstream (`cairn up --ephemeral`, whose API the
//! gateway serves on another address).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

const CONSOLE: &str = "http://console.example";

/// A process of ours, stopped when the test ends however it ends.
struct Proc {
    child: Child,
    base: String,
    /// `cairn up --dev`'s token.
    token: Option<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cairn(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.args(args);
    for var in [
        "CAIRN_STORE",
        "CAIRN_CONFIG",
        "CAIRN_LISTEN",
        "CAIRN_CORS_ORIGIN",
        "CAIRN_CORS_MAX_AGE",
        "CAIRN_ISSUER",
        "CAIRN_IDENTITY_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Starts `cmd` and reads its banner, from the line starting `marker` (the
/// address) to the one starting `last` (and, for `cairn up --dev`, the
/// token).
fn start(mut cmd: Command, marker: &str, last: &str) -> Proc {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cairn binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut token) = (None, None);
    loop {
        let Some(line) = lines.next() else {
            panic!("{marker} exited before its banner ended");
        };
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(marker) {
            base = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim_start().strip_prefix("token:") {
            token = Some(rest.trim().to_owned());
        }
        if base.is_some() && line.trim_start().starts_with(last) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Proc {
        child,
        base: base.expect("the address was printed"),
        token,
    }
}

fn up(extra: &[&str]) -> Proc {
    let mut args = vec!["up", "--ephemeral", "--listen", "127.0.0.1:0", "--dev"];
    args.extend_from_slice(extra);
    start(cairn(&args), "cairn up: listening on ", "stop:")
}

async fn preflight(client: &Client, url: &str, origin: &str) -> reqwest::Response {
    client
        .request(Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

fn allow_origin(r: &reqwest::Response) -> Option<&str> {
    r.headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn cairn_up_answers_preflights_for_its_allowed_origin() {
    let up = up(&["--cors-origin", CONSOLE, "--cors-max-age", "300"]);
    let client = Client::new();
    for path in [
        "/api/flights",
        "/api/flights/0190b3f0-0000-7000-8000-000000000000/departure",
        "/realms/demo/protocol/openid-connect/token",
        "/nowhere",
    ] {
        let r = preflight(&client, &format!("{}{path}", up.base), CONSOLE).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(allow_origin(&r), Some(CONSOLE), "{path}");
        assert_eq!(r.headers()["access-control-max-age"], "300");
        let r = preflight(
            &client,
            &format!("{}{path}", up.base),
            "http://evil.example",
        )
        .await;
        assert!(allow_origin(&r).is_none(), "{path}");
    }
    // The actual request: the answer (here a created flight) is readable,
    // headers and all, by the console's page.
    let token = up.token.clone().unwrap();
    let r = client
        .post(format!("{}/api/flights", up.base))
        .header("origin", CONSOLE)
        .bearer_auth(&token)
        .json(&serde_json::json!({
            "number": "SK1421", "origin": "ARN", "destination": "LHR",
            "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z",
            "capacity": 180
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(allow_origin(&r), Some(CONSOLE));
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in ["location", "etag", "x-cairn-position"] {
        assert!(exposed.contains(h), "{h}: {exposed}");
        assert!(r.headers().contains_key(h), "{h} is sent");
    }
}

#[test]
fn a_wildcard_with_credentials_is_refused_at_start_up() {
    for args in [
        &[
            "up",
            "--ephemeral",
            "--listen",
            "127.0.0.1:0",
            "--cors-origin",
            "*",
            "--cors-credentials",
        ][..],
        &[
            "run",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--insecure-tenant-header",
            "--route",
            "/=http://127.0.0.1:9",
            "--cors-origin",
            "*",
            "--cors-credentials",
        ][..],
        &[
            "up",
            "--ephemeral",
            "--listen",
            "127.0.0.1:0",
            "--cors-origin",
            "console.example",
        ][..],
    ] {
        let out = cairn(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--cors-origin"), "{args:?}: {err}");
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("listening on"),
            "{args:?} listened before refusing"
        );
    }
}

#[tokio::test]
async fn the_gateway_composes_openapi_and_projections_and_answers_preflights() {
    let up = up(&[]);
    let token = up.token.clone().unwrap();
    let gateway = start(
        cairn(&[
            "run",
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            &up.base,
            "--route",
            &format!("/api/flights={}", up.base),
            "--route",
            &format!("/realms={}", up.base),
            "--cors-origin",
            CONSOLE,
        ]),
        "cairn run gateway: listening on ",
        // Its banner's last line but one; these tests always give origins.
        "cors:",
    );
    let gw = &gateway.base;
    let client = Client::new();

    // The merged document: what the gateway routes, not what it does not.
    let r = client
        .get(format!("{gw}/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/api/flights"), "{:?}", paths.keys());
    assert!(
        paths.contains_key("/api/flights/{id}"),
        "{:?}",
        paths.keys()
    );
    assert!(
        paths.keys().any(|p| p.starts_with("/realms/")),
        "{:?}",
        paths.keys()
    );
    assert!(paths.contains_key("/health/ready"));
    assert!(
        !paths
            .keys()
            .any(|p| p.starts_with("/api/passengers") || p.starts_with("/api/audit")),
        "not routed by this gateway: {:?}",
        paths.keys()
    );
    assert!(doc["components"]["schemas"]["Problem"].is_object());

    // The projections, through the gateway: a token at the edge, then the
    // upstream's own list.
    let r = client
        .get(format!("{gw}/api/projections"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client
        .get(format!("{gw}/api/projections"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let list: Value = r.json().await.unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(!names.is_empty(), "{list}");
    let direct: Value = client
        .get(format!("{}/api/projections", up.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let direct_names: Vec<&str> = direct
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, direct_names);
    let r = client
        .get(format!("{gw}/api/projections/{}", names[0]))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["name"], names[0]);
    let r = client
        .get(format!("{gw}/api/projections/no-such-projection"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Preflights are the gateway's own, on any path.
    for path in [
        "/api/flights",
        "/api/projections",
        "/realms/demo/protocol/openid-connect/token",
    ] {
        let r = preflight(&client, &format!("{gw}{path}"), CONSOLE).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(allow_origin(&r), Some(CONSOLE), "{path}");
        let r = preflight(&client, &format!("{gw}{path}"), "http://evil.example").await;
        assert!(allow_origin(&r).is_none(), "{path}");
    }
    let r = client
        .get(format!("{gw}/api/flights"))
        .header("origin", CONSOLE)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(allow_origin(&r), Some(CONSOLE));
}
