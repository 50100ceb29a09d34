//! The writer: group commit with per-request judgement.
//!
//! One task per store handle owns all writes. It takes every request queued
//! at that moment (up to `max_batch`) and runs them in one transaction:
//!
//! 1. lock the `log_head` row (serializes writers across processes and fixes
//!    the next position),
//! 2. load, in one query each, the state of every stream the batch touches
//!    and every stored event that carries one of the batch's event ids,
//! 3. judge each request in order, in memory, with the shared rules of
//!    `cairn-store` (a later request sees an earlier one's effect),
//! 4. write all accepted events, stream rows and snapshots in a few set-based
//!    statements, move the head and notify, and commit.
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
use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::Value;
use sqlx::{Postgres, Row, Transaction, types::Json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::{
    Shared,
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
    while queue.recv_many(&mut batch, max_batch).await > 0 {
        let requests = std::mem::take(&mut batch);
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
    // Taking the lock in the BEGIN round trip saves one; reading the head
    // (and everything else) in later statements matters: under READ
    // COMMITTED each statement sees what committed before it started, so
    // only statements issued after the lock is held see the previous
    // writer's commit.
    let mut tx = shared
        .pool
        .begin_with("BEGIN; SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE")
        .await?;
    let (head, mut streams) = load_head_and_streams(&mut tx, requests).await?;
    let mut stored = load_stored_ids(&mut tx, requests).await?;

    let recorded_at = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or_else(|_| Utc::now());
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
        &mut tx,
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
        .execute(&mut *tx)
        .await?;
    }
    if let Some(range) = &shared.options.pause_in_transaction {
        tokio::time::sleep(random_in(range)).await;
    }
    tx.commit().await?;
    Ok((verdicts, new_head))
}

/// The log head and the state of every stream the batch touches, in one
/// query. Each key is a lateral index probe; the `LIMIT 1` keeps the planner
/// from flattening it into a hash join over the whole table, which it does
/// when statistics are stale (a young table looks tiny).
async fn load_head_and_streams(
    tx: &mut Transaction<'static, Postgres>,
    requests: &[Request],
) -> Result<(i64, HashMap<(TenantId, StreamId), StreamState>), sqlx::Error> {
    let mut keys: HashSet<(&TenantId, &StreamId)> = HashSet::new();
    let (mut tenants, mut ids) = (Vec::new(), Vec::new());
    for r in requests {
        let (t, s) = r.key();
        if keys.insert((t, s)) {
            tenants.push(t.as_str());
            ids.push(s.as_str());
        }
    }
    let rows = sqlx::query(
        "SELECT h.position, s.tenant_id, s.stream_id, s.version, s.deleted, s.truncate_before
         FROM log_head h
         LEFT JOIN LATERAL (
             SELECT st.* FROM UNNEST($1::text[], $2::text[]) AS k(tenant_id, stream_id)
             CROSS JOIN LATERAL (
                 SELECT * FROM streams
                 WHERE streams.tenant_id = k.tenant_id AND streams.stream_id = k.stream_id
                 LIMIT 1
             ) st
         ) s ON true
         WHERE h.id = 1",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut head = 0;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        head = row.try_get(0)?;
        let tenant: Option<&str> = row.try_get(1)?;
        let stream: Option<&str> = row.try_get(2)?;
        let (Some(tenant), Some(stream)) = (tenant, stream) else {
            continue;
        };
        let (Ok(tenant), Ok(stream)) = (TenantId::new(tenant), StreamId::new(stream)) else {
            continue;
        };
        let version: i64 = row.try_get(3)?;
        let truncate: Option<i64> = row.try_get(5)?;
        found.insert(
            (tenant, stream),
            StreamState {
                version: Some(version as u64),
                deleted: row.try_get(4)?,
                truncate_before: truncate.map(|t| t as u64),
                dirty: false,
            },
        );
    }
    Ok((head, found))
}

/// Stored events carrying any of the batch's event ids, by (tenant, id).
/// Probed per id, like the streams (see [`load_head_and_streams`]).
async fn load_stored_ids(
    tx: &mut Transaction<'static, Postgres>,
    requests: &[Request],
) -> Result<HashMap<(TenantId, EventId), RecordedEvent>, sqlx::Error> {
    let (mut tenants, mut ids): (Vec<&str>, Vec<Uuid>) = (Vec::new(), Vec::new());
    for r in requests {
        if let Request::Append { tenant, events, .. } = r {
            for e in events {
                tenants.push(tenant.as_str());
                ids.push(e.id.as_uuid());
            }
        }
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "SELECT e.* FROM UNNEST($1::text[], $2::uuid[]) AS k(tenant_id, event_id)
         CROSS JOIN LATERAL (
             SELECT {EVENT_COLUMNS} FROM events
             WHERE events.tenant_id = k.tenant_id AND events.event_id = k.event_id
             LIMIT 1
         ) e"
    );
    let rows = sqlx::query(&sql)
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
    let mut stored = HashMap::with_capacity(rows.len());
    for row in &rows {
        let event = decode_event(row).map_err(|e| sqlx::Error::Decode(e.to_string().into()))?;
        stored.insert((event.tenant.clone(), event.id), event);
    }
    Ok(stored)
}

/// Writes the batch's accepted events, the changed stream rows and the new
/// head, and queues the notification, in one statement (one round trip).
async fn write_changes(
    tx: &mut Transaction<'static, Postgres>,
    events: &[RecordedEvent],
    streams: &HashMap<(TenantId, StreamId), StreamState>,
    new_head: Option<u64>,
    channel: &str,
) -> Result<(), sqlx::Error> {
    let n = events.len();
    let mut position = Vec::with_capacity(n);
    let mut tenant = Vec::with_capacity(n);
    let mut stream = Vec::with_capacity(n);
    let mut category = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut schema_version = Vec::with_capacity(n);
    let mut data: Vec<Json<&Value>> = Vec::with_capacity(n);
    let mut correlation = Vec::with_capacity(n);
    let mut causation = Vec::with_capacity(n);
    let mut traceparent = Vec::with_capacity(n);
    let mut actor = Vec::with_capacity(n);
    let mut recorded_at = Vec::with_capacity(n);
    for e in events {
        position.push(e.position as i64);
        tenant.push(e.tenant.as_str());
        stream.push(e.stream.as_str());
        category.push(e.stream.category().as_str());
        version.push(e.version as i64);
        event_id.push(e.id.as_uuid());
        event_type.push(e.event_type.as_str());
        schema_version.push(e.schema_version as i32);
        data.push(Json(&e.data));
        correlation.push(e.metadata.correlation_id.as_deref());
        causation.push(e.metadata.causation_id.as_deref());
        traceparent.push(e.metadata.traceparent.as_deref());
        actor.push(e.metadata.actor.as_deref());
        recorded_at.push(e.recorded_at);
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
    sqlx::query(
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
    .bind(position)
    .bind(tenant)
    .bind(stream)
    .bind(category)
    .bind(version)
    .bind(event_id)
    .bind(event_type)
    .bind(schema_version)
    .bind(data)
    .bind(correlation)
    .bind(causation)
    .bind(traceparent)
    .bind(actor)
    .bind(recorded_at)
    .bind(s_tenant)
    .bind(s_stream)
    .bind(s_version)
    .bind(s_deleted)
    .bind(s_truncate)
    .bind(new_head.unwrap_or(0) as i64)
    .bind(new_head.is_some())
    .bind(channel)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whether the log grew past a power of two between 1,024 and 4,194,304
/// events. Autovacuum analyzes a table at most once a minute and only after
/// it grew by a tenth, so a young log that fills at thousands of events a
/// second is planned on guesses; with stale statistics PostgreSQL may probe
/// `events` for an id through the tenant/position index instead of the
/// unique one, which costs a scan of the tenant's events per id. Analyzing
/// at each doubling while the log is young keeps the plans honest; past that
/// autovacuum's own thresholds suffice.
fn crossed_analyze_mark(before: u64, after: u64) -> bool {
    (10..=22).any(|k| before < (1 << k) && after >= (1 << k))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_refreshed_at_each_doubling_of_a_young_log() {
        assert!(!crossed_analyze_mark(0, 1023));
        assert!(crossed_analyze_mark(1000, 1024));
        assert!(crossed_analyze_mark(0, 5000));
        assert!(!crossed_analyze_mark(1024, 2047));
        assert!(crossed_analyze_mark(2047, 2048));
        assert!(crossed_analyze_mark(4_194_303, 4_194_304));
        assert!(!crossed_analyze_mark(4_194_304, 8_388_608));
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
