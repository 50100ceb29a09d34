//! `cairn bench store`: the event store's append and catch-up throughput,
//! measured through the [`EventStore`] trait, beside raw SQL baselines run on
//! the same database in the same run (see [`super::baseline`]).
//!
//! Workloads, in the order they run (each Cairn workload right after its
//! baseline, so both see the same cache and file state):
//! 1. `raw_insert_1_per_tx` (baseline), then `append_1_writer`: one task
//!    appending single events to its own stream, expected version exact.
//! 2. `append_64_writers`: 64 tasks, each appending single events to its own
//!    stream; also events per write transaction where the backend counts
//!    commits (group commit shows here).
//! 3. `raw_insert_100_per_tx` (baseline), then `append_batch_100`: one task
//!    appending batches of 100 events.
//! 4. Untimed top-up so the log holds enough events to read (at least 100k
//!    in full mode), and the baseline table as many rows as the log.
//! 5. `catchup_read`: `subscribe_all` from 0 until the head, then
//!    `raw_select_scan` (baseline): one `SELECT ... ORDER BY position`.
//! 6. Untimed: streams of 10 events on both sides; then
//!    `raw_select_stream` (baseline: one `SELECT ... WHERE tenant_id = ?
//!    AND stream_id = ? ORDER BY version` per read), then `stream_read`:
//!    `read_stream` of a whole stream, one task, one stream after another.
//!    On PostgreSQL this is the path of every tenant read: a transaction
//!    scoped to the tenant, under row-level security; there
//!    `raw_select_stream_rls` runs the baseline's selects under the same
//!    policy (the store's bound role, the tenant set for the session), and
//!    `stream_read_under_rls` is `stream_read` against it.
//! 7. The command path ([`super::command_path`]): `raw_command_1_conn`
//!    (baseline: select a stream, insert its next event, on one
//!    connection), then through `AggregateStore::execute`, each stream
//!    growing to about 100 events: `command_1_writer` (one task),
//!    `command_64_writers` (64 tasks on aggregates of their own),
//!    `command_64_writers_hot` (64 tasks on 8 shared aggregates, each
//!    task with an aggregate store of its own, as separate processes:
//!    lost races are retried, `_retries` counts them) and
//!    `command_snapshot` (one task, a snapshot every 25 events).
//!
//! Latency is measured per `append` call (so per batch for
//! `append_batch_100`), recorded in microseconds, printed in milliseconds.
//! Making each event (ids, payload) happens inside the timed loop but
//! outside the latency window, the same way on the baseline side.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, anyhow, bail};
use cairn_core::{NewEvent, StreamId, TenantId};
use cairn_service_db::split_schema;
use cairn_store::{AllFilter, EventStore, ExpectedVersion, MemoryStore, ReadStream};
use cairn_store_postgres::{PostgresOptions, PostgresStore};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::{
    baseline::{Baseline, PgBaseline, SqliteBaseline, Timed},
    report::{self, Metric},
    workload::{latency_histogram, order_event, quantile_ms, rate, record},
};
use cairn_store::StoreUrl;

pub(crate) const LONG_ABOUT: &str = "\
Event store throughput and latency beside raw SQL on the same database.

Runs five workloads through the EventStore interface: append_1_writer,
append_64_writers, append_batch_100, catchup_read (subscribe to $all from 0
until the head) and stream_read (read_stream of 10-event streams, one after
another; on PostgreSQL scoped to the tenant under row-level security); then
the command path, load -> decide -> append through AggregateStore::execute
on streams growing to about 100 events: command_1_writer,
command_64_writers (aggregates of their own), command_64_writers_hot (8
aggregates shared by 64 tasks: lost races retried, counted in _retries) and
command_snapshot (a snapshot every 25 events). On SQLite and PostgreSQL,
five baselines on the same database: raw_insert_1_per_tx,
raw_insert_100_per_tx, raw_select_scan, raw_select_stream and
raw_command_1_conn (select a stream, insert its next event, one
connection), into and from a table of the same shape as Cairn's events
table (bench_baseline_events). Ratios are Cairn / baseline.

