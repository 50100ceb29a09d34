//! `cairn bench live`: the live API (`/ws`, RES over WebSocket) of a real
//! `cairn up` under many idle-then-busy clients, beside a raw broadcast
//! over the same WebSocket stack measured in the same run.
//!
//! In the order it runs:
//! 1. `cairn up --dev --listen 127.0.0.1:0` as `cairn bench commands`
//!    starts it ([`crate::up`]); one flight is scheduled over HTTP.
//! 2. Warm-up, untimed: one client subscribes, one passenger is added and
//!    removed, and both commands' `audit.log` adds must reach it: this also
//!    checks the signal the latencies are matched on (below).
//! 3. The server's RSS (`VmRSS`), then `--clients` WebSocket clients, each
//!    with the dev token as `Authorization: Bearer` at the upgrade, each
//!    subscribing to `audit.log` and to `flights.flight.<id>` (all to the
//!    same flight); idle for 5 s, the RSS again.
//! 4. Timed: commands at a fixed `--rate` for `--duration` seconds over
//!    HTTP, open loop (each sent at its time, whatever the ones before are
//!    doing): `POST /api/passengers` on the flight, then `DELETE
//!    /api/passengers/<id>` of that passenger, in turn, so the flight (1,000
//!    seats) never fills, even with commands answered late. Each changes the flight's counts (a `change` on
//!    `flights.flight.<id>`) and appends one event, which reaches the audit
//!    log (an `add` on `audit.log`, and a `remove` of its oldest entry once
//!    it holds 50).
//! 5. The signal: a command's latency at a client runs from sending its
//!    request to the client reading the `audit.log.add` whose entry's
//!    `position` is the command's `X-Cairn-Position`. The audit log reads
//!    every event, so every command has exactly one such frame per client.
//!    Clients note (position, time) and the matching happens at the end,
//!    since a frame may arrive before the command's HTTP answer.
//! 6. The server is killed and its data removed; then the baseline, with
//!    the machine to itself: an axum `ws` server in this process and the
//!    same client code, the same number of clients, each "subscribing" as
//!    above (answered with an empty result), and a tokio broadcast of the
//!    frames Cairn delivered per command (as many, of the same mean sizes,
//!    the first shaped like an `audit.log.add` carrying the tick's number)
//!    at the same rate for as many ticks; then the same flat out for a few
//!    seconds (at most [`CEILING_WINDOW`] frames not yet handed to every
//!    connection): the stack's ceiling with this many clients.

use std::{
    borrow::Cow,
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, anyhow, bail};
use axum::{
    Router,
    extract::{
        State, WebSocketUpgrade,
        ws::{self, CloseFrame, WebSocket},
    },
    http::Method,
    response::Response,
    routing::get,
};
use cairn_store::StoreUrl;
use clap::Args;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, broadcast, mpsc, watch},
    task::JoinSet,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{
        Message,
        client::IntoClientRequest,
        http::{HeaderValue, header::AUTHORIZATION},
        protocol::WebSocketConfig,
    },
};

use super::{
    report::{self, Metric},
    up::{Answer, Api, Backend, Scratch, Server},
    workload::{latency_histogram, quantile_ms, rate, record},
};

