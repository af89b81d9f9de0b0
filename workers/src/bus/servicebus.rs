//! The Azure Service Bus backend, over the Service Bus REST API.
//!
//! Sending, peek-lock, complete (DELETE on the lock's location), abandon (PUT, "unlock") and
//! renew (POST) go through `azure_messaging_servicebus` 0.21 (`QueueClient`,
//! `PeekLockResponse`). Its HTTP client is injected (`Arc<dyn azure_core::HttpClient>`):
//! production passes a reqwest client, the tests one that redirects every request to a local
//! endpoint implementing the same REST semantics (`crate::testing::LocalServiceBus`).
//!
//! What the 0.21 crate cannot do, and how this adapter does it instead:
//! - **Action name and correlation id of a received message**: the crate's `BrokerProperties`
//!   drops `Label` and `CorrelationId`, so the adapter also reads the `BrokerProperties`
//!   header itself (through `PeekLockResponse::custom_properties`).
//! - **Dead-lettering with a reason**: the REST API has no dead-letter operation (only AMQP
//!   does). The broker still dead-letters by itself — a message delivered `MaxDeliveryCount`
//!   times goes to the queue's `$DeadLetterQueue` sub-queue with reason
//!   `MaxDeliveryCountExceeded` — and this adapter reads that sub-queue over REST
//!   (`{queue}/$DeadLetterQueue/messages/head`). An *explicit* dead-letter (unknown action,
//!   malformed payload, a handler's refusal) is parked in PostgreSQL's `bus_dead_letters`
//!   with its reason, then completed on the broker: parked first, so a crash in between
//!   redelivers the message and parks it again, never loses it.
//! - **Statistics**: not in the crate; read with the same HTTP client from the management
//!   API (`GET https://{namespace}.servicebus.windows.net/{queue}?api-version=2021-05`, an
//!   Atom entry whose `CountDetails` hold the active and dead-letter counts), signed with a
//!   SAS token made here as the crate makes its own — with the stats policy
//!   (`ServiceBus__StatsConnectionString`, [`ServiceBusConfig::stats_policy`]): the management
//!   API wants Manage, which the roles' Listen+Send policy does not have. Nothing over REST
//!   tells the age of the oldest message, so [`QueueStats::oldest_enqueued_at`] comes from an
//!   AMQP peek with the same policy ([`super::peek`]), and from the messages handed over in
//!   PostgreSQL.
//! - **Resubmitting**: a copy is sent to the queue and the dead letter deleted. Duplicate
//!   detection would drop a copy with the same message id, so the copy gets a new id and
//!   carries the original in the `original-message-id` property (consumers deduplicate on
//!   it, see [`ReceivedMessage::dedupe_key`]).
//!
//! - **Abandoning with a delay**: Service Bus has no delayed abandon (an unlock makes the
//!   message available at once). So an abandon *completes* the delivery and sends a copy
//!   scheduled for later (`ScheduledEnqueueTimeUtc` in `BrokerProperties`, rounded up to the
//!   whole second the REST API carries). The copy's broker id is `{message id}~{delivery}`
//!   (duplicate detection drops a second copy of the same retry) and it carries what the
//!   receiver must see as on the PostgreSQL queue, in properties this adapter reads back and
//!   hides: `teachin-message-id` (the message id it presents), `teachin-deliveries`
//!   (deliveries already spent, added to the broker's count of the copy),
//!   `teachin-enqueued-at` (the first enqueue), `teachin-retry-since` (when the retry budget's
//!   clock started) and `teachin-last-error`. The copy is sent before the delivery is
//!   completed: a crash in between leaves two copies (the consumer's idempotency absorbs the
//!   repeat), never none. When the budget is spent in count and in time the adapter parks the
//!   message with the last error (as an explicit dead-letter) instead. The broker's own
//!   `MaxDeliveryCount` still dead-letters a message (or copy) whose *locks* keep running out;
//!   `max_delivery_count` here must equal it (Terraform sets both to 10).
//!
//! - **Sessions** (`manager-callback-session-queue`, [`QueueName::sessionful`]): every
//!   message is sent with its session key as the real `SessionId` broker property (a retry's
//!   scheduled copy and a resubmitted copy too), and a received message's `SessionId` is read
//!   back. But the REST API has **no session receiver**: nothing over HTTP accepts a session
//!   (next available or by id), holds or renews a session lock, or reads session state —
//!   those are AMQP-only, and the 0.21 crate speaks only REST. Worse, a peek-lock on a queue
//!   created with `RequiresSession` is refused (405 "It is not possible for an entity that
//!   requires sessions to create a non-sessionful message receiver"), so such a queue could
//!   not be read at all. The queue therefore stays *without* `requires_session` on the broker,
//!   and the adapter keeps the session lock itself, in PostgreSQL, with the PostgreSQL
//!   backend's lease table (`bus_sessions`, migration 0012; each adapter instance is one
//!   receiver id): after a peek-lock, a message of session S takes or extends S's lease for
//!   the lock's duration (a lock renewal renews it). A message of a session another receiver
//!   holds is **handed over**: written into `bus_messages` (same id, deliveries so far, first
//!   enqueue, budget clock and last error; the hand-over spends no delivery), then completed
//!   at the broker. Every receive of that queue first takes from `bus_messages` — the
//!   PostgreSQL backend's receive, which skips sessions other receivers hold — and only then
//!   long-polls the broker, a second at a time, so a handed-over message reaches its
//!   session's holder within about a second; settling a handed-over message goes to
//!   PostgreSQL. What this does not give that broker sessions would: strict order when a
//!   holder takes a later message of S from the broker while another receiver is still
//!   handing over an earlier one (the holder's frame reorderer puts them back in order), and
//!   when a holder dies, its handed-over messages may be taken before the broker brings back
//!   the one it died holding. Moving the receive side to AMQP sessions
//!   (`AcceptNextSession`) would remove the hand-over; the queue would then need
//!   `requires_session` (a queue replacement on Azure).
//!
//! Idempotent sends rely on the queues' duplicate detection (`requires_duplicate_detection`
//! in Terraform): the broker drops a message whose id it accepted within its history window.
//! The crate hard-codes `https://{namespace}.servicebus.windows.net`, so only the public
//! Azure cloud is reachable (or anything the injected client redirects to).