Store URLs:
  memory:            no baseline.
  sqlite://PATH      PATH must not exist: the bench creates a fresh database
                     there (store and baseline tables in the same file) and
                     deletes it, with its -wal and -shm files, at the end
                     unless --keep is given. It never touches an existing file.
  postgres://...     the store goes into a fresh schema cairn_bench_<unix-ts>_<pid>
                     and the baseline into <that>_baseline, in the same
                     database; both are dropped at the end unless --keep.

Full mode sizes each append workload to take seconds on a small machine and
reads at least 100k events; --quick shrinks everything to finish in seconds.";

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Store to benchmark: memory:, sqlite://PATH (PATH must not exist) or
    /// postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    store: String,
    /// Small counts: the whole suite in seconds (for tests and smoke runs).
    #[arg(long)]
    quick: bool,
    /// Also write the results as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Tenant the benchmark writes under.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Keep the SQLite file or the PostgreSQL schemas after the run.
    #[arg(long)]
    keep: bool,
}

/// Streams a concurrent append workload uses, one per writer.
const WRITERS: usize = 64;
/// Events per append in the batch workload.
const BATCH: usize = 100;
/// Events in each stream `stream_read` reads.
const STREAM_EVENTS: usize = 10;
/// The longest the catch-up read may take before the bench gives up rather
/// than hang on a subscription that never reaches the head.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(900);

/// How much each workload does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Appends of one event by the single writer.
    single: u64,
    /// Appends of one event by each of the 64 writers.
    per_writer: u64,
    /// Appends of 100 events.
    batches: u64,
    /// Events the log must hold before the catch-up read.
    catchup_min: u64,
    /// Untimed single-event appends (and baseline inserts) before the first
    /// timed workload.
    warmup: u64,
    /// Streams of [`STREAM_EVENTS`] events written for `stream_read`.
    read_streams: u64,
    /// Timed `read_stream` calls (and baseline selects).
    reads: u64,
    /// Commands of `command_1_writer` and `command_snapshot` (and of the
    /// baseline), on one aggregate per 100.
    commands: u64,
    /// Commands of each of the 64 tasks of `command_64_writers`.
    commands_per_writer: u64,
    /// Commands of each of the 64 tasks of `command_64_writers_hot`.
    hot_commands_per_writer: u64,
}

impl Sizes {
    /// Fixed counts per backend, so runs are comparable with each other,
    /// sized from release runs on a 2-core VM so each full-mode append
    /// workload takes roughly 5-15 s there: SQLite ~4.5k events/s for one
    /// writer, ~35k with 64, ~70k in batches; PostgreSQL ~750, ~6.5k and
    /// ~7k. The memory backend is capped by what it holds instead (about
    /// 1.5 GB at the end of a full run, each workload about a second).
    fn new(url: &StoreUrl, quick: bool) -> Self {
        match (url, quick) {
            (StoreUrl::Memory, true) => Self {
                single: 2_000,
                per_writer: 50,
                batches: 50,
                catchup_min: 0,
                warmup: 20,
                read_streams: 20,
                reads: 500,
                commands: 200,
                commands_per_writer: 4,
                hot_commands_per_writer: 2,
            },
            (_, true) => Self {
                single: 200,
                per_writer: 5,
                batches: 10,
                catchup_min: 0,
                warmup: 20,
                read_streams: 20,
                reads: 200,
                commands: 100,
                commands_per_writer: 2,
                hot_commands_per_writer: 1,
            },
            (StoreUrl::Memory, false) => Self {
                single: 200_000,
                per_writer: 4_000,
                batches: 5_000,
                catchup_min: 100_000,
                warmup: 500,
                read_streams: 1_000,
                reads: 200_000,
                commands: 20_000,
                commands_per_writer: 300,
                hot_commands_per_writer: 13,
            },
            (StoreUrl::Sqlite(_), false) => Self {
                single: 40_000,
                per_writer: 4_000,
                batches: 6_000,
                catchup_min: 100_000,
                warmup: 500,
                read_streams: 1_000,
                reads: 50_000,
                commands: 6_000,
                commands_per_writer: 100,
                hot_commands_per_writer: 13,
            },
            (StoreUrl::Postgres(_), false) => Self {
                single: 6_000,
                per_writer: 600,
                batches: 400,
                catchup_min: 100_000,
                warmup: 500,
                read_streams: 1_000,
                reads: 20_000,
                commands: 1_500,
                commands_per_writer: 25,
                hot_commands_per_writer: 13,
            },
        }
    }
}

