//! Aggregates of hot streams kept in memory between commands, so a command on one skips the
//! load query.
//!
//! Every command used to be two statements: load the aggregate (snapshot plus events after
//! it), then append. For a student who is active right now the load reads back what this very
//! process appended a moment ago. The cache keeps each aggregate as it stood after its last
//! command here, at its sequence, and the command path starts from that instead.
//!
//! Why a stale entry cannot lose an update: the append is optimistic. Its events take the
//! sequences after the one the aggregate was loaded at, and the events' unique key refuses
//! them if anyone (another replica, another bus of this process) appended in between. A
//! refused append evicts the entry, and the bus's conflict retry loads from the database. So
//! the cache can only cost a retry, never a decision on stale state that gets stored.
//!
//! That argument holds for the command path only: an append checks the stream it writes, not
//! the ones a port read while deciding. So only the command path reads the cache
//! ([`crate::event_repository::EventRepository::load_for_command`]); ports and
//! read-your-write loads always read the database.
//!
//! What an entry holds is what a reload would give: state built by applying the same events
//! (upcast when they came from the database) to the same snapshot. Erasure shreds the
//! person's key in the vault rather than rewriting events, and sealed fields are opened
//! through the vault, which reads the key table every time, so an entry holds nothing that a
//! shredding could leave readable. Nothing rewrites stored events in place.
//!
//! Bounded by memory: each entry weighs its aggregate's serialized size plus a fixed
//! overhead, and the least recently used entries go when the total passes the capacity
//! (`TEACHIN_AGGREGATE_CACHE_MIB`; 0 turns the cache off). Hits, misses, evictions and the
//! bytes held are counted per process for `/metrics`.

use cqrs_es::Aggregate;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Bytes an entry costs beyond its aggregate's serialized size: the map's slot, the key, the
/// recency index, the `Arc`.
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// The capacity a bus's cache gets unless configured otherwise
/// ([`crate::BusSettings::aggregate_cache_mib`]).
pub const DEFAULT_CAPACITY_MIB: usize = 32;

/// This process's figures, summed over its caches.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    bytes: AtomicU64,
}

static COUNTERS: Counters = Counters {
    hits: AtomicU64::new(0),
    misses: AtomicU64::new(0),
    evictions: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

/// A snapshot of the process's cache figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped for room, for a refused append, or replaced by a reload.
    pub evictions: u64,
    pub bytes: u64,
}

pub fn stats() -> CacheStats {
    CacheStats {
        hits: COUNTERS.hits.load(Ordering::Relaxed),
        misses: COUNTERS.misses.load(Ordering::Relaxed),
        evictions: COUNTERS.evictions.load(Ordering::Relaxed),
        bytes: COUNTERS.bytes.load(Ordering::Relaxed),
    }
}

/// The figures in Prometheus text, for the manager's `/metrics`.
pub fn metrics_text() -> String {
    let s = stats();
    format!(
        "# HELP teachin_aggregate_cache_hits Commands that started from a cached aggregate.\n\
         # TYPE teachin_aggregate_cache_hits counter\n\
         teachin_aggregate_cache_hits_total {}\n\
         # HELP teachin_aggregate_cache_misses Commands that loaded their aggregate from the database.\n\
         # TYPE teachin_aggregate_cache_misses counter\n\
         teachin_aggregate_cache_misses_total {}\n\
         # HELP teachin_aggregate_cache_evictions Cached aggregates dropped (room, conflicts).\n\
         # TYPE teachin_aggregate_cache_evictions counter\n\
         teachin_aggregate_cache_evictions_total {}\n\
         # HELP teachin_aggregate_cache_bytes Estimated bytes the cached aggregates hold.\n\
         # TYPE teachin_aggregate_cache_bytes gauge\n\
         teachin_aggregate_cache_bytes {}\n",
        s.hits, s.misses, s.evictions, s.bytes
    )
}

type Key = (&'static str, String);

/// An aggregate as it stood after event `sequence`, with the number of its latest snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached<A> {
    pub aggregate: A,
    pub sequence: usize,
    pub snapshot: Option<usize>,
}

struct Entry {
    aggregate: Arc<dyn Any + Send + Sync>,
    /// The sequence `aggregate` stands at.
    sequence: usize,
    snapshot: Option<usize>,
    /// What the entry counts against the capacity: measured when filed, then grown by the
    /// size of each append's events (see [`AggregateCache::advance`]).
    weight: usize,
    /// `weight` when it was last measured.
    measured: usize,
    used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Last use → key, oldest first.
    recency: BTreeMap<u64, Key>,
    clock: u64,
    bytes: usize,
}

