//! Revocation epochs: how a grant is taken back before the access token that carries it
//! expires.
//!
//! Every person has an epoch, a counter in Redis (`teachin:{ns}:revocation:{user}`, absent
//! = 0). Logout, a role change, a password change and an erasure bump it (`INCR`) once the
//! change is stored; every access token carries the epoch it was issued under (`ep`), and a
//! token whose epoch is below the person's current one is refused (`UNAUTHENTICATED`), over
//! HTTP, at graphql-ws `connection_init`, at SignalR negotiate and connect.
//!
//! Open sockets learn of a bump through the hub backplane channel (`teachin:{ns}:hub`,
//! `{"revoke": user, "epoch": n}`), which every manager replica already subscribes to
//! (`hub::run_feed`); the replica hands it to its sockets through a local broadcast, and a
//! socket whose token is older closes within moments. Redis pub/sub is at-most-once (a
//! message published while a subscriber reconnects is lost), so sockets also read the epoch
//! again every [`RECHECK_EVERY`] and whenever they fell behind the broadcast.
//!
//! With Azure SignalR (serverless mode) the browsers' SignalR connections are held by Azure,
//! not by a replica, so no replica can close them: the replica that bumps also asks Azure
//! to close the person's connections (`:closeConnections`). The client's reconnect then
//! negotiates with a replica again, where the epoch refuses the old token. Azure's own
//! access token for the connection expires with the person's access token in any case.
//!
//! Why a counter and not a timestamp: tokens are issued on several replicas whose clocks
//! differ, and `iat` has a resolution of a second; a counter read *before* the role is read
//! at refresh makes the order exact. A refresh racing a role change either reads the old
//! epoch (its token is refused at once) or the new one, in which case the role change was
//! already stored (it is stored before the bump) and the refresh reads the new role. The
//! key never expires: a counter that went back to 0 would let older tokens through again.
//!
//! Why one Redis `GET` per request rather than a local cache: a cache invalidated by the
//! published bump is only as good as pub/sub delivery, and a lost message would let a
//! revoked token through for the cache's lifetime — exactly the grants this exists to
//! revoke. A `GET` on the already pooled connection costs one round trip of ~0.1 ms beside
//! a request that makes several PostgreSQL round trips, and only requests that carry a token
//! pay it. If Redis cannot be read the request fails (`INTERNAL`): refusing is the safe side.

use crate::hub::backplane_channel;
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use teachin_domain::ids::UserId;
use tokio::sync::broadcast;

/// How often an open socket reads its person's epoch again, in case a published bump was
/// lost (pub/sub delivers at most once).
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// A bump: `user`'s tokens issued under an epoch below `epoch` are revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    #[serde(rename = "revoke")]
    pub user: UserId,
    pub epoch: u64,
}

/// Why a token was refused or could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("the access token was revoked (logout, role change or erasure)")]
    Revoked,
    #[error("revocation store unavailable: {0}")]
    Store(#[from] fred::error::Error),
}

impl From<RevocationError> for crate::error::ApiError {
    fn from(e: RevocationError) -> Self {
        match e {
            RevocationError::Revoked => crate::error::ApiError {
                message: "the access token was revoked; refresh it or sign in again".into(),
                ..crate::error::ApiError::unauthenticated()
            },
            RevocationError::Store(e) => crate::error::ApiError::internal(e),
        }
    }
}

/// The local broadcast of each namespace: the hub's feed task (which reads the backplane)
/// and the sockets of this process meet here without more wiring. Keyed by namespace so
/// tests running several environments in one process stay apart.
static LOCAL: LazyLock<Mutex<HashMap<String, broadcast::Sender<Revoked>>>> =
    LazyLock::new(Default::default);

fn local(namespace: &str) -> broadcast::Sender<Revoked> {
    LOCAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(namespace.to_owned())
        .or_insert_with(|| broadcast::channel(1024).0)
        .clone()
}

/// The revocation epochs of one environment. Cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    redis: Client,
    namespace: String,
    prefix: String,
    local: broadcast::Sender<Revoked>,
    /// Set in Azure SignalR mode: the browsers' hub connections are held there.
    azure: Option<crate::hub::AzureSignalR>,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Revocations {
    pub fn new(redis: Client, namespace: &str) -> Self {
        Self {
            redis,
            namespace: namespace.to_owned(),
            prefix: format!("teachin:{namespace}:revocation:"),
            local: local(namespace),
            azure: None,
        }
    }

    /// Bumps also close the person's connections held by Azure SignalR.
    pub fn with_azure(mut self, azure: Option<crate::hub::AzureSignalR>) -> Self {
        self.azure = azure;
        self
    }

    /// The person's current epoch (0 when never bumped).
    pub async fn epoch(&self, user: UserId) -> Result<u64, fred::error::Error> {
        let value: Option<u64> = self.redis.get(format!("{}{user}", self.prefix)).await?;
        Ok(value.unwrap_or(0))
    }

    /// Refuses a token issued under an epoch older than the person's current one.
    pub async fn check(
        &self,
        who: &crate::auth::tokens::Authenticated,
    ) -> Result<(), RevocationError> {
        if who.epoch < self.epoch(who.user_id).await? {
            return Err(RevocationError::Revoked);
        }
        Ok(())
    }

    /// Revokes every access token the person holds now, and tells every replica's open
    /// sockets. Returns the new epoch.
    pub async fn bump(&self, user: UserId) -> Result<u64, fred::error::Error> {
        let epoch: u64 = self.redis.incr(format!("{}{user}", self.prefix)).await?;
        let revoked = Revoked { user, epoch };
        // This replica's sockets at once; the others through the backplane.
        self.announce(revoked);
        let text = serde_json::to_string(&revoked).expect("a bump serializes");
        let _: i64 = self
            .redis
            .publish(backplane_channel(&self.namespace), text)
            .await?;
        tracing::info!(%user, epoch, "revocation epoch bumped");
        if let Some(azure) = &self.azure {
            // The epoch is already stored and published, so a failure here leaves only
            // Azure-held connections open until their token expires; it is logged, not
            // returned, so the logout or role change itself still succeeds.
            if let Err(error) = azure.close_user_connections(user, "revoked").await {
                tracing::warn!(%error, %user, "revocation: Azure SignalR connections not closed");
            }
        }
        Ok(epoch)
    }

    /// Hands a bump to this replica's sockets (the hub's feed task, for bumps read from the
    /// backplane).
    pub fn announce(&self, revoked: Revoked) {
        let _ = self.local.send(revoked);
    }

    /// Bumps as they reach this replica. Subscribe *before* checking a token, so a bump
    /// between the check and the subscription is not missed.
    pub fn watch(&self) -> broadcast::Receiver<Revoked> {
        self.local.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_has_its_own_shape_on_the_backplane() {
        let user = UserId::new();
        let text = serde_json::to_string(&Revoked { user, epoch: 3 }).unwrap();
        assert_eq!(text, format!(r#"{{"revoke":"{user}","epoch":3}}"#));
        let back: Revoked = serde_json::from_str(&text).unwrap();
        assert_eq!(back, Revoked { user, epoch: 3 });
    }
}
