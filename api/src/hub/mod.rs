//! The SignalR hub browsers connect to for realtime pushes (DESIGN.md decision 5; original
//! §5): `/hubs/notifications`, speaking the real ASP.NET Core SignalR protocols so the stock
//! `@microsoft/signalr` client works unchanged — negotiate (version 1, single-use connection
//! tokens), WebSockets, the JSON hub protocol (handshake, `0x1E` records, invocations,
//! pings, close), the JWT from `access_token` or `Authorization: Bearer`.
//!
//! Why it is built this way: the accessor publishes notifications derived from the event log
//! to Redis (`teachin_projections::feed`), and any manager replica may hold a given user's
//! socket, so every replica subscribes and delivers to the connections *it* holds. Pushes
//! that start in a replica (presence, later streamed tutor replies) cross replicas over a
//! sibling Redis channel. Presence lives in Redis with per-connection leases, so a crashed
//! replica's users drop offline by themselves. With Azure SignalR configured, sockets are held
//! by Azure: negotiate redirects there and pushes become REST calls.
//!
//! ```text
//! accessor ─PUBLISH teachin:{ns}:feed─▶ Redis ─▶ run_feed (every replica) ─▶ NotificationHub
//! replica  ─PUBLISH teachin:{ns}:hub──▶ Redis ─▶ run_feed (every replica) ─┘   │ registry by
//!                                                                              ▼ user / group
//! browser ─POST negotiate─▶ router ─GET ws─▶ connection task ◀── outbox ── local connections
//! ```
//!
//! # Mounting it
//!
//! ```ignore
//! use teachin_api::hub::{self, AzureSignalR, HubConfig, NotificationHub};
//!
//! let redis = /* a connected fred::prelude::Client */;
//! let azure = std::env::var("Azure__SignalR__ConnectionString").ok()
//!     .map(|s| AzureSignalR::from_connection_string(&s)).transpose()?;
//! let hub = NotificationHub::new(tokens.clone(), redis, HubConfig::new(&namespace), azure);
//! hub.set_display_names(read_models.clone()); // names in UserOnline; optional
//! let app = Router::new().merge(hub::router(hub.clone())) /* .merge(graphql…) */;
//! tokio::spawn(hub::run_feed(hub.clone(), &redis_url, shutdown_rx.clone()));
//! // /metrics: hub.connections() is the connected-clients gauge;
//! // /readyz: hub.is_subscribed(); GraphQL `onlineUsers`: hub.online_users().await
//! ```
//!
//! `run_feed` must run for pushes to arrive (it is also what delivers `send_to_user` and
//! presence across replicas, and renews presence leases); when its shutdown signal turns
//! true it closes every socket with "Server is shutting down." and `allowReconnect`, so
//! clients move to another replica.
//!
//! # Modules
//!
//! - `protocol` — the JSON hub protocol: record framing, parsing, the messages sent.
//! - `transport` — negotiate and the WebSocket upgrade (authentication, connection tokens).
//! - `connection` — one socket's life: handshake, hub methods, pings, timeouts, close.
//! - `registry` — this replica's connections by user and group.
//! - `notification_hub` — [`NotificationHub`], routing pushes locally, via the backplane or
//!   via Azure; connection tokens; presence announcements.
//! - `presence` — online users in Redis with leases.
//! - `feed` — [`run_feed`]: the Redis subscriptions and presence upkeep.
//! - `azure` — [`AzureSignalR`]: connection string, negotiate redirect, REST pushes.
//! - `stream` — the hub as the `StreamPush` of streamed tutor replies (`StreamEvent`).

mod azure;
mod connection;
mod feed;
mod notification_hub;
mod presence;
pub mod protocol;
mod registry;
mod stream;
pub(crate) mod transport;

pub use azure::{AzureError, AzureSignalR, Redirect, AZURE_HUB};
pub use feed::run_feed;
pub use notification_hub::{
    backplane_channel, DisplayNames, HubConfig, HubError, NotificationHub, UPDATE_USER_CONNECTIONS,
    USER_OFFLINE, USER_ONLINE,
};
pub use presence::OnlineUser;
pub use stream::STREAM_EVENT;
pub use teachin_projections::feed::ADMINS_GROUP;

use axum::routing::{get, post};
use axum::Router;

/// Where the hub is served.
pub const HUB_PATH: &str = "/hubs/notifications";

/// The hub's routes: `POST /hubs/notifications/negotiate` and `GET /hubs/notifications`
/// (the WebSocket).
pub fn router(hub: NotificationHub) -> Router {
    Router::new()
        .route(&format!("{HUB_PATH}/negotiate"), post(transport::negotiate))
        .route(HUB_PATH, get(transport::connect))
        .with_state(hub)
}
