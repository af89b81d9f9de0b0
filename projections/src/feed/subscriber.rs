//! The consuming side, one per manager replica: SUBSCRIBE to the environment's channel and
//! hand each notification on once.

use super::dedupe::RecentIds;
use super::{FeedError, Notification, DEFAULT_RECENT_IDS};
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy,
};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

/// Notifications from the feed channel, duplicates dropped, in the order Redis delivered them.
pub struct FeedSubscriber {
    notifications: mpsc::Receiver<Notification>,
    client: SubscriberClient,
    tasks: Vec<JoinHandle<()>>,
}

impl FeedSubscriber {
    /// Subscribes to `teachin:{namespace}:feed` at `redis_url`, remembering the last
    /// [`DEFAULT_RECENT_IDS`] notifications to drop duplicates.
    pub async fn connect(redis_url: &str, namespace: &str) -> Result<Self, FeedError> {
        Self::connect_with(redis_url, namespace, DEFAULT_RECENT_IDS).await
    }

    /// As [`connect`](Self::connect), remembering `recent_ids` notifications.
    pub async fn connect_with(
        redis_url: &str,
        namespace: &str,
        recent_ids: usize,
    ) -> Result<Self, FeedError> {
        let client = Builder::from_config(Config::from_url(redis_url)?)
            .with_performance_config(|perf| perf.broadcast_channel_capacity = 1024)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_subscriber_client()?;
        client.init().await?;
        let channel = super::channel(namespace);
        // Take the receiver before subscribing, so nothing published after SUBSCRIBE returns
        // can be missed.
        let messages = client.message_rx();
        client.subscribe(channel.as_str()).await?;
        let resubscribe = client.manage_subscriptions();
        let (sender, notifications) = mpsc::channel(1024);
        let forward = tokio::spawn(forward(messages, channel, recent_ids, sender));
        Ok(FeedSubscriber {
            notifications,
            client,
            tasks: vec![resubscribe, forward],
        })
    }

    /// The next notification not seen before; `None` once the connection is closed for good.
    pub async fn next(&mut self) -> Option<Notification> {
        self.notifications.recv().await
    }

    /// The notifications as a stream.
    pub fn into_stream(self) -> impl Stream<Item = Notification> {
        futures::stream::unfold(self, |mut this| async move {
            let next = this.next().await?;
            Some((next, this))
        })
    }

    /// Unsubscribes and closes the connection.
    pub async fn close(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        let _ = self.client.quit().await;
    }
}

impl Drop for FeedSubscriber {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if !self.tasks.is_empty() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let client = self.client.clone();
                runtime.spawn(async move {
                    let _ = client.quit().await;
                });
            }
        }
    }
}

/// Parses, deduplicates and passes on what arrives on `channel`.
async fn forward(
    mut messages: broadcast::Receiver<fred::types::Message>,
    channel: String,
    recent_ids: usize,
    sender: mpsc::Sender<Notification>,
) {
    let mut recent = RecentIds::new(recent_ids);
    loop {
        let message = match messages.recv().await {
            Ok(message) => message,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "realtime feed: subscriber fell behind; notifications lost"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if &*message.channel != channel.as_str() {
            continue;
        }
        let Some(text) = message.value.as_str() else {
            continue;
        };
        let notification: Notification = match serde_json::from_str(&text) {
            Ok(notification) => notification,
            Err(error) => {
                tracing::warn!(%error, "realtime feed: not a notification; ignored");
                continue;
            }
        };
        if !recent.insert(notification.key()) {
            tracing::debug!(id = %notification.id, "realtime feed: duplicate dropped");
            continue;
        }
        if sender.send(notification).await.is_err() {
            return;
        }
    }
}
