//! `cairn bench commands`: HTTP commands per second and their latency, met
//! the way a user meets them: the `cairn` binary itself started as
//! `cairn up --dev` on a fresh data directory (embedded SQLite) or a fresh
//! PostgreSQL schema, driven by concurrent clients over keep-alive
//! connections, beside the event store's own append rate measured in the
//! same run.
//!
//! In the order it runs:
//! 1. Baselines, before the server starts so they have the machine to
//!    themselves, on a fresh database of the same kind (a SQLite file in
//!    the run's scratch directory, or fresh PostgreSQL schemas), opened as
//!    `cairn bench store` opens its own ([`super::store::open`]):
//!    `raw_insert_1_per_tx` (plain SQL, one INSERT per transaction, see
//!    [`super::baseline`]) and `store_append` (the store's `append` of
//!    single events from as many writers as the bench has clients: the
//!    ceiling for commands that each append one event).
//! 2. `cairn up --dev --listen 127.0.0.1:0` on a data directory of its own
//!    (and, on PostgreSQL, a schema of its own); the address and the dev
//!    token come from its banner.
//! 3. Warm-up, untimed: one round of the flow per client.
//! 4. Timed: `--concurrency` clients, each repeating the README tour's
//!    flow: schedule a flight, add [`PASSENGERS`] passengers to it, board
//!    them. A command's latency runs from sending its request to the end of
//!    its response, which already carries the flight or passenger as the
//!    read model shows it (read-your-writes). Every [`PROBE_EVERY`]th
//!    command of each client is also followed to the audit log, the read
//!    model commands do not wait for ([`probe`]).
//! 5. The server is killed and its data directory and schemas removed,
//!    whether or not the run succeeded.
//!
//! Any 2xx answer counts as a command done; anything else is counted,
//! shown (status and problem body) and makes the run exit non-zero after
//! printing its figures, so a fast run of failures never passes for a
//! result. The dev token is never printed.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use axum::http::{Method, StatusCode};
use cairn_core::TenantId;
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::{
    report::{self, Metric},
    store::{self as store_bench, append_concurrent, append_loop},
    up::{Answer, Api, Backend, Scratch, Server},
    workload::{latency_histogram, quantile_ms, rate, record},
};
use cairn_store::StoreUrl;

pub(crate) const LONG_ABOUT: &str = "\
HTTP commands per second and their latency through a real `cairn up`,
beside the event store's append rate measured in the same run.

The bench starts this binary as `cairn up --dev --listen 127.0.0.1:0` on a
fresh data directory (--store embedded, the default: SQLite) or a fresh
PostgreSQL schema (--store postgres://USER@HOST/DB: schema
cairn_bench_cmd_<unix-ts>_<pid> and its _read schema), and drives it with
--concurrency clients over keep-alive HTTP/1.1 connections. Each client
repeats the README tour's flow: POST /api/flights, then 4 x POST
/api/passengers on that flight, then 4 x POST /api/passengers/<id>/boarding.
Any 2xx is a command done; anything else is an error, reported, and the
run exits non-zero.

Figures:
  commands                   commands/s of all kinds, against store_append
  commands_p50/_p99          from sending a command to the end of its
                             response; the response waits until the
                             flights and passengers read models have the
                             write, so this is also command to those models
  create_flight, add_passenger, board_passenger (+ _p50/_p99): per kind
  command_to_read_model_p50/_p99
                             every 10th command of each client: from
                             sending it until GET /api/audit?stream=S&
                             minPosition=P (sent as soon as the command
                             answers with X-Cairn-Position P) returns;
                             the audit log is the read model commands do
                             not wait for, so this covers every read
                             model the command reaches (an answer of 202
                             is first followed by GET <resource>?minPosition=P)
  audit_probe_p50/_p99       the part of that after the command's response
  store_append               events/s: the store's append of single events
                             from --concurrency writers on a fresh database
                             of the same kind, against raw_insert_1_per_tx
  raw_insert_1_per_tx        rows/s of plain single-row INSERTs

The baselines run first, before the server starts; the server is killed and
its data removed at the end. Client and server share the machine.";