pub(crate) const LONG_ABOUT: &str = "\
The live API (/ws, RES over WebSocket) of a real `cairn up` with many
subscribed clients, beside a raw broadcast over the same WebSocket stack
(axum's ws server, tokio-tungstenite clients) measured in the same run.

The bench starts this binary as `cairn up --dev --listen 127.0.0.1:0` on a
fresh data directory (--store embedded, the default: SQLite) or a fresh
PostgreSQL schema (--store postgres://USER@HOST/DB: schema
cairn_bench_live_<unix-ts>_<pid> and its _read schema), schedules one
flight over HTTP, and opens --clients WebSocket connections to /ws, each
with the dev token (Authorization: Bearer) and subscribed to audit.log and
flights.flight.<id>. Then, for --duration seconds at --rate commands/s
(open loop), it adds a passenger to the flight (POST /api/passengers) and
removes it again (DELETE /api/passengers/<id>), in turn. A command's
latency at a client runs from sending its request to the client reading
the audit.log `add` whose entry's position is the command's
X-Cairn-Position (one per command per client).

Figures:
  updates                    live event frames/s received by all clients
                             (audit.log add and remove, the flight's
                             change), against raw_broadcast
  deliveries                 of those, the matched audit.log adds/s,
                             against raw_broadcast_deliveries
  update_p50/_p99/_max       command sent -> client read its audit.log add,
                             over all clients
  commands, command_p50/_p99 HTTP commands/s done, and their answers
  commands_failed            non-2xx or unanswered (the run exits non-zero)
  clients_dropped            connections closed or unsubscribed before the
                             end (the run exits non-zero)
  deliveries_missing         matched adds that never came
  kib_per_connection         (RSS with the clients connected, subscribed
                             and idle - RSS before) / clients; the RSS is
                             VmRSS of the `cairn up` process
  raw_broadcast(_p50/_p99)   the baseline at the same rate: per command
                             as many frames of the same mean sizes as
                             Cairn delivered, to as many clients
  raw_broadcast_ceiling      the same broadcast flat out for 5 s
  offered_updates            --rate x frames per command x --clients,
                             against the ceiling (the ratio is the share
                             of the ceiling offered; half_ceiling_rate is
                             the --rate that offers half of it)

The open-files limit is raised to what the clients need when the hard limit
allows (else: ulimit -n). The dev token is never printed. Client, server
and baseline share the machine; the baseline runs after the server is
gone.";

/// The event whose frames are matched to commands.
const SIGNAL_EVENT: &str = "audit.log.add";
/// The resource every client holds besides its flight.
const AUDIT_LOG: &str = "audit.log";
/// Connections being opened and subscribed at once.
const SETUP_CONCURRENCY: usize = 64;
/// Longest one client may take to connect and subscribe.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time before reading the server's RSS, read every
/// [`SETTLE_STEP`] meanwhile to show how steady it is.
const SETTLE: Duration = Duration::from_secs(5);
const SETTLE_STEP: Duration = Duration::from_millis(500);
/// Longest wait, after the last command answered, for every client to read
/// its frame.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the baseline broadcasts flat out.
const CEILING_TIME: Duration = Duration::from_secs(5);
/// Broadcast frames not yet handed to every connection, at most, while
/// flat out (well below [`BROADCAST_CAPACITY`], so none is lost).
const CEILING_WINDOW: usize = 64;
/// The baseline's broadcast queue (the live API keeps 4,096 changes).
const BROADCAST_CAPACITY: usize = 4096;
/// Failures and drops shown in full; the rest are only counted.
const SHOWN: usize = 5;
/// Frames per command the baseline sends at most.
const MAX_FRAMES_PER_COMMAND: usize = 16;

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Where `cairn up` keeps its events: `embedded` (SQLite in a fresh
    /// data directory) or postgres://USER@HOST/DB (a fresh schema).
    #[arg(long, value_name = "URL", default_value = "embedded")]
    store: String,
    /// WebSocket clients, each subscribed to `audit.log` and the flight.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    clients: usize,
    /// Commands per second (open loop).
    #[arg(long, value_name = "PER_SEC", default_value_t = 20.0)]
    rate: f64,
    /// Seconds of commands.
    #[arg(long, value_name = "SECS", default_value_t = 20)]
    duration: u64,
    /// Also write the results as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub(crate) async fn run(args: LiveArgs) -> anyhow::Result<()> {
    let backend = Backend::parse(&args.store)?;
    if !(1..=20_000).contains(&args.clients) {
        bail!("--clients: must be between 1 and 20000");
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 10_000.0) {
        bail!("--rate: must be above 0 and at most 10000");
    }
    if args.duration == 0 {
        bail!("--duration must be at least 1");
    }
    let commands = (args.rate * args.duration as f64).round().max(1.0) as u64;
    // The bench holds a socket per client, and during the baseline the
    // server's side too; `cairn up` inherits the limit.
    raise_open_files(2 * args.clients as u64 + 512)?;
    let scratch = Scratch::create("cairn_bench_live")?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cairn bench live");
    match &backend {
        Backend::Embedded => println!("store:       embedded (SQLite, fresh data directory)"),
        Backend::Postgres(url) => println!(
            "store:       {} (schema {})",
            StoreUrl::Postgres(url.clone()).redacted(),
            scratch.name
        ),
    }
    println!(
        "clients:     {} WebSocket clients, each subscribed to {AUDIT_LOG} and one flight",
        args.clients
    );
    println!(
        "run:         {} commands/s for {} s ({commands} commands: add a passenger, remove it, in turn)",
        args.rate, args.duration
    );
    println!("cores:       {cores} (shared by the server, the clients and the baseline)");

    let outcome = tokio::select! {
        outcome = suite(&args, &backend, &scratch, commands) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The server is gone by now (killed when dropped).
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
        bail!(
            "{failures} commands failed or clients dropped (see above); the figures do not stand for a clean run"
        );
    }
    Ok(())
}

/// Raises the soft limit of open files to `need` when it is lower and the
/// hard limit allows.
#[cfg(unix)]
fn raise_open_files(need: u64) -> anyhow::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= need {
        return Ok(());
    }
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if hard < need {
        bail!(
            "these clients need about {need} open files and the hard limit is {hard}: \
             raise it (ulimit -Hn {need}, as root) or use fewer --clients"
        );
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: limit.maximum,
        },
    )
    .with_context(|| format!("raising the open-files limit from {current} to {need}"))?;
    eprintln!("bench: open-files limit raised from {current} to {need}");
    Ok(())
}

#[cfg(not(unix))]
fn raise_open_files(_need: u64) -> anyhow::Result<()> {
    Ok(())
}

/// Cairn, then the baseline; the metrics and how many commands failed
/// and clients dropped.
async fn suite(
    args: &LiveArgs,
    backend: &Backend,
    scratch: &Scratch,
    commands: u64,
) -> anyhow::Result<(Vec<Metric>, u64)> {
    let clock = Clock(Instant::now());
    let cairn = cairn(args, backend, scratch, commands, clock).await?;
    let shape = cairn.delivered.shape();
    eprintln!(
        "bench: baseline: raw broadcast, {} clients, {} frames per command ({} + {} bytes)",
        args.clients, shape.frames, shape.signal_bytes, shape.other_bytes
    );
    let raw = raw_broadcast(args.clients, args.rate, commands, shape, clock).await?;

    for failure in &cairn.driven.failures {
        eprintln!("bench: failed: {failure}");
    }
    if cairn.driven.failed as usize > cairn.driven.failures.len() {
        eprintln!(
            "bench: ... {} more failures",
            cairn.driven.failed as usize - cairn.driven.failures.len()
        );
    }
    for (who, delivered) in [("cairn", &cairn.delivered), ("baseline", &raw.paced)] {
        show_drops(who, delivered);
    }
    show_drops("baseline ceiling", &raw.ceiling);
    let failures = cairn.driven.failed
        + cairn.delivered.dropped.len() as u64
        + raw.paced.dropped.len() as u64
        + raw.ceiling.dropped.len() as u64;
    Ok((metrics(args, &cairn, &raw, shape), failures))
}

fn show_drops(who: &str, delivered: &Delivered) {
    for reason in delivered.dropped.iter().take(SHOWN) {
        eprintln!("bench: {who}: a client dropped: {reason}");
    }
    if delivered.dropped.len() > SHOWN {
        eprintln!(
            "bench: {who}: ... {} more clients dropped",
            delivered.dropped.len() - SHOWN
        );
    }
}

/// What the Cairn side measured.
#[derive(Debug)]
struct CairnRun {
    driven: Driven,
    delivered: Delivered,
    rss_before: u64,
    rss_idle: u64,
    rss_after: u64,
}

