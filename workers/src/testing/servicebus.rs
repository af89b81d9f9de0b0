//! A local HTTP endpoint with the Service Bus REST semantics the adapter relies on, so the
//! Service Bus backend is tested for real — through `azure_messaging_servicebus`, reqwest and
//! HTTP — without an Azure namespace.
//!
//! What it implements, as the REST reference describes Service Bus:
//! - `POST /{queue}/messages`: send; `BrokerProperties` header (`MessageId`, `Label`,
//!   `CorrelationId`, `ScheduledEnqueueTimeUtc`...), custom properties as headers. Duplicate
//!   detection: a message id the queue already accepted is acknowledged (201) and dropped.
//!   A scheduled message is enqueued at its time (RFC 2822, whole seconds): until then no
//!   receiver gets it, it counts as `ScheduledMessageCount` (not active), and its
//!   `EnqueuedTimeUtc` is the scheduled time, as on Service Bus.
//! - `POST /{queue}/messages/head?timeout=N`: peek-lock, waiting up to N seconds. 201 with
//!   the body, a `Location` header naming the lock
//!   (`https://{ns}.servicebus.windows.net/{queue}/messages/{sequence}/{lockToken}`), the
//!   `BrokerProperties` header (`LockToken`, `SequenceNumber`, `DeliveryCount`,
//!   `LockedUntilUtc` in RFC 2822, ...) and the custom properties; 204 when nothing came.
//! - On the lock's location: `DELETE` completes, `PUT` unlocks (abandons), `POST` renews; 404
//!   when the lock is unknown or has expired.
//! - Lock expiry: an expired lock makes the message available again, its delivery spent.
//!   A message that has been delivered `max_delivery_count` times and is abandoned or lets
//!   its lock expire moves to `{queue}/$DeadLetterQueue` with the custom property
//!   `DeadLetterReason: "MaxDeliveryCountExceeded"`; the sub-queue is read with the same
//!   peek-lock / settle paths. Sending to it is refused.
//! - `GET /{queue}?api-version=..`: the management API's Atom entry with `CountDetails`.
//! - Sessions: a message's `SessionId` (`BrokerProperties`) is kept and handed back with it,
//!   on any queue, as on Service Bus (where a queue without sessions just carries it). A
//!   queue named in `requires_session` (`RequiresSession`) refuses a message without a
//!   `SessionId` (400) and refuses the REST peek-lock with 405 "It is not possible for an
//!   entity that requires sessions to create a non-sessionful message receiver", as Service
//!   Bus does: the REST API has no session receiver (accept-session, session lock renewal
//!   and session state are AMQP-only), so nothing over REST can read such a queue.
//! - Every request must carry a valid SAS token signed with the key of one of the namespace's
//!   policies, and the policy must hold the right the operation needs, as Service Bus checks
//!   claims: `Send` to send, `Listen` to peek-lock and settle, `Manage` for the management API
//!   (else 401 "Manage,EntityRead claims required for this operation"). The policies are
//!   Terraform's: [`ROOT_POLICY`] (all three), [`STATS_POLICY`] (all three: Service Bus grants
//!   Manage only with Listen and Send) and [`APP_POLICY`] (Listen and Send).
//!
//! - AMQP, for the one thing only AMQP has — the peek (`com.microsoft:peek-message` on
//!   `{queue}/$management`, see `crate::bus::peek`): on a second local port, plain TCP, SASL
//!   PLAIN with a policy's name and key (else the SASL outcome is `auth`); a policy without
//!   Listen gets `statusCode` 401. It answers with the queue's messages at or past
//!   `from-sequence-number` in sequence order — locked and scheduled ones included — each an
//!   encoded AMQP message carrying `x-opt-sequence-number`, `x-opt-enqueued-time` and the
//!   custom properties as application properties, or 204 when there are none.
//!
//! The adapter is pointed here by [`RedirectingHttpClient`], which sends every request meant
//! for `https://{namespace}.servicebus.windows.net` to this endpoint instead — the injected
//! `HttpClient` is the only thing that differs from production.

use crate::bus::peek::PeekEndpoint;
use crate::bus::servicebus::{ServiceBusConfig, DEAD_LETTER_SUBQUEUE};
use async_trait::async_trait;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// The endpoint's namespace (what a connection string would say).
pub const NAMESPACE: &str = "teachin-local";
/// The namespace's own policy: Manage, Listen and Send.
pub const ROOT_POLICY: &str = "RootManageSharedAccessKey";
/// Terraform's `teachin-stats` rule (`ServiceBus__StatsConnectionString`): Manage, Listen, Send.
pub const STATS_POLICY: &str = "teachin-stats";
/// Terraform's `teachin-app` rule (`ServiceBus__ConnectionString`): Listen and Send only.
pub const APP_POLICY: &str = "teachin-app";