/// The store under test and what comes with it.
pub(super) struct Target {
    pub(super) store: Arc<dyn EventStore>,
    /// Write transactions the store has committed, where it counts them.
    pub(super) commits: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
    pub(super) baseline: Option<Baseline>,
}

/// What to remove once the run is over.
#[derive(Debug)]
pub(super) enum Cleanup {
    Nothing,
    SqliteFile(PathBuf),
    PgSchemas { url: String, schemas: Vec<String> },
}

pub(crate) async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let url = StoreUrl::parse(&args.store).context("--store")?;
    let tenant = TenantId::new(&args.tenant).context("--tenant")?;
    let sizes = Sizes::new(&url, args.quick);

    let backend = match url {
        StoreUrl::Memory => "memory",
        StoreUrl::Sqlite(_) => "sqlite",
        StoreUrl::Postgres(_) => "postgres",
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cairn bench store");
    println!("backend: {backend}");
    println!("store:   {}", url.redacted());
    println!("mode:    {}", if args.quick { "quick" } else { "full" });
    println!("cores:   {cores}");
    println!(
        "sizes:   warm-up {}, 1 writer x {}, {WRITERS} writers x {}, {} batches of {BATCH}, \
         read >= {}",
        sizes.warmup, sizes.single, sizes.per_writer, sizes.batches, sizes.catchup_min
    );

    let (opened, cleanup) = open(&url, &tenant).await;
    let outcome = match opened {
        // Ctrl-C ends the run through the cleanup below instead of leaving
        // schemas or files behind.
        Ok(target) => tokio::select! {
            outcome = suite(target, &tenant, sizes) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        },
        Err(e) => Err(e),
    };
    // Clean up whether or not the suite succeeded, so a failed run leaves no
    // schemas or files behind either.
    let cleaned = if args.keep {
        keep_notice(&cleanup);
        Ok(())
    } else {
        clean(cleanup).await
    };
    let metrics = outcome?;

    println!();
    print!("{}", report::table(&metrics));
    if let Some(path) = &args.json {
        report::write_json(path, &metrics)?;
        println!("wrote {}", path.display());
    }
    cleaned
}

/// Opens the store and its baseline. The cleanup is returned even when
/// opening fails halfway, so whatever was created can still be removed.
pub(super) async fn open(url: &StoreUrl, tenant: &TenantId) -> (anyhow::Result<Target>, Cleanup) {
    match url {
        StoreUrl::Memory => (
            Ok(Target {
                store: Arc::new(MemoryStore::new()),
                commits: None,
                baseline: None,
            }),
            Cleanup::Nothing,
        ),
        StoreUrl::Sqlite(path) => {
            let path = PathBuf::from(path);
            if let Err(e) = check_fresh(&path) {
                return (Err(e), Cleanup::Nothing);
            }
            let cleanup = Cleanup::SqliteFile(path.clone());
            (open_sqlite(&path, tenant).await, cleanup)
        }
        StoreUrl::Postgres(conn) => {
            // The bench always uses fresh schemas of its own; a `schema=`
            // parameter is Cairn's, not the driver's, so it must not reach sqlx.
            let (conn, schema) = split_schema(conn);
            if let Some(schema) = schema {
                eprintln!("bench: ignoring schema={schema}: the bench uses fresh schemas");
            }
            let stamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let store_schema = format!("cairn_bench_{stamp}_{}", std::process::id());
            let baseline_schema = format!("{store_schema}_baseline");
            let cleanup = Cleanup::PgSchemas {
                url: conn.clone(),
                schemas: vec![store_schema.clone(), baseline_schema.clone()],
            };
            (
                open_postgres(&conn, &store_schema, &baseline_schema, tenant).await,
                cleanup,
            )
        }
    }
}

