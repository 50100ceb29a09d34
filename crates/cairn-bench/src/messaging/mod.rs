//! `cairn bench messaging`: integration events end to end, from an append
//! to the event store to a consumer's handler on another service, through
//! the relay and a real broker (NATS JetStream or RabbitMQ), beside the
//! broker's own ceiling, acknowledged publishes with its raw client, measured
//! in the same run (see [`raw`]).
//!
//! In the order it runs:
//! 1. Set-up: the event store (a fresh PostgreSQL schema or SQLite file),
//!    the publishing service's database (relay checkpoint) and the consuming
//!    service's database (inbox, `bench_orders`), each fresh; two broker
//!    handles under a fresh random prefix, one per service; the consumer
//!    group (declared before anything is published, as RabbitMQ needs), the
//!    consumer and the relay.
//! 2. The raw ceiling: an untimed warm-up, then three rounds of as many
//!    acknowledged publishes as a run appends events, of the same bodies;
//!    the median round is the ceiling. Then the broker's round trip the
//!    same way: the publishes taken and acked by a consumer meanwhile.
//! 3. Cairn warm-up: a tenth of the events (at most 1,000) end to end,
//!    untimed.
//! 4. Full speed: appenders append as fast as the store takes them
//!    ([`pipeline`]); throughput of the appends, of the relay and end to
//!    end, and the end-to-end latency of every event.
//! 5. Paced: the same number of events offered at a fixed rate, by default
//!    half the raw ceiling; the rates reached and the latency.
//!
//! Everything the run created is removed at the end (the JetStream streams
//! or the RabbitMQ exchanges and queues of both prefixes, the schemas or
//! files), whether or not it succeeded, unless `--keep`.

mod pipeline;
mod raw;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, anyhow, bail};
use cairn_core::TenantId;
use cairn_messaging::{
    Broker, Consumer, ConsumerHandle, ConsumerSpec, Relay, RelayOptions, start_relay,
};
use cairn_messaging_amqp::{AmqpBroker, AmqpOptions};
use cairn_messaging_nats::{NatsBroker, NatsOptions, stream_name};
use cairn_service_db::{ServiceDb, split_schema};
use cairn_store::EventStore;
use cairn_store_postgres::{PostgresOptions, PostgresStore};
use cairn_store_sqlite::{SqliteOptions, SqliteStore};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use self::pipeline::{GROUP, InboxHandler, Load, Pipeline, RunResult, SERVICE, Timed, Times};
use super::{
    report::{self, Metric},
    store::{check_fresh, sidecar},
    workload::{EVENT_TYPE, quantile_ms, rate},
};
use cairn_store::{StoreUrl, redact_password};

pub(crate) const LONG_ABOUT: &str = "\
Integration events end to end (append -> relay -> broker -> consumer handled)
beside the broker's raw acknowledged-publish ceiling, in the same run.

Cairn side: appenders write OrderPlaced events (~150-byte payload) to the
event store; a Relay publishes them as CloudEvents to the broker; a Consumer
group handles each in a transaction on its own database (inbox entry, stream
cursor and one INSERT into bench_orders). Each event's latency runs from the
commit of its append to its handler. Two runs of --events events: full speed
(appenders as fast as the store takes them) and paced (a fixed offered rate,
by default half the raw ceiling).

Baseline (same broker, same message bodies, its own prefix; three rounds of
--events publishes after a warm-up, the median round counts):
  nats  raw_jetstream_publish_acked: async-nats JetStream publishes, up to
        1024 acknowledgements in flight.
  amqp  raw_amqp_publish_confirmed: lapin persistent publishes on a confirm-mode
        channel to a durable exchange and queue, up to 1024 confirms in flight.
