//! The writer: group commit with per-request judgement.
//!
//! One task per store handle owns all writes. It takes every request queued
//! at that moment (up to `max_batch`) and first offers them to the
//! one-statement append ([`crate::fast`]); a batch that does not qualify, or
//! that the statement refused, runs in one transaction here, in three round
//! trips:
//!
//! 1. one simple-query message: `BEGIN`, lock the `log_head` row (serializes
//!    writers across processes and fixes the next position), then load the
//!    head, the state of every stream the batch touches and the stored
//!    events that carry one of the batch's ids;
//! 2. judge each request in order, in memory, with the shared rules of
//!    `cairn-store` (a later request sees an earlier one's effect), then
//!    write all accepted events and stream rows, move the head and notify in
//!    one statement (snapshots, rare, in their own);
//! 3. `COMMIT`.
//!
//! A request that fails its checks gets its typed error and writes nothing;
//! the others commit. If the transaction itself fails (the database went
//! away, a constraint fired because something outside Cairn wrote), each
//! request is retried alone so one cannot sink the rest.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use cairn_core::{EventId, NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AppendOutcome, ExpectedVersion, Idempotency, Snapshot, StoreError, check_expected,
    judge_idempotency,
};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, Row, pool::PoolConnection, postgres::PgRow, types::Json};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Shared, fast,
    read::{EVENT_COLUMNS, decode_event},
};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Request {
    Append {
        tenant: TenantId,
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        reply: Reply<AppendOutcome>,
    },
    Delete {
        tenant: TenantId,
        stream: StreamId,
        expected: ExpectedVersion,
        reply: Reply<()>,
    },
    Truncate {
        tenant: TenantId,
        stream: StreamId,
        before: u64,
        reply: Reply<()>,
    },
    Snapshot {
        tenant: TenantId,
        stream: StreamId,
        snapshot: Snapshot,
        reply: Reply<()>,
    },
}

impl Request {
    fn key(&self) -> (&TenantId, &StreamId) {
        match self {
            Request::Append { tenant, stream, .. }
            | Request::Delete { tenant, stream, .. }
            | Request::Truncate { tenant, stream, .. }
            | Request::Snapshot { tenant, stream, .. } => (tenant, stream),
        }
    }