/// Passengers added to, then boarded on, each flight.
pub(crate) const PASSENGERS: usize = 4;
/// Commands in one round of the flow: schedule, add, board.
const ROUND: u64 = 1 + 2 * PASSENGERS as u64;
/// Every this many commands, a client follows one to the audit log.
const PROBE_EVERY: u64 = 10;
/// Failures shown in full at the end; the rest are only counted.
const SHOWN_FAILURES: usize = 5;
/// Tenant of the baseline's appends.
const BASELINE_TENANT: &str = "bench";

#[derive(Debug, Args)]
pub struct CommandsArgs {
    /// Where `cairn up` keeps its events: `embedded` (SQLite in a fresh
    /// data directory) or postgres://USER@HOST/DB (a fresh schema).
    #[arg(long, value_name = "URL", default_value = "embedded")]
    store: String,
    /// Seconds of timed load (after a warm-up).
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 20,
        conflicts_with = "commands"
    )]
    duration: u64,
    /// Run exactly this many timed commands instead of --duration.
    #[arg(long, value_name = "N")]
    commands: Option<u64>,
    /// Concurrent clients, each with its own keep-alive connection.
    #[arg(long, value_name = "N", default_value_t = 32)]
    concurrency: usize,
    /// Also write the results as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How long the timed phase lasts.
#[derive(Debug)]
enum Budget {
    /// This many commands are left to start.
    Commands(AtomicU64),
    Until(Instant),
}

