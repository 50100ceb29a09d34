//! Every metric Cairn records: its name, kind, labels and help text. The
//! recorder describes them all when it is installed, so `/metrics` carries
//! a `# HELP` line for each, and the tests below hold the names and labels
//! to the conventions.
//!
//! Crates that record with the `metrics` macros alone (`cairn-domain`,
//! `cairn-projection`) spell the names out; this list is where they are
//! registered and described.

/// The kind of a metric, as Prometheus exposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (`…_total`).
    Counter,
    /// Set to the current value.
    Gauge,
    /// Observations counted into the buckets of [`crate::SECONDS_BUCKETS`].
    Histogram,
}

/// One metric of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricDescription {
    /// The exposed name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The label names it carries (each from [`ALLOWED_LABELS`]).
    pub labels: &'static [&'static str],
    /// The `# HELP` text.
    pub help: &'static str,
}

/// The names of Cairn's metrics.
pub mod names {
    /// HTTP requests answered, by method, route template and status.
    pub const HTTP_REQUESTS_TOTAL: &str = "cairn_http_requests_total";
    /// HTTP request latency (until the response head), by method and route.
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "cairn_http_request_duration_seconds";
    /// Commands run by an aggregate store, by category and outcome.
    pub const COMMANDS_TOTAL: &str = "cairn_commands_total";
    /// Command latency, by aggregate category.
    pub const COMMAND_DURATION_SECONDS: &str = "cairn_command_duration_seconds";
    /// Commands decided again after losing a race, by aggregate category.
    pub const COMMAND_RETRIES_TOTAL: &str = "cairn_command_retries_total";
    /// Commands that found their aggregate's state kept in the aggregate
    /// cache (`hit`), did not (`miss`), or found it stale (`stale`).
    pub const AGGREGATE_CACHE_TOTAL: &str = "cairn_aggregate_cache_total";
    /// The position of the last event in the store's global log.
    pub const STORE_HEAD_POSITION: &str = "cairn_store_head_position";
    /// How far a projection has looked in the global log.
    pub const PROJECTION_POSITION: &str = "cairn_projection_position";
    /// Events of the global log a projection has not looked at yet.
    pub const PROJECTION_LAG_EVENTS: &str = "cairn_projection_lag_events";
    /// Age of the oldest event a projection wants and has not applied.
    pub const PROJECTION_LAG_SECONDS: &str = "cairn_projection_lag_seconds";
    /// 1 while a projection runs, else 0.
    pub const PROJECTION_RUNNING: &str = "cairn_projection_running";
    /// 1 while a projection is stopped at a poison event, else 0.
    pub const PROJECTION_FAILED: &str = "cairn_projection_failed";
    /// Events a projection's `park` policy passed over.
    pub const PROJECTION_PARKED: &str = "cairn_projection_parked";
    /// Events an operator skipped in a projection.
    pub const PROJECTION_SKIPPED: &str = "cairn_projection_skipped";
    /// How far a relay has published the global log.
    pub const RELAY_POSITION: &str = "cairn_relay_position";
    /// Events of the global log a relay has not looked at yet.
    pub const RELAY_LAG_EVENTS: &str = "cairn_relay_lag_events";
    /// Integration events a relay has published.
    pub const RELAY_PUBLISHED_TOTAL: &str = "cairn_relay_published_total";
    /// 1 while a relay's last publish succeeded, else 0.
    pub const RELAY_BROKER_UP: &str = "cairn_relay_broker_up";
    /// Messages a consumer settled, by group and outcome.
    pub const CONSUMER_MESSAGES_TOTAL: &str = "cairn_consumer_messages_total";
    /// Time a consumer took to handle a message, by group.
    pub const CONSUMER_HANDLE_DURATION_SECONDS: &str = "cairn_consumer_handle_duration_seconds";
    /// Inputs fed to sagas, by saga.
    pub const SAGA_INPUTS_TOTAL: &str = "cairn_saga_inputs_total";
    /// Commands sagas dispatched, by saga.
    pub const SAGA_COMMANDS_TOTAL: &str = "cairn_saga_commands_total";
    /// Saga decisions taken again after losing a race, by saga.
    pub const SAGA_RETRIES_TOTAL: &str = "cairn_saga_retries_total";
    /// Saga timeouts fired, by saga and outcome.
    pub const SAGA_TIMEOUTS_FIRED_TOTAL: &str = "cairn_saga_timeouts_fired_total";
    /// Live API (`/ws`) connections open.
    pub const LIVE_CONNECTIONS: &str = "cairn_live_connections";
    /// Live API connections the server closed, by outcome.
    pub const LIVE_CLOSED_TOTAL: &str = "cairn_live_closed_total";
    /// WebSocket tunnels a gateway holds open, by route.
    pub const GATEWAY_TUNNELS: &str = "cairn_gateway_tunnels";
}

