//! One command at a time per stream, within this process.
//!
//! Optimistic concurrency keeps a stream consistent across replicas, but it is a poor queue:
//! when many requests on one replica hit the same stream (a class's roster, a student's deck
//! clicked from two tabs), all but one load the same version, all but one lose, and each loser
//! reloads and tries again. The bench showed shared-stream throughput collapsing under that
//! churn and retries running out. Commands that would only conflict with each other therefore
//! wait their turn here instead; conflicts remain, and are retried, only between replicas.
//!
//! A lock lives only while someone holds or waits for it, so the map stays as small as the
//! number of streams being written at this moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{Mutex as StreamMutex, OwnedMutexGuard};

type Key = (&'static str, String);

#[derive(Clone, Default)]
pub struct StreamLocks {
    held: Arc<Mutex<HashMap<Key, Slot>>>,
}

/// One stream's lock and how many commands hold or wait for it. The count, not the `Arc`'s
/// reference count, decides when the entry goes: a waiter's copy of the `Arc` lives inside
/// its pending `lock_owned` future, whose drop order against the turn is not ours to rely on.
struct Slot {
    lock: Arc<StreamMutex<()>>,
    users: usize,
}

/// This process's turn on one stream; the next waiting command goes when it is dropped.
///
/// It exists from the moment a command starts waiting, so a waiter that is cancelled (its
/// future dropped by a timeout, a `select!`, a client going away) also leaves the map.
pub struct StreamTurn {
    key: Key,
    locks: StreamLocks,
    guard: Option<OwnedMutexGuard<()>>,
}

impl StreamLocks {
    /// Waits until no other command of this process is running on the stream.
    pub async fn turn(&self, aggregate_type: &'static str, aggregate_id: &str) -> StreamTurn {
        let key = (aggregate_type, aggregate_id.to_string());
        let lock = {
            let mut held = self.map();
            let slot = held.entry(key.clone()).or_insert_with(|| Slot {
                lock: Arc::default(),
                users: 0,
            });
            slot.users += 1;
            slot.lock.clone()
        };
        // Counted above: from here on, dropping `turn` (cancelled or done) uncounts it.
        let mut turn = StreamTurn {
            key,
            locks: self.clone(),
            guard: None,
        };
        turn.guard = Some(lock.lock_owned().await);
        turn
    }

    /// Streams with a command running or waiting (for tests).
    pub fn in_use(&self) -> usize {
        self.map().len()
    }

    /// The map; nothing panics while holding it, but a drop must never panic on poison.
    fn map(&self) -> MutexGuard<'_, HashMap<Key, Slot>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for StreamTurn {
    fn drop(&mut self) {
        // Hand the turn on first (a waiter may already be queued for it).
        drop(self.guard.take());
        let mut held = self.locks.map();
        // The last command holding or waiting for this stream forgets it. Counted under the
        // map's lock, so a new waiter either was counted already or makes a fresh entry.
        if let Some(slot) = held.get_mut(&self.key) {
            slot.users -= 1;
            if slot.users == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_command_on_the_stream_waits_and_the_lock_is_forgotten_after() {
        let locks = StreamLocks::default();
        let first = locks.turn("Deck", "a").await;
        let other_stream = locks.turn("Deck", "b").await; // not blocked by "a"
        let waiting = tokio::spawn({
            let locks = locks.clone();
            async move { locks.turn("Deck", "a").await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second command waits its turn");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the turn passes on")
            .unwrap();
        assert_eq!(locks.in_use(), 2);
        drop(second);
        drop(other_stream);
        assert_eq!(locks.in_use(), 0, "idle streams hold no lock");
    }

    #[tokio::test]
    async fn a_waiter_cancelled_after_the_holder_left_leaves_no_entry() {
        let locks = StreamLocks::default();
        let first = locks.turn("Deck", "a").await;
        let mut waiting = Box::pin(locks.turn("Deck", "a"));
        // Polled once, so it is queued on the stream's lock.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiting)
                .await
                .is_err(),
            "the second command waits its turn"
        );
        // The holder leaves while the waiter still waits (the lock is handed to it) ...
        drop(first);
        // ... and the waiter is cancelled before it ever runs.
        drop(waiting);
        assert_eq!(
            locks.in_use(),
            0,
            "a cancelled waiter leaves no lock behind"
        );
        // The stream still works.
        let again = tokio::time::timeout(Duration::from_secs(10), locks.turn("Deck", "a"))
            .await
            .expect("the stream is free");
        drop(again);
        assert_eq!(locks.in_use(), 0);
    }

    #[tokio::test]
    async fn waiters_cancelled_by_timeout_select_and_abort_leave_no_entry() {
        let locks = StreamLocks::default();
        let first = locks.turn("Deck", "a").await;

        // A timeout gives up while the holder still holds.
        assert!(
            tokio::time::timeout(Duration::from_millis(10), locks.turn("Deck", "a"))
                .await
                .is_err()
        );
        // A `select!` takes another branch.
        tokio::select! {
            _ = locks.turn("Deck", "a") => panic!("the stream is held"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        // Tasks aborted while waiting.
        let aborted: Vec<_> = (0..8)
            .map(|_| {
                let locks = locks.clone();
                tokio::spawn(async move {
                    let _turn = locks.turn("Deck", "a").await;
                })
            })
            .collect();
        // Waiters queued on a stream whose holder leaves, then cancelled.
        let mut queued: Vec<_> = (0..4).map(|_| Box::pin(locks.turn("Deck", "b"))).collect();
        let b = locks.turn("Deck", "b");
        let b = tokio::time::timeout(Duration::from_secs(10), b).await;
        // The first "b" waiter in `queued` was never polled, so `b` got the lock at once.
        let b = b.expect("b is free");
        for waiter in &mut queued {
            assert!(tokio::time::timeout(Duration::from_millis(5), waiter)
                .await
                .is_err());
        }
        tokio::task::yield_now().await;
        for task in &aborted {
            task.abort();
        }
        for task in aborted {
            assert!(task.await.unwrap_err().is_cancelled());
        }
        assert_eq!(locks.in_use(), 2, "only the held streams remain");
        drop(b);
        drop(queued);
        drop(first);
        assert_eq!(locks.in_use(), 0, "cancelled waiters leave no lock behind");
    }
}