async fn cairn(
    args: &LiveArgs,
    backend: &Backend,
    scratch: &Scratch,
    commands: u64,
    clock: Clock,
) -> anyhow::Result<CairnRun> {
    let server = tokio::task::spawn_blocking({
        let (backend, dir, schema) = (
            backend.clone(),
            scratch.dir.join("up"),
            scratch.name.clone(),
        );
        move || Server::start(&backend, &dir, &schema)
    })
    .await
    .context("starting cairn up")??;
    eprintln!("bench: cairn up listening on {}", server.base);
    let api = Api::new(&server.base, &server.token)?;
    let flight = schedule(&api).await?;
    let url = ws_url(&server.base)?;
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", server.token))
        .map_err(|_| anyhow!("the server's token is not a valid header value"))?;
    authorization.set_sensitive(true);
    let rids = [AUDIT_LOG.to_owned(), format!("flights.flight.{flight}")];

    eprintln!("bench: warm-up (1 client, 2 commands)");
    warm_up(&api, &url, &authorization, &rids, &flight, clock).await?;
    let rss_before = settled_rss(&server, "before the clients").await?;

    eprintln!("bench: connecting {} clients", args.clients);
    let fleet = Fleet::connect(&url, Some(&authorization), &rids, args.clients, clock).await?;
    let rss_idle = settled_rss(&server, "with the clients idle").await?;

    eprintln!("bench: timed run");
    let t0 = fleet.begin();
    let driven = drive(&api, &flight, args.rate, commands, clock, t0).await;
    if let Some(last) = driven.sends.keys().max()
        && !fleet.drain(*last, DRAIN_TIMEOUT).await
    {
        eprintln!("bench: not every client had its last update {DRAIN_TIMEOUT:?} after the run");
    }
    let rss_after = server.rss_kib()?;
    let seen = fleet.finish().await;
    drop(server);
    let delivered = Delivered::tally(&seen, &driven.sends, clock.micros_at(t0));
    Ok(CairnRun {
        driven,
        delivered,
        rss_before,
        rss_idle,
        rss_after,
    })
}

/// The server's RSS after [`SETTLE`] of quiet (KiB); the range it moved
/// in meanwhile is shown.
async fn settled_rss(server: &Server, when: &str) -> anyhow::Result<u64> {
    let (mut low, mut high) = (u64::MAX, 0);
    let steps = (SETTLE.as_millis() / SETTLE_STEP.as_millis()).max(1);
    let mut rss = 0;
    for _ in 0..steps {
        tokio::time::sleep(SETTLE_STEP).await;
        rss = server.rss_kib()?;
        (low, high) = (low.min(rss), high.max(rss));
    }
    eprintln!("bench: RSS {when}: {rss} KiB (between {low} and {high} over {SETTLE:?} idle)");
    Ok(rss)
}

/// `ws://HOST:PORT/ws` for the server at `http://HOST:PORT`.
fn ws_url(base: &str) -> anyhow::Result<String> {
    let host = base
        .strip_prefix("http://")
        .with_context(|| format!("expected an http:// address, got {base}"))?;
    Ok(format!("ws://{}/ws", host.trim_end_matches('/')))
}

/// Schedules the flight every client holds; its id.
async fn schedule(api: &Api) -> anyhow::Result<String> {
    let flight = json!({
        "number": "LB1",
        "origin": "ARN",
        "destination": "LHR",
        "departure": "2030-12-01T08:00:00Z",
        "arrival": "2030-12-01T10:30:00Z",
        // The most seats a flight may have: commands answered late still
        // find a seat while earlier ones wait for their removal.
        "capacity": 1000,
    });
    let answer = api
        .call(Method::POST, "/api/flights", Some(&flight))
        .await?;
    if !answer.status.is_success() {
        bail!("scheduling the flight: {}", answer.describe());
    }
    id_of(&answer).with_context(|| format!("scheduling the flight: no id in {}", answer.describe()))
}

fn id_of(answer: &Answer) -> Option<String> {
    answer.json()?.get("id")?.as_str().map(str::to_owned)
}

/// One client through the whole path: both commands' adds must reach it,
/// matched by position.
async fn warm_up(
    api: &Api,
    url: &str,
    authorization: &HeaderValue,
    rids: &[String],
    flight: &str,
    clock: Clock,
) -> anyhow::Result<()> {
    let fleet = Fleet::connect(url, Some(authorization), rids, 1, clock).await?;
    let t0 = fleet.begin();
    let outcomes = add_then_remove(
        api.clone(),
        flight.to_owned(),
        "LBWARMUP".to_owned(),
        Some(Instant::now()),
        clock,
    )
    .await;
    let mut sends = HashMap::new();
    for outcome in outcomes {
        match outcome.result {
            Ok(position) => sends.insert(position, outcome.sent),
            Err(e) => bail!("the warm-up failed: {}: {e}", outcome.kind),
        };
    }
    let last = sends.keys().max().copied().unwrap_or_default();
    fleet.drain(last, DRAIN_TIMEOUT).await;
    let seen = fleet.finish().await;
    let delivered = Delivered::tally(&seen, &sends, clock.micros_at(t0));
    if let Some(reason) = delivered.dropped.first() {
        bail!("the warm-up's client dropped: {reason}");
    }
    if delivered.matched != sends.len() as u64 {
        bail!(
            "the warm-up's client read {} of {} {SIGNAL_EVENT} frames whose position is a \
             command's X-Cairn-Position (within {DRAIN_TIMEOUT:?}); the signal this bench \
             matches on is missing",
            delivered.matched,
            sends.len()
        );
    }
    Ok(())
}

/// A monotonic clock shared by the commands, the clients and the
/// baseline: microseconds since the bench started.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn micros(self) -> u64 {
        self.micros_at(Instant::now())
    }

    fn micros_at(self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.0).as_micros()).unwrap_or(u64::MAX)
    }
}

