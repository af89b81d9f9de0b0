//! `teachin bench projections`: the read side's two figures.
//!
//! **Lag.** Student activity (the `workload` routine, every aggregate) is issued open-loop at a
//! fixed rate through the real command bus, while the projection daemon runs every read model
//! in the same process, on a thread and runtime of its own (as in the accessor's own process).
//! For each appended event, lag = the instant the *last* projection committed a batch
//! containing it − the instant the command that appended it returned
//! (commit acknowledged). Reported as p50 / p90 / p99 / max. Commands the writers could not
//! start on schedule are counted, not hidden.
//!
//! **Rebuild.** On the log the load produced, in rounds of a raw ordered scan of `events`
//! (the gap-safe reader, batches of 5000, whole rows decoded) followed by a full rebuild of
//! every projection (one pass, shadow tables, swap); the medians are reported, with the
//! rebuild's fold over the log alone (without the fixed set-up and swap cost). Pairing the
//! two in rounds keeps a shared machine's drift out of the ratio. All in events per second.

use super::{quantile, BenchDatabase};
use crate::config::Settings;
use clap::Args;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use teachin_commands::workload::{EventKey, StudentActivity};
use teachin_commands::{command_bus, BusSettings, PortSecrets};
use teachin_projections::daemon::{DaemonSettings, ProjectionDaemon};
use teachin_projections::log::{read_after, LogPosition};
use teachin_projections::{read_models, rebuild, Projection};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone, Args)]
pub struct ProjectionBenchArgs {
    /// Commands per second to issue.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long to sustain the rate.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent writers (each owns its own students).
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// A few seconds at a low rate: checks the harness works (CI).
    #[arg(long)]
    pub smoke: bool,
}

impl ProjectionBenchArgs {
    /// The parameters a run actually uses: a smoke run caps rate, duration and writers.
    pub fn effective(mut self) -> Self {
        if self.smoke {
            self.rate = self.rate.min(100);
            self.seconds = self.seconds.min(2);
            self.writers = self.writers.min(8);
        }
        self
    }
}

#[derive(Default)]
struct Visibility {
    committed: Option<Instant>,
    projections_seen: usize,
    last_seen: Option<Instant>,
}

type Tracker = Arc<Mutex<HashMap<EventKey, Visibility>>>;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectionBenchReport {
    pub commands: usize,
    pub missed_schedule: usize,
    pub achieved_rate: f64,
    /// p50, p90, p99, max.
    pub lag_ms: [f64; 4],
    pub lag_samples: usize,
    pub events: usize,
    pub scan_rate: f64,
    pub rebuild_rate: f64,
    /// The fold over the log alone, without the fixed cost of shadow tables and swaps.
    pub fold_rate: f64,
    /// Scan-then-rebuild rounds the three rates are the medians of.
    pub rebuild_rounds: usize,
}

pub async fn run(
    settings: &Settings,
    args: ProjectionBenchArgs,
) -> anyhow::Result<ProjectionBenchReport> {
    let args = args.effective();
    let db = BenchDatabase::create(settings, args.writers as u32 + 24).await?;
    let report = match measure(&db, &args).await {
        Ok(report) => report,
        Err(e) => {
            // The log and the read models are the evidence of what went wrong: keep them.
            let name = db
                .connect_options()
                .get_database()
                .unwrap_or_default()
                .to_string();
            eprintln!(
                "the bench failed; its database {name} is kept for inspection \
                 (DROP DATABASE {name} WITH (FORCE) when done)"
            );
            return Err(e);
        }
    };
    db.drop_database().await?;
    print(&args, &report);
    Ok(report)
}

