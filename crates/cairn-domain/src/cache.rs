//! The aggregate cache: the states an [`AggregateStore`](crate::AggregateStore)
//! recently decided on, with the stream version each was folded to, so the
//! next command on a hot aggregate skips loading it.
//!
//! A cached state is a guess, never trusted on its own: another process may
//! have written the stream since. The store appends on the exact version
//! the state was at, so a stale guess fails that append and is brought up to
//! date from the events after its version (not reloaded from the start),
//! then decided again. Any outcome that writes nothing (a refusal, a no-op,
//! a failed `If-Match`) is confirmed the same way before it is returned.
//!
//! Entries are keyed by tenant and stream, so one tenant's state never
//! serves another's. The cache is bounded by the memory its states take:
//! each entry weighs the bytes of its state serialized as JSON plus its key
//! and a fixed overhead, and the least valuable entries go when the budget
//! is full. [`quick_cache`] keeps them (a CLOCK-Pro policy: an entry read
//! twice outlives a scan of entries read once, so one tenant touching many
//! aggregates once does not flush the others' hot ones).
//!
//! While a command runs, its stream's entry is taken out of the cache (the
//! command holds the stream's turn, so nothing else in the process wants
//! it) and put back with the state after the command.

use std::io;

use cairn_core::{StreamId, TenantId};
use quick_cache::{Weighter, sync::Cache};

use crate::{Aggregate, Loaded};

/// Bytes counted for an entry besides its state: the key's strings, the
/// cache's slot and the version.
const ENTRY_OVERHEAD: u64 = 96;

type Key = (TenantId, StreamId);

#[derive(Clone)]
struct Entry<A> {
    state: std::sync::Arc<A>,
    version: u64,
    weight: u64,
}

#[derive(Clone)]
struct ByWeight;

impl<A> Weighter<Key, Entry<A>> for ByWeight {
    fn weight(&self, _key: &Key, entry: &Entry<A>) -> u64 {
        entry.weight
    }
}

/// Recently decided states of aggregates of type `A`, bounded by bytes.
pub(crate) struct AggregateCache<A> {
    entries: Cache<Key, Entry<A>, ByWeight>,
    capacity: u64,
}

impl<A: Aggregate> AggregateCache<A> {
    /// A cache holding at most about `bytes` of states; `None` for 0 (no
    /// cache).
    pub(crate) fn new(bytes: u64) -> Option<Self> {
        if bytes == 0 {
            return None;
        }
        // quick_cache sizes its table from the expected number of items;
        // a guess of 1 KiB an aggregate is refined as entries come.
        let items = (bytes / 1024).clamp(16, 1 << 20) as usize;
        Some(Self {
            entries: Cache::with_weighter(items, bytes, ByWeight),
            capacity: bytes,
        })
    }

    /// Takes `stream`'s entry out of the cache: the state and the version it
    /// was folded to.
    pub(crate) fn take(&self, tenant: &TenantId, stream: &StreamId) -> Option<Loaded<A>> {
        let key = (tenant.clone(), stream.clone());
        let (_, entry) = self.entries.remove(&key)?;
        let state = std::sync::Arc::try_unwrap(entry.state).unwrap_or_else(|a| (*a).clone());
        Some(Loaded {
            state,
            version: entry.version,
        })
    }

    /// Keeps `state`, folded to `version`, for the next command on `stream`.
    /// A state heavier than an eighth of the budget is not kept.
    pub(crate) fn put(&self, tenant: &TenantId, stream: &StreamId, state: A, version: u64) {
        let weight = weigh(&state) + tenant.as_str().len() as u64 + stream.as_str().len() as u64;
        if weight > self.capacity / 8 {
            return;
        }
        self.entries.insert(
            (tenant.clone(), stream.clone()),
            Entry {
                state: std::sync::Arc::new(state),
                version,
                weight,
            },
        );
    }

    /// Forgets `stream` (it was deleted).
    pub(crate) fn forget(&self, tenant: &TenantId, stream: &StreamId) {
        self.entries.remove(&(tenant.clone(), stream.clone()));
    }

    /// The bytes the kept states weigh.
    #[cfg(test)]
    pub(crate) fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// How many states are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The weight of a state: its JSON size (counted, not written) plus the
/// entry's overhead. A state that does not serialize weighs the overhead
/// only; its snapshots fail the same way and are reported there.
fn weigh<A: serde::Serialize>(state: &A) -> u64 {
    struct Count(u64);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, state);
    count.0 + ENTRY_OVERHEAD + std::mem::size_of::<A>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Grown {
        Grown,
    }
    impl cairn_core::DomainEvent for Grown {}

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct Blob {
        bytes: String,
    }

    impl Aggregate for Blob {
        const CATEGORY: &'static str = "blob";
        type Command = ();
        type Event = Grown;
        type Error = std::convert::Infallible;
        fn decide(&self, _: &()) -> Result<Vec<Self::Event>, Self::Error> {
            Ok(Vec::new())
        }
        fn apply(&mut self, _: &Self::Event) {}
    }

    fn ids(n: usize) -> (TenantId, StreamId) {
        (
            TenantId::new("acme").unwrap(),
            StreamId::new(format!("blob-{n}")).unwrap(),
        )
    }

    #[test]
    fn a_taken_entry_is_gone_until_put_back() {
        let cache = AggregateCache::<Blob>::new(1 << 20).unwrap();
        let (tenant, stream) = ids(1);
        let blob = Blob { bytes: "x".into() };
        cache.put(&tenant, &stream, blob.clone(), 7);
        let taken = cache.take(&tenant, &stream).unwrap();
        assert_eq!((taken.state, taken.version), (blob, 7));
        assert!(cache.take(&tenant, &stream).is_none());
    }

    #[test]
    fn tenants_do_not_share_entries() {
        let cache = AggregateCache::<Blob>::new(1 << 20).unwrap();
        let (tenant, stream) = ids(1);
        cache.put(&tenant, &stream, Blob::default(), 3);
        let other = TenantId::new("globex").unwrap();
        assert!(cache.take(&other, &stream).is_none());
        assert!(cache.take(&tenant, &stream).is_some());
    }

    #[test]
    fn the_budget_bounds_the_bytes_kept() {
        let budget = 64 * 1024;
        let cache = AggregateCache::<Blob>::new(budget).unwrap();
        let (tenant, _) = ids(0);
        for n in 0..1000 {
            let (_, stream) = ids(n);
            cache.put(
                &tenant,
                &stream,
                Blob {
                    bytes: "y".repeat(1000),
                },
                0,
            );
        }
        assert!(cache.weight() <= budget, "{}", cache.weight());
        assert!(cache.len() < 1000 && cache.len() > 10, "{}", cache.len());
        // a state heavier than an eighth of the budget is never kept
        let (_, big) = ids(5000);
        cache.put(
            &tenant,
            &big,
            Blob {
                bytes: "z".repeat(budget as usize / 4),
            },
            0,
        );
        assert!(cache.take(&tenant, &big).is_none());
        assert!(AggregateCache::<Blob>::new(0).is_none());
    }

    #[test]
    fn a_state_weighs_its_json() {
        let small = weigh(&Blob::default());
        let large = weigh(&Blob {
            bytes: "a".repeat(500),
        });
        assert_eq!(large - small, 500);
    }
}
