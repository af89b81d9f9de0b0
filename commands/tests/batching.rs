//! Hot streams: commands queued on one stream are decided one after another and stored by one
//! append, and every caller still gets its own answer. Against the real event store, with a
//! small aggregate of its own (`Seats`) whose refusals depend on the state the commands
//! before left — the case batching must get right.
//!
//! The tests run on tokio's current-thread runtime, where `join_all` queues every command
//! before the stream's worker first runs: how many commands share a batch is then decided by
//! the order of the code, not by timing.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use teachin_commands::bus::{BusSettings, CommandBus, CommandContext, CommandError};
use teachin_commands::testing::TestDatabase;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::services::DomainServices;

/// A class's seats: a seat is taken once, freed once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Seats {
    taken: BTreeSet<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum SeatCommand {
    Take(u32),
    Leave(u32),
    /// Takes the first seat, then finds the second taken: refused half-way, after writing.
    TakeTwo(u32, u32),
    /// Decides nothing: no events, no refusal.
    Look,
    /// A bug in a decision.
    Explode,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum SeatEvent {
    SeatTaken(u32),
    SeatFreed(u32),
}

impl DomainEvent for SeatEvent {
    fn event_type(&self) -> String {
        match self {
            SeatEvent::SeatTaken(_) => "SeatTaken".into(),
            SeatEvent::SeatFreed(_) => "SeatFreed".into(),
        }
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum SeatError {
    #[error("seat {0} is taken")]
    Taken(u32),
    #[error("seat {0} is free")]
    Free(u32),
}

impl Aggregate for Seats {
    const TYPE: &'static str = "Seats";
    type Command = SeatCommand;
    type Event = SeatEvent;
    type Error = SeatError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: SeatCommand,
        _: &DomainServices,
        sink: &EventSink<Self>,
    ) -> Result<(), SeatError> {
        match command {
            SeatCommand::Take(seat) if self.taken.contains(&seat) => Err(SeatError::Taken(seat)),
            SeatCommand::Take(seat) => {
                sink.write(SeatEvent::SeatTaken(seat), self).await;
                Ok(())
            }
            SeatCommand::Leave(seat) if !self.taken.contains(&seat) => Err(SeatError::Free(seat)),
            SeatCommand::Leave(seat) => {
                sink.write(SeatEvent::SeatFreed(seat), self).await;
                Ok(())
            }
            SeatCommand::TakeTwo(first, second) => {
                sink.write(SeatEvent::SeatTaken(first), self).await;
                if self.taken.contains(&second) {
                    return Err(SeatError::Taken(second));
                }
                sink.write(SeatEvent::SeatTaken(second), self).await;
                Ok(())
            }
            SeatCommand::Look => Ok(()),
            SeatCommand::Explode => panic!("a decision with a bug"),
        }
    }

    fn apply(&mut self, event: SeatEvent) {
        match event {
            SeatEvent::SeatTaken(seat) => self.taken.insert(seat),
            SeatEvent::SeatFreed(seat) => self.taken.remove(&seat),
        };
    }
}

const CLASS: &str = "class-7b";

fn bus(db: &TestDatabase, settings: BusSettings) -> CommandBus {
    db.bus(settings)
}

/// Each caller its own interaction, so each event's metadata says whose command it was.
fn caller() -> CommandContext {
    CommandContext::new(Actor::user(UserId::new(), Role::Student), "request:test")
}

type Outcome = Result<Vec<SeatEvent>, CommandError<SeatError>>;

/// Runs `commands` on the class's stream at once (each with its own caller) and gives each
/// caller's answer, in order, with its context.
async fn at_once(bus: &CommandBus, commands: Vec<SeatCommand>) -> Vec<(CommandContext, Outcome)> {
    join_all(commands.into_iter().map(|command| {
        let bus = bus.clone();
        async move {
            let context = caller();
            let answer = bus
                .execute::<Seats>(CLASS, command, &context)
                .await
                .map(|receipt| receipt.events.into_iter().map(|e| e.payload).collect());
            (context, answer)
        }
    }))
    .await
}

async fn transactions(db: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT transaction_id::text) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn seats(bus: &CommandBus) -> BTreeSet<u32> {
    bus.reader().load::<Seats>(CLASS).await.unwrap().taken
}

#[tokio::test]
async fn commands_queued_on_one_stream_are_stored_by_one_append_each_with_its_own_answer() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let answers = at_once(&bus, (0..40).map(SeatCommand::Take).collect()).await;

    for (seat, (_, answer)) in answers.iter().enumerate() {
        assert_eq!(
            answer.as_ref().unwrap(),
            &vec![SeatEvent::SeatTaken(seat as u32)],
            "each caller gets its own event"
        );
    }
    assert_eq!(transactions(&db).await, 1, "one append, one commit");
    let stats = bus.stats();
    assert_eq!((stats.appends, stats.appended_commands), (1, 40));

    // Every event carries its own command's metadata, and its own receipt.
    for (context, _) in &answers {
        let correlation = context.correlation_id.to_string();
        let (sequence, receipts): (i64, i64) = sqlx::query_as(
            "SELECT e.sequence, (SELECT count(*) FROM command_receipts r
                                  WHERE r.first_sequence = e.sequence AND r.last_sequence = e.sequence)
               FROM events e WHERE e.metadata ->> 'correlation_id' = $1",
        )
        .bind(&correlation)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(sequence >= 1);
        assert_eq!(receipts, 1, "a receipt of its own");
    }
    assert_eq!(seats(&bus).await.len(), 40);
}