use super::peek::PeekEndpoint;
use super::postgres::{renew_session, PostgresBus, PostgresBusConfig};
use super::{
    postgres::list_parked, reasons, Abandon, Bus, BusError, DeadLetter, Lock, OutgoingMessage,
    QueueName, QueueStats, ReceivedMessage, RetryPolicy, ORIGINAL_MESSAGE_ID,
};
use async_trait::async_trait;
use azure_core::headers::{HeaderName, Headers};
use azure_core::{HttpClient, Method, Request, StatusCode, Url};
use azure_messaging_servicebus::service_bus::{
    PeekLockResponse, QueueClient, SendMessageOptions, SettableBrokerProperties,
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::types::Json;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The management API version the statistics are read with.
pub const MANAGEMENT_API_VERSION: &str = "2021-05";
/// The dead-letter sub-queue of a queue, as the REST paths name it.
pub const DEAD_LETTER_SUBQUEUE: &str = "$DeadLetterQueue";
/// How long a SAS token the adapter makes itself is valid.
const SAS_VALIDITY: Duration = Duration::from_secs(3600);

/// The properties a retry copy carries (see the module comment); never shown to receivers.
const RETRY_MESSAGE_ID: &str = "teachin-message-id";
const RETRY_DELIVERIES: &str = "teachin-deliveries";
const RETRY_ENQUEUED_AT: &str = "teachin-enqueued-at";
const RETRY_SINCE: &str = "teachin-retry-since";
const RETRY_LAST_ERROR: &str = "teachin-last-error";
/// The longest last error a copy carries (it travels as an HTTP header).
const LAST_ERROR_CHARS: usize = 512;

#[derive(Clone)]
pub struct ServiceBusConfig {
    /// `{namespace}` of `{namespace}.servicebus.windows.net`.
    pub namespace: String,
    /// The shared access policy (`SharedAccessKeyName`).
    pub policy_name: String,
    /// Its key (`SharedAccessKey`).
    pub key: String,
    /// How many messages of the broker's dead-letter sub-queue one list or resubmit looks at.
    pub dead_letter_scan_limit: usize,
    /// The queues' `MaxDeliveryCount` (the count half of the retry budget).
    pub max_delivery_count: u32,
    /// Backoff and the time half of the retry budget.
    pub retry: RetryPolicy,
    /// The queues' lock duration (Terraform: `PT1M`): how long a receiver holds a session
    /// (and a handed-over message) without renewing.
    pub session_lock: Duration,
    /// The policy statistics are read with (`ServiceBus__StatsConnectionString`: Terraform's
    /// `teachin-stats` rule, Listen and Manage on the namespace). The management API refuses a
    /// key without Manage (401), and the data policy above is Listen and Send only. `None`:
    /// the data policy reads them too (it then needs Manage itself).
    pub stats_policy: Option<SharedAccessPolicy>,
    /// Where the peek that finds the oldest message connects (see [`super::peek`]).
    pub peek_endpoint: PeekEndpoint,
}

/// A shared access policy of the namespace: a rule's name and one of its keys.
#[derive(Clone)]
pub struct SharedAccessPolicy {
    pub name: String,
    pub key: String,
}

impl fmt::Debug for SharedAccessPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedAccessPolicy")
            .field("name", &self.name)
            .field("key", &"<secret>")
            .finish()
    }
}

impl fmt::Debug for ServiceBusConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBusConfig")
            .field("namespace", &self.namespace)
            .field("policy_name", &self.policy_name)
            .field("key", &"<secret>")
            .field("max_delivery_count", &self.max_delivery_count)
            .field("retry", &self.retry)
            .field("session_lock", &self.session_lock)
            .field("stats_policy", &self.stats_policy)
            .field("peek_endpoint", &self.peek_endpoint)
            .finish()
    }
}

impl ServiceBusConfig {
    /// Reads `Endpoint=sb://{namespace}.servicebus.windows.net/;SharedAccessKeyName=..;
    /// SharedAccessKey=..`, the form of `ServiceBus__ConnectionString`.
    pub fn from_connection_string(raw: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut policy_name = None;
        let mut key = None;
        for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not a Name=Value pair"))?;
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_string()),
                "sharedaccesskeyname" => policy_name = Some(value.trim().to_string()),
                // A key may end in `=` (base64); split_once kept the rest whole.
                "sharedaccesskey" => key = Some(value.trim().to_string()),
                "entitypath" => {
                    return Err("an EntityPath connection string names one queue; \
                                give the namespace's connection string"
                        .into())
                }
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or("Endpoint is missing")?;
        let host = endpoint
            .strip_prefix("sb://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .ok_or_else(|| format!("Endpoint `{endpoint}` is not sb://HOST/"))?
            .trim_end_matches('/');
        let namespace = host
            .strip_suffix(".servicebus.windows.net")
            .ok_or_else(|| {
                format!("Endpoint host `{host}` is not NAMESPACE.servicebus.windows.net")
            })?;
        if namespace.is_empty() || namespace.contains('.') {
            return Err(format!("`{host}` does not name a namespace"));
        }
        Ok(ServiceBusConfig {
            namespace: namespace.to_string(),
            policy_name: policy_name.ok_or("SharedAccessKeyName is missing")?,
            key: key.ok_or("SharedAccessKey is missing")?,
            dead_letter_scan_limit: 500,
            max_delivery_count: 10,
            retry: RetryPolicy::default(),
            session_lock: Duration::from_secs(60),
            stats_policy: None,
            peek_endpoint: PeekEndpoint::default(),
        })
    }

