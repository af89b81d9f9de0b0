//! Commands waiting on one stream, and the one worker at a time that takes them.
//!
//! Optimistic concurrency keeps a stream consistent across replicas, but it is a poor queue:
//! when many requests on one replica hit the same stream (a class's roster, a student's deck
//! clicked from two tabs), all but one load the same version, all but one lose, and each loser
//! reloads and tries again. Taking turns fixed the churn but still paid one commit — one WAL
//! flush — per command, so a hot stream took one command per flush however many waited.
//!
//! So commands on one stream queue here, and one worker per stream takes whatever has queued
//! up since its last append as one batch: the bus decides them one after another and appends
//! them together ([`crate::bus`]). Under no load a batch is one command and nothing waits for
//! company; under load the batch grows by itself with the queue. Conflicts remain, and are
//! retried, only between replicas.
//!
//! A stream has an entry only while commands wait on it or its worker runs, so the map stays
//! as small as the number of streams being written at this moment. Items are typed: the key
//! carries the item's `TypeId`, so each queue holds one type and the bus's worker gets its own
//! items back.

use std::any::{Any, TypeId};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

type Key = (TypeId, String);

#[derive(Clone, Default)]
pub struct StreamQueues {
    queues: Arc<Mutex<HashMap<Key, Box<dyn Any + Send>>>>,
}

impl StreamQueues {
    /// Queues `item` on `stream`. `true` when the stream had no worker: the caller must start
    /// one, which then calls [`Self::next_batch`] until it comes back empty.
    pub fn push<T: Send + 'static>(&self, stream: &str, item: T) -> bool {
        match self.map().entry((TypeId::of::<T>(), stream.to_string())) {
            Entry::Occupied(mut queue) => {
                queue_of::<T>(queue.get_mut()).push_back(item);
                false
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Box::new(VecDeque::from([item])));
                true
            }
        }
    }

    /// The worker's next batch: up to `max` items from the front of the queue, ending before
    /// the first later item `admit` refuses (it stays first in line). `admit` is asked about
    /// every item taken, the first included, which it cannot refuse. Empty when nothing waits:
    /// the stream is then forgotten, in the same step, and its worker must stop; a command
    /// queued after that finds no entry and starts a new worker.
    pub fn next_batch<T: Send + 'static>(
        &self,
        stream: &str,
        max: usize,
        mut admit: impl FnMut(&T) -> bool,
    ) -> Vec<T> {
        let key = (TypeId::of::<T>(), stream.to_string());
        let mut queues = self.map();
        let Some(queue) = queues.get_mut(&key) else {
            return Vec::new();
        };
        let queue = queue_of::<T>(queue);
        let mut batch = Vec::new();
        while batch.len() < max.max(1) {
            let Some(item) = queue.front() else { break };
            // `admit` sees every item it lets in, the first too (it may remember them), but
            // cannot keep the first out: the batch would be empty and the worker stop.
            if !admit(item) && !batch.is_empty() {
                break;
            }
            batch.extend(queue.pop_front());
        }
        if batch.is_empty() {
            queues.remove(&key);
        }
        batch
    }

    /// Forgets `stream` and drops whatever waits on it: for a worker that stopped without
    /// emptying its queue (it panicked, or its runtime shut down). Dropping an item is how
    /// its waiter learns that nobody will answer.
    pub fn abandon<T: 'static>(&self, stream: &str) {
        let dropped = self.map().remove(&(TypeId::of::<T>(), stream.to_string()));
        // Dropped outside the map's lock: an item's drop may wake its waiter.
        drop(dropped);
    }

    /// Streams with commands waiting or a worker running (for tests).
    pub fn in_use(&self) -> usize {
        self.map().len()
    }

    /// The map; nothing panics while holding it, but a worker's drop must never panic on poison.
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Box<dyn Any + Send>>> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The queue behind an entry; the key's `TypeId` is the item type's, so this cannot fail.
fn queue_of<T: 'static>(entry: &mut Box<dyn Any + Send>) -> &mut VecDeque<T> {
    entry
        .downcast_mut::<VecDeque<T>>()
        .expect("a stream's queue is keyed by the type of its items")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_command_starts_the_worker_and_later_ones_join_its_queue() {
        let queues = StreamQueues::default();
        assert!(queues.push("a", 1u32), "no worker yet");
        assert!(!queues.push("a", 2u32), "the worker will take it");
        assert!(queues.push("b", 3u32), "another stream has its own worker");
        assert!(
            queues.push("a", "text"),
            "another item type (another aggregate) is another stream"
        );
        assert_eq!(queues.next_batch::<u32>("a", 10, |_| true), vec![1, 2]);
        assert!(!queues.push("a", 4u32), "the worker still runs");
        assert_eq!(queues.next_batch::<u32>("a", 10, |_| true), vec![4]);
        assert!(queues.next_batch::<u32>("a", 10, |_| true).is_empty());
        assert!(queues.push("a", 5u32), "an idle stream needs a new worker");
        assert_eq!(queues.in_use(), 3);
    }

    #[test]
    fn a_batch_stops_at_its_size_and_before_a_refused_item() {
        let queues = StreamQueues::default();
        for n in 0..10u32 {
            queues.push("a", n);
        }
        assert_eq!(queues.next_batch::<u32>("a", 3, |_| true), vec![0, 1, 2]);
        // 5 is refused: the batch ends before it, and it comes first next time.
        assert_eq!(queues.next_batch::<u32>("a", 10, |n| *n != 5), vec![3, 4]);
        // The first item is always taken, whatever `admit` says, and `admit` sees it: here it
        // lets in no item after one it has seen the like of.
        let mut seen = std::collections::HashSet::new();
        queues.push("a", 7u32);
        assert_eq!(
            queues.next_batch::<u32>("a", 10, |n| *n != 5 && seen.insert(*n)),
            vec![5, 6, 7, 8, 9]
        );
        assert_eq!(
            queues.next_batch::<u32>("a", 10, |n| seen.insert(*n)),
            vec![7]
        );
        assert!(queues.next_batch::<u32>("a", 10, |_| true).is_empty());
        assert_eq!(queues.in_use(), 0, "an idle stream holds no entry");
    }

    #[test]
    fn an_abandoned_stream_drops_its_waiters_and_starts_afresh() {
        let queues = StreamQueues::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        queues.push("a", tx);
        queues.abandon::<tokio::sync::oneshot::Sender<()>>("a");
        assert_eq!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed),
            "the waiter hears that nobody will answer"
        );
        assert_eq!(queues.in_use(), 0);
        let (tx, _rx) = tokio::sync::oneshot::channel::<()>();
        assert!(queues.push("a", tx), "the next command starts a new worker");
    }
}
