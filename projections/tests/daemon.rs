//! The projection daemon against the real database: catch-up and live following, two
//! daemons competing for the same projections, a poisoned event halting only its projection,
//! a rebuild swapping in while readers keep reading, and one stopping on a poisoned event
//! before its swap.
//!
//! Waiting is bounded polling of an observable condition, never a fixed sleep.

use async_trait::async_trait;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandBus, CommandContext, PortSecrets};
use teachin_domain::actor::Actor;
use teachin_domain::game_config::{GameConfiguration, GameConfigurationCommand};
use teachin_domain::ids::UserId;
use teachin_domain::vocabulary::{Difficulty, GameType};
use teachin_projections::checkpoint::{self, Status};
use teachin_projections::daemon::{DaemonSettings, ProjectionDaemon};
use teachin_projections::read_models::GameConfigs;
use teachin_projections::{rebuild, ApplyContext, ApplyError, LoggedEvent, Projection};
use tokio::sync::watch;

mod support;
use support::ApplicationCounter;

fn bus(db: &TestDatabase) -> CommandBus {
    command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"k".to_vec(),
        },
        BusSettings::default(),
    )
}

async fn save_config(bus: &CommandBus, user: UserId, sentences: u8) {
    bus.execute::<GameConfiguration>(
        &user.to_string(),
        GameConfigurationCommand::Save {
            game: GameType::TypingPractice,
            difficulty: Difficulty::Hard,
            nikud: sentences.is_multiple_of(2),
            number_of_sentences: sentences,
        },
        &CommandContext::new(Actor::System, "test"),
    )
    .await
    .unwrap();
}

fn quick() -> DaemonSettings {
    DaemonSettings {
        batch_size: 7,
        idle_poll_min: Duration::from_millis(5),
        idle_poll_max: Duration::from_millis(50),
        takeover_every: Duration::from_millis(50),
    }
}

async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count(db: &TestDatabase, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap()
}

fn start(
    db: &TestDatabase,
    projections: Vec<Arc<dyn Projection>>,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = watch::channel(false);
    let daemon = ProjectionDaemon::new(db.pool.clone(), projections, quick());
    (stop, tokio::spawn(daemon.run(stopped)))
}

#[tokio::test]
async fn catches_up_from_zero_then_follows_new_commits() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let users: Vec<UserId> = (0..5).map(|_| UserId::new()).collect();
    for user in &users {
        save_config(&bus, *user, 3).await;
    }
    let (stop, daemon) = start(&db, vec![Arc::new(GameConfigs)]);
    eventually("catch-up", || async {
        count(&db, "SELECT count(*) FROM read_model.game_configs").await == 5
    })
    .await;

    // Live: a new commit is projected without restarting anything.
    save_config(&bus, users[0], 9).await;
    eventually("live update", || async {
        count(
            &db,
            "SELECT count(*) FROM read_model.game_configs WHERE number_of_sentences = 9",
        )
        .await
            == 1
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();
}

#[tokio::test]
async fn two_daemons_competing_apply_each_event_once_and_one_takes_over_from_the_other() {
    let db = TestDatabase::new().await;
    ApplicationCounter::default().create_table(&db.pool).await;
    let bus = bus(&db);
    let (stop_a, daemon_a) = start(&db, vec![Arc::new(ApplicationCounter::default())]);
    let (stop_b, daemon_b) = start(&db, vec![Arc::new(ApplicationCounter::default())]);

    let writers: Vec<_> = (0..4)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let user = UserId::new();
                for n in 1..=10 {
                    save_config(&bus, user, n).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let total = count(&db, "SELECT count(*) FROM events").await;
    eventually("both daemons together apply everything", || async {
        count(&db, "SELECT count(*) FROM read_model.applied_events").await == total
    })
    .await;

    // Stop whichever owns it; the other takes over and keeps following.
    stop_a.send(true).unwrap();
    daemon_a.await.unwrap();
    for n in 1..=5 {
        save_config(&bus, UserId::new(), n).await;
    }
    let total = count(&db, "SELECT count(*) FROM events").await;
    eventually("the survivor follows", || async {
        count(&db, "SELECT count(*) FROM read_model.applied_events").await == total
    })
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM read_model.applied_events WHERE times <> 1"
        )
        .await,
        0,
        "an event was applied more than once"
    );
    stop_b.send(true).unwrap();
    daemon_b.await.unwrap();
}

