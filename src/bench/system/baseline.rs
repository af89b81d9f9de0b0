//! Section 1, the baseline: how many single-event transactions per second PostgreSQL itself
//! accepts into the migrated `events` table on this machine, at the concurrency the command
//! path is judged at. The command path can never beat it; the target is a share of it.
//!
//! Each transaction inserts one event into a stream of its own (a fresh UUID as
//! `aggregate_id`, sequence 1), naming the columns postgres-es names, with metadata carrying a
//! `command_id` so the same triggers fire as for a real command (the receipt row, NOTIFY).
//! `pgbench` runs the script when it is installed; otherwise the same statement runs over an
//! sqlx pool of the same size. It runs in a database of its own, so its rows never reach the
//! projections of the system under test.

use super::super::BenchDatabase;
use crate::config::Settings;
use anyhow::{bail, Context};
use serde::Serialize;
use std::process::Command;
use std::time::{Duration, Instant};

/// Concurrent clients (and the pool size of the fallback).
pub const CLIENTS: u32 = 32;

const INSERT_EVENT: &str = "INSERT INTO events \
    (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
    VALUES ('BenchStream', gen_random_uuid()::text, 1, 'BenchEventRecorded', '1.0', \
    jsonb_build_object('note', repeat('x', 200)), \
    jsonb_build_object('command_id', gen_random_uuid()::text))";

#[derive(Debug, Clone, Serialize)]
pub struct BaselineFigures {
    /// `pgbench <version>` or `sqlx pool`.
    pub tool: String,
    pub clients: u32,
    pub seconds: u64,
    pub transactions: u64,
    pub failed_transactions: u64,
    pub transactions_per_second: f64,
    pub latency_average_ms: f64,
}

pub fn method(seconds: u64) -> String {
    format!(
        "{CLIENTS} clients for {seconds} s, each transaction one INSERT of one event (new stream, \
         ~250-byte jsonb payload, metadata with a command_id so the receipt and NOTIFY triggers \
         fire) into the migrated `events` table of a fresh database: `pgbench -n -f script -c \
         {CLIENTS} -j 2 -T {seconds}` when pgbench is installed, else the same SQL over an sqlx \
         pool of {CLIENTS}. Statement: `{INSERT_EVENT}`"
    )
}

pub async fn run(settings: &Settings, seconds: u64) -> anyhow::Result<BaselineFigures> {
    let db = BenchDatabase::create(settings, CLIENTS).await?;
    let result = match pgbench_version() {
        Some(version) => {
            let url = db.libpq_url();
            tokio::task::spawn_blocking(move || pgbench(&url, &version, seconds)).await?
        }
        None => over_pool(&db, seconds).await,
    };
    db.drop_database().await?;
    result
}

fn pgbench_version() -> Option<String> {
    let output = Command::new("pgbench").arg("--version").output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn pgbench(url: &str, version: &str, seconds: u64) -> anyhow::Result<BaselineFigures> {
    let script = std::env::temp_dir().join(format!(
        "teachin-bench-insert-{}.sql",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&script, format!("{INSERT_EVENT};\n"))?;
    let output = Command::new("pgbench")
        .arg("-n")
        .arg("-f")
        .arg(&script)
        .args([
            "-c",
            &CLIENTS.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg(url)
        .output()
        .context("running pgbench");
    let _ = std::fs::remove_file(&script);
    let output = output?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed ({}): {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |label: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .with_context(|| format!("pgbench printed no `{label}`:\n{text}"))
    };
    Ok(BaselineFigures {
        tool: version.to_string(),
        clients: CLIENTS,
        seconds,
        transactions: field("number of transactions actually processed:")? as u64,
        failed_transactions: field("number of failed transactions:").unwrap_or(0.0) as u64,
        transactions_per_second: field("tps =")?,
        latency_average_ms: field("latency average =")?,
    })
}

/// The same statement without pgbench: `CLIENTS` tasks in a closed loop over a pool of as
/// many connections.
async fn over_pool(db: &BenchDatabase, seconds: u64) -> anyhow::Result<BaselineFigures> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let pool = db.pool.clone();
        clients.spawn(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            while Instant::now() < deadline {
                match sqlx::query(INSERT_EVENT).execute(&pool).await {
                    Ok(_) => done += 1,
                    Err(_) => failed += 1,
                }
            }
            (done, failed)
        });
    }
    let (mut transactions, mut failed_transactions) = (0, 0);
    while let Some(result) = clients.join_next().await {
        let (done, failed) = result?;
        transactions += done;
        failed_transactions += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(BaselineFigures {
        tool: "sqlx pool (pgbench not installed)".into(),
        clients: CLIENTS,
        seconds,
        transactions,
        failed_transactions,
        transactions_per_second: transactions as f64 / elapsed,
        latency_average_ms: elapsed * 1000.0 * f64::from(CLIENTS) / transactions.max(1) as f64,
    })
}