impl Inner {
    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.recency.remove(&entry.used);
        self.bytes -= entry.weight;
        COUNTERS
            .bytes
            .fetch_sub(entry.weight as u64, Ordering::Relaxed);
        Some(entry)
    }

    /// Files `entry` as the most recently used, then drops the least recently used others
    /// until the total fits `capacity`. An entry larger than the capacity is not kept.
    fn insert(&mut self, key: Key, mut entry: Entry, capacity: usize) {
        self.remove(&key);
        if entry.weight > capacity {
            COUNTERS.evictions.fetch_add(1, Ordering::Relaxed);
            return;
        }
        while self.bytes + entry.weight > capacity {
            let Some((_, oldest)) = self.recency.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.remove(&oldest);
            COUNTERS.evictions.fetch_add(1, Ordering::Relaxed);
        }
        self.clock += 1;
        entry.used = self.clock;
        self.recency.insert(entry.used, key.clone());
        self.bytes += entry.weight;
        COUNTERS
            .bytes
            .fetch_add(entry.weight as u64, Ordering::Relaxed);
        self.entries.insert(key, entry);
    }

    fn touch(&mut self, key: &Key) {
        self.clock += 1;
        let now = self.clock;
        if let Some(entry) = self.entries.get_mut(key) {
            self.recency.remove(&entry.used);
            entry.used = now;
            self.recency.insert(now, key.clone());
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        COUNTERS
            .bytes
            .fetch_sub(self.bytes as u64, Ordering::Relaxed);
    }
}

/// One command bus's cache (each bus has its own; see the module).
#[derive(Clone)]
pub struct AggregateCache {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
}