impl Budget {
    /// Whether one more command may start (and, by count, claims it).
    fn take(&self) -> bool {
        match self {
            Self::Commands(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            Self::Until(deadline) => Instant::now() < *deadline,
        }
    }
}

pub(crate) async fn run(args: CommandsArgs) -> anyhow::Result<()> {
    let backend = Backend::parse(&args.store)?;
    if !(1..=1024).contains(&args.concurrency) {
        bail!("--concurrency: must be between 1 and 1024");
    }
    if args.commands == Some(0) || (args.commands.is_none() && args.duration == 0) {
        bail!("--commands and --duration must be at least 1");
    }
    let scratch = Scratch::create("cairn_bench_cmd")?;
    let name = &scratch.name;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cairn bench commands");
    match &backend {
        Backend::Embedded => println!("store:       embedded (SQLite, fresh data directory)"),
        Backend::Postgres(url) => println!(
            "store:       {} (schema {name})",
            StoreUrl::Postgres(url.clone()).redacted()
        ),
    }
    println!(
        "clients:     {} (flow: 1 flight, {PASSENGERS} passengers added, {PASSENGERS} boarded)",
        args.concurrency
    );
    match args.commands {
        Some(n) => println!("run:         {n} commands after a warm-up"),
        None => println!("run:         {} s after a warm-up", args.duration),
    }
    println!("cores:       {cores} (shared by the server and the clients)");

    let outcome = tokio::select! {
        outcome = suite(&args, &backend, &scratch.dir, name) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The suite's server is gone by now (killed when dropped), so its data
    // can go whether or not the run succeeded.
    let cleaned = scratch.remove(&backend).await;
    let (metrics, failures) = outcome?;

    println!();
    print!("{}", report::table(&metrics));
    if let Some(path) = &args.json {
        report::write_json(path, &metrics)?;
        println!("wrote {}", path.display());
    }
    cleaned?;
    if failures > 0 {
        bail!("{failures} requests failed (see above); the figures do not stand for a clean run");
    }
    Ok(())
}

/// Baselines, then the server under load; the metrics and how many
/// requests failed.
async fn suite(
    args: &CommandsArgs,
    backend: &Backend,
    scratch: &Path,
    name: &str,
) -> anyhow::Result<(Vec<Metric>, u64)> {
    let timed_commands = args
        .commands
        .unwrap_or_else(|| args.duration.saturating_mul(1_000));
    let (raw, append) = baselines(backend, scratch, args.concurrency, timed_commands).await?;

    let server = tokio::task::spawn_blocking({
        let (backend, dir) = (backend.clone(), scratch.join("up"));
        let schema = name.to_owned();
        move || Server::start(&backend, &dir, &schema)
    })
    .await
    .context("starting cairn up")??;
    eprintln!("bench: cairn up listening on {}", server.base);
    let api = Api::new(&server.base, &server.token)?;

    eprintln!(
        "bench: warm-up ({} commands)",
        args.concurrency as u64 * ROUND
    );
    let warm = load(
        &api,
        args.concurrency,
        Budget::Commands(AtomicU64::new(args.concurrency as u64 * ROUND)),
    )
    .await?;
    if let Some(failure) = warm.tally.failures.first() {
        bail!("the warm-up failed: {failure}");
    }

    let budget = match args.commands {
        Some(n) => Budget::Commands(AtomicU64::new(n)),
        None => Budget::Until(Instant::now() + Duration::from_secs(args.duration)),
    };
    eprintln!("bench: timed run");
    let timed = load(&api, args.concurrency, budget).await?;
    drop(server);

    let tally = &timed.tally;
    for failure in &tally.failures {
        eprintln!("bench: failed: {failure}");
    }
    let errors = tally.errors + tally.probe_errors;
    if errors as usize > tally.failures.len() {
        eprintln!(
            "bench: ... {} more failures",
            errors as usize - tally.failures.len()
        );
    }
    Ok((metrics(&timed, raw, append), errors))
}

/// `raw_insert_1_per_tx` and `store_append` (events/s) on a fresh database
/// of the backend's kind, removed again before returning.
async fn baselines(
    backend: &Backend,
    scratch: &Path,
    writers: usize,
    timed_commands: u64,
) -> anyhow::Result<(f64, f64)> {
    let url = match backend {
        Backend::Embedded => {
            StoreUrl::Sqlite(scratch.join("baseline.db").to_string_lossy().into_owned())
        }
        Backend::Postgres(url) => StoreUrl::Postgres(url.clone()),
    };
    let tenant = TenantId::new(BASELINE_TENANT).context("baseline tenant")?;
    // As many appends as the run makes commands, within bounds that keep
    // each baseline between well under a second and a few seconds.
    let events = timed_commands.clamp(1_000, 30_000);
    let (opened, cleanup) = store_bench::open(&url, &tenant).await;
    let measured = async {
        let target = opened?;
        let mut baseline = target
            .baseline
            .context("every backend of this bench has a SQL baseline")?;
        let store = target.store;
        eprintln!("bench: baseline warm-up");
        baseline.insert_1_per_tx("order-warmup", 200).await?;
        let stream = cairn_core::StreamId::new("order-warmup").context("stream id")?;
        append_loop(&store, &tenant, stream, 200, 1).await?;
        eprintln!("bench: raw_insert_1_per_tx ({events} rows)");
        let raw = baseline.insert_1_per_tx("order-raw1", events).await?;
        let per_writer = events.div_ceil(writers as u64);
        eprintln!("bench: store_append ({writers} writers x {per_writer} events)");
        let append = append_concurrent(&store, &tenant, writers, per_writer).await?;
        anyhow::Ok((
            rate(raw.rows, raw.elapsed),
            rate(append.events, append.elapsed),
        ))
    }
    .await;
    let cleaned = store_bench::clean(cleanup).await;
    let measured = measured?;
    cleaned?;
    Ok(measured)
}

/// The table: throughput against the baselines, then latencies.
fn metrics(run: &Timed, raw: f64, append: f64) -> Vec<Metric> {
    let tally = &run.tally;
    let done: u64 = tally.done.iter().sum();
    let mut all = latency_histogram();
    for h in &tally.latency {
        // Same bounds on every histogram, so adding cannot fail.
        let _ = all.add(h);
    }
    let mut out = vec![
        Metric::new("commands", rate(done, run.elapsed), "commands/s")
            .against(Some(("store_append", append))),
    ];
    out.extend(quantiles("commands", &all));
    for kind in Kind::ALL {
        let i = kind as usize;
        out.push(Metric::new(
            kind.name(),
            rate(tally.done[i], run.elapsed),
            "commands/s",
        ));
        out.extend(quantiles(kind.name(), &tally.latency[i]));
    }
    out.extend(quantiles("command_to_read_model", &tally.to_read_model));
    out.extend(quantiles("audit_probe", &tally.audit_probe));
    out.push(Metric::new("commands_done", done as f64, "commands"));
    out.push(Metric::new(
        "commands_accepted_202",
        tally.accepted as f64,
        "commands",
    ));
    out.push(Metric::new(
        "read_model_probes",
        tally.to_read_model.len() as f64,
        "probes",
    ));
    out.push(Metric::new(
        "errors",
        (tally.errors + tally.probe_errors) as f64,
        "requests",
    ));
    out.push(
        Metric::new("store_append", append, "events/s").against(Some(("raw_insert_1_per_tx", raw))),
    );
    out.push(Metric::new("raw_insert_1_per_tx", raw, "rows/s"));
    out
}

fn quantiles(name: &str, histogram: &Histogram<u64>) -> [Metric; 2] {
    [
        Metric::new(format!("{name}_p50"), quantile_ms(histogram, 0.50), "ms"),
        Metric::new(format!("{name}_p99"), quantile_ms(histogram, 0.99), "ms"),
    ]
}

/// The kinds of command the flow sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    CreateFlight = 0,
    AddPassenger = 1,
    BoardPassenger = 2,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::CreateFlight, Kind::AddPassenger, Kind::BoardPassenger];

