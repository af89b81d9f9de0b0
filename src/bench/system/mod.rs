//! `teachin bench system`: the whole system on this machine, each figure beside its baseline
//! and its target, in one run against fresh databases — so the lead can tell from one file
//! whether the design meets its numbers, and why not where it does not.
//!
//! Order of a run: (1) the PostgreSQL insert baseline, in a database of its own; then the
//! three roles start as separate processes on another fresh database, (6) their idle memory
//! is read, users are enrolled, (2) the command path and (5) realtime pushes are driven over
//! HTTP and SignalR, and (6) the roles' peak memory is read before they stop; finally (3–4)
//! projection lag and rebuild run in-process as `teachin bench projections` does. Results go
//! to `results.md` and `results.json`.
//!
//! - `baseline` — pgbench (or an sqlx pool) inserting single events.
//! - `deployment` — the role processes, their ports and secrets.
//! - `population` — admin, teachers and students through the command bus, with tokens.
//! - `client` — GraphQL over HTTP and `/metrics`, as a portal sees the manager.
//! - `command_path` — closed- and open-loop mutations.
//! - `signalr` + `realtime` — hub connections and push latency.
//! - `memory` — VmRSS / VmHWM per role.
//! - `report` — the machine, the targets, markdown and JSON.

mod baseline;
mod client;
mod command_path;
mod cpu;
mod deployment;
mod memory;
mod population;
mod realtime;
mod report;
mod signalr;
mod stages;

use super::projections::{self, ProjectionBenchArgs};
use super::{quantile, BenchDatabase};
use crate::config::Settings;
use anyhow::{bail, Context};
use clap::Args;
use report::{Results, Section};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct SystemBenchArgs {
    /// A harness check: a few seconds per section, few connections, concurrency 1 and 8
    /// only; results go to a temporary directory unless --out is given.
    #[arg(long)]
    pub smoke: bool,
    /// Seconds per measured point (baseline, each concurrency, the open-loop point, the
    /// projection load).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// SignalR connections held open in the realtime section (one student each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Where to write results.md and results.json [default: bench/].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Only the stage profile: a manager in this process, mutations one at a time, µs per
    /// span (see `stages`); printed, nothing written.
    #[arg(long)]
    pub stages: bool,
    /// Mutations the stage profile measures.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub stage_commands: u64,
    /// Start the roles from this binary instead of this one (another build, to compare
    /// its CPU per 1,000 commands with this run's on the same machine).
    #[arg(long, value_name = "PATH")]
    pub manager_binary: Option<PathBuf>,
    /// A setting for the roles (and the profiled manager) on top of the run's own, e.g.
    /// `TEACHIN_AGGREGATE_CACHE_MIB=0`; repeatable.
    #[arg(long = "role-env", value_name = "NAME=VALUE", value_parser = name_value)]
    pub role_env: Vec<(String, String)>,
    /// Only the baseline and the command path (no realtime, no projections; memory idle
    /// and peak still read).
    #[arg(long)]
    pub command_path_only: bool,
}

fn name_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .ok_or_else(|| format!("`{raw}` is not NAME=VALUE"))
}

/// Concurrencies of the closed-loop command path.
const CONCURRENCIES: [usize; 4] = [1, 8, 32, 64];
const SMOKE_CONCURRENCIES: [usize; 2] = [1, 8];
const SMOKE_MAX_SECONDS: u64 = 2;
const SMOKE_MAX_CONNECTIONS: usize = 20;
/// Assignments per second in the realtime section.
const PUSH_RATE: u32 = 100;
/// How often one teacher's stream receives an assignment in the realtime section: rarely
/// enough that assignments never race on a stream (the section measures pushes, not
/// contention — the shared-stream command path does that).
const TEACHER_STREAM_INTERVAL_SECONDS: u32 = 2;
/// The projection section's load, as `teachin bench projections` defaults to.
const PROJECTION_RATE: u32 = 1000;
const PROJECTION_WRITERS: usize = 32;
/// How long the roles sit idle before their memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);

