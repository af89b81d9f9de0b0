//! The log reader must never skip an event committed late by a slow transaction, and never
//! return events out of `(transaction_id, global_position)` order. Synchronisation is by
//! explicit transactions and channels — no sleeps.
//!
//! The settled horizon is cluster-wide: a transaction open in *another* test's database holds
//! this reader back too. So "nothing may be read yet" is asserted exactly, while "everything
//! is read eventually" waits (boundedly) for the horizon to pass.

use futures::future::join_all;
use serde_json::json;
use sqlx::{PgPool, Postgres, Transaction};
use std::collections::HashSet;
use teachin_commands::testing::TestDatabase;
use teachin_projections::{EventLog, LogPosition, LoggedEvent};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Appends one event inside `tx`, with the metadata the command bus writes.
async fn append(tx: &mut Transaction<'_, Postgres>, stream: &str, sequence: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('GapTest', $1, $2, 'Happened', '1.0', $3, $4)",
    )
    .bind(stream)
    .bind(sequence)
    .bind(json!({"Happened": {"n": sequence}}))
    .bind(json!({"command_id": Uuid::new_v4().to_string(), "issued_by": "system"}))
    .execute(&mut **tx)
    .await
    .expect("append");
}

async fn commit_events(pool: PgPool, stream: String, count: i64) {
    let mut tx = pool.begin().await.unwrap();
    for sequence in 1..=count {
        append(&mut tx, &stream, sequence).await;
    }
    tx.commit().await.unwrap();
}

/// Reads everything settled after `checkpoint`, as a subscriber would, advancing it.
async fn drain(log: &EventLog, checkpoint: &mut LogPosition, seen: &mut Vec<LoggedEvent>) {
    loop {
        let batch = log.read_after(*checkpoint, 7).await.unwrap();
        let Some(last) = batch.last() else { return };
        *checkpoint = last.position;
        seen.extend(batch);
    }
}

/// Drains until `expected` events have been seen; other tests' transactions may hold the
/// horizon back for a moment.
async fn drain_until(
    log: &EventLog,
    checkpoint: &mut LogPosition,
    seen: &mut Vec<LoggedEvent>,
    expected: usize,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        drain(log, checkpoint, seen).await;
        if seen.len() >= expected || std::time::Instant::now() > deadline {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn assert_in_log_order_without_duplicates(seen: &[LoggedEvent]) {
    for pair in seen.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "out of order: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
    let ids: HashSet<_> = seen.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), seen.len(), "an event was returned twice");
}

#[tokio::test]
async fn a_transaction_held_open_while_later_ones_commit_is_not_skipped() {
    let db = TestDatabase::new().await;
    let log = EventLog::new(db.pool.clone());

    // The slow writer appends first, so its row gets the lowest global position and the
    // oldest transaction id, then holds its transaction open.
    let mut slow = db.pool.begin().await.unwrap();
    append(&mut slow, "slow", 1).await;

    // Many writers commit after it, concurrently.
    join_all((0..16).map(|i| commit_events(db.pool.clone(), format!("fast-{i}"), 3))).await;

    // A subscriber reads now: nothing after the open transaction may be taken yet, since the
    // checkpoint would move past the slow event before it commits.
    let mut checkpoint = LogPosition::START;
    let mut seen = Vec::new();
    drain(&log, &mut checkpoint, &mut seen).await;
    assert!(
        seen.is_empty(),
        "the reader returned {} events committed after a still-open transaction",
        seen.len()
    );

    slow.commit().await.unwrap();
    drain_until(&log, &mut checkpoint, &mut seen, 1 + 16 * 3).await;

    assert_eq!(seen.len(), 1 + 16 * 3);
    assert_eq!(
        seen[0].aggregate_id, "slow",
        "the slow event comes first in log order"
    );
    assert_in_log_order_without_duplicates(&seen);
}

#[tokio::test]
async fn transactions_committing_in_reverse_order_are_all_read_once_in_log_order() {
    let db = TestDatabase::new().await;
    let log = EventLog::new(db.pool.clone());

    // Eight writers each open a transaction and append, in order; then they commit in
    // reverse, and a subscriber reads between every commit.
    let mut release = Vec::new();
    let mut writers = Vec::new();
    for i in 0..8 {
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            for sequence in 1..=2 {
                append(&mut tx, &format!("writer-{i}"), sequence).await;
            }
            done_tx.send(()).unwrap();
            go_rx.await.unwrap();
            tx.commit().await.unwrap();
        }));
        // Wait until writer i has appended before starting writer i+1, fixing the order of
        // transaction ids and positions.
        done_rx.await.unwrap();
        release.push(go_tx);
    }

    let mut checkpoint = LogPosition::START;
    let mut seen = Vec::new();
    let mut writers = writers.into_iter().rev();
    while let Some(go) = release.pop() {
        go.send(()).unwrap();
        writers.next().unwrap().await.unwrap();
        drain(&log, &mut checkpoint, &mut seen).await;
        // While writer 0 is still open nothing can be read.
        if !release.is_empty() {
            assert!(
                seen.is_empty(),
                "read past a transaction that is still open"
            );
        }
    }
    // A concurrent writer that commits meanwhile lands after all of them.
    commit_events(db.pool.clone(), "late".into(), 1).await;
    drain_until(&log, &mut checkpoint, &mut seen, 8 * 2 + 1).await;

    assert_eq!(seen.len(), 8 * 2 + 1);
    let streams: Vec<_> = seen.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(streams[0], "writer-0");
    assert_eq!(streams[15], "writer-7");
    assert_eq!(streams[16], "late");
    assert_in_log_order_without_duplicates(&seen);
}

#[tokio::test]
async fn reads_one_stream_in_order_and_reports_the_head() {
    let db = TestDatabase::new().await;
    let log = EventLog::new(db.pool.clone());
    assert_eq!(log.head().await.unwrap(), LogPosition::START);

    commit_events(db.pool.clone(), "a".into(), 3).await;
    commit_events(db.pool.clone(), "b".into(), 2).await;

    let a = log.read_stream("GapTest", "a", 1).await.unwrap();
    assert_eq!(a.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![2, 3]);
    let mut all = Vec::new();
    drain_until(&log, &mut LogPosition::START.clone(), &mut all, 5).await;
    assert_eq!(all.len(), 5);
    assert_eq!(log.head().await.unwrap(), all[4].position);
    assert_eq!(all[0].metadata["issued_by"], "system");
}
