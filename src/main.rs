//! `teachin`: one binary for every role and operator command. This file only wires things
//! together — configuration, logging, the chosen command; see ARCHITECTURE.md for the map.

mod admin;
mod bench;
mod cli;
mod config;
mod log_view;
mod projection_ops;
mod queue_ops;
mod roles;
mod telemetry;

use anyhow::Context;
use clap::Parser;
use cli::{AdminCommand, BenchCommand, Cli, Command, CronCommand};
use roles::Role;
use std::process::ExitCode;

/// Exit code for an unusable configuration (the same as clap's for bad arguments).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match config::SettingsSource::environment().and_then(|source| source.load()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    telemetry::init(&settings.log_filter, settings.log_json);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: config::Settings) -> anyhow::Result<()> {
    match command {
        Command::All => roles::run(&settings, &[Role::Manager, Role::Accessor, Role::Engine]).await,
        Command::Manager => roles::run(&settings, &[Role::Manager]).await,
        Command::Accessor => roles::run(&settings, &[Role::Accessor]).await,
        Command::Engine => roles::run(&settings, &[Role::Engine]).await,
        Command::Migrate => {
            let pool = roles::connect(&settings).await?;
            let applied = roles::migrate(&pool).await?;
            println!("migrations applied: {applied}");
            Ok(())
        }
        Command::Events(args) => {
            let pool = roles::connect(&settings).await?;
            log_view::print(teachin_projections::EventLog::new(pool), args).await
        }
        Command::Bench(BenchCommand::Projections(args)) => {
            bench::projections::run(&settings, args).await.map(|_| ())
        }
        Command::Bench(BenchCommand::System(args)) => bench::system::run(&settings, args).await,
        Command::Projections(command) => {
            let pool = roles::connect(&settings).await?;
            roles::migrate(&pool).await?;
            projection_ops::run(pool, command).await
        }
        Command::Cron(CronCommand::CleanupSessions) => {
            let redis = roles::redis(&settings).await?;
            let sessions = teachin_api::auth::sessions::RefreshSessions::new(
                redis,
                &settings.refresh_token_hash_key,
                &settings.namespace,
            );
            let purged = sessions.cleanup().await?;
            println!("refresh sessions purged: {purged}");
            Ok(())
        }
        Command::Cron(CronCommand::Stats) => {
            let pool = roles::connect(&settings).await?;
            roles::migrate(&pool).await?;
            let snapshot =
                teachin_workers::stats::snapshot(&pool, sqlx::types::chrono::Utc::now()).await?;
            let redis = roles::redis(&settings).await?;
            teachin_workers::stats::store(&redis, &settings.namespace, &snapshot).await?;
            println!("{}", serde_json::to_string(&snapshot)?);
            Ok(())
        }
        Command::Cron(CronCommand::PurgeBus {
            retention_days,
            dead_letter_retention_days,
        }) => {
            let pool = roles::connect(&settings).await?;
            roles::migrate(&pool).await?;
            let days_ago = |days: u32| {
                sqlx::types::chrono::Utc::now()
                    - std::time::Duration::from_secs(u64::from(days) * 24 * 60 * 60)
            };
            let before = days_ago(retention_days);
            let bus =
                teachin_workers::bus::postgres::PostgresBus::new(pool.clone(), Default::default());
            let ids = bus.purge_message_ids(before).await?;
            let processed = teachin_workers::consumer::purge_processed(&pool, before).await?;
            // Both backends park their dead letters in the same table.
            let dead = bus
                .purge_dead_letters(days_ago(dead_letter_retention_days))
                .await?;
            println!(
                "message ids purged: {ids}\nprocessed records purged: {processed}\n\
                 dead letters purged: {dead}"
            );
            Ok(())
        }
        Command::Cron(CronCommand::PurgeUploads { grace_hours }) => {
            let Some(avatars) = &settings.avatars else {
                println!("avatars are not configured here: nothing to purge");
                return Ok(());
            };
            let store = teachin_workers::media::AvatarStore::from_settings(avatars)
                .context("opening the avatar store")?;
            let pool = roles::connect(&settings).await?;
            roles::migrate(&pool).await?;
            let reader = teachin_commands::bus::AggregateReader::new(pool, Default::default());
            let swept = teachin_workers::media::retention::purge_unconfirmed(
                &store,
                &reader,
                sqlx::types::chrono::Utc::now(),
                std::time::Duration::from_secs(u64::from(grace_hours) * 60 * 60),
            )
            .await?;
            println!(
                "unconfirmed uploads purged: {}\nfiles of erased users purged: {}\nfiles kept: {}",
                swept.unconfirmed, swept.erased, swept.kept
            );
            Ok(())
        }
        Command::Queues(command) => {
            let pool = roles::connect(&settings).await?;
            roles::migrate(&pool).await?;
            queue_ops::run(pool, &settings.bus, command).await
        }
        Command::Admin(AdminCommand::Create(args)) => {
            let pool = roles::connect(&settings).await?;
            roles::migrate(&pool).await?;
            admin::create(pool, &settings, args).await
        }
    }
}
