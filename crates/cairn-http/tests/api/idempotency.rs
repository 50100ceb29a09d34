//! `Idempotency-Key` on SQLite and PostgreSQL: each case runs on both.

use std::time::Duration;

use cairn_http::IdempotencyOptions;
use serde_json::{Value, json};

use crate::common::{TestApp, TestDb, json_of, spawn};

/// Expands each case into a SQLite test and a PostgreSQL test.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = crate::common::sqlite_db().await.unwrap();
                    super::$case(db).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let Some(db) = crate::common::postgres_db().await else { return };
                    super::$case(db).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_replay_is_the_first_response_and_the_handler_runs_once,
    the_same_key_for_another_request_is_422,
    server_errors_are_not_stored_so_a_retry_runs_again,
    transient_4xx_are_not_stored_but_validation_errors_are,
    keys_belong_to_a_tenant,
    a_concurrent_request_with_the_same_key_is_409_in_progress,
    stored_responses_survive_a_restart,
    bad_keys_are_400_and_requests_without_a_key_always_run,
    expired_entries_run_again_and_are_purged,
    a_claim_older_than_the_in_progress_timeout_is_taken_over,
    a_request_refused_for_its_form_is_not_stored_so_the_fixed_one_can_use_the_key,
);

fn flight(number: &str) -> Value {
    json!({"number": number, "capacity": 180})
}

const KEPT: [&str; 4] = ["content-type", "location", "etag", "x-cairn-position"];

async fn a_replay_is_the_first_response_and_the_handler_runs_once(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;

    let first = app.post_flight(&flight("SK1421"), Some("key-1")).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.unwrap();

    for quoted in ["key-1", "\"key-1\""] {
        let again = app.post_flight(&flight("SK1421"), Some(quoted)).await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        for name in KEPT {
            assert_eq!(again.headers()[name], first_headers[name], "{name}");
        }
        // Not a header a replay keeps.
        assert!(again.headers().get("x-call").is_none());
        assert_eq!(again.bytes().await.unwrap(), first_body);
    }
    assert_eq!(app.shared.calls(), 1);
    app.stop().await;
    db.drop_db().await;
}

async fn the_same_key_for_another_request_is_422(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    assert_eq!(
        app.post_flight(&flight("SK1"), Some("k")).await.status(),
        201
    );

    let (status, _, body) = json_of(app.post_flight(&flight("SK2"), Some("k")).await).await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "idempotency_key_reused");

    // Same body, another path (with a query string) is another request too.
    let response = app
        .client
        .post(app.url("/flights?dryRun=true"))
        .header("idempotency-key", "k")
        .json(&flight("SK1"))
        .send()
        .await
        .unwrap();
    let (status, _, body) = json_of(response).await;
    assert_eq!(status, 422);
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(app.shared.calls(), 1);
    app.stop().await;
    db.drop_db().await;
}

async fn server_errors_are_not_stored_so_a_retry_runs_again(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    for attempt in 1..=2 {
        let response = app.post_flight(&flight("FAIL500"), Some("k500")).await;
        assert_eq!(response.status(), 500);
        assert!(response.headers().get("idempotent-replayed").is_none());
        assert_eq!(app.shared.calls(), attempt);
    }
    app.stop().await;
    db.drop_db().await;
}

async fn transient_4xx_are_not_stored_but_validation_errors_are(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    for attempt in 1..=2 {
        let response = app.post_flight(&flight("CONFLICT"), Some("k409")).await;
        assert_eq!(response.status(), 409);
        assert_eq!(app.shared.calls(), attempt);
    }
    let first = app.post_flight(&flight("INVALID"), Some("k422")).await;
    assert_eq!(first.status(), 422);
    let again = app.post_flight(&flight("INVALID"), Some("k422")).await;
    assert_eq!(again.status(), 422);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["content-type"], "application/problem+json");
    assert_eq!(app.shared.calls(), 3);
    app.stop().await;
    db.drop_db().await;
}

async fn keys_belong_to_a_tenant(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    let a = app
        .post_flight_as(&flight("SK1"), Some("k"), Some("acme"))
        .await;
    let b = app
        .post_flight_as(&flight("SK1"), Some("k"), Some("globex"))
        .await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    assert!(b.headers().get("idempotent-replayed").is_none());
    let again = app
        .post_flight_as(&flight("SK1"), Some("k"), Some("globex"))
        .await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.shared.calls(), 2);
    app.stop().await;
    db.drop_db().await;
}

async fn a_concurrent_request_with_the_same_key_is_409_in_progress(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    let first = {
        let req = app
            .client
            .post(app.url("/flights"))
            .header("idempotency-key", "slow")
            .json(&flight("SLOW"));
        tokio::spawn(req.send())
    };
    app.shared.wait_entered().await;

    let (status, headers, body) =
        json_of(app.post_flight(&flight("SLOW"), Some("slow")).await).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "concurrency_conflict");
    assert_eq!(headers["retry-after"], "1");
    // Another request under the key is still a misuse of the key.
    let (status, _, _) = json_of(app.post_flight(&flight("SK9"), Some("slow")).await).await;
    assert_eq!(status, 422);

    app.shared.release.add_permits(1);
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 201);
    let first_body = first.bytes().await.unwrap();

    let again = app.post_flight(&flight("SLOW"), Some("slow")).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(app.shared.calls(), 1);
    app.stop().await;
    db.drop_db().await;
}

