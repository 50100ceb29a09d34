//! The process-wide Prometheus recorder and the [`Metrics`] handle that
//! renders it.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::catalogue::describe_all;

/// Bucket upper bounds, in seconds, of every histogram whose name ends in
/// `_seconds`: 1 ms to 10 s, Prometheus' default buckets with two more at the
/// low end, where an embedded-store command or a cached read lands.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The media type of the Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one collector may run during a scrape before the scrape goes on
/// without it (its series then keep the values of an earlier scrape).
pub const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the recorder folds recorded histogram samples into their
/// buckets when nobody scrapes, so unscraped samples cannot pile up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

type CollectFn = dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

#[derive(Clone)]
struct Collector {
    name: &'static str,
    collect: Arc<CollectFn>,
}

/// A handle to the process's Prometheus recorder, plus the collectors that
/// refresh scrape-time gauges. Cheap to clone.
///
/// Values are recorded anywhere in the process with the `metrics` macros
/// (`metrics::counter!`, `metrics::histogram!`, `metrics::gauge!`); they
/// reach this recorder once [`Metrics::install`] has run, and cost next to
/// nothing before. Values that are a reading of some state rather than a
/// count of happenings (a projection's lag, the store's head) are better
/// read when Prometheus asks: register a collector with
/// [`with_collector`](Self::with_collector) and serve [`scrape`](Self::scrape).
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    collectors: Vec<Collector>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field(
                "collectors",
                &self.collectors.iter().map(|c| c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Installs the Prometheus recorder as the process's `metrics` recorder
    /// the first time it is called, and returns a handle to it (without
    /// collectors). Later calls, from any thread, return a handle to the
    /// same recorder; none panics.
    ///
    /// The recorder renders histograms whose name ends in `_seconds` with the
    /// buckets of [`SECONDS_BUCKETS`], describes every metric of
    /// [`CATALOGUE`](crate::CATALOGUE), and a background thread folds
    /// histogram samples into buckets every few seconds. If another
    /// `metrics` recorder was installed before, that one keeps receiving the
    /// values; this handle then renders only the help lines, and a warning
    /// is logged.
    pub fn install() -> Self {
        let handle = RECORDER.get_or_init(install_recorder).clone();
        Self {
            handle,
            collectors: Vec::new(),
        }
    }

    /// Adds a collector: `collect` runs at every [`scrape`](Self::scrape),
    /// before rendering, and sets gauges with the `metrics` macros. `name`
    /// identifies it in logs. Collectors run concurrently, each bounded by
    /// [`COLLECTOR_TIMEOUT`].
    #[must_use]
    pub fn with_collector<F, Fut>(mut self, name: &'static str, collect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.collectors.push(Collector {
            name,
            collect: Arc::new(move || Box::pin(collect())),
        });
        self
    }

    /// Runs every collector, then renders. This is what `GET /metrics`
    /// answers. Needs a Tokio runtime with timers.
    pub async fn scrape(&self) -> String {
        let runs = self.collectors.iter().map(|collector| async move {
            if tokio::time::timeout(COLLECTOR_TIMEOUT, (collector.collect)())
                .await
                .is_err()
            {
                tracing::warn!(
                    collector = collector.name,
                    "a metrics collector took too long; its series keep earlier values"
                );
            }
        });
        futures_util::future::join_all(runs).await;
        self.render()
    }

    /// Everything recorded so far in the Prometheus text format
    /// ([`CONTENT_TYPE`]), without running the collectors.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The exporter's own handle.
    pub fn prometheus_handle(&self) -> &PrometheusHandle {
        &self.handle
    }
}

