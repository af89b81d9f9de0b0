//! The chaos suite: the whole system under the conditions that broke it in real use, each run
//! ending with the operator's proof that the read side is exact (`teachin projections verify
//! all`) and a count of every acknowledged command in the log.
//!
//! - writers racing across a digit step of the server's transaction counter (…999 → …1000),
//!   some holding their transactions open, while the accessor follows the log;
//! - `kill -9` of a rebuild waiting to swap, and of the manager mid-command (clients retry
//!   with their idempotency keys, as portals do);
//! - `kill -9` of the engine mid-reply (the model streaming), with the manager and the
//!   accessor running as processes of their own;
//! - PostgreSQL itself crashed and restarted mid-load (on a server of the test's own).
//!
//! Nothing here is timed: every wait is a bounded poll of an observable condition, and every
//! size is bounded to keep the suite inside CI's budget. (`kill -9` of the accessor at any
//! moment, then a restart, is also `tests/crash_recovery.rs`.)

use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::PgPool;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::cluster::ScratchCluster;
use support::portal::Portal;
use support::{free_port, read_models_caught_up, teachin, teachin_at, verify_all, verify_all_at};
use teachin_commands::testing::TestDatabase;
use teachin_commands::workload::StudentActivity;
use teachin_commands::{command_bus, BusSettings, CommandBus, PortSecrets};

mod support;

const DEADLINE: Duration = Duration::from_secs(180);

fn bus(db: &TestDatabase) -> CommandBus {
    command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"chaos-lookup-key".to_vec(),
        },
        BusSettings::default(),
    )
}

fn start_accessor(db: &TestDatabase) -> Child {
    start_accessor_at(&db.url)
}

fn kill_9(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

async fn poll_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn current_transaction_id(pool: &PgPool) -> u64 {
    let text: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(pool)
        .await
        .unwrap();
    text.parse().unwrap()
}

/// A scratch server's database `teachin`, migrated, and a pool on it.
async fn scratch_database(cluster: &ScratchCluster) -> (String, PgPool) {
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE teachin")
        .execute(&mut admin)
        .await
        .unwrap();
    let url = cluster.url("teachin");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .unwrap();
    teachin_commands::migrations::run(&pool).await.unwrap();
    (url, pool)
}

fn start_accessor_at(url: &str) -> Child {
    teachin_at(url)
        .arg("accessor")
        .env("TEACHIN_ACCESSOR_PORT", free_port().to_string())
        .env(
            "TEACHIN_NAMESPACE",
            format!("chaos-{}", uuid::Uuid::new_v4().simple()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the accessor starts")
}

/// Appends one event of a stream no projection reads inside a transaction held open for a
/// while: later transactions commit behind it, and every follower must wait for it rather
/// than pass it.
async fn hold_a_transaction_open(pool: &PgPool, stream: &str, sequence: i64, hold: Duration) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('ChaosProbe', $1, $2, 'Held', '1.0', '{}', jsonb_build_object('command_id', gen_random_uuid()))",
    )
    .bind(stream)
    .bind(sequence)
    .execute(&mut *tx)
    .await
    .unwrap();
    tokio::time::sleep(hold).await;
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn writers_racing_across_a_digit_step_while_the_accessor_follows_end_verified() {
    // A server of the test's own whose transaction counter starts 600 short of 10,000,000:
    // the writers below carry it across the step from seven digits to eight.
    let step = 10_000_000;
    let cluster = ScratchCluster::start_near_transaction(step - 600);
    let (url, pool) = scratch_database(&cluster).await;
    assert!(current_transaction_id(&pool).await < step);
    let bus = command_bus(
        pool.clone(),
        PortSecrets {
            claims_hash_key: b"chaos-lookup-key".to_vec(),
        },
        BusSettings::default(),
    );
    let mut accessor = start_accessor_at(&url);

    // 16 writers: 12 students issuing real commands, 4 holding transactions open for random
    // moments. They go on until the log holds events on both sides of the step.
    let crossed = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..16u64 {
        let (bus, pool, crossed) = (bus.clone(), pool.clone(), crossed.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(writer);
            let mut student = StudentActivity::new();
            let stream = format!("holder-{writer}");
            let mut steps = 0i64;
            // Bounded: a few thousand transactions are far more than the margin.
            while steps < 400 && (steps < 24 || !crossed.load(Ordering::SeqCst)) {
                steps += 1;
                if writer < 4 {
                    let hold = Duration::from_millis(rng.gen_range(0..40));
                    hold_a_transaction_open(&pool, &stream, steps, hold).await;
                } else {
                    student.step(&bus).await.expect("a workload command");
                }
            }
        }));
    }
    // Restart the accessor once mid-way (kill -9), on the far side of the step.
    poll_until("the counter passes the digit step", || async {
        current_transaction_id(&pool).await >= step
    })
    .await;
    kill_9(accessor);
    accessor = start_accessor_at(&url);
    crossed.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }

    let (below, above): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE transaction_id < $1::text::xid8),
                count(*) FILTER (WHERE transaction_id >= $1::text::xid8)
           FROM events",
    )
    .bind(step.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        below > 0 && above > 0,
        "the log must straddle the step {step}: {below} events below, {above} above"
    );

    poll_until("the accessor catches up", || async {
        read_models_caught_up(&pool).await
    })
    .await;
    verify_all_at(&url);
    // The realtime feed and the outbox relay followed the same log to its end.
    for follower in ["realtime_feed", "outbox_relay"] {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events e, projection_checkpoints c
              WHERE c.name = $1
                AND (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)",
        )
        .bind(follower)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(behind, 0, "{follower} is behind the log");
    }
    kill_9(accessor);
}