/// Refuses a path that exists: the figures are only comparable on a fresh
/// database, and the bench must never write into (or delete) a real one.
pub(super) fn check_fresh(path: &Path) -> anyhow::Result<()> {
    for candidate in [path.to_owned(), sidecar(path, "-wal")] {
        if candidate.exists() {
            bail!(
                "{} already exists: the bench needs a fresh database, pass a path that does not exist",
                candidate.display()
            );
        }
    }
    Ok(())
}

/// `PATH-wal` / `PATH-shm`.
pub(super) fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

async fn open_sqlite(path: &Path, tenant: &TenantId) -> anyhow::Result<Target> {
    let store = SqliteStore::open_with(path, SqliteOptions::default())
        .await
        .with_context(|| format!("opening the SQLite store at {}", path.display()))?;
    let store = Arc::new(store);
    let counted = Arc::clone(&store);
    // The store has created the file and its schema; the baseline table
    // goes into the same file.
    let baseline = SqliteBaseline::create(path, tenant.clone()).await?;
    Ok(Target {
        store,
        commits: Some(Box::new(move || counted.commits())),
        baseline: Some(Baseline::Sqlite(baseline)),
    })
}

async fn open_postgres(
    url: &str,
    store_schema: &str,
    baseline_schema: &str,
    tenant: &TenantId,
) -> anyhow::Result<Target> {
    let options = PostgresOptions {
        schema: store_schema.to_owned(),
        ..Default::default()
    };
    let store = PostgresStore::connect_with(url, options)
        .await
        .context("connecting the PostgreSQL store")?;
    let store = Arc::new(store);
    let counted = Arc::clone(&store);
    let baseline = PgBaseline::create(url, baseline_schema, store_schema, tenant.clone()).await?;
    Ok(Target {
        store,
        commits: Some(Box::new(move || counted.commits())),
        baseline: Some(Baseline::Postgres(baseline)),
    })
}

fn keep_notice(cleanup: &Cleanup) {
    match cleanup {
        Cleanup::Nothing => {}
        Cleanup::SqliteFile(path) => eprintln!("bench: kept {}", path.display()),
        Cleanup::PgSchemas { schemas, .. } => {
            eprintln!("bench: kept schemas {}", schemas.join(", "));
        }
    }
}

pub(super) async fn clean(cleanup: Cleanup) -> anyhow::Result<()> {
    match cleanup {
        Cleanup::Nothing => Ok(()),
        Cleanup::SqliteFile(path) => {
            for file in [path.clone(), sidecar(&path, "-wal"), sidecar(&path, "-shm")] {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", file.display()));
                    }
                }
            }
            Ok(())
        }
        Cleanup::PgSchemas { url, schemas } => {
            super::baseline::drop_pg_schemas(&url, &schemas).await
        }
    }
}