    fn name(self) -> &'static str {
        match self {
            Kind::CreateFlight => "create_flight",
            Kind::AddPassenger => "add_passenger",
            Kind::BoardPassenger => "board_passenger",
        }
    }
}

/// What one or more clients saw.
#[derive(Debug)]
struct Tally {
    /// Per [`Kind`]: latency of its 2xx answers (µs) and their count.
    latency: [Histogram<u64>; 3],
    done: [u64; 3],
    /// Commands answered 202 (written, read model behind).
    accepted: u64,
    /// Non-2xx answers and requests without an answer.
    errors: u64,
    to_read_model: Histogram<u64>,
    audit_probe: Histogram<u64>,
    probe_errors: u64,
    /// The first few failures, described.
    failures: Vec<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency: [
                latency_histogram(),
                latency_histogram(),
                latency_histogram(),
            ],
            done: [0; 3],
            accepted: 0,
            errors: 0,
            to_read_model: latency_histogram(),
            audit_probe: latency_histogram(),
            probe_errors: 0,
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, what: String) {
        if self.failures.len() < SHOWN_FAILURES {
            self.failures.push(what);
        }
    }

    fn merge(&mut self, other: Tally) {
        // Every histogram has the same bounds, so adding cannot fail.
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            let _ = mine.add(theirs);
        }
        for (mine, theirs) in self.done.iter_mut().zip(other.done) {
            *mine += theirs;
        }
        self.accepted += other.accepted;
        self.errors += other.errors;
        let _ = self.to_read_model.add(&other.to_read_model);
        let _ = self.audit_probe.add(&other.audit_probe);
        self.probe_errors += other.probe_errors;
        for failure in other.failures {
            self.fail(failure);
        }
    }
}

/// A timed load's outcome.
#[derive(Debug)]
struct Timed {
    tally: Tally,
    /// From the start until the last command answered (probes still
    /// finishing afterwards are not counted in).
    elapsed: Duration,
}

/// `clients` clients running the flow until `budget` is spent.
async fn load(api: &Api, clients: usize, budget: Budget) -> anyhow::Result<Timed> {
    let budget = Arc::new(budget);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..clients {
        tasks.spawn(flow(api.clone(), n, Arc::clone(&budget)));
    }
    let mut tally = Tally::new();
    let mut last = start;
    while let Some(joined) = tasks.join_next().await {
        let (client, ended) = joined.context("a client task failed")?;
        tally.merge(client);
        last = last.max(ended);
    }
    Ok(Timed {
        tally,
        elapsed: last - start,
    })
}

/// A command's 2xx answer and when the command was sent.
#[derive(Debug)]
struct Sent {
    at: Instant,
    answer: Answer,
}

