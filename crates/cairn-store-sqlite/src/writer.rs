//! The single writer: one thread owns the only write connection and commits
//! requests in groups.
//!
//! Callers validate and serialize their input, send a [`Command`] with a
//! reply channel, and wait. The thread takes every command queued (up to
//! `max_batch`) and runs them in ONE `BEGIN IMMEDIATE` transaction, each in
//! its own savepoint: a request that fails (wrong expected version,
//! idempotency conflict, any error) is rolled back alone and the others still
//! commit (a request alone in its group needs no savepoint: the whole
//! transaction is rolled back instead). Requests are applied in arrival
//! order, so each is judged on its own expected version against the state
//! left by the ones before it, exactly as if they had run one by one. The
//! cost of a commit (the fsync) is shared by the whole group, which is what
//! makes many concurrent appends fast.
//!
//! An append costs a few statements whatever its size: one `IN (...)`
//! query finds the stored events carrying its ids, and multi-row INSERTs
//! write its events, up to 100 per statement (see [`runs`]).
//!
//! Guarantees:
//! - a reply is sent only after the transaction holding the request
//!   committed (with `synchronous=FULL`, after the WAL is on disk), so an
//!   acknowledged append survives `kill -9`, and with FULL a power loss;
//! - if the commit itself fails, every request of the group gets the error;
//! - positions are `MAX(position) + 1`, re-read at the start of each
//!   transaction under the write lock, so other processes writing the same
//!   file keep the log dense and in commit order;
//! - the head watch moves only after a commit, so a reader that sees head `h`
//!   can read every event up to `h`.
//!
//! The thread exits when every sender is gone (all store handles dropped).

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AppendOutcome, ExpectedVersion, Idempotency, Snapshot, StoreError, check_expected,
    judge_idempotency,
};
use rusqlite::{Connection, Statement};
use tokio::sync::{oneshot, watch};

use crate::codec::{DbResult, Decoder, event_columns, from_sql, stream_row, to_sql, to_sql_bits};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// An append, validated and with its payloads already serialized by the
/// caller (so the JSON work happens off the writer thread).
#[derive(Debug)]
pub(crate) struct AppendRequest {
    pub(crate) tenant: TenantId,
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<NewEvent>,
    /// `events[i].data` as JSON text.
    pub(crate) payloads: Vec<String>,
}

/// One request to the writer, with where to send its result.
#[derive(Debug)]
pub(crate) enum Command {
    Append(AppendRequest, Reply<AppendOutcome>),
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
    SaveSnapshot {
        tenant: TenantId,
        stream: StreamId,
        snapshot: Snapshot,
        /// `snapshot.state` as JSON text.
        state: String,
        reply: Reply<()>,
    },
}

/// `err` for another request of the same group. The group's failure is the
/// backend's, whatever this request's own outcome was.
fn relay(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl Command {
    fn reject(self, err: &StoreError) -> Finished {
        let err = || relay(err);
        match self {
            Command::Append(_, reply) => Finished::Append(reply, Err(err())),
            Command::Delete { reply, .. }
            | Command::Truncate { reply, .. }
            | Command::SaveSnapshot { reply, .. } => Finished::Unit(reply, Err(err())),
        }
    }
}

/// A request's result, held until its transaction has committed.
enum Finished {
    Append(Reply<AppendOutcome>, Result<AppendOutcome, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
}

impl Finished {
    fn is_ok(&self) -> bool {
        match self {
            Finished::Append(_, r) => r.is_ok(),
            Finished::Unit(_, r) => r.is_ok(),
        }
    }

    /// The group did not commit: whatever this request saw is void.
    fn fail(self, err: &StoreError) -> Self {
        let err = relay(err);
        match self {
            Finished::Append(reply, _) => Finished::Append(reply, Err(err)),
            Finished::Unit(reply, _) => Finished::Unit(reply, Err(err)),
        }
    }

    fn send(self) {
        // A caller that stopped waiting (its future was dropped) is no error:
        // what committed stays committed, and a resend is idempotent.
        let _ = match self {
            Finished::Append(reply, r) => reply.send(r).map_err(drop),
            Finished::Unit(reply, r) => reply.send(r).map_err(drop),
        };
    }
}

/// Most events one statement inserts (or ids it probes): per-statement
/// costs (cache lookup, step, reset) are spread over this many rows, and a
/// full insert binds 6 + 8 x 100 parameters, far below SQLite's limit.
const MAX_ROWS_PER_STATEMENT: usize = 100;

/// The run lengths statements are prepared for: 1 to 9, the tens, and
/// [`MAX_ROWS_PER_STATEMENT`].
fn run_lengths() -> impl Iterator<Item = usize> {
    (1..10).chain((10..=MAX_ROWS_PER_STATEMENT).step_by(10))
}

/// Where the statement for a run of `len` rows sits in [`BulkSql`]'s lists.
fn shape(len: usize) -> usize {
    debug_assert!(run_lengths().any(|n| n == len), "{len} is no run length");
    if len < 10 { len - 1 } else { 8 + len / 10 }
}

/// Splits `0..len` into runs of a hundred, then the tens, then the units
/// (345 = 100 + 100 + 100 + 40 + 5): nineteen statement shapes, each
/// prepared once, write any append in a few statements, and a small or
/// round one (up to 10 events, or 20, 50, 100) in one.
fn runs(len: usize) -> impl Iterator<Item = Range<usize>> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = len - start;
        let size = match left {
            0 => return None,
            MAX_ROWS_PER_STATEMENT.. => MAX_ROWS_PER_STATEMENT,
            10.. => left / 10 * 10,
            _ => left,
        };
        let run = start..start + size;
        start += size;
        Some(run)
    })
}