/// Runs every workload and returns the metrics, in table order.
async fn suite(target: Target, tenant: &TenantId, sizes: Sizes) -> anyhow::Result<Vec<Metric>> {
    let Target {
        store,
        commits,
        mut baseline,
    } = target;
    let mut metrics = Vec::new();
    let mut head = 0u64;

    // 0. Warm-up, untimed: opens connections, prepares statements and grows
    // the files (SQLite's WAL, PostgreSQL's relations) on both sides, so the
    // first timed workload does not pay for it alone.
    if sizes.warmup > 0 {
        eprintln!("bench: warm-up ({} events each side)", sizes.warmup);
        if let Some(b) = &mut baseline {
            b.insert_1_per_tx("order-warmup", sizes.warmup).await?;
        }
        let warm = append_loop(&store, tenant, stream("order-warmup")?, sizes.warmup, 1).await?;
        head = head.max(warm.last_position);
    }

    // 1. One writer, one event per append.
    let raw_1 = match &mut baseline {
        Some(b) => {
            progress("raw_insert_1_per_tx", sizes.single);
            Some(b.insert_1_per_tx("order-raw1", sizes.single).await?)
        }
        None => None,
    };
    let raw_1_rate = raw_1.map(|t| ("raw_insert_1_per_tx", rate(t.rows, t.elapsed)));
    progress("append_1_writer", sizes.single);
    let one = append_loop(&store, tenant, stream("order-w1")?, sizes.single, 1).await?;
    head = head.max(one.last_position);
    push_append(&mut metrics, "append_1_writer", &one, raw_1_rate);

    // 2. 64 writers, one event per append, each on its own stream.
    progress("append_64_writers", sizes.per_writer * WRITERS as u64);
    let commits_before = commits.as_ref().map(|c| c());
    let many = append_concurrent(&store, tenant, WRITERS, sizes.per_writer).await?;
    let commits_after = commits.as_ref().map(|c| c());
    head = head.max(many.last_position);
    push_append(&mut metrics, "append_64_writers", &many, raw_1_rate);
    if let (Some(before), Some(after)) = (commits_before, commits_after) {
        let txs = after.saturating_sub(before);
        if txs > 0 {
            metrics.push(Metric::new(
                "append_64_writers_events_per_tx",
                many.events as f64 / txs as f64,
                "events/tx",
            ));
        }
    }

    // 3. One writer, 100 events per append.
    let raw_100 = match &mut baseline {
        Some(b) => {
            progress("raw_insert_100_per_tx", sizes.batches * BATCH as u64);
            Some(b.insert_100_per_tx("order-raw100", sizes.batches).await?)
        }
        None => None,
    };
    let raw_100_rate = raw_100.map(|t| ("raw_insert_100_per_tx", rate(t.rows, t.elapsed)));
    progress("append_batch_100", sizes.batches * BATCH as u64);
    let batch = append_loop(&store, tenant, stream("order-batch")?, sizes.batches, BATCH).await?;
    head = head.max(batch.last_position);
    push_append(&mut metrics, "append_batch_100", &batch, raw_100_rate);

    // 4. Enough history to read, on both sides.
    head = head.max(*store.head().borrow());
    if head < sizes.catchup_min {
        let batches = (sizes.catchup_min - head).div_ceil(BATCH as u64);
        eprintln!(
            "bench: writing {} more events to read back",
            batches * BATCH as u64
        );
        let fill = append_loop(&store, tenant, stream("order-fill")?, batches, BATCH).await?;
        head = head.max(fill.last_position);
    }
    if let Some(b) = &mut baseline {
        b.top_up(head).await?;
    }

    // 5. Read everything back.
    progress("catchup_read", head);
    let read = catchup(&store, head).await?;
    let scan = match &mut baseline {
        Some(b) => {
            progress("raw_select_scan", b.rows());
            Some(b.select_scan().await?)
        }
        None => None,
    };
    metrics.push(
        Metric::new("catchup_read", rate(read.rows, read.elapsed), "events/s")
            .against(scan.map(|t: Timed| ("raw_select_scan", rate(t.rows, t.elapsed)))),
    );

    // 6. Whole short streams, one read at a time.
    if sizes.read_streams > 0 && sizes.reads > 0 {
        eprintln!(
            "bench: writing {} streams of {STREAM_EVENTS} events to read",
            sizes.read_streams
        );
        let names: Vec<String> = (0..sizes.read_streams)
            .map(|i| format!("order-r{i}"))
            .collect();
        let mut seq = 0u64;
        for name in &names {
            let events: Vec<NewEvent> = (0..STREAM_EVENTS)
                .map(|_| {
                    seq += 1;
                    order_event(seq)
                })
                .collect();
            store
                .append(tenant, &stream(name)?, ExpectedVersion::NoStream, events)
                .await
                .with_context(|| format!("appending to {name}"))?;
        }
        let (raw, raw_rls) = match &mut baseline {
            Some(b) => {
                for name in &names {
                    b.insert_1_per_tx(name, STREAM_EVENTS as u64).await?;
                }
                progress("raw_select_stream", sizes.reads);
                let raw = b.select_streams(&names, sizes.reads).await?;
                let rls = b.select_streams_rls(&names, sizes.reads).await?;
                (Some(raw), rls)
            }
            None => (None, None),
        };
        progress("stream_read", sizes.reads);
        let (timed, latency) = read_streams(&store, tenant, &names, sizes.reads).await?;
        let raw = raw.map(|t: Timed| ("raw_select_stream", rate(t.rows, t.elapsed)));
        let stream_read = rate(timed.rows, timed.elapsed);
        metrics.push(Metric::new("stream_read", stream_read, "reads/s").against(raw));
        if let Some(rls) = raw_rls {
            // The policy's own cost, then Cairn against selects paying it.
            let rls = rate(rls.rows, rls.elapsed);
            metrics.push(Metric::new("raw_select_stream_rls", rls, "reads/s").against(raw));
            metrics.push(
                Metric::new("stream_read_under_rls", stream_read, "reads/s")
                    .against(Some(("raw_select_stream_rls", rls))),
            );
        }
        metrics.push(Metric::new(
            "stream_read_p50",
            quantile_ms(&latency, 0.50),
            "ms",
        ));
        metrics.push(Metric::new(
            "stream_read_p99",
            quantile_ms(&latency, 0.99),
            "ms",
        ));
    }

    // 7. The command path.
    if sizes.commands > 0 {
        command_workloads(&store, &mut baseline, tenant, sizes, &mut metrics).await?;
    }
    Ok(metrics)
}

