//! `kill -9` of the accessor at arbitrary moments, then a restart, ends in exactly the read
//! model that a fresh rebuild produces: no event lost, none applied twice.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, read_models_caught_up, teachin, verify_all};
use teachin_commands::testing::TestDatabase;
use teachin_commands::workload::StudentActivity;
use teachin_commands::{command_bus, BusSettings, PortSecrets};

mod support;

fn start_accessor(db: &TestDatabase) -> Child {
    let mut command = teachin(db);
    command
        .arg("accessor")
        .env("TEACHIN_ACCESSOR_PORT", free_port().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command.spawn().expect("the accessor starts")
}

async fn events_applied(db: &TestDatabase) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(events_applied), 0)::bigint FROM projection_checkpoints",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or(0)
}

/// Every read-model table, each row as text, sorted: equal dumps mean equal read models.
async fn dump_read_model(db: &TestDatabase) -> Vec<(String, Vec<String>)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'read_model' ORDER BY tablename",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut dump = Vec::new();
    for table in tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM read_model.{table} t ORDER BY 1"
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap();
        dump.push((table, rows));
    }
    dump
}

#[tokio::test]
async fn kill_9_at_any_moment_then_restart_equals_a_fresh_rebuild() {
    let db = TestDatabase::new().await;
    let bus = command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"crash-test-lookup-key".to_vec(),
        },
        BusSettings::default(),
    );

    // Students keep working while the accessor is killed and restarted under them.
    let workload = tokio::spawn({
        let bus = bus.clone();
        async move {
            let mut students: Vec<StudentActivity> =
                (0..6).map(|_| StudentActivity::new()).collect();
            for _ in 0..40 {
                for student in students.iter_mut() {
                    student.step(&bus).await.expect("workload command");
                }
            }
        }
    });

    let mut accessor = start_accessor(&db);
    for _ in 0..4 {
        // Let it make some progress, then kill it without warning.
        let before = events_applied(&db).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while events_applied(&db).await <= before && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        accessor.kill().unwrap(); // SIGKILL
        accessor.wait().unwrap();
        accessor = start_accessor(&db);
    }
    workload.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    while !read_models_caught_up(&db.pool).await {
        assert!(
            Instant::now() < deadline,
            "the restarted accessor never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The operator's proof, on the running accessor: every read model is the fold of the log.
    verify_all(&db);
    accessor.kill().unwrap();
    accessor.wait().unwrap();
    let recovered = dump_read_model(&db).await;
    assert!(recovered
        .iter()
        .any(|(t, rows)| t == "attempts" && !rows.is_empty()));

    let output = teachin(&db)
        .args(["projections", "rebuild", "all"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rebuilt = dump_read_model(&db).await;
    for ((table, after_crashes), (_, after_rebuild)) in recovered.iter().zip(&rebuilt) {
        assert_eq!(
            after_crashes, after_rebuild,
            "read_model.{table} after kill -9 and restart differs from a fresh rebuild"
        );
    }
    assert_eq!(recovered.len(), rebuilt.len());
    verify_all(&db);
}
