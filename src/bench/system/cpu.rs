//! CPU time, the figure a shared machine moves least: throughput swings with whatever else
//! runs, but the CPU seconds a command costs the manager and PostgreSQL do not. Read from the
//! kernel's own accounting (`/proc/<pid>/stat`: user + system time), for the manager process
//! and for the whole PostgreSQL server — every `postgres` process, plus the time of the ones
//! that already exited, which the kernel adds to the postmaster's children's time.
//! Linux only, like the deployment target.

use anyhow::Context;
use serde::Serialize;

/// CPU seconds (user + system) spent so far by the manager and by the PostgreSQL server.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuClock {
    pub manager: f64,
    pub postgres: f64,
}

impl CpuClock {
    /// Reads both clocks now.
    pub fn read(manager_pid: u32) -> anyhow::Result<Self> {
        Ok(CpuClock {
            manager: process_cpu(manager_pid)?.own,
            postgres: postgres_cpu()?,
        })
    }
}

/// CPU milliseconds per 1,000 commands between two readings.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct CpuPerThousand {
    pub manager_ms: f64,
    pub postgres_ms: f64,
}

impl CpuPerThousand {
    /// `None` when no command succeeded (nothing to divide by).
    pub fn between(before: CpuClock, after: CpuClock, commands: usize) -> Option<Self> {
        (commands > 0).then(|| {
            let per_thousand = 1_000_000.0 / commands as f64;
            CpuPerThousand {
                manager_ms: (after.manager - before.manager) * per_thousand,
                postgres_ms: (after.postgres - before.postgres) * per_thousand,
            }
        })
    }
}

/// One process's CPU time: its own, and that of its children it has waited for.
struct ProcessCpu {
    own: f64,
    waited_children: f64,
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; _SC_CLK_TCK is always defined on Linux.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Parses `/proc/<pid>/stat` text: (command name, parent pid, CPU).
fn parse_stat(text: &str) -> anyhow::Result<(String, u32, ProcessCpu)> {
    // The command name is in parentheses and may itself hold spaces or parentheses: the
    // fields after it start at the last ')'.
    let open = text.find('(').context("no command name")?;
    let close = text.rfind(')').context("no end of the command name")?;
    let name = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let number = |index: usize| -> anyhow::Result<f64> {
        fields
            .get(index)
            .context("a short stat line")?
            .parse::<f64>()
            .context("a field that is not a number")
    };
    let ticks = clock_ticks_per_second();
    let parent = number(1)? as u32;
    Ok((
        name,
        parent,
        ProcessCpu {
            own: (number(11)? + number(12)?) / ticks,
            waited_children: (number(13)? + number(14)?) / ticks,
        },
    ))
}

fn process_cpu(pid: u32) -> anyhow::Result<ProcessCpu> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    Ok(parse_stat(&text)?.2)
}

/// Every `postgres` process's own time, plus the exited backends' time the postmaster (the
/// `postgres` process whose parent is not one) collected.
fn postgres_cpu() -> anyhow::Result<f64> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read: skip it.
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Ok((name, parent, cpu)) = parse_stat(&text) else {
            continue;
        };
        if name == "postgres" || name == "postmaster" {
            processes.push((pid, parent, cpu));
        }
    }
    anyhow::ensure!(
        !processes.is_empty(),
        "no PostgreSQL process on this machine to account for (a remote server?)"
    );
    let pids: std::collections::HashSet<u32> = processes.iter().map(|(pid, ..)| *pid).collect();
    Ok(processes
        .iter()
        .map(|(_, parent, cpu)| {
            let postmaster = !pids.contains(parent);
            cpu.own + if postmaster { cpu.waited_children } else { 0.0 }
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_name_the_parent_and_the_cpu_even_with_odd_names() {
        let ticks = clock_ticks_per_second();
        let line = "4242 (postgres: x (y)) S 1 4242 4242 0 -1 4194560 1 0 0 0 \
                    250 150 30 20 20 0 1 0 100 0 0";
        let (name, parent, cpu) = parse_stat(line).unwrap();
        assert_eq!(name, "postgres: x (y)");
        assert_eq!(parent, 1);
        assert!((cpu.own - 400.0 / ticks).abs() < 1e-9);
        assert!((cpu.waited_children - 50.0 / ticks).abs() < 1e-9);
    }

    #[test]
    fn cpu_per_thousand_commands_divides_the_difference() {
        let before = CpuClock {
            manager: 1.0,
            postgres: 2.0,
        };
        let after = CpuClock {
            manager: 1.5,
            postgres: 3.0,
        };
        assert_eq!(
            CpuPerThousand::between(before, after, 500),
            Some(CpuPerThousand {
                manager_ms: 1000.0,
                postgres_ms: 2000.0
            })
        );
        assert_eq!(CpuPerThousand::between(before, after, 0), None);
    }

    #[test]
    fn this_process_has_a_cpu_clock() {
        let own = process_cpu(std::process::id()).unwrap();
        assert!(own.own >= 0.0);
    }
}