    fn fail(self, error: StoreError) {
        // A caller that gave up waiting has dropped its receiver; nothing to do.
        match self {
            Request::Append { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Request::Delete { reply, .. }
            | Request::Truncate { reply, .. }
            | Request::Snapshot { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// The outcome of judging one request, sent only after commit.
enum Verdict {
    Appended(AppendOutcome),
    Done,
    Failed(StoreError),
}

pub(crate) async fn run(shared: Arc<Shared>, mut queue: mpsc::Receiver<Request>) {
    let max_batch = shared.options.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    let channel = shared.options.channel();
    // The one-statement append's connection, held from one batch to the
    // next: taking it from the pool each time costs a round trip (the
    // pool's ping before it hands out an idle connection), as much as the
    // statement itself. Given back when a batch is declined (a statement
    // that failed may have left it broken); the next batch takes another.
    let mut held: Option<PoolConnection<Postgres>> = None;
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        let requests = std::mem::take(&mut batch);
        let pause = shared.options.pause_in_transaction.as_ref().map(random_in);
        if held.is_none() {
            held = shared.pool.acquire().await.ok();
        }
        let attempt = match held.as_mut() {
            Some(conn) => fast::try_append(conn, &channel, pause, requests).await,
            // No connection now: the full path reports why.
            None => fast::Attempt::Declined(requests),
        };
        let requests = match attempt {
            fast::Attempt::Committed(head) => {
                shared.commits.fetch_add(1, Ordering::Relaxed);
                shared.one_statement_commits.fetch_add(1, Ordering::Relaxed);
                advance_head(&shared, head);
                continue;
            }
            fast::Attempt::Declined(requests) => {
                held = None;
                requests
            }
        };
        if let Err((requests, _)) = commit_batch(&shared, requests).await {
            // Retry each alone, so that one request the database refuses
            // cannot fail the others.
            for request in requests {
                if let Err((mut failed, error)) = commit_batch(&shared, vec![request]).await
                    && let Some(request) = failed.pop()
                {
                    request.fail(StoreError::Unavailable(format!(
                        "the write transaction failed: {error}"
                    )));
                }
            }
        }
    }
}

#[derive(Clone)]
struct StreamState {
    version: Option<u64>,
    deleted: bool,
    truncate_before: Option<u64>,
    dirty: bool,
}

/// Moves the head watch to a committed `head`, refreshing statistics when
/// the log has grown enough.
fn advance_head(shared: &Shared, head: u64) {
    let mut before = 0;
    shared.head.send_if_modified(|h| {
        before = *h;
        let moved = head > *h;
        *h = (*h).max(head);
        moved
    });
    if crossed_analyze_mark(before, head) {
        refresh_statistics(shared);
    }
}

/// Runs `requests` in one transaction and answers them; on a database
/// error, answers nothing and hands the requests back.
async fn commit_batch(
    shared: &Shared,
    requests: Vec<Request>,
) -> Result<(), (Vec<Request>, sqlx::Error)> {
    match judge_and_write(shared, &requests).await {
        Ok((verdicts, head)) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            if let Some(head) = head {
                advance_head(shared, head);
            }
            for (request, verdict) in requests.into_iter().zip(verdicts) {
                // Dropped receivers (callers that gave up) are fine to ignore.
                match (request, verdict) {
                    (Request::Append { reply, .. }, verdict) => {
                        let _ = reply.send(match verdict {
                            Verdict::Appended(o) => Ok(o),
                            Verdict::Failed(e) => Err(e),
                            Verdict::Done => Err(StoreError::Unavailable(
                                "internal: append judged without outcome".into(),
                            )),
                        });
                    }
                    (
                        Request::Delete { reply, .. }
                        | Request::Truncate { reply, .. }
                        | Request::Snapshot { reply, .. },
                        verdict,
                    ) => {
                        let _ = reply.send(match verdict {
                            Verdict::Failed(e) => Err(e),
                            _ => Ok(()),
                        });
                    }
                }
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = requests.len(), "event store write transaction failed");
            Err((requests, e))
        }
    }
}

async fn judge_and_write(
    shared: &Shared,
    requests: &[Request],
) -> Result<(Vec<Verdict>, Option<u64>), sqlx::Error> {
    let mut conn = shared.pool.acquire().await?;
    let result = write_batch(shared, &mut conn, requests).await;
    if result.is_err() {
        // Never hand a connection back to the pool inside a transaction.
        if simple_query(&mut conn, "ROLLBACK").await.is_err() {
            conn.close_on_drop();
        }
    }
    result
}

async fn write_batch(
    shared: &Shared,
    conn: &mut PgConnection,
    requests: &[Request],
) -> Result<(Vec<Verdict>, Option<u64>), sqlx::Error> {
    let Loaded {
        head,
        mut streams,
        mut stored,
    } = open_and_load(conn, requests).await?;

    let recorded_at = recorded_now();
    let mut next_position = head as u64 + 1;
    let mut new_events: Vec<RecordedEvent> = Vec::new();
    let mut snapshots: Vec<(&TenantId, &StreamId, &Snapshot)> = Vec::new();
    let mut verdicts = Vec::with_capacity(requests.len());

    for request in requests {
        let (tenant, stream) = request.key();
        let key = (tenant.clone(), stream.clone());
        let state = streams.get(&key).cloned().unwrap_or(StreamState {
            version: None,
            deleted: false,
            truncate_before: None,
            dirty: false,
        });
        let verdict = match request {
            Request::Append {
                expected, events, ..
            } => {
                let already: Vec<RecordedEvent> = events
                    .iter()
                    .filter_map(|e| stored.get(&(tenant.clone(), e.id)).cloned())
                    .collect();
                match judge_idempotency(stream, events, &already) {
                    Err(e) => Verdict::Failed(e),
                    Ok(Idempotency::Replay(outcome)) => Verdict::Appended(outcome),
                    Ok(Idempotency::New) if state.deleted => {
                        Verdict::Failed(StoreError::StreamDeleted {
                            stream: stream.clone(),
                        })
                    }
                    Ok(Idempotency::New) => {
                        match check_expected(stream, *expected, state.version) {
                            Err(e) => Verdict::Failed(e),
                            Ok(()) => {
                                let first_version = state.version.map_or(0, |v| v + 1);
                                let first_position = next_position;
                                for (i, e) in events.iter().enumerate() {
                                    let recorded = RecordedEvent {
                                        id: e.id,
                                        tenant: tenant.clone(),
                                        stream: stream.clone(),
                                        version: first_version + i as u64,
                                        position: next_position,
                                        event_type: e.event_type.clone(),
                                        schema_version: e.schema_version,
                                        data: e.data.clone(),
                                        metadata: e.metadata.clone(),
                                        recorded_at,
                                    };
                                    next_position += 1;
                                    stored.insert((tenant.clone(), e.id), recorded.clone());
                                    new_events.push(recorded);
                                }
                                let last_version = first_version + events.len() as u64 - 1;
                                streams.insert(
                                    key,
                                    StreamState {
                                        version: Some(last_version),
                                        dirty: true,
                                        ..state
                                    },
                                );
                                Verdict::Appended(AppendOutcome {
                                    first_version,
                                    last_version,
                                    first_position,
                                    last_position: next_position - 1,
                                })
                            }
                        }
                    }
                }
            }
            Request::Delete { expected, .. } => match state.version {
                None => Verdict::Failed(StoreError::StreamNotFound {
                    stream: stream.clone(),
                }),
                Some(_) if state.deleted => Verdict::Failed(StoreError::StreamDeleted {
                    stream: stream.clone(),
                }),
                Some(v) => match check_expected(stream, *expected, Some(v)) {
                    Err(e) => Verdict::Failed(e),
                    Ok(()) => {
                        streams.insert(
                            key,
                            StreamState {
                                deleted: true,
                                dirty: true,
                                ..state
                            },
                        );
                        Verdict::Done
                    }
                },
            },
            Request::Truncate { before, .. } => match state.version {
                None => Verdict::Failed(StoreError::StreamNotFound {
                    stream: stream.clone(),
                }),
                Some(_) if state.deleted => Verdict::Failed(StoreError::StreamDeleted {
                    stream: stream.clone(),
                }),
                Some(_) => {
                    let truncate_before = Some(state.truncate_before.unwrap_or(0).max(*before));
                    streams.insert(
                        key,
                        StreamState {
                            truncate_before,
                            dirty: true,
                            ..state
                        },
                    );
                    Verdict::Done
                }
            },
            Request::Snapshot { snapshot, .. } => match state.version {
                None => Verdict::Failed(StoreError::StreamNotFound {
                    stream: stream.clone(),
                }),
                Some(v) if snapshot.version > v => Verdict::Failed(StoreError::invalid(
                    "snapshot.version",
                    format!("stream {stream} is only at version {v}"),
                )),
                Some(_) => {
                    snapshots.push((tenant, stream, snapshot));
                    Verdict::Done
                }
            },
        };
        verdicts.push(verdict);
    }

    let new_head = (next_position - 1 > head as u64).then_some(next_position - 1);
    write_changes(
        conn,
        &new_events,
        &streams,
        new_head,
        &shared.options.channel(),
    )
    .await?;
    for (tenant, stream, snapshot) in snapshots {
        sqlx::query(
            "INSERT INTO snapshots (tenant_id, stream_id, version, schema_version, state)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant_id, stream_id) DO UPDATE
             SET version = excluded.version, schema_version = excluded.schema_version, state = excluded.state
             WHERE snapshots.version <= excluded.version",
        )
        .bind(tenant.as_str())
        .bind(stream.as_str())
        .bind(snapshot.version as i64)
        .bind(snapshot.schema_version as i32)
        .bind(&snapshot.state)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(range) = &shared.options.pause_in_transaction {
        tokio::time::sleep(random_in(range)).await;
    }
    simple_query(conn, "COMMIT").await?;
    Ok((verdicts, new_head))
}

/// The name of the per-connection prepared statement that loads a batch's
/// state (see [`prepare`]).
const LOAD_STATEMENT: &str = "cairn_load_batch";

/// Prepares the load statement on a new pool connection. Preparing it once
/// per connection lets the simple-query message of [`open_and_load`] run it
/// with a cached plan (planning this query costs more than a round trip).
///
/// The keys arrive as JSON records whose fields `jsonb_to_recordset` turns
/// into plain columns, so each probe compares columns with operators
/// PostgreSQL knows to be leakproof. Under row-level security (a connecting
/// user bound by the forced policies) a probe through a non-leakproof
/// expression such as `k->>0` could not use an index and would scan the
/// whole table, once per key.
pub(crate) async fn prepare(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let sql = format!(
        "PREPARE {LOAD_STATEMENT}(jsonb, jsonb) AS
         SELECT 0, h.position, NULL::text, NULL::text, NULL::bigint, NULL::bool, NULL::bigint
           FROM log_head h WHERE h.id = 1
         UNION ALL
         SELECT 1, NULL, st.tenant_id, st.stream_id, st.version, st.deleted, st.truncate_before
           FROM jsonb_to_recordset($1) AS k(t text, s text)
           CROSS JOIN LATERAL (
               SELECT * FROM streams
               WHERE streams.tenant_id = k.t AND streams.stream_id = k.s
               LIMIT 1
           ) st
         UNION ALL
         SELECT 2, e.position, NULL, NULL, NULL, NULL, NULL
           FROM jsonb_to_recordset($2) AS k(t text, id uuid)
           CROSS JOIN LATERAL (
               SELECT position FROM events
               WHERE events.tenant_id = k.t AND events.event_id = k.id
               LIMIT 1
           ) e"
    );
    simple_query(conn, &sql).await.map(drop)
}

/// What a batch's transaction reads before judging.
struct Loaded {
    head: i64,
    streams: HashMap<(TenantId, StreamId), StreamState>,
    stored: HashMap<(TenantId, EventId), RecordedEvent>,
}

/// Opens the write transaction and loads what the batch is judged on, in
/// one round trip: `BEGIN`, the lock on the log head, then one read of the
/// head, the state of every stream the batch touches and the positions of
/// stored events carrying one of its ids.
///
/// The read must be its own statement after the lock: under READ COMMITTED
/// each statement sees what committed before *it* started, so only a
/// statement issued once the lock is held sees the previous writer's
/// commit. A simple-query message runs its statements one after another, so
/// the three go in one message. The simple protocol takes no parameters, so
/// the keys travel as JSON text (escaped by serde_json) inside a
/// dollar-quoted literal whose tag cannot occur in it, as arguments of the
/// prepared [`LOAD_STATEMENT`].
///
/// Each key is a lateral index probe; the `LIMIT 1` keeps the planner from
/// flattening it into a hash join over the whole table, which it does when
/// statistics are stale (a young table looks tiny).
async fn open_and_load(
    conn: &mut PgConnection,
    requests: &[Request],
) -> Result<Loaded, sqlx::Error> {
    let mut stream_keys: Vec<Value> = Vec::new();
    let mut seen: HashSet<(&TenantId, &StreamId)> = HashSet::new();
    let mut id_keys: Vec<Value> = Vec::new();
    for r in requests {
        let (t, s) = r.key();
        if seen.insert((t, s)) {
            stream_keys.push(serde_json::json!({"t": t.as_str(), "s": s.as_str()}));
        }
        if let Request::Append { tenant, events, .. } = r {
            id_keys.extend(
                events
                    .iter()
                    .map(|e| serde_json::json!({"t": tenant.as_str(), "id": e.id.to_string()})),
            );
        }
    }
    let stream_keys =
        serde_json::to_string(&stream_keys).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let id_keys = serde_json::to_string(&id_keys).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let sql = format!(
        "BEGIN;
         SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE;
         EXECUTE {LOAD_STATEMENT}({}::jsonb, {}::jsonb)",
        dollar_quote(&stream_keys),
        dollar_quote(&id_keys),
    );
    let rows = simple_query(conn, &sql).await?;
    let mut loaded = Loaded {
        head: 0,
        streams: HashMap::new(),
        stored: HashMap::new(),
    };
    let mut stored_positions: Vec<i64> = Vec::new();
    // The lock statement's row has one column; the read's rows have seven.
    for row in rows.iter().filter(|r| r.len() == 7) {
        let kind: i32 = row.try_get(0)?;
        match kind {
            0 => loaded.head = row.try_get(1)?,
            1 => {
                let tenant: &str = row.try_get(2)?;
                let stream: &str = row.try_get(3)?;
                let (Ok(tenant), Ok(stream)) = (TenantId::new(tenant), StreamId::new(stream))
                else {
                    continue;
                };
                let version: i64 = row.try_get(4)?;
                let truncate: Option<i64> = row.try_get(6)?;
                loaded.streams.insert(
                    (tenant, stream),
                    StreamState {
                        version: Some(version as u64),
                        deleted: row.try_get(5)?,
                        truncate_before: truncate.map(|t| t as u64),
                        dirty: false,
                    },
                );
            }
            _ => stored_positions.push(row.try_get(1)?),
        }
    }
    if !stored_positions.is_empty() {
        // Resends are rare: only then fetch the stored events in full.
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE position = ANY($1)");
        let rows = sqlx::query(&sql)
            .bind(&stored_positions)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let event = decode_event(row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
            loaded
                .stored
                .insert((event.tenant.clone(), event.id), event);
        }
    }
    Ok(loaded)
}

/// Runs `sql` with the simple-query protocol (several statements, no
/// parameters, one round trip). Boxed so the writer's future stays `Send`
/// for every lifetime, which the compiler cannot prove through sqlx's
/// generic executor otherwise.
fn simple_query<'c>(
    conn: &'c mut PgConnection,
    sql: &'c str,
) -> futures_core::future::BoxFuture<'c, Result<Vec<PgRow>, sqlx::Error>> {
    sqlx::Executor::fetch_all(conn, sqlx::raw_sql(sql))
}

/// `text` as a dollar-quoted SQL literal, with a tag that does not occur in it.
fn dollar_quote(text: &str) -> String {
    let mut tag = String::from("k");
    while text.contains(&format!("${tag}$")) {
        tag.push('k');
    }
    format!("${tag}${text}${tag}$")
}

/// Writes the batch's accepted events, the changed stream rows and the new
/// head, and queues the notification, in one statement (one round trip).
async fn write_changes(
    conn: &mut PgConnection,
    events: &[RecordedEvent],
    streams: &HashMap<(TenantId, StreamId), StreamState>,
    new_head: Option<u64>,
    channel: &str,
) -> Result<(), sqlx::Error> {
    let n = events.len();
    let mut position = Vec::with_capacity(n);
    let mut columns = EventColumns::with_capacity(n);
    for e in events {
        position.push(e.position as i64);
        columns.push_recorded(e);
    }
    let (mut s_tenant, mut s_stream, mut s_version, mut s_deleted, mut s_truncate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((t, s), state) in streams {
        let (true, Some(v)) = (state.dirty, state.version) else {
            continue;
        };
        s_tenant.push(t.as_str());
        s_stream.push(s.as_str());
        s_version.push(v as i64);
        s_deleted.push(state.deleted);
        s_truncate.push(state.truncate_before.map(|t| t as i64));
    }
    if n == 0 && s_tenant.is_empty() {
        return Ok(());
    }
    let query = sqlx::query(
        "WITH new_events AS (
             INSERT INTO events (position, tenant_id, stream_id, category, version, event_id,
                                 event_type, schema_version, data, correlation_id, causation_id,
                                 traceparent, actor, recorded_at)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                  $6::uuid[], $7::text[], $8::int[], $9::jsonb[], $10::text[],
                                  $11::text[], $12::text[], $13::text[], $14::timestamptz[])
         ), changed_streams AS (
             INSERT INTO streams (tenant_id, stream_id, version, deleted, truncate_before)
             SELECT * FROM UNNEST($15::text[], $16::text[], $17::bigint[], $18::bool[], $19::bigint[])
             ON CONFLICT (tenant_id, stream_id) DO UPDATE
             SET version = excluded.version, deleted = excluded.deleted,
                 truncate_before = excluded.truncate_before
         ), moved_head AS (
             UPDATE log_head SET position = $20 WHERE id = 1 AND $21
         )
         SELECT pg_notify($22, $20::text) WHERE $21",
    )
    .bind(position);
    columns
        .bind_without_position(query)
        .bind(s_tenant)
        .bind(s_stream)
        .bind(s_version)
        .bind(s_deleted)
        .bind(s_truncate)
        .bind(new_head.unwrap_or(0) as i64)
        .bind(new_head.is_some())
        .bind(channel)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Whether the log grew past a power of two between 64 and 4,194,304
/// events. Autovacuum analyzes a table at most once a minute and only after
/// it grew by a tenth, so a young log that fills at thousands of events a
/// second is planned on guesses; with stale statistics PostgreSQL may probe
/// `events` for an id through the tenant/position index instead of the
/// unique one, which costs a scan of the tenant's events per id. Analyzing
/// at each doubling while the log is young keeps the plans honest; past that
/// autovacuum's own thresholds suffice.
fn crossed_analyze_mark(before: u64, after: u64) -> bool {
    (6..=22).any(|k| before < (1 << k) && after >= (1 << k))
}

/// Runs ANALYZE on the log's tables in the background.
fn refresh_statistics(shared: &Shared) {
    let pool = shared.pool.clone();
    tokio::spawn(async move {
        if let Err(e) = sqlx::query("ANALYZE events, streams").execute(&pool).await {
            tracing::warn!(error = %e, "could not refresh the event log's statistics");
        }
    });
}

/// A duration drawn uniformly from `range`, without a random-number
/// dependency: the std hasher is randomly seeded per instance.
fn random_in(range: &std::ops::Range<Duration>) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let span = range.end.saturating_sub(range.start).as_micros() as u64;
    if span == 0 {
        return range.start;
    }
    let r = RandomState::new().hash_one(Utc::now().timestamp_nanos_opt());
    range.start + Duration::from_micros(r % span)
}

/// The time stamped on a batch's events, at the microsecond precision
/// PostgreSQL stores.
pub(crate) fn recorded_now() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or_else(|_| Utc::now())
}

