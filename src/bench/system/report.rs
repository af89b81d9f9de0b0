//! The run's record: `results.json` (every figure, machine-readable) and `results.md` (the
//! same for people), both saying what machine produced them, how each section measured, and
//! which targets were met. A section whose harness failed says so instead of a figure.

use super::baseline::BaselineFigures;
use super::command_path::{CommandPathFigures, Streams};
use super::memory::MemoryFigures;
use super::realtime::RealtimeFigures;
use crate::bench::projections::ProjectionBenchReport;
use crate::config::Settings;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub ram_gib: f64,
    pub kernel: String,
    pub postgresql: String,
    pub redis: String,
    pub rustc: String,
    /// `debug` or `release`: the build of the binary that ran (and of the roles it started).
    pub build: &'static str,
    pub git_commit: String,
    pub date: String,
}

impl Machine {
    pub async fn describe(settings: &Settings, postgresql: String) -> Self {
        Machine {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            ram_gib: proc_field("/proc/meminfo", "MemTotal")
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map(|kib| kib / 1024.0 / 1024.0)
                .unwrap_or(f64::NAN),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|k| k.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            postgresql,
            redis: redis_version(settings)
                .await
                .unwrap_or_else(|e| format!("unknown ({e:#})")),
            rustc: output_of("rustc", &["--version"])
                .unwrap_or_else(|| "unknown (rustc not on PATH)".into()),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            git_commit: git_commit(),
            date: sqlx::types::chrono::Utc::now().to_rfc3339(),
        }
    }
}

/// One section: how it measures, and its figures or why the harness produced none.
#[derive(Debug, Serialize)]
pub struct Section<T> {
    pub method: String,
    pub figures: Option<T>,
    pub error: Option<String>,
}

impl<T> Section<T> {
    pub fn new(method: String) -> Self {
        Section {
            method,
            figures: None,
            error: None,
        }
    }

