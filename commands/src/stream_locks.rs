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
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as StreamMutex, OwnedMutexGuard};

type Key = (&'static str, String);

#[derive(Clone, Default)]
pub struct StreamLocks {
    held: Arc<Mutex<HashMap<Key, Arc<StreamMutex<()>>>>>,
}

/// This process's turn on one stream; the next waiting command goes when it is dropped.
pub struct StreamTurn {
    key: Key,
    locks: StreamLocks,
    guard: Option<OwnedMutexGuard<()>>,
}

impl StreamLocks {
    /// Waits until no other command of this process is running on the stream.
    pub async fn turn(&self, aggregate_type: &'static str, aggregate_id: &str) -> StreamTurn {
        let key = (aggregate_type, aggregate_id.to_string());
        let lock = self
            .held
            .lock()
            .expect("stream locks")
            .entry(key.clone())
            .or_default()
            .clone();
        StreamTurn {
            key,
            locks: self.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Streams with a command running or waiting (for tests).
    pub fn in_use(&self) -> usize {
        self.held.lock().expect("stream locks").len()
    }
}

impl Drop for StreamTurn {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock().expect("stream locks");
        drop(self.guard.take());
        // Nobody else holds or waits for this stream's lock (the map's copy is the only one
        // left): forget it. Checked under the map's lock, so no new waiter can slip in.
        if held
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            held.remove(&self.key);
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
}
