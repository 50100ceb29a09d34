//! The one way to follow `$all`: read a page, and when caught up wait for the
//! store's head to move.
//!
//! An [`AllFollower`] reads pages of [`EventStore::read_all`] from a position
//! and yields each with the head it was read against. The head is read
//! *before* the page: every position up to it is committed and visible to the
//! read (positions are gap-safe), so a page that comes back short has looked
//! at every position up to that head, including the ones the filter skips.
//! [`AllPage::reached`] says so, and the follower moves on from there.
//!
//! The follower takes no decisions for its caller: a read error is returned
//! as is and the position stays put, so each caller keeps its own retry
//! policy; waiting is a separate call, so each caller chooses when it is
//! caught up; and every future here may be dropped in a `select!` with the
//! caller's stop signal without losing or repeating an event (a dropped read
//! may only delay the next wakeup to the poll interval).

use std::{sync::Arc, time::Duration};

use cairn_core::RecordedEvent;
use tokio::sync::watch;

use crate::{AllFilter, EventStore, StoreError};

/// How a follower reads.
#[derive(Debug, Clone, Copy)]
pub struct FollowOptions {
    /// Events per read (at least 1).
    pub page_size: usize,
    /// Longest wait for a wakeup before reading again anyway.
    pub poll_interval: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            page_size: 1024,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// One page of `$all` and what it covered.
#[derive(Debug, Clone, PartialEq)]
pub struct AllPage {
    /// The events above the position the page was read from that match the
    /// filter, in position order.
    pub events: Vec<RecordedEvent>,
    /// The store's head as seen just before the read.
    pub head: u64,
    /// Every position up to here has been looked at: the last event's, or,
    /// when the page is short, at least `head`.
    pub reached: u64,
    /// The page came back short: everything up to `head` was looked at and
    /// reading again before the head moves finds nothing new.
    pub caught_up: bool,
}

/// Reads `$all` page by page from a position, and waits for the head.
pub struct AllFollower {
    store: Arc<dyn EventStore>,
    filter: AllFilter,
    options: FollowOptions,
    head: watch::Receiver<u64>,
    after: u64,
}

impl std::fmt::Debug for AllFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AllFollower")
            .field("after", &self.after)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl AllFollower {
    /// Follows `store` from `after` (exclusive).
    pub fn new(
        store: Arc<dyn EventStore>,
        after: u64,
        filter: AllFilter,
        options: FollowOptions,
    ) -> Self {
        let head = store.head();
        Self {
            store,
            filter,
            options: FollowOptions {
                page_size: options.page_size.max(1),
                ..options
            },
            head,
            after,
        }
    }

    /// Where the next read starts (exclusive).
    pub fn position(&self) -> u64 {
        self.after
    }

    /// Reads from `after` next, for a caller that goes back (to re-read what
    /// it could not handle) or moves to a checkpoint it loaded.
    pub fn seek(&mut self, after: u64) {
        self.after = after;
    }

    /// Reads the next page and moves past what it covered. On an error the
    /// position stays where it was, so the same page is read again.
    pub async fn read(&mut self) -> Result<AllPage, StoreError> {
        // Marking the head seen before the read means a commit during the
        // read still wakes the next `wait`.
        let head = *self.head.borrow_and_update();
        let events = self
            .store
            .read_all(self.after, &self.filter, self.options.page_size)
            .await?;
        let caught_up = events.len() < self.options.page_size;
        let mut reached = events.last().map_or(self.after, |e| e.position);
        if caught_up {
            reached = reached.max(head);
        }
        self.after = reached;
        Ok(AllPage {
            events,
            head,
            reached,
            caught_up,
        })
    }

    /// Waits until the store's head moves past what the last read saw, or
    /// the poll interval passes. Once the store's head sender is gone this
    /// waits the poll interval: another handle may still be writing.
    pub async fn wait(&mut self) {
        let poll = self.options.poll_interval;
        tokio::select! {
            changed = self.head.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(poll).await;
                }
            }
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::{NewEvent, StreamId, TenantId};
    use serde_json::json;

    use super::*;
    use crate::{ExpectedVersion, MemoryStore, ReadStream, Snapshot, StreamInfo};

    fn tenant() -> TenantId {
        TenantId::new("acme").unwrap()
    }

    async fn append(store: &MemoryStore, stream: &str, event_type: &str, n: usize) {
        let events = (0..n)
            .map(|_| NewEvent::new(event_type, json!({})))
            .collect();
        store
            .append(
                &tenant(),
                &StreamId::new(stream).unwrap(),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
    }

    fn follower(store: &MemoryStore, after: u64, filter: AllFilter, page: usize) -> AllFollower {
        AllFollower::new(
            Arc::new(store.clone()),
            after,
            filter,
            FollowOptions {
                page_size: page,
                poll_interval: Duration::from_secs(3600),
            },
        )
    }

    fn positions(page: &AllPage) -> Vec<u64> {
        page.events.iter().map(|e| e.position).collect()
    }

    #[tokio::test]
    async fn full_pages_stop_at_their_last_event_and_a_short_page_reaches_the_head() {
        let store = MemoryStore::new();
        append(&store, "flight-1", "FlightScheduled", 5).await;
        let mut f = follower(&store, 0, AllFilter::all_tenants(), 2);

        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [1, 2]);
        assert_eq!((page.head, page.reached, page.caught_up), (5, 2, false));
        assert_eq!(f.position(), 2);

        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [3, 4]);
        assert!(!page.caught_up);

        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [5]);
        assert_eq!((page.head, page.reached, page.caught_up), (5, 5, true));

