//! Two OS processes, each with its own aggregate cache, racing on the same
//! seats of one store (a SQLite file, or a PostgreSQL schema).
//!
//! The parent test plans a few small concerts, then starts two child
//! processes of this test binary (the ignored `race_child` test). Each child
//! opens the store, warms its cache with every concert, waits for a common
//! start instant and books far more tickets than there are seats, from
//! several tasks at once, through one `AggregateStore` with the cache on. So
//! each child mostly decides on a kept state that the other child has made
//! stale, and has to find that out from the refused exact-version append.
//!
//! The parent then reads every concert back with a store that has no cache
//! and proves:
//! - no oversell: every concert has exactly its capacity of bookings, no
//!   holder twice, and its version counts its events;
//! - no lost update: every booking a child was told succeeded is in the
//!   stream;
//! - no phantom: every booking in the stream was reported by a child;
//! - every request got an answer (booked, sold out or a conflict);
//! - the race happened: appends were refused because the other process had
//!   moved the stream on (and the cache counted them as stale).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Read,
    process::{Child, Command, ExitStatus, Stdio},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use cairn_domain::{AggregateOptions, AggregateStore, CommandError};
use cairn_store::{EventStore, ReadStream};
use cairn_store_sqlite::SqliteStore;
use cairn_telemetry::Metrics;
use common::{
    Concert, ConcertCommand, ConcertError, TestStore, book, ctx, fresh_schema, postgres_store,
};
use serde::{Deserialize, Serialize};

/// How many concerts the children race on.
const CONCERTS: usize = 4;
/// Seats per concert.
const CAPACITY: u32 = 25;
/// Holders each child tries to book on every concert (far more than seats).
const HOLDERS: usize = 60;
/// Concurrent booking tasks per child.
const TASKS: usize = 8;
/// How long after spawning the children the race starts: time for both to
/// start, connect and warm their caches.
const START_DELAY: Duration = Duration::from_millis(1500);
/// How long the children may take before they are killed.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);
/// The marker of a child's result line on its stdout.
const RESULT_MARKER: &str = "RACE-RESULT ";

const ENV_BACKEND: &str = "CAIRN_RACE_BACKEND";
const ENV_STORE: &str = "CAIRN_RACE_STORE";
const ENV_NAME: &str = "CAIRN_RACE_NAME";
const ENV_START_MS: &str = "CAIRN_RACE_START_MS";

fn concert_id(n: usize) -> String {
    format!("rush-{n}")
}

fn unix_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since_epoch.as_millis()).expect("millis fit u64")
}

/// What a child did, printed as one JSON line after [`RESULT_MARKER`].
#[derive(Debug, Serialize, Deserialize)]
struct ChildReport {
    name: String,
    /// Booking commands executed.
    requests: u64,
    /// The holders booked successfully, per concert id.
    booked: BTreeMap<String, Vec<String>>,
    /// Bookings refused as sold out.
    sold_out: u64,
    /// Bookings that gave up with `ConcurrencyConflict`.
    conflicts: u64,
    /// Appends the store refused with `WrongExpectedVersion` (counted by a
    /// wrapper around the store: the race, seen from the store).
    refused_appends: u64,
    /// `cairn_aggregate_cache_total{outcome="stale"}`: kept states found
    /// stale by a refused append.
    stale: u64,
    /// `cairn_aggregate_cache_total{outcome="hit"}`.
    hits: u64,
    /// `cairn_command_retries_total`: lost races decided again.
    retries: u64,
    /// How late the child was for the start instant, in ms (0: on time).
    late_ms: u64,
}

impl ChildReport {
    fn successes(&self) -> u64 {
        self.booked.values().map(|h| h.len() as u64).sum()
    }
}