#[tokio::test]
async fn a_batch_is_at_most_the_configured_size() {
    let db = TestDatabase::new().await;
    let bus = bus(
        &db,
        BusSettings {
            max_batch: 16,
            ..BusSettings::default()
        },
    );
    let answers = at_once(&bus, (0..40).map(SeatCommand::Take).collect()).await;
    assert!(answers.iter().all(|(_, answer)| answer.is_ok()));
    assert_eq!(transactions(&db).await, 3, "16 + 16 + 8");
}

#[tokio::test]
async fn a_refused_command_answers_alone_and_the_rest_of_its_batch_stands() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let answers = at_once(
        &bus,
        vec![
            SeatCommand::Take(1),
            SeatCommand::Take(1), // decided after the first: taken
            SeatCommand::Take(2),
            SeatCommand::Leave(9), // never taken
            SeatCommand::Look,
            SeatCommand::Leave(2), // decided after the third: now taken, so it may leave
        ],
    )
    .await;
    let answers: Vec<_> = answers
        .into_iter()
        .map(|(_, answer)| {
            answer.map_err(|e| match e {
                CommandError::Rejected(refusal) => refusal,
                other => panic!("not a refusal: {other}"),
            })
        })
        .collect();
    assert_eq!(
        answers,
        vec![
            Ok(vec![SeatEvent::SeatTaken(1)]),
            Err(SeatError::Taken(1)),
            Ok(vec![SeatEvent::SeatTaken(2)]),
            Err(SeatError::Free(9)),
            Ok(vec![]),
            Ok(vec![SeatEvent::SeatFreed(2)]),
        ]
    );
    assert_eq!(transactions(&db).await, 1);
    assert_eq!(seats(&bus).await, BTreeSet::from([1]));
}

#[tokio::test]
async fn a_command_refused_half_way_leaves_no_trace_for_the_commands_after_it() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    at_once(&bus, vec![SeatCommand::Take(2)]).await;
    let answers = at_once(
        &bus,
        vec![
            SeatCommand::Take(0),
            SeatCommand::TakeTwo(1, 2), // writes "1 taken", then refuses: 2 is taken
            SeatCommand::Take(1),       // so 1 is still free
        ],
    )
    .await;
    assert!(matches!(
        answers[1].1,
        Err(CommandError::Rejected(SeatError::Taken(2)))
    ));
    assert_eq!(
        answers[2].1.as_ref().unwrap(),
        &vec![SeatEvent::SeatTaken(1)]
    );
    assert_eq!(seats(&bus).await, BTreeSet::from([0, 1, 2]));
}

/// Two replicas: the batch was decided on a cached state another replica has moved past; the
/// append is refused, and the whole batch is decided again on the stored state.
#[tokio::test]
async fn a_batch_that_loses_to_another_replica_is_decided_again_on_the_stored_state() {
    let db = TestDatabase::new().await;
    let here = bus(&db, BusSettings::default());
    let there = bus(&db, BusSettings::default());
    at_once(&here, vec![SeatCommand::Take(0)]).await; // cached here
    at_once(&there, vec![SeatCommand::Take(5)]).await;

    let answers = at_once(&here, vec![SeatCommand::Take(5), SeatCommand::Take(6)]).await;
    assert!(
        matches!(
            answers[0].1,
            Err(CommandError::Rejected(SeatError::Taken(5)))
        ),
        "decided again, seat 5 is taken: {:?}",
        answers[0].1
    );
    assert_eq!(
        answers[1].1.as_ref().unwrap(),
        &vec![SeatEvent::SeatTaken(6)]
    );
    assert_eq!(here.conflict_retries(), 1);
    assert_eq!(seats(&here).await, BTreeSet::from([0, 5, 6]));
}

/// A refusal has no append whose sequence check would prove the cached state current, so it
/// is given only on state read from the database.
#[tokio::test]
async fn a_refusal_is_never_decided_on_a_cached_aggregate_another_replica_moved_past() {
    let db = TestDatabase::new().await;
    let here = bus(&db, BusSettings::default());
    let there = bus(&db, BusSettings::default());
    at_once(&here, vec![SeatCommand::Take(3)]).await; // cached here: seat 3 taken
    at_once(&there, vec![SeatCommand::Leave(3)]).await;

    let answers = at_once(&here, vec![SeatCommand::Take(3)]).await;
    assert_eq!(
        answers[0].1.as_ref().unwrap(),
        &vec![SeatEvent::SeatTaken(3)],
        "seat 3 was freed by the other replica"
    );
    // A no-op is an answer too: it is checked the same way, once.
    let answers = at_once(&here, vec![SeatCommand::Look]).await;
    assert!(answers[0].1.is_ok());
}