/// One command's outcome: its position when it was done.
#[derive(Debug)]
struct Outcome {
    kind: &'static str,
    sent: u64,
    answered: u64,
    result: Result<u64, String>,
}

/// What the commands did.
#[derive(Debug)]
struct Driven {
    /// Position -> when the command was sent (µs on the clock).
    sends: HashMap<u64, u64>,
    failed: u64,
    failures: Vec<String>,
    /// From sending to the end of the answer, of the commands done.
    latency: Histogram<u64>,
    /// When the first command was due and when the last answered (µs on
    /// the clock).
    start: u64,
    last_answer: u64,
}

impl Driven {
    fn note(&mut self, outcome: Outcome) {
        self.last_answer = self.last_answer.max(outcome.answered);
        match outcome.result {
            Ok(position) => {
                self.sends.insert(position, outcome.sent);
                record(
                    &mut self.latency,
                    Duration::from_micros(outcome.answered.saturating_sub(outcome.sent)),
                );
            }
            Err(e) => {
                self.failed += 1;
                if self.failures.len() < SHOWN {
                    self.failures.push(format!("{}: {e}", outcome.kind));
                }
            }
        }
    }
}

/// `commands` commands at `rate` per second from `t0`, each sent at its
/// time: pairs of an add and the removal of the same passenger.
async fn drive(
    api: &Api,
    flight: &str,
    rate: f64,
    commands: u64,
    clock: Clock,
    t0: Instant,
) -> Driven {
    let due = |n: u64| t0 + Duration::from_secs_f64(n as f64 / rate);
    let mut tasks = JoinSet::new();
    for pair in 0..commands.div_ceil(2) {
        let first = 2 * pair;
        tokio::time::sleep_until(due(first).into()).await;
        let removal = (first + 1 < commands).then(|| due(first + 1));
        tasks.spawn(add_then_remove(
            api.clone(),
            flight.to_owned(),
            format!("LB{pair:010}"),
            removal,
            clock,
        ));
    }
    let mut driven = Driven {
        sends: HashMap::with_capacity(commands as usize),
        failed: 0,
        failures: Vec::new(),
        latency: latency_histogram(),
        start: clock.micros_at(t0),
        last_answer: 0,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(outcomes) => outcomes.into_iter().for_each(|o| driven.note(o)),
            Err(e) => driven.note(Outcome {
                kind: "command task",
                sent: 0,
                answered: 0,
                result: Err(e.to_string()),
            }),
        }
    }
    driven
}

/// Adds a passenger with `document` to `flight`; then, at `removal`,
/// removes it.
async fn add_then_remove(
    api: Api,
    flight: String,
    document: String,
    removal: Option<Instant>,
    clock: Clock,
) -> Vec<Outcome> {
    let body = json!({"flightId": flight, "name": "Grace Hopper", "document": document});
    let (added, id) = command(&api, Method::POST, "/api/passengers", Some(&body), clock).await;
    let answered = added.answered;
    let mut outcomes = vec![Outcome {
        kind: "add_passenger",
        ..added
    }];
    let Some(removal) = removal else {
        return outcomes;
    };
    let Some(id) = id else {
        outcomes.push(Outcome {
            kind: "remove_passenger",
            sent: answered,
            answered,
            result: Err("not sent: its passenger was not added".into()),
        });
        return outcomes;
    };
    tokio::time::sleep_until(removal.into()).await;
    let path = format!("/api/passengers/{id}");
    let (removed, _) = command(&api, Method::DELETE, &path, None, clock).await;
    outcomes.push(Outcome {
        kind: "remove_passenger",
        ..removed
    });
    outcomes
}

/// One command: its outcome (a 2xx with `X-Cairn-Position` is done) and
/// the id its answer names.
async fn command(
    api: &Api,
    method: Method,
    path: &str,
    body: Option<&Value>,
    clock: Clock,
) -> (Outcome, Option<String>) {
    let sent = clock.micros();
    let answer = api.call(method, path, body).await;
    let answered = clock.micros();
    let (result, id) = match answer {
        Ok(answer) if answer.status.is_success() => match answer.position {
            Some(position) => (Ok(position), id_of(&answer)),
            None => (
                Err(format!("no X-Cairn-Position in {}", answer.describe())),
                None,
            ),
        },
        Ok(answer) => (Err(answer.describe()), None),
        Err(e) => (Err(format!("{e:#}")), None),
    };
    let outcome = Outcome {
        kind: "",
        sent,
        answered,
        result,
    };
    (outcome, id)
}

/// A frame as the clients sort it.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// `audit.log.add` of the entry at this position.
    Signal(u64),
    /// Any other event.
    Event,
    /// A subscription ended (`<rid>.unsubscribe`).
    Unsubscribed(String),
    /// Not an event (a response, or not JSON).
    Other,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AddFrame {
    data: AddData,
}

#[derive(Deserialize)]
struct AddData {
    value: AddValue,
}

#[derive(Deserialize)]
struct AddValue {
    data: Entry,
}

#[derive(Deserialize)]
struct Entry {
    position: u64,
}

fn classify(text: &str) -> Frame {
    let Ok(Head { event: Some(event) }) = serde_json::from_str::<Head<'_>>(text) else {
        return Frame::Other;
    };
    if event == SIGNAL_EVENT {
        return match serde_json::from_str::<AddFrame>(text) {
            Ok(add) => Frame::Signal(add.data.value.data.position),
            Err(_) => Frame::Event,
        };
    }
    if event.ends_with(".unsubscribe") {
        return Frame::Unsubscribed(event.into_owned());
    }
    Frame::Event
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What one client read from the start of the timed phase.
#[derive(Debug, Default)]
struct Seen {
    /// (position, µs on the clock) of each signal frame.
    signals: Vec<(u64, u64)>,
    /// Event frames of any kind.
    events: u64,
    signal_bytes: u64,
    other_bytes: u64,
    /// When the last event frame came (µs on the clock).
    last_event: u64,
    /// Why it ended before it was told to.
    dropped: Option<String>,
}

