//! The hub's background task: what arrives from Redis goes out to this replica's sockets, and
//! presence leases stay fresh.
//!
//! Why one task for three jobs: each is a loop over Redis on the replica's behalf, and they
//! share one lifetime — started with the server, stopped (after closing every socket) when it
//! shuts down. Two subscriptions are held:
//!
//! - the accessor's feed, `teachin:{ns}:feed`, through [`FeedSubscriber`] (duplicates
//!   dropped by `(id, part)`): notifications from the event log, also handed to this
//!   replica's GraphQL subscriptions when they are attached (`feed_subscriptions`);
//! - the hub backplane, `teachin:{ns}:hub`: pushes another replica made with
//!   `send_to_user` / `send_to_group` (presence changes among them; with Azure SignalR those
//!   go to Azure directly), and revocation bumps (`auth::revocation`), handed to this
//!   replica's hub connections and graphql-ws sockets.

use super::notification_hub::{backplane_channel, Envelope, HubError, NotificationHub};
use crate::auth::revocation::Revoked;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config, EventInterface, PubsubInterface, ReconnectPolicy,
};
use std::time::Duration;
use teachin_projections::feed::FeedSubscriber;
use tokio::sync::{broadcast, watch};

/// Runs until `shutdown` turns true (or its sender is dropped), then closes every
/// connection of this replica (see [`NotificationHub::shutdown`]). When Redis is unreachable
/// — at start or later — it logs, waits (with back-off, up to 5 s) and subscribes again, so
/// the caller only has to spawn it once.
pub async fn run_feed(hub: NotificationHub, redis_url: &str, mut shutdown: watch::Receiver<bool>) {
    let mut delay = RETRY_MIN;
    loop {
        match serve(&hub, redis_url, &mut shutdown).await {
            Ok(()) => break,
            Err(error) => {
                hub.set_subscribed(false);
                tracing::warn!(%error, retry_in = ?delay, "hub: feed subscription failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown_requested(&mut shutdown) => break,
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
    hub.set_subscribed(false);
    hub.shutdown().await;
}

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Subscribes and delivers until shutdown (`Ok`) or until a subscription fails (`Err`).
async fn serve(
    hub: &NotificationHub,
    redis_url: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), HubError> {
    let mut feed = FeedSubscriber::connect(redis_url, hub.namespace()).await?;
    // With Azure SignalR no push crosses the backplane, but revocation bumps still do (for
    // this replica's graphql-ws sockets), so it is always read.
    let mut backplane = Some(Backplane::subscribe(redis_url, hub.namespace()).await?);
    hub.set_subscribed(true);
    tracing::info!(
        namespace = hub.namespace(),
        azure = hub.azure().is_some(),
        "hub: subscribed to the feed"
    );

    let mut presence = tokio::time::interval(hub.config().presence_refresh);
    presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            _ = shutdown_requested(shutdown) => break Ok(()),
            notification = feed.next() => {
                let Some(notification) = notification else {
                    break Err(HubError::FeedClosed);
                };
                hub.forward_to_subscriptions(&notification);
                if let Err(error) = hub.deliver(&notification).await {
                    tracing::warn!(%error, id = %notification.id, "hub: notification not delivered");
                }
            }
            message = next_envelope(&mut backplane) => match message {
                BackplaneMessage::Push(envelope) => {
                    hub.deliver_envelope(&envelope);
                }
                BackplaneMessage::Revoked(revoked) => hub.revocations().announce(revoked),
            },
            _ = presence.tick(), if hub.azure().is_none() => {
                hub.maintain_presence().await;
            }
        }
    };
    feed.close().await;
    if let Some(backplane) = backplane {
        backplane.close().await;
    }
    outcome
}

/// What crosses the backplane: a push, or a revocation bump (`auth::revocation`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum BackplaneMessage {
    Push(Envelope),
    Revoked(Revoked),
}

async fn next_envelope(backplane: &mut Option<Backplane>) -> BackplaneMessage {
    match backplane {
        Some(backplane) => backplane.next().await,
        None => std::future::pending().await,
    }
}

/// The subscription to `teachin:{ns}:hub`.
struct Backplane {
    client: SubscriberClient,
    messages: broadcast::Receiver<fred::types::Message>,
    channel: String,
    resubscribe: tokio::task::JoinHandle<()>,
}

impl Backplane {
    async fn subscribe(redis_url: &str, namespace: &str) -> Result<Self, HubError> {
        let client = Builder::from_config(Config::from_url(redis_url)?)
            .with_performance_config(|perf| perf.broadcast_channel_capacity = 1024)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build_subscriber_client()?;
        client.init().await?;
        let channel = backplane_channel(namespace);
        // The receiver exists before SUBSCRIBE returns, so nothing published after is missed.
        let messages = client.message_rx();
        client.subscribe(channel.as_str()).await?;
        let resubscribe = client.manage_subscriptions();
        Ok(Backplane {
            client,
            messages,
            channel,
            resubscribe,
        })
    }

    /// The next well-formed message; waits forever once the connection is gone for good.
    async fn next(&mut self) -> BackplaneMessage {
        loop {
            let message = match self.messages.recv().await {
                Ok(message) => message,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "hub: backplane fell behind; pushes lost");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            };
            if &*message.channel != self.channel.as_str() {
                continue;
            }
            let Some(text) = message.value.as_str() else {
                continue;
            };
            match serde_json::from_str(&text) {
                Ok(envelope) => return envelope,
                Err(error) => tracing::warn!(%error, "hub: not a backplane envelope; ignored"),
            }
        }
    }

    async fn close(self) {
        self.resubscribe.abort();
        let _ = self.client.quit().await;
    }
}