/// A batch's event columns as arrays, bound as binary parameters and
/// turned back into rows by `UNNEST` (position excepted: the full path
/// knows it, the fast path computes it in SQL).
pub(crate) struct EventColumns<'a> {
    tenant: Vec<&'a str>,
    stream: Vec<&'a str>,
    category: Vec<&'a str>,
    version: Vec<i64>,
    event_id: Vec<uuid::Uuid>,
    event_type: Vec<&'a str>,
    schema_version: Vec<i32>,
    data: Vec<Json<&'a Value>>,
    correlation: Vec<Option<&'a str>>,
    causation: Vec<Option<&'a str>>,
    traceparent: Vec<Option<&'a str>>,
    actor: Vec<Option<&'a str>>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl<'a> EventColumns<'a> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            tenant: Vec::with_capacity(n),
            stream: Vec::with_capacity(n),
            category: Vec::with_capacity(n),
            version: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            event_type: Vec::with_capacity(n),
            schema_version: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            correlation: Vec::with_capacity(n),
            causation: Vec::with_capacity(n),
            traceparent: Vec::with_capacity(n),
            actor: Vec::with_capacity(n),
            recorded_at: Vec::with_capacity(n),
        }
    }

    pub(crate) fn push(
        &mut self,
        tenant: &'a TenantId,
        stream: &'a StreamId,
        version: u64,
        e: &'a NewEvent,
        recorded_at: DateTime<Utc>,
    ) {
        self.tenant.push(tenant.as_str());
        self.stream.push(stream.as_str());
        self.category.push(stream.category().as_str());
        self.version.push(version as i64);
        self.event_id.push(e.id.as_uuid());
        self.event_type.push(e.event_type.as_str());
        self.schema_version.push(e.schema_version as i32);
        self.data.push(Json(&e.data));
        self.correlation.push(e.metadata.correlation_id.as_deref());
        self.causation.push(e.metadata.causation_id.as_deref());
        self.traceparent.push(e.metadata.traceparent.as_deref());
        self.actor.push(e.metadata.actor.as_deref());
        self.recorded_at.push(recorded_at);
    }

    fn push_recorded(&mut self, e: &'a RecordedEvent) {
        self.tenant.push(e.tenant.as_str());
        self.stream.push(e.stream.as_str());
        self.category.push(e.stream.category().as_str());
        self.version.push(e.version as i64);
        self.event_id.push(e.id.as_uuid());
        self.event_type.push(e.event_type.as_str());
        self.schema_version.push(e.schema_version as i32);
        self.data.push(Json(&e.data));
        self.correlation.push(e.metadata.correlation_id.as_deref());
        self.causation.push(e.metadata.causation_id.as_deref());
        self.traceparent.push(e.metadata.traceparent.as_deref());
        self.actor.push(e.metadata.actor.as_deref());
        self.recorded_at.push(e.recorded_at);
    }

    /// Binds the thirteen arrays, in table column order after `position`.
    pub(crate) fn bind_without_position<'q>(
        self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>
    where
        'a: 'q,
    {
        query
            .bind(self.tenant)
            .bind(self.stream)
            .bind(self.category)
            .bind(self.version)
            .bind(self.event_id)
            .bind(self.event_type)
            .bind(self.schema_version)
            .bind(self.data)
            .bind(self.correlation)
            .bind(self.causation)
            .bind(self.traceparent)
            .bind(self.actor)
            .bind(self.recorded_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_refreshed_at_each_doubling_of_a_young_log() {
        assert!(!crossed_analyze_mark(0, 63));
        assert!(crossed_analyze_mark(60, 64));
        assert!(crossed_analyze_mark(1000, 1024));
        assert!(crossed_analyze_mark(0, 5000));
        assert!(!crossed_analyze_mark(1024, 2047));
        assert!(crossed_analyze_mark(2047, 2048));
        assert!(crossed_analyze_mark(4_194_303, 4_194_304));
        assert!(!crossed_analyze_mark(4_194_304, 8_388_608));
    }

    #[test]
    fn dollar_quotes_pick_a_tag_absent_from_the_text() {
        assert_eq!(dollar_quote("[]"), "$k$[]$k$");
        assert_eq!(dollar_quote("a$k$b"), "$kk$a$k$b$kk$");
        assert_eq!(dollar_quote("$k$$kk$"), "$kkk$$k$$kk$$kkk$");
    }

    #[test]
    fn random_pauses_stay_in_range() {
        let range = Duration::from_millis(5)..Duration::from_millis(9);
        for _ in 0..100 {
            let d = random_in(&range);
            assert!(range.contains(&d), "{d:?}");
        }
        assert_eq!(random_in(&(Duration::ZERO..Duration::ZERO)), Duration::ZERO);
    }
}
