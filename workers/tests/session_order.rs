//! Session order across manager replicas (issue 14, part 6): the streamed frames of a tutor
//! reply travel on `manager-callback-session-queue` in the tutor session's bus session, so
//! with two manager replicas consuming that queue, one replica gets every frame of a session
//! and pushes them in order — no gap waits out its timeout, no frame is pushed twice.
//!
//! The two replicas are two in-process `run_manager_callbacks`, each with its own
//! `PostgresBus` (its own receiver id in `bus_sessions` and its own pool use), its own
//! `FramePusher` (reorderer) and its own hub (`RecordingPush`). That is what two manager
//! processes are to the bus and to the frames: a process shares nothing with another but the
//! database, and everything a manager process holds for the frames — the bus instance, the
//! reorderer, the hub connections — is per `run_manager_callbacks` here too. In-process
//! keeps the test free of a second binary's start-up while exercising the same SQL, leases
//! and reorderers. The second test runs the same two replicas on the Service Bus adapter
//! against the local Service Bus endpoint, where the adapter's session leases and its
//! hand-over of a held session's messages are what keep each stream on one replica.

mod support;

use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, quick_consumer, RecordingPush, World, MODEL};
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, PortSecrets};
use teachin_domain::ids::{RequestId, TutorSessionId, UserId};
use teachin_domain::tutor_session::SessionKind;
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::servicebus::ServiceBus;
use teachin_workers::bus::{Bus, OutgoingMessage, QueueName};
use teachin_workers::callbacks::frames::ReorderSettings;
use teachin_workers::callbacks::{CallbackDeps, CallbackSettings};
use teachin_workers::contracts::{message_ids, session, FrameStage, TutorReplyFrame};
use teachin_workers::engine::settings::WebSearchSettings;
use teachin_workers::run_manager_callbacks;
use teachin_workers::testing::LlmReply;
use teachin_workers::testing::{LocalServiceBus, LocalServiceBusSettings};

const SESSIONS: usize = 6;

/// Pieces long enough that each makes a frame of its own (frames go at 80 characters).
fn pieces(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{i:02} {}", "שלום עולם, מה שלומך היום? ".repeat(4)))
        .collect()
}

fn sequences(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| f["sequenceNumber"].as_u64().expect("a sequence number"))
        .collect()
}

