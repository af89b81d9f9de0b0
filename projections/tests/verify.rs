//! `projections verify` against the real database: a real workload folds to exactly the live
//! read models; a tampered or deleted live row is found and named; a verify while the daemon
//! keeps applying new events sees no false difference; a halted projection is reported as
//! halted; the scratch schemas are gone afterwards, also when the verify fails.
//!
//! Waiting is bounded polling of an observable condition, never a fixed sleep.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::{Duration, Instant};
use teachin_commands::testing::TestDatabase;
use teachin_commands::workload::StudentActivity;
use teachin_commands::{command_bus, BusSettings, CommandBus, PortSecrets};
use teachin_projections::checkpoint;
use teachin_projections::daemon::{DaemonSettings, ProjectionDaemon};
use teachin_projections::{
    read_models, verify, ApplyContext, ApplyError, LogPosition, LoggedEvent, Outcome, Projection,
    ProjectionVerdict, VerifyError, VerifyOptions,
};
use tokio::sync::watch;

mod support;
use support::ApplicationCounter;

fn bus(db: &TestDatabase) -> CommandBus {
    command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"verify-test-key".to_vec(),
        },
        BusSettings::default(),
    )
}

/// `students` students, `steps` commands each, through the real command bus.
async fn workload(bus: &CommandBus, students: usize, steps: usize) {
    let mut activity: Vec<StudentActivity> =
        (0..students).map(|_| StudentActivity::new()).collect();
    for _ in 0..steps {
        for student in activity.iter_mut() {
            student.step(bus).await.expect("workload command");
        }
    }
}

fn start(
    db: &TestDatabase,
    projections: Vec<Arc<dyn Projection>>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let settings = DaemonSettings {
        batch_size: 13,
        idle_poll_min: Duration::from_millis(5),
        idle_poll_max: Duration::from_millis(50),
        takeover_every: Duration::from_millis(50),
    };
    let daemon = ProjectionDaemon::new(db.pool.clone(), projections, settings);
    (stop, tokio::spawn(daemon.run(stopped)))
}

/// The last committed event (settled or not: the settled horizon is cluster-wide, and another
/// test's open transaction can hold it back for a moment).
async fn last_event(db: &TestDatabase) -> LogPosition {
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text AS tx, global_position FROM events
          ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    row.map(|(tx, pos)| LogPosition {
        transaction_id: tx.parse().unwrap(),
        global_position: pos,
    })
    .unwrap_or(LogPosition::START)
}

/// Waits until every one of `names` has a checkpoint at the last event of the log.
async fn caught_up(db: &TestDatabase, names: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let head = last_event(db).await;
        let mut done = head != LogPosition::START;
        for name in names {
            let at = checkpoint::get(&db.pool, name)
                .await
                .unwrap()
                .map(|c| c.position);
            done &= at == Some(head);
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the daemon never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn scratch_schemas(db: &TestDatabase) -> Vec<String> {
    sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'verify%'")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn verify_all(
    db: &TestDatabase,
    projections: &[Arc<dyn Projection>],
) -> Vec<ProjectionVerdict> {
    let refs: Vec<&dyn Projection> = projections.iter().map(|p| &**p).collect();
    verify(&db.pool, &refs, &VerifyOptions::default())
        .await
        .expect("the verify runs")
}

fn verdict<'v>(verdicts: &'v [ProjectionVerdict], name: &str) -> &'v ProjectionVerdict {
    verdicts
        .iter()
        .find(|v| v.projection == name)
        .unwrap_or_else(|| panic!("no verdict for {name}"))
}

/// A database with a real workload, every read model caught up, the daemon stopped.
async fn populated() -> TestDatabase {
    let db = TestDatabase::new().await;
    workload(&bus(&db), 4, 30).await;
    let all = read_models::all();
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let (stop, daemon) = start(&db, all.clone());
    caught_up(&db, &names).await;
    stop.send(true).unwrap();
    daemon.await.unwrap();
    db
}

