//! What the NATS tests share.

/// A NATS client, or None (skipped) when there is no server and it is not
/// required (`CAIRN_TEST_SERVICES=required`).
pub(crate) async fn nats() -> Option<async_nats::Client> {
    let url =
        std::env::var("CAIRN_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    match async_nats::connect(&url).await {
        Ok(client) => Some(client),
        Err(e) => {
            assert!(
                std::env::var("CAIRN_TEST_SERVICES").as_deref() != Ok("required"),
                "NATS at {url}: {e}; CAIRN_TEST_SERVICES=required"
            );
            eprintln!("skipping: no NATS at {url} ({e})");
            None
        }
    }
}