/// What this run will do, after `--smoke` caps.
struct Plan {
    smoke: bool,
    manager_binary: Option<PathBuf>,
    role_env: Vec<(String, String)>,
    command_path_only: bool,
    seconds: u64,
    connections: usize,
    concurrencies: Vec<usize>,
    out: PathBuf,
}

impl Plan {
    fn new(args: SystemBenchArgs) -> Self {
        let connections = usize::try_from(args.connections).unwrap_or(usize::MAX);
        if args.smoke {
            Plan {
                smoke: true,
                manager_binary: args.manager_binary,
                role_env: args.role_env,
                command_path_only: args.command_path_only,
                seconds: args.seconds.min(SMOKE_MAX_SECONDS),
                connections: connections.min(SMOKE_MAX_CONNECTIONS),
                concurrencies: SMOKE_CONCURRENCIES.to_vec(),
                out: args.out.unwrap_or_else(|| {
                    std::env::temp_dir().join(format!(
                        "teachin-bench-smoke-{}",
                        uuid::Uuid::new_v4().simple()
                    ))
                }),
            }
        } else {
            Plan {
                smoke: false,
                manager_binary: args.manager_binary,
                role_env: args.role_env,
                command_path_only: args.command_path_only,
                seconds: args.seconds,
                connections,
                concurrencies: CONCURRENCIES.to_vec(),
                out: args.out.unwrap_or_else(|| PathBuf::from("bench")),
            }
        }
    }

    fn students(&self) -> usize {
        self.connections
            .max(command_path::students_needed(&self.concurrencies))
    }

    fn teachers(&self) -> usize {
        let round_robin = (PUSH_RATE * TEACHER_STREAM_INTERVAL_SECONDS) as usize;
        round_robin.min(self.connections).max(1)
    }

    fn projection_args(&self) -> ProjectionBenchArgs {
        ProjectionBenchArgs {
            rate: PROJECTION_RATE,
            seconds: self.seconds,
            writers: PROJECTION_WRITERS,
            smoke: self.smoke,
        }
        .effective()
    }
}

