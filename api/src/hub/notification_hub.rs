//! [`NotificationHub`]: the one object the rest of the manager holds to reach browsers.
//!
//! Why one handle for both modes: callers (the feed task, GraphQL resolvers that stream a
//! tutor reply, the admin's online list) should not care whether the sockets are held by
//! this process or by Azure SignalR. So every push names a *target* (a user or a group) and
//! the hub decides the route:
//!
//! | | self-hosted | Azure SignalR |
//! |---|---|---|
//! | feed notification (every replica receives it) | local connections only | REST, once across replicas (a Redis claim per notification) |
//! | [`send_to_user`](NotificationHub::send_to_user) / [`send_to_group`](NotificationHub::send_to_group) (one replica calls it) | Redis backplane → every replica's local connections | REST |
//! | presence changes | backplane → `Admins` | — (Azure holds the sockets) |

use super::azure::{AzureError, AzureSignalR};
use super::presence::{Meta, OnlineUser, Presence, PresenceChange};
use super::protocol;
use super::registry::{Audience, LocalConnection, Registry};
use crate::auth::revocation::Revocations;
use crate::auth::tokens::AccessTokens;
use fred::prelude::{Client, Expiration, KeysInterface, PubsubInterface, SetOptions};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use teachin_projections::feed::{FeedError, Notification, Target, ADMINS_GROUP};
use teachin_projections::queries::ReadModels;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

/// The client methods of presence (original §5), sent to the `Admins` group.
pub const USER_ONLINE: &str = "UserOnline";
pub const USER_OFFLINE: &str = "UserOffline";
pub const UPDATE_USER_CONNECTIONS: &str = "UpdateUserConnections";

/// How long an Azure-mode feed notification stays claimed (longer than any redelivery).
const AZURE_CLAIM_TTL: Duration = Duration::from_secs(600);

/// Timings and the namespace. The defaults are ASP.NET Core SignalR's.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// One per environment; keys and channels are `teachin:{namespace}:…`.
    pub namespace: String,
    /// How often the server pings an idle connection (`KeepAliveInterval`, 15 s).
    pub keep_alive: Duration,
    /// A connection that sends nothing (not even a ping) for this long is closed
    /// (`ClientTimeoutInterval`, 30 s; the client pings every 15 s).
    pub client_timeout: Duration,
    /// How long a new socket may take to send its handshake (`HandshakeTimeout`, 15 s).
    pub handshake_timeout: Duration,
    /// How long a connection token from negotiate may wait for its WebSocket.
    pub connection_token_ttl: Duration,
    /// How often presence leases are renewed and lapsed ones swept; a lease lasts three.
    pub presence_refresh: Duration,
    /// How long [`NotificationHub::shutdown`] waits for connections to close.
    pub shutdown_grace: Duration,
}

impl HubConfig {
    pub fn new(namespace: impl Into<String>) -> Self {
        HubConfig {
            namespace: namespace.into(),
            keep_alive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            connection_token_ttl: Duration::from_secs(30),
            presence_refresh: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    pub(crate) fn presence_lease(&self) -> Duration {
        self.presence_refresh * 3
    }
}

/// Looks up the name shown beside an online user (`UserOnline`'s third argument).
pub trait DisplayNames: Send + Sync + 'static {
    fn display_name(&self, user: UserId) -> BoxFuture<'_, Option<String>>;
}

/// The read models know every user's (opened) name.
impl DisplayNames for ReadModels {
    fn display_name(&self, user: UserId) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            match self.user(user.0).await {
                Ok(view) => view
                    .map(|v| v.display_name())
                    .filter(|name| !name.is_empty()),
                Err(error) => {
                    tracing::warn!(%error, %user, "hub: cannot read the user's name");
                    None
                }
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error(transparent)]
    Azure(#[from] AzureError),
    #[error("realtime feed: {0}")]
    Feed(#[from] FeedError),
    #[error("the feed subscription ended")]
    FeedClosed,
}

/// A hub-originated push on its way to every replica (`teachin:{ns}:hub`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub id: Uuid,
    pub target: Target,
    pub method: String,
    pub arguments: Vec<Value>,
}

/// The backplane channel of hub-originated pushes, beside the feed's `teachin:{ns}:feed`.
pub fn backplane_channel(namespace: &str) -> String {
    format!("teachin:{namespace}:hub")
}

/// What negotiate handed out and the WebSocket must present (`?id=`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingConnection {
    pub connection_id: String,
    pub user: UserId,
}

/// The hub. Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct NotificationHub {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: AccessTokens,
    redis: Client,
    config: HubConfig,
    azure: Option<AzureSignalR>,
    names: OnceLock<Arc<dyn DisplayNames>>,
    /// The GraphQL subscriptions of this replica, fed from the same feed reading.
    subscriptions: OnceLock<crate::graphql::realtime::FeedFanout>,
    registry: RwLock<Registry>,
    presence: Presence,
    shutdown: watch::Sender<bool>,
    subscribed: AtomicBool,
    /// Woken whenever a connection leaves the registry (shutdown waits on it).
    left: Notify,
    /// Revocation epochs: checked at negotiate and connect, watched by open connections.
    revocations: Revocations,
}