    pub fn record(&mut self, result: anyhow::Result<T>) {
        match result {
            Ok(figures) => self.figures = Some(figures),
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// Marks a section the run did not finish: it never started, or what it shares with
    /// later sections (the role processes) failed after it.
    pub fn not_reached(&mut self, why: &anyhow::Error) {
        if self.error.is_none() {
            self.error = Some(format!("not finished: {why:#}"));
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub name: String,
    pub target: String,
    pub measured: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub mode: &'static str,
    pub machine: Machine,
    pub baseline: Section<BaselineFigures>,
    pub command_path: Section<CommandPathFigures>,
    pub projections: Section<ProjectionBenchReport>,
    pub realtime: Section<RealtimeFigures>,
    pub memory: Section<MemoryFigures>,
    pub targets: Vec<TargetCheck>,
}

impl Results {
    /// The sections whose harness failed.
    pub fn failed_sections(&self) -> Vec<&'static str> {
        [
            ("baseline", self.baseline.error.is_some()),
            ("command path", self.command_path.error.is_some()),
            ("projections", self.projections.error.is_some()),
            ("realtime", self.realtime.error.is_some()),
            ("memory", self.memory.error.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, failed)| failed.then_some(name))
        .collect()
    }

    /// Checks every target against the figures.
    pub fn check_targets(&mut self) {
        let mut targets = Vec::new();
        // Throughput at concurrency 32 against the baseline: distinct streams, and one stream
        // every client shares (the hot-stream case batching is for).
        for (streams, name, floor) in [
            (
                Streams::Distinct,
                "command path throughput at concurrency 32 (distinct streams)",
                0.5,
            ),
            (
                Streams::Shared,
                "command path throughput at concurrency 32 (one shared stream)",
                0.25,
            ),
        ] {
            let target = format!("≥ {:.0} % of the PostgreSQL baseline", floor * 100.0);
            let point = self.command_path.figures.as_ref().and_then(|c| {
                c.points
                    .iter()
                    .find(|p| p.streams == streams && p.concurrency == 32)
            });
            targets.push(match (point, self.baseline.figures.as_ref()) {
                (Some(point), Some(baseline)) => {
                    let share = point.throughput / baseline.transactions_per_second;
                    TargetCheck {
                        name: name.into(),
                        measured: format!(
                            "{:.0}/s = {:.1} % of {:.0}/s",
                            point.throughput,
                            share * 100.0,
                            baseline.transactions_per_second
                        ),
                        target,
                        met: Some(share >= floor),
                    }
                }
                _ => not_measured(name, &target),
            });
        }
        targets.push(match self.command_path.figures.as_ref() {
            Some(c) if c.half_peak.latency_ms.samples > 0 => TargetCheck {
                name: format!(
                    "command p99 at half peak ({:.0}/s open loop)",
                    c.half_peak.target_rate
                ),
                target: "≤ 25 ms".into(),
                measured: format!("{:.1} ms", c.half_peak.latency_ms.p99),
                met: Some(c.half_peak.latency_ms.p99 <= 25.0),
            },
            _ => not_measured("command p99 at half peak", "≤ 25 ms"),
        });
        match self.projections.figures.as_ref() {
            Some(p) => {
                targets.push(TargetCheck {
                    name: format!("projection lag p99 at {:.0} commands/s", p.achieved_rate),
                    target: "≤ 50 ms".into(),
                    measured: format!("{:.1} ms", p.lag_ms[2]),
                    met: Some(p.lag_ms[2] <= 50.0),
                });
                let share = p.rebuild_rate / p.scan_rate;
                targets.push(TargetCheck {
                    name: "full rebuild vs raw scan".into(),
                    target: "≥ 50 % of the raw scan's events/s".into(),
                    measured: format!(
                        "{:.0} % (fold alone {:.0} %)",
                        share * 100.0,
                        100.0 * p.fold_rate / p.scan_rate
                    ),
                    met: Some(share >= 0.5),
                });
            }
            None => {
                targets.push(not_measured("projection lag p99", "≤ 50 ms"));
                targets.push(not_measured(
                    "full rebuild vs raw scan",
                    "≥ 50 % of the raw scan's events/s",
                ));
            }
        }
        targets.push(match self.realtime.figures.as_ref() {
            Some(r) if r.expected > 0 => {
                // An undelivered push is an infinitely late one: past 1 % missing, p99 is too.
                let missing = (r.expected - r.delivered.min(r.expected)) as f64 / r.expected as f64;
                TargetCheck {
                    name: format!("push latency p99 on {} connections", r.connections_open),
                    target: "≤ 100 ms (commit → delivery)".into(),
                    measured: format!(
                        "{:.1} ms, {}/{} delivered",
                        r.latency_ms.p99, r.delivered, r.expected
                    ),
                    met: Some(missing <= 0.01 && r.latency_ms.p99 <= 100.0),
                }
            }
            _ => not_measured("push latency p99", "≤ 100 ms (commit → delivery)"),
        });
        match self.memory.figures.as_ref() {
            Some(m) => targets.extend(m.roles.iter().map(|role| TargetCheck {
                name: format!("{} idle RSS", role.role),
                target: format!("≤ {:.0} MiB", super::memory::IDLE_TARGET_MIB),
                measured: format!("{:.1} MiB", role.idle_rss_mib),
                met: Some(role.idle_rss_mib <= super::memory::IDLE_TARGET_MIB),
            })),
            None => targets.push(not_measured("idle RSS per role", "≤ 64 MiB")),
        }
        self.targets = targets;
    }
}

fn not_measured(name: &str, target: &str) -> TargetCheck {
    TargetCheck {
        name: name.into(),
        target: target.into(),
        measured: "not measured in this run".into(),
        met: None,
    }
}

/// Writes `results.json` and `results.md` into `dir`.
pub fn write(results: &Results, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(results)? + "\n",
    )?;
    std::fs::write(dir.join("results.md"), markdown(results))?;
    Ok(())
}

pub fn markdown(r: &Results) -> String {
    let mut md = String::new();
    let m = &r.machine;
    let _ = writeln!(md, "# Teachin system benchmark ({} run)\n", r.mode);
    let _ = writeln!(
        md,
        "Produced by `teachin bench system`{}. All figures from one run on one machine; the \
         bench, PostgreSQL, Redis and the three roles share it.\n",
        if r.mode == "smoke" {
            " --smoke (a harness check: seconds per point, few connections — not figures to quote)"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    let _ = writeln!(md, "| cores | {} ({}) |", m.cores, m.cpu);
    let _ = writeln!(md, "| RAM | {:.1} GiB |", m.ram_gib);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| PostgreSQL | {} |", m.postgresql);
    let _ = writeln!(md, "| Redis | {} |", m.redis);
    let _ = writeln!(md, "| rustc | {} |", m.rustc);
    let _ = writeln!(md, "| build | {} |", m.build);
    let _ = writeln!(md, "| git commit | {} |", m.git_commit);
    let _ = writeln!(md, "| date | {} |\n", m.date);

    let _ = writeln!(
        md,
        "## Targets\n\n| figure | target | measured | met |\n|---|---|---|---|"
    );
    for t in &r.targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(md, "| {} | {} | {} | {met} |", t.name, t.target, t.measured);
    }
    md.push('\n');

    section(
        &mut md,
        "1. Baseline: PostgreSQL inserts",
        &r.baseline,
        |md, b| {
            let _ = writeln!(
            md,
            "| tool | clients | seconds | transactions | failed | tps | latency avg ms |\n|---|---|---|---|---|---|---|"
        );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.0} | {:.2} |",
                b.tool,
                b.clients,
                b.seconds,
                b.transactions,
                b.failed_transactions,
                b.transactions_per_second,
                b.latency_average_ms
            );
        },
    );

    section(
        &mut md,
        "2. Command path: GraphQL mutations",
        &r.command_path,
        |md, c| {
            let _ = writeln!(
            md,
            "| streams | concurrency | ok | ok/s | p50 ms | p95 ms | p99 ms | max ms | errors | conflict retries | commands per append | CPU per 1,000 |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
            for p in &c.points {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    match p.streams {
                        Streams::Distinct => "distinct",
                        Streams::Shared => "shared",
                    },
                    p.concurrency,
                    p.ok,
                    p.throughput,
                    ms(p.latency_ms.p50),
                    ms(p.latency_ms.p95),
                    ms(p.latency_ms.p99),
                    ms(p.latency_ms.max),
                    errors(&p.errors),
                    retries(p.conflict_retries),
                    per_append(p.commands_per_append),
                    super::command_path::cpu_text(p.cpu_per_1000)
                );
            }
            let h = &c.half_peak;
            let _ = writeln!(
            md,
            "\nOpen loop at half the peak distinct throughput ({:.0}/s → {:.0}/s):\n\n\
             | scheduled | ok | achieved/s | p50 ms | p95 ms | p99 ms | max ms | errors | conflict retries | commands per append | CPU per 1,000 |\n|---|---|---|---|---|---|---|---|---|---|---|",
            c.peak_distinct_throughput, h.target_rate
        );
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                h.scheduled,
                h.ok,
                h.achieved_rate,
                ms(h.latency_ms.p50),
                ms(h.latency_ms.p95),
                ms(h.latency_ms.p99),
                ms(h.latency_ms.max),
                errors(&h.errors),
                retries(h.conflict_retries),
                per_append(h.commands_per_append),
                super::command_path::cpu_text(h.cpu_per_1000)
            );
        },
    );