#[tokio::test]
async fn a_rebuild_killed_while_it_waits_to_swap_leaves_the_live_read_models_and_runs_again() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let mut students: Vec<StudentActivity> = (0..8).map(|_| StudentActivity::new()).collect();
    for _ in 0..30 {
        for student in students.iter_mut() {
            student.step(&bus).await.expect("a workload command");
        }
    }
    let accessor = start_accessor(&db);
    poll_until("the accessor catches up", || async {
        read_models_caught_up(&db.pool).await
    })
    .await;

    // A rebuild folds every shadow, then waits to swap: a row it must lock is held here. It
    // is killed there, with its swap transaction open and every shadow full.
    let mut holder = db.pool.begin().await.unwrap();
    sqlx::query("SELECT name FROM projection_checkpoints WHERE name = 'users' FOR UPDATE")
        .fetch_all(&mut *holder)
        .await
        .unwrap();
    let rebuild = teachin(&db)
        .args(["projections", "rebuild", "all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the rebuild starts");
    poll_until(
        "the rebuild's shadows are full and its swap waits",
        || async {
            let (shadows, full): (i64, i64) = sqlx::query_as(
                "SELECT count(*), count(*) FILTER (WHERE events_applied > 0)
               FROM projection_checkpoints WHERE name LIKE '%@rebuild'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            let swapping: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE '%ORDER BY name FOR UPDATE%'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            shadows > 0 && shadows == full && swapping > 0
        },
    )
    .await;
    kill_9(rebuild);
    holder.rollback().await.unwrap();

    // The live read models never stopped and are still exact; students go on working.
    for student in students.iter_mut() {
        student.step(&bus).await.expect("a workload command");
    }
    poll_until("the accessor catches up", || async {
        read_models_caught_up(&db.pool).await
    })
    .await;
    verify_all(&db);

    // The rebuild runs again from scratch and swaps in exactly what the log says.
    let output = teachin(&db)
        .args(["projections", "rebuild", "all"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    poll_until("the accessor catches up", || async {
        read_models_caught_up(&db.pool).await
    })
    .await;
    verify_all(&db);
    kill_9(accessor);
}

fn start_manager(db: &TestDatabase, port: u16) -> Child {
    teachin(db)
        .arg("manager")
        .env("TEACHIN_MANAGER_PORT", port.to_string())
        .env("TEACHIN_NAMESPACE", format!("chaos-{}", db.name))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the manager starts")
}

async fn wait_ready(url: &str) {
    let http = reqwest::Client::new();
    poll_until("the manager is ready", || async {
        matches!(http.get(format!("{url}/readyz")).send().await, Ok(r) if r.status().is_success())
    })
    .await;
}

#[tokio::test]
async fn the_manager_killed_mid_command_loses_and_repeats_no_acknowledged_command() {
    let db = TestDatabase::new().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut manager = start_manager(&db, port);
    let accessor = start_accessor(&db);
    wait_ready(&url).await;

    let mut portal = Portal::at(&url);
    let email = format!("chaos-{}@students.example", db.name);
    portal.sign_up("Kim", &email).await;
    portal.login(&email).await;
    let portal = Arc::new(portal);

    // Eight clients add word cards, each under its own idempotency key, retrying a card until
    // the manager acknowledges it. The manager is killed (-9) and restarted under them.
    let total_cards = 8 * 15;
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (portal, acknowledged) = (portal.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for card in 0..15 {
                    let key = format!("card-{client}-{card}");
                    let deadline = Instant::now() + DEADLINE;
                    loop {
                        let answer = portal
                            .try_gql(
                                "mutation($key: String!) {
                                   addWordCard(hebrew: \"ספר\", english: $key, idempotencyKey: $key) { id events }
                                 }",
                                json!({ "key": key }),
                            )
                            .await;
                        match answer {
                            Ok(r) if r["data"]["addWordCard"].is_object() => {
                                acknowledged.lock().unwrap().push(key);
                                break;
                            }
                            Ok(r) => {
                                // Only a conflict from a racing retry may answer other than data.
                                let code = r["errors"][0]["extensions"]["code"].as_str();
                                assert!(
                                    matches!(code, Some("CONFLICT" | "INTERNAL")),
                                    "{key}: {r}"
                                );
                            }
                            Err(_) => {} // no answer: the manager is down; try again
                        }
                        assert!(Instant::now() < deadline, "{key} was never acknowledged");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    for _ in 0..3 {
        let before = acknowledged.lock().unwrap().len();
        poll_until("some cards are acknowledged", || async {
            acknowledged.lock().unwrap().len() > before
                || acknowledged.lock().unwrap().len() == total_cards
        })
        .await;
        kill_9(manager);
        manager = start_manager(&db, port);
    }
    for client in clients {
        client.await.unwrap();
    }

    // Every acknowledged card is in the log exactly once: no loss, no repeat. (A card's id is
    // derived from its idempotency key, so a retry can only ever name the same card.)
    let cards: Vec<(String, i64)> = sqlx::query_as(
        "SELECT payload #>> '{WordCardAdded,card_id}', count(*) FROM events
          WHERE aggregate_type = 'WordCardDeck' AND event_type = 'WordCardAdded'
          GROUP BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(acknowledged.len(), total_cards);
    assert_eq!(cards.len(), total_cards, "{cards:?}");
    assert!(
        cards.iter().all(|(_, n)| *n == 1),
        "a card was added twice: {cards:?}"
    );
    let receipts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM command_receipts WHERE dedupe_key LIKE 'idem:%:card-%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(receipts, total_cards as i64);
    poll_until("the accessor catches up", || async {
        read_models_caught_up(&db.pool).await
    })
    .await;
    verify_all(&db);
    kill_9(manager);
    kill_9(accessor);
}

#[tokio::test]
async fn postgres_crashed_and_restarted_mid_load_loses_and_repeats_no_acknowledged_command() {
    let cluster = ScratchCluster::start();
    let (url, pool) = scratch_database(&cluster).await;
    let bus = command_bus(
        pool.clone(),
        PortSecrets {
            claims_hash_key: b"chaos-lookup-key".to_vec(),
        },
        BusSettings::default(),
    );
    let accessor = start_accessor_at(&url);

    // Eight students, each adding cards under idempotency keys and retrying a card until the
    // store acknowledges it, while the server is crashed and restarted twice under them.
    let students_signed_up: Vec<_> = (0..8)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let mut student = StudentActivity::new();
                student.step(&bus).await.expect("sign-up");
                student.student
            })
        })
        .collect();
    let mut students = Vec::new();
    for signed_up in students_signed_up {
        students.push(signed_up.await.unwrap());
    }
    let cards_each = 20;
    let acknowledged = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = students
        .into_iter()
        .enumerate()
        .map(|(n, student)| {
            let (bus, acknowledged) = (bus.clone(), acknowledged.clone());
            tokio::spawn(async move {
                use teachin_domain::actor::{Actor, Role};
                use teachin_domain::ids::WordCardId;
                use teachin_domain::word_cards::{WordCardCommand, WordCardDeck};
                for card in 0..cards_each {
                    let key = format!("card-{n}-{card}");
                    let card_id = WordCardId(uuid::Uuid::new_v5(
                        &uuid::Uuid::NAMESPACE_OID,
                        key.as_bytes(),
                    ));
                    let actor = Actor::user(student, Role::Student);
                    let deadline = Instant::now() + DEADLINE;
                    loop {
                        let context = teachin_commands::CommandContext::new(actor, "chaos")
                            .with_idempotency_key(key.clone());
                        let outcome = bus
                            .execute::<WordCardDeck>(
                                &student.to_string(),
                                WordCardCommand::AddCard {
                                    owner: student,
                                    card_id,
                                    hebrew: "ספר".into(),
                                    english: key.clone(),
                                    explanation: None,
                                },
                                &context,
                            )
                            .await;
                        if outcome.is_ok() {
                            acknowledged.lock().unwrap().push(key);
                            break;
                        }
                        // The server is down or recovering: the command may or may not have
                        // been committed; the same key makes the retry safe either way.
                        assert!(Instant::now() < deadline, "{key} was never acknowledged");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let total = 8 * cards_each;
    for _ in 0..2 {
        let before = acknowledged.lock().unwrap().len();
        poll_until("some cards are acknowledged", || async {
            let now = acknowledged.lock().unwrap().len();
            now > before || now == total
        })
        .await;
        cluster.crash_and_restart();
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let cards: Vec<(String, i64)> = sqlx::query_as(
        "SELECT payload #>> '{WordCardAdded,card_id}', count(*) FROM events
          WHERE event_type = 'WordCardAdded' GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(acknowledged.lock().unwrap().len(), total);
    assert_eq!(cards.len(), total, "an acknowledged card is missing");
    assert!(
        cards.iter().all(|(_, n)| *n == 1),
        "a card was added twice: {cards:?}"
    );
    poll_until("the accessor catches up after the crashes", || async {
        read_models_caught_up(&pool).await
    })
    .await;
    verify_all_at(&url);
    kill_9(accessor);
    pool.close().await;
}

fn start_role(db: &TestDatabase, role: &str, namespace: &str, env: &[(&str, &str)]) -> Child {
    let port_variable = format!("TEACHIN_{}_PORT", role.to_ascii_uppercase());
    let mut command = teachin(db);
    command
        .arg(role)
        .env(port_variable, free_port().to_string())
        .env("TEACHIN_NAMESPACE", namespace)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().expect("the role starts")
}

#[tokio::test]
async fn the_engine_killed_mid_reply_leaves_it_to_another_which_answers_once() {
    use teachin_domain::actor::{Actor, Role};
    use teachin_domain::ids::{RequestId, TutorSessionId};
    use teachin_domain::tutor_session::{SessionKind, TutorSession, TutorSessionCommand};
    use teachin_workers::testing::llm::{LlmReply, LlmServer, StreamEnd};

    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let llm = LlmServer::start().await;
    // The first attempt streams a little, then hangs; the second is whole.
    llm.push(
        LlmReply::answer("test-model", &["Shalom, ", "and then nothing"], (1, 1))
            .truncated(3, StreamEnd::Hang),
    );
    llm.otherwise(LlmReply::answer(
        "test-model",
        &["Shalom! ", "Let us practise."],
        (20, 8),
    ));
    let base = format!("{}/v1", llm.url());
    let ai = [
        ("OPENAI_BASE_URL", base.as_str()),
        ("OPENAI_API_KEY", "sk-test"),
        ("OPENAI_MODEL", "test-model"),
        // A killed engine's message comes back once its lock lapses.
        ("TEACHIN_BUS_LOCK_SECONDS", "2"),
    ];
    let namespace = format!("chaos-{}", db.name);
    let manager = start_role(&db, "manager", &namespace, &ai);
    let accessor = start_role(&db, "accessor", &namespace, &ai);
    let engine = start_role(&db, "engine", &namespace, &ai);

    let mut student = StudentActivity::new();
    student.step(&bus).await.expect("sign-up");
    let session = TutorSessionId::new();
    let request = RequestId::new();
    bus.execute::<TutorSession>(
        &session.to_string(),
        TutorSessionCommand::PostStudentMessage {
            student: student.student,
            kind: SessionKind::Default,
            text: "Teach me a greeting".into(),
            page_context: None,
            request_id: request,
        },
        &teachin_commands::CommandContext::new(
            Actor::user(student.student, Role::Student),
            "chaos",
        ),
    )
    .await
    .expect("the message is posted");

    // The engine is mid-reply (the model has been asked and is streaming): kill -9.
    poll_until("the engine asks the model", || async {
        llm.seen().len() == 1
    })
    .await;
    kill_9(engine);
    let engine = start_role(&db, "engine", &namespace, &ai);

    let count_events = |event_type: &'static str| {
        let pool = db.pool.clone();
        let session = session.to_string();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = $2",
            )
            .bind(session)
            .bind(event_type)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    poll_until("the reply completes", || async {
        count_events("AiReplyCompleted").await == 1
    })
    .await;
    poll_until("every bus message is settled", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM bus_messages")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    assert_eq!(count_events("AiReplyCompleted").await, 1);
    assert_eq!(count_events("AiReplyFailed").await, 0);
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM bus_dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "a message was dead-lettered");
    // Asked again after the kill (then once more for the session's title).
    assert!(llm.seen().len() >= 2, "{} model requests", llm.seen().len());
    poll_until("the accessor catches up", || async {
        read_models_caught_up(&db.pool).await
    })
    .await;
    verify_all(&db);
    for child in [engine, accessor, manager] {
        kill_9(child);
    }
}