fn install_recorder() -> PrometheusHandle {
    // Cannot fail: the bucket list is not empty.
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
        .unwrap_or_else(|_| PrometheusBuilder::new());
    let recorder = builder.build_recorder();
    let handle = recorder.handle();
    if let Err(error) = metrics::set_global_recorder(recorder) {
        tracing::warn!(
            %error,
            "another metrics recorder is installed; /metrics will not show the values it receives"
        );
    }
    describe_all();
    let upkeep = handle.clone();
    let spawned = std::thread::Builder::new()
        .name("cairn-metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "no metrics upkeep thread; histogram samples are folded at scrape time only");
    }
    handle
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// The rendered lines of `metric` (exact name, with or without labels).
    fn lines_of<'a>(text: &'a str, metric: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    #[test]
    fn install_is_idempotent_and_every_handle_sees_the_same_values() {
        let first = Metrics::install();
        let second = Metrics::install();
        let from_threads: Vec<Metrics> = (0..4)
            .map(|_| std::thread::spawn(Metrics::install))
            .map(|t| t.join().unwrap())
            .collect();
        metrics::counter!("cairn_test_installs_total", "outcome" => "ok").increment(3);
        for handle in [&first, &second].into_iter().chain(&from_threads) {
            let text = handle.render();
            assert_eq!(
                lines_of(&text, "cairn_test_installs_total"),
                vec![r#"cairn_test_installs_total{outcome="ok"} 3"#],
                "{text}"
            );
        }
    }

    #[test]
    fn counters_and_gauges_render_with_their_labels() {
        let metrics = Metrics::install();
        metrics::counter!("cairn_test_requests_total", "method" => "GET", "status" => "200")
            .increment(2);
        metrics::counter!("cairn_test_requests_total", "method" => "GET", "status" => "404")
            .increment(1);
        metrics::gauge!("cairn_test_depth", "projection" => "a.b").set(7.0);
        let text = metrics.render();
        let mut requests = lines_of(&text, "cairn_test_requests_total");
        requests.sort_unstable();
        assert_eq!(
            requests,
            vec![
                r#"cairn_test_requests_total{method="GET",status="200"} 2"#,
                r#"cairn_test_requests_total{method="GET",status="404"} 1"#,
            ],
            "{text}"
        );
        assert_eq!(
            lines_of(&text, "cairn_test_depth"),
            vec![r#"cairn_test_depth{projection="a.b"} 7"#]
        );
    }

    #[test]
    fn seconds_histograms_have_buckets_not_quantiles() {
        let metrics = Metrics::install();
        for seconds in [0.002, 0.003, 0.2, 30.0] {
            metrics::histogram!("cairn_test_duration_seconds", "route" => "/x").record(seconds);
        }
        let text = metrics.render();
        let buckets = lines_of(&text, "cairn_test_duration_seconds_bucket");
        assert_eq!(buckets.len(), SECONDS_BUCKETS.len() + 1, "{text}");
        for expected in [
            r#"cairn_test_duration_seconds_bucket{route="/x",le="0.001"} 0"#,
            r#"cairn_test_duration_seconds_bucket{route="/x",le="0.0025"} 1"#,
            r#"cairn_test_duration_seconds_bucket{route="/x",le="0.005"} 2"#,
            r#"cairn_test_duration_seconds_bucket{route="/x",le="0.25"} 3"#,
            r#"cairn_test_duration_seconds_bucket{route="/x",le="10"} 3"#,
            r#"cairn_test_duration_seconds_bucket{route="/x",le="+Inf"} 4"#,
        ] {
            assert!(buckets.contains(&expected), "{expected} missing: {text}");
        }
        assert_eq!(
            lines_of(&text, "cairn_test_duration_seconds_count"),
            vec![r#"cairn_test_duration_seconds_count{route="/x"} 4"#]
        );
        assert!(text.contains("# TYPE cairn_test_duration_seconds histogram"));
        assert!(!text.contains("quantile="), "{text}");
    }

    #[test]
    fn catalogue_metrics_carry_their_help() {
        let metrics = Metrics::install();
        metrics::gauge!(crate::names::STORE_HEAD_POSITION).set(42.0);
        let text = metrics.render();
        assert!(
            text.contains("# HELP cairn_store_head_position Position of the last event"),
            "{text}"
        );
        assert!(text.contains("# TYPE cairn_store_head_position gauge"));
        assert!(text.contains("\ncairn_store_head_position 42\n"), "{text}");
    }

    #[tokio::test]
    async fn collectors_run_at_each_scrape() {
        let scrapes = Arc::new(AtomicU64::new(0));
        let counter = scrapes.clone();
        let metrics = Metrics::install().with_collector("test", move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                metrics::gauge!("cairn_test_scrapes").set(n as f64);
            }
        });
        assert!(format!("{metrics:?}").contains("test"));
        let first = metrics.scrape().await;
        assert_eq!(
            lines_of(&first, "cairn_test_scrapes"),
            vec!["cairn_test_scrapes 1"]
        );
        let second = metrics.clone().scrape().await;
        assert_eq!(
            lines_of(&second, "cairn_test_scrapes"),
            vec!["cairn_test_scrapes 2"]
        );
        // render alone does not run them
        assert_eq!(
            lines_of(&metrics.render(), "cairn_test_scrapes"),
            vec!["cairn_test_scrapes 2"]
        );
        assert_eq!(scrapes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_collector_does_not_hold_up_the_scrape() {
        let metrics = Metrics::install()
            .with_collector("stuck", std::future::pending::<()>)
            .with_collector("quick", || async {
                metrics::gauge!("cairn_test_quick").set(1.0);
            });
        let text = metrics.scrape().await;
        assert_eq!(
            lines_of(&text, "cairn_test_quick"),
            vec!["cairn_test_quick 1"]
        );
    }
}
