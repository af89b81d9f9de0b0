//! GraphQL subscriptions over WebSocket (`/graphql/ws`; graphql-transport-ws, and the legacy
//! subscriptions-transport-ws under its `graphql-ws` name).
//!
//! async-graphql's own socket engine runs the operations; this module owns the socket around
//! it and decides what reaches it, because the engine alone keeps the identity presented at
//! `connection_init` for as long as the socket lives and runs queries and mutations too.
//! Here:
//!
//! - `connection_init` must carry a valid, unrevoked access token (`{"authorization":
//!   "Bearer …"}` or `{"token": "…"}`); without one the socket closes with 4403 Forbidden.
//!   Nothing but `connection_init` (and `ping`) is accepted before it (4401 Unauthorized for
//!   an early `subscribe`, as the protocol says), and it must come within 10 s (4408).
//! - The socket carries subscriptions only. A `subscribe` whose document holds a query or a
//!   mutation is answered with an `error` message, code [`SUBSCRIPTIONS_ONLY`], and nothing
//!   runs: queries and mutations go to `POST /graphql`, where every request is checked
//!   afresh.
//! - At most [`MAX_OPERATIONS`] operations live at once per socket (more are refused with
//!   [`TOO_MANY_OPERATIONS`]); a frame or message over [`MAX_FRAME_BYTES`] closes the socket
//!   with 1009 (Message Too Big); a reused live id closes it with 4409, as the protocol says.
//! - The socket closes with **4403 Forbidden** when its token expires, and within moments of
//!   a logout, role change or erasure of its person (a bump of their revocation epoch, see
//!   `auth::revocation`). 4403 and not 4401: the graphql-ws client treats 4401 (meaning a
//!   `subscribe` before the acknowledgement) as fatal and gives up, while after 4403 it
//!   reconnects, asking the application for its `connectionParams` again — which is where a
//!   portal puts a freshly refreshed token. A person who was signed out cannot refresh, so the
//!   reconnect is refused in turn.

use crate::access::Caller;
use crate::auth::revocation::{RevocationError, RECHECK_EVERY};
use crate::auth::tokens::Authenticated;
use crate::graphql::people::UserLoader;
use crate::graphql::{ApiState, RequestInfo, TeachinSchema};
use async_graphql::dataloader::DataLoader;
use async_graphql::http::{WebSocketProtocols as Protocols, WsMessage};
use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// The largest WebSocket frame or message accepted from a client.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// How many operations one socket may have running at once.
pub const MAX_OPERATIONS: usize = 16;
/// The `extensions.code` of a query or mutation sent over the socket.
pub const SUBSCRIPTIONS_ONLY: &str = "SUBSCRIPTIONS_ONLY";
/// The `extensions.code` of a subscription beyond [`MAX_OPERATIONS`].
pub const TOO_MANY_OPERATIONS: &str = "TOO_MANY_OPERATIONS";

/// How long a client has to send `connection_init`.
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Client messages queued for the engine; it drains them each time it is polled, so only a
/// client flooding faster than it is read fills this (and is closed).
const INPUT_CAPACITY: usize = 128;

// graphql-ws close codes (PROTOCOL.md) and the WebSocket ones used here.
const BAD_REQUEST: u16 = 4400;
const UNAUTHORIZED: u16 = 4401;
const FORBIDDEN: u16 = 4403;
const INIT_TIMEOUT_CODE: u16 = 4408;
const SUBSCRIBER_EXISTS: u16 = 4409;
const TOO_MANY_INITS: u16 = 4429;
const INTERNAL: u16 = 4500;
const MESSAGE_TOO_BIG: u16 = 1009;
const POLICY_VIOLATION: u16 = 1008;

/// How the server ends a socket: a close code and reason, or nothing to say.
type Ending = Option<(u16, String)>;

fn close(code: u16, reason: impl Into<String>) -> Ending {
    Some((code, reason.into()))
}

