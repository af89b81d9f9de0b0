//! The oldest message of a Service Bus queue, read by **peeking** over AMQP.
//!
//! The queue-age alert needs the enqueue time of the oldest message still in a queue, and
//! nothing else the adapter can reach gives it: the management API (REST) has counts only, the
//! REST data API has no browse (its only reads, peek-lock and receive-and-delete, take a
//! message: a peek-lock spends a delivery and hides the message from the consumers), and what
//! receivers happen to see says nothing about the messages nobody has taken — which are the
//! ones the alert is for (consumers down or stuck). Service Bus's own answer is the peek, a
//! non-destructive browse that only AMQP has: the management operation
//! `com.microsoft:peek-message` on the queue's `$management` node (request: `operation` in the
//! application properties, an amqp-value map `from-sequence-number` (long), `message-count`
//! (int); answer: `statusCode` 200 with `messages`, a list of maps whose `message` is a whole
//! AMQP message encoded as binary, or 204 when no message is at or past that sequence number).
//! Peek sees every message in the queue, locked, scheduled and deferred ones included, in
//! sequence-number order.
//!
//! A message's age counts from when it was **first** enqueued, as on the PostgreSQL backend
//! (whose abandon keeps `enqueued_at`): a retry copy carries its original's first enqueue
//! (`teachin-enqueued-at`, see [`super::servicebus`]), which wins over the copy's own
//! `x-opt-enqueued-time`. A message whose absolute expiry has passed is skipped (the broker is
//! about to drop or dead-letter it; peek may still return it meanwhile).
//!
//! **How true the answer is.** The scan reads at most [`PEEK_LIMIT`] messages per queue, and
//! asks for no further page once [`PEEK_BUDGET`] has passed. When it has read the whole queue,
//! the answer is exact (the minimum over every message). Otherwise the messages not read are
//! left out, so the answer is never older than the truth: the reported age is a lower bound,
//! and an alert on it never fires falsely. It can only be late when a retry copy whose first
//! enqueue is the oldest sits behind the part read; a plain backlog is read oldest first
//! (sequence order is enqueue order), so its first page already holds its oldest message.
//!
//! One connection per call (TLS to `{namespace}.servicebus.windows.net:5671`, SASL PLAIN with
//! the stats policy's name and key — Service Bus accepts a shared access rule that way; peek
//! needs Listen), closed after it; a call is bounded by [`PEEK_TIMEOUT`]. fe2o3-amqp speaks the
//! protocol; the transport is made here (tokio-rustls on ring), so a test endpoint can take
//! plain TCP instead ([`PeekEndpoint::Local`]).

use super::servicebus::ServiceBusConfig;
use super::{BusError, QueueName};
use chrono::{DateTime, Utc};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{OrderedMap, SimpleValue, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The management operation that browses a queue.
pub const PEEK_OPERATION: &str = "com.microsoft:peek-message";
/// Service Bus's AMQP-over-TLS port.
pub const AMQPS_PORT: u16 = 5671;
/// Messages asked for per request.
pub const PEEK_PAGE: i32 = 50;
/// Messages read at most per queue and call (see the module comment).
pub const PEEK_LIMIT: usize = 500;
/// The longest a whole peek (connect, scan, close) may take.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(5);
/// After this long, a scan asks for no further page and answers with what it has read (a
/// large backlog of large messages must not cost the whole scrape its queue gauges).
pub const PEEK_BUDGET: Duration = Duration::from_secs(2);

/// The property a retry copy carries its original's first enqueue in (RFC 3339).
pub(crate) const FIRST_ENQUEUED_AT: &str = "teachin-enqueued-at";
/// Message annotations Service Bus sets on every message.
pub const ENQUEUED_TIME: &str = "x-opt-enqueued-time";
pub const SEQUENCE_NUMBER: &str = "x-opt-sequence-number";

/// Where the peek connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeekEndpoint {
    /// `amqps://{namespace}.servicebus.windows.net:5671` (production).
    #[default]
    Namespace,
    /// Plain AMQP on a local address: a test endpoint standing in for the namespace. Set in
    /// code only, never from the environment.
    Local(SocketAddr),
}