/// A right a policy grants (a claim of its tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Right {
    Send,
    Listen,
    Manage,
}

/// The policies and the rights each grants.
const POLICIES: [(&str, &[Right]); 3] = [
    (ROOT_POLICY, &[Right::Manage, Right::Listen, Right::Send]),
    (STATS_POLICY, &[Right::Manage, Right::Listen, Right::Send]),
    (APP_POLICY, &[Right::Listen, Right::Send]),
];

#[derive(Debug, Clone)]
pub struct LocalServiceBusSettings {
    /// The queues' lock duration.
    pub lock_duration: Duration,
    /// The queues' `MaxDeliveryCount`.
    pub max_delivery_count: u32,
    /// The queues created with `RequiresSession` (none by default, as in Terraform).
    pub requires_session: Vec<String>,
}

impl Default for LocalServiceBusSettings {
    fn default() -> Self {
        LocalServiceBusSettings {
            lock_duration: Duration::from_secs(30),
            max_delivery_count: 10,
            requires_session: Vec::new(),
        }
    }
}

/// A running endpoint; stops when dropped.
pub struct LocalServiceBus {
    pub addr: SocketAddr,
    /// The AMQP port (peek only).
    pub amqp_addr: SocketAddr,
    /// Each policy's key.
    keys: HashMap<&'static str, String>,
    max_delivery_count: u32,
    lock_duration: Duration,
    server: tokio::task::JoinHandle<()>,
    amqp_server: tokio::task::JoinHandle<()>,
}

impl Drop for LocalServiceBus {
    fn drop(&mut self) {
        self.server.abort();
        self.amqp_server.abort();
    }
}

impl LocalServiceBus {
    /// Starts an endpoint on a free local port.
    pub async fn start(settings: LocalServiceBusSettings) -> Self {
        let keys: HashMap<&'static str, String> = POLICIES
            .iter()
            .map(|(policy, _)| (*policy, format!("local-key-{}", Uuid::new_v4().simple())))
            .collect();
        let max_delivery_count = settings.max_delivery_count;
        let lock_duration = settings.lock_duration;
        let broker = Arc::new(Broker {
            settings,
            keys: keys.clone(),
            state: Mutex::new(BrokerState::default()),
            arrived: Notify::new(),
        });
        let amqp_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let amqp_addr = amqp_listener.local_addr().expect("a bound address");
        let amqp_server = tokio::spawn(amqp::serve(amqp_listener, broker.clone()));
        let app = Router::new().fallback(handle).with_state(broker);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let addr = listener.local_addr().expect("a bound address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        LocalServiceBus {
            addr,
            amqp_addr,
            amqp_server,
            keys,
            max_delivery_count,
            lock_duration,
            server,
        }
    }

    /// What the adapter is configured with in production: the Listen+Send policy for the
    /// messages, the Manage one for statistics (its `max_delivery_count` the queues').
    pub fn config(&self) -> ServiceBusConfig {
        let mut config =
            ServiceBusConfig::from_connection_string(&self.connection_string(APP_POLICY))
                .expect("the local connection string parses")
                .with_stats_connection_string(&self.connection_string(STATS_POLICY))
                .expect("the local stats connection string parses");
        config.max_delivery_count = self.max_delivery_count;
        config.session_lock = self.lock_duration;
        config.peek_endpoint = PeekEndpoint::Local(self.amqp_addr);
        config
    }

    /// The namespace's connection string for `policy` (one of [`ROOT_POLICY`],
    /// [`STATS_POLICY`], [`APP_POLICY`]).
    pub fn connection_string(&self, policy: &str) -> String {
        format!(
            "Endpoint=sb://{NAMESPACE}.servicebus.windows.net/;SharedAccessKeyName={policy};SharedAccessKey={}",
            self.keys[policy]
        )
    }

    /// An HTTP client that sends the adapter's requests here.
    pub fn http_client(&self) -> Arc<dyn azure_core::HttpClient> {
        Arc::new(RedirectingHttpClient::new(
            format!("http://{}", self.addr).parse().expect("a URL"),
        ))
    }
}