    section(
        &mut md,
        "3–4. Projection lag and rebuild",
        &r.projections,
        |md, p| {
            let _ = writeln!(
                md,
                "| commands | achieved/s | missed slots | events timed | lag p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|"
            );
            let _ = writeln!(
                md,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                p.commands,
                p.achieved_rate,
                p.missed_schedule,
                p.lag_samples,
                ms(p.lag_ms[0]),
                ms(p.lag_ms[1]),
                ms(p.lag_ms[2]),
                ms(p.lag_ms[3])
            );
            let _ = writeln!(
                md,
                "\n| events | raw scan events/s | rebuild events/s | rebuild / scan | fold alone events/s | fold / scan |\n|---|---|---|---|---|---|"
            );
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.0} % | {:.0} | {:.0} % |",
                p.events,
                p.scan_rate,
                p.rebuild_rate,
                100.0 * p.rebuild_rate / p.scan_rate,
                p.fold_rate,
                100.0 * p.fold_rate / p.scan_rate
            );
            let _ = writeln!(
                md,
                "\n`rebuild` includes a fixed cost (shadow tables, indexes, the swap) that a small log does not amortize; `fold alone` is the part that grows with the log."
            );
        },
    );

    section(
        &mut md,
        "5. Realtime: SignalR push latency",
        &r.realtime,
        |md, t| {
            let _ = writeln!(
            md,
            "| connections open | connect s | assignments ok | errors | delivered/expected | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|---|---|"
        );
            let _ = writeln!(
                md,
                "| {}/{} | {:.1} | {} | {} | {}/{} | {} | {} | {} | {} |",
                t.connections_open,
                t.connections_requested,
                t.connect_seconds,
                t.assignments_ok,
                errors(&t.assignment_errors),
                t.delivered,
                t.expected,
                ms(t.latency_ms.p50),
                ms(t.latency_ms.p95),
                ms(t.latency_ms.p99),
                ms(t.latency_ms.max)
            );
            if !t.connect_failures.is_empty() {
                let _ = writeln!(
                    md,
                    "\nConnections that did not open: {}",
                    errors(&t.connect_failures)
                );
            }
        },
    );

    section(&mut md, "6. Memory per role", &r.memory, |md, m| {
        let _ = writeln!(
            md,
            "| role | idle VmRSS MiB | peak VmHWM MiB |\n|---|---|---|"
        );
        for role in &m.roles {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} |",
                role.role,
                role.idle_rss_mib,
                role.peak_hwm_mib
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_else(|| "not reached".into())
            );
        }
    });
    md
}

