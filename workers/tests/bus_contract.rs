//! The bus contract: one test function per behaviour, run against both backends — the
//! PostgreSQL queue, and the Service Bus adapter talking HTTP to a local endpoint with the
//! Service Bus REST semantics. A backend that passes these can stand in for the other.
//!
//! Waiting is bounded polling (a receive that waits up to N seconds), never a sleep whose
//! length decides the outcome; where the behaviour *is* about time (lock expiry, renewal,
//! a retry's delay), the margins are seconds wide. The fixtures back off briefly (100 ms
//! doubling to 1 s) and have no time budget unless a test says otherwise, so the tests of
//! delivery counts run as before.

use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use teachin_commands::testing::TestDatabase;
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::servicebus::ServiceBus;
use teachin_workers::bus::{
    reasons, resubmit_all, Abandon, Bus, BusError, OutgoingMessage, QueueName, ReceivedMessage,
    RetryPolicy,
};
use teachin_workers::consumer::{Consumer, Handler, HandlerError, MessageContext, Settled};
use teachin_workers::testing::{LocalServiceBus, LocalServiceBusSettings, Partitioned};

const Q: QueueName = QueueName::Engine;
const NONE_WAIT: Duration = Duration::from_secs(1);
const SOME_WAIT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    ServiceBus,
}

struct Fixture {
    bus: Arc<dyn Bus>,
    /// A second receiver on the same queues: another process's bus (its own receiver id,
    /// its own HTTP client or pool use), as a second replica has.
    other: Arc<dyn Bus>,
    db: TestDatabase,
    _endpoint: Option<LocalServiceBus>,
}

/// Brief backoff, no time budget: deliveries alone decide, as the count tests expect.
fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        backoff_base: Duration::from_millis(100),
        backoff_cap: Duration::from_secs(1),
        min_retry_span: Duration::ZERO,
    }
}

impl Backend {
    async fn fixture(self, lock: Duration, max_delivery_count: u32) -> Fixture {
        self.fixture_with(lock, max_delivery_count, quick_retries())
            .await
    }

    async fn fixture_with(
        self,
        lock: Duration,
        max_delivery_count: u32,
        retry: RetryPolicy,
    ) -> Fixture {
        let db = TestDatabase::new().await;
        match self {
            Backend::Postgres => {
                let bus = || -> Arc<dyn Bus> {
                    Arc::new(
                        PostgresBus::new(
                            db.pool.clone(),
                            PostgresBusConfig {
                                lock_duration: lock,
                                max_delivery_count,
                                ..PostgresBusConfig::default()
                            },
                        )
                        .with_retry(retry),
                    )
                };
                Fixture {
                    bus: bus(),
                    other: bus(),
                    db,
                    _endpoint: None,
                }
            }
            Backend::ServiceBus => {
                let endpoint = LocalServiceBus::start(LocalServiceBusSettings {
                    lock_duration: lock,
                    max_delivery_count,
                    ..LocalServiceBusSettings::default()
                })
                .await;
                let mut config = endpoint.config();
                config.retry = retry;
                let bus = || -> Arc<dyn Bus> {
                    Arc::new(
                        ServiceBus::new(config.clone(), endpoint.http_client(), db.pool.clone())
                            .expect("the adapter starts"),
                    )
                };
                let (bus, other) = (bus(), bus());
                Fixture {
                    bus,
                    other,
                    db,
                    _endpoint: Some(endpoint),
                }
            }
        }
    }

    async fn plain(self) -> Fixture {
        self.fixture(Duration::from_secs(30), 10).await
    }
}

fn message(id: &str, n: i64) -> OutgoingMessage {
    OutgoingMessage::new(id, "GenerateSentences", serde_json::json!({ "count": n }))
}

async fn send_receive_complete(backend: Backend) {
    let f = backend.plain().await;
    let started = chrono::Utc::now() - chrono::Duration::seconds(5);
    f.bus
        .send(
            Q,
            message("m-1", 3)
                .with_correlation_id("corr-1")
                .with_property("Tenant", "dev"),
        )
        .await
        .unwrap();
    assert_eq!(f.bus.stats(Q).await.unwrap().depth, 1);

    let got = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("the message");
    assert_eq!(got.queue, Q);
    assert_eq!(got.message_id, "m-1");
    assert_eq!(got.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(got.action, "GenerateSentences");
    assert_eq!(
        got.payload::<serde_json::Value>().unwrap(),
        serde_json::json!({"count": 3})
    );
    assert_eq!(
        got.properties.get("tenant").map(String::as_str),
        Some("dev")
    );
    assert_eq!(got.delivery_count, 1);
    assert!(got.enqueued_at >= started, "enqueued {} ", got.enqueued_at);
    assert!(got.locked_until > chrono::Utc::now());
    // Locked: nobody else gets it.
    assert!(f.bus.receive(Q, NONE_WAIT).await.unwrap().is_none());
    // Other queues are separate.
    assert!(f
        .bus
        .receive(QueueName::Accessor, Duration::ZERO)
        .await
        .unwrap()
        .is_none());

    f.bus.complete(&got).await.unwrap();
    assert!(f.bus.receive(Q, NONE_WAIT).await.unwrap().is_none());
    let stats = f.bus.stats(Q).await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 0));
    // Completing twice: the lock is gone.
    assert!(matches!(
        f.bus.complete(&got).await,
        Err(BusError::LockLost)
    ));
}