/// An `azure_core::HttpClient` that sends every request to `target` (scheme, host and port),
/// keeping its path, query, headers and body — and so its SAS token, signed for the real host.
#[derive(Debug)]
pub struct RedirectingHttpClient {
    target: url::Url,
    inner: reqwest::Client,
}

impl RedirectingHttpClient {
    pub fn new(target: url::Url) -> Self {
        RedirectingHttpClient {
            target,
            inner: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("a reqwest client"),
        }
    }
}

#[async_trait]
impl azure_core::HttpClient for RedirectingHttpClient {
    async fn execute_request(
        &self,
        request: &azure_core::Request,
    ) -> azure_core::Result<azure_core::Response> {
        let mut url = self.target.clone();
        url.set_path(request.url().path());
        url.set_query(request.url().query());
        let mut redirected = azure_core::Request::new(url, *request.method());
        for (name, value) in request.headers().iter() {
            redirected.insert_header(name.clone(), value.clone());
        }
        redirected.set_body(request.body().clone());
        self.inner.execute_request(&redirected).await
    }
}

struct Broker {
    settings: LocalServiceBusSettings,
    keys: HashMap<&'static str, String>,
    state: Mutex<BrokerState>,
    arrived: Notify,
}

#[derive(Default)]
struct BrokerState {
    entities: HashMap<String, Entity>,
    next_sequence: i64,
}

#[derive(Default)]
struct Entity {
    messages: BTreeMap<i64, Stored>,
    accepted_ids: HashSet<String>,
}

#[derive(Clone)]
struct Stored {
    sequence: i64,
    message_id: String,
    body: Bytes,
    content_type: Option<String>,
    /// What the sender set (`Label`, `CorrelationId`, ...).
    settable: serde_json::Map<String, serde_json::Value>,
    /// Custom properties: header name → raw header value (JSON-encoded).
    custom: BTreeMap<String, String>,
    /// When it enters the queue: at once, or at its `ScheduledEnqueueTimeUtc`.
    enqueued_at: DateTime<Utc>,
    delivery_count: u32,
    lock: Option<(Uuid, DateTime<Utc>)>,
}

impl Stored {
    /// Scheduled for later: in the entity, but no receiver gets it yet.
    fn scheduled(&self, now: DateTime<Utc>) -> bool {
        self.enqueued_at > now
    }
}

impl BrokerState {
    fn entity(&mut self, path: &str) -> &mut Entity {
        self.entities.entry(path.to_string()).or_default()
    }

    /// Releases expired locks; messages out of deliveries go to the dead-letter sub-queue.
    fn expire_locks(&mut self, max_delivery_count: u32, now: DateTime<Utc>) {
        let paths: Vec<String> = self
            .entities
            .keys()
            .filter(|p| !p.ends_with(DEAD_LETTER_SUBQUEUE))
            .cloned()
            .collect();
        for path in paths {
            let expired: Vec<i64> = self.entities[&path]
                .messages
                .values()
                .filter(|m| matches!(m.lock, Some((_, until)) if until <= now))
                .map(|m| m.sequence)
                .collect();
            for sequence in expired {
                self.release(&path, sequence, max_delivery_count);
            }
        }
    }

    /// Unlocks a message (abandon or expiry): dead-letters it if it had its last delivery.
    fn release(&mut self, path: &str, sequence: i64, max_delivery_count: u32) {
        let entity = self.entity(path);
        let Some(message) = entity.messages.get_mut(&sequence) else {
            return;
        };
        message.lock = None;
        let is_dead_letter_queue = path.ends_with(DEAD_LETTER_SUBQUEUE);
        if !is_dead_letter_queue && message.delivery_count >= max_delivery_count {
            let mut dead = entity.messages.remove(&sequence).expect("present");
            dead.custom.insert(
                "DeadLetterReason".into(),
                "\"MaxDeliveryCountExceeded\"".into(),
            );
            dead.custom.insert(
                "DeadLetterErrorDescription".into(),
                format!(
                    "\"Message could not be consumed after {max_delivery_count} delivery attempts.\""
                ),
            );
            dead.delivery_count = 0;
            self.entity(&format!("{path}/{DEAD_LETTER_SUBQUEUE}"))
                .messages
                .insert(sequence, dead);
        }
    }
}

/// The entity a path names, and what is asked of it.
enum Operation {
    Send,
    PeekLock,
    Settle { sequence: i64, token: Uuid },
    Describe,
}