/// Parameters an insert binds once for all its rows (see [`BulkSql`]).
const SHARED_PARAMS: usize = 6;
/// Parameters an insert binds per row.
const ROW_PARAMS: usize = 8;

/// The multi-row statements, one text per run length (at [`shape`]), built
/// once: the statement cache is keyed by text.
struct BulkSql {
    /// Inserts a run of consecutive events of one append. What the rows
    /// share is bound once: `?1` first position, `?2` tenant, `?3` stream,
    /// `?4` category, `?5` first version, `?6` recorded_at; row `r` takes
    /// position `?1 + r`, version `?5 + r` and [`ROW_PARAMS`] values of its
    /// own (id, type, schema version, data, the four metadata fields).
    insert: Vec<String>,
    /// Selects the events of tenant `?1` carrying any of a run of ids.
    probe: Vec<String>,
}

impl BulkSql {
    fn new() -> Self {
        let insert = run_lengths()
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|r| {
                        let own: Vec<String> = (1..=ROW_PARAMS)
                            .map(|j| format!("?{}", SHARED_PARAMS + r * ROW_PARAMS + j))
                            .collect();
                        format!("(?1 + {r}, ?2, ?3, ?4, ?5 + {r}, {}, ?6)", own.join(", "))
                    })
                    .collect();
                // OR FAIL: a row that breaks a constraint stops the statement
                // without undoing the rows before it, so SQLite needs no
                // statement journal (one more copy of every page changed).
                // A failed request is rolled back whole anyway.
                format!(
                    "INSERT OR FAIL INTO events (position, tenant_id, stream_id, category, version, \
                     event_id, event_type, schema_version, data, correlation_id, causation_id, \
                     traceparent, actor, recorded_at) VALUES {}",
                    rows.join(", ")
                )
            })
            .collect();
        let probe = run_lengths()
            .map(|n| {
                format!(
                    concat!(
                        "SELECT ",
                        event_columns!(),
                        " FROM events WHERE tenant_id = ? AND event_id IN ({})"
                    ),
                    vec!["?"; n].join(", ")
                )
            })
            .collect();
        Self { insert, probe }
    }
}

/// Binds `req`'s events in `run` (with their payloads) as the rows of a
/// [`BulkSql::insert`] statement; the run's first event goes to `position`
/// with `version`.
fn bind_run(
    stmt: &mut Statement<'_>,
    req: &AppendRequest,
    run: Range<usize>,
    position: u64,
    version: u64,
    recorded_at: i64,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, to_sql(position))?;
    stmt.raw_bind_parameter(2, req.tenant.as_str())?;
    stmt.raw_bind_parameter(3, req.stream.as_str())?;
    stmt.raw_bind_parameter(4, req.stream.category().as_str())?;
    stmt.raw_bind_parameter(5, to_sql(version))?;
    stmt.raw_bind_parameter(6, recorded_at)?;
    let rows = req.events[run.clone()].iter().zip(&req.payloads[run]);
    for (r, (event, data)) in rows.enumerate() {
        let at = SHARED_PARAMS + r * ROW_PARAMS;
        let md = &event.metadata;
        stmt.raw_bind_parameter(at + 1, &event.id.as_uuid().as_bytes()[..])?;
        stmt.raw_bind_parameter(at + 2, &event.event_type)?;
        stmt.raw_bind_parameter(at + 3, event.schema_version)?;
        stmt.raw_bind_parameter(at + 4, data)?;
        stmt.raw_bind_parameter(at + 5, &md.correlation_id)?;
        stmt.raw_bind_parameter(at + 6, &md.causation_id)?;
        stmt.raw_bind_parameter(at + 7, &md.traceparent)?;
        stmt.raw_bind_parameter(at + 8, &md.actor)?;
    }
    Ok(())
}