/// The earliest first enqueue among the messages of `queue` (see the module comment);
/// `None` when the queue has none.
pub async fn oldest_enqueued_at(
    config: &ServiceBusConfig,
    queue: QueueName,
) -> Result<Option<DateTime<Utc>>, BusError> {
    tokio::time::timeout(PEEK_TIMEOUT, scan(config, queue))
        .await
        .map_err(|_| failed(queue, format!("no answer within {PEEK_TIMEOUT:?}")))?
}

fn failed(queue: QueueName, why: impl std::fmt::Display) -> BusError {
    BusError::ServiceBus(format!("peeking at {queue}: {why}"))
}

async fn scan(
    config: &ServiceBusConfig,
    queue: QueueName,
) -> Result<Option<DateTime<Utc>>, BusError> {
    let e = |why: &dyn std::fmt::Display| failed(queue, why);
    let policy = config.statistics_policy();
    let host = config.host();
    let builder = Connection::builder()
        .container_id(format!("teachin-stats-{}", uuid::Uuid::new_v4()))
        .hostname(host.as_str())
        .sasl_hostname(host.as_str())
        .scheme("amqp")
        .sasl_profile(SaslProfile::Plain {
            username: policy.name.clone(),
            password: policy.key.clone(),
        });
    let mut connection = match config.peek_endpoint {
        PeekEndpoint::Namespace => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), AMQPS_PORT))
                .await
                .map_err(|x| e(&x))?;
            let name = rustls_pki_types_name(&host).map_err(|x| e(&x))?;
            let tls = tls_connector()
                .connect(name, tcp)
                .await
                .map_err(|x| e(&x))?;
            builder.open_with_stream(tls).await.map_err(|x| e(&x))?
        }
        PeekEndpoint::Local(addr) => {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|x| e(&x))?;
            builder.open_with_stream(tcp).await.map_err(|x| e(&x))?
        }
    };
    let result = async {
        let mut session = Session::begin(&mut connection).await.map_err(|x| e(&x))?;
        let node = format!("{}/$management", queue.as_str());
        let client = uuid::Uuid::new_v4();
        let reply_to = format!("teachin-stats-{client}");
        let mut sender =
            Sender::attach(&mut session, format!("{reply_to}-requests"), node.as_str())
                .await
                .map_err(|x| e(&x))?;
        let mut receiver = Receiver::builder()
            .name(format!("{reply_to}-replies"))
            .source(node.as_str())
            .target(reply_to.as_str())
            .attach(&mut session)
            .await
            .map_err(|x| e(&x))?;
        let mut oldest: Option<DateTime<Utc>> = None;
        let mut from: i64 = 0;
        let mut read = 0usize;
        let now = Utc::now();
        let started = tokio::time::Instant::now();
        while read < PEEK_LIMIT && (read == 0 || started.elapsed() < PEEK_BUDGET) {
            let request = Message::builder()
                .properties(
                    Properties::builder()
                        .message_id(MessageId::String(uuid::Uuid::new_v4().to_string()))
                        .reply_to(reply_to.clone())
                        .build(),
                )
                .application_properties(
                    ApplicationProperties::builder()
                        .insert("operation", PEEK_OPERATION)
                        .build(),
                )
                .value(peek_request(from, PEEK_PAGE))
                .build();
            match sender.send(request).await.map_err(|x| e(&x))? {
                Outcome::Accepted(_) => {}
                other => return Err(e(&format!("the request was not accepted: {other:?}"))),
            }
            let delivery = receiver.recv::<Body<Value>>().await.map_err(|x| e(&x))?;
            receiver.accept(&delivery).await.map_err(|x| e(&x))?;
            let page = read_peek_reply(delivery.into_message()).map_err(|x| e(&x))?;
            if page.is_empty() {
                break;
            }
            for peeked in &page {
                from = from.max(peeked.sequence + 1);
                if peeked.expired(now) {
                    continue;
                }
                oldest = Some(oldest.map_or(peeked.enqueued_at, |o| o.min(peeked.enqueued_at)));
            }
            read += page.len();
        }
        sender.close().await.ok();
        receiver.close().await.ok();
        session.end().await.ok();
        Ok(oldest)
    }
    .await;
    connection.close().await.ok();
    result
}