/// Aggregates in `command_64_writers_hot`.
const HOT_AGGREGATES: u64 = 8;
/// Events between snapshots in `command_snapshot`.
const SNAPSHOT_EVERY: u64 = 25;

/// The command workloads (step 7 of the module's list).
async fn command_workloads(
    store: &Arc<dyn EventStore>,
    baseline: &mut Option<Baseline>,
    tenant: &TenantId,
    sizes: Sizes,
    metrics: &mut Vec<Metric>,
) -> anyhow::Result<()> {
    use super::command_path::{self, STREAM_EVENTS, one_writer, tallies, writers};
    let aggregates = sizes.commands.div_ceil(STREAM_EVENTS);
    let raw = match baseline {
        Some(b) => {
            progress("raw_command_1_conn", sizes.commands);
            Some(
                b.command_loop("tally-raw", aggregates, sizes.commands)
                    .await?,
            )
        }
        None => None,
    };
    let raw = raw.map(|t| ("raw_command_1_conn", rate(t.rows, t.elapsed)));
    let push = |metrics: &mut Vec<Metric>, name: &str, run: &command_path::CommandRun| {
        let throughput = rate(run.commands, run.elapsed);
        push_timed(metrics, name, throughput, "commands/s", &run.latency, raw);
    };

    progress("command_1_writer", sizes.commands);
    let run = one_writer(
        &tallies(store, None),
        tenant,
        "c1-",
        aggregates,
        sizes.commands,
    )
    .await?;
    push(metrics, "command_1_writer", &run);

    let per_writer_aggregates = sizes.commands_per_writer.div_ceil(STREAM_EVENTS);
    progress(
        "command_64_writers",
        sizes.commands_per_writer * WRITERS as u64,
    );
    let run = writers(
        store,
        tenant,
        "c64w",
        WRITERS,
        per_writer_aggregates,
        false,
        sizes.commands_per_writer,
    )
    .await?;
    push(metrics, "command_64_writers", &run);

    progress(
        "command_64_writers_hot",
        sizes.hot_commands_per_writer * WRITERS as u64,
    );
    let recorder = cairn_telemetry::Metrics::install();
    let retries_before = command_path::retries(&recorder);
    let run = writers(
        store,
        tenant,
        "chot",
        WRITERS,
        HOT_AGGREGATES,
        true,
        sizes.hot_commands_per_writer,
    )
    .await?;
    let retries = command_path::retries(&recorder).saturating_sub(retries_before);
    push(metrics, "command_64_writers_hot", &run);
    metrics.push(Metric::new(
        "command_64_writers_hot_retries",
        retries as f64,
        "retries",
    ));

    progress("command_snapshot", sizes.commands);
    let snapshots = tallies(store, std::num::NonZeroU64::new(SNAPSHOT_EVERY));
    let run = one_writer(&snapshots, tenant, "csnap-", aggregates, sizes.commands).await?;
    push(metrics, "command_snapshot", &run);
    Ok(())
}

