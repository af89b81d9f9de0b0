//! The HTTP side of the SignalR transport protocol: `POST …/negotiate` and the WebSocket
//! `GET` that follows it.
//!
//! Why authenticate twice: negotiate is where a client learns it is not welcome (the stock
//! client surfaces a 401 there), and the WebSocket request is a separate HTTP request that
//! anyone could make with a leaked connection token, so it must carry the JWT again — in the
//! `access_token` query parameter (browsers cannot set headers on WebSockets) or an
//! `Authorization: Bearer` header (the Node client does that). The connection token binds the
//! socket to the user that negotiated, is single-use, and expires unused; it lives in Redis
//! so negotiate and the socket may land on different replicas (no sticky sessions needed).
//!
//! Only WebSockets with the text (JSON) format are offered; Server-Sent Events and long
//! polling are not, since every supported browser has WebSockets.

use super::connection;
use super::notification_hub::{NotificationHub, PendingConnection};
use super::protocol::MAX_RECORD_BYTES;
use crate::auth::revocation::RevocationError;
use crate::auth::sessions::random_token;
use crate::auth::tokens::{Authenticated, TokenError};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use teachin_domain::actor::Role;
use teachin_projections::feed::ADMINS_GROUP;

/// The query string of both requests.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HubQuery {
    /// The connection token from negotiate (absent when the client skipped negotiate).
    id: Option<String>,
    access_token: Option<String>,
    #[serde(rename = "negotiateVersion")]
    negotiate_version: Option<u32>,
}

/// `POST /hubs/notifications/negotiate?negotiateVersion=1`.
pub(crate) async fn negotiate(
    State(hub): State<NotificationHub>,
    Query(query): Query<HubQuery>,
    headers: HeaderMap,
) -> Response {
    let who = match authenticate(&hub, &headers, query.access_token.as_deref()) {
        Ok(who) => who,
        Err(refusal) => return unauthorized(refusal.as_ref()),
    };
    if let Err(refusal) = unrevoked(&hub, &who).await {
        return refusal;
    }
    if hub.is_shutting_down() {
        return unavailable("the server is shutting down");
    }
    if let Some(azure) = hub.azure() {
        // Azure keeps a user's group memberships across connections, so they follow the
        // role in the token each time: an admin is added before connecting; anyone else is
        // taken out (in the background, it only matters for a demoted admin).
        if who.role == Role::Admin {
            if let Err(error) = azure.add_user_to_group(ADMINS_GROUP, who.user_id).await {
                tracing::warn!(%error, user = %who.user_id, "hub: admin not added to the Azure Admins group");
            }
        } else {
            let (azure, user) = (azure.clone(), who.user_id);
            tokio::spawn(async move {
                if let Err(error) = azure.remove_user_from_group(ADMINS_GROUP, user).await {
                    tracing::warn!(%error, %user, "hub: user not removed from the Azure Admins group");
                }
            });
        }
        return Json(azure.redirect(who.user_id, who.expires_at)).into_response();
    }

    // Version 0 clients use the connection id itself as the token.
    let version = query.negotiate_version.unwrap_or(0).min(1);
    let connection_id = random_token();
    let token = if version >= 1 {
        random_token()
    } else {
        connection_id.clone()
    };
    let pending = PendingConnection {
        connection_id: connection_id.clone(),
        user: who.user_id,
    };
    if let Err(error) = hub.store_connection_token(&token, &pending).await {
        tracing::warn!(%error, "hub: connection token not stored");
        return unavailable("the hub cannot accept connections right now");
    }
    let mut body = json!({
        "negotiateVersion": version,
        "connectionId": connection_id,
        "availableTransports": [{ "transport": "WebSockets", "transferFormats": ["Text"] }],
    });
    if version >= 1 {
        body["connectionToken"] = json!(token);
    }
    Json(body).into_response()
}

/// `GET /hubs/notifications?id=<connection token>&access_token=<jwt>`, upgraded to a
/// WebSocket.
pub(crate) async fn connect(
    State(hub): State<NotificationHub>,
    Query(query): Query<HubQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let who = match authenticate(&hub, &headers, query.access_token.as_deref()) {
        Ok(who) => who,
        Err(refusal) => return unauthorized(refusal.as_ref()),
    };
    // Watching before the check, so a bump in between still closes the socket.
    let revoked = hub.revocations().watch();
    if let Err(refusal) = unrevoked(&hub, &who).await {
        return refusal;
    }
    if hub.azure().is_some() {
        return (
            StatusCode::NOT_FOUND,
            "this hub is served by Azure SignalR: negotiate first",
        )
            .into_response();
    }
    if hub.is_shutting_down() {
        return unavailable("the server is shutting down");
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "WebSockets is the only transport this hub offers",
            )
                .into_response()
        }
    };
    let connection_id = match query.id {
        Some(token) => match hub.redeem_connection_token(&token).await {
            Ok(Some(pending)) if pending.user == who.user_id => pending.connection_id,
            // Unknown, used, expired, or another user's: all look the same from outside.
            Ok(_) => return (StatusCode::NOT_FOUND, "No Connection with that ID").into_response(),
            Err(error) => {
                tracing::warn!(%error, "hub: connection token not checked");
                return unavailable("the hub cannot accept connections right now");
            }
        },
        // `skipNegotiation: true`: the socket is its own connection.
        None => random_token(),
    };
    upgrade
        .max_message_size(MAX_RECORD_BYTES * 2)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .on_upgrade(move |socket| connection::serve(socket, hub, who, connection_id, revoked))
}

/// A socket's read buffer. tungstenite allocates 128 KiB per socket by default, which made
/// 1,000 mostly idle connections cost the manager ~170 MiB (bench); clients send little (a
/// handshake, pings, an occasional invocation), and a bigger message still arrives, in more
/// reads.
pub const SOCKET_READ_BUFFER: usize = 4 * 1024;

/// The caller's access token, from `Authorization: Bearer` or the `access_token` query.
/// Refused with why (`None`: no token at all).
fn authenticate(
    hub: &NotificationHub,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Authenticated, Option<TokenError>> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = from_header.or(query_token).filter(|t| !t.is_empty()) else {
        return Err(None);
    };
    hub.tokens().verify(token).map_err(|error| {
        tracing::debug!(%error, "hub: token refused");
        Some(error)
    })
}

/// Refuses a token issued before its person's current revocation epoch (logout, role
/// change, erasure), like an invalid one.
async fn unrevoked(hub: &NotificationHub, who: &Authenticated) -> Result<(), Response> {
    match hub.revocations().check(who).await {
        Ok(()) => Ok(()),
        Err(RevocationError::Revoked) => Err((
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(
                    "Bearer error=\"invalid_token\", error_description=\"The token was revoked\"",
                ),
            )],
        )
            .into_response()),
        Err(RevocationError::Store(error)) => {
            tracing::warn!(%error, "hub: revocation epoch unreadable");
            Err(unavailable("the hub cannot accept connections right now"))
        }
    }
}

fn unauthorized(error: Option<&TokenError>) -> Response {
    let challenge = match error {
        None => "Bearer",
        Some(TokenError::Expired) => {
            "Bearer error=\"invalid_token\", error_description=\"The token expired\""
        }
        Some(TokenError::Invalid(_)) => "Bearer error=\"invalid_token\"",
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )],
    )
        .into_response()
}

fn unavailable(why: &'static str) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}