    /// Reads statistics with the policy of `raw` (`ServiceBus__StatsConnectionString`), which
    /// must name the same namespace.
    pub fn with_stats_connection_string(mut self, raw: &str) -> Result<Self, String> {
        let stats = ServiceBusConfig::from_connection_string(raw)?;
        if stats.namespace != self.namespace {
            return Err(format!(
                "names namespace `{}`, but the bus is `{}`",
                stats.namespace, self.namespace
            ));
        }
        self.stats_policy = Some(SharedAccessPolicy {
            name: stats.policy_name,
            key: stats.key,
        });
        Ok(self)
    }

    /// The policy statistics are read with: the stats policy, else the data policy.
    pub fn statistics_policy(&self) -> SharedAccessPolicy {
        self.stats_policy
            .clone()
            .unwrap_or_else(|| SharedAccessPolicy {
                name: self.policy_name.clone(),
                key: self.key.clone(),
            })
    }

    pub fn host(&self) -> String {
        format!("{}.servicebus.windows.net", self.namespace)
    }
}

/// A SAS token for `resource` (`SharedAccessSignature sr=..&sig=..&se=..&skn=..`), made the
/// way Service Bus checks it: HMAC-SHA256 of `"{url-encoded resource}\n{expiry}"` under the
/// key's bytes.
pub fn sas_token(resource: &str, policy_name: &str, key: &str, expires_unix: i64) -> String {
    let sr = url::form_urlencoded::byte_serialize(resource.as_bytes()).collect::<String>();
    let signed = format!("{sr}\n{expires_unix}");
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key");
    mac.update(signed.as_bytes());
    let signature = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        mac.finalize().into_bytes(),
    );
    let sig = url::form_urlencoded::byte_serialize(signature.as_bytes()).collect::<String>();
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={expires_unix}&skn={policy_name}")
}

pub struct ServiceBus {
    config: ServiceBusConfig,
    http: Arc<dyn HttpClient>,
    pool: PgPool,
    queues: HashMap<QueueName, QueueClient>,
    dead_letter_queues: HashMap<QueueName, QueueClient>,
    /// Session leases, and messages handed over to a session's holder (see the module
    /// comment), in PostgreSQL; receiving as this adapter's own receiver id.
    handoff: PostgresBus,
    /// This adapter's receiver id in `bus_sessions`.
    holder: uuid::Uuid,
}

/// The lock of a message received from Service Bus: the crate's handle on it (which knows
/// the lock's location) and how long the broker locks a message for.
pub(crate) struct ServiceBusLock {
    response: PeekLockResponse,
    lock_span: chrono::Duration,
    /// What earlier copies handed on (see the module comment).
    retry_since: DateTime<Utc>,
    last_error: Option<String>,
}

impl ServiceBus {
    pub fn new(
        config: ServiceBusConfig,
        http: Arc<dyn HttpClient>,
        pool: PgPool,
    ) -> Result<Self, BusError> {
        let client = |entity: String| {
            QueueClient::new(
                http.clone(),
                config.namespace.clone(),
                entity,
                config.policy_name.clone(),
                config.key.clone(),
            )
            .map_err(|e| BusError::ServiceBus(e.to_string()))
        };
        let mut queues = HashMap::new();
        let mut dead_letter_queues = HashMap::new();
        for queue in QueueName::ALL {
            queues.insert(queue, client(queue.as_str().to_string())?);
            dead_letter_queues.insert(
                queue,
                client(format!("{}/{DEAD_LETTER_SUBQUEUE}", queue.as_str()))?,
            );
        }
        let handoff = PostgresBus::new(
            pool.clone(),
            PostgresBusConfig {
                lock_duration: config.session_lock,
                max_delivery_count: config.max_delivery_count,
                ..PostgresBusConfig::default()
            },
        )
        .with_retry(config.retry);
        let holder = uuid::Uuid::new_v4();
        let handoff = handoff.with_holder(holder);
        Ok(ServiceBus {
            holder,
            config,
            http,
            pool,
            queues,
            dead_letter_queues,
            handoff,
        })
    }