fn section<T>(md: &mut String, title: &str, s: &Section<T>, figures: impl FnOnce(&mut String, &T)) {
    let _ = writeln!(md, "## {title}\n\nMethod: {}\n", s.method);
    match (&s.figures, &s.error) {
        (Some(f), error) => {
            figures(md, f);
            if let Some(error) = error {
                let _ = writeln!(md, "\nThen the harness failed: {error}");
            }
        }
        (None, Some(error)) => {
            let _ = writeln!(md, "**Harness failed:** {error}");
        }
        (None, None) => {
            let _ = writeln!(md, "Not run.");
        }
    }
    md.push('\n');
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "n/a".into()
    } else {
        format!("{value:.1}")
    }
}

fn errors(by_code: &std::collections::BTreeMap<String, usize>) -> String {
    if by_code.is_empty() {
        return "none".into();
    }
    by_code
        .iter()
        .map(|(code, n)| format!("{code} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn per_append(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.1}"))
        .unwrap_or_else(|| "n/a".into())
}

fn retries(value: Option<f64>) -> String {
    value
        .map(|v| format!("{v:.0}"))
        .unwrap_or_else(|| "n/a".into())
}

/// A `Field : value` line of a /proc text file.
fn proc_field(path: &str, field: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == field).then(|| value.trim().to_string())
        })
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The checked-out commit, marked `-dirty` with uncommitted changes.
fn git_commit() -> String {
    match output_of("git", &["rev-parse", "HEAD"]) {
        Some(commit) => {
            let dirty = output_of("git", &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("{commit}{}", if dirty { "-dirty" } else { "" })
        }
        None => "unknown (not run from a git checkout)".into(),
    }
}

async fn redis_version(settings: &Settings) -> anyhow::Result<String> {
    use fred::prelude::ClientLike;
    let client = crate::roles::redis(settings).await?;
    let info: String = client.info(Some(fred::types::InfoKind::Server)).await?;
    let _ = client.quit().await;
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow::anyhow!("INFO server has no redis_version"))
}