/// Serves one upgraded socket until it ends.
pub(crate) async fn serve(
    mut socket: WebSocket,
    schema: TeachinSchema,
    state: ApiState,
    protocol: Protocols,
    peer: SocketAddr,
) {
    let ending = run(&mut socket, schema, &state, protocol, peer).await;
    if let Some((code, reason)) = ending {
        tracing::debug!(code, %reason, "graphql-ws: closing");
        let sent = socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })))
            .await;
        // Wait briefly for the client's close reply, reading what it still sends, so the
        // close frame is not lost to a reset of a connection with unread data.
        if sent.is_ok() {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                for _ in 0..64 {
                    match socket.recv().await {
                        Some(Ok(Message::Close(_))) | None => break,
                        _ => {}
                    }
                }
            })
            .await;
        }
    }
}

/// How long a closing socket waits for the client's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a client frame was, as far as this module is concerned.
enum Frame {
    Bytes(Vec<u8>),
    Skip,
    End(Ending),
}

fn frame(message: Option<Result<Message, axum::Error>>) -> Frame {
    match message {
        Some(Ok(Message::Text(text))) => Frame::Bytes(text.as_bytes().to_vec()),
        Some(Ok(Message::Binary(bytes))) => Frame::Bytes(bytes.to_vec()),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Frame::Skip,
        Some(Ok(Message::Close(_))) | None => Frame::End(None),
        Some(Err(error)) => {
            // tungstenite reports a frame or message over the configured limit as a
            // capacity error ("Space limit exceeded: Message too long: …"); axum only hands
            // it on as text.
            let text = error.to_string();
            if text.contains("Message too long") || text.contains("Space limit exceeded") {
                Frame::End(close(
                    MESSAGE_TOO_BIG,
                    format!("Message Too Big: the limit is {MAX_FRAME_BYTES} bytes"),
                ))
            } else {
                Frame::End(None)
            }
        }
    }
}

async fn run(
    socket: &mut WebSocket,
    schema: TeachinSchema,
    state: &ApiState,
    protocol: Protocols,
    peer: SocketAddr,
) -> Ending {
    let revocations = state.sessions.revocations().clone();
    // Subscribed before the token is checked, so a bump in between is not missed.
    let mut revoked = revocations.watch();

    // ---- connection_init -----------------------------------------------------------------
    let deadline = Instant::now() + INIT_TIMEOUT;
    let (init, payload) = loop {
        let message = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Ok(message) => message,
            Err(_) => return close(INIT_TIMEOUT_CODE, "Connection initialisation timeout"),
        };
        let bytes = match frame(message) {
            Frame::Bytes(bytes) => bytes,
            Frame::Skip => continue,
            Frame::End(ending) => return ending,
        };
        let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
            return close(BAD_REQUEST, "Invalid message received");
        };
        match message["type"].as_str() {
            Some("connection_init") => break (bytes, message["payload"].clone()),
            Some("ping") => {
                let pong = json!({ "type": "pong" }).to_string();
                if socket.send(Message::Text(pong.into())).await.is_err() {
                    return None;
                }
            }
            Some("subscribe" | "start") => return close(UNAUTHORIZED, "Unauthorized"),
            _ => return close(BAD_REQUEST, "Invalid message received"),
        }
    };
    let Some(token) = token_of(&payload) else {
        return close(
            FORBIDDEN,
            "Forbidden: connection_init must carry an access token",
        );
    };
    let who = match state.tokens.verify(&token) {
        Ok(who) => who,
        Err(_) => {
            return close(
                FORBIDDEN,
                "Forbidden: the access token is not valid or has expired",
            )
        }
    };
    match revocations.check(&who).await {
        Ok(()) => {}
        Err(RevocationError::Revoked) => {
            return close(FORBIDDEN, "Forbidden: the access token was revoked")
        }
        Err(RevocationError::Store(error)) => {
            tracing::warn!(%error, "graphql-ws: revocation epoch unreadable");
            return close(INTERNAL, "Internal server error");
        }
    }

    // ---- the engine ----------------------------------------------------------------------
    let mut data = Data::default();
    data.insert(RequestInfo {
        caller: Caller::from_token(Some(who)),
        request_id: uuid::Uuid::new_v4().to_string(),
        client_ip: peer.ip().to_string(),
        cookies: Vec::new(),
        csrf_header: None,
    });
    data.insert(DataLoader::new(
        UserLoader(state.read.clone()),
        tokio::spawn,
    ));
    let (mut input, input_rx) = futures::channel::mpsc::channel::<Vec<u8>>(INPUT_CAPACITY);
    let mut engine = Box::pin(
        async_graphql::http::WebSocket::new(schema, input_rx, protocol)
            .on_connection_init(move |_| async move { Ok(data) }),
    );
    // The engine answers the init with `connection_ack`.
    if input.try_send(init).is_err() {
        return close(INTERNAL, "Internal server error");
    }

    let token_left = (who.expires_at - Utc::now()).to_std().unwrap_or_default();
    let expiry = tokio::time::sleep(token_left);
    tokio::pin!(expiry);
    let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut live: HashSet<String> = HashSet::new();

    loop {
        tokio::select! {
            message = socket.recv() => {
                let bytes = match frame(message) {
                    Frame::Bytes(bytes) => bytes,
                    Frame::Skip => continue,
                    Frame::End(ending) => return ending,
                };
                match admit(&bytes, &mut live, protocol) {
                    Admit::Forward => {
                        if input.try_send(bytes).is_err() {
                            return close(POLICY_VIOLATION, "Too many messages at once");
                        }
                    }
                    Admit::Answer(text) => {
                        if socket.send(Message::Text(text.into())).await.is_err() {
                            return None;
                        }
                    }
                    Admit::Close(ending) => return ending,
                }
            }
            out = engine.next() => match out {
                Some(WsMessage::Text(text)) => {
                    if let Some(id) = finished(&text) {
                        live.remove(&id);
                    }
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return None;
                    }
                }
                Some(WsMessage::Close(code, reason)) => return close(code, reason),
                None => return close(1000, "Normal Closure"),
            },
            _ = &mut expiry => {
                return close(FORBIDDEN, "Forbidden: the access token has expired; refresh it and reconnect");
            }
            bump = revoked.recv() => match bump {
                Ok(bump) if bump.user == who.user_id && bump.epoch > who.epoch => {
                    return close(FORBIDDEN, "Forbidden: the access token was revoked");
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    if let Some(ending) = still_valid(state, &who).await {
                        return ending;
                    }
                }
                Err(RecvError::Closed) => {}
            },
            _ = recheck.tick() => {
                if let Some(ending) = still_valid(state, &who).await {
                    return ending;
                }
            }
        }
    }
}

