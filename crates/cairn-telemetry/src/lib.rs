//! Cairn's telemetry. For now: Prometheus metrics.
//!
//! - [`Metrics::install`] installs the Prometheus recorder once per process
//!   (any later call returns a handle to the same one) and gives the handle
//!   that renders `GET /metrics`; `cairn-http` serves it and counts every
//!   request.
//! - Code anywhere records with the `metrics` macros; nothing is kept until
//!   a recorder is installed, so libraries record unconditionally.
//! - Gauges that read some state (projection lag, the store's head) are set
//!   by collectors that run at each scrape
//!   ([`Metrics::with_collector`], [`Metrics::scrape`]).
//! - [`CATALOGUE`] lists every metric Cairn records, with its labels and
//!   help text; [`names`] holds the names.
//!
//! Architecture invariant: a label value is drawn from a small set fixed by
//! the code ([`ALLOWED_LABELS`]): never a tenant, an id, a raw path, user
//! input or a secret.

mod catalogue;
mod recorder;

pub use catalogue::{ALLOWED_LABELS, CATALOGUE, MetricDescription, MetricKind, names};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use recorder::{COLLECTOR_TIMEOUT, CONTENT_TYPE, Metrics, SECONDS_BUCKETS};