#[tokio::test]
async fn a_caller_gone_before_its_batch_is_taken_runs_nothing_and_one_gone_after_takes_no_one_with_it(
) {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());

    // Queued, then gone before the worker ever ran: not run.
    let context = caller();
    let mut first = Box::pin(bus.execute::<Seats>(CLASS, SeatCommand::Take(1), &context));
    let gone = caller();
    let mut second = Box::pin(bus.execute::<Seats>(CLASS, SeatCommand::Take(2), &gone));
    assert!(futures::poll!(&mut first).is_pending());
    assert!(futures::poll!(&mut second).is_pending());
    drop(second);
    assert!(first.await.is_ok());
    assert_eq!(
        seats(&bus).await,
        BTreeSet::from([1]),
        "seat 2 was never taken"
    );

    // Gone after the worker took the batch (it waits on the database): the others' answers,
    // and its own command, go through.
    let context = caller();
    let mut leaving = Box::pin(bus.execute::<Seats>(CLASS, SeatCommand::Take(3), &context));
    let staying_context = caller();
    let mut staying = Box::pin(bus.execute::<Seats>(CLASS, SeatCommand::Take(4), &staying_context));
    assert!(futures::poll!(&mut leaving).is_pending());
    assert!(futures::poll!(&mut staying).is_pending());
    tokio::task::yield_now().await; // the worker takes both and waits on the database
    drop(leaving);
    assert_eq!(
        staying.await.unwrap().events[0].payload,
        SeatEvent::SeatTaken(4)
    );
    assert_eq!(seats(&bus).await, BTreeSet::from([1, 3, 4]));
}

#[tokio::test]
async fn a_decision_that_panics_fails_its_batch_with_an_error_and_the_stream_goes_on() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let answers = at_once(
        &bus,
        vec![
            SeatCommand::Take(1),
            SeatCommand::Explode,
            SeatCommand::Take(2),
        ],
    )
    .await;
    for (_, answer) in &answers {
        assert!(
            matches!(answer, Err(CommandError::Store(_))),
            "an error, not a panic: {answer:?}"
        );
    }
    assert_eq!(
        transactions(&db).await,
        0,
        "nothing of the batch was stored"
    );

    let answers = at_once(&bus, vec![SeatCommand::Take(1), SeatCommand::Take(2)]).await;
    assert!(answers.iter().all(|(_, answer)| answer.is_ok()));
    assert_eq!(seats(&bus).await, BTreeSet::from([1, 2]));
}

/// A repeated idempotency key in one queue: the repeat waits for the next batch and is
/// answered from the first one's receipt, never filed as part of it.
#[tokio::test]
async fn a_repeated_key_never_shares_a_batch_with_its_first() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    let keyed = caller().with_idempotency_key("take-seat-1");
    let other = caller();
    let answers = join_all([
        bus.execute::<Seats>(CLASS, SeatCommand::Take(1), &keyed),
        bus.execute::<Seats>(CLASS, SeatCommand::Take(2), &other),
        bus.execute::<Seats>(CLASS, SeatCommand::Take(1), &keyed),
    ])
    .await;
    let receipts: Vec<_> = answers.into_iter().map(Result::unwrap).collect();
    assert!(!receipts[0].replayed && !receipts[1].replayed);
    assert!(receipts[2].replayed, "answered from the first receipt");
    assert_eq!(
        receipts[2].events[0].sequence,
        receipts[0].events[0].sequence
    );
    let events: Vec<Value> = sqlx::query_scalar("SELECT payload FROM events ORDER BY sequence")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
}

/// The appends' connections are not checked before use (one round trip less per command), so
/// one that died while idle — the server restarted, an operator killed it — fails its append
/// with the outcome unknown. The receipts say it was not stored, and the batch is tried again
/// on a fresh connection: the callers never see the dead one.
#[tokio::test]
async fn an_append_on_a_connection_that_died_while_idle_is_settled_and_tried_again() {
    let db = TestDatabase::new().await;
    let bus = bus(&db, BusSettings::default());
    at_once(&bus, vec![SeatCommand::Take(1)]).await; // the append pool now holds a connection
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(killed >= 1, "the idle append connection was there to kill");

    let answers = at_once(&bus, vec![SeatCommand::Take(2), SeatCommand::Take(3)]).await;
    for (_, answer) in &answers {
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!(seats(&bus).await, BTreeSet::from([1, 2, 3]));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 3, "each command stored once");
}
