//! One browser's WebSocket, from handshake to close.
//!
//! Why one task per socket that both reads and writes: the socket then has a single owner,
//! no lock, and every reason to end a connection — the client left, its token expired, it
//! went silent, it fell behind, the server is shutting down — is one branch of one `select!`,
//! each ending with the close message the client needs to decide whether to reconnect.
//! Pushes from elsewhere only reach the socket through the connection's bounded outbox
//! (see `registry`); frames waiting there together are written as one WebSocket frame.

use super::notification_hub::NotificationHub;
use super::protocol::{self, Incoming, RecordBuffer};
use super::registry::{LocalConnection, OUTBOX_CAPACITY};
use crate::auth::revocation::{RevocationError, Revoked, RECHECK_EVERY};
use crate::auth::tokens::Authenticated;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use chrono::Utc;
use std::sync::Arc;
use teachin_domain::actor::Role;
use teachin_projections::feed::ADMINS_GROUP;
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::time::Instant;

/// Why a connection whose person was signed out, changed role or was erased is closed; the
/// client may reconnect, with a refreshed token (which a signed-out person cannot get).
const REVOKED: &str = "Unauthorized: the access token was revoked.";

/// Frames waiting in the outbox are joined into one WebSocket frame up to about this size.
const BATCH_BYTES: usize = 64 * 1024;

/// Why the server ends a connection.
#[derive(Debug)]
enum Ending {
    /// The client closed, vanished, or sent a close message: nothing more to say.
    ClientGone,
    /// Tell the client why, and whether reconnecting makes sense.
    Close {
        error: String,
        allow_reconnect: bool,
    },
}

impl Ending {
    fn retry(error: &str) -> Self {
        Ending::Close {
            error: error.to_owned(),
            allow_reconnect: true,
        }
    }

    fn fatal(error: String) -> Self {
        Ending::Close {
            error,
            allow_reconnect: false,
        }
    }
}

pub(crate) async fn serve(
    mut socket: WebSocket,
    hub: NotificationHub,
    who: Authenticated,
    id: String,
    mut revoked: broadcast::Receiver<Revoked>,
) {
    let mut buffer = RecordBuffer::default();
    let early = match handshake(&mut socket, &mut buffer, &hub).await {
        Some(early) => early,
        None => {
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };

    // Registered before the handshake answer goes out, so a push sent the moment the
    // client's `start()` resolves already finds the connection.
    let (outbox, mut outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
    let overflow = Arc::new(Notify::new());
    hub.register(
        &id,
        LocalConnection {
            user: who.user_id,
            role: who.role,
            outbox,
            overflow: overflow.clone(),
        },
    );
    tracing::debug!(connection = %id, user = %who.user_id, "hub: connected");

    let ending = if socket
        .send(Message::Text(protocol::handshake_ok().into()))
        .await
        .is_err()
    {
        Ending::ClientGone
    } else {
        hub.presence_connected(&id, who.user_id, who.role).await;
        match handle_records(&mut socket, &hub, &who, &id, early).await {
            Err(ending) => ending,
            Ok(()) => {
                run(
                    &mut socket,
                    &hub,
                    &who,
                    &id,
                    &mut buffer,
                    &mut outbox_rx,
                    &overflow,
                    &mut revoked,
                )
                .await
            }
        }
    };

    hub.unregister(&id);
    if let Ending::Close {
        error,
        allow_reconnect,
    } = &ending
    {
        tracing::debug!(connection = %id, %error, "hub: closing");
        let _ = socket
            .send(Message::Text(
                protocol::close(Some(error), *allow_reconnect).into(),
            ))
            .await;
        let _ = socket
            .send(Message::Close(Some(CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            })))
            .await;
    }
    hub.presence_disconnected(&id, who.user_id, who.role).await;
    tracing::debug!(connection = %id, user = %who.user_id, "hub: disconnected");
}

/// Reads the handshake request and answers a refusal; on success returns the records that
/// came after it in the same frames (the caller answers success once registered).
async fn handshake(
    socket: &mut WebSocket,
    buffer: &mut RecordBuffer,
    hub: &NotificationHub,
) -> Option<Vec<String>> {
    let deadline = Instant::now() + hub.config().handshake_timeout;
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.recv()).await {
            Ok(Some(Ok(message))) => message,
            Ok(_) => return None,
            Err(_) => {
                tracing::debug!("hub: no handshake in time");
                return None;
            }
        };
        let text = match message {
            Message::Text(text) => text.to_string(),
            // A MessagePack client sends its (JSON) handshake in a binary frame.
            Message::Binary(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return None,
        };
        let mut records = match buffer.push(&text) {
            Ok(records) => records,
            Err(too_large) => {
                let _ = socket
                    .send(Message::Text(
                        protocol::handshake_error(&too_large.to_string()).into(),
                    ))
                    .await;
                return None;
            }
        };
        if records.is_empty() {
            continue;
        }
        let request = records.remove(0);
        return match protocol::check_handshake(&request) {
            Ok(()) => Some(records),
            Err(error) => {
                let _ = socket
                    .send(Message::Text(protocol::handshake_error(&error).into()))
                    .await;
                None
            }
        };
    }
}