impl std::fmt::Debug for NotificationHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationHub")
            .field("namespace", &self.inner.config.namespace)
            .field("azure", &self.inner.azure)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl NotificationHub {
    /// A hub verifying callers with `tokens`, keeping presence and connection tokens in
    /// `redis` (a connected client), routing through Azure SignalR when `azure` is set.
    pub fn new(
        tokens: AccessTokens,
        redis: Client,
        config: HubConfig,
        azure: Option<AzureSignalR>,
    ) -> Self {
        let presence = Presence::new(redis.clone(), &config.namespace, config.presence_lease());
        let revocations =
            Revocations::new(redis.clone(), &config.namespace).with_azure(azure.clone());
        NotificationHub {
            inner: Arc::new(Inner {
                tokens,
                redis,
                config,
                azure,
                names: OnceLock::new(),
                subscriptions: OnceLock::new(),
                registry: RwLock::new(Registry::default()),
                presence,
                shutdown: watch::channel(false).0,
                subscribed: AtomicBool::new(false),
                left: Notify::new(),
                revocations,
            }),
        }
    }

    /// Where `UserOnline` takes names from (e.g. [`ReadModels`]). Without it the name is
    /// `null`. Only the first call counts.
    pub fn set_display_names(&self, names: impl DisplayNames) {
        let _ = self.inner.names.set(Arc::new(names));
    }

    /// Hands every feed notification this replica reads to `subscriptions` too, so the
    /// GraphQL `notifications` subscription needs no Redis reading of its own. Only the
    /// first call counts.
    pub fn feed_subscriptions(&self, subscriptions: crate::graphql::realtime::FeedFanout) {
        let _ = self.inner.subscriptions.set(subscriptions);
    }

    /// Passes a feed notification to the GraphQL subscriptions, if any are attached.
    pub(crate) fn forward_to_subscriptions(&self, notification: &Notification) {
        if let Some(subscriptions) = self.inner.subscriptions.get() {
            subscriptions.deliver(notification.clone());
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    /// The Azure SignalR Service pushes go through, if configured.
    pub fn azure(&self) -> Option<&AzureSignalR> {
        self.inner.azure.as_ref()
    }

    /// Open connections on this replica (the connected-clients gauge).
    pub fn connections(&self) -> usize {
        self.registry().len()
    }

    /// Whether [`run_feed`](super::run_feed) is subscribed to Redis, i.e. pushes reach this
    /// replica's connections (for readiness).
    pub fn is_subscribed(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }

    pub(crate) fn set_subscribed(&self, subscribed: bool) {
        self.inner.subscribed.store(subscribed, Ordering::Release);
    }

    pub(crate) fn tokens(&self) -> &AccessTokens {
        &self.inner.tokens
    }

    /// The revocation epochs this hub checks and whose bumps close its connections.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Calls `method(arguments…)` on every connection of `user`, on whichever replica (or
    /// in Azure) it is. Delivery is at most once.
    pub async fn send_to_user(
        &self,
        user: UserId,
        method: &str,
        arguments: Vec<Value>,
    ) -> Result<(), HubError> {
        self.publish(Target::User(user), method, arguments).await
    }

    /// Calls `method(arguments…)` on every connection in `group`, wherever it is.
    pub async fn send_to_group(
        &self,
        group: &str,
        method: &str,
        arguments: Vec<Value>,
    ) -> Result<(), HubError> {
        self.publish(Target::Group(group.to_owned()), method, arguments)
            .await
    }

    async fn publish(
        &self,
        target: Target,
        method: &str,
        arguments: Vec<Value>,
    ) -> Result<(), HubError> {
        if let Some(azure) = &self.inner.azure {
            return Ok(send_azure(azure, &target, method, &arguments).await?);
        }
        let envelope = Envelope {
            id: Uuid::new_v4(),
            target,
            method: method.to_owned(),
            arguments,
        };
        let text = serde_json::to_string(&envelope).expect("an envelope serializes");
        let _: i64 = self
            .inner
            .redis
            .publish(backplane_channel(self.namespace()), text)
            .await?;
        Ok(())
    }

    /// Hands one feed notification on: to this replica's connections, or (Azure mode) to
    /// Azure, by the one replica that claims it first.
    pub async fn deliver(&self, notification: &Notification) -> Result<usize, HubError> {
        let arguments = std::slice::from_ref(&notification.payload);
        let Some(azure) = &self.inner.azure else {
            return Ok(self.deliver_local(&notification.target, &notification.method, arguments));
        };
        let claim = format!(
            "teachin:{}:hub:azure-sent:{}:{}",
            self.namespace(),
            notification.id,
            notification.part
        );
        let claimed: Option<String> = self
            .inner
            .redis
            .set(
                &claim,
                "1",
                Some(Expiration::EX(AZURE_CLAIM_TTL.as_secs() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if claimed.is_none() {
            return Ok(0);
        }
        if let Err(error) =
            send_azure(azure, &notification.target, &notification.method, arguments).await
        {
            // Let another replica (or a redelivery) try again.
            let _: Result<i64, _> = self.inner.redis.del(&claim).await;
            return Err(error.into());
        }
        Ok(1)
    }

    /// Calls `method(arguments…)` on the matching connections of this replica only;
    /// returns how many connections it was queued for.
    pub fn deliver_local(&self, target: &Target, method: &str, arguments: &[Value]) -> usize {
        let frame: Arc<str> = Arc::from(protocol::invocation(method, arguments));
        let audience = match target {
            Target::User(user) => Audience::User(*user),
            Target::Group(group) => Audience::Group(group),
        };
        self.registry().push(audience, &frame)
    }

    pub(crate) fn deliver_envelope(&self, envelope: &Envelope) -> usize {
        self.deliver_local(&envelope.target, &envelope.method, &envelope.arguments)
    }

    /// Everyone online now (admins excepted), across replicas.
    pub async fn online_users(&self) -> Result<Vec<OnlineUser>, HubError> {
        Ok(self.inner.presence.online().await?)
    }

    /// Closes every connection (each client is told it may reconnect, to another replica)
    /// and waits, at most `shutdown_grace`, for them to finish.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let deadline = tokio::time::Instant::now() + self.inner.config.shutdown_grace;
        loop {
            let left = self.inner.left.notified();
            if self.connections() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, left).await.is_err() {
                tracing::warn!(
                    connections = self.connections(),
                    "hub: connections still open at shutdown"
                );
                return;
            }
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    // ----- connections -----------------------------------------------------------------

    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner
            .registry
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection whose handshake succeeded; admins join `Admins` at once.
    pub(crate) fn register(&self, id: &str, connection: LocalConnection) {
        let admin = connection.role == Role::Admin;
        let mut registry = self.registry_mut();
        registry.add(id, connection);
        if admin {
            registry.join(id, ADMINS_GROUP);
        }
    }

    pub(crate) fn unregister(&self, id: &str) {
        self.registry_mut().remove(id);
        self.inner.left.notify_waiters();
    }

    pub(crate) fn join(&self, id: &str, group: &str) {
        self.registry_mut().join(id, group);
    }

    pub(crate) fn leave(&self, id: &str, group: &str) {
        self.registry_mut().leave(id, group);
    }

    // ----- connection tokens -----------------------------------------------------------

    fn token_key(&self, token: &str) -> String {
        format!("teachin:{}:hub:token:{token}", self.namespace())
    }

    /// Stores a connection token for `pending`; it expires unused after
    /// `connection_token_ttl`. Kept in Redis so the WebSocket may land on another replica.
    pub(crate) async fn store_connection_token(
        &self,
        token: &str,
        pending: &PendingConnection,
    ) -> Result<(), HubError> {
        let ttl = self.inner.config.connection_token_ttl.as_millis().max(1) as i64;
        let _: () = self
            .inner
            .redis
            .set(
                self.token_key(token),
                serde_json::to_string(pending).expect("serializes"),
                Some(Expiration::PX(ttl)),
                Some(SetOptions::NX),
                false,
            )
            .await?;
        Ok(())
    }

    /// Takes a connection token: a second use, or a use after it expired, finds nothing.
    pub(crate) async fn redeem_connection_token(
        &self,
        token: &str,
    ) -> Result<Option<PendingConnection>, HubError> {
        let stored: Option<String> = self.inner.redis.getdel(self.token_key(token)).await?;
        Ok(stored.and_then(|text| serde_json::from_str(&text).ok()))
    }

    // ----- presence --------------------------------------------------------------------

    async fn name_of(&self, user: UserId) -> Option<String> {
        match self.inner.names.get() {
            Some(names) => names.display_name(user).await,
            None => None,
        }
    }

    /// A tracked (non-admin) user's connection opened: record it and tell the admins.
    pub(crate) async fn presence_connected(&self, id: &str, user: UserId, role: Role) {
        if role == Role::Admin {
            return;
        }
        let meta = Meta {
            role,
            name: self.name_of(user).await,
        };
        match self.inner.presence.connect(user, id, &meta).await {
            Ok(change) => self.announce(vec![change], Some(&meta)).await,
            Err(error) => tracing::warn!(%error, %user, "hub: presence not recorded"),
        }
    }

    pub(crate) async fn presence_disconnected(&self, id: &str, user: UserId, role: Role) {
        if role == Role::Admin {
            return;
        }
        match self.inner.presence.disconnect(user, id).await {
            Ok(change) => self.announce(change.into_iter().collect(), None).await,
            Err(error) => {
                tracing::warn!(%error, %user, "hub: presence not cleared (its lease will lapse)")
            }
        }
    }

    /// Renews this replica's leases and ends other replicas' lapsed ones.
    pub(crate) async fn maintain_presence(&self) {
        let local: Vec<(String, UserId, Role)> = self
            .registry()
            .all()
            .into_iter()
            .filter(|(_, _, role)| *role != Role::Admin)
            .collect();
        let mut tracked = Vec::with_capacity(local.len());
        for (id, user, role) in local {
            // The name only matters if the user comes back online, which is rare; the
            // role is enough to renew.
            tracked.push((id, user, Meta { role, name: None }));
        }
        let mut changes = match self.inner.presence.refresh(&tracked).await {
            Ok(changes) => changes,
            Err(error) => {
                tracing::warn!(%error, "hub: presence leases not renewed");
                Vec::new()
            }
        };
        match self.inner.presence.sweep().await {
            Ok(swept) => changes.extend(swept),
            Err(error) => tracing::warn!(%error, "hub: presence sweep failed"),
        }
        for change in changes {
            let meta = match &change {
                PresenceChange::Online { user, .. } => {
                    let role = tracked
                        .iter()
                        .find(|(_, u, _)| u == user)
                        .map(|(_, _, m)| m.role)
                        .unwrap_or_default();
                    Some(Meta {
                        role,
                        name: self.name_of(*user).await,
                    })
                }
                _ => None,
            };
            self.announce(vec![change], meta.as_ref()).await;
        }
    }

    async fn announce(&self, changes: Vec<PresenceChange>, meta: Option<&Meta>) {
        for change in changes {
            let (method, arguments) = match change {
                PresenceChange::Online { user, .. } => (
                    USER_ONLINE,
                    vec![
                        json!(user),
                        json!(meta.map(|m| m.role).unwrap_or_default()),
                        json!(meta.and_then(|m| m.name.clone())),
                    ],
                ),
                PresenceChange::Connections { user, connections } => (
                    UPDATE_USER_CONNECTIONS,
                    vec![json!(user), json!(connections)],
                ),
                PresenceChange::Offline { user } => (USER_OFFLINE, vec![json!(user)]),
            };
            if let Err(error) = self.send_to_group(ADMINS_GROUP, method, arguments).await {
                tracing::warn!(%error, method, "hub: presence change not announced");
            }
        }
    }
}

async fn send_azure(
    azure: &AzureSignalR,
    target: &Target,
    method: &str,
    arguments: &[Value],
) -> Result<(), AzureError> {
    match target {
        Target::User(user) => azure.send_to_user(*user, method, arguments).await,
        Target::Group(group) => azure.send_to_group(group, method, arguments).await,
    }
}