/// The TLS client: the public web roots (Service Bus's certificates chain to them).
fn tls_connector() -> tokio_rustls::TlsConnector {
    let roots = tokio_rustls::rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn rustls_pki_types_name(
    host: &str,
) -> Result<tokio_rustls::rustls::pki_types::ServerName<'static>, String> {
    tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|x| format!("`{host}` is not a server name: {x}"))
}

/// The body of a peek request.
pub fn peek_request(from_sequence_number: i64, message_count: i32) -> Value {
    let mut map = OrderedMap::new();
    map.insert(
        Value::String("from-sequence-number".into()),
        Value::Long(from_sequence_number),
    );
    map.insert(
        Value::String("message-count".into()),
        Value::Int(message_count),
    );
    Value::Map(map)
}

/// What the scan needs of one peeked message.
#[derive(Debug, Clone, PartialEq)]
pub struct Peeked {
    pub sequence: i64,
    /// Its first enqueue (a retry copy's original's).
    pub enqueued_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl Peeked {
    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Reads a peeked message (as Service Bus encodes it inside the reply).
    pub fn read(message: &Message<Body<Value>>) -> Result<Peeked, String> {
        let annotation = |name: &str| {
            message.message_annotations.as_ref().and_then(|a| {
                a.0.iter()
                    .find(|(k, _)| {
                        matches!(k, fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s) if s.0 == name)
                    })
                    .map(|(_, v)| v.clone())
            })
        };
        let sequence = match annotation(SEQUENCE_NUMBER) {
            Some(Value::Long(n)) => n,
            other => return Err(format!("{SEQUENCE_NUMBER} is {other:?}")),
        };
        let broker_enqueued = match annotation(ENQUEUED_TIME) {
            Some(Value::Timestamp(t)) => from_millis(t.milliseconds())?,
            other => return Err(format!("{ENQUEUED_TIME} is {other:?}")),
        };
        let first = message
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get(FIRST_ENQUEUED_AT))
            .and_then(|v| match v {
                SimpleValue::String(text) => DateTime::parse_from_rfc3339(text).ok(),
                _ => None,
            })
            .map(|t| t.with_timezone(&Utc));
        let expires_at = message
            .properties
            .as_ref()
            .and_then(|p| p.absolute_expiry_time.as_ref())
            // An expiry past what a time can hold (the default TTL is ~29,000 years) is none.
            .and_then(|t| DateTime::from_timestamp_millis(t.milliseconds()));
        Ok(Peeked {
            sequence,
            enqueued_at: first.map_or(broker_enqueued, |f| f.min(broker_enqueued)),
            expires_at,
        })
    }
}

fn from_millis(ms: i64) -> Result<DateTime<Utc>, String> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("{ms} ms is not a time"))
}

/// A value of a map whose keys are strings or symbols.
fn entry<'v>(map: &'v OrderedMap<Value, Value>, name: &str) -> Option<&'v Value> {
    map.iter().find_map(|(k, v)| match k {
        Value::String(s) if s == name => Some(v),
        Value::Symbol(s) if s.0 == name => Some(v),
        _ => None,
    })
}

/// The messages of a peek reply: none on 204, the decoded `messages` on 200.
pub fn read_peek_reply(reply: Message<Body<Value>>) -> Result<Vec<Peeked>, String> {
    let status = reply
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get("statusCode").or_else(|| p.0.get("status-code")))
        .and_then(|v| match v {
            SimpleValue::Int(n) => Some(i64::from(*n)),
            SimpleValue::Uint(n) => Some(i64::from(*n)),
            SimpleValue::Long(n) => Some(*n),
            _ => None,
        })
        .ok_or("the reply has no statusCode")?;
    let description = reply
        .application_properties
        .as_ref()
        .and_then(|p| p.0.get("statusDescription"))
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    match status {
        204 => return Ok(Vec::new()),
        200 => {}
        other => return Err(format!("the broker answered {other} {description}")),
    }
    let Body::Value(AmqpValue(Value::Map(body))) = reply.body else {
        return Err("the reply's body is not a map".into());
    };
    let Some(Value::List(messages)) = entry(&body, "messages") else {
        return Err("the reply has no `messages` list".into());
    };
    let mut peeked = Vec::with_capacity(messages.len());
    for item in messages {
        let Value::Map(item) = item else {
            return Err("a peeked entry is not a map".into());
        };
        let Some(Value::Binary(bytes)) = entry(item, "message") else {
            return Err("a peeked entry has no `message` binary".into());
        };
        let message = decode_message(bytes)?;
        peeked.push(Peeked::read(&message)?);
    }
    Ok(peeked)
}

