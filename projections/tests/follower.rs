//! The followers' leader lock (`follower::LeaderLock`) is given up when its holder dies
//! mid-step: a panic or a cancelled step must not leave the session lock held by an idle
//! pooled connection, or no other replica could ever take over.
//!
//! Each "replica" has its own pool, as separate processes would: a lock left on a pooled
//! connection of one replica is invisible to the other except as "taken".

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use teachin_commands::testing::TestDatabase;
use teachin_projections::follower::{follow, LeaderLock, Pacing};
use teachin_projections::EventLog;
use tokio::sync::watch;

const LOCK: LeaderLock = LeaderLock(0x7465_7374_6c65_6164);

/// Generous: the take-over is expected within a poll interval or two.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

const PACING: Pacing = Pacing {
    min_poll: Duration::from_millis(20),
    max_poll: Duration::from_millis(200),
};

async fn replica_pool(db: &TestDatabase) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&db.url)
        .await
        .expect("connects")
}

/// Runs a follower on `pool` whose step counts the batches it led.
fn healthy_replica(pool: PgPool, stop: watch::Receiver<bool>) -> Arc<AtomicUsize> {
    let led = Arc::new(AtomicUsize::new(0));
    tokio::spawn({
        let led = led.clone();
        async move {
            let log = EventLog::new(pool.clone());
            follow(&log, "replica b", PACING, stop, || {
                let (pool, led) = (pool.clone(), led.clone());
                async move {
                    let conn = pool.acquire().await?;
                    let Some(leader) = LOCK.try_acquire(conn).await? else {
                        return Ok::<_, sqlx::Error>(false);
                    };
                    led.fetch_add(1, Ordering::SeqCst);
                    leader.release().await;
                    Ok(false)
                }
            })
            .await;
        }
    });
    led
}

async fn wait_until_led(led: &AtomicUsize) {
    let deadline = Instant::now() + TAKEOVER_TIMEOUT;
    while led.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the other replica never took the leader lock over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_panics_mid_step_lets_another_replica_take_over() {
    let db = TestDatabase::new().await;
    let (stop_tx, stop) = watch::channel(false);

    // Replica A takes the lock and panics while leading.
    let pool_a = replica_pool(&db).await;
    let (led_tx, mut led_rx) = watch::channel(false);
    let a = tokio::spawn({
        let pool = pool_a.clone();
        let stop = stop.clone();
        async move {
            let log = EventLog::new(pool.clone());
            follow(&log, "replica a", PACING, stop, || {
                let (pool, led_tx) = (pool.clone(), led_tx.clone());
                async move {
                    let conn = pool.acquire().await?;
                    let Some(_leader) = LOCK.try_acquire(conn).await? else {
                        return Ok::<_, sqlx::Error>(false);
                    };
                    let _ = led_tx.send(true);
                    panic!("a bug in the leader's step");
                }
            })
            .await;
        }
    });
    led_rx.wait_for(|led| *led).await.unwrap();
    let ended = a.await.expect_err("replica a's task panicked");
    assert!(ended.is_panic());

    // Replica A's process lives on (its pool is still open); replica B must still lead.
    let led_by_b = healthy_replica(replica_pool(&db).await, stop.clone());
    wait_until_led(&led_by_b).await;
    let _ = stop_tx.send(true);
    drop(pool_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_step_is_cancelled_lets_another_replica_take_over() {
    let db = TestDatabase::new().await;
    let (stop_tx, stop) = watch::channel(false);

    // Replica A's step takes the lock, then hangs until it is cancelled (a timeout, a
    // `select!` on shutdown, an aborted task).
    let pool_a = replica_pool(&db).await;
    let step = async {
        let conn = pool_a.acquire().await.unwrap();
        let leader = LOCK
            .try_acquire(conn)
            .await
            .unwrap()
            .expect("nobody else leads");
        std::future::pending::<()>().await;
        drop(leader);
    };
    assert!(tokio::time::timeout(Duration::from_millis(300), step)
        .await
        .is_err());

    let led_by_b = healthy_replica(replica_pool(&db).await, stop.clone());
    wait_until_led(&led_by_b).await;
    let _ = stop_tx.send(true);
    drop(pool_a);
}

#[tokio::test]
async fn a_leader_that_releases_returns_its_connection_and_the_lock_is_free() {
    let db = TestDatabase::new().await;
    let pool_a = replica_pool(&db).await;
    let pool_b = replica_pool(&db).await;

    let leader = LOCK
        .try_acquire(pool_a.acquire().await.unwrap())
        .await
        .unwrap()
        .expect("nobody else leads");
    assert!(
        LOCK.try_acquire(pool_b.acquire().await.unwrap())
            .await
            .unwrap()
            .is_none(),
        "one leader at a time"
    );
    leader.release().await;
    let leader_b = LOCK
        .try_acquire(pool_b.acquire().await.unwrap())
        .await
        .unwrap()
        .expect("the released lock is free");
    leader_b.release().await;
}