#[tokio::test]
async fn every_read_model_equals_the_fold_of_the_log_after_a_real_workload() {
    let db = populated().await;
    let all = read_models::all();
    let verdicts = verify_all(&db, &all).await;
    assert_eq!(verdicts.len(), all.len());
    for v in &verdicts {
        assert!(v.is_equal(), "{v}\n{:#?}", v.detail_lines());
        assert!(v.position > LogPosition::START, "{v}");
        assert_eq!(
            v.tables.len(),
            all.iter()
                .find(|p| p.name() == v.projection)
                .unwrap()
                .tables()
                .len()
        );
        assert!(
            v.to_string()
                .starts_with(&format!("{}: equal at ", v.projection)),
            "{v}"
        );
    }
    // The workload reached every projection: the comparison was not of empty tables.
    for name in [
        "users",
        "practice",
        "tutor_sessions",
        "word_cards",
        "achievements",
    ] {
        let rows: i64 = verdict(&verdicts, name)
            .tables
            .iter()
            .map(|t| t.live_rows)
            .sum();
        assert!(rows > 0, "{name} has rows");
    }
    assert_eq!(scratch_schemas(&db).await, Vec::<String>::new());
    // Nothing of the verify is left in the checkpoints either.
    let checkpoints: Vec<String> =
        sqlx::query_scalar("SELECT name FROM projection_checkpoints ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let mut names: Vec<String> = all.iter().map(|p| p.name().to_string()).collect();
    names.sort();
    assert_eq!(checkpoints, names);
}

#[tokio::test]
async fn a_tampered_live_row_is_reported_with_its_table_and_columns() {
    let db = populated().await;
    let (user_id, first_name): (uuid::Uuid, String) =
        sqlx::query_as("SELECT user_id, first_name FROM read_model.users ORDER BY user_id LIMIT 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    sqlx::query("UPDATE read_model.users SET first_name = 'Mallory' WHERE user_id = $1")
        .bind(user_id)
        .execute(&db.pool)
        .await
        .unwrap();

    let all = read_models::all();
    let verdicts = verify_all(&db, &all).await;
    let users = verdict(&verdicts, "users");
    assert_eq!(users.outcome, Outcome::Differs);
    let line = users.to_string();
    assert!(line.starts_with("users: DIFFERS at "), "{line}");
    assert!(
        line.contains("users has"),
        "the line names the table: {line}"
    );
    let table = users.differing_tables().next().unwrap();
    assert_eq!(table.table, "users");
    assert_eq!(
        table.live_rows, table.expected_rows,
        "same count, other content"
    );
    assert_ne!(table.live_hash, table.expected_hash);
    assert_eq!(table.differing.len(), 1, "{:#?}", table.differing);
    let row = &table.differing[0];
    assert_eq!(
        row.key.as_deref(),
        Some(format!("user_id={user_id}").as_str())
    );
    assert_eq!(row.live.as_ref().unwrap()["first_name"], "Mallory");
    assert_eq!(
        row.expected.as_ref().unwrap()["first_name"],
        first_name.as_str()
    );
    let details = users.detail_lines();
    assert_eq!(details.len(), 1, "{details:?}");
    assert!(
        details[0].contains("first_name: live \"Mallory\", expected")
            && !details[0].contains("role:"),
        "only the differing column: {}",
        details[0]
    );
    for v in verdicts.iter().filter(|v| v.projection != "users") {
        assert!(v.is_equal(), "{v}");
    }
    assert_eq!(scratch_schemas(&db).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_deleted_live_row_shows_in_the_row_count() {
    let db = populated().await;
    let deleted: uuid::Uuid = sqlx::query_scalar(
        "DELETE FROM read_model.attempts
          WHERE attempt_id = (SELECT attempt_id FROM read_model.attempts ORDER BY attempt_id LIMIT 1)
          RETURNING attempt_id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();

    let verdicts = verify_all(&db, &read_models::all()).await;
    let practice = verdict(&verdicts, "practice");
    assert_eq!(practice.outcome, Outcome::Differs, "{practice}");
    let attempts = practice
        .tables
        .iter()
        .find(|t| t.table == "attempts")
        .unwrap();
    assert_eq!(attempts.live_rows + 1, attempts.expected_rows);
    assert!(!attempts.is_equal());
    assert_eq!(attempts.differing.len(), 1);
    assert_eq!(attempts.differing[0].live, None);
    assert_eq!(
        attempts.differing[0].expected.as_ref().unwrap()["attempt_id"],
        deleted.to_string()
    );
    assert!(practice.detail_lines()[0].contains("missing live"));
    // Only the table that changed differs.
    assert_eq!(practice.differing_tables().count(), 1);
    for v in verdicts.iter().filter(|v| v.projection != "practice") {
        assert!(v.is_equal(), "{v}");
    }
    assert_eq!(scratch_schemas(&db).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_verify_while_the_daemon_applies_new_events_finds_no_false_difference() {
    let db = TestDatabase::new().await;
    ApplicationCounter::default().create_table(&db.pool).await;
    let mut projections = read_models::all();
    projections.push(Arc::new(ApplicationCounter::default()));
    let bus = bus(&db);
    workload(&bus, 3, 10).await;
    let (stop, daemon) = start(&db, projections.clone());

    // Students keep working, the daemon keeps applying, and the verifies run in between.
    let writing = tokio::spawn({
        let bus = bus.clone();
        async move { workload(&bus, 6, 36).await }
    });
    let mut positions = Vec::new();
    let mut during_writes = 0;
    while positions.len() < 4 || !writing.is_finished() {
        let still_writing = !writing.is_finished();
        let verdicts = verify_all(&db, &projections).await;
        for v in &verdicts {
            assert!(v.is_equal(), "{v}\n{:#?}", v.detail_lines());
        }
        if still_writing && !writing.is_finished() {
            during_writes += 1;
        }
        positions.push(verdict(&verdicts, "application_counter").position);
        assert!(positions.len() < 500, "the workload never finished");
    }
    writing.await.unwrap();
    assert!(
        during_writes >= 1,
        "no verify ran while events were being written"
    );
    assert!(
        positions.first() < positions.last(),
        "the live projections moved between verifies: {positions:?}"
    );
    stop.send(true).unwrap();
    daemon.await.unwrap();
    // And once everything settled, the counter applied every event exactly once.
    let counted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM read_model.applied_events WHERE times <> 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(counted, 0);
    assert_eq!(scratch_schemas(&db).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_halted_projection_is_reported_as_halted() {
    let db = populated().await;
    let event: (uuid::Uuid,) = sqlx::query_as("SELECT event_id FROM events LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    checkpoint::halt(
        &db.pool,
        "word_cards",
        event.0,
        LogPosition::START,
        "a test says so",
    )
    .await
    .unwrap();
    let verdicts = verify_all(&db, &read_models::all()).await;
    let word_cards = verdict(&verdicts, "word_cards");
    assert!(
        matches!(&word_cards.outcome, Outcome::Halted { failure: Some(f), .. } if f == "a test says so"),
        "{word_cards:?}"
    );
    assert!(!word_cards.is_equal());
    assert!(
        word_cards.to_string().starts_with("word_cards: HALTED at "),
        "{word_cards}"
    );
    for v in verdicts.iter().filter(|v| v.projection != "word_cards") {
        assert!(v.is_equal(), "{v}");
    }
    assert_eq!(scratch_schemas(&db).await, Vec::<String>::new());
}

/// Applies nothing, ever: its scratch fold fails on the first event.
struct Refuser;

#[async_trait]
impl Projection for Refuser {
    fn name(&self) -> &'static str {
        "refuser"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["refused"]
    }
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        _cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        Err(ApplyError::poison(&batch[0], "refused"))
    }
}

#[tokio::test]
async fn a_verify_that_fails_drops_its_scratch_schemas_too() {
    let db = populated().await;
    sqlx::query("CREATE TABLE read_model.refused (id int PRIMARY KEY)")
        .execute(&db.pool)
        .await
        .unwrap();
    // The live copy claims to be at the head of the log.
    let head = last_event(&db).await;
    checkpoint::ensure(&db.pool, "refuser").await.unwrap();
    sqlx::query(
        "UPDATE projection_checkpoints SET transaction_id = $1::text::xid8, global_position = $2
          WHERE name = 'refuser'",
    )
    .bind(head.transaction_id.to_string())
    .bind(head.global_position)
    .execute(&db.pool)
    .await
    .unwrap();
    // A schema left behind by a killed verify is no obstacle either.
    sqlx::query("CREATE SCHEMA verify_users")
        .execute(&db.pool)
        .await
        .unwrap();

    let projections: Vec<Arc<dyn Projection>> =
        vec![Arc::new(read_models::Users), Arc::new(Refuser)];
    let refs: Vec<&dyn Projection> = projections.iter().map(|p| &**p).collect();
    let failed = verify(&db.pool, &refs, &VerifyOptions::default()).await;
    assert!(
        matches!(&failed, Err(VerifyError::Fold(reason)) if reason.contains("refused")),
        "{failed:?}"
    );
    assert_eq!(scratch_schemas(&db).await, Vec::<String>::new());
    // The pool is fine and a verify of the others passes.
    let verdicts = verify_all(&db, &[Arc::new(read_models::Users)]).await;
    assert!(verdicts[0].is_equal(), "{}", verdicts[0]);
}

#[tokio::test]
async fn a_verify_beside_a_rebuild_and_the_running_daemon_neither_collides_nor_differs() {
    let db = populated().await;
    let all = read_models::all();
    let (stop, daemon) = start(&db, all.clone());
    let bus = bus(&db);
    let writing = tokio::spawn({
        let bus = bus.clone();
        async move { workload(&bus, 3, 24).await }
    });
    // Side by side in this task (a rebuild's future is not `Send` enough to spawn).
    let refs: Vec<&dyn Projection> = all.iter().map(|p| &**p).collect();
    let rebuilt = std::sync::atomic::AtomicBool::new(false);
    let rebuilding = async {
        for _ in 0..3 {
            teachin_projections::rebuild::rebuild_all(&db.pool, &refs, 50)
                .await
                .expect("the rebuild succeeds beside a verify");
        }
        rebuilt.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let verifying = async {
        let mut verifies = 0;
        while verifies < 2 || !rebuilt.load(std::sync::atomic::Ordering::SeqCst) {
            for v in verify_all(&db, &all).await {
                assert!(v.is_equal(), "{v}\n{:#?}", v.detail_lines());
            }
            verifies += 1;
            assert!(verifies < 500, "the rebuilds never finished");
        }
    };
    tokio::join!(rebuilding, verifying);
    writing.await.unwrap();
    stop.send(true).unwrap();
    daemon.await.unwrap();
    let left: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace
          WHERE nspname LIKE 'verify%' OR nspname LIKE 'rebuild%'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, Vec::<String>::new());
}