/// What one client does: rounds of the flow while the budget lasts; then
/// waits for its probes. Returns its tally and when its last command
/// answered.
async fn flow(api: Api, client: usize, budget: Arc<Budget>) -> (Tally, Instant) {
    let mut tally = Tally::new();
    let mut probes = JoinSet::new();
    let mut sent = 0u64;
    let mut round = 0u64;
    let mut last = Instant::now();
    'rounds: loop {
        round += 1;
        if !budget.take() {
            break;
        }
        let Some(flight) = command(
            &api,
            Kind::CreateFlight,
            "/api/flights",
            &new_flight(client, round),
            &mut tally,
        )
        .await
        else {
            last = Instant::now();
            continue;
        };
        last = Instant::now();
        let Some(flight_id) = id_of(&flight.answer) else {
            tally.errors += 1;
            tally.fail(format!(
                "create_flight: no id in {}",
                flight.answer.describe()
            ));
            continue;
        };
        let flight_stream = format!("flight-{flight_id}");
        let manifest = format!("manifest-{flight_id}");
        sent += 1;
        maybe_probe(
            &mut probes,
            &api,
            sent,
            flight,
            format!("/api/flights/{flight_id}"),
            flight_stream,
        );

        let mut passengers = Vec::with_capacity(PASSENGERS);
        for seat in 0..PASSENGERS {
            if !budget.take() {
                break 'rounds;
            }
            let body = json!({
                "flightId": flight_id,
                "name": "Ada Lovelace",
                "document": format!("P{client:04}{round:07}{seat}"),
            });
            let added = command(
                &api,
                Kind::AddPassenger,
                "/api/passengers",
                &body,
                &mut tally,
            )
            .await;
            last = Instant::now();
            let Some(added) = added else { continue };
            let Some(passenger_id) = id_of(&added.answer) else {
                tally.errors += 1;
                tally.fail(format!(
                    "add_passenger: no id in {}",
                    added.answer.describe()
                ));
                continue;
            };
            sent += 1;
            passengers.push(passenger_id.clone());
            maybe_probe(
                &mut probes,
                &api,
                sent,
                added,
                format!("/api/passengers/{passenger_id}"),
                manifest.clone(),
            );
        }
        for passenger_id in passengers {
            if !budget.take() {
                break 'rounds;
            }
            let path = format!("/api/passengers/{passenger_id}/boarding");
            let boarded = command_without_body(&api, &path, &mut tally).await;
            last = Instant::now();
            if let Some(boarded) = boarded {
                sent += 1;
                maybe_probe(
                    &mut probes,
                    &api,
                    sent,
                    boarded,
                    format!("/api/passengers/{passenger_id}"),
                    manifest.clone(),
                );
            }
        }
    }
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(Ok((total, audit))) => {
                record(&mut tally.to_read_model, total);
                record(&mut tally.audit_probe, audit);
            }
            Ok(Err(e)) => {
                tally.probe_errors += 1;
                tally.fail(format!("read-model probe: {e:#}"));
            }
            Err(e) => {
                tally.probe_errors += 1;
                tally.fail(format!("read-model probe task: {e}"));
            }
        }
    }
    (tally, last)
}

fn new_flight(client: usize, round: u64) -> Value {
    json!({
        "number": format!("CB{}", 1 + (client as u64 * 7_919 + round) % 9_999),
        "origin": "ARN",
        "destination": "LHR",
        "departure": "2030-12-01T08:00:00Z",
        "arrival": "2030-12-01T10:30:00Z",
        "capacity": PASSENGERS,
    })
}

fn id_of(answer: &Answer) -> Option<String> {
    answer.json()?.get("id")?.as_str().map(str::to_owned)
}

/// Sends one POST with a JSON body and records it; the answer when it is
/// a 2xx.
async fn command(
    api: &Api,
    kind: Kind,
    path: &str,
    body: &Value,
    tally: &mut Tally,
) -> Option<Sent> {
    let at = Instant::now();
    let answer = api.call(Method::POST, path, Some(body)).await;
    settle(kind, at, answer, tally)
}