impl Operation {
    /// The right a token must carry for it.
    fn right(&self) -> Right {
        match self {
            Operation::Send => Right::Send,
            Operation::PeekLock | Operation::Settle { .. } => Right::Listen,
            Operation::Describe => Right::Manage,
        }
    }
}

fn route(method: &HttpMethod, path: &str) -> Option<(String, Operation)> {
    let path = path.replace("%24", "$");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The entity is the queue, or the queue and its dead-letter sub-queue.
    let (entity_len, rest) = match segments.get(1) {
        Some(&DEAD_LETTER_SUBQUEUE) => (2, &segments[2..]),
        _ => (1, segments.get(1..).unwrap_or(&[])),
    };
    let entity = segments[..entity_len.min(segments.len())].join("/");
    if entity.is_empty() {
        return None;
    }
    let operation = match (method, rest) {
        (&HttpMethod::POST, ["messages"]) => Operation::Send,
        (&HttpMethod::POST, ["messages", "head"]) => Operation::PeekLock,
        (m, ["messages", sequence, token])
            if m == HttpMethod::DELETE || m == HttpMethod::PUT || m == HttpMethod::POST =>
        {
            Operation::Settle {
                sequence: sequence.parse().ok()?,
                token: token.parse().ok()?,
            }
        }
        (&HttpMethod::GET, []) => Operation::Describe,
        _ => return None,
    };
    Some((entity, operation))
}

async fn handle(
    State(broker): State<Arc<Broker>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let rights = match broker.authorize(&headers) {
        Ok(rights) => rights,
        Err(problem) => return (StatusCode::UNAUTHORIZED, problem).into_response(),
    };
    let Some((entity, operation)) = route(&method, uri.path()) else {
        return (StatusCode::BAD_REQUEST, "unsupported operation").into_response();
    };
    let needed = operation.right();
    if !rights.contains(&needed) {
        let claims = match needed {
            Right::Send => "Send",
            Right::Listen => "Listen",
            Right::Manage => "Manage,EntityRead",
        };
        return (
            StatusCode::UNAUTHORIZED,
            format!(
                "<Error><Code>401</Code><Detail>Unauthorized access. '{claims}' claim(s) are \
                 required to perform this operation.</Detail></Error>"
            ),
        )
            .into_response();
    }
    match operation {
        Operation::Send => broker.send(&entity, &headers, body),
        Operation::PeekLock if broker.requires_session(&entity) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "<Error><Code>405</Code><Detail>It is not possible for an entity that requires \
             sessions to create a non-sessionful message receiver.</Detail></Error>",
        )
            .into_response(),
        Operation::PeekLock => {
            let timeout = uri
                .query()
                .and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "timeout")
                        .and_then(|(_, v)| v.parse::<u64>().ok())
                })
                .unwrap_or(60);
            broker
                .peek_lock(&entity, Duration::from_secs(timeout))
                .await
        }
        Operation::Settle { sequence, token } => broker.settle(&entity, &method, sequence, token),
        Operation::Describe => broker.describe(&entity),
    }
}

impl Broker {
    /// Whether `entity` (a queue, not its dead-letter sub-queue) requires sessions.
    fn requires_session(&self, entity: &str) -> bool {
        self.settings.requires_session.iter().any(|q| q == entity)
    }