/// Clients connected and subscribed, each reading in a task of its own
/// until [`Fleet::finish`].
#[derive(Debug)]
struct Fleet {
    tasks: JoinSet<Seen>,
    stop: watch::Sender<bool>,
    /// Per client: the highest signal position read; `u64::MAX` once it
    /// dropped.
    progress: Vec<Arc<AtomicU64>>,
    /// Frames count from this time (µs on the clock); `u64::MAX` before.
    start: Arc<AtomicU64>,
    clock: Clock,
}

/// What a client needs to connect.
#[derive(Debug)]
struct Target {
    url: String,
    authorization: Option<HeaderValue>,
    rids: Vec<String>,
}

impl Fleet {
    /// `clients` clients at `url`, each subscribed to every one of `rids`;
    /// an error when any could not.
    async fn connect(
        url: &str,
        authorization: Option<&HeaderValue>,
        rids: &[String],
        clients: usize,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let target = Arc::new(Target {
            url: url.to_owned(),
            authorization: authorization.cloned(),
            rids: rids.to_vec(),
        });
        let (stop, stopped) = watch::channel(false);
        let start = Arc::new(AtomicU64::new(u64::MAX));
        let gate = Arc::new(Semaphore::new(SETUP_CONCURRENCY));
        let (ready_tx, mut ready) = mpsc::channel(clients);
        let mut fleet = Self {
            tasks: JoinSet::new(),
            stop,
            progress: Vec::with_capacity(clients),
            start,
            clock,
        };
        for _ in 0..clients {
            let progress = Arc::new(AtomicU64::new(0));
            fleet.progress.push(Arc::clone(&progress));
            fleet.tasks.spawn(client(
                Arc::clone(&target),
                Arc::clone(&gate),
                ready_tx.clone(),
                stopped.clone(),
                progress,
                Arc::clone(&fleet.start),
                clock,
            ));
        }
        drop(ready_tx);
        let mut failed = Vec::new();
        while let Some(outcome) = ready.recv().await {
            if let Err(e) = outcome {
                failed.push(e);
            }
        }
        if let Some(first) = failed.first() {
            let first = first.clone();
            fleet.finish().await;
            bail!(
                "{} of {clients} clients could not connect and subscribe; the first: {first}",
                failed.len()
            );
        }
        Ok(fleet)
    }

    /// Starts the timed phase: frames count from now.
    fn begin(&self) -> Instant {
        let now = Instant::now();
        self.start
            .store(self.clock.micros_at(now), Ordering::Relaxed);
        now
    }

    /// Waits until every client still connected has read the signal at
    /// `last` (or one after it); false if that took over `timeout`.
    async fn drain(&self, last: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .progress
                .iter()
                .all(|p| p.load(Ordering::Relaxed) >= last)
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every client; what each read.
    async fn finish(mut self) -> Vec<Seen> {
        let _ = self.stop.send(true);
        let mut seen = Vec::with_capacity(self.progress.len());
        while let Some(joined) = self.tasks.join_next().await {
            seen.push(joined.unwrap_or_else(|e| Seen {
                dropped: Some(format!("client task: {e}")),
                ..Seen::default()
            }));
        }
        seen
    }
}

/// One client: connects and subscribes (at most [`SETUP_CONCURRENCY`] at
/// once), says so on `ready`, then reads until stopped.
async fn client(
    target: Arc<Target>,
    gate: Arc<Semaphore>,
    ready: mpsc::Sender<Result<(), String>>,
    mut stopped: watch::Receiver<bool>,
    progress: Arc<AtomicU64>,
    start: Arc<AtomicU64>,
    clock: Clock,
) -> Seen {
    let mut seen = Seen::default();
    let opened = async {
        let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
        tokio::time::timeout(SETUP_TIMEOUT, open(&target))
            .await
            .map_err(|_| format!("not subscribed within {SETUP_TIMEOUT:?}"))?
    }
    .await;
    let mut ws = match opened {
        Ok(ws) => {
            let _ = ready.send(Ok(())).await;
            ws
        }
        Err(e) => {
            progress.store(u64::MAX, Ordering::Relaxed);
            seen.dropped = Some(e.clone());
            let _ = ready.send(Err(e)).await;
            return seen;
        }
    };
    drop(ready);
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let at = clock.micros();
                    let frame = classify(&text);
                    if let Frame::Unsubscribed(event) = frame {
                        seen.dropped = Some(format!("the server ended a subscription: {event}"));
                        break;
                    }
                    if at < start.load(Ordering::Relaxed) {
                        continue;
                    }
                    match frame {
                        Frame::Signal(position) => {
                            seen.events += 1;
                            seen.signal_bytes += text.len() as u64;
                            seen.signals.push((position, at));
                            seen.last_event = at;
                            progress.fetch_max(position, Ordering::Relaxed);
                        }
                        Frame::Event => {
                            seen.events += 1;
                            seen.other_bytes += text.len() as u64;
                            seen.last_event = at;
                        }
                        Frame::Unsubscribed(_) | Frame::Other => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    seen.dropped = Some(match frame {
                        Some(f) => format!("closed by the server: {} {}", u16::from(f.code), f.reason.as_str()),
                        None => "closed by the server".into(),
                    });
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    seen.dropped = Some(format!("read failed: {e}"));
                    break;
                }
                None => {
                    seen.dropped = Some("the connection ended".into());
                    break;
                }
            },
        }
    }
    if seen.dropped.is_some() {
        progress.store(u64::MAX, Ordering::Relaxed);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    seen
}