        let page = f.read().await.unwrap();
        assert!(page.events.is_empty());
        assert_eq!((page.head, page.reached, page.caught_up), (5, 5, true));
    }

    #[tokio::test]
    async fn a_short_page_covers_positions_the_filter_skips() {
        let store = MemoryStore::new();
        append(&store, "flight-1", "FlightScheduled", 1).await;
        append(&store, "passenger-1", "PassengerRegistered", 3).await;
        let filter = AllFilter::all_tenants().categories(["flight"]);
        let mut f = follower(&store, 0, filter, 10);

        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [1]);
        // Positions 2 to 4 were looked at and skipped.
        assert_eq!((page.head, page.reached, page.caught_up), (4, 4, true));
        assert_eq!(f.position(), 4);
    }

    #[tokio::test]
    async fn a_full_page_does_not_claim_the_head() {
        let store = MemoryStore::new();
        append(&store, "flight-1", "FlightScheduled", 2).await;
        append(&store, "passenger-1", "PassengerRegistered", 3).await;
        let filter = AllFilter::all_tenants().categories(["flight"]);
        let mut f = follower(&store, 0, filter, 2);

        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [1, 2]);
        assert_eq!((page.head, page.reached, page.caught_up), (5, 2, false));
    }

    #[tokio::test]
    async fn seek_reads_again_from_the_given_position() {
        let store = MemoryStore::new();
        append(&store, "flight-1", "FlightScheduled", 3).await;
        let mut f = follower(&store, 1, AllFilter::all_tenants(), 10);
        assert_eq!(positions(&f.read().await.unwrap()), [2, 3]);
        f.seek(0);
        assert_eq!(f.position(), 0);
        assert_eq!(positions(&f.read().await.unwrap()), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_zero_page_size_reads_one_event_at_a_time() {
        let store = MemoryStore::new();
        append(&store, "flight-1", "FlightScheduled", 2).await;
        let mut f = follower(&store, 0, AllFilter::all_tenants(), 0);
        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [1]);
        assert!(!page.caught_up);
    }

    // On a paused clock the hour-long poll interval passes at once when
    // nothing else can run, so a wakeup by the head shows as no time passed.
    #[tokio::test(start_paused = true)]
    async fn wait_wakes_when_the_head_moves() {
        let store = MemoryStore::new();
        let mut f = follower(&store, 0, AllFilter::all_tenants(), 10);
        assert!(f.read().await.unwrap().events.is_empty());

        let writer = store.clone();
        let started = tokio::time::Instant::now();
        let waiting = tokio::spawn(async move {
            f.wait().await;
            f
        });
        tokio::task::yield_now().await;
        append(&writer, "flight-1", "FlightScheduled", 1).await;
        let mut f = waiting.await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
        let page = f.read().await.unwrap();
        assert_eq!(positions(&page), [1]);
        assert_eq!(page.head, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_after_a_read_wakes_the_next_wait() {
        let store = MemoryStore::new();
        let mut f = follower(&store, 0, AllFilter::all_tenants(), 10);
        assert!(f.read().await.unwrap().events.is_empty());
        // Committed after the head was marked seen: `wait` returns at once.
        append(&store, "flight-1", "FlightScheduled", 1).await;
        let started = tokio::time::Instant::now();
        f.wait().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(positions(&f.read().await.unwrap()), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_falls_back_to_the_poll_interval() {
        let store = MemoryStore::new();
        let mut f = AllFollower::new(
            Arc::new(store.clone()),
            0,
            AllFilter::all_tenants(),
            FollowOptions {
                page_size: 10,
                poll_interval: Duration::from_secs(7),
            },
        );
        f.read().await.unwrap();
        let started = tokio::time::Instant::now();
        f.wait().await;
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }

    /// A store whose head sender is gone from the start, like a handle whose
    /// backend was dropped while another process keeps writing.
    #[derive(Clone)]
    struct HeadGone(MemoryStore);

    #[async_trait::async_trait]
    impl EventStore for HeadGone {
        async fn append(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
            expected: ExpectedVersion,
            events: Vec<NewEvent>,
        ) -> Result<crate::AppendOutcome, StoreError> {
            self.0.append(tenant, stream, expected, events).await
        }
        async fn read_stream(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
            read: ReadStream,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.0.read_stream(tenant, stream, read).await
        }
        async fn read_all(
            &self,
            after: u64,
            filter: &AllFilter,
            limit: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.0.read_all(after, filter, limit).await
        }
        fn subscribe_all(&self, after: u64, filter: AllFilter) -> crate::EventSubscription {
            crate::EventSubscription::follow(Arc::new(self.clone()), after, filter)
        }
        fn head(&self) -> watch::Receiver<u64> {
            watch::channel(0).1
        }
        async fn stream_info(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
        ) -> Result<Option<StreamInfo>, StoreError> {
            self.0.stream_info(tenant, stream).await
        }
        async fn list_streams(
            &self,
            tenant: &TenantId,
            after: Option<&StreamId>,
            limit: usize,
        ) -> Result<Vec<StreamInfo>, StoreError> {
            self.0.list_streams(tenant, after, limit).await
        }
        async fn delete_stream(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
            expected: ExpectedVersion,
        ) -> Result<(), StoreError> {
            self.0.delete_stream(tenant, stream, expected).await
        }
        async fn truncate_stream(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
            before: u64,
        ) -> Result<(), StoreError> {
            self.0.truncate_stream(tenant, stream, before).await
        }
        async fn save_snapshot(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
            snapshot: Snapshot,
        ) -> Result<(), StoreError> {
            self.0.save_snapshot(tenant, stream, snapshot).await
        }
        async fn load_snapshot(
            &self,
            tenant: &TenantId,
            stream: &StreamId,
        ) -> Result<Option<Snapshot>, StoreError> {
            self.0.load_snapshot(tenant, stream).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_head_sender_gone_wait_polls_instead_of_spinning() {
        let memory = MemoryStore::new();
        let mut f = AllFollower::new(
            Arc::new(HeadGone(memory.clone())),
            0,
            AllFilter::all_tenants(),
            FollowOptions {
                page_size: 10,
                poll_interval: Duration::from_secs(3),
            },
        );
        let page = f.read().await.unwrap();
        assert!(page.events.is_empty());
        // The head this handle knows never moves, so only events read
        // advance the position.
        assert_eq!(page.head, 0);

        let started = tokio::time::Instant::now();
        f.wait().await;
        assert!(started.elapsed() >= Duration::from_secs(3));

        append(&memory, "flight-1", "FlightScheduled", 2).await;
        f.wait().await;
        assert_eq!(positions(&f.read().await.unwrap()), [1, 2]);
    }

    #[tokio::test]
    async fn a_read_error_keeps_the_position() {
        let flaky = crate::testkit::FlakyStore::new();
        flaky
            .inner
            .append(
                &tenant(),
                &StreamId::new("flight-1").unwrap(),
                ExpectedVersion::Any,
                vec![
                    NewEvent::new("FlightScheduled", json!({})),
                    NewEvent::new("FlightScheduled", json!({})),
                ],
            )
            .await
            .unwrap();
        let mut f = AllFollower::new(
            Arc::new(flaky.clone()),
            1,
            AllFilter::all_tenants(),
            FollowOptions::default(),
        );
        flaky.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = f.read().await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(f.position(), 1);
        flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(positions(&f.read().await.unwrap()), [2]);
    }

    #[tokio::test]
    async fn a_dropped_wait_can_be_stopped_by_the_caller() {
        let store = MemoryStore::new();
        let mut f = follower(&store, 0, AllFilter::all_tenants(), 10);
        f.read().await.unwrap();
        let (stop_tx, mut stop) = watch::channel(false);
        stop_tx.send_replace(true);
        let stopped = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            _ = f.wait() => false,
        };
        assert!(stopped);
        // Nothing was lost: the follower reads on from where it was.
        append(&store, "flight-1", "FlightScheduled", 1).await;
        assert_eq!(positions(&f.read().await.unwrap()), [1]);
    }
}
