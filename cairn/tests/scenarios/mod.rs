//! The scenarios every deployment shape must pass, from product.md: the
//! whole system in one `cairn up` process, or each service in its own
//! `cairn run` process behind a router. Each scenario takes an [`App`]: a
//! base URL that serves the whole API.
//!
//! What differs between the shapes is said where it matters: run apart,
//! Flights learns passenger counts from Passengers' events (eventually),
//! and the audit log is in arrival order rather than log order.

#![allow(dead_code, unreachable_pub)]

use std::{process::Child, time::Duration};

use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

/// The API under test, and the process behind it if there is one (killed
/// when dropped).
pub struct App {
    pub child: Option<Child>,
    pub base: String,
    pub client: Client,
    /// The services run as separate processes.
    pub separate: bool,
    /// How a request acts for another tenant (`globex`).
    pub other: OtherTenant,
}

/// How a request acts for another tenant.
#[derive(Debug, Clone)]
pub enum OtherTenant {
    /// Without authentication: `X-Cairn-Tenant` names it.
    Header(String),
    /// With authentication: a token of that tenant.
    Token(String),
}

/// A client that sends `token` as its bearer token.
pub fn bearer_client(token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    Client::builder().default_headers(headers).build().unwrap()
}

/// Asks `base`'s realm `tenant` for a token with a password.
pub async fn login(base: &str, tenant: &str, username: &str, password: &str) -> Value {
    let r = Client::new()
        .post(format!(
            "{base}/realms/{tenant}/protocol/openid-connect/token"
        ))
        .form(&[
            ("grant_type", "password"),
            ("username", username),
            ("password", password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "login {tenant}/{username}");
    r.json().await.unwrap()
}

/// As the platform's super-admin: creates tenant `tenant` and a user in it
/// with `role`; returns that user's access token.
pub async fn user_in(base: &str, admin: &str, tenant: &str, username: &str, role: &str) -> String {
    let client = bearer_client(admin);
    let r = client
        .post(format!("{base}/api/admin/tenants"))
        .json(&json!({"id": tenant, "name": tenant}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status() == StatusCode::CREATED || r.status() == StatusCode::CONFLICT,
        "{}",
        r.status()
    );
    let r = client
        .post(format!("{base}/api/admin/tenants/{tenant}/users"))
        .json(&json!({"username": username, "password": "a long password", "roles": [role]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    login(base, tenant, username, "a long password").await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl App {
    /// `request`, made by a caller of the other tenant.
    pub fn as_other(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.other {
            OtherTenant::Header(tenant) => request.header("x-cairn-tenant", tenant),
            OtherTenant::Token(token) => request.bearer_auth(token),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn create_flight(&self, capacity: u32) -> Value {
        let r = self.post("/api/flights", flight(capacity)).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    pub async fn add_passenger(&self, flight: &str, document: &str) -> Response {
        self.post(
            "/api/passengers",
            json!({"flightId": flight, "name": "Ada Lovelace", "document": document}),
        )
        .await
    }

    /// Reads `path` until `done` holds (bounded): for what arrives through
    /// events between processes.
    pub async fn eventually(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..300 {
            let r = self.get(path).await;
            if r.status() == StatusCode::OK {
                last = r.json().await.unwrap();
                if done(&last) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} never reached the expected state; last read: {last}");
    }
}

pub fn flight(capacity: u32) -> Value {
    json!({"number": "SK1421", "origin": "ARN", "destination": "LHR",
           "departure": "2026-12-01T08:00:00Z", "arrival": "2026-12-01T10:30:00Z",
           "capacity": capacity})
}

pub async fn problem(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

pub async fn lifecycle(app: &App) {
    // Schedule: 201, Location, ETag, position, the flight's shape.
    let r = app.post("/api/flights", flight(2)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(r.headers()["etag"], "\"0\"");
    let position: u64 = r.headers()["x-cairn-position"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let f: Value = r.json().await.unwrap();
    let id = f["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/flights/{id}"));
    assert_eq!(f["status"], "scheduled");
    assert_eq!(f["passengers"], json!({"total": 0, "boarded": 0}));
    assert_eq!(f["version"], 0);
    let read: Value = app
        .get(&format!("{location}?minPosition={position}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read, f);

    // Passengers: seats, duplicate documents.
    let ada: Value = {
        let r = app.add_passenger(&id, "P1234567").await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    };
    assert_eq!(ada["flightId"], id.as_str());
    assert_eq!(ada["boarded"], false);
    let body = problem(
        app.add_passenger(&id, "P1234567").await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "duplicate_document");
    let bob: Value = app.add_passenger(&id, "B1").await.json().await.unwrap();
    let body = problem(
        app.add_passenger(&id, "C1").await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "no_seats_left");

    // Landing before departure, departure before boarding: 409.
    let body = problem(
        app.post(&format!("/api/flights/{id}/landing"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "flight_not_departed");
    let body = problem(
        app.post(&format!("/api/flights/{id}/departure"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "passengers_not_boarded");
    assert_eq!(
        (body["total"].clone(), body["boarded"].clone()),
        (json!(2), json!(0))
    );

    // Remove Bob, board Ada, then depart.
    let r = app
        .client
        .delete(app.url(&format!("/api/passengers/{}", bob["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .post(
            &format!("/api/passengers/{}/boarding", ada["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["boarded"], true);
    let r = app
        .post(&format!("/api/flights/{id}/departure"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let departed: Value = r.json().await.unwrap();
    assert_eq!(departed["status"], "departed");
    if app.separate {
        // Counts reach Flights through Passengers' events: eventually.
        app.eventually(&location, |f| {
            f["passengers"] == json!({"total": 1, "boarded": 1})
        })
        .await;
    } else {
        assert_eq!(departed["passengers"], json!({"total": 1, "boarded": 1}));
    }

    // No one joins a departed flight; rescheduling is over too.
    let body = problem(
        app.add_passenger(&id, "D1").await,
        StatusCode::CONFLICT,
        "rule_violation",
    )
    .await;
    assert_eq!(body["rule"], "flight_not_scheduled");
    let r = app
        .client
        .patch(app.url(&location))
        .json(&json!({"departure": "2026-12-01T09:00:00Z", "arrival": "2026-12-01T11:00:00Z"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::CONFLICT, "rule_violation").await;
    let r = app
        .post(&format!("/api/flights/{id}/landing"), json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let landed_at = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "landed");

    // The audit log has every event, filterable and paged.
    let audit: Value = app
        .get(&format!(
            "/api/audit?stream=flight-{id}&limit=2&minPosition={landed_at}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 2);
    if !app.separate {
        // One log: the audit is in log order. Fed by two services'
        // consumers, it is in arrival order instead.
        assert_eq!(audit["items"][0]["type"], "FlightScheduled");
    }
    let next = audit["next"].as_str().unwrap();
    let page2: Value = app
        .get(&format!(
            "/api/audit?stream=flight-{id}&limit=2&after={next}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert!(page2["items"][0]["seq"].as_u64() > audit["items"][1]["seq"].as_u64());
    let landed: Value = app
        .get(&format!(
            "/api/audit?type=FlightLanded&minPosition={landed_at}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(landed["total"], 1);
}

pub async fn deleting_a_flight_removes_its_passengers(app: &App) {
    let f = app.create_flight(10).await;
    let id = f["id"].as_str().unwrap();
    for doc in ["A1", "A2", "A3"] {
        assert_eq!(
            app.add_passenger(id, doc).await.status(),
            StatusCode::CREATED
        );
    }
    let r = app
        .client
        .delete(app.url(&format!("/api/flights/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let position = r.headers()["x-cairn-position"].to_str().unwrap().to_owned();
    let left: Value = app
        .get(&format!(
            "/api/passengers?flightId={id}&minPosition={position}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(left["total"], 0, "{left}");
    problem(
        app.get(&format!("/api/flights/{id}?minPosition={position}"))
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let removed: Value = app
        .get(&format!(
            "/api/audit?type=PassengerRemoved&minPosition={position}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(removed["total"], 3);
}

pub async fn bad_input_gets_a_problem(app: &App) {
    let r = app
        .client
        .post(app.url("/api/flights"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST, "malformed_request").await;
    let mut bad = flight(0);
    bad["origin"] = json!("arn");
    let body = problem(
        app.post("/api/flights", bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["origin", "capacity"]);
    problem(
        app.post("/api/flights", json!({"number": 7})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    // 413 for an oversized body is proven by cairn-http's own tests on the same
    // stack; through a real client the server may close before the client has
    // written the whole body (a broken pipe), so it is not asserted here.
    for path in [
        "/api/flights/not-a-uuid",
        "/api/flights/01a1fd30-9631-7316-a9ef-25ba0202ac35",
    ] {
        problem(app.get(path).await, StatusCode::NOT_FOUND, "not_found").await;
    }
    problem(
        app.add_passenger("01a1fd30-9631-7316-a9ef-25ba0202ac35", "A1")
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    // Optimistic concurrency: a stale If-Match is 412 and changes nothing.
    let f = app.create_flight(5).await;
    let url = app.url(&format!("/api/flights/{}", f["id"].as_str().unwrap()));
    let times = json!({"departure": "2026-12-02T08:00:00Z", "arrival": "2026-12-02T10:00:00Z"});
    let r = app
        .client
        .patch(&url)
        .header("if-match", "\"0\"")
        .json(&times)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"1\"");
    let r = app
        .client
        .patch(&url)
        .header("if-match", "\"0\"")
        .json(&times)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PRECONDITION_FAILED, "precondition_failed").await;

    // Idempotency-Key: the same POST again returns the first response.
    let send = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/api/flights"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("k-1", flight(7)).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let created_at = first.headers()["x-cairn-position"]
        .to_str()
        .unwrap()
        .to_owned();
    let first: Value = first.json().await.unwrap();
    let again = send("k-1", flight(7)).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    problem(
        send("k-1", flight(8)).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    )
    .await;
    let all: Value = app
        .get(&format!("/api/flights?limit=200&minPosition={created_at}"))
        .await
        .json()
        .await
        .unwrap();
    let sevens = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["capacity"] == 7)
        .count();
    assert_eq!(sevens, 1);
}

pub async fn tenants_never_see_each_other(app: &App) {
    let f = app.create_flight(3).await;
    let id = f["id"].as_str().unwrap();
    let other = |path: String| app.as_other(app.client.get(app.url(&path))).send();
    problem(
        other(format!("/api/flights/{id}")).await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let list: Value = other("/api/flights".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 0);
    let r = app
        .as_other(app.client.post(app.url("/api/passengers")))
        .json(&json!({"flightId": id, "name": "Eve", "document": "E1"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::NOT_FOUND, "not_found").await;
}

pub async fn fifty_bookings_on_thirty_seats(app: &App) {
    let f = app.create_flight(30).await;
    let id = f["id"].as_str().unwrap().to_owned();
    let tries = (0..50).map(|i| {
        let (client, url, id) = (app.client.clone(), app.url("/api/passengers"), id.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"flightId": id, "name": "Passenger", "document": format!("D{i}")}))
                .send()
                .await
                .unwrap()
        })
    });
    let mut created = 0;
    let mut last = 0u64;
    for t in futures_util::future::join_all(tries).await {
        let r = t.unwrap();
        if let Some(p) = r.headers().get("x-cairn-position") {
            last = last.max(p.to_str().unwrap().parse().unwrap());
        }
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 30);
    let flight: Value = if app.separate {
        app.eventually(&format!("/api/flights/{id}"), |f| {
            f["passengers"]["total"] == 30
        })
        .await
    } else {
        app.get(&format!("/api/flights/{id}?minPosition={last}"))
            .await
            .json()
            .await
            .unwrap()
    };
    assert_eq!(flight["passengers"]["total"], 30);
    let listed: Value = app
        .get(&format!("/api/passengers?flightId={id}&limit=200"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["total"], 30);
}