/// Connects with the token at the upgrade and subscribes to each rid.
async fn open(target: &Target) -> Result<Ws, String> {
    let mut request = target
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("the request: {e}"))?;
    if let Some(authorization) = &target.authorization {
        request
            .headers_mut()
            .insert(AUTHORIZATION, authorization.clone());
    }
    // The live endpoint's read buffer size, for the clients too: the
    // stack zeroes the whole buffer before each read.
    let config = WebSocketConfig::default().read_buffer_size(cairn_live::READ_BUFFER_BYTES);
    let (mut ws, _) = connect_async_with_config(request, Some(config), false)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    for (i, rid) in target.rids.iter().enumerate() {
        let request = json!({"id": i + 1, "method": format!("subscribe.{rid}")});
        ws.send(Message::text(request.to_string()))
            .await
            .map_err(|e| format!("subscribe.{rid}: {e}"))?;
    }
    let mut waiting = target.rids.len();
    while waiting > 0 {
        let frame = ws
            .next()
            .await
            .ok_or("the connection ended before the subscriptions were answered")?
            .map_err(|e| format!("reading the subscriptions' answers: {e}"))?;
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Err(format!(
                    "closed before the subscriptions were answered: {frame:?}"
                ));
            }
            _ => continue,
        };
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("a frame: {e}"))?;
        let Some(id) = answer.get("id").and_then(Value::as_u64) else {
            continue;
        };
        if let Some(error) = answer.get("error") {
            let rid = usize::try_from(id)
                .ok()
                .and_then(|i| target.rids.get(i.wrapping_sub(1)))
                .map_or("?", String::as_str);
            return Err(format!("subscribe.{rid}: {error}"));
        }
        waiting -= 1;
    }
    Ok(ws)
}

/// What a fleet read, matched to what was sent.
#[derive(Debug)]
struct Delivered {
    clients: usize,
    dropped: Vec<String>,
    /// Event frames of any kind.
    events: u64,
    /// Signal frames matched to a send.
    matched: u64,
    /// Sends times clients: the matched frames expected.
    expected: u64,
    signal_bytes: u64,
    other_bytes: u64,
    /// Send to read, of the matched frames.
    latency: Histogram<u64>,
    /// From the start to the last event frame read.
    elapsed: Duration,
}

/// What the baseline broadcasts per command: as many frames as Cairn
/// delivered per command to each client, of the same mean sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    frames: usize,
    signal_bytes: usize,
    other_bytes: usize,
}

impl Delivered {
    /// Matches what `seen` read to `sends` (position -> sent, µs), counting
    /// from `start` (µs).
    fn tally(seen: &[Seen], sends: &HashMap<u64, u64>, start: u64) -> Self {
        let mut out = Self {
            clients: seen.len(),
            dropped: Vec::new(),
            events: 0,
            matched: 0,
            expected: sends.len() as u64 * seen.len() as u64,
            signal_bytes: 0,
            other_bytes: 0,
            latency: latency_histogram(),
            elapsed: Duration::ZERO,
        };
        let mut last = start;
        for client in seen {
            if let Some(reason) = &client.dropped {
                out.dropped.push(reason.clone());
            }
            out.events += client.events;
            out.signal_bytes += client.signal_bytes;
            out.other_bytes += client.other_bytes;
            last = last.max(client.last_event);
            for (position, at) in &client.signals {
                if let Some(sent) = sends.get(position) {
                    out.matched += 1;
                    record(
                        &mut out.latency,
                        Duration::from_micros(at.saturating_sub(*sent)),
                    );
                }
            }
        }
        out.elapsed = Duration::from_micros(last - start);
        out
    }

    fn missing(&self) -> u64 {
        self.expected.saturating_sub(self.matched)
    }

    /// Frames per command and their sizes, for the baseline to send alike
    /// (a sensible default when nothing was matched).
    fn shape(&self) -> Shape {
        if self.matched == 0 {
            return Shape {
                frames: 1,
                signal_bytes: 600,
                other_bytes: 200,
            };
        }
        let frames = (self.events as f64 / self.matched as f64).round() as usize;
        let others = self.events.saturating_sub(self.matched);
        Shape {
            frames: frames.clamp(1, MAX_FRAMES_PER_COMMAND),
            signal_bytes: (self.signal_bytes / self.matched) as usize,
            other_bytes: self.other_bytes.checked_div(others).unwrap_or(200) as usize,
        }
    }
}