/// A whole AMQP message from its encoding (how a peek reply carries each message).
pub fn decode_message(bytes: &[u8]) -> Result<Message<Body<Value>>, String> {
    use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
    Body::<Value>::decode_message_from_reader(serde_amqp::read::SliceReader::new(bytes))
        .map_err(|x| format!("a peeked message does not decode: {x}"))
}

/// The encoding of a whole AMQP message (what a peek reply carries; for test endpoints).
pub fn encode_message(message: Message<Body<Value>>) -> Result<Vec<u8>, String> {
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    serde_amqp::to_vec(&Serializable(message)).map_err(|x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::MessageAnnotations;
    use fe2o3_amqp::types::primitives::{Binary, Timestamp};

    fn reply(status: i32, body: Value) -> Message<Body<Value>> {
        Message::builder()
            .application_properties(
                ApplicationProperties::builder()
                    .insert("statusCode", SimpleValue::Int(status))
                    .build(),
            )
            .body(Body::Value(AmqpValue(body)))
            .build()
    }

    fn peeked(sequence: i64, enqueued_ms: i64, first: Option<&str>) -> Value {
        let mut properties = ApplicationProperties::builder();
        if let Some(first) = first {
            properties = properties.insert(FIRST_ENQUEUED_AT, first);
        }
        let message = Message::builder()
            .message_annotations(
                MessageAnnotations::builder()
                    .insert(SEQUENCE_NUMBER, Value::Long(sequence))
                    .insert(
                        ENQUEUED_TIME,
                        Value::Timestamp(Timestamp::from_milliseconds(enqueued_ms)),
                    )
                    .build(),
            )
            .application_properties(properties.build())
            .body(Body::Value(AmqpValue(Value::String("{}".into()))))
            .build();
        let mut entry = OrderedMap::new();
        entry.insert(
            Value::String("message".into()),
            Value::Binary(Binary::from(encode_message(message).unwrap())),
        );
        Value::Map(entry)
    }

    #[test]
    fn reads_the_peeked_messages_and_a_retrys_first_enqueue() {
        let mut body = OrderedMap::new();
        body.insert(
            Value::String("messages".into()),
            Value::List(vec![
                peeked(7, 1_700_000_000_000, None),
                // A retry copy: enqueued (scheduled) later, first enqueued earlier.
                peeked(9, 1_700_000_600_000, Some("2023-11-14T22:00:00Z")),
            ]),
        );
        let page = read_peek_reply(reply(200, Value::Map(body))).unwrap();
        assert_eq!(
            page.iter().map(|p| p.sequence).collect::<Vec<_>>(),
            vec![7, 9]
        );
        assert_eq!(
            page[0].enqueued_at,
            DateTime::from_timestamp_millis(1_700_000_000_000).unwrap()
        );
        assert_eq!(
            page[1].enqueued_at.to_rfc3339(),
            "2023-11-14T22:00:00+00:00"
        );
    }

    #[test]
    fn no_content_is_the_end_and_other_statuses_are_errors() {
        assert!(read_peek_reply(reply(204, Value::Map(OrderedMap::new())))
            .unwrap()
            .is_empty());
        let refused = read_peek_reply(reply(401, Value::Map(OrderedMap::new()))).unwrap_err();
        assert!(refused.contains("401"), "{refused}");
        assert_eq!(
            peek_request(5, PEEK_PAGE),
            Value::Map({
                let mut m = OrderedMap::new();
                m.insert(Value::String("from-sequence-number".into()), Value::Long(5));
                m.insert(Value::String("message-count".into()), Value::Int(PEEK_PAGE));
                m
            })
        );
    }
}