    /// Checks the SAS token as Service Bus does: policy name, expiry and signature; the
    /// rights of its policy.
    fn authorize(&self, headers: &HeaderMap) -> Result<&'static [Right], String> {
        let raw = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or("no Authorization header")?;
        let fields = raw
            .strip_prefix("SharedAccessSignature ")
            .ok_or("not a SharedAccessSignature")?;
        let mut parts: HashMap<&str, &str> = HashMap::new();
        for pair in fields.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                parts.insert(k, v);
            }
        }
        let (sr, sig, se, skn) = match (
            parts.get("sr"),
            parts.get("sig"),
            parts.get("se"),
            parts.get("skn"),
        ) {
            (Some(sr), Some(sig), Some(se), Some(skn)) => (*sr, *sig, *se, *skn),
            _ => return Err("the token lacks sr, sig, se or skn".into()),
        };
        let Some((_, rights)) = POLICIES.iter().find(|(policy, _)| *policy == skn) else {
            return Err(format!("unknown policy {skn}"));
        };
        let expiry: i64 = se.parse().map_err(|_| "se is not a number")?;
        if expiry < Utc::now().timestamp() {
            return Err("the token has expired".into());
        }
        let signature: String = url::form_urlencoded::parse(format!("s={sig}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let mut mac = Hmac::<Sha256>::new_from_slice(self.keys[skn].as_bytes()).expect("any key");
        mac.update(format!("{sr}\n{se}").as_bytes());
        let expected = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            mac.finalize().into_bytes(),
        );
        if signature != expected {
            return Err("the signature does not match".into());
        }
        Ok(*rights)
    }

    fn send(&self, entity: &str, headers: &HeaderMap, body: Bytes) -> Response {
        if entity.ends_with(DEAD_LETTER_SUBQUEUE) {
            return (
                StatusCode::BAD_REQUEST,
                "cannot send to a dead-letter sub-queue",
            )
                .into_response();
        }
        let settable: serde_json::Map<String, serde_json::Value> = match headers
            .get("brokerproperties")
            .map(|v| serde_json::from_slice(v.as_bytes()))
        {
            None => serde_json::Map::new(),
            Some(Ok(map)) => map,
            Some(Err(e)) => {
                return (StatusCode::BAD_REQUEST, format!("BrokerProperties: {e}")).into_response()
            }
        };
        if self.requires_session(entity)
            && settable
                .get("SessionId")
                .and_then(|v| v.as_str())
                .is_none_or(str::is_empty)
        {
            return (
                StatusCode::BAD_REQUEST,
                "The SessionId was not set on a message, and it cannot be sent to the entity. \
                 Entities that have session support enabled can only receive messages that \
                 have the SessionId set to a valid value.",
            )
                .into_response();
        }
        let message_id = settable
            .get("MessageId")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
        let custom = headers
            .iter()
            .filter(|(name, _)| !is_standard_request_header(name.as_str()))
            .filter_map(|(name, value)| {
                Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
            })
            .collect();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let enqueued_at = match settable
            .get("ScheduledEnqueueTimeUtc")
            .and_then(|v| v.as_str())
        {
            None => Utc::now(),
            Some(raw) => match DateTime::parse_from_rfc2822(raw) {
                Ok(at) => at.with_timezone(&Utc).max(Utc::now()),
                Err(e) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("ScheduledEnqueueTimeUtc `{raw}`: {e}"),
                    )
                        .into_response()
                }
            },
        };
        {
            let mut state = self.state.lock().expect("not poisoned");
            state.next_sequence += 1;
            let sequence = state.next_sequence;
            let queue = state.entity(entity);
            if queue.accepted_ids.insert(message_id.clone()) {
                queue.messages.insert(
                    sequence,
                    Stored {
                        sequence,
                        message_id,
                        body,
                        content_type,
                        settable,
                        custom,
                        enqueued_at,
                        delivery_count: 0,
                        lock: None,
                    },
                );
            }
        }
        self.arrived.notify_waiters();
        StatusCode::CREATED.into_response()
    }

    async fn peek_lock(&self, entity: &str, timeout: Duration) -> Response {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.arrived.notified();
            if let Some(response) = self.try_lock(entity) {
                return response;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return StatusCode::NO_CONTENT.into_response();
            }
            // Woken by a send, or soon anyway: a lock may expire meanwhile.
            let _ = tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), notified)
                .await;
        }
    }

    fn try_lock(&self, entity: &str) -> Option<Response> {
        let now = Utc::now();
        let lock_duration = chrono::Duration::from_std(self.settings.lock_duration).expect("fits");
        let mut state = self.state.lock().expect("not poisoned");
        state.expire_locks(self.settings.max_delivery_count, now);
        let message = state
            .entity(entity)
            .messages
            .values_mut()
            .find(|m| m.lock.is_none() && !m.scheduled(now))?;
        let token = Uuid::new_v4();
        let until = now + lock_duration;
        message.lock = Some((token, until));
        message.delivery_count += 1;
        let message = message.clone();
        drop(state);

        let mut broker = message.settable.clone();
        let system = serde_json::json!({
            "DeliveryCount": message.delivery_count,
            "EnqueuedSequenceNumber": 0,
            "EnqueuedTimeUtc": rfc2822(message.enqueued_at),
            "LockToken": token.to_string(),
            "LockedUntilUtc": rfc2822(until),
            "MessageId": message.message_id,
            "SequenceNumber": message.sequence,
            "State": "Active",
            "TimeToLive": 922337203685.4775_f64,
        });
        if let serde_json::Value::Object(system) = system {
            broker.extend(system);
        }
        let location = format!(
            "https://{NAMESPACE}.servicebus.windows.net/{entity}/messages/{}/{token}",
            message.sequence
        );
        let mut response = Response::new(Body::from(message.body));
        *response.status_mut() = StatusCode::CREATED;
        let headers = response.headers_mut();
        headers.insert("location", header(&location));
        headers.insert(
            "brokerproperties",
            header(&serde_json::Value::Object(broker).to_string()),
        );
        if let Some(content_type) = &message.content_type {
            headers.insert("content-type", header(content_type));
        }
        for (name, value) in &message.custom {
            if let Ok(name) =
                axum::http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            {
                headers.insert(name, header(value));
            }
        }
        Some(response)
    }

    fn settle(&self, entity: &str, method: &HttpMethod, sequence: i64, token: Uuid) -> Response {
        let now = Utc::now();
        let mut state = self.state.lock().expect("not poisoned");
        state.expire_locks(self.settings.max_delivery_count, now);
        let held = state
            .entity(entity)
            .messages
            .get(&sequence)
            .is_some_and(|m| matches!(m.lock, Some((t, until)) if t == token && until > now));
        if !held {
            return (StatusCode::NOT_FOUND, "no message with that lock").into_response();
        }
        match *method {
            HttpMethod::DELETE => {
                state.entity(entity).messages.remove(&sequence);
            }
            HttpMethod::PUT => {
                state.release(entity, sequence, self.settings.max_delivery_count);
                drop(state);
                self.arrived.notify_waiters();
            }
            _ => {
                let lock_duration =
                    chrono::Duration::from_std(self.settings.lock_duration).expect("fits");
                if let Some(message) = state.entity(entity).messages.get_mut(&sequence) {
                    message.lock = Some((token, now + lock_duration));
                }
            }
        }
        StatusCode::OK.into_response()
    }

    /// The management API's answer for a queue (the parts the adapter reads, and a few more).
    fn describe(&self, entity: &str) -> Response {
        if entity.contains('/') {
            return (StatusCode::NOT_FOUND, "not a queue").into_response();
        }
        let now = Utc::now();
        let mut state = self.state.lock().expect("not poisoned");
        state.expire_locks(self.settings.max_delivery_count, now);
        let scheduled = state
            .entity(entity)
            .messages
            .values()
            .filter(|m| m.scheduled(now))
            .count();
        let active = state.entity(entity).messages.len() - scheduled;
        let dead = state
            .entity(&format!("{entity}/{DEAD_LETTER_SUBQUEUE}"))
            .messages
            .len();
        let lock_seconds = self.settings.lock_duration.as_secs();
        let max = self.settings.max_delivery_count;
        let xml = format!(
            r#"<entry xmlns="http://www.w3.org/2005/Atom"><id>https://{NAMESPACE}.servicebus.windows.net/{entity}?api-version=2021-05</id><title type="text">{entity}</title><content type="application/xml"><QueueDescription xmlns="http://schemas.microsoft.com/netservices/2010/10/servicebus/connect" xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><LockDuration>PT{lock_seconds}S</LockDuration><RequiresDuplicateDetection>true</RequiresDuplicateDetection><MaxDeliveryCount>{max}</MaxDeliveryCount><MessageCount>{total}</MessageCount><CountDetails xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus"><d2p1:ActiveMessageCount>{active}</d2p1:ActiveMessageCount><d2p1:DeadLetterMessageCount>{dead}</d2p1:DeadLetterMessageCount><d2p1:ScheduledMessageCount>{scheduled}</d2p1:ScheduledMessageCount><d2p1:TransferMessageCount>0</d2p1:TransferMessageCount><d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount></CountDetails></QueueDescription></content></entry>"#,
            total = active + scheduled + dead
        );
        (
            StatusCode::OK,
            [(
                "content-type",
                "application/atom+xml;type=entry;charset=utf-8",
            )],
            xml,
        )
            .into_response()
    }
}