async fn abandon_increments_delivery_count(backend: Backend) {
    let f = backend.plain().await;
    f.bus.send(Q, message("m-1", 1)).await.unwrap();
    let first = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    assert_eq!(first.delivery_count, 1);
    f.bus.abandon(&first, Abandon::now()).await.unwrap();
    let second = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("back at once");
    assert_eq!(second.message_id, "m-1");
    assert_eq!(second.delivery_count, 2);
    // The first lock is no longer valid.
    assert!(matches!(
        f.bus.complete(&first).await,
        Err(BusError::LockLost)
    ));
    f.bus.complete(&second).await.unwrap();
}

async fn lock_expiry_redelivers(backend: Backend) {
    let f = backend.fixture(Duration::from_secs(1), 10).await;
    f.bus.send(Q, message("m-1", 1)).await.unwrap();
    let first = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    // Never settled, as by a worker killed mid-message: it comes back with one more delivery.
    let again = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("redelivered");
    assert_eq!(again.message_id, "m-1");
    assert_eq!(again.delivery_count, 2);
    assert!(matches!(
        f.bus.complete(&first).await,
        Err(BusError::LockLost)
    ));
    f.bus.complete(&again).await.unwrap();
    assert_eq!(f.bus.stats(Q).await.unwrap().depth, 0);
}

async fn renew_keeps_the_lock(backend: Backend) {
    let lock = Duration::from_secs(5);
    let f = backend.fixture(lock, 10).await;
    f.bus.send(Q, message("m-1", 1)).await.unwrap();
    let got = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    let received = std::time::Instant::now();
    tokio::time::sleep(lock / 2).await;
    let renewed_until = f.bus.renew_lock(&got).await.unwrap();
    assert!(renewed_until > got.locked_until);
    // Past the first lock's end (with a margin for Service Bus's whole-second times), the
    // message is still held: nobody else receives it, and its holder completes it.
    let past_first_lock = lock + Duration::from_millis(1200);
    tokio::time::sleep(past_first_lock.saturating_sub(received.elapsed())).await;
    assert!(f.bus.receive(Q, Duration::ZERO).await.unwrap().is_none());
    f.bus.complete(&got).await.unwrap();
}

async fn dead_letter_after_max_deliveries(backend: Backend) {
    let f = backend.fixture(Duration::from_secs(30), 2).await;
    f.bus
        .send(Q, message("poison", 1).with_correlation_id("c"))
        .await
        .unwrap();
    for delivery in 1..=2 {
        let got = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
        assert_eq!(got.delivery_count, delivery);
        f.bus.abandon(&got, Abandon::backoff()).await.unwrap();
    }
    assert!(
        f.bus.receive(Q, NONE_WAIT).await.unwrap().is_none(),
        "out of deliveries"
    );
    let stats = f.bus.stats(Q).await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 1));
    let letters = f.bus.dead_letters(Q, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, "poison");
    assert_eq!(letters[0].action, "GenerateSentences");
    assert_eq!(letters[0].reason, reasons::MAX_DELIVERY_COUNT_EXCEEDED);
    // Listing does not take it away.
    assert_eq!(f.bus.dead_letters(Q, 10).await.unwrap().len(), 1);

    // Resubmitted: back in the queue with fresh deliveries, known by its original id.
    assert!(f.bus.resubmit(Q, "poison").await.unwrap());
    assert!(f.bus.dead_letters(Q, 10).await.unwrap().is_empty());
    let back = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("resubmitted");
    assert_eq!(back.dedupe_key(), "poison");
    assert_eq!(back.delivery_count, 1);
    assert_eq!(back.correlation_id.as_deref(), Some("c"));
    assert_eq!(
        back.payload::<serde_json::Value>().unwrap(),
        serde_json::json!({"count": 1})
    );
    f.bus.complete(&back).await.unwrap();
}

async fn abandoned_with_a_delay_comes_back_after_it_not_before(backend: Backend) {
    let f = backend.plain().await;
    f.bus
        .send(
            Q,
            message("m-1", 1)
                .with_correlation_id("corr-1")
                .with_property("tenant", "dev"),
        )
        .await
        .unwrap();
    let first = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    let delay = Duration::from_secs(4);
    let abandoned = std::time::Instant::now();
    f.bus
        .abandon(
            &first,
            Abandon::after(delay).with_error("the relay said 451"),
        )
        .await
        .unwrap();
    // Not before: a receiver polling for half the delay gets nothing, though the message is
    // still in the queue.
    assert!(
        f.bus
            .receive(Q, Duration::from_secs(2))
            .await
            .unwrap()
            .is_none(),
        "redelivered before its delay"
    );
    assert_eq!(f.bus.stats(Q).await.unwrap().depth, 1);
    // After: it comes back, the same message with one more delivery.
    let again = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("redelivered after its delay");
    // (A small allowance for the database's wall clock against this process's monotonic one.)
    assert!(
        abandoned.elapsed() + Duration::from_millis(100) >= delay,
        "back after {:?} of {delay:?}",
        abandoned.elapsed()
    );
    assert_eq!(again.message_id, "m-1");
    assert_eq!(again.dedupe_key(), "m-1");
    assert_eq!(again.delivery_count, 2);
    assert_eq!(again.correlation_id.as_deref(), Some("corr-1"));
    assert_eq!(again.enqueued_at, first.enqueued_at);
    assert_eq!(
        again.properties, first.properties,
        "the backend's bookkeeping is not shown"
    );
    assert_eq!(
        again.payload::<serde_json::Value>().unwrap(),
        serde_json::json!({"count": 1})
    );
    assert!(matches!(
        f.bus.complete(&first).await,
        Err(BusError::LockLost)
    ));
    f.bus.complete(&again).await.unwrap();
    let stats = f.bus.stats(Q).await.unwrap();
    assert_eq!((stats.depth, stats.dead_letters), (0, 0));
}

