//! Problem documents, extractor rejections, fallbacks, context, ETag /
//! If-Match and positions, as a client sees them.

use axum::http::StatusCode;
use cairn_http::{PROBLEM_TYPE_BASE, status_for, title_for};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{ALL_CODES, BODY_LIMIT, json_of, spawn};

fn flight() -> Value {
    json!({"number": "SK1421", "capacity": 180})
}

#[tokio::test]
async fn every_error_code_is_a_problem_with_its_status() {
    let app = spawn(None).await;
    for code in ALL_CODES {
        let response = app
            .client
            .get(app.url(&format!("/errors/{code}")))
            .send()
            .await
            .unwrap();
        let (status, _, body) = json_of(response).await;
        assert_eq!(status, status_for(code), "{code}");
        assert_eq!(body["type"], format!("{PROBLEM_TYPE_BASE}{code}"));
        assert_eq!(body["title"], title_for(code));
        assert_eq!(body["status"], status.as_u16());
        assert_eq!(body["code"], code.as_str());
        let detail = body["detail"].as_str().unwrap();
        if status.is_server_error() {
            assert!(!detail.contains("hunter2"), "{code} leaked: {detail}");
        } else {
            assert_eq!(detail, "internal detail password=hunter2");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_handler_error_keeps_its_field_errors() {
    let app = spawn(None).await;
    let (status, _, body) = json_of(
        app.post_flight(&json!({"number": "INVALID", "capacity": 1}), None)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "validation_failed");
    assert_eq!(
        body["errors"],
        json!([{"field": "number", "message": "must look like SK1421"}])
    );
    let (status, _, body) = json_of(
        app.post_flight(&json!({"number": "FAIL500", "capacity": 1}), None)
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body.to_string().contains("hunter2"));
    app.stop().await;
}

async fn post_raw(
    app: &crate::common::TestApp,
    content_type: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = app.client.post(app.url("/flights")).body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let (status, _, body) = json_of(req.send().await.unwrap()).await;
    (status, body)
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn(None).await;
    for body in [
        "",
        "{",
        "{\"number\": \"SK1\",",
        "not json",
        "{\"number\":\"SK1\",\"capacity\":1} x",
        "{} }",
    ] {
        let (status, problem) = post_raw(&app, Some("application/json"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert_eq!(problem["code"], "malformed_request");
    }
    assert_eq!(app.shared.calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn wrong_field_types_and_missing_fields_are_422_with_the_field() {
    let app = spawn(None).await;
    let cases = [
        (r#"{"number":"SK1","capacity":"many"}"#, "capacity"),
        (r#"{"number":7,"capacity":1}"#, "number"),
        (r#"{"capacity":1}"#, "number"),
        (
            r#"{"number":"SK1","capacity":1,"legs":[{"from":1}]}"#,
            "legs[0].from",
        ),
        (r#"{"number":"SK1","capacity":1,"pilot":"x"}"#, "pilot"),
    ];
    for (body, field) in cases {
        let (status, problem) = post_raw(&app, Some("application/json"), body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(problem["code"], "validation_failed");
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
        assert!(
            problem["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    assert_eq!(app.shared.calls(), 0);
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_is_415() {
    let app = spawn(None).await;
    let body = flight().to_string();
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let (status, problem) = post_raw(&app, ct, &body).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ct:?}");
        assert_eq!(problem["code"], "malformed_request");
    }
    let (status, _) = post_raw(&app, Some("application/json; charset=utf-8"), &body).await;
    assert_eq!(status, StatusCode::CREATED);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let app = spawn(None).await;
    let big = json!({"number": "x".repeat(BODY_LIMIT), "capacity": 1}).to_string();
    let (status, problem) = post_raw(&app, Some("application/json"), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["code"], "payload_too_large");
    assert_eq!(app.shared.calls(), 0);
    app.stop().await;
}

/// Sends a chunked POST (no Content-Length, so only reading the body can
/// find it too large) over a raw connection; returns the status line and
/// the rest of the response.
async fn chunked_post(app: &crate::common::TestApp, body: &str, key: Option<&str>) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let key_header = key
        .map(|k| format!("Idempotency-Key: {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /flights HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n{key_header}Connection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(1000) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before reading everything.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413_in_the_extractor_and_in_the_idempotency_layer() {
    let db = crate::common::sqlite_db().await.unwrap();
    let store = db.store(Default::default()).await;
    let app = spawn(Some(&store)).await;
    let big = json!({"number": "x".repeat(BODY_LIMIT), "capacity": 1}).to_string();
    for key in [None, Some("chunked-key")] {
        let response = chunked_post(&app, &big, key).await;
        assert!(response.starts_with("HTTP/1.1 413"), "{key:?}: {response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json")
        );
        assert!(response.contains("\"code\":\"payload_too_large\""));
    }
    let small = flight().to_string();
    let response = chunked_post(&app, &small, Some("chunked-small")).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    assert_eq!(app.shared.calls(), 1);
    app.stop().await;
    db.drop_db().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_as_problems() {
    let app = spawn(None).await;
    let (status, _, body) =
        json_of(app.client.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");

    let (status, headers, body) =
        json_of(app.client.delete(app.url("/flights")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["status"], 405);
    assert_eq!(headers["allow"], "POST");

    let (status, _, _) = json_of(
        app.client
            .put(app.url("/health/live"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

#[tokio::test]
async fn bad_path_and_query_parameters_are_400_naming_the_parameter() {
    let app = spawn(None).await;
    let (status, _, body) = json_of(
        app.client
            .get(app.url("/flights/seven"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "invalid_input");
    assert_eq!(body["errors"][0]["field"], "id");

    for (query, field) in [
        ("limit=ten", "limit"),
        ("after=3", "limit"),
        ("limit=5&after=-1", "after"),
    ] {
        let (status, _, body) = json_of(
            app.client
                .get(app.url(&format!("/search?{query}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(body["errors"][0]["field"], field, "{query}");
    }
    let (status, _, body) = json_of(
        app.client
            .get(app.url("/search?limit=5&other=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"limit": 5})));
    app.stop().await;
}

#[tokio::test]
async fn the_context_comes_from_headers_with_a_default_tenant() {
    let app = spawn(None).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = app
        .client
        .get(app.url("/context"))
        .header("x-cairn-tenant", "acme")
        .header("x-correlation-id", "order-42")
        .header("traceparent", tp)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-correlation-id"], "order-42");
    let (_, _, body) = json_of(response).await;
    assert_eq!(
        body,
        json!({"tenant": "acme", "correlationId": "order-42", "traceparent": tp})
    );

    let response = app.client.get(app.url("/context")).send().await.unwrap();
    let echoed = response.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, _, body) = json_of(response).await;
    assert_eq!(body["tenant"], "demo");
    assert_eq!(body["correlationId"], echoed.as_str());
    assert_eq!(body["traceparent"], Value::Null);

    let (status, _, body) = json_of(
        app.client
            .get(app.url("/context"))
            .header("x-cairn-tenant", "Not/A/Tenant")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "x-cairn-tenant");
    app.stop().await;
}

#[tokio::test]
async fn etag_if_match_and_position_headers() {
    let app = spawn(None).await;
    let response = app.post_flight(&flight(), None).await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["etag"], "\"0\"");
    assert_eq!(response.headers()["x-cairn-position"], "101");

    let response = app.client.get(app.url("/flights/1")).send().await.unwrap();
    assert_eq!(response.headers()["etag"], "\"3\"");

    let cases: [(Option<&str>, u16, Value); 7] = [
        (None, 200, json!("absent")),
        (Some("*"), 200, json!("any")),
        (Some("\"3\""), 200, json!(3)),
        (Some("W/\"3\""), 412, json!("precondition_failed")),
        (Some("\"x\""), 412, json!("precondition_failed")),
        (Some("3"), 400, json!("invalid_input")),
        (Some("\"1\", \"2\""), 400, json!("invalid_input")),
    ];
    for (if_match, status, expected) in cases {
        let mut req = app.client.patch(app.url("/flights/1"));
        if let Some(v) = if_match {
            req = req.header("if-match", v);
        }
        let (got, _, body) = json_of(req.send().await.unwrap()).await;
        assert_eq!(got.as_u16(), status, "{if_match:?}");
        if status == 200 {
            assert_eq!(body["ifMatch"], expected);
        } else {
            assert_eq!(body["code"], expected);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn min_position_waits_for_the_checkpoint_or_times_out() {
    let app = spawn(None).await;
    let get = |q: &'static str| app.client.get(app.url(&format!("/flights/1{q}"))).send();
    assert_eq!(get("?minPosition=10").await.unwrap().status(), 200);

    let waiting = get("?minPosition=12");
    let checkpoint = app.shared.checkpoint.clone();
    let (response, ()) = tokio::join!(waiting, async move {
        // Move the read model forward while the query waits (or before it
        // starts waiting: either way it must see 12).
        checkpoint.send_replace(11);
        checkpoint.send_replace(12);
    });
    assert_eq!(response.unwrap().status(), 200);

    let (status, _, body) = json_of(get("?minPosition=99").await.unwrap()).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        (body["minPosition"].clone(), body["position"].clone()),
        (json!(99), json!(12))
    );

    let (status, _, body) = json_of(get("?minPosition=soon").await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "minPosition");
    app.stop().await;
}
