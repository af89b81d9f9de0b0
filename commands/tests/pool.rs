//! The pool's defence against sqlx 0.8's cancelled-`BEGIN` bug (`teachin_commands::pool`):
//! a connection that comes back inside a transaction is closed, never handed out again, and
//! healthy connections are still reused.
//!
//! Each pool has one connection, so the next `acquire` gets the released one if it was kept.

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use std::time::Duration;
use teachin_commands::testing::TestDatabase;

async fn one_connection_pool(db: &TestDatabase) -> PgPool {
    teachin_commands::pool::options()
        .max_connections(1)
        .connect(&db.url)
        .await
        .expect("connects")
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Asked with the simple protocol, as the pool's check does: inside a block, the
/// transaction began with an earlier statement.
async fn in_transaction(conn: &mut PgConnection) -> bool {
    let row = sqlx::raw_sql("SELECT transaction_timestamp() <> statement_timestamp()")
        .fetch_one(conn)
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn a_connection_returned_inside_a_transaction_is_not_handed_out_again() {
    let db = TestDatabase::new().await;
    let pool = one_connection_pool(&db).await;

    let mut conn = pool.acquire().await.unwrap();
    let first = backend_pid(&mut conn).await;
    // What a cancelled `begin()` leaves: the server in a transaction sqlx does not know of.
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
    assert!(in_transaction(&mut conn).await);
    drop(conn);

    let mut next = tokio::time::timeout(Duration::from_secs(30), pool.acquire())
        .await
        .expect("the pool replaces the closed connection")
        .unwrap();
    assert!(
        !in_transaction(&mut next).await,
        "no connection is handed out inside a transaction"
    );
    assert_ne!(
        backend_pid(&mut next).await,
        first,
        "the connection was closed"
    );
}

#[tokio::test]
async fn healthy_connections_are_reused() {
    let db = TestDatabase::new().await;
    let pool = one_connection_pool(&db).await;

    let mut conn = pool.acquire().await.unwrap();
    let first = backend_pid(&mut conn).await;
    drop(conn);
    // A committed and a dropped (rolled back) transaction leave the connection usable.
    pool.begin().await.unwrap().commit().await.unwrap();
    let tx = pool.begin().await.unwrap();
    drop(tx);
    let mut conn = pool.acquire().await.unwrap();
    assert!(!in_transaction(&mut conn).await);
    assert_eq!(
        backend_pid(&mut conn).await,
        first,
        "the connection was kept"
    );
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn cancelled_begins_never_leave_a_pooled_connection_in_a_transaction() {
    let db = TestDatabase::new().await;
    let pool = one_connection_pool(&db).await;
    let mut cancelled = 0;
    for round in 0..300u64 {
        // Timeouts around the length of a BEGIN round trip, so some land inside it.
        let deadline = Duration::from_micros(round % 150);
        match tokio::time::timeout(deadline, pool.begin()).await {
            Ok(tx) => drop(tx.unwrap()),
            Err(_) => cancelled += 1,
        }
        let mut conn = tokio::time::timeout(Duration::from_secs(30), pool.acquire())
            .await
            .expect("a connection")
            .unwrap();
        assert!(
            !in_transaction(&mut conn).await,
            "round {round}: a connection was handed out inside a transaction"
        );
    }
    assert!(cancelled > 0, "some BEGINs were cancelled");
}

/// The control: sqlx 0.8's own pool keeps the connection and hands it out mid-transaction.
/// When this fails, sqlx no longer does (sqlx PR 4394), and `pool`'s check could go.
#[tokio::test]
async fn without_the_check_sqlx_hands_the_connection_out_inside_the_transaction() {
    let db = TestDatabase::new().await;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.unwrap();
    drop(conn);
    let mut next = pool.acquire().await.unwrap();
    assert!(in_transaction(&mut next).await);
}