async fn dead_letter_waits_for_the_time_budget_and_keeps_the_last_error(backend: Backend) {
    let budget = Duration::from_secs(5);
    let f = backend
        .fixture_with(
            Duration::from_secs(30),
            2,
            RetryPolicy {
                backoff_base: Duration::from_millis(100),
                backoff_cap: Duration::from_millis(200),
                min_retry_span: budget,
            },
        )
        .await;
    let sent = std::time::Instant::now();
    f.bus.send(Q, message("flaky", 1)).await.unwrap();
    let mut deliveries = 0;
    let last_abandon = loop {
        let got = f
            .bus
            .receive(Q, SOME_WAIT)
            .await
            .unwrap()
            .expect("not dead-lettered yet, so it comes back");
        deliveries += 1;
        assert_eq!(got.delivery_count, deliveries);
        assert!(deliveries < 100, "the time budget never ran out");
        let abandoned = std::time::Instant::now();
        f.bus
            .abandon(
                &got,
                Abandon::backoff().with_error(format!("attempt {deliveries} failed")),
            )
            .await
            .unwrap();
        if f.bus.stats(Q).await.unwrap().dead_letters == 1 {
            break abandoned;
        }
    };
    // Out of deliveries after two, but kept until the time budget was spent too.
    assert!(
        deliveries > 2,
        "dead-lettered after {deliveries} deliveries"
    );
    assert!(
        last_abandon.duration_since(sent) + Duration::from_millis(100) >= budget,
        "dead-lettered {:?} after the send",
        last_abandon.duration_since(sent)
    );
    assert!(f.bus.receive(Q, NONE_WAIT).await.unwrap().is_none());
    let letters = f.bus.dead_letters(Q, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message_id, "flaky");
    assert_eq!(letters[0].reason, reasons::MAX_DELIVERY_COUNT_EXCEEDED);
    assert!(
        letters[0]
            .description
            .contains(&format!("attempt {deliveries} failed")),
        "the last error is kept: {}",
        letters[0].description
    );
}

async fn dead_letter_keeps_the_reason_and_resubmits(backend: Backend) {
    let f = backend.plain().await;
    for id in ["a", "b", "c"] {
        f.bus.send(Q, message(id, 1)).await.unwrap();
    }
    for _ in 0..3 {
        let got = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
        f.bus
            .dead_letter(
                &got,
                reasons::MALFORMED_PAYLOAD,
                &format!("{} is bad", got.message_id),
            )
            .await
            .unwrap();
    }
    let letters = f.bus.dead_letters(Q, 10).await.unwrap();
    let mut seen: Vec<(String, String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.message_id.clone(),
                l.reason.clone(),
                l.description.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["a", "b", "c"]
            .map(|id| (
                id.to_string(),
                reasons::MALFORMED_PAYLOAD.to_string(),
                format!("{id} is bad")
            ))
            .to_vec()
    );
    assert_eq!(f.bus.stats(Q).await.unwrap().dead_letters, 3);
    assert!(!f.bus.resubmit(Q, "nope").await.unwrap());
    assert!(f.bus.resubmit(Q, "b").await.unwrap());
    assert_eq!(resubmit_all(&*f.bus, Q).await.unwrap(), 2);
    assert_eq!(f.bus.stats(Q).await.unwrap().dead_letters, 0);
    let mut back = Vec::new();
    while let Some(got) = f.bus.receive(Q, NONE_WAIT).await.unwrap() {
        back.push(got.dedupe_key().to_string());
        f.bus.complete(&got).await.unwrap();
    }
    back.sort();
    assert_eq!(back, ["a", "b", "c"]);
}

