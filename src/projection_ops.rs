//! `teachin projections status | rebuild | resume | verify`: the operator's handles on the read
//! side.

use crate::cli::ProjectionsCommand;
use anyhow::{bail, Context};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use teachin_projections::checkpoint::{self, Checkpoint};
use teachin_projections::{read_models, rebuild, Projection, VerifyOptions};

/// Counting the events a projection still has to apply stops here.
const LAG_COUNT_LIMIT: i64 = teachin_projections::checkpoint::LAG_COUNT_LIMIT;

/// Events per rebuild transaction: large batches fold more events per written row.
pub const REBUILD_BATCH: i64 = 5000;

#[derive(Serialize)]
struct StatusLine {
    #[serde(flatten)]
    checkpoint: Checkpoint,
    /// Events after the checkpoint (capped at LAG_COUNT_LIMIT).
    lag_events: i64,
}

pub async fn run(pool: PgPool, command: ProjectionsCommand) -> anyhow::Result<()> {
    let catalogue = read_models::all();
    match command {
        ProjectionsCommand::Status { json } => status(&pool, &catalogue, json).await,
        ProjectionsCommand::Rebuild { name } => {
            let chosen: Vec<Arc<dyn Projection>> = if name == "all" {
                catalogue
            } else {
                vec![find(&catalogue, &name)?]
            };
            let refs: Vec<&dyn Projection> = chosen.iter().map(|p| &**p).collect();
            let report = rebuild::rebuild_all(&pool, &refs, REBUILD_BATCH)
                .await
                .with_context(|| format!("rebuilding {name}"))?;
            println!(
                "rebuilt {} from {} events in {:.2?}, now at {}",
                refs.iter().map(|p| p.name()).collect::<Vec<_>>().join(", "),
                report.events,
                report.elapsed,
                report.position
            );
            Ok(())
        }
        ProjectionsCommand::Verify { name, json, rows } => {
            let chosen: Vec<Arc<dyn Projection>> = if name == "all" {
                catalogue
            } else {
                vec![find(&catalogue, &name)?]
            };
            verify(&pool, &chosen, json, rows).await
        }
        ProjectionsCommand::Resume { name } => {
            let projection = find(&catalogue, &name)?;
            if checkpoint::resume(&pool, projection.name()).await? {
                println!("{}: resumed", projection.name());
            } else {
                println!("{}: has not run yet; nothing to resume", projection.name());
            }
            Ok(())
        }
    }
}

fn find(catalogue: &[Arc<dyn Projection>], name: &str) -> anyhow::Result<Arc<dyn Projection>> {
    match catalogue.iter().find(|p| p.name() == name) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "no projection named `{name}`; known: {}",
            catalogue
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn status(
    pool: &PgPool,
    catalogue: &[Arc<dyn Projection>],
    json: bool,
) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    let stored = checkpoint::all(pool).await?;
    // The read models, then every other checkpointed subscriber (the realtime feed, a
    // rebuild in progress).
    let mut names: Vec<String> = catalogue.iter().map(|p| p.name().to_string()).collect();
    names.extend(
        stored
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| !names.contains(n))
            .collect::<Vec<_>>(),
    );
    for name in names {
        let checkpoint = stored
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| Checkpoint::not_started(&name));
        let lag_events = checkpoint::lag_events(pool, checkpoint.position, LAG_COUNT_LIMIT).await?;
        lines.push(StatusLine {
            checkpoint,
            lag_events,
        });
    }
    if json {
        for line in &lines {
            println!("{}", serde_json::to_string(line)?);
        }
        return Ok(());
    }
    println!(
        "{:<18} {:<8} {:>14} {:>10} {:>8}  failure",
        "projection", "status", "position", "applied", "lag"
    );
    for line in lines {
        let c = &line.checkpoint;
        let failure = match (&c.failed_position, &c.failure) {
            (Some(position), Some(failure)) => format!("at {position}: {failure}"),
            _ => String::new(),
        };
        println!(
            "{:<18} {:<8} {:>14} {:>10} {:>8}  {failure}",
            c.name,
            format!("{:?}", c.status).to_lowercase(),
            c.position.to_string(),
            c.events_applied,
            line.lag_events
        );
    }
    Ok(())
}

/// `projections verify`: one line per projection (the differing rows indented under it), and
/// an error — exit code 1 — when any projection differs or is halted.
async fn verify(
    pool: &PgPool,
    chosen: &[Arc<dyn Projection>],
    json: bool,
    rows: usize,
) -> anyhow::Result<()> {
    let refs: Vec<&dyn Projection> = chosen.iter().map(|p| &**p).collect();
    let options = VerifyOptions {
        batch_size: REBUILD_BATCH,
        differing_rows: rows,
    };
    let verdicts = teachin_projections::verify(pool, &refs, &options)
        .await
        .context("verifying the projections")?;
    for verdict in &verdicts {
        if json {
            println!("{}", serde_json::to_string(verdict)?);
        } else {
            println!("{verdict}");
            for line in verdict.detail_lines() {
                println!("    {line}");
            }
        }
    }
    let failed: Vec<&str> = verdicts
        .iter()
        .filter(|v| !v.is_equal())
        .map(|v| v.projection.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} projections are not equal to the fold of the log: {}",
            failed.len(),
            verdicts.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