    /// The production HTTP client: reqwest with rustls, bounded connect time, and a request
    /// timeout above the longest receive wait the consumers use.
    pub fn default_http_client() -> Arc<dyn HttpClient> {
        Arc::new(
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(90))
                .build()
                .expect("a reqwest client with rustls builds"),
        )
    }

    fn queue(&self, queue: QueueName) -> &QueueClient {
        &self.queues[&queue]
    }

    /// Takes a message from `client`'s entity; `None` when there is none within `wait`.
    async fn peek_lock(
        &self,
        queue: QueueName,
        client: &QueueClient,
        wait: Duration,
    ) -> Result<Option<(ReceivedMessage, BTreeMap<String, String>)>, BusError> {
        // The REST long poll counts whole seconds; 0 answers at once.
        let response = client
            .peek_lock_message2(Some(Duration::from_secs(wait.as_secs())))
            .await
            .map_err(service_bus_error)?;
        match *response.status() {
            StatusCode::Created => {}
            StatusCode::NoContent => return Ok(None),
            other => {
                return Err(BusError::ServiceBus(format!(
                    "peek-lock on {queue} answered {other}: {}",
                    response.body()
                )))
            }
        }
        let broker = response.broker_properties().ok_or_else(|| {
            BusError::ServiceBus("a locked message came without BrokerProperties".into())
        })?;
        let headers: Headers = match response.custom_properties::<Headers>() {
            Ok(headers) => headers,
            Err(never) => match never {},
        };
        let extra = ExtraBrokerProperties::read(&headers)?;
        let (mut properties, system) = application_properties(&headers);
        let carried = Carried::take(&mut properties);
        let received_at = Utc::now();
        let locked_until = to_chrono(broker.locked_until_utc);
        let enqueued_at = carried.enqueued_at.unwrap_or_else(|| {
            broker
                .enqueued_time_utc
                .map(to_chrono)
                .unwrap_or(received_at)
        });
        let message = ReceivedMessage {
            queue,
            message_id: carried
                .message_id
                .unwrap_or_else(|| broker.message_id.clone()),
            correlation_id: extra.correlation_id,
            action: extra.label.unwrap_or_default(),
            body: response.body(),
            properties,
            session_id: extra.session_id,
            enqueued_at,
            delivery_count: carried.deliveries + broker.delivery_count.max(0) as u32,
            sequence_number: broker.sequence_number,
            locked_until,
            lock: Lock::ServiceBus(Box::new(ServiceBusLock {
                response,
                lock_span: (locked_until - received_at).max(chrono::Duration::seconds(1)),
                // The broker's enqueue time is cut to the whole second: start the budget's
                // clock a second later, so it never runs out early.
                retry_since: carried
                    .retry_since
                    .unwrap_or(enqueued_at + chrono::Duration::seconds(1)),
                last_error: carried.last_error,
            })),
        };
        Ok(Some((message, system)))
    }

    /// Receives from a queue with sessions (see the module comment): what was handed over to
    /// this receiver first, then the broker a second at a time; a broker message of a
    /// session another receiver holds is handed over to it.
    async fn receive_in_session(
        &self,
        queue: QueueName,
        wait: Duration,
    ) -> Result<Option<ReceivedMessage>, BusError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Handed over (or left by a holder whose lease ran out): sent before anything of
            // its session the broker still has, so taken first.
            if let Some(message) = self.handoff.receive_now(queue).await? {
                return Ok(Some(message));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let poll = if left >= Duration::from_secs(1) {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            let Some((message, _)) = self.peek_lock(queue, self.queue(queue), poll).await? else {
                if poll.is_zero() {
                    return Ok(None);
                }
                continue;
            };
            let Some(session) = message.session_id.clone() else {
                return Ok(Some(message));
            };
            let lock = self.lock(&message)?;
            let span = lock.lock_span.to_std().unwrap_or(self.config.session_lock);
            if self.handoff.hold_session(queue, &session, span).await? {
                return Ok(Some(message));
            }
            // Another receiver holds the session: the message goes to it through PostgreSQL
            // (written first, then completed here: a crash in between leaves a duplicate,
            // which the consumers' idempotency absorbs, never a loss).
            self.handoff
                .hand_over(&message, lock.retry_since, lock.last_error.as_deref())
                .await?;
            match lock.response.delete_message().await.map_err(settle_error) {
                Ok(_) | Err(BusError::LockLost) => {}
                Err(error) => return Err(error),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    fn lock<'m>(&self, message: &'m ReceivedMessage) -> Result<&'m ServiceBusLock, BusError> {
        match &message.lock {
            Lock::ServiceBus(lock) => Ok(lock),
            Lock::Postgres { .. } => Err(BusError::Invalid(
                "this message was received from PostgreSQL, not from Service Bus".into(),
            )),
        }
    }

    /// Sends a dead letter back to its queue under a new id (see the module comment).
    #[allow(clippy::too_many_arguments)]
    async fn send_copy(
        &self,
        queue: QueueName,
        original_key: &str,
        action: &str,
        correlation_id: Option<String>,
        body: &str,
        mut properties: BTreeMap<String, String>,
        session_id: Option<String>,
    ) -> Result<(), BusError> {
        properties.insert(ORIGINAL_MESSAGE_ID.into(), original_key.to_string());
        self.send_raw(
            queue,
            &uuid::Uuid::new_v4().to_string(),
            correlation_id,
            session_id,
            action,
            body,
            &properties,
            None,
        )
        .await
    }

    /// Gives a locked message back at once (listing the dead-letter sub-queue is not taking).
    async fn unlock(&self, message: &ReceivedMessage) -> Result<(), BusError> {
        self.lock(message)?
            .response
            .unlock_message()
            .await
            .map_err(settle_error)
    }

    /// Sends a copy of `message` to come back after `delay`, carrying its delivery count,
    /// first enqueue, budget clock and last error (see the module comment).
    async fn send_retry_copy(
        &self,
        message: &ReceivedMessage,
        lock: &ServiceBusLock,
        delay: Duration,
        last_error: Option<&str>,
    ) -> Result<(), BusError> {
        let mut properties = message.properties.clone();
        properties.insert(RETRY_MESSAGE_ID.into(), message.message_id.clone());
        properties.insert(RETRY_DELIVERIES.into(), message.delivery_count.to_string());
        properties.insert(RETRY_ENQUEUED_AT.into(), message.enqueued_at.to_rfc3339());
        properties.insert(RETRY_SINCE.into(), lock.retry_since.to_rfc3339());
        if let Some(error) = last_error {
            properties.insert(RETRY_LAST_ERROR.into(), header_safe(error));
        }
        // The REST API carries whole seconds: round up, so the copy never comes back early.
        let scheduled = if delay.is_zero() {
            None
        } else {
            let at = chrono::Duration::from_std(delay)
                .ok()
                .and_then(|d| Utc::now().checked_add_signed(d))
                .ok_or_else(|| BusError::Invalid(format!("a retry in {delay:?} is too far")))?;
            let whole = at.timestamp() + i64::from(at.timestamp_subsec_nanos() > 0);
            Some(
                time::OffsetDateTime::from_unix_timestamp(whole).map_err(|e| {
                    BusError::Invalid(format!("a retry at {at} cannot be scheduled: {e}"))
                })?,
            )
        };
        self.send_raw(
            message.queue,
            &format!("{}~{}", message.message_id, message.delivery_count),
            message.correlation_id.clone(),
            // The copy stays in its session: the holder's lease covers it like the original.
            message.session_id.clone(),
            &message.action,
            &message.body,
            &properties,
            scheduled,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_raw(
        &self,
        queue: QueueName,
        message_id: &str,
        correlation_id: Option<String>,
        session_id: Option<String>,
        action: &str,
        body: &str,
        properties: &BTreeMap<String, String>,
        scheduled: Option<time::OffsetDateTime>,
    ) -> Result<(), BusError> {
        let options = SendMessageOptions {
            content_type: Some("application/json".into()),
            broker_properties: Some(SettableBrokerProperties {
                message_id: Some(message_id.to_string()),
                correlation_id,
                session_id,
                label: Some(action.to_string()),
                scheduled_enqueue_time_utc: scheduled,
                ..Default::default()
            }),
            // Custom properties travel as headers; a string value is sent JSON-quoted.
            custom_properties: Some(
                properties
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str()).to_string()))
                    .collect(),
            ),
        };
        self.queue(queue)
            .send_message(body, Some(options))
            .await
            .map_err(service_bus_error)
    }

    /// The broker's dead letters of `queue` (up to `limit`), each still locked.
    async fn lock_broker_dead_letters(
        &self,
        queue: QueueName,
        limit: usize,
    ) -> Result<Vec<(ReceivedMessage, BTreeMap<String, String>)>, BusError> {
        let client = &self.dead_letter_queues[&queue];
        let mut locked = Vec::new();
        while locked.len() < limit {
            match self.peek_lock(queue, client, Duration::ZERO).await? {
                Some(found) => locked.push(found),
                None => break,
            }
        }
        Ok(locked)
    }

    /// Management API: the queue's entity description.
    async fn queue_description(&self, queue: QueueName) -> Result<String, BusError> {
        let url = format!(
            "https://{}/{}?api-version={MANAGEMENT_API_VERSION}",
            self.config.host(),
            queue.as_str()
        );
        let mut request = Request::new(
            Url::parse(&url).map_err(|e| BusError::ServiceBus(e.to_string()))?,
            Method::Get,
        );
        let expires = Utc::now().timestamp() + SAS_VALIDITY.as_secs() as i64;
        // Signed with the stats policy: the management API needs Manage.
        let policy = self.config.statistics_policy();
        request.insert_header(
            azure_core::headers::AUTHORIZATION,
            sas_token(
                &format!("https://{}/{}", self.config.host(), queue.as_str()),
                &policy.name,
                &policy.key,
                expires,
            ),
        );
        let response = self
            .http
            .execute_request(&request)
            .await
            .map_err(service_bus_error)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect_string()
            .await
            .map_err(|e| BusError::ServiceBus(format!("the queue description: {e}")))?;
        if !(200..300).contains(&u16::from(status)) {
            // The body says why (a 401 names the claims the policy lacks).
            return Err(BusError::ServiceBus(format!(
                "the management API answered {} for {queue} with policy `{}`: {body}",
                u16::from(status),
                policy.name,
                body = body.chars().take(500).collect::<String>()
            )));
        }
        Ok(body)
    }
}