/// For every asked `(student, request)`: one replica pushed the whole stream, every frame
/// once, in sequence order from 0, ending with the last frame. Returns how many streams
/// each replica pushed.
async fn each_stream_on_one_replica_in_order(
    first_push: &RecordingPush,
    second_push: &RecordingPush,
    asked: &[(UserId, RequestId)],
) -> [usize; 2] {
    let closed = |frames: &[Value]| frames.iter().any(|f| f["stage"] == "Last");
    let mut replicas_used = [0usize; 2];
    for (student, request) in asked {
        let (first, second) = eventually("the reply's last frame was pushed", || async {
            let first = first_push.frames(*student, *request);
            let second = second_push.frames(*student, *request);
            (closed(&first) || closed(&second)).then_some((first, second))
        })
        .await;
        // Whatever else was still on its way has had its chance to arrive.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first_now = first_push.frames(*student, *request);
        let second_now = second_push.frames(*student, *request);
        assert_eq!(
            (first.len(), second.len()),
            (first_now.len(), second_now.len())
        );
        let (frames, other) = if first.is_empty() {
            replicas_used[1] += 1;
            (second, first)
        } else {
            replicas_used[0] += 1;
            (first, second)
        };
        assert!(
            other.is_empty(),
            "one replica pushed the whole stream: {} and {} frames",
            frames.len(),
            other.len()
        );
        let expected: Vec<u64> = (0..frames.len() as u64).collect();
        assert_eq!(
            sequences(&frames),
            expected,
            "every frame once, in order, none skipped"
        );
        assert!(frames.len() >= 10, "a long stream: {}", frames.len());
        assert_eq!(frames.last().unwrap()["stage"], "Last");
    }
    replicas_used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_manager_replicas_push_each_sessions_frames_in_order_once() {
    let world = World::new(Duration::from_secs(60)).await;
    let answer = pieces(12);
    let answer: Vec<&str> = answer.iter().map(String::as_str).collect();
    for _ in 0..SESSIONS {
        world.llm.push(LlmReply::answer(MODEL, &answer, (30, 40)));
    }
    // The world's own callbacks are the first replica (its bus, `world.push`); this is the
    // second, with a bus instance and a hub of its own.
    let second_push = Arc::new(RecordingPush::default());
    let second_bus: Arc<dyn Bus> = Arc::new(PostgresBus::new(
        world.db.pool.clone(),
        PostgresBusConfig {
            lock_duration: Duration::from_secs(60),
            max_delivery_count: 10,
            min_poll: Duration::from_millis(10),
            max_poll: Duration::from_millis(100),
        },
    ));
    let (stop_second, stopped) = tokio::sync::watch::channel(false);
    let second = tokio::spawn(run_manager_callbacks(
        CallbackDeps {
            pool: world.db.pool.clone(),
            bus: second_bus,
            commands: world.commands.clone(),
            push: second_push.clone(),
            settings: CallbackSettings {
                results: quick_consumer(),
                frames: quick_consumer(),
                reorder: ReorderSettings::default(),
            },
        },
        stopped,
    ));
    let engine = world.start_engine(WebSearchSettings::default());

    let mut asked: Vec<(UserId, RequestId)> = Vec::new();
    for i in 0..SESSIONS {
        let student = UserId::new();
        let request = world
            .post(
                TutorSessionId::new(),
                student,
                SessionKind::Default,
                &format!("Tell me something long, {i}"),
                None,
            )
            .await;
        asked.push((student, request));
    }
    let replicas_used =
        each_stream_on_one_replica_in_order(&world.push, &second_push, &asked).await;
    eprintln!("sessions per replica: {replicas_used:?}");

    engine.abort();
    stop_second.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second replica stops")
        .unwrap();
    world.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_manager_replicas_on_service_bus_push_each_sessions_frames_in_order_once() {
    const STREAMS: usize = 6;
    const FRAMES: u32 = 12;
    let db = TestDatabase::new().await;
    let endpoint = LocalServiceBus::start(LocalServiceBusSettings::default()).await;
    let connect = || -> Arc<dyn Bus> {
        Arc::new(
            ServiceBus::new(endpoint.config(), endpoint.http_client(), db.pool.clone())
                .expect("the adapter starts"),
        )
    };
    let commands = command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"session-order-key".to_vec(),
        },
        BusSettings::default(),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pushes = [
        Arc::new(RecordingPush::default()),
        Arc::new(RecordingPush::default()),
    ];
    let replicas: Vec<_> = pushes
        .iter()
        .map(|push| {
            tokio::spawn(run_manager_callbacks(
                CallbackDeps {
                    pool: db.pool.clone(),
                    bus: connect(),
                    commands: commands.clone(),
                    push: push.clone(),
                    settings: CallbackSettings {
                        results: quick_consumer(),
                        frames: quick_consumer(),
                        reorder: ReorderSettings::default(),
                    },
                },
                stopped.clone(),
            ))
        })
        .collect();
    // The engine's side: frames of several streams at once, each stream in order, as
    // `FrameOut` sends them (the tutor session as the bus session).
    let engine = connect();
    let streams: Vec<(UserId, TutorSessionId, RequestId)> = (0..STREAMS)
        .map(|_| (UserId::new(), TutorSessionId::new(), RequestId::new()))
        .collect();
    for sequence in 0..FRAMES {
        for (student, tutor_session, request) in &streams {
            let last = sequence == FRAMES - 1;
            let frame = TutorReplyFrame {
                student_id: *student,
                session_id: *tutor_session,
                request_id: *request,
                attempt: 1,
                sequence,
                stage: if last {
                    FrameStage::Final
                } else {
                    FrameStage::Model
                },
                delta: format!("{sequence} "),
                tool_call: None,
                is_final: last,
                elapsed_ms: 0,
            };
            engine
                .send(
                    QueueName::ManagerCallbackSession,
                    OutgoingMessage::new(
                        message_ids::frame(*request, 1, sequence),
                        session::CHAT_STREAM,
                        serde_json::to_value(&frame).unwrap(),
                    )
                    .with_session_id(tutor_session.to_string()),
                )
                .await
                .unwrap();
        }
        // As a model streams: a frame every few tens of milliseconds.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let asked: Vec<(UserId, RequestId)> = streams.iter().map(|(s, _, r)| (*s, *r)).collect();
    let replicas_used = each_stream_on_one_replica_in_order(&pushes[0], &pushes[1], &asked).await;
    eprintln!("streams per replica: {replicas_used:?}");
    stop.send(true).unwrap();
    for replica in replicas {
        tokio::time::timeout(Duration::from_secs(30), replica)
            .await
            .expect("the replica stops")
            .unwrap();
    }
}
