//! Section 2, the command path: what a portal gets from the write side. GraphQL
//! `addWordCard` mutations over HTTP to the manager process, authenticated with real JWTs,
//! through the command bus and postgres-es into `events`.
//!
//! Two shapes of load, each closed-loop for a fixed time at several concurrencies:
//! **distinct** streams (every client a student of its own, appending to its own deck) and
//! one **shared** stream (every client the same student, so appends contend for one deck and
//! optimistic-concurrency conflicts are retried by the bus). Conflict retries are read from
//! the manager's `teachin_command_conflict_retries_total` before and after each point.
//! Then an **open-loop** point at half the peak distinct throughput: requests start on a
//! fixed schedule whether or not earlier ones finished, and latency counts from the scheduled
//! start, so a stall shows up in p99 instead of slowing the load down.

use super::client::{Manager, Outcome};
use super::cpu::{CpuClock, CpuPerThousand};
use super::population::Member;
use super::Latencies;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const CONFLICT_RETRIES: &str = "teachin_command_conflict_retries_total";
pub const APPENDS: &str = "teachin_command_appends_total";
pub const APPENDED_COMMANDS: &str = "teachin_command_appended_commands_total";

pub(super) const ADD_WORD_CARD: &str = "mutation Add($hebrew: String!, $english: String!) { \
    addWordCard(hebrew: $hebrew, english: $english) { id } }";

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Streams {
    Distinct,
    Shared,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClosedLoopPoint {
    pub streams: Streams,
    pub concurrency: usize,
    pub seconds: f64,
    pub ok: usize,
    /// Ok mutations per second.
    pub throughput: f64,
    pub latency_ms: Latencies,
    /// Failed mutations by `extensions.code`.
    pub errors: BTreeMap<String, usize>,
    /// The counter's increase over the point; `None` when the manager does not export it.
    pub conflict_retries: Option<f64>,
    /// Commands stored per append over the point (how much the bus batched a hot stream);
    /// `None` when the manager does not export the counters.
    pub commands_per_append: Option<f64>,
    /// CPU the manager and PostgreSQL spent per 1,000 ok mutations over the point; `None`
    /// when nothing succeeded or the server's processes cannot be read (a remote server).
    pub cpu_per_1000: Option<CpuPerThousand>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopPoint {
    pub target_rate: f64,
    pub seconds: f64,
    pub scheduled: usize,
    pub ok: usize,
    pub achieved_rate: f64,
    /// From the scheduled start to the response.
    pub latency_ms: Latencies,
    pub errors: BTreeMap<String, usize>,
    pub conflict_retries: Option<f64>,
    pub commands_per_append: Option<f64>,
    pub cpu_per_1000: Option<CpuPerThousand>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandPathFigures {
    pub points: Vec<ClosedLoopPoint>,
    pub peak_distinct_throughput: f64,
    pub half_peak: OpenLoopPoint,
}

pub fn method(concurrencies: &[usize], seconds: u64) -> String {
    format!(
        "GraphQL `addWordCard(hebrew, english)` over HTTP/1.1 to the manager process (bearer JWT \
         minted with the manager's secret; manager pool of {} connections), through the command \
         bus (batched per stream) into `events`. Closed loop, {seconds} s per point, concurrency \
         {concurrencies:?}: distinct = each client its own student (own deck stream), shared = \
         every client the same student (one deck stream); every point starts with students whose \
         decks are empty. Throughput = ok mutations / s; latency \
         = request sent → response read; errors by GraphQL `extensions.code`; conflict retries = \
         increase of `{CONFLICT_RETRIES}` on the manager's /metrics over the point (n/a when not \
         exported); commands per append = the increase of `{APPENDED_COMMANDS}` over that of \
         `{APPENDS}` (1 when every command took a commit of its own); CPU = user + system seconds of the manager process and of every PostgreSQL \
         process (with the exited backends' time the postmaster collected), from /proc/<pid>/stat \
         before and after the point, per 1,000 ok mutations. Then open loop at half the peak \
         distinct throughput for {seconds} s over fresh distinct students, latency from each \
         request's scheduled start.",
        super::deployment::MANAGER_DB_CONNECTIONS
    )
}

/// CPU clocks now; `None` when they cannot be read (the figure is then left out).
fn cpu_now(manager_pid: u32) -> Option<CpuClock> {
    CpuClock::read(manager_pid).ok()
}

fn cpu_between(
    before: Option<CpuClock>,
    commands: usize,
    manager_pid: u32,
) -> Option<CpuPerThousand> {
    CpuPerThousand::between(before?, cpu_now(manager_pid)?, commands)
}

pub async fn run(
    manager: &Manager,
    manager_pid: u32,
    students: &[Member],
    concurrencies: &[usize],
    seconds: u64,
) -> anyhow::Result<CommandPathFigures> {
    let duration = Duration::from_secs(seconds);
    let sequence = Arc::new(AtomicU64::new(0));
    anyhow::ensure!(
        students.len() >= students_needed(concurrencies),
        "the command path needs {} students, {} enrolled",
        students_needed(concurrencies),
        students.len()
    );
    // Every point starts from empty decks: a deck is one aggregate, and one that grew in an
    // earlier point would make a later point measure a bigger load, not the concurrency.
    let mut fresh = students.iter();
    let mut points = Vec::new();
    for streams in [Streams::Distinct, Streams::Shared] {
        for &concurrency in concurrencies {
            let tokens: Vec<String> = match streams {
                Streams::Distinct => fresh
                    .by_ref()
                    .take(concurrency)
                    .map(|s| s.token.clone())
                    .collect(),
                Streams::Shared => {
                    let shared = fresh.next().expect("counted above");
                    vec![shared.token.clone(); concurrency]
                }
            };
            let before = manager.counter(CONFLICT_RETRIES).await?;
            let appends_before = appends(manager).await?;
            let cpu_before = cpu_now(manager_pid);
            let (elapsed, latencies, errors) =
                closed_loop(manager, tokens, duration, &sequence).await?;
            let cpu_per_1000 = cpu_between(cpu_before, latencies.len(), manager_pid);
            let after = manager.counter(CONFLICT_RETRIES).await?;
            let commands_per_append = per_append(appends_before, appends(manager).await?);
            let point = ClosedLoopPoint {
                streams,
                concurrency,
                seconds: elapsed.as_secs_f64(),
                ok: latencies.len(),
                throughput: latencies.len() as f64 / elapsed.as_secs_f64(),
                latency_ms: Latencies::of(latencies),
                errors,
                conflict_retries: increase(before, after),
                commands_per_append,
                cpu_per_1000,
            };
            println!(
                "  command path: {:?} streams, concurrency {}: {:.0} ok/s, p99 {:.1} ms, CPU per 1,000: {}, errors {:?}",
                point.streams,
                point.concurrency,
                point.throughput,
                point.latency_ms.p99,
                cpu_text(point.cpu_per_1000),
                point.errors
            );
            points.push(point);
        }
    }
    let peak_distinct_throughput = points
        .iter()
        .filter(|p| p.streams == Streams::Distinct)
        .map(|p| p.throughput)
        .fold(0.0, f64::max);
    let open_loop_students: Vec<Member> = fresh
        .take(concurrencies.iter().copied().max().unwrap_or(1))
        .cloned()
        .collect();
    let half_peak = open_loop(
        manager,
        manager_pid,
        &open_loop_students,
        peak_distinct_throughput / 2.0,
        duration,
        &sequence,
    )
    .await?;
    println!(
        "  command path: open loop at {:.0}/s: p99 {:.1} ms",
        half_peak.target_rate, half_peak.latency_ms.p99
    );
    Ok(CommandPathFigures {
        points,
        peak_distinct_throughput,
        half_peak,
    })
}

/// Students the section uses: fresh ones for every point and for the open-loop point.
pub fn students_needed(concurrencies: &[usize]) -> usize {
    let distinct: usize = concurrencies.iter().sum();
    let shared = concurrencies.len();
    let open_loop = concurrencies.iter().copied().max().unwrap_or(1);
    distinct + shared + open_loop
}

/// `manager 812 ms, PostgreSQL 1,204 ms`, or `n/a`.
pub fn cpu_text(cpu: Option<CpuPerThousand>) -> String {
    match cpu {
        Some(c) => format!(
            "manager {:.0} ms, PostgreSQL {:.0} ms",
            c.manager_ms, c.postgres_ms
        ),
        None => "n/a".into(),
    }
}

fn increase(before: Option<f64>, after: Option<f64>) -> Option<f64> {
    Some(after? - before?)
}

/// The manager's appends and the commands they stored; `None` when it does not export them.
async fn appends(manager: &Manager) -> anyhow::Result<Option<(f64, f64)>> {
    let appends = manager.counter(APPENDS).await?;
    Ok(appends.zip(manager.counter(APPENDED_COMMANDS).await?))
}

fn per_append(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> Option<f64> {
    let ((appends, commands), (appends_after, commands_after)) = (before?, after?);
    (appends_after > appends).then(|| (commands_after - commands) / (appends_after - appends))
}

/// A fresh word card for a mutation (unique text, so each is a real addition).
fn word_card(sequence: &AtomicU64) -> serde_json::Value {
    let n = sequence.fetch_add(1, Ordering::Relaxed);
    json!({ "hebrew": format!("מילה {n}"), "english": format!("word {n}") })
}

/// Each client sends its next mutation as soon as the last one answered, until the time is
/// up. Returns the elapsed time, the ok latencies (ms) and the failures by code.
async fn closed_loop(
    manager: &Manager,
    tokens: Vec<String>,
    duration: Duration,
    sequence: &Arc<AtomicU64>,
) -> anyhow::Result<(Duration, Vec<f64>, BTreeMap<String, usize>)> {
    let started = Instant::now();
    let deadline = started + duration;
    let mut clients = tokio::task::JoinSet::new();
    for token in tokens {
        let (manager, sequence) = (manager.clone(), sequence.clone());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: BTreeMap<String, usize> = BTreeMap::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                match manager
                    .mutate(&token, ADD_WORD_CARD, word_card(&sequence))
                    .await
                {
                    Outcome::Ok => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Outcome::Failed(code) => *errors.entry(code).or_default() += 1,
                }
            }
            (latencies, errors)
        });
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(result) = clients.join_next().await {
        let (mine, my_errors) = result?;
        latencies.extend(mine);
        for (code, count) in my_errors {
            *errors.entry(code).or_default() += count;
        }
    }
    Ok((started.elapsed(), latencies, errors))
}

/// Requests start every 1/rate s, round-robin over the students, each on its own task.
async fn open_loop(
    manager: &Manager,
    manager_pid: u32,
    students: &[Member],
    rate: f64,
    duration: Duration,
    sequence: &Arc<AtomicU64>,
) -> anyhow::Result<OpenLoopPoint> {
    anyhow::ensure!(
        rate > 0.0,
        "no distinct throughput to take half of (every closed-loop point failed)"
    );
    let before = manager.counter(CONFLICT_RETRIES).await?;
    let appends_before = appends(manager).await?;
    let cpu_before = cpu_now(manager_pid);
    let scheduled = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for slot in 0..scheduled {
        let due = ticker.tick().await;
        let token = students[slot % students.len()].token.clone();
        let (manager, variables) = (manager.clone(), word_card(sequence));
        requests.spawn(async move {
            let outcome = manager.mutate(&token, ADD_WORD_CARD, variables).await;
            (outcome, due.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(result) = requests.join_next().await {
        match result? {
            (Outcome::Ok, latency) => latencies.push(latency),
            (Outcome::Failed(code), _) => *errors.entry(code).or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    let cpu_per_1000 = cpu_between(cpu_before, latencies.len(), manager_pid);
    let after = manager.counter(CONFLICT_RETRIES).await?;
    let commands_per_append = per_append(appends_before, appends(manager).await?);
    Ok(OpenLoopPoint {
        target_rate: rate,
        seconds: elapsed.as_secs_f64(),
        scheduled,
        ok: latencies.len(),
        achieved_rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        latency_ms: Latencies::of(latencies),
        errors,
        conflict_retries: increase(before, after),
        commands_per_append,
        cpu_per_1000,
    })
}
