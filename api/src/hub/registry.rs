//! The connections this replica holds, indexed by user and by group, so a push finds its
//! sockets without scanning every connection.
//!
//! Why a plain map under a lock: every operation is a few hash lookups and never awaits, so a
//! `std::sync::RwLock` is cheaper than an async lock or an actor. A push only *queues* a
//! frame on each connection's bounded outbox (`try_send`); the socket is written by the
//! connection's own task. A connection whose outbox is full is not keeping up: rather than
//! drop its messages silently or let it grow without bound, it is told to close (its client
//! reconnects and starts fresh).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use tokio::sync::{mpsc, Notify};

/// How many frames may wait for a slow socket before it is closed.
pub const OUTBOX_CAPACITY: usize = 256;

/// What the hub keeps of one open connection.
#[derive(Debug, Clone)]
pub struct LocalConnection {
    pub user: UserId,
    pub role: Role,
    pub outbox: mpsc::Sender<Arc<str>>,
    /// Woken when the connection must close because it fell behind.
    pub overflow: Arc<Notify>,
}

#[derive(Debug, Default)]
pub struct Registry {
    connections: HashMap<String, (LocalConnection, HashSet<String>)>,
    by_user: HashMap<UserId, HashSet<String>>,
    by_group: HashMap<String, HashSet<String>>,
}

/// Who a local push goes to.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    User(UserId),
    Group(&'a str),
}

impl Registry {
    pub fn add(&mut self, id: &str, connection: LocalConnection) {
        self.by_user
            .entry(connection.user)
            .or_default()
            .insert(id.to_owned());
        self.connections
            .insert(id.to_owned(), (connection, HashSet::new()));
    }

    /// Forgets a connection and its group memberships; returns it if it was known.
    pub fn remove(&mut self, id: &str) -> Option<LocalConnection> {
        let (connection, groups) = self.connections.remove(id)?;
        remove_member(&mut self.by_user, &connection.user, id);
        for group in groups {
            remove_member(&mut self.by_group, &group, id);
        }
        Some(connection)
    }

    /// Adds a connection to a group; `false` if the connection is unknown.
    pub fn join(&mut self, id: &str, group: &str) -> bool {
        let Some((_, groups)) = self.connections.get_mut(id) else {
            return false;
        };
        groups.insert(group.to_owned());
        self.by_group
            .entry(group.to_owned())
            .or_default()
            .insert(id.to_owned());
        true
    }

    pub fn leave(&mut self, id: &str, group: &str) {
        if let Some((_, groups)) = self.connections.get_mut(id) {
            groups.remove(group);
        }
        remove_member(&mut self.by_group, &group.to_owned(), id);
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Every local connection as (connection id, user), for lease renewal.
    pub fn all(&self) -> Vec<(String, UserId, Role)> {
        self.connections
            .iter()
            .map(|(id, (c, _))| (id.clone(), c.user, c.role))
            .collect()
    }

    /// Queues `frame` on every connection of `audience`; returns how many took it.
    /// Connections whose outbox is full are told to close.
    pub fn push(&self, audience: Audience<'_>, frame: &Arc<str>) -> usize {
        let ids = match audience {
            Audience::User(user) => self.by_user.get(&user),
            Audience::Group(group) => self.by_group.get(group),
        };
        let Some(ids) = ids else {
            return 0;
        };
        let mut delivered = 0;
        for id in ids {
            let Some((connection, _)) = self.connections.get(id) else {
                continue;
            };
            match connection.outbox.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(connection = %id, user = %connection.user, "hub: connection is not keeping up; closing it");
                    connection.overflow.notify_one();
                }
                // The connection is ending; its task removes it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }
}

fn remove_member<K: std::hash::Hash + Eq + Clone>(
    index: &mut HashMap<K, HashSet<String>>,
    key: &K,
    id: &str,
) {
    if let Some(members) = index.get_mut(key) {
        members.remove(id);
        if members.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(user: UserId, capacity: usize) -> (LocalConnection, mpsc::Receiver<Arc<str>>) {
        let (outbox, rx) = mpsc::channel(capacity);
        (
            LocalConnection {
                user,
                role: Role::Student,
                outbox,
                overflow: Arc::new(Notify::new()),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn pushes_reach_the_users_and_groups_connections_only() {
        let (alice, bob) = (UserId::new(), UserId::new());
        let mut registry = Registry::default();
        let (a1, mut a1_rx) = connection(alice, 8);
        let (a2, mut a2_rx) = connection(alice, 8);
        let (b1, mut b1_rx) = connection(bob, 8);
        registry.add("a1", a1);
        registry.add("a2", a2);
        registry.add("b1", b1);
        assert!(registry.join("b1", "Admins"));
        assert!(!registry.join("nobody", "Admins"));

        let frame: Arc<str> = Arc::from("hello");
        assert_eq!(registry.push(Audience::User(alice), &frame), 2);
        assert_eq!(registry.push(Audience::Group("Admins"), &frame), 1);
        assert_eq!(registry.push(Audience::Group("Teachers"), &frame), 0);
        assert_eq!(&*a1_rx.recv().await.unwrap(), "hello");
        assert_eq!(&*a2_rx.recv().await.unwrap(), "hello");
        assert_eq!(&*b1_rx.recv().await.unwrap(), "hello");
        assert!(a1_rx.try_recv().is_err(), "alice is not in Admins");

        registry.leave("b1", "Admins");
        assert_eq!(registry.push(Audience::Group("Admins"), &frame), 0);
        registry.join("b1", "Admins");
        assert!(registry.remove("b1").is_some());
        assert_eq!(registry.push(Audience::Group("Admins"), &frame), 0);
        assert_eq!(registry.push(Audience::User(bob), &frame), 0);
        assert_eq!(registry.len(), 2);
        registry.remove("a1");
        registry.remove("a2");
        assert_eq!(registry.len(), 0);
        assert!(registry.by_user.is_empty() && registry.by_group.is_empty());
    }

    #[tokio::test]
    async fn a_connection_that_falls_behind_is_told_to_close() {
        let user = UserId::new();
        let mut registry = Registry::default();
        let (slow, _rx) = connection(user, 1);
        let overflow = slow.overflow.clone();
        registry.add("slow", slow);
        let frame: Arc<str> = Arc::from("x");
        assert_eq!(registry.push(Audience::User(user), &frame), 1);
        assert_eq!(registry.push(Audience::User(user), &frame), 0);
        // The permit is stored, so the connection sees it whenever it next waits.
        tokio::time::timeout(std::time::Duration::from_secs(5), overflow.notified())
            .await
            .expect("overflow signalled");
    }
}