/// The state of the writer thread.
pub(crate) struct Writer {
    conn: Connection,
    head: Arc<watch::Sender<u64>>,
    commits: Arc<AtomicU64>,
    decoder: Decoder,
    sql: BulkSql,
    /// The position the next event gets; valid inside a transaction only.
    next_position: u64,
    /// Requests of the current group, dropped once every reply is out:
    /// freeing their events and payloads is not the callers' wait.
    spent: Vec<AppendRequest>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        head: Arc<watch::Sender<u64>>,
        commits: Arc<AtomicU64>,
    ) -> Self {
        Self {
            conn,
            head,
            commits,
            decoder: Decoder::default(),
            sql: BulkSql::new(),
            next_position: 1,
            spent: Vec::new(),
        }
    }

    /// Serves commands until every sender is dropped.
    pub(crate) fn run(mut self, rx: mpsc::Receiver<Command>, max_batch: usize) {
        let max_batch = max_batch.max(1);
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::with_capacity(max_batch.min(64));
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        tracing::debug!("sqlite writer stopped: every store handle was dropped");
    }

    /// Runs `batch` in one transaction and answers every request.
    pub(crate) fn run_batch(&mut self, batch: Vec<Command>) {
        let size = batch.len();
        let finished = self.execute(batch);
        tracing::trace!(requests = size, "sqlite group commit");
        for f in finished {
            f.send();
        }
        self.spent.clear();
    }

    fn execute(&mut self, batch: Vec<Command>) -> Vec<Finished> {
        if let Err(err) = self.begin() {
            tracing::warn!(error = %err, "sqlite writer could not start a transaction");
            return batch.into_iter().map(|c| c.reject(&err)).collect();
        }
        // A lone request runs without a savepoint: the transaction already
        // isolates it, and savepoints are not free. SQLite copies every page
        // a savepoint changes into a sub-journal, past 64 KiB into a
        // temporary file created and deleted per transaction: for a large
        // append, nearly as much work as its inserts.
        let lone = batch.len() == 1;
        let mut finished = Vec::with_capacity(batch.len());
        let mut broken: Option<StoreError> = None;
        for cmd in batch {
            if let Some(err) = &broken {
                finished.push(cmd.reject(err));
                continue;
            }
            let start = self.next_position;
            if !lone && let Err(err) = self.exec("SAVEPOINT request") {
                finished.push(cmd.reject(&err));
                broken = Some(err);
                continue;
            }
            let done = self.apply(cmd);
            if !done.is_ok() {
                self.next_position = start;
            }
            let closed = match (lone, done.is_ok()) {
                // Committed or rolled back with the transaction, below.
                (true, _) => Ok(()),
                (false, true) => self.exec("RELEASE request"),
                (false, false) => self
                    .exec("ROLLBACK TO request")
                    .and_then(|()| self.exec("RELEASE request")),
            };
            finished.push(done);
            if let Err(err) = closed {
                broken = Some(err);
            } else if self.conn.is_autocommit() {
                // Some errors (I/O, full disk) make SQLite roll the whole
                // transaction back on its own; nothing before this point
                // will commit any more.
                broken = Some(StoreError::Unavailable(
                    "sqlite rolled the transaction back".into(),
                ));
            }
        }
        let outcome = match broken {
            Some(err) => Err(err),
            None if lone && !finished[0].is_ok() => {
                // The failed request is the whole transaction: undo it all.
                self.rollback();
                return finished;
            }
            None => self.exec("COMMIT"),
        };
        match outcome {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                // Before the replies go out, so a caller whose append
                // returned already finds it below `head()`.
                self.publish_head(self.next_position - 1);
                finished
            }
            Err(err) => {
                tracing::warn!(error = %err, requests = finished.len(), "sqlite group commit failed");
                self.rollback();
                finished.into_iter().map(|f| f.fail(&err)).collect()
            }
        }
    }

    /// Ends the open transaction, if SQLite has not already rolled it back,
    /// undoing everything in it.
    fn rollback(&self) {
        if !self.conn.is_autocommit()
            && let Err(err) = self.conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(error = %err, "sqlite writer could not roll back");
        }
    }

    fn exec(&self, sql: &str) -> Result<(), StoreError> {
        self.conn.prepare_cached(sql).db()?.execute([]).db()?;
        Ok(())
    }

    /// Takes the write lock and learns the log's end, which another process
    /// may have moved since our last transaction.
    fn begin(&mut self) -> Result<(), StoreError> {
        self.exec("BEGIN IMMEDIATE")?;
        let last = self
            .conn
            .prepare_cached("SELECT COALESCE(MAX(position), 0) FROM events")
            .db()
            .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)).db())
            .and_then(|n| from_sql("position", n));
        match last {
            Ok(last) => {
                self.next_position = last + 1;
                self.publish_head(last);
                Ok(())
            }
            Err(err) => {
                self.rollback();
                Err(err)
            }
        }
    }

    fn publish_head(&self, last: u64) {
        self.head.send_if_modified(|head| {
            let moved = last > *head;
            if moved {
                *head = last;
            }
            moved
        });
    }

    fn apply(&mut self, cmd: Command) -> Finished {
        match cmd {
            Command::Append(req, reply) => {
                let result = self.append(&req);
                self.spent.push(req);
                Finished::Append(reply, result)
            }
            Command::Delete {
                tenant,
                stream,
                expected,
                reply,
            } => Finished::Unit(reply, self.delete(&tenant, &stream, expected)),
            Command::Truncate {
                tenant,
                stream,
                before,
                reply,
            } => Finished::Unit(reply, self.truncate(&tenant, &stream, before)),
            Command::SaveSnapshot {
                tenant,
                stream,
                snapshot,
                state,
                reply,
            } => Finished::Unit(
                reply,
                self.save_snapshot(&tenant, &stream, &snapshot, &state),
            ),
        }
    }

    /// The stored events of `tenant` carrying any of `events`' ids, found
    /// with one `IN (...)` query per run of ids rather than one per id.
    fn stored_with_ids(
        &mut self,
        tenant: &TenantId,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut stored = Vec::new();
        for run in runs(events.len()) {
            let ids = &events[run];
            let mut stmt = self
                .conn
                .prepare_cached(&self.sql.probe[shape(ids.len())])
                .db()?;
            stmt.raw_bind_parameter(1, tenant.as_str()).db()?;
            for (i, e) in ids.iter().enumerate() {
                stmt.raw_bind_parameter(i + 2, &e.id.as_uuid().as_bytes()[..])
                    .db()?;
            }
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().db()? {
                stored.push(self.decoder.event(row)?);
            }
        }
        Ok(stored)
    }

    fn append(&mut self, req: &AppendRequest) -> Result<AppendOutcome, StoreError> {
        let AppendRequest {
            tenant,
            stream,
            expected,
            events,
            ..
        } = req;
        let stored = self.stored_with_ids(tenant, events)?;
        if let Idempotency::Replay(outcome) = judge_idempotency(stream, events, &stored)? {
            return Ok(outcome);
        }
        let current = match stream_row(&self.conn, tenant, stream)? {
            Some(s) if s.deleted => {
                return Err(StoreError::StreamDeleted {
                    stream: stream.clone(),
                });
            }
            Some(s) => Some(s.version),
            None => None,
        };
        check_expected(stream, *expected, current)?;

        let recorded_at = chrono::Utc::now().timestamp_micros();
        let first_version = current.map_or(0, |v| v + 1);
        let first_position = self.next_position;
        for run in runs(events.len()) {
            let mut insert = self
                .conn
                .prepare_cached(&self.sql.insert[shape(run.len())])
                .db()?;
            let offset = run.start as u64;
            bind_run(
                &mut insert,
                req,
                run,
                first_position + offset,
                first_version + offset,
                recorded_at,
            )
            .db()?;
            insert.raw_execute().db()?;
        }
        let count = events.len() as u64;
        let last_version = first_version + count - 1;
        self.conn
            .prepare_cached(
                "INSERT INTO streams (tenant_id, stream_id, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, stream_id) DO UPDATE SET version = excluded.version",
            )
            .db()?
            .execute((tenant.as_str(), stream.as_str(), to_sql(last_version)))
            .db()?;
        self.next_position += count;
        Ok(AppendOutcome {
            first_version,
            last_version,
            first_position,
            last_position: first_position + count - 1,
        })
    }

    fn delete(
        &mut self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError> {
        let s = self.live_stream(tenant, stream)?;
        check_expected(stream, expected, Some(s.version))?;
        self.conn
            .prepare_cached(
                "UPDATE streams SET deleted = 1 WHERE tenant_id = ?1 AND stream_id = ?2",
            )
            .db()?
            .execute((tenant.as_str(), stream.as_str()))
            .db()?;
        Ok(())
    }

    fn truncate(
        &mut self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError> {
        let s = self.live_stream(tenant, stream)?;
        let point = s.truncate_before.unwrap_or(0).max(before);
        self.conn
            .prepare_cached(
                "UPDATE streams SET truncate_before = ?3 WHERE tenant_id = ?1 AND stream_id = ?2",
            )
            .db()?
            .execute((tenant.as_str(), stream.as_str(), to_sql_bits(point)))
            .db()?;
        Ok(())
    }

    /// The stream's row if it exists and is not deleted.
    fn live_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<crate::codec::StreamRow, StoreError> {
        match stream_row(&self.conn, tenant, stream)? {
            None => Err(StoreError::StreamNotFound {
                stream: stream.clone(),
            }),
            Some(s) if s.deleted => Err(StoreError::StreamDeleted {
                stream: stream.clone(),
            }),
            Some(s) => Ok(s),
        }
    }

    fn save_snapshot(
        &mut self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: &Snapshot,
        state: &str,
    ) -> Result<(), StoreError> {
        let Some(s) = stream_row(&self.conn, tenant, stream)? else {
            return Err(StoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        if snapshot.version > s.version {
            return Err(StoreError::invalid(
                "snapshot.version",
                format!("stream {stream} is only at version {}", s.version),
            ));
        }
        // The WHERE keeps a newer stored snapshot: an older one never
        // replaces it. Both versions are at most the stream's, so the SQL
        // comparison is exact.
        self.conn
            .prepare_cached(
                "INSERT INTO snapshots (tenant_id, stream_id, version, schema_version, state)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant_id, stream_id) DO UPDATE SET
                     version = excluded.version,
                     schema_version = excluded.schema_version,
                     state = excluded.state
                 WHERE excluded.version >= snapshots.version",
            )
            .db()?
            .execute((
                tenant.as_str(),
                stream.as_str(),
                to_sql(snapshot.version),
                snapshot.schema_version,
                state,
            ))
            .db()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::{EventId, Metadata};
    use serde_json::json;

    struct Harness {
        writer: Writer,
        head: watch::Receiver<u64>,
        commits: Arc<AtomicU64>,
    }

    fn harness() -> Harness {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrate(&mut conn).unwrap();
        let head = Arc::new(watch::Sender::new(0));
        let commits = Arc::new(AtomicU64::new(0));
        Harness {
            head: head.subscribe(),
            writer: Writer::new(conn, head, Arc::clone(&commits)),
            commits,
        }
    }

    fn t() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    fn s(name: &str) -> StreamId {
        StreamId::new(name).unwrap()
    }

    fn ev(n: u64) -> NewEvent {
        NewEvent::new("E", json!({ "n": n }))
    }

    type Pending = oneshot::Receiver<Result<AppendOutcome, StoreError>>;

    fn append(
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> (Command, Pending) {
        let (tx, rx) = oneshot::channel();
        let payloads = events
            .iter()
            .map(|e| serde_json::to_string(&e.data).unwrap())
            .collect();
        let req = AppendRequest {
            tenant: t(),
            stream: s(stream),
            expected,
            events,
            payloads,
        };
        (Command::Append(req, tx), rx)
    }

    fn result(mut rx: Pending) -> Result<AppendOutcome, StoreError> {
        rx.try_recv().expect("answered")
    }

    fn count(w: &Writer) -> i64 {
        w.conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    /// Every stored event, in log order.
    fn stored(w: &Writer) -> Vec<RecordedEvent> {
        let mut stmt = w
            .conn
            .prepare(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events ORDER BY position"
            ))
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut decoder = Decoder::default();
        let mut events = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            events.push(decoder.event(row).unwrap());
        }
        events
    }

    #[test]
    fn runs_cover_every_length_with_prepared_shapes() {
        let sql = BulkSql::new();
        // Every shape, and the writer's dozen other statements, stay cached.
        assert!(sql.insert.len() + sql.probe.len() + 12 <= crate::schema::STATEMENT_CACHE);
        for n in run_lengths() {
            assert_eq!(sql.insert[shape(n)].matches("?2, ?3, ?4").count(), n);
            assert_eq!(sql.probe[shape(n)].matches('?').count(), 1 + n);
        }
        for len in 0..=1_000 {
            let runs: Vec<_> = runs(len).collect();
            assert_eq!(runs.first().map_or(0, |r| r.start), 0);
            assert_eq!(runs.last().map_or(0, |r| r.end), len);
            assert!(runs.windows(2).all(|w| w[0].end == w[1].start));
            assert!(runs.iter().all(|r| run_lengths().any(|n| n == r.len())));
            if len <= 10 || (len <= 100 && len % 10 == 0) {
                assert!(runs.len() <= 1, "{len} takes {runs:?}");
            }
        }
        let lengths: Vec<_> = runs(345).map(|r| r.len()).collect();
        assert_eq!(lengths, [100, 100, 100, 40, 5]);
    }

    #[test]
    fn id_probes_seek_the_unique_index() {
        let h = harness();
        for n in run_lengths() {
            let sql = format!("EXPLAIN QUERY PLAN {}", h.writer.sql.probe[shape(n)]);
            let mut stmt = h.writer.conn.prepare(&sql).unwrap();
            let mut rows = stmt.raw_query();
            let mut plan = String::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push_str(row.get_ref(3).unwrap().as_str().unwrap());
            }
            assert!(
                plan.contains("(tenant_id=? AND event_id=?)"),
                "{n} ids: {plan}"
            );
        }
    }

    #[test]
    fn a_large_append_spans_statements_row_for_row() {
        let mut h = harness();
        let (c0, r0) = append("a-1", ExpectedVersion::NoStream, vec![ev(0)]);
        h.writer.run_batch(vec![c0]);
        result(r0).unwrap();
        // Three full inserts, a run of 40 and one of 5, every row with
        // values of its own in every column.
        let events: Vec<NewEvent> = (1..=345u32)
            .map(|n| {
                NewEvent::new(format!("E{}", n % 7), json!({ "n": n }))
                    .with_schema_version(1 + n % 3)
                    .with_metadata(Metadata {
                        correlation_id: Some(format!("c-{n}")),
                        causation_id: (n % 2 == 0).then(|| format!("k-{n}")),
                        traceparent: (n % 5 == 0).then(|| {
                            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()
                        }),
                        actor: Some(format!("u-{n}")),
                    })
            })
            .collect();
        let (c1, r1) = append("a-1", ExpectedVersion::Exact(0), events.clone());
        // A resend in the same group finds all 345 ids, across runs.
        let (c2, r2) = append("a-1", ExpectedVersion::Exact(0), events.clone());
        h.writer.run_batch(vec![c1, c2]);
        let o = result(r1).unwrap();
        assert_eq!(
            (o.first_version, o.last_version),
            (1, 345),
            "versions follow the stream's"
        );
        assert_eq!((o.first_position, o.last_position), (2, 346));
        assert_eq!(result(r2).unwrap(), o);

        let rows = stored(&h.writer);
        assert_eq!(rows.len(), 346);
        for (e, r) in events.iter().zip(&rows[1..]) {
            assert!(e.same_content_as(r), "{e:?} stored as {r:?}");
            assert_eq!(r.position, r.version + 1);
            assert_eq!((r.tenant.as_str(), r.stream.as_str()), ("acme", "a-1"));
            assert_eq!(r.recorded_at, rows[1].recorded_at, "one append, one time");
        }
        let category: String = h
            .writer
            .conn
            .query_row("SELECT DISTINCT category FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(category, "a");

        // Stored ids in a late run mixed with a new one: a conflict.
        let mut mixed = events[340..].to_vec();
        mixed.push(ev(999));
        let (c3, r3) = append("a-1", ExpectedVersion::Any, mixed);
        h.writer.run_batch(vec![c3]);
        assert!(matches!(
            result(r3),
            Err(StoreError::IdempotencyConflict { .. })
        ));
        assert_eq!(count(&h.writer), 346);
    }

    #[test]
    fn one_group_judges_each_request_on_its_own() {
        let mut h = harness();
        let stored = ev(0);
        let (c0, r0) = append("a-1", ExpectedVersion::NoStream, vec![stored.clone()]);
        h.writer.run_batch(vec![c0]);
        assert_eq!(result(r0).unwrap().last_position, 1);
        let before = h.commits.load(Ordering::Relaxed);

        let conflicting = NewEvent::new("E", json!({"other": true})).with_id(stored.id);
        let (c1, r1) = append("b-1", ExpectedVersion::NoStream, vec![ev(1), ev(2)]);
        let (c2, r2) = append("c-1", ExpectedVersion::Exact(3), vec![ev(3)]);
        let (c3, r3) = append("a-1", ExpectedVersion::Any, vec![conflicting]);
        // Sees c1's uncommitted write in the same transaction.
        let (c4, r4) = append("b-1", ExpectedVersion::Exact(1), vec![ev(4)]);
        let (c5, r5) = append("b-1", ExpectedVersion::Exact(1), vec![ev(5)]);
        h.writer.run_batch(vec![c1, c2, c3, c4, c5]);
        assert_eq!(h.commits.load(Ordering::Relaxed), before + 1);

        let o1 = result(r1).unwrap();
        assert_eq!((o1.first_version, o1.last_version), (0, 1));
        assert_eq!((o1.first_position, o1.last_position), (2, 3));
        assert!(matches!(
            result(r2),
            Err(StoreError::WrongExpectedVersion { actual: None, .. })
        ));
        assert!(matches!(
            result(r3),
            Err(StoreError::IdempotencyConflict { event_id, .. }) if event_id == stored.id
        ));
        let o4 = result(r4).unwrap();
        assert_eq!((o4.last_version, o4.last_position), (2, 4));
        assert!(matches!(
            result(r5),
            Err(StoreError::WrongExpectedVersion {
                actual: Some(2),
                ..
            })
        ));
        assert_eq!(count(&h.writer), 4);
        assert_eq!(*h.head.borrow(), 4);
    }

    #[test]
    fn a_resend_in_the_same_group_replays_the_first() {
        let mut h = harness();
        let batch = vec![ev(0), ev(1)];
        let (c1, r1) = append("a-1", ExpectedVersion::NoStream, batch.clone());
        let (c2, r2) = append("a-1", ExpectedVersion::NoStream, batch);
        h.writer.run_batch(vec![c1, c2]);
        assert_eq!(result(r1).unwrap(), result(r2).unwrap());
        assert_eq!(count(&h.writer), 2);
    }

    #[test]
    fn a_failing_request_leaves_no_trace_and_positions_stay_dense() {
        let mut h = harness();
        // A trigger makes one request fail in SQL, after its checks passed.
        let (c1, r1) = append("a-1", ExpectedVersion::Any, vec![ev(0)]);
        h.writer.run_batch(vec![c1]);
        result(r1).unwrap();
        h.writer
            .conn
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON events
                 WHEN NEW.stream_id = 'bad-1' BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let id = EventId::new();
        let (c2, r2) = append("ok-1", ExpectedVersion::Any, vec![ev(1)]);
        let (c3, r3) = append("bad-1", ExpectedVersion::Any, vec![ev(2).with_id(id)]);
        let (c4, r4) = append("ok-2", ExpectedVersion::Any, vec![ev(3)]);
        h.writer.run_batch(vec![c2, c3, c4]);
        assert_eq!(result(r2).unwrap().last_position, 2);
        assert!(matches!(result(r3), Err(StoreError::Unavailable(_))));
        assert_eq!(result(r4).unwrap().last_position, 3);
        let streams: i64 = h
            .writer
            .conn
            .query_row("SELECT count(*) FROM streams", [], |r| r.get(0))
            .unwrap();
        assert_eq!(streams, 3, "bad-1 was rolled back");
    }

    #[test]
    fn a_statement_failing_midway_leaves_no_row_alone_or_in_a_group() {
        let mut h = harness();
        // A stray row holds version 2 of x-1 (with no stream row), so an
        // append of three events to x-1 inserts two rows, then fails.
        h.writer
            .conn
            .execute_batch(
                "INSERT INTO events (position, tenant_id, stream_id, category, version,
                     event_id, event_type, schema_version, data, recorded_at)
                 VALUES (1, 'acme', 'x-1', 'x', 2, x'00', 'E', 1, '{}', 0)",
            )
            .unwrap();
        let three = || (0..3).map(ev).collect::<Vec<_>>();
        let (c1, r1) = append("x-1", ExpectedVersion::Any, three());
        h.writer.run_batch(vec![c1]);
        assert!(matches!(result(r1), Err(StoreError::Unavailable(_))));
        assert_eq!(
            count(&h.writer),
            1,
            "alone: rolled back with its transaction"
        );

        let (c2, r2) = append("ok-1", ExpectedVersion::NoStream, vec![ev(3)]);
        let (c3, r3) = append("x-1", ExpectedVersion::Any, three());
        let (c4, r4) = append("ok-2", ExpectedVersion::NoStream, vec![ev(4)]);
        h.writer.run_batch(vec![c2, c3, c4]);
        assert_eq!(result(r2).unwrap().first_position, 2);
        assert!(matches!(result(r3), Err(StoreError::Unavailable(_))));
        assert_eq!(
            result(r4).unwrap().first_position,
            3,
            "positions stay dense"
        );
        assert_eq!(
            count(&h.writer),
            3,
            "in a group: rolled back to its savepoint"
        );

        // A lone request judged wrong commits nothing; the writer carries on.
        let commits = h.commits.load(Ordering::Relaxed);
        let (c5, r5) = append("ok-1", ExpectedVersion::NoStream, vec![ev(5)]);
        h.writer.run_batch(vec![c5]);
        assert!(matches!(
            result(r5),
            Err(StoreError::WrongExpectedVersion {
                actual: Some(0),
                ..
            })
        ));
        assert_eq!(h.commits.load(Ordering::Relaxed), commits);
        let (c6, r6) = append("ok-1", ExpectedVersion::Exact(0), vec![ev(6)]);
        h.writer.run_batch(vec![c6]);
        assert_eq!(result(r6).unwrap().first_position, 4);
        assert_eq!(*h.head.borrow(), 4);
    }

    #[test]
    fn a_failed_commit_fails_every_request() {
        let mut h = harness();
        // A deferred foreign key violation is only detected at COMMIT.
        h.writer
            .conn
            .execute_batch(
                "PRAGMA foreign_keys = ON;
                 CREATE TABLE parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);
                 CREATE TRIGGER orphan AFTER INSERT ON events
                 WHEN NEW.stream_id = 'orphan-1' BEGIN INSERT INTO child VALUES (42); END;",
            )
            .unwrap();
        let (c1, r1) = append("a-1", ExpectedVersion::Any, vec![ev(0)]);
        let (c2, r2) = append("orphan-1", ExpectedVersion::Any, vec![ev(1)]);
        h.writer.run_batch(vec![c1, c2]);
        assert!(matches!(result(r1), Err(StoreError::Unavailable(_))));
        assert!(matches!(result(r2), Err(StoreError::Unavailable(_))));
        assert_eq!(count(&h.writer), 0);
        assert_eq!(*h.head.borrow(), 0);
        assert_eq!(h.commits.load(Ordering::Relaxed), 0);
        // The writer carries on afterwards.
        let (c3, r3) = append("a-1", ExpectedVersion::NoStream, vec![ev(2)]);
        h.writer.run_batch(vec![c3]);
        assert_eq!(result(r3).unwrap().first_position, 1);
    }

    #[test]
    fn snapshots_keep_the_newest() {
        let mut h = harness();
        let (c, r) = append("a-1", ExpectedVersion::Any, (0..5).map(ev).collect());
        h.writer.run_batch(vec![c]);
        result(r).unwrap();
        let save = |w: &mut Writer, version| {
            let snap = Snapshot {
                version,
                schema_version: 1,
                state: json!({ "v": version }),
            };
            let state = snap.state.to_string();
            w.save_snapshot(&t(), &s("a-1"), &snap, &state)
        };
        save(&mut h.writer, 3).unwrap();
        save(&mut h.writer, 1).unwrap();
        let v: i64 = h
            .writer
            .conn
            .query_row("SELECT version FROM snapshots", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 3);
        assert!(matches!(
            save(&mut h.writer, 5),
            Err(StoreError::Invalid(_))
        ));
    }
}
