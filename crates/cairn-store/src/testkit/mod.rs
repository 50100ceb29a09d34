//! The conformance suite: one set of cases that every backend runs, so the
//! contract means the same thing on memory, SQLite and PostgreSQL.
//!
//! A backend's test file calls [`conformance_suite!`](crate::conformance_suite)
//! with an async function that returns a fresh, empty store (or `None` when the
//! service it needs is absent and not required). The macro expands to one
//! `#[tokio::test]` per case, plus the model-based property test.

pub mod cases;
mod flaky;
pub mod model;

pub use flaky::FlakyStore;

use std::sync::Arc;

use cairn_core::{NewEvent, StreamId, TenantId};
use serde_json::json;

use crate::EventStore;

/// A fresh store, or `None` to skip (service absent and not required).
pub type StoreHandle = Arc<dyn EventStore>;

/// Whether `CAIRN_TEST_SERVICES=required` is set: an absent service is then
/// a failure instead of a skip.
pub fn services_required() -> bool {
    std::env::var("CAIRN_TEST_SERVICES").is_ok_and(|v| v == "required")
}

/// Reports that `service` is unreachable: panics when services are required,
/// otherwise prints a skip notice and returns `None`.
pub fn service_absent<T>(service: &str, why: impl std::fmt::Display) -> Option<T> {
    assert!(
        !services_required(),
        "{service} is required (CAIRN_TEST_SERVICES=required) but unavailable: {why}"
    );
    eprintln!(
        "skipping: {service} unavailable ({why}); set CAIRN_TEST_SERVICES=required to fail instead"
    );
    None
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("test tenant id")
}

pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).expect("test stream id")
}

/// A small event of type `t` whose payload carries `n`.
pub fn event(t: &str, n: u64) -> NewEvent {
    NewEvent::new(t, json!({ "n": n }))
}

/// Expands to one `#[tokio::test]` per conformance case for the backend made
/// by `$make`, an `async fn() -> Option<Arc<dyn EventStore>>`.
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            append_creates_stream_with_versions_from_zero,
            expected_no_stream,
            expected_stream_exists,
            expected_exact,
            expected_any,
            wrong_expected_version_writes_nothing,
            idempotent_resend_returns_first_result,
            idempotency_conflicts_are_typed_and_write_nothing,
            event_ids_are_scoped_to_tenants,
            one_winner_race_on_exact_version,
            one_winner_race_on_no_stream,
            concurrent_any_appends_keep_versions_dense,
            all_is_in_position_order,
            read_stream_directions_and_limits,
            catch_up_hands_over_to_live_without_gap_or_duplicate,
            subscription_resumes_from_a_position,
            filters_by_tenant_category_and_type,
            tenant_isolation,
            tombstone,
            truncate_before,
            snapshots,
            one_mib_event,
            unicode_ids_and_payloads,
            bad_input_is_rejected_and_nothing_written,
            list_streams_pages_in_id_order,
            metadata_round_trips,
            head_moves_with_appends
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn model_based_property() {
            $crate::testkit::model::check(|| ::std::boxed::Box::pin($make())).await;
        }
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some(store) = $make().await {
                    $crate::testkit::cases::$case(store).await;
                }
            }
        )*
    };
}