/// `reads` whole-stream reads, one task, cycling through `names`; each must
/// return the stream's [`STREAM_EVENTS`] events.
async fn read_streams(
    store: &Arc<dyn EventStore>,
    tenant: &TenantId,
    names: &[String],
    reads: u64,
) -> anyhow::Result<(Timed, Histogram<u64>)> {
    let ids = names
        .iter()
        .map(|n| stream(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut latency = latency_histogram();
    let start = Instant::now();
    for i in 0..reads {
        let id = &ids[(i % ids.len() as u64) as usize];
        let t = Instant::now();
        let events = store
            .read_stream(tenant, id, ReadStream::all())
            .await
            .with_context(|| format!("reading {}", id.as_str()))?;
        record(&mut latency, t.elapsed());
        if events.len() != STREAM_EVENTS {
            bail!(
                "{} read {} events instead of {STREAM_EVENTS}",
                id.as_str(),
                events.len()
            );
        }
        std::hint::black_box(events);
    }
    Ok((Timed::since(start, reads), latency))
}

fn progress(name: &str, events: u64) {
    eprintln!("bench: {name} ({events} events)");
}

fn stream(id: &str) -> anyhow::Result<StreamId> {
    StreamId::new(id).with_context(|| format!("stream id {id}"))
}

/// Throughput, p50 and p99 of one append workload.
fn push_append(
    metrics: &mut Vec<Metric>,
    name: &str,
    run: &AppendRun,
    baseline: Option<(&str, f64)>,
) {
    let throughput = rate(run.events, run.elapsed);
    push_timed(
        metrics,
        name,
        throughput,
        "events/s",
        &run.latency,
        baseline,
    );
}

/// A throughput row against `baseline`, then its `_p50` and `_p99`.
fn push_timed(
    metrics: &mut Vec<Metric>,
    name: &str,
    throughput: f64,
    unit: &'static str,
    latency: &Histogram<u64>,
    baseline: Option<(&str, f64)>,
) {
    metrics.push(Metric::new(name, throughput, unit).against(baseline));
    for (suffix, quantile) in [("p50", 0.50), ("p99", 0.99)] {
        metrics.push(Metric::new(
            format!("{name}_{suffix}"),
            quantile_ms(latency, quantile),
            "ms",
        ));
    }
}

/// One append workload's raw figures.
pub(super) struct AppendRun {
    pub(super) events: u64,
    pub(super) elapsed: Duration,
    /// Per-append latency, microseconds.
    pub(super) latency: Histogram<u64>,
    pub(super) last_position: u64,
}

/// One task making `appends` appends of `per_append` events to `stream`,
/// each expecting the version the previous one left (as an aggregate does).
pub(super) async fn append_loop(
    store: &Arc<dyn EventStore>,
    tenant: &TenantId,
    stream: StreamId,
    appends: u64,
    per_append: usize,
) -> anyhow::Result<AppendRun> {
    let mut latency = latency_histogram();
    let mut expected = ExpectedVersion::NoStream;
    let mut last_position = 0;
    let mut seq = 0u64;
    let start = Instant::now();
    for _ in 0..appends {
        let events: Vec<NewEvent> = (0..per_append)
            .map(|_| {
                seq += 1;
                order_event(seq)
            })
            .collect();
        let t = Instant::now();
        let outcome = store
            .append(tenant, &stream, expected, events)
            .await
            .with_context(|| format!("appending to {}", stream.as_str()))?;
        record(&mut latency, t.elapsed());
        expected = ExpectedVersion::Exact(outcome.last_version);
        last_position = last_position.max(outcome.last_position);
    }
    Ok(AppendRun {
        events: appends * per_append as u64,
        elapsed: start.elapsed(),
        latency,
        last_position,
    })
}

/// `writers` tasks, each running [`append_loop`] with single events on its
/// own stream; latency is merged over all of them, throughput is over the
/// wall-clock time until the last one finishes.
pub(super) async fn append_concurrent(
    store: &Arc<dyn EventStore>,
    tenant: &TenantId,
    writers: usize,
    per_writer: u64,
) -> anyhow::Result<AppendRun> {
    let mut tasks = JoinSet::new();
    let start = Instant::now();
    for writer in 0..writers {
        let store = Arc::clone(store);
        let tenant = tenant.clone();
        let stream = stream(&format!("order-w{writers}-{writer}"))?;
        tasks.spawn(async move { append_loop(&store, &tenant, stream, per_writer, 1).await });
    }
    let mut latency = latency_histogram();
    let mut last_position = 0;
    while let Some(joined) = tasks.join_next().await {
        let run = joined.context("writer task failed")??;
        latency
            .add(&run.latency)
            .map_err(|e| anyhow!("merging latency histograms: {e:?}"))?;
        last_position = last_position.max(run.last_position);
    }
    Ok(AppendRun {
        events: per_writer * writers as u64,
        elapsed: start.elapsed(),
        latency,
        last_position,
    })
}

/// Follows `$all` from 0 (every tenant, like the baseline's unfiltered
/// scan) until position `head`.
async fn catchup(store: &Arc<dyn EventStore>, head: u64) -> anyhow::Result<Timed> {
    let start = Instant::now();
    let mut subscription = store.subscribe_all(0, AllFilter::all_tenants());
    let mut count = 0u64;
    let read = async {
        while let Some(item) = subscription.next().await {
            let event = item.context("catch-up subscription")?;
            count += 1;
            if event.position >= head {
                return Ok(());
            }
        }
        Err(anyhow!("the subscription ended before position {head}"))
    };
    tokio::time::timeout(CATCHUP_TIMEOUT, read)
        .await
        .map_err(|_| {
            anyhow!("catch-up did not reach position {head} within {CATCHUP_TIMEOUT:?}")
        })??;
    Ok(Timed::since(start, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_sqlite_paths_are_refused() {
        let dir = std::env::temp_dir().join(format!("cairn-bench-fresh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.db");
        assert!(check_fresh(&path).is_ok());
        std::fs::write(sidecar(&path, "-wal"), b"").unwrap();
        assert!(check_fresh(&path).is_err());
        std::fs::write(&path, b"").unwrap();
        let err = check_fresh(&path).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn memory_suite_reports_every_metric() {
        let sizes = Sizes {
            single: 20,
            per_writer: 2,
            batches: 3,
            catchup_min: 1_000,
            warmup: 5,
            read_streams: 4,
            reads: 20,
            commands: 30,
            commands_per_writer: 2,
            hot_commands_per_writer: 2,
        };
        let target = Target {
            store: Arc::new(MemoryStore::new()),
            commits: None,
            baseline: None,
        };
        let tenant = TenantId::new("t").unwrap();
        let metrics = suite(target, &tenant, sizes).await.unwrap();
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "append_1_writer",
                "append_1_writer_p50",
                "append_1_writer_p99",
                "append_64_writers",
                "append_64_writers_p50",
                "append_64_writers_p99",
                "append_batch_100",
                "append_batch_100_p50",
                "append_batch_100_p99",
                "catchup_read",
                "stream_read",
                "stream_read_p50",
                "stream_read_p99",
                "command_1_writer",
                "command_1_writer_p50",
                "command_1_writer_p99",
                "command_64_writers",
                "command_64_writers_p50",
                "command_64_writers_p99",
                "command_64_writers_hot",
                "command_64_writers_hot_p50",
                "command_64_writers_hot_p99",
                "command_64_writers_hot_retries",
                "command_snapshot",
                "command_snapshot_p50",
                "command_snapshot_p99",
            ]
        );
        // Retries may be none; everything else moved.
        assert!(
            metrics
                .iter()
                .filter(|m| m.name != "command_64_writers_hot_retries")
                .all(|m| m.value > 0.0 && m.ratio.is_none())
        );
    }
}