Beside it, the broker's round trip, measured the same way: those publishes
while one consumer (prefetch 512, as Cairn's default) takes and acks each
(raw_jetstream_round_trip: a durable pull consumer; raw_amqp_round_trip: a
durable queue consumed on its own connection). round_trip is that rate
against the publish ceiling; e2e_of_round_trip is Cairn's end to end
against it.
The paced run's latency is also split at the moment the relay hands an
event to the broker: paced_to_broker_* (commit to handed over: the relay
noticing, reading, building) and paced_from_broker_* (handed over to
handled: the publish, the broker's delivery, the consumer's transaction).
Ratios are Cairn / baseline.

Store URLs:
  postgres://...   the store goes into a fresh schema cairn_bench_msg_<unix-ts>_<pid>,
                   the publishing service's database into <that>_relay and the
                   consuming service's into <that>_inbox, in the same database.
  sqlite://PATH    PATH, PATH-relay and PATH-inbox must not exist: the bench
                   creates them (and their -wal and -shm files).
Broker objects live under a fresh prefix cbench-<random> (and <prefix>-raw for
the baseline). Everything is removed at the end unless --keep is given.";

/// Timed rounds of raw publishes; the median is the ceiling. A round takes
/// a fraction of a second, short enough for a burst of other work on the
/// machine to halve it, so one round alone would be noisy.
const RAW_ROUNDS: usize = 3;

/// The store a run uses unless told otherwise.
const DEFAULT_STORE: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which broker to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BrokerKind {
    /// NATS JetStream.
    Nats,
    /// RabbitMQ (AMQP 0-9-1).
    Amqp,
}

impl BrokerKind {
    fn default_url(self) -> &'static str {
        match self {
            Self::Nats => "nats://127.0.0.1:4222",
            Self::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
        }
    }

    fn baseline(self) -> &'static str {
        match self {
            Self::Nats => "raw_jetstream_publish_acked",
            Self::Amqp => "raw_amqp_publish_confirmed",
        }
    }

    fn round_trip(self) -> &'static str {
        match self {
            Self::Nats => "raw_jetstream_round_trip",
            Self::Amqp => "raw_amqp_round_trip",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Nats => "nats",
            Self::Amqp => "amqp",
        }
    }
}

#[derive(Debug, Args)]
pub struct MessagingArgs {
    /// Broker to measure: nats (JetStream) or amqp (RabbitMQ).
    #[arg(long, value_enum)]
    broker: BrokerKind,
    /// Broker URL [default: nats://127.0.0.1:4222, or
    /// amqp://guest:guest@127.0.0.1:5672/%2f].
    #[arg(long, value_name = "URL")]
    broker_url: Option<String>,
    /// Event store: postgres://USER@HOST/DB (fresh schemas) or sqlite://PATH
    /// (PATH must not exist).
    #[arg(long, value_name = "URL", default_value = DEFAULT_STORE)]
    store: String,
    /// Events appended in each of the two runs, and raw publishes.
    #[arg(long, value_name = "N", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    events: u64,
    /// Concurrent appenders, each on streams of its own.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    writers: u16,
    /// Most events per append.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: u16,
    /// Offered rate of the paced run, events/s [default: half the raw
    /// ceiling measured in the same run].
    #[arg(long, value_name = "EVENTS_PER_S")]
    rate: Option<f64>,
    /// Also write the results as a JSON array to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Tenant the benchmark writes under.
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Keep the schemas or files and the broker objects after the run.
    #[arg(long)]
    keep: bool,
}

/// Everything a run names, decided before anything is created.
#[derive(Debug)]
struct Names {
    /// Cairn's broker prefix; the baseline uses `<prefix>-raw`.
    prefix: String,
    raw_prefix: String,
    store: StoreUrl,
    /// PostgreSQL: the connection URL without Cairn's `schema=`.
    pg_url: String,
    /// PostgreSQL: store, relay and inbox schemas. SQLite: the three paths.
    store_at: String,
    relay_at: String,
    inbox_at: String,
}