/// A frame shaped like an `audit.log.add` of the entry at `position`,
/// padded to about `bytes`.
fn signal_frame(position: u64, bytes: usize) -> String {
    let head = format!(
        r#"{{"event":"{SIGNAL_EVENT}","data":{{"value":{{"data":{{"position":{position},"pad":""#
    );
    let tail = r#""}},"idx":0}}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// Another event frame, padded to about `bytes`.
fn other_frame(bytes: usize) -> String {
    let head = r#"{"event":"bench.flight.change","data":{"values":{"pad":""#;
    let tail = r#""}}}"#;
    let pad = bytes.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

/// What the baseline measured.
#[derive(Debug)]
struct RawRun {
    paced: Delivered,
    ceiling: Delivered,
}

#[derive(Debug, Clone)]
struct Raw {
    frames: broadcast::Sender<ws::Utf8Bytes>,
}

/// The baseline: the same clients against a raw broadcast served by axum's
/// `ws` in this process, paced as Cairn was, then flat out.
async fn raw_broadcast(
    clients: usize,
    rate: f64,
    ticks: u64,
    shape: Shape,
    clock: Clock,
) -> anyhow::Result<RawRun> {
    let (frames, _) = broadcast::channel(BROADCAST_CAPACITY);
    let app = Router::new()
        .route("/ws", get(raw_upgrade))
        .with_state(Raw {
            frames: frames.clone(),
        });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the baseline's server")?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // The same subscriptions as against Cairn, answered with empty results.
    let rids = [AUDIT_LOG.to_owned(), "flights.flight.raw".to_owned()];
    let measured = async {
        let fleet = Fleet::connect(&url, None, &rids, clients, clock).await?;
        let t0 = fleet.begin();
        let sends = paced(&frames, rate, ticks, shape, clock, t0).await;
        fleet.drain(ticks, DRAIN_TIMEOUT).await;
        let paced = Delivered::tally(&fleet.finish().await, &sends, clock.micros_at(t0));

        eprintln!("bench: baseline ceiling ({CEILING_TIME:?} flat out)");
        let fleet = Fleet::connect(&url, None, &rids, clients, clock).await?;
        let t0 = fleet.begin();
        let sends = flat_out(&frames, shape, clock).await;
        fleet.drain(sends.len() as u64, DRAIN_TIMEOUT).await;
        let ceiling = Delivered::tally(&fleet.finish().await, &sends, clock.micros_at(t0));
        anyhow::Ok(RawRun { paced, ceiling })
    }
    .await;
    server.abort();
    measured
}

/// Broadcasts one command's frames, the signal of tick `n` first; when it
/// was sent.
fn tick(
    frames: &broadcast::Sender<ws::Utf8Bytes>,
    n: u64,
    shape: Shape,
    other: &ws::Utf8Bytes,
    clock: Clock,
) -> u64 {
    let signal = ws::Utf8Bytes::from(signal_frame(n, shape.signal_bytes));
    let sent = clock.micros();
    let _ = frames.send(signal);
    for _ in 1..shape.frames {
        let _ = frames.send(other.clone());
    }
    sent
}

/// `ticks` ticks at `rate` from `t0` (numbered from 1).
async fn paced(
    frames: &broadcast::Sender<ws::Utf8Bytes>,
    rate: f64,
    ticks: u64,
    shape: Shape,
    clock: Clock,
    t0: Instant,
) -> HashMap<u64, u64> {
    let other = ws::Utf8Bytes::from(other_frame(shape.other_bytes));
    let mut sends = HashMap::with_capacity(ticks as usize);
    for n in 1..=ticks {
        let due = t0 + Duration::from_secs_f64((n - 1) as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        sends.insert(n, tick(frames, n, shape, &other, clock));
    }
    sends
}

/// Ticks for [`CEILING_TIME`] as fast as the connections take them.
async fn flat_out(
    frames: &broadcast::Sender<ws::Utf8Bytes>,
    shape: Shape,
    clock: Clock,
) -> HashMap<u64, u64> {
    let other = ws::Utf8Bytes::from(other_frame(shape.other_bytes));
    let mut sends = HashMap::new();
    let deadline = Instant::now() + CEILING_TIME;
    let mut n = 0;
    while Instant::now() < deadline {
        while frames.len() + shape.frames > CEILING_WINDOW {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        n += 1;
        sends.insert(n, tick(frames, n, shape, &other, clock));
        // Let the connections' tasks run between ticks.
        tokio::task::yield_now().await;
    }
    sends
}

async fn raw_upgrade(State(raw): State<Raw>, upgrade: WebSocketUpgrade) -> Response {
    let frames = raw.frames.subscribe();
    upgrade
        .read_buffer_size(cairn_live::READ_BUFFER_BYTES)
        .on_upgrade(move |socket| raw_connection(socket, frames))
}

#[derive(Deserialize)]
struct RequestId {
    id: Value,
}

/// One baseline connection: requests answered with an empty result, every
/// broadcast frame written as it comes.
async fn raw_connection(mut socket: WebSocket, mut frames: broadcast::Receiver<ws::Utf8Bytes>) {
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(ws::Message::Text(text))) => {
                    let id = serde_json::from_str::<RequestId>(&text).map_or(Value::Null, |r| r.id);
                    let answer = json!({"id": id, "result": {}}).to_string();
                    if socket.send(ws::Message::Text(answer.into())).await.is_err() {
                        return;
                    }
                }
                Some(Ok(ws::Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            frame = frames.recv() => match frame {
                Ok(frame) => {
                    if socket.send(ws::Message::Text(frame)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let close = CloseFrame {
                        code: ws::close_code::AGAIN,
                        reason: "missed frames".into(),
                    };
                    let _ = socket.send(ws::Message::Close(Some(close))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The table: throughput against the baseline, latencies, what went
/// wrong, memory, then the baseline's own figures.
fn metrics(args: &LiveArgs, cairn: &CairnRun, raw: &RawRun, shape: Shape) -> Vec<Metric> {
    let delivered = &cairn.delivered;
    let driven = &cairn.driven;
    let raw_updates = rate(raw.paced.events, raw.paced.elapsed);
    let raw_deliveries = rate(raw.paced.matched, raw.paced.elapsed);
    let ceiling = rate(raw.ceiling.events, raw.ceiling.elapsed);
    let offered = args.rate * shape.frames as f64 * args.clients as f64;
    let done = driven.sends.len() as u64;
    let commands_elapsed = Duration::from_micros(driven.last_answer.saturating_sub(driven.start));
    let per_connection =
        (cairn.rss_idle as f64 - cairn.rss_before as f64) / args.clients.max(1) as f64;
    let mut out = vec![
        Metric::new(
            "updates",
            rate(delivered.events, delivered.elapsed),
            "updates/s",
        )
        .against(Some(("raw_broadcast", raw_updates))),
        Metric::new(
            "deliveries",
            rate(delivered.matched, delivered.elapsed),
            "updates/s",
        )
        .against(Some(("raw_broadcast_deliveries", raw_deliveries))),
    ];
    out.extend(quantiles("update", &delivered.latency));
    out.push(Metric::new(
        "commands",
        rate(done, commands_elapsed),
        "commands/s",
    ));
    out.push(Metric::new("commands_offered", args.rate, "commands/s"));
    out.extend(quantiles("command", &driven.latency));
    out.push(Metric::new("commands_done", done as f64, "commands"));
    out.push(Metric::new(
        "commands_failed",
        driven.failed as f64,
        "commands",
    ));
    out.push(Metric::new("clients", delivered.clients as f64, "clients"));
    out.push(Metric::new(
        "clients_dropped",
        delivered.dropped.len() as f64,
        "clients",
    ));
    out.push(Metric::new(
        "deliveries_missing",
        delivered.missing() as f64,
        "updates",
    ));
    out.push(Metric::new(
        "frames_per_command",
        if delivered.matched == 0 {
            0.0
        } else {
            delivered.events as f64 / delivered.matched as f64
        },
        "frames",
    ));
    out.push(Metric::new(
        "signal_frame_bytes",
        shape.signal_bytes as f64,
        "bytes",
    ));
    out.push(Metric::new("kib_per_connection", per_connection, "KiB"));
    out.push(Metric::new(
        "rss_before_clients",
        cairn.rss_before as f64,
        "KiB",
    ));
    out.push(Metric::new(
        "rss_clients_idle",
        cairn.rss_idle as f64,
        "KiB",
    ));
    out.push(Metric::new("rss_after_run", cairn.rss_after as f64, "KiB"));
    out.push(Metric::new("raw_broadcast", raw_updates, "updates/s"));
    out.extend(quantiles("raw_broadcast", &raw.paced.latency));
    out.push(Metric::new(
        "raw_broadcast_deliveries",
        raw_deliveries,
        "updates/s",
    ));
    out.push(Metric::new(
        "raw_clients_dropped",
        (raw.paced.dropped.len() + raw.ceiling.dropped.len()) as f64,
        "clients",
    ));
    out.push(Metric::new(
        "raw_deliveries_missing",
        raw.paced.missing() as f64,
        "updates",
    ));
    out.push(Metric::new("raw_broadcast_ceiling", ceiling, "updates/s"));
    out.push(
        Metric::new("offered_updates", offered, "updates/s")
            .against(Some(("raw_broadcast_ceiling", ceiling))),
    );
    out.push(Metric::new(
        "half_ceiling_rate",
        ceiling / (2.0 * shape.frames as f64 * args.clients.max(1) as f64),
        "commands/s",
    ));
    out
}

fn quantiles(name: &str, histogram: &Histogram<u64>) -> [Metric; 3] {
    [
        Metric::new(format!("{name}_p50"), quantile_ms(histogram, 0.50), "ms"),
        Metric::new(format!("{name}_p99"), quantile_ms(histogram, 0.99), "ms"),
        Metric::new(
            format!("{name}_max"),
            histogram.max() as f64 / 1_000.0,
            "ms",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_sorted_as_the_live_api_writes_them() {
        let add = r#"{"event":"audit.log.add","data":{"value":{"data":{"seq":7,"position":42,
            "source":"passengers","id":"e","stream":"manifest-f","version":3,
            "type":"PassengerAdded","data":{"name":"Grace \"G\" Hopper"},"metadata":{},
            "recordedAt":"2030-01-01T00:00:00Z"}},"idx":0}}"#;
        assert_eq!(classify(add), Frame::Signal(42));
        let change = r#"{"event":"flights.flight.f.change","data":{"values":{"passengers":{"data":{"total":1,"boarded":0}}}}}"#;
        assert_eq!(classify(change), Frame::Event);
        assert_eq!(
            classify(r#"{"event":"audit.log.remove","data":{"idx":50}}"#),
            Frame::Event
        );
        // An add that is not an entry (a reference) is an event, not a signal.
        assert_eq!(
            classify(r#"{"event":"audit.log.add","data":{"value":{"rid":"x.y"},"idx":0}}"#),
            Frame::Event
        );
        assert_eq!(
            classify(
                r#"{"event":"audit.log.unsubscribe","data":{"reason":{"code":"system.accessDenied"}}}"#
            ),
            Frame::Unsubscribed("audit.log.unsubscribe".into())
        );
        assert_eq!(
            classify(r#"{"id":1,"result":{"collections":{}}}"#),
            Frame::Other
        );
        assert_eq!(classify("not json"), Frame::Other);
    }

    #[test]
    fn baseline_frames_have_their_size_and_read_as_the_live_ones() {
        let frame = signal_frame(123, 700);
        assert_eq!(frame.len(), 700);
        assert_eq!(classify(&frame), Frame::Signal(123));
        let other = other_frame(300);
        assert_eq!(other.len(), 300);
        assert_eq!(classify(&other), Frame::Event);
        // Smaller than the bare frame: no padding, still valid.
        assert_eq!(classify(&signal_frame(5, 10)), Frame::Signal(5));
    }

    #[test]
    fn reads_are_matched_to_sends_by_position() {
        let sends = HashMap::from([(10, 1_000), (11, 2_000)]);
        let a = Seen {
            signals: vec![(10, 1_500), (11, 2_250), (99, 3_000)],
            events: 5,
            signal_bytes: 1_800,
            other_bytes: 400,
            last_event: 3_000,
            dropped: None,
        };
        let b = Seen {
            signals: vec![(10, 1_700)],
            events: 2,
            signal_bytes: 600,
            other_bytes: 200,
            last_event: 1_800,
            dropped: Some("closed by the server: 1013 missed changes".into()),
        };
        let d = Delivered::tally(&[a, b], &sends, 500);
        assert_eq!(d.matched, 3);
        assert_eq!(d.expected, 4);
        assert_eq!(d.missing(), 1);
        assert_eq!(d.events, 7);
        assert_eq!(d.dropped.len(), 1);
        assert_eq!(d.elapsed, Duration::from_micros(2_500));
        assert_eq!(d.latency.len(), 3);
        assert_eq!(d.latency.max(), 700);
        let shape = d.shape();
        assert_eq!(shape.frames, 2);
        assert_eq!(shape.signal_bytes, 800);
        assert_eq!(shape.other_bytes, 150);
    }

    #[test]
    fn the_websocket_address_follows_the_banner() {
        assert_eq!(
            ws_url("http://127.0.0.1:4321").unwrap(),
            "ws://127.0.0.1:4321/ws"
        );
        assert!(ws_url("https://x").is_err());
    }
}
