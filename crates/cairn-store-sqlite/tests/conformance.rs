//! The shared conformance suite against the SQLite backend, one fresh file
//! per case.

use std::sync::Arc;

use cairn_store::EventStore;

mod common;

async fn fresh() -> Option<Arc<dyn EventStore>> {
    Some(Arc::new(common::TempStore::new().await))
}

cairn_store::conformance_suite!(fresh);
