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

// --- transaction ids are numbers, not text ---------------------------------------------------

/// Appends events whose transaction ids are given (`transaction_id` is only a default, and the
/// reader cannot tell an explicit value from a real one), in the order given: the global
/// positions follow that order. Ids must be below the server's settled horizon.
async fn append_in_transactions(pool: &PgPool, stream: &str, transaction_ids: &[u64]) {
    let sequences: Vec<i64> = (1..=transaction_ids.len() as i64).collect();
    let ids: Vec<String> = transaction_ids.iter().map(u64::to_string).collect();
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, transaction_id)
         SELECT 'GapTest', $1, s, 'Happened', '1.0', jsonb_build_object('n', s), '{}', x::xid8
           FROM UNNEST($2::bigint[], $3::text[]) WITH ORDINALITY AS u(s, x, o) ORDER BY o",
    )
    .bind(stream)
    .bind(&sequences)
    .bind(&ids)
    .execute(pool)
    .await
    .expect("append with explicit transaction ids");
}

/// The server's settled horizon: every id below it can be used for a settled event.
async fn horizon(pool: &PgPool) -> u64 {
    let text: String = sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
        .fetch_one(pool)
        .await
        .unwrap();
    text.parse().unwrap()
}

#[tokio::test]
async fn transaction_10_comes_after_transaction_9_in_reads_and_in_the_head() {
    let db = TestDatabase::new().await;
    let log = EventLog::new(db.pool.clone());
    // As text, "10" < "9": a reader sorting the text would return the second event first.
    append_in_transactions(&db.pool, "digits", &[9, 10]).await;

    let events = log.read_after(LogPosition::START, 10).await.unwrap();
    let order: Vec<u64> = events.iter().map(|e| e.position.transaction_id).collect();
    assert_eq!(order, vec![9, 10], "read in numeric transaction order");
    assert_eq!(log.head().await.unwrap().transaction_id, 10);

    // A batch of one ends at transaction 9, and the next starts after it, not after 10.
    let first = log.read_after(LogPosition::START, 1).await.unwrap();
    assert_eq!(first[0].position.transaction_id, 9);
    let second = log.read_after(first[0].position, 1).await.unwrap();
    assert_eq!(second[0].position.transaction_id, 10);
    assert!(log
        .read_after(second[0].position, 1)
        .await
        .unwrap()
        .is_empty());
}

mod property {
    //! Any transaction ids, of any number of digits, in any order of insertion; any batch
    //! sizes: reading the log batch after batch returns every event exactly once, in
    //! `(transaction id, position)` order.

    use super::*;
    use proptest::prelude::*;

    /// Transaction ids of 1 to `max_digits` digits, weighted towards digit steps
    /// (9/10, 99/100, ...), where text and numeric order part.
    fn transaction_id(max_digits: u32) -> impl Strategy<Value = u64> {
        (1..=max_digits, any::<bool>(), 0u64..1000).prop_map(|(digits, near_step, r)| {
            let low = 10u64.pow(digits - 1);
            let high = 10u64.pow(digits) - 1;
            if near_step {
                // Either side of a step: 9, 10, 11 / 98, 99, 100, ...
                (high - 1 + r % 3).max(1)
            } else {
                low + r % (high - low + 1)
            }
        })
    }

    fn run(cases: Vec<(Vec<u64>, Vec<i64>)>, limit: u64) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let db = TestDatabase::new().await;
            let log = EventLog::new(db.pool.clone());
            for (ids, batches) in cases {
                let ids: Vec<u64> = ids.into_iter().map(|id| id.min(limit)).collect();
                sqlx::query("TRUNCATE events")
                    .execute(&db.pool)
                    .await
                    .unwrap();
                append_in_transactions(&db.pool, "prop", &ids).await;

                let mut expected: Vec<(u64, i64)> = sqlx::query_as::<_, (String, i64)>(
                    "SELECT transaction_id::text, global_position FROM events",
                )
                .fetch_all(&db.pool)
                .await
                .unwrap()
                .into_iter()
                .map(|(tx, pos)| (tx.parse().unwrap(), pos))
                .collect();
                expected.sort();

                let mut seen = Vec::new();
                let mut checkpoint = LogPosition::START;
                for size in batches.iter().cycle() {
                    let batch = log.read_after(checkpoint, *size).await.unwrap();
                    let Some(last) = batch.last() else { break };
                    checkpoint = last.position;
                    seen.extend(
                        batch
                            .iter()
                            .map(|e| (e.position.transaction_id, e.position.global_position)),
                    );
                }
                assert_eq!(seen, expected, "ids {ids:?}, batch sizes {batches:?}");
                let head = log.head().await.unwrap();
                let last = expected.last().unwrap();
                assert_eq!((head.transaction_id, head.global_position), *last);
            }
        });
    }

    #[test]
    fn reading_in_batches_returns_every_event_once_in_numeric_order() {
        // The ids must be settled: below the server's horizon (larger ones are clamped to
        // it). A fresh cluster is past 700, so three digits are always there.
        let limit = {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let db = TestDatabase::new().await;
                horizon(&db.pool).await - 1
            })
        };
        let max_digits = (limit.to_string().len() as u32).clamp(2, 9);
        let strategy = prop::collection::vec(
            (
                prop::collection::vec(transaction_id(max_digits), 1..60),
                prop::collection::vec(1i64..12, 1..5),
            ),
            24,
        );
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 4,
            ..ProptestConfig::default()
        });
        runner
            .run(&strategy, |cases| {
                run(cases, limit);
                Ok(())
            })
            .unwrap();
    }
}
