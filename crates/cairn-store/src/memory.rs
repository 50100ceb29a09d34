//! The in-memory backend: the whole log in one process, for tests and
//! `--ephemeral` runs. It keeps the full contract (the conformance suite runs
//! against it) but nothing survives the process.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use async_trait::async_trait;
use cairn_core::{EventId, NewEvent, RecordedEvent, StreamId, TenantId};
use chrono::{DurationRound, TimeDelta, Utc};
use tokio::sync::watch;

use crate::{
    AllFilter, AppendOutcome, Direction, EventStore, EventSubscription, ExpectedVersion,
    Idempotency, ReadStream, Snapshot, StoreError, StreamInfo, check_expected, judge_idempotency,
    validate_append,
};

/// An event store held in memory. Clones share the same log.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// `log[i]` has position `i + 1`.
    log: Vec<Arc<RecordedEvent>>,
    streams: HashMap<TenantId, BTreeMap<StreamId, Stream>>,
    ids: HashMap<(TenantId, EventId), usize>,
    snapshots: HashMap<(TenantId, StreamId), Snapshot>,
}

#[derive(Default)]
struct Stream {
    /// Log indexes of the stream's events, by version.
    events: Vec<usize>,
    deleted: bool,
    truncate_before: Option<u64>,
}

impl Stream {
    fn info(&self, id: &StreamId) -> StreamInfo {
        StreamInfo {
            stream: id.clone(),
            version: self.events.len() as u64 - 1,
            deleted: self.deleted,
            truncate_before: self.truncate_before,
        }
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("head", &*self.inner.head.borrow())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: RwLock::new(State::default()),
                head: watch::Sender::new(0),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied append
        // (appends mutate only after every check passed), so poison is safe
        // to ignore.
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn stream(&self, tenant: &TenantId, stream: &StreamId) -> Option<&Stream> {
        self.streams.get(tenant).and_then(|s| s.get(stream))
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendOutcome, StoreError> {
        validate_append(&events)?;
        let mut state = self.write();
        let stored: Vec<RecordedEvent> = events
            .iter()
            .filter_map(|e| state.ids.get(&(tenant.clone(), e.id)))
            .map(|&i| (*state.log[i]).clone())
            .collect();
        if let Idempotency::Replay(outcome) = judge_idempotency(stream, &events, &stored)? {
            return Ok(outcome);
        }
        let current = match state.stream(tenant, stream) {
            Some(s) if s.deleted => {
                return Err(StoreError::StreamDeleted {
                    stream: stream.clone(),
                });
            }
            Some(s) => Some(s.events.len() as u64 - 1),
            None => None,
        };
        check_expected(stream, expected, current)?;

        let recorded_at = Utc::now()
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or_else(|_| Utc::now());
        let first_version = current.map_or(0, |v| v + 1);
        let first_position = state.log.len() as u64 + 1;
        let count = events.len() as u64;
        let mut indexes = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let index = state.log.len();
            state.ids.insert((tenant.clone(), e.id), index);
            state.log.push(Arc::new(RecordedEvent {
                id: e.id,
                tenant: tenant.clone(),
                stream: stream.clone(),
                version: first_version + i as u64,
                position: index as u64 + 1,
                event_type: e.event_type,
                schema_version: e.schema_version,
                data: e.data,
                metadata: e.metadata,
                recorded_at,
            }));
            indexes.push(index);
        }
        state
            .streams
            .entry(tenant.clone())
            .or_default()
            .entry(stream.clone())
            .or_default()
            .events
            .extend(indexes);
        let last_position = first_position + count - 1;
        drop(state);
        self.inner.head.send_replace(last_position);
        Ok(AppendOutcome {
            first_version,
            last_version: first_version + count - 1,
            first_position,
            last_position,
        })
    }

    async fn read_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        read: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.read();
        let Some(s) = state.stream(tenant, stream) else {
            return Ok(Vec::new());
        };
        if s.deleted {
            return Err(StoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        let last = s.events.len() as u64 - 1;
        let Some((lo, hi)) = read.bounds(s.truncate_before.unwrap_or(0), last) else {
            return Ok(Vec::new());
        };
        let slice = &s.events[lo as usize..=hi as usize];
        let pick = |&i: &usize| (*state.log[i]).clone();
        Ok(match read.direction {
            Direction::Forward => slice.iter().map(pick).collect(),
            Direction::Backward => slice.iter().rev().map(pick).collect(),
        })
    }

    async fn read_all(
        &self,
        after: u64,
        filter: &AllFilter,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.read();
        let start = (after as usize).min(state.log.len());
        Ok(state.log[start..]
            .iter()
            .filter(|e| filter.matches(e))
            .take(limit)
            .map(|e| (**e).clone())
            .collect())
    }

    fn subscribe_all(&self, after: u64, filter: AllFilter) -> EventSubscription {
        EventSubscription::follow(Arc::new(self.clone()), after, filter)
    }

    fn head(&self) -> watch::Receiver<u64> {
        self.inner.head.subscribe()
    }

    async fn stream_info(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<StreamInfo>, StoreError> {
        Ok(self.read().stream(tenant, stream).map(|s| s.info(stream)))
    }

    async fn list_streams(
        &self,
        tenant: &TenantId,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>, StoreError> {
        let state = self.read();
        let Some(streams) = state.streams.get(tenant) else {
            return Ok(Vec::new());
        };
        let range = match after {
            Some(a) => streams
                .range::<StreamId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => streams.range::<StreamId, _>(..),
        };
        Ok(range.take(limit).map(|(id, s)| s.info(id)).collect())
    }

    async fn delete_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        expected: ExpectedVersion,
    ) -> Result<(), StoreError> {
        let mut state = self.write();
        let Some(s) = state
            .streams
            .get_mut(tenant)
            .and_then(|s| s.get_mut(stream))
        else {
            return Err(StoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        if s.deleted {
            return Err(StoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        check_expected(stream, expected, Some(s.events.len() as u64 - 1))?;
        s.deleted = true;
        Ok(())
    }

    async fn truncate_stream(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        before: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.write();
        let Some(s) = state
            .streams
            .get_mut(tenant)
            .and_then(|s| s.get_mut(stream))
        else {
            return Err(StoreError::StreamNotFound {
                stream: stream.clone(),
            });
        };
        if s.deleted {
            return Err(StoreError::StreamDeleted {
                stream: stream.clone(),
            });
        }
        s.truncate_before = Some(s.truncate_before.unwrap_or(0).max(before));
        Ok(())
    }

    async fn save_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> Result<(), StoreError> {
        let mut state = self.write();
        match state.stream(tenant, stream) {
            None => {
                return Err(StoreError::StreamNotFound {
                    stream: stream.clone(),
                });
            }
            Some(s) if snapshot.version >= s.events.len() as u64 => {
                return Err(StoreError::invalid(
                    "snapshot.version",
                    format!("stream {stream} is only at version {}", s.events.len() - 1),
                ));
            }
            Some(_) => {}
        }
        let key = (tenant.clone(), stream.clone());
        if state
            .snapshots
            .get(&key)
            .is_none_or(|old| old.version <= snapshot.version)
        {
            state.snapshots.insert(key, snapshot);
        }
        Ok(())
    }

    async fn load_snapshot(
        &self,
        tenant: &TenantId,
        stream: &StreamId,
    ) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .read()
            .snapshots
            .get(&(tenant.clone(), stream.clone()))
            .cloned())
    }
}