impl Names {
    fn fresh(store: StoreUrl) -> Self {
        // The tail of a UUIDv7 is random.
        let random = uuid::Uuid::now_v7().simple().to_string();
        let prefix = format!("cbench-{}", &random[random.len() - 12..]);
        let raw_prefix = format!("{prefix}-raw");
        let (pg_url, store_at, relay_at, inbox_at) = match &store {
            StoreUrl::Postgres(url) => {
                let (conn, schema) = split_schema(url);
                if let Some(schema) = schema {
                    eprintln!("bench: ignoring schema={schema}: the bench uses fresh schemas");
                }
                let stamp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let base = format!("cairn_bench_msg_{stamp}_{}", std::process::id());
                (
                    conn,
                    base.clone(),
                    format!("{base}_relay"),
                    format!("{base}_inbox"),
                )
            }
            StoreUrl::Sqlite(path) => (
                String::new(),
                path.clone(),
                format!("{path}-relay"),
                format!("{path}-inbox"),
            ),
            StoreUrl::Memory => Default::default(),
        };
        Self {
            prefix,
            raw_prefix,
            store,
            pg_url,
            store_at,
            relay_at,
            inbox_at,
        }
    }

    /// The URL of a service database: a schema of the same PostgreSQL
    /// database, or a SQLite file.
    fn db_url(&self, at: &str) -> String {
        match self.store {
            StoreUrl::Postgres(_) => {
                let sep = if self.pg_url.contains('?') { '&' } else { '?' };
                format!("{}{sep}schema={at}", self.pg_url)
            }
            _ => format!("sqlite://{at}"),
        }
    }

    fn describe_store(&self) -> String {
        match self.store {
            StoreUrl::Postgres(_) => format!(
                "{} (schemas {}, {}, {})",
                self.store.redacted(),
                self.store_at,
                self.relay_at,
                self.inbox_at
            ),
            _ => format!(
                "sqlite://{} (service databases {}, {})",
                self.store_at, self.relay_at, self.inbox_at
            ),
        }
    }
}

/// What a run may create, so it can be removed whatever happened (what
/// was never created is skipped), and the running relay and consumer,
/// stopped before anything is removed under them.
#[derive(Default)]
struct Session {
    pg_schemas: Vec<String>,
    files: Vec<PathBuf>,
    nats_streams: Vec<String>,
    amqp_queues: Vec<String>,
    amqp_exchanges: Vec<String>,
    relay: Option<Relay>,
    consumer: Option<ConsumerHandle>,
    /// Broker handles, held until the run is over: a NATS handle reports
    /// its connection closing when the last clone goes.
    brokers: Vec<Arc<dyn Broker>>,
}

impl Session {
    /// Everything a run under `names` may create on `kind`. SQLite paths
    /// must not exist yet: the bench never writes into (or deletes) a
    /// database it did not create.
    fn plan(names: &Names, kind: BrokerKind) -> anyhow::Result<Self> {
        let mut session = Self::default();
        let places = [&names.store_at, &names.relay_at, &names.inbox_at];
        match names.store {
            StoreUrl::Postgres(_) => session.pg_schemas = places.map(String::clone).to_vec(),
            _ => {
                for at in places {
                    check_fresh(Path::new(at))?;
                }
                session.files = places.map(PathBuf::from).to_vec();
            }
        }
        match kind {
            BrokerKind::Nats => {
                session.nats_streams =
                    vec![stream_name(&names.prefix), stream_name(&names.raw_prefix)];
            }
            BrokerKind::Amqp => {
                let (raw_exchange, raw_queue, round_trip_queue) =
                    raw::amqp_raw_names(&names.raw_prefix);
                session.amqp_queues = vec![
                    format!("{}.{GROUP}", names.prefix),
                    raw_queue,
                    round_trip_queue,
                ];
                session.amqp_exchanges = vec![format!("{}.events", names.prefix), raw_exchange];
            }
        }
        Ok(session)
    }

