//! Subscriptions (graphql-ws and graphql-transport-ws): the caller's realtime feed — the
//! same notifications the SignalR hub delivers — and a paced replay of a session, events
//! re-emitted at their original spacing divided by `speed`.
//!
//! The hub's reading of the Redis feed (`hub::run_feed`) feeds every GraphQL subscriber of
//! the replica through a broadcast channel ([`FeedFanout`]); each subscriber keeps what is
//! addressed to it. A subscriber
//! that falls too far behind skips the notifications it missed (pushes are best-effort;
//! the read models are the record).

use super::authorize;
use super::insights::{replay_session, replayed_event, ReplayedEvent};
use crate::access::{Caller, Subject};
use crate::error::ApiError;
use async_graphql::{Context, Json, SimpleObject, Subscription};
use futures::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use teachin_domain::actor::Role;
use teachin_projections::feed::{Notification, Target};
use teachin_projections::replay::{paced_capped, AsOf, SessionType};
use tokio::sync::broadcast;
use uuid::Uuid;

/// The longest pause a paced replay makes, whatever the original gap.
const MAX_REPLAY_PAUSE: Duration = Duration::from_secs(10);
/// How many notifications a slow subscriber may lag behind before it skips some.
const FANOUT_CAPACITY: usize = 1024;

/// The replica's feed notifications, shared by all subscriptions.
#[derive(Clone)]
pub struct FeedFanout {
    sender: broadcast::Sender<Arc<Notification>>,
}

impl Default for FeedFanout {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(FANOUT_CAPACITY).0,
        }
    }
}

impl FeedFanout {
    /// Hands a notification to this replica's subscribers (the hub's feed task).
    pub fn deliver(&self, notification: Notification) {
        let _ = self.sender.send(Arc::new(notification));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Notification>> {
        self.sender.subscribe()
    }
}

/// A push for the caller.
#[derive(SimpleObject)]
pub struct FeedNotification {
    /// The event it comes from; with `part`, a dedupe key.
    pub id: Uuid,
    pub part: i32,
    /// The SignalR method name: `ReceiveEvent`, `NotificationMessage`...
    pub method: String,
    pub payload: Json<serde_json::Value>,
}

fn addressed_to(caller: Caller, target: &Target) -> bool {
    match (caller, target) {
        (Caller::User { id, .. }, Target::User(user)) => id == *user,
        (
            Caller::User {
                role: Role::Admin, ..
            },
            Target::Group(group),
        ) => group == "Admins",
        _ => false,
    }
}

#[derive(Default)]
pub struct RealtimeSubscription;

#[Subscription]
impl RealtimeSubscription {
    /// Notifications for the signed-in caller (and the Admins group, for admins).
    async fn notifications(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = FeedNotification>, ApiError> {
        let caller = authorize(ctx, "notifications", Subject::Caller).await?;
        let receiver = ctx.data_unchecked::<FeedFanout>().subscribe();
        let stream = tokio_stream_from(receiver).filter_map(move |n| async move {
            addressed_to(caller, &n.target).then(|| FeedNotification {
                id: n.id,
                part: n.part as i32,
                method: n.method.clone(),
                payload: Json(n.payload.clone()),
            })
        });
        Ok(stream)
    }

    /// A session's events re-emitted at their original spacing divided by `speed`.
    async fn session_replay_stream(
        &self,
        ctx: &Context<'_>,
        session_type: SessionType,
        id: Uuid,
        #[graphql(default = 1.0)] speed: f64,
    ) -> Result<impl Stream<Item = ReplayedEvent>, ApiError> {
        if !(speed.is_finite() && speed > 0.0 && speed <= 1000.0) {
            return Err(ApiError::bad_input("speed", "a speed between 0 and 1000"));
        }
        let (history, _) = replay_session(
            ctx,
            "sessionReplayStream",
            session_type,
            id,
            AsOf::Version(i64::MAX),
        )
        .await?;
        Ok(paced_capped(history, speed, Some(MAX_REPLAY_PAUSE)).map(replayed_event))
    }
}

/// A broadcast receiver as a stream that skips over what a slow reader missed.
fn tokio_stream_from(
    receiver: broadcast::Receiver<Arc<Notification>>,
) -> impl Stream<Item = Arc<Notification>> {
    futures::stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(n) => return Some((n, receiver)),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::warn!(skipped, "a subscription fell behind the feed");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}