/// What the crate's `BrokerProperties` leaves out.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ExtraBrokerProperties {
    label: Option<String>,
    correlation_id: Option<String>,
    session_id: Option<String>,
}

impl ExtraBrokerProperties {
    fn read(headers: &Headers) -> Result<Self, BusError> {
        match headers.get_optional_str(&HeaderName::from_static("brokerproperties")) {
            Some(raw) => serde_json::from_str(raw)
                .map_err(|e| BusError::ServiceBus(format!("BrokerProperties: {e}"))),
            None => Ok(Self::default()),
        }
    }
}

/// What a retry copy hands on, read from (and removed from) its properties.
#[derive(Default)]
struct Carried {
    message_id: Option<String>,
    deliveries: u32,
    enqueued_at: Option<DateTime<Utc>>,
    retry_since: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl Carried {
    fn take(properties: &mut BTreeMap<String, String>) -> Self {
        let time = |raw: Option<String>| {
            raw.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Carried {
            message_id: properties.remove(RETRY_MESSAGE_ID),
            deliveries: properties
                .remove(RETRY_DELIVERIES)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            enqueued_at: time(properties.remove(RETRY_ENQUEUED_AT)),
            retry_since: time(properties.remove(RETRY_SINCE)),
            last_error: properties.remove(RETRY_LAST_ERROR),
        }
    }
}

/// A message handed over through PostgreSQL (see the module comment), settled there.
fn handed_over(message: &ReceivedMessage) -> bool {
    matches!(message.lock, Lock::Postgres { .. })
}

/// The broker's description of a dead letter, and the last error a retry copy carried.
fn with_last_error(description: String, last_error: Option<&str>) -> String {
    match last_error {
        Some(error) => format!("{description}; last error: {error}"),
        None => description,
    }
}

/// An error as an HTTP header can carry it: printable ASCII, bounded.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(LAST_ERROR_CHARS)
        .collect()
}

/// Headers the broker or HTTP put on a response: never application properties.
const STANDARD_HEADERS: &[&str] = &[
    "brokerproperties",
    "location",
    "content-type",
    "content-length",
    "date",
    "server",
    "transfer-encoding",
    "strict-transport-security",
    "connection",
    "etag",
];

/// The properties the broker sets on a dead letter (they come back as custom properties).
const DEAD_LETTER_REASON: &str = "deadletterreason";
const DEAD_LETTER_DESCRIPTION: &str = "deadlettererrordescription";

/// Splits a received message's custom properties (JSON-quoted header values) into the
/// application's and the broker's dead-letter ones.
fn application_properties(
    headers: &Headers,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut application = BTreeMap::new();
    let mut system = BTreeMap::new();
    for (name, value) in headers.iter() {
        let name = name.as_str().to_ascii_lowercase();
        if STANDARD_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let Ok(serde_json::Value::String(text)) =
            serde_json::from_str::<serde_json::Value>(value.as_str())
        else {
            continue;
        };
        if name == DEAD_LETTER_REASON || name == DEAD_LETTER_DESCRIPTION {
            system.insert(name, text);
        } else {
            application.insert(name, text);
        }
    }
    (application, system)
}

fn to_chrono(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

/// A settle call's failure: 404 / 410 on a lock location mean the lock is gone.
fn settle_error(error: azure_core::Error) -> BusError {
    match error.kind() {
        azure_core::error::ErrorKind::HttpResponse {
            status: StatusCode::NotFound | StatusCode::Gone,
            ..
        } => BusError::LockLost,
        _ => service_bus_error(error),
    }
}

fn service_bus_error(error: azure_core::Error) -> BusError {
    BusError::ServiceBus(error.to_string())
}

/// The text of the first element whose local name (without namespace prefix) is `name`.
fn element_text<'x>(xml: &'x str, name: &str) -> Option<&'x str> {
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        let end = rest.find('>')?;
        let tag = &rest[..end];
        let tag_name = tag.split_whitespace().next().unwrap_or("");
        let local = tag_name.rsplit(':').next().unwrap_or(tag_name);
        if local == name && !tag.ends_with('/') && !tag.starts_with('/') {
            let content = &rest[end + 1..];
            return Some(&content[..content.find('<')?]);
        }
        rest = &rest[end + 1..];
    }
    None
}

