//! The live API of a real `cairn up`, over a real WebSocket: a token from
//! the demo realm, then flights listed, created, read and departed through
//! `/ws` with the RES protocol, and refused without a token.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

#[path = "support/ws.rs"]
mod ws;

use serde_json::{Value as Json, json};
use ws::Client;

struct Up {
    child: Child,
    base: String,
    demo_password: String,
    platform_password: String,
    _dir: tempfile::TempDir,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let (mut base, mut demo_password, mut platform_password) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("cairn up: listening on http://") {
            base = Some(rest.trim().to_owned());
        }
        if line.contains("tenant platform") {
            platform_password = line
                .split_once("password: ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned);
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
        platform_password: platform_password.expect("cairn up printed platform's password"),
        _dir: dir,
    }
}

async fn token(up: &Up) -> String {
    token_of(up, "demo", &up.demo_password).await
}

async fn token_of(up: &Up, tenant: &str, password: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/realms/{tenant}/protocol/openid-connect/token",
            up.base
        ))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let body: Json = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_are_listed_created_read_and_departed_over_the_live_api() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up.base, Some(&token)).await;
    let r = client
        .request("version", json!({"protocol": "1.2.3"}))
        .await;
    assert_eq!(r["result"]["protocol"], "1.2.3");
    // Open connections are counted on /metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", up.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_live_connections ")?.parse().ok())
        .unwrap_or_else(|| panic!("no cairn_live_connections in {metrics}"));
    assert!(open >= 1.0, "{open}");
    let r = client
        .request("subscribe.flights.flights", Json::Null)
        .await;
    assert_eq!(
        r["result"]["collections"]["flights.flights"],
        json!([]),
        "{r}"
    );

    let r = client
        .request(
            "call.flights.flights.create",
            json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                   "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                   "capacity": 30}),
        )
        .await;
    let flight = r["result"]["rid"]
        .as_str()
        .expect("the new flight")
        .to_owned();
    assert!(flight.starts_with("flights.flight."), "{r}");
    assert_eq!(r["result"]["models"][&flight]["status"], "scheduled", "{r}");
    assert_eq!(
        r["result"]["models"][&flight]["passengers"],
        json!({"data": {"total": 0, "boarded": 0}})
    );

    let r = client.request("get.flights.flights", Json::Null).await;
    assert_eq!(
        r["result"]["collections"]["flights.flights"],
        json!([{ "rid": flight }])
    );
    let r = client
        .request(&format!("call.{flight}.depart"), Json::Null)
        .await;
    assert_eq!(r["result"]["payload"]["readModel"], "current", "{r}");
    let r = client.request(&format!("get.{flight}"), Json::Null).await;
    assert_eq!(r["result"]["models"][&flight]["status"], "departed", "{r}");
    // A rule refused: departed already.
    let r = client
        .request(&format!("call.{flight}.depart"), Json::Null)
        .await;
    assert!(
        r["error"]["code"].as_str().unwrap().starts_with("cairn."),
        "{r}"
    );

    // Without a token nothing opens; a token given later does.
    let mut anonymous = Client::connect(&up.base, None).await;
    let r = anonymous.request("get.flights.flights", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");
    let r = anonymous
        .request(
            "auth.identity.session.token",
            json!({"token": "not.a.token"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");
    let r = anonymous
        .request("auth.identity.session.token", json!({"token": token}))
        .await;
    assert_eq!(r["result"]["payload"]["tenant"], "demo", "{r}");
    let r = anonymous
        .request(&format!("get.{flight}"), Json::Null)
        .await;
    assert_eq!(r["result"]["models"][&flight]["number"], "SK1421", "{r}");
    // A service that serves no live resources.
    let r = anonymous.request("get.nothing.here", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.notFound", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_http_changes_is_pushed_to_live_clients_after_the_read_model_shows_it() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up.base, Some(&token)).await;
    let r = client
        .request("subscribe.flights.flights", Json::Null)
        .await;
    assert_eq!(
        r["result"]["collections"]["flights.flights"],
        json!([]),
        "{r}"
    );

    let http = reqwest::Client::new();
    let created: Json = http
        .post(format!("http://{}/api/flights", up.base))
        .bearer_auth(&token)
        .json(
            &json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                      "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                      "capacity": 30}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a flight id").to_owned();
    let flight = format!("flights.flight.{id}");
    let event = client.event().await;
    assert_eq!(event["event"], "flights.flights.add", "{event}");
    assert_eq!(event["data"]["idx"], 0, "{event}");
    assert_eq!(event["data"]["value"], json!({ "rid": flight }), "{event}");
    assert_eq!(
        event["data"]["models"][&flight]["status"], "scheduled",
        "{event}"
    );

    let r = http
        .post(format!("http://{}/api/flights/{id}/departure", up.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // The flight, held through the list's reference, changes; the list
    // itself does not.
    let event = client.event().await;
    assert_eq!(event["event"], format!("{flight}.change"), "{event}");
    assert_eq!(event["data"]["values"]["status"], "departed", "{event}");
    let r = client.request("version", Json::Null).await;
    assert!(r.get("result").is_some());
    assert!(
        client
            .events
            .iter()
            .all(|e| e["event"] != "flights.flights.add"),
        "{:?}",
        client.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passengers_move_live_and_the_flights_counts_with_them() {
    let up = start();
    let token = token(&up).await;
    let http = reqwest::Client::new();
    let created: Json = http
        .post(format!("http://{}/api/flights", up.base))
        .bearer_auth(&token)
        .json(
            &json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
                      "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                      "capacity": 30}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let (flight, manifest) = (
        format!("flights.flight.{id}"),
        format!("passengers.flight.{id}"),
    );
    let mut client = Client::connect(&up.base, Some(&token)).await;
    let r = client
        .request(&format!("subscribe.{flight}"), Json::Null)
        .await;
    assert_eq!(
        r["result"]["models"][&flight]["passengers"],
        json!({"data": {"total": 0, "boarded": 0}}),
        "{r}"
    );
    let r = client
        .request(&format!("subscribe.{manifest}"), Json::Null)
        .await;
    assert_eq!(r["result"]["collections"][&manifest], json!([]), "{r}");

    // Added over HTTP: the manifest grows, the flight counts it.
    let added: Json = http
        .post(format!("http://{}/api/passengers", up.base))
        .bearer_auth(&token)
        .json(&json!({"flightId": id, "name": "Ada Lovelace", "document": "P1234567"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let passenger = format!("passengers.passenger.{}", added["id"].as_str().unwrap());
    let seen = client
        .events_until(&[format!("{manifest}.add"), format!("{flight}.change")])
        .await;
    let add = &seen[&format!("{manifest}.add")];
    assert_eq!(add["data"]["value"], json!({ "rid": passenger }), "{add}");
    assert_eq!(add["data"]["models"][&passenger]["boarded"], false, "{add}");
    let counts = &seen[&format!("{flight}.change")];
    assert_eq!(
        counts["data"]["values"]["passengers"],
        json!({"data": {"total": 1, "boarded": 0}}),
        "{counts}"
    );

    // Boarded live: the passenger and the counts change.
    let r = client
        .request(&format!("call.{passenger}.board"), Json::Null)
        .await;
    assert_eq!(r["result"]["payload"]["readModel"], "current", "{r}");
    let seen = client
        .events_until(&[format!("{passenger}.change"), format!("{flight}.change")])
        .await;
    let boarded = &seen[&format!("{passenger}.change")];
    assert_eq!(boarded["data"]["values"]["boarded"], true, "{boarded}");
    let counts = &seen[&format!("{flight}.change")];
    assert_eq!(
        counts["data"]["values"]["passengers"],
        json!({"data": {"total": 1, "boarded": 1}}),
        "{counts}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_moves_live_newest_first() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up.base, Some(&token)).await;
    let scheduled = "audit.log?type=FlightScheduled";
    let r = client
        .request(&format!("subscribe.{scheduled}"), Json::Null)
        .await;
    assert_eq!(r["result"]["collections"][scheduled], json!([]), "{r}");
    let r = client
        .request("subscribe.audit.log?colour=red", Json::Null)
        .await;
    assert_eq!(r["error"]["code"], "system.invalidQuery", "{r}");

    let http = reqwest::Client::new();
    for number in ["SK1", "SK2"] {
        let r = http
            .post(format!("http://{}/api/flights", up.base))
            .bearer_auth(&token)
            .json(
                &json!({"number": number, "origin": "ARN", "destination": "LHR",
                          "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                          "capacity": 30}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let event = client.event().await;
        assert_eq!(event["event"], format!("{scheduled}.add"), "{event}");
        // Newest first: each new entry goes on top.
        assert_eq!(event["data"]["idx"], 0, "{event}");
        let entry = &event["data"]["value"]["data"];
        assert_eq!(entry["type"], "FlightScheduled", "{event}");
        assert_eq!(entry["data"]["number"], number, "{event}");
    }
    let r = client
        .request(&format!("get.{scheduled}"), Json::Null)
        .await;
    let entries = r["result"]["collections"][scheduled]
        .as_array()
        .unwrap()
        .clone();
    let numbers: Vec<&Json> = entries
        .iter()
        .map(|e| &e["data"]["data"]["number"])
        .collect();
    assert_eq!(numbers, [&json!("SK2"), &json!("SK1")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_loses_its_live_subscriptions_within_a_second() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up.base, Some(&token)).await;
    let r = client
        .request("subscribe.flights.flights", Json::Null)
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/realms/demo/protocol/openid-connect/revoke",
            up.base
        ))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let revoked = std::time::Instant::now();
    let event = client.event().await;
    let took = revoked.elapsed();
    assert_eq!(event["event"], "flights.flights.unsubscribe", "{event}");
    assert_eq!(event["data"]["reason"]["code"], "system.accessDenied");
    assert_eq!(event["data"]["reason"]["data"]["code"], "revoked");
    // The session checks its token twice a second; a second is the promise.
    assert!(
        took <= Duration::from_millis(1500),
        "ended {took:?} after the revocation"
    );
    let r = client.request("get.flights.flights", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_are_live_for_admins() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up.base, Some(&token)).await;
    let r = client
        .request("subscribe.ops.projections", Json::Null)
        .await;
    let names: Vec<&str> = r["result"]["collections"]["ops.projections"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|v| v["rid"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"ops.projection.flights.flights"), "{r}");
    let flights = &r["result"]["models"]["ops.projection.flights.flights"];
    assert_eq!(flights["state"], "running", "{r}");
    assert!(flights["lag"].is_u64(), "{r}");
    let r = client.request("subscribe.ops.consumers", Json::Null).await;
    assert!(
        !r["result"]["collections"]["ops.consumers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{r}"
    );
    let r = client.request("subscribe.ops.store", Json::Null).await;
    let head = r["result"]["models"]["ops.store"]["head"].as_u64().unwrap();
    let r = client
        .request("subscribe.ops.deadletters", Json::Null)
        .await;
    assert_eq!(
        r["result"]["collections"]["ops.deadletters"],
        json!([]),
        "{r}"
    );
    let r = client.request("get.ops.nothing", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.notFound", "{r}");
    let r = client
        .request(
            "call.ops.deadletter.consumer.x.passengers.replay",
            Json::Null,
        )
        .await;
    assert_eq!(r["error"]["code"], "system.notFound", "{r}");

    // A write moves the store's head and the projection's position live.
    let r = client
        .request(
            "call.flights.flights.create",
            json!({"number": "SK1", "origin": "ARN", "destination": "LHR",
                   "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                   "capacity": 3}),
        )
        .await;
    assert!(r.get("result").is_some(), "{r}");
    loop {
        let event = client.event().await;
        if event["event"] == "ops.store.change"
            && event["data"]["values"]["head"]
                .as_u64()
                .is_some_and(|h| h > head)
        {
            break;
        }
    }

    // Without a token every ops resource is refused.
    let mut anonymous = Client::connect(&up.base, None).await;
    let r = anonymous.request("get.ops.store", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_super_admin_reads_another_tenant_live_read_only_and_audited() {
    let up = start();
    let demo = token(&up).await;
    let platform = token_of(&up, "platform", &up.platform_password).await;
    // Demo's admin cannot name another tenant.
    let mut client = Client::connect(&up.base, None).await;
    let r = client
        .request(
            "auth.identity.session.token",
            json!({"token": demo, "tenant": "platform"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");

    let mut root = Client::connect(&up.base, None).await;
    let r = root
        .request(
            "auth.identity.session.token",
            json!({"token": platform, "tenant": "demo"}),
        )
        .await;
    assert_eq!(r["result"]["payload"]["tenant"], "demo", "{r}");
    assert_eq!(r["result"]["payload"]["crossTenant"], true, "{r}");
    let r = root.request("subscribe.flights.flights", Json::Null).await;
    assert!(r.get("result").is_some(), "{r}");
    let r = root
        .request(
            "call.flights.flights.create",
            json!({"number": "SK9", "origin": "ARN", "destination": "LHR",
                   "departure": "2030-06-01T08:00:00Z", "arrival": "2030-06-01T10:30:00Z",
                   "capacity": 3}),
        )
        .await;
    assert_eq!(r["error"]["code"], "system.accessDenied", "{r}");

    // The read is in demo's audit log, as an HTTP cross-tenant read is.
    let mut found = None;
    for _ in 0..50 {
        let r: Json = reqwest::Client::new()
            .get(format!(
                "http://{}/api/audit?type=CrossTenantRead&limit=10",
                up.base
            ))
            .bearer_auth(&demo)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(item) = r["items"].as_array().and_then(|items| items.first()) {
            found = Some(item.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = found.expect("the cross-tenant read is audited in demo");
    assert!(found.to_string().contains("flights.flights"), "{found}");
}