async fn stored_responses_survive_a_restart(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    let first = app.post_flight(&flight("SK1421"), Some("durable")).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first_body = first.bytes().await.unwrap();
    app.stop().await;
    drop(store);

    let db = db.reopen().await;
    let store = db.store(IdempotencyOptions::default()).await;
    let app: TestApp = spawn(Some(&store)).await;
    let again = app.post_flight(&flight("SK1421"), Some("durable")).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(app.shared.calls(), 0);
    app.stop().await;
    db.drop_db().await;
}

async fn bad_keys_are_400_and_requests_without_a_key_always_run(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    let too_long = "k".repeat(256);
    for key in ["", "\"\"", too_long.as_str()] {
        let (status, _, body) = json_of(app.post_flight(&flight("SK1"), Some(key)).await).await;
        assert_eq!(status, 400, "{key:?}");
        assert_eq!(body["errors"][0]["field"], "idempotency-key");
    }
    let longest = "k".repeat(255);
    assert_eq!(
        app.post_flight(&flight("SK1"), Some(&longest))
            .await
            .status(),
        201
    );
    for _ in 0..2 {
        assert_eq!(app.post_flight(&flight("SK1"), None).await.status(), 201);
    }
    // Only POST is covered: other methods ignore the header.
    for _ in 0..2 {
        let response = app
            .client
            .patch(app.url("/echo"))
            .header("idempotency-key", "patch")
            .json(&json!({"a": 1}))
            .send()
            .await
            .unwrap();
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(app.shared.calls(), 3);
    app.stop().await;
    db.drop_db().await;
}

async fn expired_entries_run_again_and_are_purged(db: TestDb) {
    let day = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&day)).await;
    assert_eq!(
        app.post_flight(&flight("SK1"), Some("old")).await.status(),
        201
    );
    assert_eq!(day.purge_expired().await.unwrap(), 0);
    app.stop().await;

    let instant = db
        .store(IdempotencyOptions {
            ttl: Duration::ZERO,
            ..IdempotencyOptions::default()
        })
        .await;
    assert_eq!(instant.purge_expired().await.unwrap(), 1);

    let app = spawn(Some(&instant)).await;
    for _ in 0..2 {
        let response = app.post_flight(&flight("SK1"), Some("brief")).await;
        assert_eq!(response.status(), 201);
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(app.shared.calls(), 2);
    app.stop().await;
    db.drop_db().await;
}

async fn a_claim_older_than_the_in_progress_timeout_is_taken_over(db: TestDb) {
    let store = db
        .store(IdempotencyOptions {
            in_progress_timeout: Duration::ZERO,
            ..IdempotencyOptions::default()
        })
        .await;
    let app = spawn(Some(&store)).await;
    let send = || {
        let req = app
            .client
            .post(app.url("/flights"))
            .header("idempotency-key", "stuck")
            .json(&flight("SLOW"));
        tokio::spawn(req.send())
    };
    let first = send();
    app.shared.wait_entered().await;
    // The first claim counts as abandoned at once: the retry runs.
    let second = send();
    app.shared.wait_entered().await;
    app.shared.release.add_permits(2);
    let (first, second) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (201, 201)
    );
    let second_body: Value = second.json().await.unwrap();
    assert_eq!(app.shared.calls(), 2);

    // The first request lost its claim: the second one's response is kept.
    let again = app.post_flight(&flight("SLOW"), Some("stuck")).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), second_body);
    app.stop().await;
    db.drop_db().await;
}

async fn a_request_refused_for_its_form_is_not_stored_so_the_fixed_one_can_use_the_key(db: TestDb) {
    let store = db.store(IdempotencyOptions::default()).await;
    let app = spawn(Some(&store)).await;
    let body = flight("SK1").to_string();
    let send = |content_type: &'static str, body: String| {
        app.client
            .post(app.url("/flights"))
            .header("idempotency-key", "fix-me")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let wrong_type = send("text/plain", body.clone()).await.unwrap();
    assert_eq!(wrong_type.status(), 415);
    let broken = send("application/json", "{\"number\":".into())
        .await
        .unwrap();
    assert_eq!(broken.status(), 400);
    let bad_field = send(
        "application/json",
        r#"{"number":"SK1","capacity":"x"}"#.into(),
    )
    .await
    .unwrap();
    assert_eq!(bad_field.status(), 422);
    assert_eq!(app.shared.calls(), 0);

    let fixed = send("application/json", body.clone()).await.unwrap();
    assert_eq!(fixed.status(), 201);
    let again = send("application/json", body).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.shared.calls(), 1);
    app.stop().await;
    db.drop_db().await;
}