/// p50 / p95 / p99 / max of a set of samples, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latencies {
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(|a, b| a.total_cmp(b));
        Latencies {
            samples: samples.len(),
            p50: quantile(&samples, 0.5),
            p95: quantile(&samples, 0.95),
            p99: quantile(&samples, 0.99),
            max: samples.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Runs every section, writes the results, and fails if any section's harness failed
/// (missed targets are results, not failures).
pub async fn run(settings: &Settings, args: SystemBenchArgs) -> anyhow::Result<()> {
    if args.stages {
        println!(
            "teachin bench system --stages: {} mutations, one at a time…",
            args.stage_commands
        );
        let profile = stages::run(settings, args.stage_commands as usize, &args.role_env).await?;
        println!("\n{}", profile.markdown());
        return Ok(());
    }
    let plan = Plan::new(args);
    let mode = match (plan.smoke, plan.command_path_only) {
        (true, _) => "smoke",
        (false, true) => "command path only",
        (false, false) => "full",
    };
    println!(
        "teachin bench system ({mode} run): {} s per point, {} connections, concurrency {:?}",
        plan.seconds, plan.connections, plan.concurrencies
    );
    allow_open_files(plan.connections)?;

    println!("1. baseline: PostgreSQL single-event inserts…");
    let mut baseline = Section::new(baseline::method(plan.seconds));
    baseline.record(baseline::run(settings, plan.seconds).await);

    let mut command_path = Section::new(command_path::method(&plan.concurrencies, plan.seconds));
    let mut realtime = Section::new(realtime::method(
        plan.connections,
        PUSH_RATE,
        plan.teachers(),
    ));
    let mut memory = Section::new(memory::method(IDLE_SETTLE.as_secs()));
    let mut postgresql = String::from("unknown");
    if let Err(e) = under_load(
        settings,
        &plan,
        &mut postgresql,
        &mut command_path,
        &mut realtime,
        &mut memory,
    )
    .await
    {
        command_path.not_reached(&e);
        realtime.not_reached(&e);
        memory.not_reached(&e);
    }

    let projection_args = plan.projection_args();
    let mut projections = Section::new(format!(
        "as `teachin bench projections`. Lag: {}",
        projections::lag_method(&projection_args)
    ));
    if !plan.command_path_only {
        println!("3–4. projections: lag under load, rebuild vs raw scan…");
        let projection_report = projections::run(settings, projection_args).await;
        if let Ok(report) = &projection_report {
            projections.method = format!(
                "{} Rebuild: {}",
                projections.method,
                projections::rebuild_method(report)
            );
        }
        projections.record(projection_report);
    }

    let mut results = Results {
        mode,
        machine: report::Machine::describe(settings, postgresql).await,
        baseline,
        command_path,
        projections,
        realtime,
        memory,
        targets: Vec::new(),
    };
    results.check_targets();
    report::write(&results, &plan.out)
        .with_context(|| format!("writing the results to {}", plan.out.display()))?;
    println!("\n{}", report::markdown(&results));
    println!(
        "results: {} and {}",
        plan.out.join("results.md").display(),
        plan.out.join("results.json").display()
    );
    let failed = results.failed_sections();
    if !failed.is_empty() {
        bail!("the harness failed in: {}", failed.join(", "));
    }
    Ok(())
}

/// Sections 2, 5 and 6: the three roles as processes on a fresh database, under load.
async fn under_load(
    settings: &Settings,
    plan: &Plan,
    postgresql: &mut String,
    command_path: &mut Section<command_path::CommandPathFigures>,
    realtime: &mut Section<realtime::RealtimeFigures>,
    memory: &mut Section<memory::MemoryFigures>,
) -> anyhow::Result<()> {
    let db = BenchDatabase::create(settings, 8).await?;
    *postgresql = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&db.pool)
        .await?;
    let result = async {
        println!("starting manager, accessor and engine…");
        let mut deployment = deployment::Deployment::start(
            settings,
            &db.url(),
            plan.manager_binary.as_deref(),
            &plan.role_env,
        )
        .await?;
        tokio::time::sleep(IDLE_SETTLE).await;
        memory.record(memory::idle(&deployment));

        println!(
            "enrolling 1 admin, {} teachers, {} students…",
            plan.teachers(),
            plan.students()
        );
        let population = population::enroll(
            &db.pool,
            &deployment.secrets,
            plan.students(),
            plan.teachers(),
        )
        .await?;
        println!("  enrolled in {:.1} s", population.elapsed.as_secs_f64());
        let manager = client::Manager::new(deployment.manager().base())?;

        println!("2. command path…");
        command_path.record(
            command_path::run(
                &manager,
                deployment.manager().pid(),
                &population.students,
                &plan.concurrencies,
                plan.seconds,
            )
            .await,
        );
        deployment.check_alive()?;

        if !plan.command_path_only {
            println!("5. realtime: {} SignalR connections…", plan.connections);
            realtime
                .record(realtime::run(&manager, &population, plan.connections, PUSH_RATE).await);
            deployment.check_alive()?;
        }

        if let Some(figures) = memory.figures.as_mut() {
            memory::record_peak(figures, &deployment)?;
        }
        deployment.stop();
        anyhow::Ok(())
    }
    .await;
    db.drop_database().await?;
    result
}

/// Every SignalR connection is a socket here and one in the manager (which inherits this
/// process's limit): raise the soft open-file limit towards the hard one if it is short.
fn allow_open_files(connections: usize) -> anyhow::Result<()> {
    let needed = connections as u64 + 1024;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("cannot read the open-file limit");
    }
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    if limit.rlim_max < needed {
        bail!(
            "{connections} connections need about {needed} open files; the hard limit is {} \
             (raise it, e.g. `ulimit -Hn {needed}` as root, or use fewer --connections)",
            limit.rlim_max
        );
    }
    limit.rlim_cur = needed;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("cannot raise the open-file limit to {needed}");
    }
    Ok(())
}