// ---------------------------------------------------------------------------
// The parent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_race_on_sqlite() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-two-processes-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    let path = dir.path().join("events.db");
    let store = SqliteStore::open(&path).await.expect("open sqlite store");
    race(
        "sqlite",
        path.to_str().expect("utf-8 path"),
        Arc::new(store),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_race_on_postgres() {
    let schema = fresh_schema();
    let Some(store) = postgres_store(&schema).await else {
        return;
    };
    race("postgres", &schema, Arc::new(store)).await;
}

/// Plans the concerts on `store`, races two children on them (`backend` and
/// `target` tell them where the store is), and checks the streams against
/// what the children reported.
async fn race(backend: &str, target: &str, store: Arc<dyn EventStore>) {
    let ctx = ctx();
    let planner = AggregateStore::<Concert>::new(Arc::clone(&store));
    for n in 0..CONCERTS {
        planner
            .execute(
                &ctx,
                concert_id(n),
                None,
                &ConcertCommand::Plan { capacity: CAPACITY },
            )
            .await
            .expect("plan a concert");
    }

    let start_ms = unix_millis() + START_DELAY.as_millis() as u64;
    let (backend, target) = (backend.to_owned(), target.to_owned());
    let reports = tokio::task::spawn_blocking(move || {
        let children = ["p1", "p2"].map(|name| spawn_child(&backend, &target, name, start_ms));
        wait_for_children(children)
    })
    .await
    .expect("waiting for the children");

    for r in &reports {
        eprintln!(
            "{}: {} requests, {} booked, {} sold out, {} conflicts; {} appends refused \
             ({} stale cached states, {} retried lost races); {} cache hits; {} ms late",
            r.name,
            r.requests,
            r.successes(),
            r.sold_out,
            r.conflicts,
            r.refused_appends,
            r.stale,
            r.retries,
            r.hits,
            r.late_ms,
        );
    }

    // Every request got an answer.
    for r in &reports {
        assert_eq!(
            r.requests,
            (CONCERTS * HOLDERS) as u64,
            "{}: every booking was asked",
            r.name
        );
        assert_eq!(
            r.successes() + r.sold_out + r.conflicts,
            r.requests,
            "{}: every request is booked, sold out or a conflict",
            r.name
        );
        // Each refused append was a stale kept state, a retried lost race,
        // or the last lost race of a command that gave up.
        assert_eq!(
            r.refused_appends,
            r.stale + r.retries + r.conflicts,
            "{}: refused appends = stale + retries + conflicts",
            r.name
        );
    }

    // Read back with no cache: the streams as the store has them.
    let reader = AggregateStore::<Concert>::with_options(
        Arc::clone(&store),
        AggregateOptions::default().with_cache_bytes(0),
    );
    for n in 0..CONCERTS {
        let id = concert_id(n);
        let loaded = reader
            .load(&ctx, &id)
            .await
            .expect("load a concert")
            .expect("the concert exists");
        let stream = AggregateStore::<Concert>::stream_id(&id).unwrap();
        let recorded = store
            .read_stream(&ctx.tenant, &stream, ReadStream::all())
            .await
            .expect("read the stream");
        let versions: Vec<u64> = recorded.iter().map(|e| e.version).collect();
        let expected_versions: Vec<u64> = (0..=u64::from(CAPACITY)).collect();
        assert_eq!(
            versions, expected_versions,
            "{id}: 1 plan + {CAPACITY} bookings"
        );
        assert_eq!(loaded.version, u64::from(CAPACITY), "{id}: version");
        assert_eq!(recorded[0].event_type, "ConcertPlanned", "{id}");
        let in_stream: Vec<String> = recorded[1..]
            .iter()
            .map(|e| {
                assert_eq!(e.event_type, "TicketBooked", "{id} v{}", e.version);
                e.data["holder"].as_str().expect("a holder").to_owned()
            })
            .collect();
        assert_eq!(
            loaded.state.holders, in_stream,
            "{id}: the fold is the stream"
        );

        // No oversell, no holder twice.
        let in_stream: BTreeSet<String> = in_stream.into_iter().collect();
        assert_eq!(
            in_stream.len(),
            CAPACITY as usize,
            "{id}: every seat sold, each once: {:?}",
            loaded.state.holders
        );

        // What the children were told equals what is stored.
        let mut reported = BTreeSet::new();
        for r in &reports {
            for holder in r.booked.get(&id).into_iter().flatten() {
                assert!(
                    reported.insert(holder.clone()),
                    "{id}: {holder} reported booked twice"
                );
            }
        }
        let lost: Vec<_> = reported.difference(&in_stream).collect();
        let phantom: Vec<_> = in_stream.difference(&reported).collect();
        assert!(
            lost.is_empty(),
            "{id}: lost updates (reported booked, not stored): {lost:?}"
        );
        assert!(
            phantom.is_empty(),
            "{id}: phantom bookings (stored, reported by nobody): {phantom:?}"
        );
    }

    // The race really happened: the processes refused each other's appends.
    let refused: u64 = reports.iter().map(|r| r.refused_appends).sum();
    let stale: u64 = reports.iter().map(|r| r.stale).sum();
    eprintln!("total: {refused} appends refused, {stale} stale cached states");
    assert!(
        refused > 0,
        "no append was refused: the children did not race"
    );
    assert!(stale > 0, "no cached state was found stale");
}

/// Starts the `race_child` test of this binary as child `name`.
fn spawn_child(backend: &str, target: &str, name: &str, start_ms: u64) -> Running {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--ignored",
            "--exact",
            "race_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_BACKEND, backend)
        .env(ENV_STORE, target)
        .env(ENV_NAME, name)
        .env(ENV_START_MS, start_ms.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a child process");
    let stdout = read_to_end(child.stdout.take().expect("piped stdout"));
    let stderr = read_to_end(child.stderr.take().expect("piped stderr"));
    Running {
        name: name.to_owned(),
        child,
        stdout,
        stderr,
    }
}

struct Running {
    name: String,
    child: Child,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// Drains a pipe on its own thread, so a child never blocks on a full pipe.
fn read_to_end(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Waits for every child (killing those still running after
/// [`CHILD_TIMEOUT`]), requires each to succeed, and parses their reports.
fn wait_for_children<const N: usize>(mut children: [Running; N]) -> Vec<ChildReport> {
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut statuses: [Option<ExitStatus>; N] = [None; N];
    while statuses.iter().any(Option::is_none) && Instant::now() < deadline {
        for (running, status) in children.iter_mut().zip(&mut statuses) {
            if status.is_none() {
                *status = running.child.try_wait().expect("poll a child");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut failures = Vec::new();
    let mut reports = Vec::new();
    for (mut running, status) in children.into_iter().zip(statuses) {
        if status.is_none() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
        let stdout = running.stdout.join().expect("stdout reader");
        let stderr = running.stderr.join().expect("stderr reader");
        let results: Vec<&str> = stdout
            .lines()
            .filter_map(|line| Some(line.split_once(RESULT_MARKER)?.1))
            .collect();
        match (status, results.as_slice()) {
            (Some(status), [json]) if status.success() => {
                reports.push(serde_json::from_str(json).expect("a child's report"));
            }
            _ => failures.push(format!(
                "child {} {}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                running.name,
                status.map_or_else(
                    || format!("killed after {CHILD_TIMEOUT:?}"),
                    |s| format!("exited with {s}, {} result lines", results.len()),
                ),
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    reports
}

// ---------------------------------------------------------------------------
// The child

/// How one booking ended.
enum Answer {
    Booked,
    SoldOut,
    Conflict,
}

fn required_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!(
            "{key} is not set: race_child is the entry point of the child processes of the \
             two_processes_race tests, which run it with --ignored; it is not a test on its own"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the entry point of the child processes of the two_processes_race tests, run by them \
            with --ignored; not a test on its own"]
async fn race_child() {
    let backend = required_env(ENV_BACKEND);
    let target = required_env(ENV_STORE);
    let name = required_env(ENV_NAME);
    let start_ms: u64 = required_env(ENV_START_MS)
        .parse()
        .expect("a start instant in unix millis");
    let metrics = Metrics::install();

    let inner: Arc<dyn EventStore> = match backend.as_str() {
        "sqlite" => Arc::new(
            SqliteStore::open(&target)
                .await
                .expect("open the sqlite store"),
        ),
        "postgres" => Arc::new(
            postgres_store(&target)
                .await
                .expect("the parent reached PostgreSQL"),
        ),
        other => panic!("unknown backend {other:?}"),
    };
    // Counts the appends refused with `WrongExpectedVersion`: each is a
    // decision made on a version another writer had moved past.
    let store = TestStore::wrap(inner, None);
    let concerts = AggregateStore::<Concert>::new(store.handle());
    let ctx = ctx();

    // Warm the cache: reopening a concert on sale decides nothing, and keeps
    // the state loaded for it.
    for n in 0..CONCERTS {
        let outcome = concerts
            .execute(&ctx, concert_id(n), None, &ConcertCommand::Reopen)
            .await
            .expect("warm the cache");
        assert!(!outcome.written(), "reopening a concert on sale is a no-op");
    }

    let now = unix_millis();
    let late_ms = now.saturating_sub(start_ms);
    tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now))).await;

    // Task t books holders t, t + TASKS, ... on every concert in turn
    // (starting at a different concert per task).
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (concerts, ctx, name) = (concerts.clone(), ctx.clone(), name.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in (t..HOLDERS).step_by(TASKS) {
                    for k in 0..CONCERTS {
                        let id = concert_id((t + k) % CONCERTS);
                        let holder = format!("{name}-{i}");
                        let answer = match concerts.execute(&ctx, &id, None, &book(&holder)).await {
                            Ok(outcome) if outcome.written() => Answer::Booked,
                            Ok(outcome) => panic!(
                                "{name}: booking {holder} on {id} wrote nothing (at version {:?})",
                                outcome.version
                            ),
                            Err(CommandError::Domain(ConcertError::SoldOut { .. })) => {
                                Answer::SoldOut
                            }
                            Err(CommandError::ConcurrencyConflict { .. }) => Answer::Conflict,
                            Err(other) => panic!("{name}: booking {holder} on {id}: {other:?}"),
                        };
                        answers.push((id, holder, answer));
                    }
                }
                answers
            })
        })
        .collect();

    let mut report = ChildReport {
        name,
        requests: 0,
        booked: BTreeMap::new(),
        sold_out: 0,
        conflicts: 0,
        refused_appends: 0,
        stale: 0,
        hits: 0,
        retries: 0,
        late_ms,
    };
    for task in tasks {
        for (id, holder, answer) in task.await.expect("a booking task") {
            report.requests += 1;
            match answer {
                Answer::Booked => report.booked.entry(id).or_default().push(holder),
                Answer::SoldOut => report.sold_out += 1,
                Answer::Conflict => report.conflicts += 1,
            }
        }
    }
    report.refused_appends = u64::from(store.lost_races());
    let rendered = metrics.render();
    report.stale = counter(
        &rendered,
        "cairn_aggregate_cache_total",
        "outcome=\"stale\"",
    );
    report.hits = counter(&rendered, "cairn_aggregate_cache_total", "outcome=\"hit\"");
    report.retries = counter(&rendered, "cairn_command_retries_total", "");
    println!(
        "{RESULT_MARKER}{}",
        serde_json::to_string(&report).expect("a report")
    );
}

/// The sum of the samples of counter `name` for concerts whose labels
/// contain `label`, in the Prometheus text `rendered`.
fn counter(rendered: &str, name: &str, label: &str) -> u64 {
    rendered
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter(|line| line.contains("category=\"concert\"") && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}
