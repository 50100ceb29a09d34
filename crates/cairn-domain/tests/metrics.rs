//! The aggregate store's metrics, read back from the Prometheus recorder.
//! One test in its own binary, so the counts are this test's alone.

mod common;

use cairn_domain::{AggregateOptions, AggregateStore};
use cairn_telemetry::Metrics;
use common::{Concert, ConcertCommand, TestStore, book, ctx};

/// The value of the sample `line_start` (metric name and labels), or 0.
fn value(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_counted_by_category_and_outcome() {
    let metrics = Metrics::install();
    let store = TestStore::memory().await.expect("memory");
    let concerts = AggregateStore::<Concert>::with_options(
        store.handle(),
        AggregateOptions::default().with_max_retries(1),
    );
    let ctx = ctx();

    let plan = ConcertCommand::Plan { capacity: 10 };
    concerts.execute(&ctx, "c1", None, &plan).await.unwrap();
    concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    // booking again decides nothing
    concerts
        .execute(&ctx, "c1", None, &book("a"))
        .await
        .unwrap();
    // planned already: a rule
    concerts.execute(&ctx, "c1", None, &plan).await.unwrap_err();
    // stale If-Match
    concerts
        .execute(&ctx, "c1", Some(0), &book("b"))
        .await
        .unwrap_err();
    // If-Match on an aggregate that does not exist
    concerts
        .execute(&ctx, "c2", Some(0), &book("b"))
        .await
        .unwrap_err();
    // one lost race, decided again and written
    store.lose_next_races(1);
    concerts
        .execute(&ctx, "c1", None, &book("b"))
        .await
        .unwrap();
    // every race lost: one retry, then a conflict
    store.lose_next_races(10);
    concerts
        .execute(&ctx, "c1", None, &book("c"))
        .await
        .unwrap_err();
    store.lose_next_races(0);

    let text = metrics.render();
    let count = |outcome: &str| {
        value(
            &text,
            &format!(r#"cairn_commands_total{{category="concert",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(count("ok"), 3.0, "{text}");
    assert_eq!(count("noop"), 1.0, "{text}");
    assert_eq!(count("rule_violation"), 1.0, "{text}");
    assert_eq!(count("precondition_failed"), 1.0, "{text}");
    assert_eq!(count("not_found"), 1.0, "{text}");
    assert_eq!(count("concurrency_conflict"), 1.0, "{text}");
    assert_eq!(
        value(&text, r#"cairn_command_retries_total{category="concert"}"#),
        1.0,
        "{text}"
    );
    // Every command after planning c1 found c1's state kept (c2 was never
    // kept); the two lost races were first found stale on the kept state,
    // which spends no retry: one retry in all, in the conflict.
    let cache = |result: &str| {
        value(
            &text,
            &format!(r#"cairn_aggregate_cache_total{{category="concert",outcome="{result}"}}"#),
        )
    };
    assert_eq!(
        (cache("hit"), cache("miss"), cache("stale")),
        (6.0, 2.0, 2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_command_duration_seconds_count{category="concert"}"#
        ),
        8.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"cairn_command_duration_seconds_bucket{category="concert",le="+Inf"}"#
        ),
        8.0,
        "{text}"
    );
    assert!(!text.contains("acme"), "a tenant in a label: {text}");
    assert!(!text.contains("c1"), "an id in a label: {text}");
}