    async fn stop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
        if let Some(consumer) = self.consumer.take() {
            consumer.shutdown().await;
        }
    }

    fn keep_notice(&self) {
        let mut kept: Vec<String> = Vec::new();
        kept.extend(self.pg_schemas.iter().map(|s| format!("schema {s}")));
        kept.extend(self.files.iter().map(|f| f.display().to_string()));
        kept.extend(self.nats_streams.iter().map(|s| format!("stream {s}")));
        kept.extend(self.amqp_exchanges.iter().map(|e| format!("exchange {e}")));
        kept.extend(self.amqp_queues.iter().map(|q| format!("queue {q}")));
        if !kept.is_empty() {
            eprintln!("bench: kept {}", kept.join(", "));
        }
    }

    /// Removes everything, reporting every failure (one does not stop the
    /// others).
    async fn clean(&self, names: &Names, broker_url: &str) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        if !self.nats_streams.is_empty()
            && let Err(e) = raw::delete_nats_streams(broker_url, &self.nats_streams).await
        {
            failed.push(format!("{e:#}"));
        }
        if (!self.amqp_queues.is_empty() || !self.amqp_exchanges.is_empty())
            && let Err(e) =
                raw::delete_amqp_objects(broker_url, &self.amqp_queues, &self.amqp_exchanges).await
        {
            failed.push(format!("{e:#}"));
        }
        if !self.pg_schemas.is_empty()
            && let Err(e) = super::baseline::drop_pg_schemas(&names.pg_url, &self.pg_schemas).await
        {
            failed.push(format!("{e:#}"));
        }
        for path in &self.files {
            for file in [path.clone(), sidecar(path, "-wal"), sidecar(path, "-shm")] {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => failed.push(format!("removing {}: {e}", file.display())),
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("cleaning up: {}", failed.join("; "))
        }
    }
}