/// Refuses events of one user until told the bug is fixed.
struct Fussy {
    poisoned_user: String,
    fixed: Arc<AtomicBool>,
}

#[async_trait]
impl Projection for Fussy {
    fn name(&self) -> &'static str {
        "fussy"
    }
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        _cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        match batch.iter().find(|e| e.aggregate_id == self.poisoned_user) {
            Some(event) if !self.fixed.load(Ordering::SeqCst) => Err(ApplyError::poison(
                event,
                "this projection cannot handle that user yet",
            )),
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn a_poisoned_event_halts_only_its_projection_until_resumed() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let (good, bad, later) = (UserId::new(), UserId::new(), UserId::new());
    save_config(&bus, good, 1).await;
    save_config(&bus, bad, 2).await;
    save_config(&bus, later, 3).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let fussy = Arc::new(Fussy {
        poisoned_user: bad.to_string(),
        fixed: fixed.clone(),
    });
    let (stop, daemon) = start(&db, vec![fussy, Arc::new(GameConfigs)]);

    eventually("fussy halts", || async {
        matches!(checkpoint::get(&db.pool, "fussy").await.unwrap(), Some(c) if c.status == Status::Halted)
    })
    .await;
    let halted = checkpoint::get(&db.pool, "fussy").await.unwrap().unwrap();
    let poisoned_event: uuid::Uuid =
        sqlx::query_scalar("SELECT event_id FROM events WHERE aggregate_id = $1")
            .bind(bad.to_string())
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(halted.failed_event_id, Some(poisoned_event));
    assert!(halted.failure.unwrap().contains("cannot handle"));
    assert_eq!(
        halted.events_applied, 1,
        "the event before the poison was applied"
    );
    // The other projection is unaffected.
    eventually("game_configs carries on", || async {
        count(&db, "SELECT count(*) FROM read_model.game_configs").await == 3
    })
    .await;

    fixed.store(true, Ordering::SeqCst);
    checkpoint::resume(&db.pool, "fussy").await.unwrap();
    eventually("fussy resumes past the event", || async {
        checkpoint::get(&db.pool, "fussy")
            .await
            .unwrap()
            .unwrap()
            .events_applied
            == 3
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();
}

async fn dump(db: &TestDatabase) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('%s %s %s %s %s', user_id, game, difficulty, nikud, number_of_sentences)
           FROM read_model.game_configs ORDER BY user_id, game",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_rebuild_swaps_in_while_reads_and_the_live_daemon_continue() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    for n in 1..=40 {
        save_config(&bus, UserId::new(), (n % 10) + 1).await;
    }
    let (stop, daemon) = start(&db, vec![Arc::new(GameConfigs)]);
    eventually("initial catch-up", || async {
        count(&db, "SELECT count(*) FROM read_model.game_configs").await == 40
    })
    .await;
    let before = dump(&db).await;

    // Readers hammer the live table during the rebuild; none may fail or see it shrink.
    let reading = Arc::new(AtomicBool::new(true));
    let reader = tokio::spawn({
        let pool = db.pool.clone();
        let reading = reading.clone();
        async move {
            let mut reads = 0u32;
            while reading.load(Ordering::SeqCst) {
                let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.game_configs")
                    .fetch_one(&pool)
                    .await
                    .expect("reads keep working during a rebuild");
                assert!(
                    rows >= 40,
                    "the read model shrank to {rows} rows during a rebuild"
                );
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }
    });
    // Writes keep coming too.
    let writer = tokio::spawn({
        let bus = bus.clone();
        async move {
            for n in 1..=10 {
                save_config(&bus, UserId::new(), n).await;
            }
        }
    });
    let report = rebuild::rebuild(&db.pool, &GameConfigs, 3).await.unwrap();
    writer.await.unwrap();
    reading.store(false, Ordering::SeqCst);
    assert!(reader.await.unwrap() > 0);
    assert!(report.events >= 40);

    eventually("the live daemon follows on the swapped tables", || async {
        count(&db, "SELECT count(*) FROM read_model.game_configs").await == 50
    })
    .await;
    let after = dump(&db).await;
    for row in &before {
        assert!(after.contains(row), "row lost in the rebuild: {row}");
    }
    // The swapped table keeps the live table's keys and index names.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'read_model' AND tablename = 'game_configs'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(indexes, vec!["game_configs_pkey".to_string()]);
    let leftover: i64 = count(
        &db,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild_%'",
    )
    .await;
    assert_eq!(leftover, 0);
    stop.send(true).unwrap();
    daemon.await.unwrap();
}

#[tokio::test]
async fn a_daemon_whose_owner_went_away_stops_even_without_a_database() {
    let db = TestDatabase::new().await;
    let (stop, daemon) = start(&db, vec![Arc::new(GameConfigs)]);
    // The database goes first (every acquire now fails), then whoever could stop the daemon.
    db.pool.close().await;
    drop(stop);
    tokio::time::timeout(Duration::from_secs(60), daemon)
        .await
        .expect("the daemon stops instead of spinning on its failed pauses")
        .unwrap();
}

#[tokio::test]
async fn a_rebuild_that_meets_a_poisoned_event_stops_before_its_swap_and_leaves_the_live_tables() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let (good, bad) = (UserId::new(), UserId::new());
    save_config(&bus, good, 1).await;
    save_config(&bus, bad, 2).await;
    for n in 3..=20 {
        save_config(&bus, UserId::new(), n % 10 + 1).await;
    }
    let (stop, daemon) = start(&db, vec![Arc::new(GameConfigs)]);
    eventually("initial catch-up", || async {
        count(&db, "SELECT count(*) FROM read_model.game_configs").await == 20
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();
    let before = dump(&db).await;

    // Rebuilt together, side by side: the fussy one fails, the healthy one is not swapped in
    // either, and the pool is left as it was found.
    let fussy = Fussy {
        poisoned_user: bad.to_string(),
        fixed: Arc::new(AtomicBool::new(false)),
    };
    let failed = rebuild::rebuild_all(&db.pool, &[&GameConfigs, &fussy], 3)
        .await
        .expect_err("the poisoned event stops the rebuild");
    assert!(
        failed.to_string().contains("cannot handle that user"),
        "{failed}"
    );
    assert_eq!(dump(&db).await, before, "the live read model is untouched");
    let live_checkpoint = checkpoint::get(&db.pool, "game_configs")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live_checkpoint.events_applied, 20);
    let stuck: i64 = count(
        &db,
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
    )
    .await;
    assert_eq!(
        stuck, 0,
        "no pooled connection was left inside a transaction"
    );

    // Fixed, the same pool rebuilds both.
    let report = rebuild::rebuild_all(
        &db.pool,
        &[
            &GameConfigs,
            &Fussy {
                poisoned_user: bad.to_string(),
                fixed: Arc::new(AtomicBool::new(true)),
            },
        ],
        3,
    )
    .await
    .unwrap();
    assert_eq!(report.events, 20);
    assert_eq!(dump(&db).await, before);
}

// --- checkpoints never move back --------------------------------------------------------------

/// Records every move of every checkpoint (a test-only trigger), so a test can prove that no
/// checkpoint ever went back and that a projection applied nothing twice.
async fn record_checkpoint_moves(db: &TestDatabase) {
    sqlx::raw_sql(
        "CREATE TABLE public.checkpoint_moves (
             name text, old_tx xid8, old_pos bigint, new_tx xid8, new_pos bigint,
             old_applied bigint, new_applied bigint);
         CREATE FUNCTION public.record_checkpoint_move() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO public.checkpoint_moves VALUES (NEW.name, OLD.transaction_id,
                 OLD.global_position, NEW.transaction_id, NEW.global_position,
                 OLD.events_applied, NEW.events_applied);
             RETURN NEW;
         END $$;
         CREATE TRIGGER record_checkpoint_move AFTER UPDATE ON public.projection_checkpoints
             FOR EACH ROW EXECUTE FUNCTION public.record_checkpoint_move();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
}

async fn assert_no_checkpoint_moved_back(db: &TestDatabase) {
    let back: Vec<String> = sqlx::query_scalar(
        "SELECT format('%s: %s/%s -> %s/%s', name, old_tx, old_pos, new_tx, new_pos)
           FROM public.checkpoint_moves
          WHERE (new_tx, new_pos) < (old_tx, old_pos)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(back.is_empty(), "checkpoints moved back: {back:?}");
}

async fn events_applied(db: &TestDatabase, name: &str) -> i64 {
    checkpoint::get(&db.pool, name)
        .await
        .unwrap()
        .map(|c| c.events_applied)
        .unwrap_or(0)
}

/// Whether `name` has consumed every committed event (not only the settled ones: another
/// test's open transaction can hold the cluster-wide horizon back for a moment).
async fn at_head(db: &TestDatabase, name: &str) -> bool {
    let last: Option<(String, i64)> = sqlx::query_as(
        "SELECT transaction_id::text AS tx, global_position FROM events
          ORDER BY events.transaction_id DESC, events.global_position DESC LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await
    .unwrap();
    let end = last.map_or(teachin_projections::LogPosition::START, |(tx, pos)| {
        teachin_projections::LogPosition {
            transaction_id: tx.parse().unwrap(),
            global_position: pos,
        }
    });
    matches!(checkpoint::get(&db.pool, name).await.unwrap(), Some(c) if c.position == end)
}

/// What the projections that were at the head when the test began have applied.
async fn applied_by_the_leaders(db: &TestDatabase) -> (i64, i64) {
    (
        events_applied(db, "game_configs").await,
        events_applied(db, "application_counter").await,
    )
}

/// The end of every catch-up test: no checkpoint went back, the projections at the head
/// applied nothing since `before`, and the counter saw each event exactly once.
async fn assert_the_leaders_applied_nothing_twice(db: &TestDatabase, before: (i64, i64)) {
    assert_no_checkpoint_moved_back(db).await;
    assert_eq!(
        applied_by_the_leaders(db).await,
        before,
        "a projection at the head applied events again while another caught up"
    );
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM read_model.applied_events WHERE times <> 1"
        )
        .await,
        0,
        "an event was applied twice"
    );
}

/// A projection deployed later: a counter of its own name and table.
const LATE_COUNTER: ApplicationCounter =
    ApplicationCounter::named("late_counter", &["late_applied_events"]);

#[tokio::test]
async fn a_projection_deployed_on_a_long_log_catches_up_alone_and_the_others_apply_nothing_twice() {
    let db = TestDatabase::new().await;
    ApplicationCounter::default().create_table(&db.pool).await;
    LATE_COUNTER.create_table(&db.pool).await;
    let bus = bus(&db);
    // Six batches of seven (`quick()`), and then some.
    for n in 1..=45 {
        save_config(&bus, UserId::new(), n % 10 + 1).await;
    }
    let total = count(&db, "SELECT count(*) FROM events").await;
    let (stop, daemon) = start(
        &db,
        vec![
            Arc::new(GameConfigs),
            Arc::new(ApplicationCounter::default()),
        ],
    );
    eventually("the first projections reach the head", || async {
        at_head(&db, "game_configs").await && at_head(&db, "application_counter").await
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();
    record_checkpoint_moves(&db).await;
    let before = applied_by_the_leaders(&db).await;
    assert_eq!(before, (total, total));

    // A new release deploys a third projection; the daemon restarts with all three.
    let (stop, daemon) = start(
        &db,
        vec![
            Arc::new(GameConfigs),
            Arc::new(ApplicationCounter::default()),
            Arc::new(LATE_COUNTER),
        ],
    );
    eventually("the new projection catches up", || async {
        at_head(&db, "late_counter").await
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();

    assert_the_leaders_applied_nothing_twice(&db, before).await;
    assert_eq!(events_applied(&db, "late_counter").await, total);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM read_model.late_applied_events WHERE times = 1"
        )
        .await,
        total
    );
}

#[tokio::test]
async fn a_projection_resumed_after_a_long_halt_catches_up_alone_and_the_others_apply_nothing_twice(
) {
    let db = TestDatabase::new().await;
    ApplicationCounter::default().create_table(&db.pool).await;
    let bus = bus(&db);
    let bad = UserId::new();
    save_config(&bus, UserId::new(), 1).await;
    save_config(&bus, bad, 2).await;
    let fixed = Arc::new(AtomicBool::new(false));
    let fussy = Arc::new(Fussy {
        poisoned_user: bad.to_string(),
        fixed: fixed.clone(),
    });
    let (stop, daemon) = start(
        &db,
        vec![
            fussy.clone(),
            Arc::new(ApplicationCounter::default()),
            Arc::new(GameConfigs),
        ],
    );
    eventually("fussy halts", || async {
        matches!(checkpoint::get(&db.pool, "fussy").await.unwrap(), Some(c) if c.status == Status::Halted)
    })
    .await;
    // The others go on for more than three batches while it is halted.
    for n in 1..=30 {
        save_config(&bus, UserId::new(), n % 10 + 1).await;
    }
    let total = count(&db, "SELECT count(*) FROM events").await;
    eventually("the others reach the head", || async {
        at_head(&db, "game_configs").await && at_head(&db, "application_counter").await
    })
    .await;
    record_checkpoint_moves(&db).await;
    let before = applied_by_the_leaders(&db).await;
    assert_eq!(before, (total, total));

    fixed.store(true, Ordering::SeqCst);
    checkpoint::resume(&db.pool, "fussy").await.unwrap();
    eventually("fussy catches up", || async { at_head(&db, "fussy").await }).await;
    stop.send(true).unwrap();
    daemon.await.unwrap();

    assert_the_leaders_applied_nothing_twice(&db, before).await;
    assert_eq!(events_applied(&db, "fussy").await, total);
}

/// Holds its batch (and with it the group's transaction and checkpoint locks) open on the
/// events of one user, until released.
struct Gate {
    user: String,
    blocked: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl Projection for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        _cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        if batch.iter().any(|e| e.aggregate_id == self.user) {
            self.blocked.notify_one();
            self.release.acquire().await.unwrap().forget();
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_projection_rebuilt_while_the_daemon_runs_moves_ahead_and_the_others_apply_nothing_twice()
{
    let db = TestDatabase::new().await;
    ApplicationCounter::default().create_table(&db.pool).await;
    let bus = bus(&db);
    for n in 1..=5 {
        save_config(&bus, UserId::new(), n).await;
    }
    let gated = UserId::new();
    let gate = Arc::new(Gate {
        user: gated.to_string(),
        blocked: Arc::new(tokio::sync::Notify::new()),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    });
    let (stop, daemon) = start(
        &db,
        vec![
            Arc::new(ApplicationCounter::default()),
            Arc::new(GameConfigs),
            gate.clone(),
        ],
    );
    eventually("all at the head", || async {
        at_head(&db, "game_configs").await && at_head(&db, "gate").await
    })
    .await;
    record_checkpoint_moves(&db).await;

    // The daemon's next group batch stops inside its transaction on the gated event, holding
    // every checkpoint row...
    save_config(&bus, gated, 1).await;
    gate.blocked.notified().await;
    // ...while three batches' worth of events commit behind it...
    for n in 1..=21 {
        save_config(&bus, UserId::new(), n % 10 + 1).await;
    }
    // ...and a rebuild of one projection folds and then waits to swap.
    let rebuilding = rebuild::rebuild(&db.pool, &GameConfigs, 3);
    let meanwhile = async {
        eventually("the swap waits for the daemon's batch", || async {
            count(
                &db,
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await
                >= 1
        })
        .await;
        // The daemon commits its batch; the swap goes in after it, past the events behind
        // it, and the rebuilt projection is now ahead of the rest of the group.
        gate.release.add_permits(1);
    };
    let (rebuilt, ()) = tokio::join!(rebuilding, meanwhile);
    rebuilt.unwrap();
    let total = count(&db, "SELECT count(*) FROM events").await;
    eventually("all at the head again", || async {
        at_head(&db, "game_configs").await
            && at_head(&db, "application_counter").await
            && at_head(&db, "gate").await
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();

    assert_no_checkpoint_moved_back(&db).await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM read_model.applied_events WHERE times <> 1"
        )
        .await,
        0,
        "an event was applied twice"
    );
    assert_eq!(events_applied(&db, "application_counter").await, total);
    assert_eq!(events_applied(&db, "gate").await, total);
    assert_eq!(
        count(&db, "SELECT count(*) FROM read_model.game_configs").await,
        5 + 1 + 21,
        "one row per user"
    );
}

// --- a batch that cannot commit halts, with its reason -----------------------------------------

/// On one user's events, runs a statement that fails and ignores the failure: the transaction
/// is aborted although the projection reports success.
struct Swallower {
    user: String,
}

#[async_trait]
impl Projection for Swallower {
    fn name(&self) -> &'static str {
        "swallower"
    }
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        if batch.iter().any(|e| e.aggregate_id == self.user) {
            let _ignored = sqlx::query("SELECT 1 / 0").execute(&mut *cx.conn).await;
        }
        Ok(())
    }
}

/// On one user's events, writes a row that a deferred foreign key refuses at `COMMIT`.
struct DeferredRefusal {
    user: String,
}

#[async_trait]
impl Projection for DeferredRefusal {
    fn name(&self) -> &'static str {
        "deferred_refusal"
    }
    fn tables(&self) -> &'static [&'static str] {
        &["deferred_children"]
    }
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        if batch.iter().any(|e| e.aggregate_id == self.user) {
            sqlx::query("INSERT INTO deferred_children (parent) VALUES (gen_random_uuid())")
                .execute(&mut *cx.conn)
                .await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_batch_that_cannot_commit_halts_its_projection_with_the_reason_and_the_others_go_on() {
    let db = TestDatabase::new().await;
    sqlx::raw_sql(
        "CREATE TABLE read_model.deferred_parents (id uuid PRIMARY KEY);
         CREATE TABLE read_model.deferred_children (
             parent uuid REFERENCES read_model.deferred_parents DEFERRABLE INITIALLY DEFERRED);",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let bus = bus(&db);
    let (swallowed, refused) = (UserId::new(), UserId::new());
    save_config(&bus, UserId::new(), 1).await;
    save_config(&bus, swallowed, 2).await;
    save_config(&bus, refused, 3).await;
    for n in 4..=20 {
        save_config(&bus, UserId::new(), n % 10 + 1).await;
    }
    let event_of = |user: UserId| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, uuid::Uuid>(
                "SELECT event_id FROM events WHERE aggregate_id = $1",
            )
            .bind(user.to_string())
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (stop, daemon) = start(
        &db,
        vec![
            Arc::new(GameConfigs),
            Arc::new(Swallower {
                user: swallowed.to_string(),
            }),
            Arc::new(DeferredRefusal {
                user: refused.to_string(),
            }),
        ],
    );
    for (name, user, reason) in [
        ("swallower", swallowed, "current transaction is aborted"),
        ("deferred_refusal", refused, "foreign key"),
    ] {
        eventually(&format!("{name} halts"), || async {
            matches!(checkpoint::get(&db.pool, name).await.unwrap(), Some(c) if c.status == Status::Halted)
        })
        .await;
        let halted = checkpoint::get(&db.pool, name).await.unwrap().unwrap();
        assert_eq!(halted.failed_event_id, Some(event_of(user).await), "{name}");
        let failure = halted.failure.unwrap_or_default();
        assert!(failure.contains(reason), "{name}: {failure}");
    }
    eventually("game_configs goes on to the end", || async {
        at_head(&db, "game_configs").await
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap();
}