/// The endpoint's AMQP side: the peek, nothing else (see the module comment).
mod amqp {
    use super::{Broker, Right, POLICIES};
    use crate::bus::peek::{encode_message, ENQUEUED_TIME, PEEK_OPERATION, SEQUENCE_NUMBER};
    use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
    use fe2o3_amqp::acceptor::{
        ConnectionAcceptor, LinkAcceptor, LinkEndpoint, SaslAcceptor, SessionAcceptor,
    };
    use fe2o3_amqp::types::messaging::{
        AmqpValue, ApplicationProperties, Batch, Body, Data, Message, MessageAnnotations,
        Properties,
    };
    use fe2o3_amqp::types::primitives::{
        Array, Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value,
    };
    use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome, SaslResponse};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    pub(super) async fn serve(listener: tokio::net::TcpListener, broker: Arc<Broker>) {
        while let Ok((stream, _)) = listener.accept().await {
            let broker = broker.clone();
            tokio::spawn(async move {
                let _ = connection(stream, broker).await;
            });
        }
    }

    /// SASL PLAIN against the namespace's policies; remembers which one signed in.
    #[derive(Clone)]
    struct Policies {
        keys: HashMap<&'static str, String>,
        signed_in: Arc<Mutex<Option<&'static str>>>,
    }

    impl SaslAcceptor for Policies {
        fn mechanisms(&self) -> Array<Symbol> {
            Array::from(vec![Symbol::from("PLAIN")])
        }

        fn on_init(&mut self, init: SaslInit) -> SaslServerFrame {
            let response = init
                .initial_response
                .map(|r| r.into_vec())
                .unwrap_or_default();
            let mut parts = response.split(|b| *b == 0);
            let (_, name, key) = (parts.next(), parts.next(), parts.next());
            let found = self.keys.iter().find(|(policy, policy_key)| {
                Some(policy.as_bytes()) == name && Some(policy_key.as_bytes()) == key
            });
            let code = match found {
                Some((policy, _)) => {
                    *self.signed_in.lock().expect("not poisoned") = Some(*policy);
                    SaslCode::Ok
                }
                None => SaslCode::Auth,
            };
            SaslServerFrame::Outcome(SaslOutcome {
                code,
                additional_data: None,
            })
        }

        fn on_response(&mut self, _: SaslResponse) -> SaslServerFrame {
            SaslServerFrame::Outcome(SaslOutcome {
                code: SaslCode::Sys,
                additional_data: None,
            })
        }
    }

    async fn connection(stream: tokio::net::TcpStream, broker: Arc<Broker>) -> Result<(), String> {
        let signed_in = Arc::new(Mutex::new(None));
        let acceptor = ConnectionAcceptor::builder()
            .container_id("teachin-local")
            .sasl_acceptor(Policies {
                keys: broker.keys.clone(),
                signed_in: signed_in.clone(),
            })
            .build();
        let mut connection = acceptor.accept(stream).await.map_err(|e| e.to_string())?;
        let policy = signed_in
            .lock()
            .expect("not poisoned")
            .ok_or("nobody signed in")?;
        let rights = POLICIES
            .iter()
            .find(|(p, _)| *p == policy)
            .map(|(_, rights)| *rights)
            .unwrap_or_default();
        let mut session = SessionAcceptor::new()
            .accept(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        let links = LinkAcceptor::new();
        let (mut requests, mut replies) = (None, None);
        while requests.is_none() || replies.is_none() {
            match links
                .accept(&mut session)
                .await
                .map_err(|e| e.to_string())?
            {
                LinkEndpoint::Receiver(receiver) => requests = Some(receiver),
                LinkEndpoint::Sender(sender) => replies = Some(sender),
            }
        }
        let (mut requests, mut replies) = (requests.expect("attached"), replies.expect("attached"));
        let node = requests
            .target()
            .as_ref()
            .and_then(|t| t.address.clone())
            .unwrap_or_default();
        let queue = node.strip_suffix("/$management").unwrap_or("").to_string();
        while let Ok(delivery) = requests.recv::<Body<Value>>().await {
            requests
                .accept(&delivery)
                .await
                .map_err(|e| e.to_string())?;
            let request = delivery.into_message();
            let reply = if !rights.contains(&Right::Listen) {
                status(401, "Unauthorized access. 'Listen' claim(s) are required.")
            } else {
                broker.peek(&queue, &request)
            };
            let reply = with_correlation(reply, &request);
            replies.send(reply).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn status(code: i32, description: &str) -> Message<Body<Value>> {
        Message::builder()
            .application_properties(
                ApplicationProperties::builder()
                    .insert("statusCode", SimpleValue::Int(code))
                    .insert("statusDescription", description)
                    .build(),
            )
            .body(Body::Value(AmqpValue(Value::Map(OrderedMap::new()))))
            .build()
    }

    fn with_correlation(
        mut reply: Message<Body<Value>>,
        request: &Message<Body<Value>>,
    ) -> Message<Body<Value>> {
        let id = request
            .properties
            .as_ref()
            .and_then(|p| p.message_id.clone());
        reply.properties = Some(Properties {
            correlation_id: id,
            ..Properties::default()
        });
        reply
    }

    /// A field of the request's amqp-value map.
    fn field<'v>(request: &'v Message<Body<Value>>, name: &str) -> Option<&'v Value> {
        let Body::Value(AmqpValue(Value::Map(map))) = &request.body else {
            return None;
        };
        map.iter().find_map(|(k, v)| match k {
            Value::String(s) if s == name => Some(v),
            Value::Symbol(s) if s.0 == name => Some(v),
            _ => None,
        })
    }

    impl Broker {
        fn peek(&self, queue: &str, request: &Message<Body<Value>>) -> Message<Body<Value>> {
            let operation = request
                .application_properties
                .as_ref()
                .and_then(|p| p.0.get("operation"));
            if operation != Some(&SimpleValue::String(PEEK_OPERATION.into())) {
                return status(400, "only the peek is served here");
            }
            let (Some(Value::Long(from)), Some(Value::Int(count))) = (
                field(request, "from-sequence-number"),
                field(request, "message-count"),
            ) else {
                return status(400, "from-sequence-number (long) and message-count (int)");
            };
            let now = chrono::Utc::now();
            let mut state = self.state.lock().expect("not poisoned");
            state.expire_locks(self.settings.max_delivery_count, now);
            let messages: Vec<Value> = state
                .entity(queue)
                .messages
                .range(*from..)
                .take((*count).max(0) as usize)
                .map(|(_, stored)| {
                    let mut properties = ApplicationProperties::builder();
                    for (name, raw) in &stored.custom {
                        // Sent over REST as JSON-quoted header values; over AMQP, strings.
                        let text = serde_json::from_str::<String>(raw).unwrap_or(raw.clone());
                        properties = properties.insert(name.to_ascii_lowercase(), text);
                    }
                    let message = Message::builder()
                        .message_annotations(
                            MessageAnnotations::builder()
                                .insert(SEQUENCE_NUMBER, Value::Long(stored.sequence))
                                .insert(
                                    ENQUEUED_TIME,
                                    Value::Timestamp(Timestamp::from_milliseconds(
                                        stored.enqueued_at.timestamp_millis(),
                                    )),
                                )
                                .build(),
                        )
                        .properties(
                            Properties::builder()
                                .message_id(stored.message_id.clone())
                                .build(),
                        )
                        .application_properties(properties.build())
                        .body(Body::Data(Batch::from(vec![Data(Binary::from(
                            stored.body.to_vec(),
                        ))])))
                        .build();
                    let bytes = encode_message(message).expect("a message encodes");
                    let mut entry = OrderedMap::new();
                    entry.insert(
                        Value::String("message".into()),
                        Value::Binary(Binary::from(bytes)),
                    );
                    Value::Map(entry)
                })
                .collect();
            drop(state);
            if messages.is_empty() {
                return status(204, "No messages");
            }
            let mut body = OrderedMap::new();
            body.insert(Value::String("messages".into()), Value::List(messages));
            let mut reply = status(200, "OK");
            reply.body = Body::Value(AmqpValue(Value::Map(body)));
            reply
        }
    }
}

fn is_standard_request_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "brokerproperties"
            | "content-type"
            | "content-length"
            | "host"
            | "user-agent"
            | "accept"
            | "accept-encoding"
            | "connection"
    )
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Wed, 02 Jul 2014 01:32:27 GMT`, as Service Bus writes its times.
fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_the_rest_paths_the_adapter_uses() {
        let token = Uuid::new_v4();
        assert!(matches!(
            route(&HttpMethod::POST, "/engine-queue/messages"),
            Some((e, Operation::Send)) if e == "engine-queue"
        ));
        assert!(matches!(
            route(&HttpMethod::POST, "/engine-queue/$DeadLetterQueue/messages/head"),
            Some((e, Operation::PeekLock)) if e == "engine-queue/$DeadLetterQueue"
        ));
        assert!(matches!(
            route(
                &HttpMethod::DELETE,
                &format!("/engine-queue/messages/12/{token}")
            ),
            Some((_, Operation::Settle { sequence: 12, .. }))
        ));
        assert!(matches!(
            route(&HttpMethod::GET, "/engine-queue"),
            Some((_, Operation::Describe))
        ));
        assert!(route(&HttpMethod::GET, "/engine-queue/messages").is_none());
    }
}
