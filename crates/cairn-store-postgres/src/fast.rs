//! The one-statement append: the writer's fast path.
//!
//! Most batches are appends with an exact expected version (or to a new
//! stream), on distinct streams, with fresh event ids. For those the writer
//! already knows every event's stream version, so it needs nothing from the
//! database but the next position. It sends one statement, run in its own
//! implicit transaction (one round trip, one WAL flush), that:
//!
//! 1. locks the `log_head` row and moves it past the batch (`UPDATE ...
//!    RETURNING`), which fixes the batch's first position and, held until
//!    commit, keeps the global order gap-safe exactly as the full path does;
//! 2. moves each existing stream's version, only where it still is the
//!    expected one and the stream is not deleted, and creates the new
//!    streams, only where they do not exist yet;
//! 3. inserts the events at `base + 1 ..`;
//! 4. checks that every stream was moved or created, and otherwise raises
//!    `cairn_stale` (SQLSTATE `CA001`), which rolls the whole statement back.
//!
//! A resent event id fails the statement on the unique index. Whatever the
//! reason the statement fails, nothing was written and the batch goes down
//! the full path (lock, load, judge, write, commit), which gives each
//! request its precise outcome: a replay, a wrong expected version, a
//! deleted stream. The stream-row updates wait on the head lock (a one-time
//! filter on it) so locks are always taken head first, as on the full path:
//! two writers cannot deadlock.

use sqlx::{PgConnection, Row};

use cairn_core::NewEvent;
use cairn_store::{AppendOutcome, ExpectedVersion};

use crate::writer::{EventColumns, Request, recorded_now};

/// One append that qualifies, with what the statement assumes about it.
struct Planned<'a> {
    /// The stream version before this append: `None` for a new stream.
    prev: Option<u64>,
    events: &'a [NewEvent],
}

/// Plans `requests` for the fast path, or `None` if any of them needs the
/// full path: not an append, an expected version other than exact or
/// no-stream, or a stream that appears twice in the batch.
fn plan(requests: &[Request]) -> Option<Vec<Planned<'_>>> {
    let mut seen = std::collections::HashSet::with_capacity(requests.len());
    requests
        .iter()
        .map(|r| match r {
            Request::Append {
                tenant,
                stream,
                expected,
                events,
                ..
            } if seen.insert((tenant, stream)) => {
                let prev = match expected {
                    ExpectedVersion::Exact(v) => Some(*v),
                    ExpectedVersion::NoStream => None,
                    ExpectedVersion::Any | ExpectedVersion::StreamExists => return None,
                };
                Some(Planned { prev, events })
            }
            _ => None,
        })
        .collect()
}

/// The statement. `$1` is the number of events; `$2..$5` the existing
/// streams (tenant, stream, expected version, new version); `$6..$8` the new
/// streams (tenant, stream, version); `$9` how many streams in all; `$10..`
/// the event columns; the last parameter the notification channel.
const APPEND: &str = "
WITH head AS (
    UPDATE log_head SET position = position + $1 WHERE id = 1
    RETURNING position - $1 AS base
), moved AS (
    UPDATE streams s SET version = u.version
    FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::bigint[])
         AS u(tenant_id, stream_id, prev, version)
    WHERE (SELECT base FROM head) IS NOT NULL
      AND s.tenant_id = u.tenant_id AND s.stream_id = u.stream_id
      AND s.version = u.prev AND NOT s.deleted
    RETURNING 1
), created AS (
    INSERT INTO streams (tenant_id, stream_id, version)
    SELECT u.tenant_id, u.stream_id, u.version
    FROM UNNEST($6::text[], $7::text[], $8::bigint[]) AS u(tenant_id, stream_id, version)
    WHERE (SELECT base FROM head) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING 1
), new_events AS (
    INSERT INTO events (position, tenant_id, stream_id, category, version, event_id,
                        event_type, schema_version, data, correlation_id, causation_id,
                        traceparent, actor, recorded_at)
    SELECT h.base + u.ord, u.tenant_id, u.stream_id, u.category, u.version, u.event_id,
           u.event_type, u.schema_version, u.data, u.correlation_id, u.causation_id,
           u.traceparent, u.actor, u.recorded_at
    FROM head h CROSS JOIN UNNEST($10::text[], $11::text[], $12::text[], $13::bigint[],
                                  $14::uuid[], $15::text[], $16::int[], $17::jsonb[],
                                  $18::text[], $19::text[], $20::text[], $21::text[],
                                  $22::timestamptz[])
         WITH ORDINALITY AS u(tenant_id, stream_id, category, version, event_id, event_type,
                              schema_version, data, correlation_id, causation_id,
                              traceparent, actor, recorded_at, ord)
), matched AS (
    SELECT (SELECT count(*) FROM moved) + (SELECT count(*) FROM created) AS n
)
SELECT CASE WHEN m.n = $9 THEN h.base ELSE cairn_stale($9, m.n) END AS base,
       pg_notify($23, (h.base + $1)::text)