async fn competing_consumers_take_each_message_once(backend: Backend) {
    let f = backend.plain().await;
    let total = 60;
    for n in 0..total {
        f.bus.send(Q, message(&format!("m-{n}"), n)).await.unwrap();
    }
    let mut receivers = Vec::new();
    for _ in 0..8 {
        let bus = f.bus.clone();
        receivers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(got) = bus.receive(Q, NONE_WAIT).await.unwrap() {
                mine.push(got.message_id.clone());
                bus.complete(&got).await.unwrap();
            }
            mine
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut busy_receivers = 0;
    for receiver in receivers {
        let mine = receiver.await.unwrap();
        busy_receivers += usize::from(!mine.is_empty());
        for id in mine {
            *counts.entry(id).or_default() += 1;
        }
    }
    assert_eq!(counts.len(), total as usize, "every message was received");
    assert!(
        counts.values().all(|&c| c == 1),
        "no message twice: {counts:?}"
    );
    assert!(busy_receivers > 1, "the receivers shared the work");
}

async fn duplicate_message_id_is_enqueued_once(backend: Backend) {
    let f = backend.plain().await;
    f.bus.send(Q, message("same", 1)).await.unwrap();
    f.bus.send(Q, message("same", 2)).await.unwrap();
    let got = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    assert_eq!(
        got.payload::<serde_json::Value>().unwrap(),
        serde_json::json!({"count": 1})
    );
    f.bus.complete(&got).await.unwrap();
    assert!(f.bus.receive(Q, NONE_WAIT).await.unwrap().is_none());
    // Still a duplicate after the first was completed.
    f.bus.send(Q, message("same", 3)).await.unwrap();
    assert!(f.bus.receive(Q, NONE_WAIT).await.unwrap().is_none());
    // The same id on another queue is another message.
    f.bus
        .send(QueueName::Accessor, message("same", 4))
        .await
        .unwrap();
    assert!(f
        .bus
        .receive(QueueName::Accessor, SOME_WAIT)
        .await
        .unwrap()
        .is_some());
}

// ---- The consumer loop on each backend ----

#[derive(Deserialize)]
struct Count {
    count: i64,
}

/// Counts what it handles; rejects negative counts; asks for a retry on zero.
#[derive(Clone, Default)]
struct Counting {
    handled: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Counting {
    type Payload = Count;
    async fn handle(&self, payload: Count, _: &MessageContext) -> Result<(), HandlerError> {
        match payload.count {
            n if n < 0 => Err(HandlerError::Reject(format!("{n} is negative"))),
            0 => Err(HandlerError::Retry("zero, try later".into())),
            _ => {
                self.handled.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

fn consumer(f: &Fixture, handler: Counting) -> Consumer {
    Consumer::new("engine-test", Q, f.bus.clone(), f.db.pool.clone())
        .on("GenerateSentences", handler)
}

async fn consumer_dead_letters_unknown_actions_and_malformed_payloads(backend: Backend) {
    let f = backend.plain().await;
    let handler = Counting::default();
    let consumer = consumer(&f, handler.clone());
    f.bus
        .send(
            Q,
            OutgoingMessage::new("u", "LaunchRockets", serde_json::json!({})),
        )
        .await
        .unwrap();
    f.bus
        .send(
            Q,
            OutgoingMessage::new(
                "m",
                "GenerateSentences",
                serde_json::json!({"count": "many"}),
            ),
        )
        .await
        .unwrap();
    f.bus.send(Q, message("r", -1)).await.unwrap();
    let mut settled = Vec::new();
    for _ in 0..3 {
        settled.push(
            consumer
                .process_one(SOME_WAIT)
                .await
                .unwrap()
                .expect("a message"),
        );
    }
    let reasons_given: Vec<String> = settled
        .iter()
        .map(|s| match s {
            Settled::DeadLettered { reason, .. } => reason.clone(),
            other => panic!("expected a dead letter, got {other:?}"),
        })
        .collect();
    assert_eq!(
        reasons_given,
        [
            reasons::UNKNOWN_ACTION,
            reasons::MALFORMED_PAYLOAD,
            reasons::REJECTED
        ]
    );
    assert_eq!(handler.handled.load(Ordering::SeqCst), 0);
    let letters = f.bus.dead_letters(Q, 10).await.unwrap();
    let unknown = letters.iter().find(|l| l.message_id == "u").unwrap();
    assert!(
        unknown.description.contains("LaunchRockets"),
        "{}",
        unknown.description
    );
    let malformed = letters.iter().find(|l| l.message_id == "m").unwrap();
    assert!(
        malformed.description.contains("invalid type"),
        "{}",
        malformed.description
    );
    let rejected = letters.iter().find(|l| l.message_id == "r").unwrap();
    assert_eq!(rejected.description, "-1 is negative");
}

async fn consumer_is_idempotent_by_message_id(backend: Backend) {
    let f = backend.plain().await;
    let handler = Counting::default();
    let consumer = consumer(&f, handler.clone());
    f.bus.send(Q, message("once", 1)).await.unwrap();
    assert_eq!(
        consumer.process_one(SOME_WAIT).await.unwrap(),
        Some(Settled::Completed)
    );
    // The same work again under another id that names it as the original (a resubmitted copy,
    // or a producer resending after its own crash).
    f.bus
        .send(
            Q,
            message("copy", 1).with_property(teachin_workers::bus::ORIGINAL_MESSAGE_ID, "once"),
        )
        .await
        .unwrap();
    assert_eq!(
        consumer.process_one(SOME_WAIT).await.unwrap(),
        Some(Settled::Duplicate)
    );
    assert_eq!(handler.handled.load(Ordering::SeqCst), 1);
    assert_eq!(f.bus.stats(Q).await.unwrap().depth, 0);
}

async fn consumer_retries_then_the_bus_dead_letters(backend: Backend) {
    let f = backend.fixture(Duration::from_secs(30), 3).await;
    let consumer = consumer(&f, Counting::default());
    f.bus.send(Q, message("zero", 0)).await.unwrap();
    for _ in 0..3 {
        assert!(matches!(
            consumer.process_one(SOME_WAIT).await.unwrap(),
            Some(Settled::Abandoned { .. })
        ));
    }
    assert_eq!(consumer.process_one(NONE_WAIT).await.unwrap(), None);
    let letters = f.bus.dead_letters(Q, 10).await.unwrap();
    assert_eq!(letters[0].reason, reasons::MAX_DELIVERY_COUNT_EXCEEDED);
}

/// Asks to be tried again in 3 s on its first delivery (as after a 429 with `Retry-After`).
#[derive(Clone, Default)]
struct Throttled {
    runs: Arc<AtomicUsize>,
}

const THROTTLE: Duration = Duration::from_secs(3);

#[async_trait]
impl Handler for Throttled {
    type Payload = serde_json::Value;
    async fn handle(&self, _: serde_json::Value, c: &MessageContext) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        if c.delivery_count == 1 {
            return Err(HandlerError::RetryAfter {
                why: "429 Too Many Requests".into(),
                after: THROTTLE,
            });
        }
        Ok(())
    }
}

async fn consumer_waits_as_long_as_a_handlers_retry_after(backend: Backend) {
    let f = backend.plain().await;
    let handler = Throttled::default();
    let consumer = Consumer::new("throttled", Q, f.bus.clone(), f.db.pool.clone())
        .on("Throttled", handler.clone());
    f.bus
        .send(
            Q,
            OutgoingMessage::new("t", "Throttled", serde_json::json!({})),
        )
        .await
        .unwrap();
    let first = std::time::Instant::now();
    assert!(matches!(
        consumer.process_one(SOME_WAIT).await.unwrap(),
        Some(Settled::Abandoned { why }) if why.contains("429")
    ));
    assert_eq!(
        consumer.process_one(Duration::from_secs(1)).await.unwrap(),
        None,
        "not back before Retry-After"
    );
    assert_eq!(
        consumer.process_one(SOME_WAIT).await.unwrap(),
        Some(Settled::Completed)
    );
    assert!(first.elapsed() + Duration::from_millis(100) >= THROTTLE);
    assert_eq!(handler.runs.load(Ordering::SeqCst), 2);
}

/// Works for 20 s unless cancelled; says whether it ever finished.
#[derive(Clone, Default)]
struct Stalls {
    finished: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Stalls {
    type Payload = serde_json::Value;
    async fn handle(&self, _: serde_json::Value, _: &MessageContext) -> Result<(), HandlerError> {
        tokio::time::sleep(Duration::from_secs(20)).await;
        self.finished.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn consumer_cancels_a_handler_whose_lock_is_lost(backend: Backend) {
    let lock = Duration::from_secs(3);
    let f = backend.fixture(lock, 10).await;
    let handler = Stalls::default();
    let cut_off: Arc<dyn Bus> = Arc::new(Partitioned(f.bus.clone()));
    let consumer =
        Consumer::new("stalls", Q, cut_off, f.db.pool.clone()).on("Stalls", handler.clone());
    f.bus
        .send(
            Q,
            OutgoingMessage::new("s", "Stalls", serde_json::json!({})),
        )
        .await
        .unwrap();
    let message = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    let started = std::time::Instant::now();
    let settled = tokio::time::timeout(Duration::from_secs(15), consumer.process(message))
        .await
        .expect("the handler was cancelled, not waited for")
        .unwrap();
    assert_eq!(settled, Settled::LockLost);
    // Cancelled when the lock ran out unrenewed (the consumer aims a little before it; the
    // bound leaves room for a slow machine), not when the 20 s handler would have finished.
    assert!(
        started.elapsed() < lock + Duration::from_secs(2),
        "cancelled after {:?}",
        started.elapsed()
    );
    // The next holder gets the message; the cancelled handler never finishes.
    let again = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("redelivered");
    assert_eq!(again.delivery_count, 2);
    f.bus.complete(&again).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handler.finished.load(Ordering::SeqCst), 0);
}

/// Takes longer than the lock: the consumer's renewals must keep the message its own.
#[derive(Clone, Default)]
struct Slow {
    runs: Arc<AtomicUsize>,
}

#[async_trait]
impl Handler for Slow {
    type Payload = serde_json::Value;
    async fn handle(&self, _: serde_json::Value, _: &MessageContext) -> Result<(), HandlerError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(())
    }
}

async fn consumer_renews_locks_of_slow_handlers(backend: Backend) {
    let f = backend.fixture(Duration::from_secs(2), 10).await;
    let slow = Slow::default();
    let consumer =
        Consumer::new("slow", Q, f.bus.clone(), f.db.pool.clone()).on("Slow", slow.clone());
    f.bus
        .send(Q, OutgoingMessage::new("s", "Slow", serde_json::json!({})))
        .await
        .unwrap();
    let message = f.bus.receive(Q, SOME_WAIT).await.unwrap().unwrap();
    // A competing receiver polls throughout; it must never get the message.
    let bus = f.bus.clone();
    let competitor = tokio::spawn(async move { bus.receive(Q, Duration::from_secs(6)).await });
    assert_eq!(consumer.process(message).await.unwrap(), Settled::Completed);
    assert!(competitor.await.unwrap().unwrap().is_none());
    assert_eq!(slow.runs.load(Ordering::SeqCst), 1);
}

async fn consumer_loop_drains_and_shuts_down(backend: Backend) {
    let f = backend.plain().await;
    let handler = Counting::default();
    let consumers: Vec<_> = (0..3).map(|_| consumer(&f, handler.clone())).collect();
    for n in 1..=30 {
        f.bus.send(Q, message(&format!("m-{n}"), n)).await.unwrap();
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running: Vec<_> = consumers
        .into_iter()
        .map(|c| {
            let c = c.with_config(teachin_workers::consumer::ConsumerConfig {
                receive_wait: Duration::from_secs(1),
                ..Default::default()
            });
            tokio::spawn(c.run(shutdown.clone()))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while handler.handled.load(Ordering::SeqCst) < 30 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    for r in running {
        tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .expect("the loop stops after the signal")
            .unwrap();
    }
    assert_eq!(handler.handled.load(Ordering::SeqCst), 30);
    assert_eq!(f.bus.stats(Q).await.unwrap().depth, 0);
}

/// The queue whose messages carry sessions.
const SQ: QueueName = QueueName::ManagerCallbackSession;

fn in_session(id: &str, session: &str) -> OutgoingMessage {
    OutgoingMessage::new(id, "ChatStream", serde_json::json!({ "id": id })).with_session_id(session)
}

async fn take(bus: &Arc<dyn Bus>, wait: Duration) -> ReceivedMessage {
    bus.receive(SQ, wait).await.unwrap().expect("a message")
}

/// Two receivers, sessions A and B interleaved (A1 B1 A2 B2 A3 B3): the receiver that took
/// A1 holds A, so the other gets B's messages only, and each gets its session's messages in
/// the order they were sent. On Service Bus the second receiver meets A2 and A3 at the
/// broker's head and hands them over to A's holder (see the adapter's module comment).
async fn sessions_go_to_one_receiver_at_a_time_in_order(backend: Backend) {
    let f = backend.plain().await;
    for i in 1..=3 {
        for session in ["A", "B"] {
            f.bus
                .send(SQ, in_session(&format!("{session}{i}"), session))
                .await
                .unwrap();
        }
    }
    let (r1, r2) = (&f.bus, &f.other);
    let a1 = take(r1, SOME_WAIT).await;
    assert_eq!(
        (a1.message_id.as_str(), a1.session_id.as_deref()),
        ("A1", Some("A"))
    );
    let mut second = Vec::new();
    for _ in 0..3 {
        second.push(take(r2, SOME_WAIT).await);
    }
    assert_eq!(
        second
            .iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        ["B1", "B2", "B3"],
        "the other receiver never gets a message of the session the first holds"
    );
    assert!(
        r2.receive(SQ, NONE_WAIT).await.unwrap().is_none(),
        "what is left is A's, and A is held"
    );
    let mut first = vec![a1];
    for _ in 0..2 {
        first.push(take(r1, SOME_WAIT).await);
    }
    assert_eq!(
        first
            .iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        ["A1", "A2", "A3"],
        "the holder gets its session in order"
    );
    for message in &first {
        assert_eq!(message.session_id.as_deref(), Some("A"));
        assert_eq!(
            message.delivery_count, 1,
            "passing A2 and A3 on spent nothing"
        );
    }
    for message in first.iter() {
        r1.complete(message).await.unwrap();
    }
    for message in second.iter() {
        r2.complete(message).await.unwrap();
    }
    assert!(r1.receive(SQ, NONE_WAIT).await.unwrap().is_none());
    assert!(r2.receive(SQ, NONE_WAIT).await.unwrap().is_none());
}

/// A session is held as long as its holder renews, and passes to another receiver once the
/// holder stops (crashed): its lease runs out with the lock.
async fn a_session_is_held_while_renewed_and_passes_on_when_its_holder_stops(backend: Backend) {
    let f = backend.fixture(Duration::from_secs(2), 10).await;
    for id in ["A1", "A2"] {
        f.bus.send(SQ, in_session(id, "A")).await.unwrap();
    }
    let a1 = take(&f.bus, SOME_WAIT).await;
    assert_eq!(a1.message_id, "A1");
    // Renewed across two lock durations: the other receiver gets nothing of A meanwhile.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        f.bus.renew_lock(&a1).await.unwrap();
        assert!(
            f.other.receive(SQ, Duration::ZERO).await.unwrap().is_none(),
            "A is held"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // The holder dies with A1 in hand.
    drop(a1);
    let mut got = Vec::new();
    for _ in 0..2 {
        let message = take(&f.other, SOME_WAIT).await;
        got.push((message.message_id.clone(), message.delivery_count));
        f.other.complete(&message).await.unwrap();
    }
    got.sort();
    // (On Service Bus A2 may come first: it was handed over to the dead holder through
    // PostgreSQL while A1 waited out its lock at the broker.)
    assert_eq!(got, [("A1".to_string(), 2), ("A2".to_string(), 1)]);
}

/// A receiver that stops gracefully gives its sessions up: the other receiver gets the
/// session's next message at once, not a lock duration later.
async fn released_sessions_pass_on_at_once(backend: Backend) {
    let f = backend.fixture(Duration::from_secs(60), 10).await;
    for id in ["A1", "A2"] {
        f.bus.send(SQ, in_session(id, "A")).await.unwrap();
    }
    let a1 = take(&f.bus, SOME_WAIT).await;
    f.bus.complete(&a1).await.unwrap();
    assert!(
        f.other.receive(SQ, NONE_WAIT).await.unwrap().is_none(),
        "A's lease outlives its message"
    );
    f.bus.release_sessions(SQ).await.unwrap();
    let a2 = take(&f.other, SOME_WAIT).await;
    assert_eq!(a2.message_id, "A2");
    f.other.complete(&a2).await.unwrap();
}

/// The Service Bus adapter carries the session on what it sends, on a retry's scheduled
/// copy too; and a queue that requires sessions cannot be read over REST at all (the
/// endpoint answers as Service Bus does), which is why the adapter leases sessions itself.
#[tokio::test]
async fn service_bus_keeps_the_session_id_on_retry_copies_and_rest_cannot_read_session_queues() {
    let f = Backend::ServiceBus
        .fixture(Duration::from_secs(30), 10)
        .await;
    f.bus.send(SQ, in_session("A1", "A")).await.unwrap();
    let first = take(&f.bus, SOME_WAIT).await;
    f.bus
        .abandon(&first, Abandon::after(Duration::from_millis(10)))
        .await
        .unwrap();
    let again = take(&f.bus, SOME_WAIT).await;
    assert_eq!(
        (
            again.message_id.as_str(),
            again.session_id.as_deref(),
            again.delivery_count
        ),
        ("A1", Some("A"), 2)
    );
    f.bus.complete(&again).await.unwrap();

    let db = TestDatabase::new().await;
    let endpoint = LocalServiceBus::start(LocalServiceBusSettings {
        requires_session: vec![SQ.as_str().to_string()],
        ..LocalServiceBusSettings::default()
    })
    .await;
    let bus = ServiceBus::new(endpoint.config(), endpoint.http_client(), db.pool.clone()).unwrap();
    let refused = bus
        .send(SQ, message("no-session", 1))
        .await
        .expect_err("a session queue takes only messages with a SessionId");
    // (The crate's error keeps the status, not the body, which names the SessionId.)
    assert!(refused.to_string().contains("400"), "{refused}");
    bus.send(SQ, in_session("A1", "A")).await.unwrap();
    let unreadable = bus.receive(SQ, Duration::ZERO).await.unwrap_err();
    assert!(
        unreadable.to_string().contains("non-sessionful"),
        "{unreadable}"
    );
}

/// `oldest_enqueued_at` is when the oldest message still in the queue — waiting, locked, or
/// waiting out a retry's backoff — was first enqueued; `None` when the queue is empty. What
/// the queue-age alert reads, so it must move on when the oldest message leaves, and must not
/// restart a message's age when it is retried.
async fn oldest_enqueued_at_follows_the_oldest_message_in_the_queue(backend: Backend) {
    let f = backend.plain().await;
    let oldest = || async { f.bus.stats(Q).await.unwrap().oldest_enqueued_at };
    assert_eq!(oldest().await, None, "an empty queue has no oldest message");

    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    f.bus.send(Q, message("m-1", 1)).await.unwrap();
    let after = chrono::Utc::now();
    let first = oldest().await.expect("m-1 is in the queue");
    assert!(
        before <= first && first <= after,
        "{before} <= {first} <= {after}"
    );
    // Distinct enqueue times (the broker's are kept to the second on some paths).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    f.bus.send(Q, message("m-2", 2)).await.unwrap();
    assert_eq!(oldest().await, Some(first), "m-1 is still the oldest");

    // Locked by a receiver: still in the queue.
    let m1 = f.bus.receive(Q, SOME_WAIT).await.unwrap().expect("m-1");
    assert_eq!(m1.message_id, "m-1");
    assert_eq!(oldest().await, Some(first), "a locked message counts");

    // Abandoned with a delay: waiting out its backoff, it keeps its first enqueue.
    f.bus
        .abandon(&m1, Abandon::after(Duration::from_secs(2)))
        .await
        .unwrap();
    let retried = oldest().await.expect("m-1 waits for its retry");
    assert!(
        retried <= first && first - retried < chrono::Duration::seconds(1),
        "a retry keeps its first enqueue: {retried} vs {first}"
    );

    // m-2 comes first (m-1 waits); then m-1. Once m-1 is done, m-2 is the oldest.
    let m2 = f.bus.receive(Q, SOME_WAIT).await.unwrap().expect("m-2");
    assert_eq!(m2.message_id, "m-2");
    let m1 = f
        .bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("m-1 again");
    assert_eq!(m1.message_id, "m-1");
    f.bus.complete(&m1).await.unwrap();
    let now_oldest = oldest().await.expect("m-2 is in the queue");
    assert!(
        now_oldest >= first + chrono::Duration::seconds(1),
        "m-2's enqueue ({now_oldest}), not m-1's ({first})"
    );
    f.bus.complete(&m2).await.unwrap();
    assert_eq!(oldest().await, None, "empty again");
}

/// A retry keeps its first enqueue even behind a backlog longer than one read of the queue
/// (Service Bus peeks in pages): the oldest is found wherever it sits.
async fn oldest_enqueued_at_finds_a_retry_behind_a_backlog(backend: Backend) {
    let f = backend.plain().await;
    f.bus.send(Q, message("old", 0)).await.unwrap();
    let first = f.bus.stats(Q).await.unwrap().oldest_enqueued_at.unwrap();
    let old = f.bus.receive(Q, SOME_WAIT).await.unwrap().expect("old");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let backlog = teachin_workers::bus::peek::PEEK_PAGE as i64 + 10;
    for n in 0..backlog {
        f.bus
            .send(Q, message(&format!("new-{n}"), n))
            .await
            .unwrap();
    }
    // Back at the end of the queue (on Service Bus, a copy behind the whole backlog).
    f.bus
        .abandon(&old, Abandon::after(Duration::from_secs(600)))
        .await
        .unwrap();
    let stats = f.bus.stats(Q).await.unwrap();
    assert_eq!(stats.depth, backlog + 1);
    let oldest = stats.oldest_enqueued_at.unwrap();
    assert!(
        oldest <= first && first - oldest < chrono::Duration::seconds(1),
        "the retried message's first enqueue ({first}), found: {oldest}"
    );
}

macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    super::$behaviour(super::Backend::Postgres).await
                }
            )*
        }
        mod servicebus {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $behaviour() {
                    super::$behaviour(super::Backend::ServiceBus).await
                }
            )*
        }
    };
}

contract!(
    send_receive_complete,
    abandon_increments_delivery_count,
    lock_expiry_redelivers,
    renew_keeps_the_lock,
    dead_letter_after_max_deliveries,
    dead_letter_keeps_the_reason_and_resubmits,
    competing_consumers_take_each_message_once,
    duplicate_message_id_is_enqueued_once,
    consumer_dead_letters_unknown_actions_and_malformed_payloads,
    consumer_is_idempotent_by_message_id,
    consumer_retries_then_the_bus_dead_letters,
    consumer_renews_locks_of_slow_handlers,
    consumer_loop_drains_and_shuts_down,
    abandoned_with_a_delay_comes_back_after_it_not_before,
    dead_letter_waits_for_the_time_budget_and_keeps_the_last_error,
    consumer_waits_as_long_as_a_handlers_retry_after,
    consumer_cancels_a_handler_whose_lock_is_lost,
    sessions_go_to_one_receiver_at_a_time_in_order,
    a_session_is_held_while_renewed_and_passes_on_when_its_holder_stops,
    released_sessions_pass_on_at_once,
    oldest_enqueued_at_follows_the_oldest_message_in_the_queue,
    oldest_enqueued_at_finds_a_retry_behind_a_backlog,
);

/// The local endpoint checks SAS signatures as Service Bus does, so the adapter's signing is
/// tested too: a wrong key is refused.
#[tokio::test]
async fn service_bus_refuses_a_wrongly_signed_request() {
    let db = TestDatabase::new().await;
    let endpoint = LocalServiceBus::start(LocalServiceBusSettings::default()).await;
    let mut config = endpoint.config();
    config.key = "not-the-key".into();
    if let Some(stats) = config.stats_policy.as_mut() {
        stats.key = "not-the-key either".into();
    }
    let bus = ServiceBus::new(config, endpoint.http_client(), db.pool.clone()).unwrap();
    let refused = bus.send(Q, message("m", 1)).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    let refused = bus.stats(Q).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
}

/// The peek signs in with SASL PLAIN (a policy's name and key), as Service Bus accepts a
/// shared access rule over AMQP: a wrong key is refused, and says so rather than hanging.
#[tokio::test]
async fn service_bus_peek_refuses_a_wrong_key() {
    use teachin_workers::bus::peek::oldest_enqueued_at;
    let endpoint = LocalServiceBus::start(LocalServiceBusSettings::default()).await;
    let config = endpoint.config();
    assert_eq!(oldest_enqueued_at(&config, Q).await.unwrap(), None);
    let mut wrong = config.clone();
    if let Some(stats) = wrong.stats_policy.as_mut() {
        stats.key = "not-the-key".into();
    }
    let refused = oldest_enqueued_at(&wrong, Q).await.unwrap_err();
    assert!(refused.to_string().contains("peeking at"), "{refused}");
}

/// As on Azure, the management API wants Manage: the roles' Listen+Send policy cannot read
/// statistics, and the adapter reads them with the stats policy
/// (`ServiceBus__StatsConnectionString`) while it sends and receives with the data one.
#[tokio::test]
async fn service_bus_reads_statistics_with_the_stats_policy_not_the_data_one() {
    use teachin_workers::bus::servicebus::ServiceBusConfig;
    use teachin_workers::testing::servicebus::{APP_POLICY, STATS_POLICY};
    let db = TestDatabase::new().await;
    let endpoint = LocalServiceBus::start(LocalServiceBusSettings::default()).await;
    let adapter = |config: ServiceBusConfig| -> Arc<dyn Bus> {
        Arc::new(ServiceBus::new(config, endpoint.http_client(), db.pool.clone()).unwrap())
    };

    // The data policy alone (no stats connection string): messages flow, statistics do not.
    let data_only =
        ServiceBusConfig::from_connection_string(&endpoint.connection_string(APP_POLICY)).unwrap();
    let data_only = adapter(data_only);
    data_only.send(Q, message("m-1", 1)).await.unwrap();
    let refused = data_only.stats(Q).await.unwrap_err();
    assert!(
        refused.to_string().contains("401") && refused.to_string().contains("Manage"),
        "{refused}"
    );

    // The production configuration: the same data policy, and the stats policy for stats.
    let config = endpoint.config();
    assert_eq!(config.policy_name, APP_POLICY);
    assert_eq!(config.statistics_policy().name, STATS_POLICY);
    let bus = adapter(config);
    assert_eq!(bus.stats(Q).await.unwrap().depth, 1);
    let got = bus
        .receive(Q, SOME_WAIT)
        .await
        .unwrap()
        .expect("the message");
    bus.complete(&got).await.unwrap();
    assert_eq!(bus.stats(Q).await.unwrap().depth, 0);
}