fn count_in(xml: &str, name: &str) -> Result<i64, BusError> {
    element_text(xml, name)
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| BusError::ServiceBus(format!("the queue description has no {name}")))
}

#[async_trait]
impl Bus for ServiceBus {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), BusError> {
        let body = message.checked_body()?;
        self.send_raw(
            queue,
            &message.message_id,
            message.correlation_id,
            message.session_id,
            &message.action,
            &body,
            &message.properties,
            None,
        )
        .await
    }

    async fn receive(
        &self,
        queue: QueueName,
        wait: Duration,
    ) -> Result<Option<ReceivedMessage>, BusError> {
        if queue.sessionful() {
            return self.receive_in_session(queue, wait).await;
        }
        Ok(self
            .peek_lock(queue, self.queue(queue), wait)
            .await?
            .map(|(message, _)| message))
    }

    async fn complete(&self, message: &ReceivedMessage) -> Result<(), BusError> {
        if handed_over(message) {
            return self.handoff.complete(message).await;
        }
        self.lock(message)?
            .response
            .delete_message()
            .await
            .map_err(settle_error)?;
        Ok(())
    }

    async fn abandon(&self, message: &ReceivedMessage, how: Abandon) -> Result<(), BusError> {
        if handed_over(message) {
            return self.handoff.abandon(message, how).await;
        }
        let lock = self.lock(message)?;
        let now = Utc::now();
        let deliveries = message.delivery_count;
        let max = self.config.max_delivery_count;
        let retry = self.config.retry;
        let last_error = how.error.as_deref().or(lock.last_error.as_deref());
        if retry.spent(deliveries, max, lock.retry_since, now) {
            let description =
                retry.spent_description(deliveries, max, lock.retry_since, now, last_error);
            return self
                .dead_letter(message, reasons::MAX_DELIVERY_COUNT_EXCEEDED, &description)
                .await;
        }
        let delay = how.delay.unwrap_or_else(|| retry.backoff(deliveries));
        // The lock must still be ours before a copy goes out, or two receivers would each
        // schedule one: a renewal checks it (and keeps it for the send).
        lock.response
            .renew_message_lock()
            .await
            .map_err(settle_error)?;
        self.send_retry_copy(message, lock, delay, last_error)
            .await?;
        self.complete(message).await
    }

    async fn release_sessions(&self, queue: QueueName) -> Result<(), BusError> {
        self.handoff.release_sessions(queue).await
    }

    async fn renew_lock(&self, message: &ReceivedMessage) -> Result<DateTime<Utc>, BusError> {
        if handed_over(message) {
            return self.handoff.renew_lock(message).await;
        }
        let lock = self.lock(message)?;
        let span = lock.lock_span;
        lock.response
            .renew_message_lock()
            .await
            .map_err(settle_error)?;
        // The REST answer carries no new deadline; the broker renews for its lock duration.
        let until = Utc::now() + span;
        if let Some(session) = &message.session_id {
            renew_session(&self.pool, message.queue, session, self.holder, until).await?;
        }
        Ok(until)
    }

    async fn complete_recorded(
        &self,
        message: &ReceivedMessage,
        pool: &PgPool,
        consumer: &str,
        key: &str,
    ) -> Result<(), BusError> {
        if handed_over(message) {
            return self
                .handoff
                .complete_recorded(message, pool, consumer, key)
                .await;
        }
        super::record_processed(pool, consumer, key).await?;
        self.complete(message).await
    }

    async fn dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &str,
        description: &str,
    ) -> Result<(), BusError> {
        if handed_over(message) {
            return self.handoff.dead_letter(message, reason, description).await;
        }
        let lock = self.lock(message)?;
        sqlx::query(
            "INSERT INTO bus_dead_letters (queue, message_id, sequence_number, correlation_id,
                    action, body, properties, enqueued_at, delivery_count, reason, description,
                    session_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (queue, message_id) DO UPDATE
                SET sequence_number = EXCLUDED.sequence_number, body = EXCLUDED.body,
                    session_id = EXCLUDED.session_id,
                    properties = EXCLUDED.properties, delivery_count = EXCLUDED.delivery_count,
                    reason = EXCLUDED.reason, description = EXCLUDED.description,
                    dead_lettered_at = now()",
        )
        .bind(message.queue.as_str())
        .bind(&message.message_id)
        .bind(message.sequence_number)
        .bind(&message.correlation_id)
        .bind(&message.action)
        .bind(&message.body)
        .bind(Json(&message.properties))
        .bind(message.enqueued_at)
        .bind(message.delivery_count as i32)
        .bind(reason)
        .bind(description)
        .bind(&message.session_id)
        .execute(&self.pool)
        .await?;
        if let Err(error) = lock.response.delete_message().await.map_err(settle_error) {
            // Still in the queue, and maybe with another receiver now: not a dead letter.
            sqlx::query("DELETE FROM bus_dead_letters WHERE queue = $1 AND message_id = $2")
                .bind(message.queue.as_str())
                .bind(&message.message_id)
                .execute(&self.pool)
                .await?;
            return Err(error);
        }
        Ok(())
    }

    async fn stats(&self, queue: QueueName) -> Result<QueueStats, BusError> {
        let description = self.queue_description(queue).await?;
        // Scheduled messages (retries waiting out their backoff) are still in the queue.
        // Messages handed over to a session's holder wait in PostgreSQL.
        let (handed_over, oldest_handed_over): (i64, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT count(*), min(enqueued_at) FROM bus_messages WHERE queue = $1")
                .bind(queue.as_str())
                .fetch_one(&self.pool)
                .await?;
        let active = count_in(&description, "ActiveMessageCount")?
            + count_in(&description, "ScheduledMessageCount").unwrap_or(0)
            + handed_over;
        let broker_dead = count_in(&description, "DeadLetterMessageCount")?;
        let parked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM bus_dead_letters WHERE queue = $1")
                .bind(queue.as_str())
                .fetch_one(&self.pool)
                .await?;
        // The broker's oldest, by peek (AMQP: REST cannot browse), and the oldest handed over.
        let oldest_at_broker = super::peek::oldest_enqueued_at(&self.config, queue).await?;
        let oldest_enqueued_at = [oldest_at_broker, oldest_handed_over]
            .into_iter()
            .flatten()
            .min();
        Ok(QueueStats {
            queue,
            depth: active,
            oldest_enqueued_at,
            dead_letters: broker_dead + parked,
        })
    }

    async fn dead_letters(
        &self,
        queue: QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let mut letters = list_parked(&self.pool, queue, limit).await?;
        let wanted = limit
            .saturating_sub(letters.len())
            .min(self.config.dead_letter_scan_limit);
        let locked = self.lock_broker_dead_letters(queue, wanted).await?;
        for (message, system) in &locked {
            letters.push(DeadLetter {
                queue,
                message_id: message.message_id.clone(),
                correlation_id: message.correlation_id.clone(),
                action: message.action.clone(),
                body: message.body.clone(),
                properties: message.properties.clone(),
                enqueued_at: Some(message.enqueued_at),
                delivery_count: message.delivery_count,
                reason: system.get(DEAD_LETTER_REASON).cloned().unwrap_or_default(),
                description: with_last_error(
                    system
                        .get(DEAD_LETTER_DESCRIPTION)
                        .cloned()
                        .unwrap_or_default(),
                    self.lock(message)?.last_error.as_deref(),
                ),
            });
        }
        // Listing is not taking: give every broker dead letter back.
        for (message, _) in &locked {
            self.unlock(message).await?;
        }
        Ok(letters)
    }

    async fn resubmit(&self, queue: QueueName, message_id: &str) -> Result<bool, BusError> {
        // Parked by a consumer?
        let parked: Option<(
            Option<String>,
            String,
            String,
            Json<BTreeMap<String, String>>,
            Option<String>,
        )> = sqlx::query_as(
            "SELECT correlation_id, action, body, properties, session_id FROM bus_dead_letters
                  WHERE queue = $1 AND message_id = $2",
        )
        .bind(queue.as_str())
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((correlation_id, action, body, Json(properties), session_id)) = parked {
            let original = properties
                .get(ORIGINAL_MESSAGE_ID)
                .cloned()
                .unwrap_or_else(|| message_id.to_string());
            self.send_copy(
                queue,
                &original,
                &action,
                correlation_id,
                &body,
                properties,
                session_id,
            )
            .await?;
            sqlx::query("DELETE FROM bus_dead_letters WHERE queue = $1 AND message_id = $2")
                .bind(queue.as_str())
                .bind(message_id)
                .execute(&self.pool)
                .await?;
            return Ok(true);
        }
        // In the broker's dead-letter sub-queue?
        let locked = self
            .lock_broker_dead_letters(queue, self.config.dead_letter_scan_limit)
            .await?;
        let mut found = false;
        for (message, _) in &locked {
            if !found && message.message_id == message_id {
                self.send_copy(
                    queue,
                    message.dedupe_key(),
                    &message.action,
                    message.correlation_id.clone(),
                    &message.body,
                    message.properties.clone(),
                    message.session_id.clone(),
                )
                .await?;
                self.complete(message).await?;
                found = true;
            } else {
                self.unlock(message).await?;
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_namespace_connection_string() {
        let c = ServiceBusConfig::from_connection_string(
            "Endpoint=sb://dev-servicebus-zionet-learning.servicebus.windows.net/;\
             SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc+def/ghi=",
        )
        .unwrap();
        assert_eq!(c.namespace, "dev-servicebus-zionet-learning");
        assert_eq!(c.policy_name, "RootManageSharedAccessKey");
        assert_eq!(c.key, "abc+def/ghi=");
        assert!(
            !format!("{c:?}").contains("abc+def"),
            "the key is not printed"
        );
        assert!(ServiceBusConfig::from_connection_string("Endpoint=sb://x.example.com/").is_err());
        assert!(ServiceBusConfig::from_connection_string(
            "Endpoint=sb://n.servicebus.windows.net/;SharedAccessKeyName=p"
        )
        .is_err());
        assert!(ServiceBusConfig::from_connection_string(
            "Endpoint=sb://n.servicebus.windows.net/;SharedAccessKeyName=p;SharedAccessKey=k;\
             EntityPath=engine-queue"
        )
        .is_err());
    }

    #[test]
    fn reads_statistics_with_the_stats_policy_of_the_same_namespace() {
        let data = ServiceBusConfig::from_connection_string(
            "Endpoint=sb://dev-sb.servicebus.windows.net/;SharedAccessKeyName=teachin-app;\
             SharedAccessKey=data-key",
        )
        .unwrap();
        // Without a stats policy, the data policy reads statistics.
        assert_eq!(data.statistics_policy().name, "teachin-app");
        let both = data
            .clone()
            .with_stats_connection_string(
                "Endpoint=sb://dev-sb.servicebus.windows.net/;SharedAccessKeyName=teachin-stats;\
                 SharedAccessKey=stats-key",
            )
            .unwrap();
        assert_eq!(both.policy_name, "teachin-app");
        let stats = both.statistics_policy();
        assert_eq!(
            (stats.name.as_str(), stats.key.as_str()),
            ("teachin-stats", "stats-key")
        );
        assert!(
            !format!("{both:?}").contains("stats-key"),
            "the key is not printed"
        );
        let elsewhere = data
            .with_stats_connection_string(
                "Endpoint=sb://prod-sb.servicebus.windows.net/;SharedAccessKeyName=s;SharedAccessKey=k",
            )
            .unwrap_err();
        assert!(elsewhere.contains("prod-sb"), "{elsewhere}");
    }

    #[test]
    fn sas_tokens_sign_the_encoded_resource_and_expiry() {
        let token = sas_token(
            "https://n.servicebus.windows.net/q",
            "policy",
            "key",
            1_700_000_000,
        );
        let expected_sr = "https%3A%2F%2Fn.servicebus.windows.net%2Fq";
        assert!(token.starts_with(&format!("SharedAccessSignature sr={expected_sr}&sig=")));
        assert!(token.ends_with("&se=1700000000&skn=policy"));
        // A different key signs differently.
        assert_ne!(
            token,
            sas_token(
                "https://n.servicebus.windows.net/q",
                "policy",
                "other",
                1_700_000_000
            )
        );
    }

    #[test]
    fn finds_counts_by_local_name_whatever_the_prefix() {
        let xml = r#"<entry><content type="application/xml"><QueueDescription><MessageCount>7</MessageCount>
            <CountDetails xmlns:d2p1="http://schemas.microsoft.com/netservices/2011/06/servicebus">
            <d2p1:ActiveMessageCount>5</d2p1:ActiveMessageCount><d2p1:DeadLetterMessageCount>2</d2p1:DeadLetterMessageCount>
            </CountDetails></QueueDescription></content></entry>"#;
        assert_eq!(count_in(xml, "ActiveMessageCount").unwrap(), 5);
        assert_eq!(count_in(xml, "DeadLetterMessageCount").unwrap(), 2);
        assert_eq!(count_in(xml, "MessageCount").unwrap(), 7);
        assert!(count_in(xml, "ScheduledMessageCount").is_err());
    }
}