FROM head h, matched m";

/// The same statement, pausing while it holds the head lock (tests only).
fn append_sql(pause: bool) -> std::borrow::Cow<'static, str> {
    if pause {
        APPEND
            .replace(
                "FROM head h, matched m",
                ", pg_sleep($24) FROM head h, matched m",
            )
            .into()
    } else {
        APPEND.into()
    }
}

/// What [`try_append`] did.
pub(crate) enum Attempt {
    /// Every request was answered; the batch committed up to this head.
    Committed(u64),
    /// The batch does not qualify, or the statement failed and wrote
    /// nothing: run it on the full path.
    Declined(Vec<Request>),
}

/// Tries `requests` as one statement on `conn` (the writer's own
/// connection). On success answers every request.
pub(crate) async fn try_append(
    conn: &mut PgConnection,
    channel: &str,
    pause: Option<std::time::Duration>,
    requests: Vec<Request>,
) -> Attempt {
    let Some(planned) = plan(&requests) else {
        return Attempt::Declined(requests);
    };
    let recorded_at = recorded_now();
    let total: usize = planned.iter().map(|p| p.events.len()).sum();
    let mut columns = EventColumns::with_capacity(total);
    let (mut m_tenant, mut m_stream, mut m_prev, mut m_version) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut c_tenant, mut c_stream, mut c_version) = (Vec::new(), Vec::new(), Vec::new());
    for (request, p) in requests.iter().zip(&planned) {
        let Request::Append { tenant, stream, .. } = request else {
            unreachable!("plan only accepts appends")
        };
        let first = p.prev.map_or(0, |v| v + 1);
        for (i, e) in p.events.iter().enumerate() {
            columns.push(tenant, stream, first + i as u64, e, recorded_at);
        }
        let last = first + p.events.len() as u64 - 1;
        match p.prev {
            Some(prev) => {
                m_tenant.push(tenant.as_str());
                m_stream.push(stream.as_str());
                m_prev.push(prev as i64);
                m_version.push(last as i64);
            }
            None => {
                c_tenant.push(tenant.as_str());
                c_stream.push(stream.as_str());
                c_version.push(last as i64);
            }
        }
    }
    let shape: Vec<(Option<u64>, u64)> = planned
        .iter()
        .map(|p| (p.prev, p.events.len() as u64))
        .collect();
    let streams = planned.len() as i64;
    let sql = append_sql(pause.is_some());
    let query = sqlx::query(&sql)
        .bind(total as i64)
        .bind(m_tenant)
        .bind(m_stream)
        .bind(m_prev)
        .bind(m_version)
        .bind(c_tenant)
        .bind(c_stream)
        .bind(c_version)
        .bind(streams);
    let mut query = columns.bind_without_position(query).bind(channel);
    if let Some(pause) = pause {
        query = query.bind(pause.as_secs_f64());
    }
    let base: i64 = match query.fetch_one(conn).await.and_then(|row| row.try_get(0)) {
        Ok(base) => base,
        Err(e) => {
            tracing::debug!(error = %e, "one-statement append declined; taking the full path");
            return Attempt::Declined(requests);
        }
    };
    let mut next = base as u64 + 1;
    for (request, (prev, n)) in requests.into_iter().zip(shape) {
        let Request::Append { reply, .. } = request else {
            unreachable!("plan only accepts appends")
        };
        let first_version = prev.map_or(0, |v| v + 1);
        // A caller that gave up waiting has dropped its receiver.
        let _ = reply.send(Ok(AppendOutcome {
            first_version,
            last_version: first_version + n - 1,
            first_position: next,
            last_position: next + n - 1,
        }));
        next += n;
    }
    Attempt::Committed(next - 1)
}
