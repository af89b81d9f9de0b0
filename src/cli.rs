//! The command line: every role and operator command of the one `teachin` binary.

use clap::{Args, Parser, Subcommand};
use teachin_projections::LogPosition;

#[derive(Debug, Parser)]
#[command(
    name = "teachin",
    version,
    about = "Teachin backend: roles and operator commands"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process (the local default).
    All,
    /// Run the manager role (public API).
    Manager,
    /// Run the accessor role (projections).
    Accessor,
    /// Run the engine role (AI workers).
    Engine,
    /// Apply pending database migrations, then exit.
    Migrate,
    /// Print the event log as JSON lines (stored form, not upcast).
    Events(EventsArgs),
    /// Administrative commands.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Inspect and operate the projections (read models).
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Scheduled maintenance jobs (the Helm chart runs them as CronJobs).
    #[command(subcommand)]
    Cron(CronCommand),
    /// Inspect the message queues and operate their dead letters.
    #[command(subcommand)]
    Queues(crate::queue_ops::QueuesCommand),
    /// Measure the system on this machine against baselines measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum CronCommand {
    /// Purge refresh sessions that expired or were revoked (the original's job hit a 404).
    CleanupSessions,
    /// Print the tutor usage snapshot as JSON and keep it in Redis for a day
    /// (`teachin:{ns}:stats`).
    Stats,
    /// Forget bus bookkeeping older than the retention: accepted message ids (duplicate
    /// detection) and processed-message records (consumer idempotency); and dead letters
    /// older than theirs.
    PurgeBus {
        /// Days to keep; longer than any message can take to come back.
        #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
        retention_days: u32,
        /// Days to keep a dead letter (redacted, but still a record of someone's activity):
        /// long enough for an operator to look into it.
        #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..))]
        dead_letter_retention_days: u32,
    },
    /// Delete avatar uploads that never became an avatar (never confirmed, or replaced and
    /// left behind) once older than the grace period, and every file of an erased person.
    PurgeUploads {
        /// Hours an unconfirmed upload is kept; at least 2, twice the hour within which an
        /// upload can be confirmed, so the sweep never races a confirm.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(2..))]
        grace_hours: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Projection lag under load, and full rebuild vs a raw scan of the log.
    Projections(crate::bench::projections::ProjectionBenchArgs),
    /// The whole system against fresh databases: PostgreSQL baseline, the command path over
    /// GraphQL, projection lag and rebuild, SignalR push latency, and each role's memory;
    /// writes results.md and results.json.
    System(crate::bench::system::SystemBenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Each projection's position, lag, and why it halted if it did.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild from the start of the log into shadow tables, then swap them in. Reads keep
    /// working throughout; a halted projection runs again afterwards.
    Rebuild {
        /// The projection's name (see `status`), or `all`.
        name: String,
    },
    /// Let a halted projection try its failed event again (after a fix is deployed).
    Resume { name: String },
    /// Fold the log again into scratch tables and compare them with the live read models at
    /// the live checkpoint: one line per projection; exit 0 when all are equal, 1 when one
    /// differs or is halted. Safe on a running accessor (it waits for nothing the daemon holds).
    Verify {
        /// The projection's name (see `status`), or `all`.
        #[arg(default_value = "all")]
        name: String,
        /// Print one JSON object per projection instead (with the differing rows).
        #[arg(long)]
        json: bool,
        /// How many differing rows to show per table.
        #[arg(long, default_value_t = 5)]
        rows: usize,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start after this log position (`TRANSACTION/POSITION`, as printed in `position`).
    #[arg(long, value_name = "POS", conflicts_with = "stream")]
    pub after: Option<LogPosition>,
    /// Print one stream only: `AGGREGATE_TYPE/AGGREGATE_ID`, e.g. `User/5b0e...`.
    #[arg(long, value_name = "TYPE/ID")]
    pub stream: Option<StreamName>,
    /// Keep printing events as they are committed.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct StreamName {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

impl std::str::FromStr for StreamName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((t, id)) if !t.is_empty() && !id.is_empty() => Ok(StreamName {
                aggregate_type: t.to_string(),
                aggregate_id: id.to_string(),
            }),
            _ => Err(format!("`{s}` is not TYPE/ID, e.g. User/5b0e6f1c-...")),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create an admin account (bootstraps the first admin). The password is read from
    /// standard input (`--password-stdin`) or from TEACHIN_ADMIN_PASSWORD.
    Create(CreateAdminArgs),
}

#[derive(Debug, Args)]
pub struct CreateAdminArgs {
    #[arg(long)]
    pub email: String,
    #[arg(long, default_value = "Admin")]
    pub first_name: String,
    #[arg(long, default_value = "Teachin")]
    pub last_name: String,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    pub password_stdin: bool,
}