/// The label names a Cairn metric may carry. Each has a small, bounded set
/// of values fixed by the code: HTTP method (unknown methods become
/// `other`), route template (`unmatched` when no route matched), status
/// code, aggregate category, outcome (`ok`, `noop` or an error code),
/// projection name, service name, consumer group, saga name. Tenants, ids, paths, user input and secrets are never
/// label values: each would make a new series per value.
pub const ALLOWED_LABELS: &[&str] = &[
    "method",
    "route",
    "status",
    "category",
    "outcome",
    "projection",
    "service",
    "group",
    "saga",
];

/// Every metric Cairn records.
pub const CATALOGUE: &[MetricDescription] = &[
    MetricDescription {
        name: names::HTTP_REQUESTS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["method", "route", "status"],
        help: "HTTP requests answered, by method, route template and status code.",
    },
    MetricDescription {
        name: names::HTTP_REQUEST_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        labels: &["method", "route"],
        help: "Time from receiving an HTTP request to sending its response head, in seconds.",
    },
    MetricDescription {
        name: names::COMMANDS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["category", "outcome"],
        help: "Commands run by an aggregate store, by aggregate category and outcome (ok, noop or the error code).",
    },
    MetricDescription {
        name: names::COMMAND_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        labels: &["category"],
        help: "Time a command took, waiting for its turn on the aggregate and retries included, in seconds.",
    },
    MetricDescription {
        name: names::COMMAND_RETRIES_TOTAL,
        kind: MetricKind::Counter,
        labels: &["category"],
        help: "Commands decided again because another writer appended to the aggregate first.",
    },
    MetricDescription {
        name: names::AGGREGATE_CACHE_TOTAL,
        kind: MetricKind::Counter,
        labels: &["category", "outcome"],
        help: "Commands by whether their aggregate's state was kept in the aggregate cache (hit), not (miss), or kept but behind another writer's append (stale).",
    },
    MetricDescription {
        name: names::STORE_HEAD_POSITION,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Position of the last event in the event store's global log, as this process knows it.",
    },
    MetricDescription {
        name: names::PROJECTION_POSITION,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "Position up to which a projection has handled the global log.",
    },
    MetricDescription {
        name: names::PROJECTION_LAG_EVENTS,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "Events of the global log a projection has not looked at yet (head minus position).",
    },
    MetricDescription {
        name: names::PROJECTION_LAG_SECONDS,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "Age of the oldest event a projection wants and has not applied, in seconds; 0 when caught up.",
    },
    MetricDescription {
        name: names::PROJECTION_RUNNING,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "1 while a projection follows the global log, else 0.",
    },
    MetricDescription {
        name: names::PROJECTION_FAILED,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "1 while a projection is stopped at a poison event, else 0.",
    },
    MetricDescription {
        name: names::PROJECTION_PARKED,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "Events a projection's park policy passed over (in its dead letters).",
    },
    MetricDescription {
        name: names::PROJECTION_SKIPPED,
        kind: MetricKind::Gauge,
        labels: &["projection"],
        help: "Events an operator skipped in a projection (in its dead letters).",
    },
    MetricDescription {
        name: names::RELAY_POSITION,
        kind: MetricKind::Gauge,
        labels: &["service"],
        help: "Position up to which a service's relay has published its public events.",
    },
    MetricDescription {
        name: names::RELAY_LAG_EVENTS,
        kind: MetricKind::Gauge,
        labels: &["service"],
        help: "Events of the global log a relay has not looked at yet (head minus position).",
    },
    MetricDescription {
        name: names::RELAY_PUBLISHED_TOTAL,
        kind: MetricKind::Counter,
        labels: &["service"],
        help: "Integration events a relay has published (a re-sent batch counts again).",
    },
    MetricDescription {
        name: names::RELAY_BROKER_UP,
        kind: MetricKind::Gauge,
        labels: &["service"],
        help: "1 while the relay's last publish was accepted by the broker, else 0.",
    },
    MetricDescription {
        name: names::CONSUMER_MESSAGES_TOTAL,
        kind: MetricKind::Counter,
        labels: &["group", "outcome"],
        help: "Messages a consumer settled, by group and outcome (handled, skipped, duplicate, retried, waited_for_order, dead_lettered, replayed).",
    },
    MetricDescription {
        name: names::CONSUMER_HANDLE_DURATION_SECONDS,
        kind: MetricKind::Histogram,
        labels: &["group"],
        help: "Time one attempt at handling a message took, its transaction included, in seconds.",
    },
    MetricDescription {
        name: names::SAGA_INPUTS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["saga"],
        help: "Inputs fed to a saga (starts, command outcomes, timeouts).",
    },
    MetricDescription {
        name: names::SAGA_COMMANDS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["saga"],
        help: "Commands a saga dispatched.",
    },
    MetricDescription {
        name: names::SAGA_RETRIES_TOTAL,
        kind: MetricKind::Counter,
        labels: &["saga"],
        help: "Saga decisions taken again because another writer appended to the saga's stream first.",
    },
    MetricDescription {
        name: names::SAGA_TIMEOUTS_FIRED_TOTAL,
        kind: MetricKind::Counter,
        labels: &["saga", "outcome"],
        help: "Saga timeouts fired, by outcome (ok or error).",
    },
    MetricDescription {
        name: names::LIVE_CONNECTIONS,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Live API (/ws, the RES protocol) connections open.",
    },
    MetricDescription {
        name: names::LIVE_CLOSED_TOTAL,
        kind: MetricKind::Counter,
        labels: &["outcome"],
        help: "Live API connections the server closed, by outcome: slow (frames not read), idle, missed (changes missed) or an error code.",
    },
    MetricDescription {
        name: names::GATEWAY_TUNNELS,
        kind: MetricKind::Gauge,
        labels: &["route"],
        help: "WebSocket tunnels the gateway holds open, by route prefix.",
    },
];

/// Registers the help text of every catalogue entry with the installed
/// recorder.
pub(crate) fn describe_all() {
    for metric in CATALOGUE {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions() {
        let mut seen = HashSet::new();
        for metric in CATALOGUE {
            let name = metric.name;
            assert!(seen.insert(name), "{name} is listed twice");
            assert!(name.starts_with("cairn_"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            match metric.kind {
                MetricKind::Counter => assert!(name.ends_with("_total"), "{name}"),
                MetricKind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
                MetricKind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
            }
            assert!(!metric.help.is_empty(), "{name}");
        }
    }

    #[test]
    fn labels_come_from_the_bounded_set() {
        for metric in CATALOGUE {
            for label in metric.labels {
                assert!(
                    ALLOWED_LABELS.contains(label),
                    "{} carries {label}, which is not a bounded label",
                    metric.name
                );
            }
        }
    }
}