/// Reads the epoch again; `Some` when the socket must close. An unreadable store keeps the
/// socket open (the next check, or the published bump, decides).
async fn still_valid(state: &ApiState, who: &Authenticated) -> Option<Ending> {
    match state.sessions.revocations().check(who).await {
        Ok(()) => None,
        Err(RevocationError::Revoked) => {
            Some(close(FORBIDDEN, "Forbidden: the access token was revoked"))
        }
        Err(RevocationError::Store(error)) => {
            tracing::warn!(%error, "graphql-ws: revocation epoch unreadable");
            None
        }
    }
}

/// The access token of a `connection_init` payload.
fn token_of(payload: &Value) -> Option<String> {
    payload
        .get("authorization")
        .or_else(|| payload.get("Authorization"))
        .and_then(Value::as_str)
        .map(|v| v.trim_start_matches("Bearer ").trim().to_owned())
        .or_else(|| {
            payload
                .get("token")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
}

/// What to do with a client message after `connection_init`.
enum Admit {
    /// Hand it to the engine.
    Forward,
    /// Answer it here; the engine never sees it.
    Answer(String),
    Close(Ending),
}

fn admit(bytes: &[u8], live: &mut HashSet<String>, protocol: Protocols) -> Admit {
    let Ok(message) = serde_json::from_slice::<Value>(bytes) else {
        return Admit::Close(close(BAD_REQUEST, "Invalid message received"));
    };
    match message["type"].as_str() {
        Some("connection_init") => {
            Admit::Close(close(TOO_MANY_INITS, "Too many initialisation requests"))
        }
        Some("subscribe" | "start") => {
            let Some(id) = message["id"].as_str() else {
                return Admit::Close(close(BAD_REQUEST, "Invalid message received: no id"));
            };
            if live.contains(id) {
                return Admit::Close(close(
                    SUBSCRIBER_EXISTS,
                    format!("Subscriber for {id} already exists"),
                ));
            }
            let query = message["payload"]["query"].as_str().unwrap_or_default();
            if !subscriptions_only(query) {
                return Admit::Answer(refusal(
                    protocol,
                    id,
                    SUBSCRIPTIONS_ONLY,
                    "this socket carries subscriptions only: send queries and mutations to POST /graphql",
                ));
            }
            if live.len() >= MAX_OPERATIONS {
                return Admit::Answer(refusal(
                    protocol,
                    id,
                    TOO_MANY_OPERATIONS,
                    &format!(
                        "a socket may run {MAX_OPERATIONS} operations at once; complete one first"
                    ),
                ));
            }
            live.insert(id.to_owned());
            Admit::Forward
        }
        Some("complete" | "stop") => {
            if let Some(id) = message["id"].as_str() {
                live.remove(id);
            }
            Admit::Forward
        }
        _ => Admit::Forward,
    }
}

/// False when the document holds a query or a mutation. A document that does not parse is
/// let through: the engine answers it with the parse error and runs nothing.
fn subscriptions_only(query: &str) -> bool {
    use async_graphql::parser::types::OperationType;
    match async_graphql::parser::parse_query(query) {
        Ok(document) => document
            .operations
            .iter()
            .all(|(_, op)| op.node.ty == OperationType::Subscription),
        Err(_) => true,
    }
}

/// An `error` message for operation `id`, which ends it (nothing else is sent for it).
fn refusal(protocol: Protocols, id: &str, code: &str, message: &str) -> String {
    let error = json!({ "message": message, "extensions": { "code": code } });
    let payload = match protocol {
        // graphql-transport-ws: a list of GraphQL errors.
        Protocols::GraphQLWS => json!([error]),
        // subscriptions-transport-ws: one error.
        Protocols::SubscriptionsTransportWS => error,
    };
    json!({ "id": id, "type": "error", "payload": payload }).to_string()
}

/// The id of the operation an engine message ends (`complete` or `error`). serde writes the
/// `type` tag first, so other messages are told apart without parsing their payloads.
fn finished(text: &str) -> Option<String> {
    if !(text.starts_with(r#"{"type":"complete""#) || text.starts_with(r#"{"type":"error""#)) {
        return None;
    }
    serde_json::from_str::<Value>(text).ok()?["id"]
        .as_str()
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_subscription_documents_pass() {
        assert!(subscriptions_only("subscription { notifications { id } }"));
        assert!(!subscriptions_only("{ me { id } }"));
        assert!(!subscriptions_only("mutation { logout }"));
        assert!(!subscriptions_only(
            "subscription A { notifications { id } } query B { me { id } }"
        ));
        assert!(subscriptions_only("not graphql"));
    }

    #[test]
    fn the_cap_and_a_reused_id() {
        let mut live = HashSet::new();
        let subscribe = |id: usize| {
            json!({ "id": id.to_string(), "type": "subscribe",
                    "payload": { "query": "subscription { notifications { id } }" } })
            .to_string()
        };
        for id in 0..MAX_OPERATIONS {
            assert!(matches!(
                admit(subscribe(id).as_bytes(), &mut live, Protocols::GraphQLWS),
                Admit::Forward
            ));
        }
        match admit(
            subscribe(MAX_OPERATIONS).as_bytes(),
            &mut live,
            Protocols::GraphQLWS,
        ) {
            Admit::Answer(text) => assert!(text.contains(TOO_MANY_OPERATIONS), "{text}"),
            _ => panic!("the cap let one more through"),
        }
        assert!(matches!(
            admit(subscribe(0).as_bytes(), &mut live, Protocols::GraphQLWS),
            Admit::Close(Some((SUBSCRIBER_EXISTS, _)))
        ));
        assert_eq!(
            finished(r#"{"type":"complete","id":"3"}"#).as_deref(),
            Some("3")
        );
        assert_eq!(finished(r#"{"type":"next","id":"3","payload":{}}"#), None);
    }
}
