//! Section 6, memory: what each role costs to keep running, read from the kernel's own
//! accounting of each role process (`/proc/<pid>/status`): resident set (`VmRSS`) once the
//! roles are up and idle, and the high-water mark (`VmHWM`) after the load of the other
//! sections. Linux only, like the deployment target.

use super::deployment::Deployment;
use anyhow::Context;
use serde::Serialize;

/// Target: each role's idle resident set.
pub const IDLE_TARGET_MIB: f64 = 64.0;

#[derive(Debug, Clone, Serialize)]
pub struct RoleMemory {
    pub role: String,
    pub idle_rss_mib: f64,
    /// `None` until the load has run.
    pub peak_hwm_mib: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryFigures {
    pub roles: Vec<RoleMemory>,
}

pub fn method(settle_seconds: u64) -> String {
    format!(
        "manager, accessor and engine as separate processes (`teachin <role>`); idle = VmRSS from \
         /proc/<pid>/status {settle_seconds} s after every role answered /readyz, before any \
         user existed; peak = VmHWM after the command-path and realtime sections."
    )
}

/// Every role's resident set now.
pub fn idle(deployment: &Deployment) -> anyhow::Result<MemoryFigures> {
    let roles = deployment
        .roles
        .iter()
        .map(|role| {
            Ok(RoleMemory {
                role: role.role.to_string(),
                idle_rss_mib: status_mib(role.pid(), "VmRSS")?,
                peak_hwm_mib: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(MemoryFigures { roles })
}

/// Adds every role's high-water mark so far.
pub fn record_peak(figures: &mut MemoryFigures, deployment: &Deployment) -> anyhow::Result<()> {
    for (memory, role) in figures.roles.iter_mut().zip(&deployment.roles) {
        memory.peak_hwm_mib = Some(status_mib(role.pid(), "VmHWM")?);
    }
    Ok(())
}

/// A `kB` field of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .with_context(|| format!("{path} has no {field}"))?;
    Ok(kib / 1024.0)
}