/// The life of an established connection; returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn run(
    socket: &mut WebSocket,
    hub: &NotificationHub,
    who: &Authenticated,
    id: &str,
    buffer: &mut RecordBuffer,
    outbox: &mut mpsc::Receiver<Arc<str>>,
    overflow: &Notify,
    revoked: &mut broadcast::Receiver<Revoked>,
) -> Ending {
    let config = hub.config().clone();
    let mut last_received = Instant::now();
    let mut keep_alive =
        tokio::time::interval_at(Instant::now() + config.keep_alive, config.keep_alive);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let token_left = (who.expires_at - Utc::now()).to_std().unwrap_or_default();
    let expiry = tokio::time::sleep(token_left);
    tokio::pin!(expiry);
    let mut shutdown = hub.shutdown_signal();
    // A bump published on the backplane closes the connection at once; reading the epoch
    // again now and then covers a bump whose message was lost (pub/sub is at-most-once).
    let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK_EVERY, RECHECK_EVERY);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            message = socket.recv() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Binary(bytes))) => match String::from_utf8(bytes.to_vec()) {
                        Ok(text) => text,
                        Err(_) => return Ending::fatal(
                            "Connection closed with an error. The JSON protocol is text; a binary frame is not UTF-8.".into(),
                        ),
                    },
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                        last_received = Instant::now();
                        continue;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Ending::ClientGone,
                };
                last_received = Instant::now();
                let records = match buffer.push(&text) {
                    Ok(records) => records,
                    Err(too_large) => return Ending::fatal(format!("Connection closed with an error. {too_large}")),
                };
                if let Err(ending) = handle_records(socket, hub, who, id, records).await {
                    return ending;
                }
            }
            Some(first) = outbox.recv() => {
                let mut text = String::from(&*first);
                while text.len() < BATCH_BYTES {
                    match outbox.try_recv() {
                        Ok(more) => text.push_str(&more),
                        Err(_) => break,
                    }
                }
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return Ending::ClientGone;
                }
            }
            _ = keep_alive.tick() => {
                if last_received.elapsed() > config.client_timeout {
                    return Ending::retry("Server timeout elapsed without receiving a message from the client.");
                }
                if socket.send(Message::Text(protocol::ping().into())).await.is_err() {
                    return Ending::ClientGone;
                }
            }
            _ = &mut expiry => {
                return Ending::retry("Unauthorized: the access token has expired.");
            }
            bump = revoked.recv() => match bump {
                Ok(bump) if bump.user == who.user_id && bump.epoch > who.epoch => {
                    return Ending::retry(REVOKED);
                }
                Ok(_) | Err(broadcast::error::RecvError::Closed) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if matches!(hub.revocations().check(who).await, Err(RevocationError::Revoked)) {
                        return Ending::retry(REVOKED);
                    }
                }
            },
            _ = recheck.tick() => {
                if matches!(hub.revocations().check(who).await, Err(RevocationError::Revoked)) {
                    return Ending::retry(REVOKED);
                }
            }
            _ = overflow.notified() => {
                return Ending::retry("The connection fell behind the messages sent to it.");
            }
            _ = shutting_down(&mut shutdown) => {
                return Ending::retry("Server is shutting down.");
            }
        }
    }
}

/// Handles complete records from the client, answering invocations that want an answer.
async fn handle_records(
    socket: &mut WebSocket,
    hub: &NotificationHub,
    who: &Authenticated,
    id: &str,
    records: Vec<String>,
) -> Result<(), Ending> {
    for record in records {
        let message = protocol::parse(&record)
            .map_err(|e| Ending::fatal(format!("Connection closed with an error. {e}")))?;
        let answer = match message {
            Incoming::Invocation {
                invocation_id,
                target,
                arguments,
            } => {
                let outcome = invoke(hub, who, id, &target, arguments.len());
                if let Err(error) = &outcome {
                    tracing::debug!(connection = %id, %target, %error, "hub: invocation refused");
                }
                invocation_id.map(|invocation| match outcome {
                    Ok(()) => protocol::completion_ok(&invocation),
                    Err(error) => protocol::completion_error(&invocation, &error),
                })
            }
            Incoming::StreamInvocation { invocation_id } => invocation_id.map(|invocation| {
                protocol::completion_error(&invocation, "This hub has no streaming methods.")
            }),
            Incoming::Ping | Incoming::Ignored { .. } => None,
            Incoming::Close { .. } => return Err(Ending::ClientGone),
        };
        if let Some(answer) = answer {
            socket
                .send(Message::Text(answer.into()))
                .await
                .map_err(|_| Ending::ClientGone)?;
        }
    }
    Ok(())
}

/// The hub methods a client may call: the original's `SubscribeAdmin` and
/// `UnSubscribeAdmin` (admins only; admins are subscribed on connect anyway). Names match
/// case-insensitively, as in ASP.NET Core.
fn invoke(
    hub: &NotificationHub,
    who: &Authenticated,
    id: &str,
    target: &str,
    argument_count: usize,
) -> Result<(), String> {
    let subscribe = match target.to_ascii_lowercase().as_str() {
        "subscribeadmin" => true,
        "unsubscribeadmin" => false,
        _ => return Err(format!("Unknown hub method '{target}'")),
    };
    if argument_count != 0 {
        return Err(format!(
            "Failed to invoke '{target}' due to an error on the server. InvalidDataException: Invocation provides {argument_count} argument(s) but target expects 0."
        ));
    }
    if who.role != Role::Admin {
        return Err(format!(
            "Failed to invoke '{target}' because user is unauthorized"
        ));
    }
    if subscribe {
        hub.join(id, ADMINS_GROUP);
    } else {
        hub.leave(id, ADMINS_GROUP);
    }
    Ok(())
}

/// Resolves once the hub is shutting down.
async fn shutting_down(signal: &mut watch::Receiver<bool>) {
    loop {
        if *signal.borrow_and_update() {
            return;
        }
        if signal.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
