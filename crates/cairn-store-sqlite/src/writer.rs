//! The single writer: one thread owns the only write connection and commits
//! requests in groups.
//!
//! Callers validate and serialize their input, send a [`Command`] with a
//! reply channel, and wait. The thread takes every command queued (up to
//! `max_batch`) and runs them in ONE `BEGIN IMMEDIATE` transaction, each in
//! its own savepoint: a request that fails (wrong expected version,
//! idempotency conflict, any error) is rolled back alone and the others still
//! commit. Requests are applied in arrival order, so each is judged on its
//! own expected version against the state left by the ones before it, exactly
//! as if they had run one by one. The cost of a commit (the fsync) is shared
//! by the whole group, which is what makes many concurrent appends fast.
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

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
    mpsc,
};

use cairn_core::{NewEvent, RecordedEvent, StreamId, TenantId};
use cairn_store::{
    AppendOutcome, ExpectedVersion, Idempotency, Snapshot, StoreError, check_expected,
    judge_idempotency,
};
use rusqlite::Connection;
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

/// The state of the writer thread.
pub(crate) struct Writer {
    conn: Connection,
    head: Arc<watch::Sender<u64>>,
    commits: Arc<AtomicU64>,
    decoder: Decoder,
    /// The position the next event gets; valid inside a transaction only.
    next_position: u64,
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
            next_position: 1,
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
    }

    fn execute(&mut self, batch: Vec<Command>) -> Vec<Finished> {
        if let Err(err) = self.begin() {
            tracing::warn!(error = %err, "sqlite writer could not start a transaction");
            return batch.into_iter().map(|c| c.reject(&err)).collect();
        }
        let mut finished = Vec::with_capacity(batch.len());
        let mut broken: Option<StoreError> = None;
        for cmd in batch {
            if let Some(err) = &broken {
                finished.push(cmd.reject(err));
                continue;
            }
            let start = self.next_position;
            if let Err(err) = self.exec("SAVEPOINT request") {
                finished.push(cmd.reject(&err));
                broken = Some(err);
                continue;
            }
            let done = self.apply(cmd);
            let closed = if done.is_ok() {
                self.exec("RELEASE request")
            } else {
                self.next_position = start;
                self.exec("ROLLBACK TO request")
                    .and_then(|()| self.exec("RELEASE request"))
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
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                finished.into_iter().map(|f| f.fail(&err)).collect()
            }
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
                let _ = self.conn.execute_batch("ROLLBACK");
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
            Command::Append(req, reply) => Finished::Append(reply, self.append(&req)),
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

    /// The stored events of `tenant` carrying any of `events`' ids.
    fn stored_with_ids(
        &mut self,
        tenant: &TenantId,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(concat!(
                "SELECT ",
                event_columns!(),
                " FROM events WHERE tenant_id = ?1 AND event_id = ?2"
            ))
            .db()?;
        let mut stored = Vec::new();
        for e in events {
            let mut rows = stmt
                .query((tenant.as_str(), &e.id.as_uuid().as_bytes()[..]))
                .db()?;
            if let Some(row) = rows.next().db()? {
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
            payloads,
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
        let category = stream.category().as_str();
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT INTO events (position, tenant_id, stream_id, category, version, event_id,
                     event_type, schema_version, data, correlation_id, causation_id,
                     traceparent, actor, recorded_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )
            .db()?;
        for (i, (e, data)) in events.iter().zip(payloads).enumerate() {
            let md = &e.metadata;
            insert
                .execute(rusqlite::params![
                    to_sql(first_position + i as u64),
                    tenant.as_str(),
                    stream.as_str(),
                    category,
                    to_sql(first_version + i as u64),
                    &e.id.as_uuid().as_bytes()[..],
                    e.event_type,
                    e.schema_version,
                    data,
                    md.correlation_id,
                    md.causation_id,
                    md.traceparent,
                    md.actor,
                    recorded_at,
                ])
                .db()?;
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
    use cairn_core::EventId;
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