pub(crate) async fn run(args: MessagingArgs) -> anyhow::Result<()> {
    let store = StoreUrl::parse(&args.store).context("--store")?;
    if store == StoreUrl::Memory {
        bail!("--store: the messaging bench needs sqlite://PATH or postgres://...");
    }
    let tenant = TenantId::new(&args.tenant).context("--tenant")?;
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate: must be a positive number of events per second");
    }
    let broker_url = args
        .broker_url
        .clone()
        .unwrap_or_else(|| args.broker.default_url().to_owned());
    let names = Names::fresh(store);
    let warmup = (args.events / 10).clamp(1, 1_000);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cairn bench messaging");
    println!(
        "broker:  {} {} (prefix {})",
        args.broker.name(),
        redact_password(&broker_url),
        names.prefix
    );
    println!("store:   {}", names.describe_store());
    let bodies = raw::bodies(&tenant, SERVICE)?;
    println!(
        "payload: ~{} bytes per message (CloudEvents JSON of an event with ~150 bytes of data)",
        raw::mean_len(&bodies)
    );
    println!("cores:   {cores}");
    println!(
        "sizes:   warm-up {warmup}, 2 runs of {} events ({} writers x {} streams, \
         batches of up to {}), raw: {RAW_ROUNDS} rounds of {} publishes (median)",
        args.events,
        args.writers,
        pipeline::STREAMS_PER_WRITER,
        args.batch,
        args.events
    );

    let mut session = Session::plan(&names, args.broker)?;
    let outcome = tokio::select! {
        outcome = suite(&mut session, &args, &names, &broker_url, &tenant, &bodies, warmup) => outcome,
        // Ctrl-C ends the run through the cleanup below instead of leaving
        // schemas, files or broker objects behind.
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    // The relay and the consumer stop first: a relay still running could
    // create the JetStream stream again after it is deleted.
    session.stop().await;
    let cleaned = if args.keep {
        session.keep_notice();
        Ok(())
    } else {
        session.clean(&names, &broker_url).await
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

/// Sets up, measures the ceiling and both Cairn runs, and returns the
/// metrics in table order.
async fn suite(
    session: &mut Session,
    args: &MessagingArgs,
    names: &Names,
    broker_url: &str,
    tenant: &TenantId,
    bodies: &[Vec<u8>],
    warmup: u64,
) -> anyhow::Result<Vec<Metric>> {
    let kind = args.broker;

    // 1. The store and the two service databases.
    let store = open_store(names).await?;
    let relay_db = open_db(names, &names.relay_at).await?;
    let inbox_db = open_db(names, &names.inbox_at).await?;
    sqlx::query(pipeline::HANDLER_TABLE)
        .execute(inbox_db.pool())
        .await
        .context("creating bench_orders")?;

    // 2. The consuming service: its broker handle, its group (declared
    // before anything is published), its consumer. Then the publishing
    // service: its own handle and the relay.
    let spec = ConsumerSpec::new(GROUP, SERVICE);
    let subscriber = connect(kind, broker_url, &names.prefix, Some(&spec)).await?;
    session.brokers.push(Arc::clone(&subscriber));
    let handled = Arc::new(Times::default());
    let consumer = Consumer::new(GROUP, SERVICE, inbox_db, subscriber)
        .on(
            EVENT_TYPE,
            InboxHandler {
                handled: Arc::clone(&handled),
            },
        )
        .start()
        .await
        .context("starting the consumer")?;
    let consumer = &*session.consumer.insert(consumer);
    let publisher = connect(kind, broker_url, &names.prefix, None).await?;
    session.brokers.push(Arc::clone(&publisher));
    let sent = Arc::new(Times::default());
    let relay = start_relay(
        pipeline::public_events()?,
        Arc::clone(&store),
        relay_db,
        Arc::new(Timed {
            inner: publisher,
            sent: Arc::clone(&sent),
        }),
        RelayOptions::default(),
    )
    .await
    .context("starting the relay")?;
    let relay = &*session.relay.insert(relay);

    // 3. The raw ceiling.
    eprintln!(
        "bench: {} ({RAW_ROUNDS} x {} messages, warm-up {warmup})",
        kind.baseline(),
        args.events
    );
    let (ceilings, raw_broker) =
        ceiling(kind, broker_url, names, tenant, bodies, args.events, warmup).await?;
    session.brokers.extend(raw_broker);
    let raw_rate = rate(ceilings.publish.messages, ceilings.publish.elapsed);
    let round_trip_rate = rate(ceilings.round_trip.messages, ceilings.round_trip.elapsed);
    let baseline = Some((kind.baseline(), raw_rate));

    // 4. Cairn: warm-up, full speed, paced.
    let pipeline = Pipeline {
        store: &store,
        relay,
        consumer,
        handled: &handled,
        sent: &sent,
        tenant,
    };
    let writers = usize::from(args.writers);
    let batch = usize::from(args.batch);
    eprintln!("bench: cairn warm-up ({warmup} events)");
    pipeline
        .run(
            "warm",
            Load {
                events: warmup,
                writers,
                batch,
                rate: None,
            },
        )
        .await?;
    eprintln!("bench: cairn full speed ({} events)", args.events);
    let full = pipeline
        .run(
            "full",
            Load {
                events: args.events,
                writers,
                batch,
                rate: None,
            },
        )
        .await?;
    let offered = args.rate.unwrap_or(raw_rate / 2.0);
    eprintln!(
        "bench: cairn paced at {offered:.0} events/s ({} events)",
        args.events
    );
    let paced = pipeline
        .run(
            "paced",
            Load {
                events: args.events,
                writers,
                batch,
                rate: Some(offered),
            },
        )
        .await?;

    let mut metrics = vec![
        Metric::new("e2e_events", full.handled as f64, "events"),
        Metric::new("append", full.append_rate(), "events/s"),
        Metric::new("relay", full.relay_rate(), "events/s").against(baseline),
        Metric::new("e2e", full.e2e_rate(), "events/s").against(baseline),
        Metric::new("e2e_of_round_trip", full.e2e_rate(), "events/s")
            .against(Some((kind.round_trip(), round_trip_rate))),
        Metric::new("round_trip", round_trip_rate, "msgs/s").against(baseline),
    ];
    metrics.extend(latency("e2e", &full));
    metrics.extend([
        Metric::new("paced_offered", offered, "events/s").against(baseline),
        Metric::new("paced_events", paced.handled as f64, "events"),
        Metric::new("paced_append", paced.append_rate(), "events/s"),
        Metric::new("paced_e2e", paced.e2e_rate(), "events/s").against(baseline),
    ]);
    metrics.extend(latency("paced", &paced));
    metrics.extend(quantiles("paced_to_broker", &paced.to_broker));
    metrics.extend(quantiles("paced_from_broker", &paced.from_broker));
    Ok(metrics)
}

/// p50, p99 and max of a run's end-to-end latency.
fn latency(name: &str, run: &RunResult) -> [Metric; 3] {
    let [p50, p99] = quantiles(name, &run.latency);
    let max = Metric::new(
        format!("{name}_max"),
        run.latency.max() as f64 / 1_000.0,
        "ms",
    );
    [p50, p99, max]
}

/// p50 and p99 of a latency histogram (microseconds), in milliseconds.
fn quantiles(name: &str, histogram: &Histogram<u64>) -> [Metric; 2] {
    [
        Metric::new(format!("{name}_p50"), quantile_ms(histogram, 0.50), "ms"),
        Metric::new(format!("{name}_p99"), quantile_ms(histogram, 0.99), "ms"),
    ]
}

async fn open_store(names: &Names) -> anyhow::Result<Arc<dyn EventStore>> {
    match &names.store {
        StoreUrl::Postgres(_) => {
            let options = PostgresOptions {
                schema: names.store_at.clone(),
                ..Default::default()
            };
            let store = PostgresStore::connect_with(&names.pg_url, options)
                .await
                .context("connecting the PostgreSQL store")?;
            Ok(Arc::new(store))
        }
        _ => {
            let path = Path::new(&names.store_at);
            let store = SqliteStore::open_with(path, SqliteOptions::default())
                .await
                .with_context(|| format!("opening the SQLite store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
    }
}

async fn open_db(names: &Names, at: &str) -> anyhow::Result<ServiceDb> {
    ServiceDb::open(&names.db_url(at))
        .await
        .with_context(|| format!("opening the service database {at}"))
}

/// A broker handle under `prefix`; with `declare`, the group is declared
/// too where the broker needs it (RabbitMQ keeps only what is published
/// after the group's queue exists).
async fn connect(
    kind: BrokerKind,
    url: &str,
    prefix: &str,
    declare: Option<&ConsumerSpec>,
) -> anyhow::Result<Arc<dyn Broker>> {
    match kind {
        BrokerKind::Nats => {
            let broker = NatsBroker::connect(url, NatsOptions::with_prefix(prefix))
                .await
                .with_context(|| format!("cannot connect to NATS at {}", redact_password(url)))?;
            Ok(Arc::new(broker))
        }
        BrokerKind::Amqp => {
            let broker = AmqpBroker::connect(url, AmqpOptions::with_prefix(prefix))
                .await
                .with_context(|| {
                    format!("cannot connect to RabbitMQ at {}", redact_password(url))
                })?;
            if let Some(spec) = declare {
                broker
                    .declare(spec)
                    .await
                    .context("declaring the consumer group")?;
            }
            Ok(Arc::new(broker))
        }
    }
}

/// The median of the raw rounds (by time; every round publishes as many).
fn median(mut rounds: Vec<raw::Ceiling>) -> raw::Ceiling {
    rounds.sort_by_key(|r| r.elapsed);
    rounds[rounds.len() / 2]
}

/// The broker's own figures: acknowledged publishes alone, and the round
/// trip (publishes taken and acked by a consumer at the same time).
#[derive(Debug, Clone, Copy)]
struct Ceilings {
    publish: raw::Ceiling,
    round_trip: raw::Ceiling,
}

/// The raw ceilings: for each, `warmup` untimed messages, then
/// [`RAW_ROUNDS`] rounds of `messages` timed ones; the median round counts.
async fn ceiling(
    kind: BrokerKind,
    url: &str,
    names: &Names,
    tenant: &TenantId,
    bodies: &[Vec<u8>],
    messages: u64,
    warmup: u64,
) -> anyhow::Result<(Ceilings, Option<Arc<dyn Broker>>)> {
    let subject = cairn_messaging::topic(&names.raw_prefix, tenant, SERVICE, EVENT_TYPE);
    let round_trip_subject = cairn_messaging::topic(
        &names.raw_prefix,
        tenant,
        raw::ROUND_TRIP_SERVICE,
        EVENT_TYPE,
    );
    match kind {
        BrokerKind::Nats => {
            // A stream with exactly the settings of Cairn's event stream.
            let broker = NatsBroker::connect(url, NatsOptions::with_prefix(&names.raw_prefix))
                .await
                .with_context(|| format!("cannot connect to NATS at {}", redact_password(url)))?;
            let js = broker.jetstream();
            let publish = rounds(warmup, messages, async |n| {
                raw::nats_publish(js, &subject, bodies, n).await
            })
            .await?;
            let mut consumer =
                raw::NatsRoundTrip::open(js, broker.stream_name(), &round_trip_subject).await?;
            let round_trip = rounds(warmup, messages, async |n| {
                consumer.run(js, &round_trip_subject, bodies, n).await
            })
            .await?;
            let ceilings = Ceilings {
                publish,
                round_trip,
            };
            Ok((ceilings, Some(Arc::new(broker))))
        }
        BrokerKind::Amqp => {
            let mut amqp = raw::AmqpRaw::open(url, &names.raw_prefix, SERVICE).await?;
            let outcome = async {
                let publish = rounds(warmup, messages, async |n| {
                    amqp.publish(&subject, SERVICE, bodies, n).await
                })
                .await?;
                let round_trip = rounds(warmup, messages, async |n| {
                    amqp.round_trip(&round_trip_subject, bodies, n).await
                })
                .await?;
                anyhow::Ok(Ceilings {
                    publish,
                    round_trip,
                })
            }
            .await;
            amqp.close().await;
            Ok((outcome?, None))
        }
    }
}

/// `round(warmup)` untimed, then [`RAW_ROUNDS`] timed `round(messages)`;
/// the median round.
async fn rounds(
    warmup: u64,
    messages: u64,
    mut round: impl AsyncFnMut(u64) -> anyhow::Result<raw::Ceiling>,
) -> anyhow::Result<raw::Ceiling> {
    round(warmup).await?;
    let mut timed = Vec::with_capacity(RAW_ROUNDS);
    for _ in 0..RAW_ROUNDS {
        timed.push(round(messages).await?);
    }
    Ok(median(timed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_and_valid() {
        let a = Names::fresh(StoreUrl::Postgres(
            "postgres://u@h/db?schema=x&sslmode=disable".into(),
        ));
        let b = Names::fresh(StoreUrl::Postgres("postgres://u@h/db".into()));
        assert_ne!(a.prefix, b.prefix);
        assert!(a.prefix.starts_with("cbench-") && a.raw_prefix.ends_with("-raw"));
        assert_eq!(a.pg_url, "postgres://u@h/db?sslmode=disable");
        assert!(a.store_at.len() <= 48, "{}", a.store_at);
        assert_eq!(
            a.db_url(&a.inbox_at),
            format!("postgres://u@h/db?sslmode=disable&schema={}", a.inbox_at)
        );
        assert_eq!(
            b.db_url(&b.relay_at),
            format!("postgres://u@h/db?schema={}", b.relay_at)
        );
        let s = Names::fresh(StoreUrl::Sqlite("/tmp/x.db".into()));
        assert_eq!(s.relay_at, "/tmp/x.db-relay");
        assert_eq!(s.db_url(&s.inbox_at), "sqlite:///tmp/x.db-inbox");
    }

    #[test]
    fn urls_print_without_passwords() {
        assert_eq!(
            redact_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_password("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
    }
}
