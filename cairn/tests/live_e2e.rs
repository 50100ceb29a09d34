//! The live API of a real `cairn up`, over a real WebSocket: a token from
//! the demo realm, then flights listed, created, read and departed through
//! `/ws` with the RES protocol, and refused without a token.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio_tungstenite::{
    connect_async,
    tungstenite::{Message, client::IntoClientRequest},
};

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

async fn token(up: &Up) -> String {
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/realms/demo/protocol/openid-connect/token",
            up.base
        ))
        .form(&[
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", up.demo_password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let body: Json = r.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

struct Client {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    events: Vec<Json>,
}

impl Client {
    async fn connect(up: &Up, token: Option<&str>) -> Self {
        let mut request = format!("ws://{}/ws", up.base)
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let (ws, _) = connect_async(request).await.expect("the upgrade succeeds");
        Self {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    async fn request(&mut self, method: &str, params: Json) -> Json {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "id": id, "method": method });
        if !params.is_null() {
            request["params"] = params;
        }
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("an answer in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                let frame: Json = serde_json::from_str(&text).unwrap();
                if frame["id"] == json!(id) {
                    return frame;
                }
                if frame.get("event").is_some() {
                    self.events.push(frame);
                }
            }
        }
    }

    /// Events until one of each name has come (the last of each name).
    async fn events_until(&mut self, names: &[String]) -> std::collections::HashMap<String, Json> {
        let mut seen = std::collections::HashMap::new();
        while !names.iter().all(|n| seen.contains_key(n)) {
            let event = self.event().await;
            let name = event["event"].as_str().unwrap().to_owned();
            seen.insert(name, event);
        }
        seen
    }

    /// The next event.
    async fn event(&mut self) -> Json {
        if !self.events.is_empty() {
            return self.events.remove(0);
        }
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("an event in time")
                .expect("the connection is open")
                .unwrap();
            if let Message::Text(text) = message {
                let frame: Json = serde_json::from_str(&text).unwrap();
                assert!(frame.get("event").is_some(), "{frame}");
                return frame;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flights_are_listed_created_read_and_departed_over_the_live_api() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up, Some(&token)).await;
    let r = client
        .request("version", json!({"protocol": "1.2.3"}))
        .await;
    assert_eq!(r["result"]["protocol"], "1.2.3");
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
    let mut anonymous = Client::connect(&up, None).await;
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
    // A service that serves no live resources yet.
    let r = anonymous.request("get.ops.projections", Json::Null).await;
    assert_eq!(r["error"]["code"], "system.notFound", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_http_changes_is_pushed_to_live_clients_after_the_read_model_shows_it() {
    let up = start();
    let token = token(&up).await;
    let mut client = Client::connect(&up, Some(&token)).await;
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
    let mut client = Client::connect(&up, Some(&token)).await;
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
    let mut client = Client::connect(&up, Some(&token)).await;
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