async fn measure(
    db: &BenchDatabase,
    args: &ProjectionBenchArgs,
) -> anyhow::Result<ProjectionBenchReport> {
    let projections = read_models::all();
    let tracker: Tracker = Arc::new(Mutex::new(HashMap::new()));
    let observer = {
        let tracker = tracker.clone();
        let count = projections.len();
        Arc::new(
            move |_name: &str, batch: &[teachin_projections::LoggedEvent]| {
                let now = Instant::now();
                let mut seen = tracker.lock().expect("tracker lock");
                for event in batch {
                    let key: EventKey = (
                        static_type(&event.aggregate_type),
                        event.aggregate_id.clone(),
                        event.sequence as usize,
                    );
                    let entry = seen.entry(key).or_default();
                    entry.projections_seen += 1;
                    if entry.projections_seen == count {
                        entry.last_seen = Some(now);
                    }
                }
            },
        )
    };
    let (stop, stopped) = watch::channel(false);
    // The daemon gets a thread, runtime and pool of its own, as it has a process of its own in
    // the accessor: sharing the writers' runtime would queue its batches behind 32 writers'
    // tasks and measure the bench's scheduling rather than the projections.
    let daemon = {
        let (options, projections) = (db.connect_options(), projections.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?;
                ProjectionDaemon::new(pool, projections, DaemonSettings::default())
                    .with_observer(observer)
                    .run(stopped)
                    .await;
                Ok(())
            })
        })
    };

    let bus = command_bus(
        db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"bench-lookup-hash-key".to_vec(),
        },
        BusSettings::default(),
    );

    // Open loop: a ticker hands out slots; a writer that is still busy misses its slot.
    let mut senders = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..args.writers {
        let (tx, mut rx) = mpsc::channel::<()>(4);
        senders.push(tx);
        let bus = bus.clone();
        let tracker = tracker.clone();
        writers.push(tokio::spawn(async move {
            let mut students: Vec<StudentActivity> =
                (0..4).map(|_| StudentActivity::new()).collect();
            let mut next = 0;
            let mut done = 0usize;
            while rx.recv().await.is_some() {
                let student = &mut students[next % 4];
                next += 1;
                let keys = student.step(&bus).await.map_err(anyhow::Error::msg)?;
                let now = Instant::now();
                let mut seen = tracker.lock().expect("tracker lock");
                for key in keys {
                    seen.entry(key).or_default().committed = Some(now);
                }
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let total_slots = args.rate as u64 * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    let mut missed = 0usize;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for slot in 0..total_slots {
        ticker.tick().await;
        if senders[slot as usize % senders.len()].try_send(()).is_err() {
            missed += 1;
        }
    }
    drop(senders);
    let mut commands = 0;
    for writer in writers {
        commands += writer.await??;
    }
    let load_elapsed = started.elapsed();

    // Let the projections finish, then collect.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pending = tracker
            .lock()
            .expect("tracker lock")
            .values()
            .filter(|v| v.last_seen.is_none())
            .count();
        if pending == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || daemon.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the projection daemon's thread panicked"))??;
    let mut lags: Vec<f64> = tracker
        .lock()
        .expect("tracker lock")
        .values()
        .filter_map(|v| match (v.committed, v.last_seen) {
            (Some(c), Some(s)) => Some(s.saturating_duration_since(c).as_secs_f64() * 1000.0),
            _ => None,
        })
        .collect();
    lags.sort_by(|a, b| a.total_cmp(b));

    // Rebuild vs raw scan, on the log the load produced: in rounds of one scan then one full
    // rebuild, so a machine that speeds up or slows down during the run (a shared VM does)
    // moves both sides alike; the medians are reported.
    let refs: Vec<&dyn Projection> = projections.iter().map(|p| &**p).collect();
    let (events, _) = scan(db).await?; // warms the cache
    let rounds = rebuild_rounds(args);
    let (mut scans, mut rebuilds, mut folds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (_, scanned) = scan(db).await?;
        scans.push(events as f64 / scanned.as_secs_f64());
        let rebuilt =
            rebuild::rebuild_all(&db.pool, &refs, crate::projection_ops::REBUILD_BATCH).await?;
        rebuilds.push(rebuilt.events as f64 / rebuilt.elapsed.as_secs_f64());
        folds.push(rebuilt.events as f64 / rebuilt.fold.as_secs_f64());
    }

    Ok(ProjectionBenchReport {
        commands,
        missed_schedule: missed,
        achieved_rate: commands as f64 / load_elapsed.as_secs_f64(),
        lag_ms: [
            quantile(&lags, 0.5),
            quantile(&lags, 0.9),
            quantile(&lags, 0.99),
            lags.last().copied().unwrap_or(f64::NAN),
        ],
        lag_samples: lags.len(),
        events,
        scan_rate: median(scans),
        rebuild_rate: median(rebuilds),
        fold_rate: median(folds),
        rebuild_rounds: rounds,
    })
}

/// Scan-then-rebuild rounds: a smoke run only checks that both work.
fn rebuild_rounds(args: &ProjectionBenchArgs) -> usize {
    if args.smoke {
        1
    } else {
        5
    }
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    quantile(&samples, 0.5)
}

/// Reads the whole log in order, whole rows (metadata included), decoding every row.
async fn scan(db: &BenchDatabase) -> anyhow::Result<(usize, Duration)> {
    let started = Instant::now();
    let mut position = LogPosition::START;
    let mut events = 0;
    loop {
        let batch = read_after(&db.pool, position, crate::projection_ops::REBUILD_BATCH).await?;
        let Some(last) = batch.last() else { break };
        position = last.position;
        events += batch.len();
    }
    Ok((events, started.elapsed()))
}

/// The aggregate types as the workload names them (`EventKey` holds `&'static str`).
fn static_type(name: &str) -> &'static str {
    use cqrs_es::Aggregate;
    use teachin_domain::*;
    [
        user::User::TYPE,
        game_config::GameConfiguration::TYPE,
        practice::Exercise::TYPE,
        word_cards::WordCardDeck::TYPE,
        achievements::AchievementProgress::TYPE,
        tutor_session::TutorSession::TYPE,
        teaching::TeacherStudents::TYPE,
        classroom::Classroom::TYPE,
    ]
    .into_iter()
    .find(|t| *t == name)
    .unwrap_or("other")
}

/// How the lag is measured, with this run's parameters (also quoted by `bench system`).
pub fn lag_method(args: &ProjectionBenchArgs) -> String {
    format!(
        "{} writers issue the workload open-loop at {} commands/s for {} s through the command bus; \
         the daemon runs all {} projections; lag per event = last projection's batch commit − command return.",
        args.writers,
        args.rate,
        args.seconds,
        read_models::all().len()
    )
}

/// How the rebuild is compared with its baseline (also quoted by `bench system`).
pub fn rebuild_method(r: &ProjectionBenchReport) -> String {
    format!(
        "the log above ({} events); {} rounds of one raw ordered scan (the gap-safe reader, \
         batches of {}, whole rows decoded) then one full rebuild of every projection (one pass \
         into shadow tables, reading the columns projections use, + swap); medians of each.",
        r.events,
        r.rebuild_rounds,
        crate::projection_ops::REBUILD_BATCH
    )
}

fn print(args: &ProjectionBenchArgs, r: &ProjectionBenchReport) {
    println!(
        "## Projections ({})",
        if args.smoke { "smoke run" } else { "full run" }
    );
    println!();
    println!(
        "Machine: {} cores; PostgreSQL, writers and the projection daemon share it.",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("### Lag: commit to read model visible");
    println!("Method: {}", lag_method(args));
    println!();
    println!("| commands | achieved/s | missed slots | events timed | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        r.commands,
        r.achieved_rate,
        r.missed_schedule,
        r.lag_samples,
        r.lag_ms[0],
        r.lag_ms[1],
        r.lag_ms[2],
        r.lag_ms[3]
    );
    println!();
    println!("### Rebuild of all projections vs raw ordered scan");
    println!("Method: {}", rebuild_method(r));
    println!();
    println!("| raw scan events/s | rebuild events/s | rebuild / scan | fold alone events/s | fold / scan |");
    println!("|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {:.0} % | {:.0} | {:.0} % |",
        r.scan_rate,
        r.rebuild_rate,
        100.0 * r.rebuild_rate / r.scan_rate,
        r.fold_rate,
        100.0 * r.fold_rate / r.scan_rate
    );
    println!();
    println!("`rebuild` includes a fixed cost (creating shadow tables and indexes, the swap) that a small log does not amortize; `fold alone` is the part that grows with the log.");
}
