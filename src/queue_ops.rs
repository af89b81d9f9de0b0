//! `teachin queues status | dead-letter list | dead-letter resubmit`: the operator's handles on
//! the message bus, on whichever backend `TEACHIN_BUS` names.

use anyhow::bail;
use clap::Subcommand;
use serde::Serialize;
use sqlx::PgPool;
use teachin_workers::bus::{self, QueueName, QueueStats};
use teachin_workers::BusConfig;

#[derive(Debug, Subcommand)]
pub enum QueuesCommand {
    /// Each queue's depth, oldest message age and dead-letter count.
    Status {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Messages taken out of circulation, and why.
    #[command(subcommand, name = "dead-letter")]
    DeadLetter(DeadLetterCommand),
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List dead letters (every queue's, or one queue's), oldest first.
    List {
        #[arg(long, value_name = "QUEUE")]
        queue: Option<QueueName>,
        /// At most this many per queue.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON lines (with the payload) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in their queue with fresh deliveries.
    Resubmit {
        #[arg(long, value_name = "QUEUE")]
        queue: QueueName,
        /// The message id of one dead letter.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        id: Option<String>,
        /// Every dead letter of the queue.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Serialize)]
struct StatusLine {
    #[serde(flatten)]
    stats: QueueStats,
    /// Seconds since the oldest message was enqueued (absent when unknown or empty).
    oldest_age_seconds: Option<f64>,
    backend: &'static str,
}

pub async fn run(pool: PgPool, config: &BusConfig, command: QueuesCommand) -> anyhow::Result<()> {
    let bus = bus::connect(config, pool)?;
    match command {
        QueuesCommand::Status { json } => {
            let mut lines = Vec::new();
            for queue in QueueName::ALL {
                let stats = bus.stats(queue).await?;
                lines.push(StatusLine {
                    oldest_age_seconds: stats.oldest_age().map(|a| a.as_secs_f64()),
                    stats,
                    backend: config.backend_name(),
                });
            }
            if json {
                for line in &lines {
                    println!("{}", serde_json::to_string(line)?);
                }
                return Ok(());
            }
            println!("bus: {}", config.backend_name());
            println!(
                "{:<32} {:>8} {:>12} {:>13}",
                "queue", "depth", "oldest age", "dead letters"
            );
            for line in lines {
                let age = match (line.oldest_age_seconds, line.stats.depth) {
                    (Some(seconds), _) => format!("{seconds:.0}s"),
                    (None, 0) => "-".to_string(),
                    (None, _) => "unknown".to_string(),
                };
                println!(
                    "{:<32} {:>8} {:>12} {:>13}",
                    line.stats.queue.as_str(),
                    line.stats.depth,
                    age,
                    line.stats.dead_letters
                );
            }
            Ok(())
        }
        QueuesCommand::DeadLetter(DeadLetterCommand::List { queue, limit, json }) => {
            let queues = match queue {
                Some(queue) => vec![queue],
                None => QueueName::ALL.to_vec(),
            };
            if !json {
                println!(
                    "{:<32} {:<38} {:<28} {:>10}  reason: description",
                    "queue", "message id", "action", "deliveries"
                );
            }
            for queue in queues {
                for letter in bus.dead_letters(queue, limit).await? {
                    if json {
                        println!("{}", serde_json::to_string(&letter)?);
                    } else {
                        println!(
                            "{:<32} {:<38} {:<28} {:>10}  {}: {}",
                            queue.as_str(),
                            letter.message_id,
                            letter.action,
                            letter.delivery_count,
                            letter.reason,
                            letter.description
                        );
                    }
                }
            }
            Ok(())
        }
        QueuesCommand::DeadLetter(DeadLetterCommand::Resubmit { queue, id, all }) => {
            if all {
                let done = bus::resubmit_all(&*bus, queue).await?;
                println!("resubmitted {done} dead letters to {queue}");
                return Ok(());
            }
            let id = id.expect("clap requires --id without --all");
            if !bus.resubmit(queue, &id).await? {
                bail!("no dead letter `{id}` in {queue}");
            }
            println!("resubmitted {id} to {queue}");
            Ok(())
        }
    }
}
