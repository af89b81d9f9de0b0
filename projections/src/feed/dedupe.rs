//! A bounded memory of recently seen keys: the last `capacity` distinct keys, forgotten in
//! the order they were first seen.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;

#[derive(Debug, Clone)]
pub struct RecentIds<K> {
    capacity: usize,
    order: VecDeque<K>,
    seen: HashSet<K>,
}

impl<K: Clone + Eq + Hash> RecentIds<K> {
    /// Remembers up to `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        RecentIds {
            capacity,
            order: VecDeque::with_capacity(capacity),
            seen: HashSet::with_capacity(capacity),
        }
    }

    /// `true` if `key` is new (and is now remembered), `false` for a duplicate.
    pub fn insert(&mut self, key: K) -> bool {
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        self.seen.insert(key.clone());
        self.order.push_back(key);
        true
    }

    pub fn contains(&self, key: &K) -> bool {
        self.seen.contains(key)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_duplicates_and_forgets_the_oldest_beyond_capacity() {
        let mut recent = RecentIds::new(3);
        assert!(recent.insert(1));
        assert!(recent.insert(2));
        assert!(!recent.insert(1), "a duplicate");
        assert!(recent.insert(3));
        assert!(recent.insert(4), "pushes 1 out");
        assert_eq!(recent.len(), 3);
        assert!(!recent.contains(&1));
        assert!(recent.insert(1), "forgotten, so new again");
        assert!(!recent.insert(4));
    }
}