/// Boarding: a POST without a body.
async fn command_without_body(api: &Api, path: &str, tally: &mut Tally) -> Option<Sent> {
    let at = Instant::now();
    let answer = api.call(Method::POST, path, None).await;
    settle(Kind::BoardPassenger, at, answer, tally)
}

fn settle(
    kind: Kind,
    at: Instant,
    answer: anyhow::Result<Answer>,
    tally: &mut Tally,
) -> Option<Sent> {
    let elapsed = at.elapsed();
    match answer {
        Ok(answer) if answer.status.is_success() => {
            record(&mut tally.latency[kind as usize], elapsed);
            tally.done[kind as usize] += 1;
            if answer.status == StatusCode::ACCEPTED {
                tally.accepted += 1;
            }
            Some(Sent { at, answer })
        }
        Ok(answer) => {
            tally.errors += 1;
            tally.fail(format!("{}: {}", kind.name(), answer.describe()));
            None
        }
        Err(e) => {
            tally.errors += 1;
            tally.fail(format!("{}: {e:#}", kind.name()));
            None
        }
    }
}

/// Follows every [`PROBE_EVERY`]th command (`n` counts a client's commands
/// done) to the read models, in a task of its own so the client goes on.
fn maybe_probe(
    probes: &mut JoinSet<anyhow::Result<(Duration, Duration)>>,
    api: &Api,
    n: u64,
    sent: Sent,
    resource: String,
    stream: String,
) {
    if n.is_multiple_of(PROBE_EVERY) {
        probes.spawn(probe(api.clone(), sent, resource, stream));
    }
}

/// How long after sending `sent` the client could read its write from
/// every read model it reaches, and the part of that after its answer.
///
/// The answer (2xx with `X-Cairn-Position: P`) already shows the flights
/// or passengers read model with the write unless it is a 202; then
/// `GET <resource>?minPosition=P` first waits for it. Then
/// `GET /api/audit?stream=<stream>&minPosition=P&limit=1` waits until the audit
/// log, which commands do not wait for, has reached P, and must list the
/// stream's event. Both waits happen in the server, so no polling interval
/// blurs the figure; it includes the probes' own round trips.
async fn probe(
    api: Api,
    sent: Sent,
    resource: String,
    stream: String,
) -> anyhow::Result<(Duration, Duration)> {
    let answered = Instant::now();
    let position = sent
        .answer
        .position
        .with_context(|| format!("the command on {resource} answered without X-Cairn-Position"))?;
    if sent.answer.status == StatusCode::ACCEPTED {
        let path = format!("{resource}?minPosition={position}");
        let read = api.call(Method::GET, &path, None).await?;
        if read.status != StatusCode::OK {
            bail!("GET {path}: {}", read.describe());
        }
    }
    let path = format!("/api/audit?stream={stream}&minPosition={position}&limit=1");
    let audit = api.call(Method::GET, &path, None).await?;
    let total = sent.at.elapsed();
    if audit.status != StatusCode::OK {
        bail!("GET {path}: {}", audit.describe());
    }
    let listed = audit
        .json()
        .and_then(|page| {
            page.get("items")
                .and_then(Value::as_array)
                .map(|items| !items.is_empty())
        })
        .unwrap_or(false);
    if !listed {
        bail!("GET {path} listed nothing: {}", audit.describe());
    }
    Ok((total, answered.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_budget_hands_out_exactly_its_commands() {
        let budget = Budget::Commands(AtomicU64::new(3));
        assert_eq!((0..10).filter(|_| budget.take()).count(), 3);
        let over = Budget::Until(Instant::now());
        assert!(!over.take());
    }

    #[test]
    fn flights_are_valid_for_any_client_and_round() {
        for (client, round) in [(0, 1), (1_023, 1), (31, 123_456_789)] {
            let number = new_flight(client, round)["number"]
                .as_str()
                .unwrap()
                .to_owned();
            let digits = &number[2..];
            assert!(
                (1..=4).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()),
                "{number}"
            );
        }
    }
}