impl AggregateCache {
    pub fn with_capacity_bytes(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity,
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// A copy of the cached aggregate, counted as a hit or a miss.
    pub fn get<A>(&self, id: &str) -> Option<Cached<A>>
    where
        A: Aggregate + Clone + 'static,
    {
        if !self.enabled() {
            return None;
        }
        let key = (A::TYPE, id.to_string());
        let found = {
            let mut inner = self.lock();
            let found = inner
                .entries
                .get(&key)
                .map(|entry| (entry.aggregate.clone(), entry.sequence, entry.snapshot));
            if found.is_some() {
                inner.touch(&key);
            }
            found
        };
        // Cloned outside the lock: a big aggregate does not hold up the other streams.
        let cached = found.and_then(|(any, sequence, snapshot)| {
            any.downcast_ref::<A>().map(|aggregate| Cached {
                aggregate: aggregate.clone(),
                sequence,
                snapshot,
            })
        });
        let counter = match cached {
            Some(_) => &COUNTERS.hits,
            None => &COUNTERS.misses,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        cached
    }

    /// Files `cached` (its weight measured here), unless an entry that knows a later event
    /// is already there.
    pub fn put<A>(&self, id: &str, cached: Cached<A>)
    where
        A: Aggregate + 'static,
    {
        if !self.enabled() {
            return;
        }
        let key = (A::TYPE, id.to_string());
        let weight = weigh(&cached.aggregate, id);
        let mut inner = self.lock();
        if let Some(existing) = inner.entries.get(&key) {
            if existing.sequence > cached.sequence {
                return;
            }
        }
        let entry = Entry {
            aggregate: Arc::new(cached.aggregate),
            sequence: cached.sequence,
            snapshot: cached.snapshot,
            weight,
            measured: weight,
            used: 0,
        };
        inner.insert(key, entry, self.capacity);
    }

    /// Records a successful append: the stream went from event `from` to `to.sequence`, and
    /// `to` is the aggregate after it. Kept when the entry stood at `from` (it knew every
    /// event before the append), else the entry is dropped: it missed someone's append.
    ///
    /// Measuring an aggregate means serializing it, too dear for every command; the entry's
    /// weight grows instead by `added_bytes` (the appended events' size, what the aggregate
    /// can have grown by at most for most aggregates) and is measured again once it doubled
    /// since the last measure, so the estimate stays within a factor two of the truth at a
    /// cost per appended byte that does not grow with the aggregate.
    pub fn advance<A>(&self, id: &str, from: usize, to: Cached<A>, added_bytes: usize)
    where
        A: Aggregate + 'static,
    {
        if !self.enabled() {
            return;
        }
        let key = (A::TYPE, id.to_string());
        let mut inner = self.lock();
        let Some(mut entry) = inner.remove(&key) else {
            return;
        };
        if entry.sequence != from {
            COUNTERS.evictions.fetch_add(1, Ordering::Relaxed);
            return;
        }
        entry.weight += added_bytes;
        if entry.weight > 2 * entry.measured {
            entry.weight = weigh(&to.aggregate, id);
            entry.measured = entry.weight;
        }
        entry.aggregate = Arc::new(to.aggregate);
        entry.sequence = to.sequence;
        if to.snapshot.is_some() {
            entry.snapshot = to.snapshot;
        }
        inner.insert(key, entry, self.capacity);
    }

    /// Drops the stream's entry (its append was refused, or its outcome is unknown).
    pub fn evict(&self, aggregate_type: &'static str, id: &str) {
        if !self.enabled() {
            return;
        }
        if self
            .lock()
            .remove(&(aggregate_type, id.to_string()))
            .is_some()
        {
            COUNTERS.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries held and their total weight (for tests).
    pub fn usage(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What an entry for `aggregate` under `id` counts against the capacity, measured.
fn weigh<A: serde::Serialize>(aggregate: &A, id: &str) -> usize {
    serialized_size(aggregate) + id.len() + ENTRY_OVERHEAD_BYTES
}

/// The serialized size of `value` in bytes, counted without building the text.
pub fn serialized_size<T: serde::Serialize>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::event_sink::EventSink;
    use cqrs_es::DomainEvent;
    use serde::Serialize;

    /// An aggregate whose serialized form has a chosen size: its `text`.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
    struct Note {
        text: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    struct Appended(String);

    impl DomainEvent for Appended {
        fn event_type(&self) -> String {
            "Appended".into()
        }
        fn event_version(&self) -> String {
            "1".into()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    impl Aggregate for Note {
        const TYPE: &'static str = "Note";
        type Command = ();
        type Event = Appended;
        type Error = Never;
        type Services = ();
        async fn handle(&mut self, _: (), _: &(), _: &EventSink<Self>) -> Result<(), Never> {
            Ok(())
        }
        fn apply(&mut self, event: Appended) {
            self.text.push_str(&event.0);
        }
    }

    /// `{"text":"…"}` is 11 bytes around the text; this makes an entry weigh exactly ENTRY.
    fn note(text_len: usize, sequence: usize) -> Cached<Note> {
        Cached {
            aggregate: Note {
                text: "x".repeat(text_len),
            },
            sequence,
            snapshot: None,
        }
    }
    const TEXT: usize = 989;
    const ENTRY: usize = TEXT + 11 + 1 + ENTRY_OVERHEAD_BYTES;

    #[test]
    fn the_least_recently_used_entry_goes_when_the_capacity_is_passed() {
        let cache = AggregateCache::with_capacity_bytes(3 * ENTRY);
        for id in ["a", "b", "c"] {
            cache.put(id, note(TEXT, 1));
        }
        assert_eq!(cache.usage(), (3, 3 * ENTRY));
        // "a" is used, so "b" is now the oldest.
        assert!(cache.get::<Note>("a").is_some());
        cache.put("d", note(TEXT, 1));
        assert_eq!(cache.usage(), (3, 3 * ENTRY), "never above the capacity");
        assert!(cache.get::<Note>("b").is_none(), "the oldest went");
        for id in ["a", "c", "d"] {
            assert!(cache.get::<Note>(id).is_some(), "{id} stays");
        }
    }

    #[test]
    fn an_entry_larger_than_the_cache_is_not_kept_and_pushes_nothing_out() {
        let cache = AggregateCache::with_capacity_bytes(2 * ENTRY);
        cache.put("a", note(TEXT, 1));
        cache.put("h", note(2 * ENTRY, 1));
        assert_eq!(cache.usage(), (1, ENTRY));
        assert!(cache.get::<Note>("a").is_some());
    }

    #[test]
    fn an_append_advances_the_entry_and_weighs_on_the_bound() {
        let cache = AggregateCache::with_capacity_bytes(3 * ENTRY);
        cache.put("a", note(0, 5));
        let (_, before) = cache.usage();
        let after = Cached {
            aggregate: Note { text: "bc".into() },
            sequence: 7,
            snapshot: Some(1),
        };
        cache.advance("a", 5, after.clone(), 2);
        assert_eq!(cache.get::<Note>("a").unwrap(), after);
        assert_eq!(cache.usage(), (1, before + 2), "the events' size is added");
        // Grown past twice its last measure, the entry is measured again.
        let grown = Cached {
            aggregate: Note {
                text: "y".repeat(3 * ENTRY),
            },
            sequence: 8,
            snapshot: None,
        };
        cache.advance("a", 7, grown, before + 1);
        assert_eq!(cache.usage(), (0, 0), "measured past the capacity, it goes");
    }

    #[test]
    fn an_append_after_an_event_the_entry_never_saw_drops_it() {
        let cache = AggregateCache::with_capacity_bytes(3 * ENTRY);
        cache.put("a", note(0, 5));
        // Someone else appended 6; this process appended 7.
        cache.advance("a", 6, note(1, 7), 1);
        assert!(cache.get::<Note>("a").is_none());
        assert_eq!(cache.usage(), (0, 0));
    }

    #[test]
    fn a_later_entry_is_never_replaced_by_an_earlier_one() {
        let cache = AggregateCache::with_capacity_bytes(10 * ENTRY);
        cache.put("a", note(1, 6));
        cache.put("a", note(2, 4));
        assert_eq!(cache.get::<Note>("a").unwrap(), note(1, 6));
        assert_eq!(cache.usage().0, 1);
    }

    #[test]
    fn eviction_and_a_zero_capacity() {
        let cache = AggregateCache::with_capacity_bytes(10 * ENTRY);
        cache.put("a", note(1, 1));
        cache.evict("Note", "a");
        assert!(cache.get::<Note>("a").is_none());
        assert_eq!(cache.usage(), (0, 0));

        let off = AggregateCache::with_capacity_bytes(0);
        off.put("a", note(1, 1));
        assert!(off.get::<Note>("a").is_none());
        assert_eq!(off.usage(), (0, 0));
    }

    #[test]
    fn the_serialized_size_is_the_json_length() {
        assert_eq!(serialized_size(&vec!["ab", "c"]), r#"["ab","c"]"#.len());
    }
}
