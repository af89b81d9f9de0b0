//! Starting the roles. Each role migrates the database (under sqlx's advisory lock, so
//! replicas starting together don't race), serves its health endpoints on its own port, and
//! runs its workers until SIGINT/SIGTERM:
//! - manager: the GraphQL API (`teachin_api::server`), with refresh sessions and rate limits
//!   in Redis and subscriptions fed from the realtime feed.
//! - accessor: the projection daemon (every read model follows the log), the realtime feed
//!   publisher (log → Redis pub/sub) and the outbox relay (log → bus).
//!
//! `teachin all` runs the three in one process over one pool.

use crate::config::Settings;
use anyhow::Context;
use sqlx::PgPool;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Manager,
    Accessor,
    Engine,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Accessor => "accessor",
            Role::Engine => "engine",
        }
    }

    fn port(self, settings: &Settings) -> u16 {
        match self {
            Role::Manager => settings.manager_port,
            Role::Accessor => settings.accessor_port,
            Role::Engine => settings.engine_port,
        }
    }
}

pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    // Every role's pool closes a connection handed back inside a transaction (`pool`).
    teachin_commands::pool::options()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(settings.database.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}:{} (database `{}`)",
                settings.database.get_host(),
                settings.database.get_port(),
                settings.database.get_database().unwrap_or("?"),
            )
        })
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<usize> {
    teachin_commands::migrations::run(pool)
        .await
        .context("applying database migrations")
}

/// Runs `roles` until a shutdown signal.
pub async fn run(settings: &Settings, roles: &[Role]) -> anyhow::Result<()> {
    tracing::info!(environment = ?settings.environment, "starting");
    let pool = connect(settings).await?;
    let applied = migrate(&pool).await?;
    tracing::info!(applied, "database schema is current");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    for &role in roles {
        let addr = SocketAddr::from(([0, 0, 0, 0], role.port(settings)));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the {}", role.name()))?;
        let app = match role {
            Role::Manager => {
                let (app, hub) = manager(settings, pool.clone()).await?;
                // The engine's results become commands here; its streamed frames go, in
                // order, to the student's hub connections.
                let callbacks = teachin_workers::CallbackDeps {
                    pool: pool.clone(),
                    bus: teachin_workers::bus::connect(&settings.bus, pool.clone())
                        .context("the message bus")?,
                    commands: command_bus(settings, pool.clone()),
                    push: std::sync::Arc::new(hub.clone()),
                    settings: teachin_workers::CallbackSettings::default(),
                };
                servers.spawn({
                    let stop = stop_rx.clone();
                    async move {
                        teachin_workers::run_manager_callbacks(callbacks, stop).await;
                        Ok(())
                    }
                });
                servers.spawn({
                    let (url, stop) = (settings.redis_url.clone(), stop_rx.clone());
                    async move {
                        teachin_api::hub::run_feed(hub, &url, stop).await;
                        Ok(())
                    }
                });
                app
            }
            Role::Accessor => teachin_api::health::router(role.name(), pool.clone(), None)
                .merge(teachin_api::metrics::router(pool.clone())),
            Role::Engine => {
                let engine = teachin_workers::EngineDeps {
                    pool: pool.clone(),
                    bus: teachin_workers::bus::connect(&settings.bus, pool.clone())
                        .context("the message bus")?,
                    commands: command_bus(settings, pool.clone()),
                    provider: settings.ai.provider(),
                    settings: teachin_workers::EngineSettings {
                        web_search: settings.web_search.clone(),
                        // Each answer's tokens count against its person's daily quota.
                        usage: Some(teachin_workers::engine::usage::UsageLedger::new(
                            redis(settings).await?,
                            &settings.namespace,
                        )),
                        ..Default::default()
                    },
                };
                servers.spawn({
                    let stop = stop_rx.clone();
                    async move {
                        teachin_workers::run_engine(engine, stop).await;
                        Ok(())
                    }
                });
                engine_routes(settings, pool.clone())?
            }
        };
        tracing::info!(role = role.name(), %addr, "listening");
        let mut stop = stop_rx.clone();
        servers.spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await
        });
    }

    if roles.contains(&Role::Accessor) {
        let daemon = teachin_projections::daemon::ProjectionDaemon::new(
            pool.clone(),
            teachin_projections::read_models::all(),
            teachin_projections::daemon::DaemonSettings::default(),
        );
        let stop = stop_rx.clone();
        servers.spawn(async move {
            daemon.run(stop).await;
            Ok(())
        });
        // The outbox relay: integration messages derived from the log (one replica at a
        // time, under its advisory lock), e.g. each AI reply request → `engine-queue`.
        let relay = teachin_workers::relay::OutboxRelay::new(
            pool.clone(),
            teachin_workers::bus::connect(&settings.bus, pool.clone())
                .context("the message bus")?,
            teachin_workers::relay::RelayConfig::default(),
        );
        servers.spawn({
            let stop = stop_rx.clone();
            async move {
                relay.run(stop).await;
                Ok(())
            }
        });
        // The accessor-queue: jobs for the accessor (email), when SMTP is configured.
        if let Some(email) = &settings.email {
            let handler = teachin_workers::email::SendEmailHandler::from_settings(email)
                .map_err(|e| anyhow::anyhow!("email settings: {e}"))?;
            let consumer = teachin_workers::consumer::Consumer::new(
                "accessor-email",
                teachin_workers::QueueName::Accessor,
                teachin_workers::bus::connect(&settings.bus, pool.clone())
                    .context("the message bus")?,
                pool.clone(),
            );
            let consumer = teachin_workers::email::register(consumer, handler);
            let stop = stop_rx.clone();
            servers.spawn(async move {
                consumer.run(stop).await;
                Ok(())
            });
        }
        servers.spawn(publish_feed(
            pool.clone(),
            settings.redis_url.clone(),
            settings.namespace.clone(),
            stop_rx.clone(),
        ));
    }

    let outcome = supervise(servers, shutdown_signal(), stop_tx, DRAIN_TIMEOUT).await;
    pool.close().await;
    outcome
}

/// What a panicked task's payload says, when it is a message.
fn panic_message(error: tokio::task::JoinError) -> String {
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|message| message.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// How long the other tasks get to finish once the process stops.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs until `shutdown` completes or until any task ends first, then stops the rest.
///
/// Every task of a role runs until shutdown, so one that ends before — above all one that
/// panicked — is a failure of the whole process: the others are stopped (`stop`), given
/// `drain` to finish, and the error is returned, so `teachin` exits non-zero and the
/// orchestrator restarts it (with its back-off, and counted where operators look). A restart
/// inside the process was the alternative; it is not taken because a panic is a bug whose
/// state may be shared (a poisoned lock, a half-updated cache), because a panic that repeats
/// would loop unseen behind a healthy `/healthz`, and because a restart from the durable
/// checkpoints is exactly what a crash already does (ARCHITECTURE.md, invariant 8). Exiting
/// also closes every connection, so the session locks of the read models and the followers
/// are free for another replica at once.
async fn supervise(
    mut tasks: tokio::task::JoinSet<std::io::Result<()>>,
    shutdown: impl std::future::Future<Output = ()>,
    stop: watch::Sender<bool>,
    drain: std::time::Duration,
) -> anyhow::Result<()> {
    let failure = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            None
        }
        Some(ended) = tasks.join_next() => Some(match ended {
            Err(error) if error.is_panic() => {
                anyhow::anyhow!("a task of the role panicked: {}", panic_message(error))
            }
            Err(error) => anyhow::anyhow!(error).context("a task of the role was cancelled"),
            Ok(Err(error)) => anyhow::anyhow!(error).context("a task of the role failed"),
            Ok(Ok(())) => anyhow::anyhow!("a task of the role stopped before shutdown"),
        }),
    };
    if let Some(error) = &failure {
        tracing::error!(error = %format!("{error:#}"), "stopping the process");
    }
    let _ = stop.send(true);
    let mut outcome = failure.map_or(Ok(()), Err);
    let drained = tokio::time::timeout(drain, async {
        while let Some(ended) = tasks.join_next().await {
            let result = match ended {
                Ok(result) => result.context("a role task failed"),
                Err(error) => Err(anyhow::anyhow!(error).context("a role task panicked")),
            };
            if let Err(error) = result {
                tracing::error!(error = %format!("{error:#}"), "while stopping");
                if outcome.is_ok() {
                    outcome = Err(error);
                }
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?drain,
            "tasks still running after the drain period; abandoning them"
        );
        tasks.abort_all();
    }
    outcome
}

/// Connects to Redis for the manager's sessions and rate limits.
pub async fn redis(settings: &Settings) -> anyhow::Result<fred::prelude::Client> {
    use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy};
    let config = Config::from_url(&settings.redis_url)
        .with_context(|| format!("REDIS_URL `{}` is not a Redis URL", settings.redis_url))?;
    let client = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
        .build()
        .context("building the Redis client")?;
    tokio::time::timeout(std::time::Duration::from_secs(10), client.init())
        .await
        .context("Redis did not answer within 10 s")?
        .with_context(|| format!("cannot connect to Redis at {}", settings.redis_url))?;
    Ok(client)
}

/// The manager's routes (GraphQL, the hub, media, metrics, health) over one pool and one
/// Redis client, and the hub whose feed task must run beside them.
async fn manager(
    settings: &Settings,
    pool: PgPool,
) -> anyhow::Result<(axum::Router, teachin_api::hub::NotificationHub)> {
    use teachin_api::auth::{
        rate_limit::RateLimiter, sessions::RefreshSessions, tokens::AccessTokens,
    };
    use teachin_api::graphql::{ApiState, SessionPolicy};
    let redis = redis(settings).await?;
    let tokens = AccessTokens::new(
        &settings.jwt_secret,
        &settings.jwt_issuer,
        &settings.jwt_audience,
    )
    .context("JWT_SECRET")?;
    let local = settings.environment == crate::config::Environment::Local;
    let read = teachin_projections::queries::ReadModels::new(pool.clone());
    let hub = teachin_api::hub::NotificationHub::new(
        tokens.clone(),
        redis.clone(),
        teachin_api::hub::HubConfig::new(&settings.namespace),
        settings.azure_signalr.clone(),
    );
    hub.set_display_names(read.clone());
    // The hub's feed reading also serves the GraphQL subscriptions: one reader per replica.
    let fanout = teachin_api::graphql::realtime::FeedFanout::default();
    hub.feed_subscriptions(fanout.clone());
    let bus = command_bus(settings, pool.clone());
    let metrics = teachin_api::metrics::ApiMetrics::default();
    let state = ApiState {
        bus: bus.clone(),
        read,
        replay: teachin_projections::replay::SessionReplay::new(pool.clone()),
        analytics: teachin_projections::analytics::Analytics::new(pool.clone()),
        tokens,
        sessions: RefreshSessions::new(
            redis.clone(),
            &settings.refresh_token_hash_key,
            &settings.namespace,
        ),
        limiter: RateLimiter::new(redis.clone(), &settings.namespace),
        claims: std::sync::Arc::new(teachin_commands::ports::PostgresClaims::new(
            pool.clone(),
            settings.lookup_hash_key.clone(),
        )),
        policy: SessionPolicy {
            // Browsers treat http://localhost as secure, so cookies stay Secure locally.
            secure_cookies: true,
            login_budget: settings.login_budget,
            login_backoff: settings.login_backoff,
            signup_budget: settings.signup_budget,
            refresh_budget: settings.refresh_budget,
            same_site: settings.cookie_same_site,
        },
        hub: Some(hub.clone()),
        redis_url: settings.redis_url.clone(),
        namespace: settings.namespace.clone(),
        avatars: (settings.avatars.as_ref())
            .map(teachin_workers::media::AvatarStore::from_settings)
            .transpose()
            .context("opening the avatar store")?,
        speech: (settings.speech.clone()).map(teachin_workers::speech::SpeechTokens::new),
        quotas: teachin_api::quota::Quotas::new(
            redis.clone(),
            &settings.namespace,
            settings.quotas,
        )
        .with_metrics(metrics.quota_refusals()),
        introspection: local,
    };
    // The local avatar backend's signed upload and read routes (Azure Blob serves its own).
    let media = match &state.avatars {
        Some(store) => teachin_api::media::media_router(store.clone(), &settings.cors_origins),
        None => axum::Router::new(),
    };
    let options = teachin_api::server::ManagerOptions {
        graphiql: local,
        cors_origins: settings.cors_origins.clone(),
        trust_forwarded_for: settings.trust_forwarded_for,
    };
    let app = teachin_api::server::router(
        state,
        fanout,
        metrics
            .with_connections({
                let hub = hub.clone();
                move || hub.connections()
            })
            .with_bus_stats(move || bus.stats())
            .with_extra(queue_metrics(settings, pool.clone())?),
        options,
    )
    .merge(media)
    .merge(teachin_api::health::router(
        "manager",
        pool,
        Some(redis.clone()),
    ));
    Ok((app, hub))
}

/// The engine's own routes: health, and `/metrics` with the queue gauges it scales on.
fn engine_routes(settings: &Settings, pool: PgPool) -> anyhow::Result<axum::Router> {
    Ok(
        teachin_api::health::router(Role::Engine.name(), pool.clone(), None).merge(
            teachin_api::metrics::router_with(
                pool.clone(),
                Some(
                    teachin_api::metrics::ApiMetrics::default()
                        .with_extra(queue_metrics(settings, pool)?),
                ),
            ),
        ),
    )
}

/// The command bus every role issues commands through.
fn command_bus(settings: &Settings, pool: PgPool) -> teachin_commands::CommandBus {
    teachin_commands::command_bus(
        pool,
        teachin_commands::PortSecrets {
            claims_hash_key: settings.lookup_hash_key.clone(),
        },
        teachin_commands::BusSettings {
            aggregate_cache_mib: settings.aggregate_cache_mib,
            ..teachin_commands::BusSettings::default()
        },
    )
}

/// The queue gauges for `/metrics`, read from the configured bus at each scrape.
fn queue_metrics(
    settings: &Settings,
    pool: PgPool,
) -> anyhow::Result<teachin_api::metrics::ExtraMetrics> {
    let bus = teachin_workers::bus::connect(&settings.bus, pool).context("the message bus")?;
    Ok(std::sync::Arc::new(move || {
        let bus = bus.clone();
        Box::pin(async move { teachin_workers::bus::metrics::render(bus.as_ref()).await })
    }))
}

/// Runs the realtime feed publisher, reconnecting to Redis until shutdown. Projections do not
/// wait for Redis: without it only the pushes pause (and resume from their checkpoint).
async fn publish_feed(
    pool: PgPool,
    redis_url: String,
    namespace: String,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    use teachin_projections::feed::{FeedConfig, FeedPublisher};
    while !*stop.borrow() {
        match FeedPublisher::connect(pool.clone(), &redis_url, FeedConfig::new(namespace.clone()))
            .await
        {
            Ok(publisher) => match publisher.run(stop.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "realtime feed stopped; restarting"),
            },
            Err(e) => tracing::warn!(error = %e, "realtime feed cannot reach Redis; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A task that runs until it is told to stop, as every role task does.
    async fn until_stopped(mut stop: watch::Receiver<bool>) -> std::io::Result<()> {
        let _ = stop.wait_for(|stopped| *stopped).await;
        Ok(())
    }

    #[tokio::test]
    async fn a_panicked_task_stops_the_process_with_an_error() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(until_stopped(stop_rx.clone()));
        tasks.spawn(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("a bug in a follower");
        });
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            supervise(
                tasks,
                std::future::pending(),
                stop_tx,
                Duration::from_secs(10),
            ),
        )
        .await
        .expect("the process does not wait for a signal after a panic");
        let error = outcome.expect_err("a panic fails the process");
        assert!(
            format!("{error:#}").contains("panicked: a bug in a follower"),
            "{error:#}"
        );
        assert!(*stop_rx.borrow(), "the other tasks were told to stop");
    }

    #[tokio::test]
    async fn a_task_that_stops_early_stops_the_process_too() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(until_stopped(stop_rx.clone()));
        tasks.spawn(async { Ok(()) });
        let outcome = supervise(
            tasks,
            std::future::pending(),
            stop_tx,
            Duration::from_secs(10),
        )
        .await;
        assert!(outcome.is_err());
    }

    #[tokio::test]
    async fn a_shutdown_stops_every_task_cleanly() {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..3 {
            tasks.spawn(until_stopped(stop_rx.clone()));
        }
        supervise(tasks, async {}, stop_tx, Duration::from_secs(10))
            .await
            .expect("a clean shutdown");
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_stop_is_abandoned_after_the_drain() {
        let (stop_tx, _stop_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(std::future::pending());
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            supervise(tasks, async {}, stop_tx, Duration::from_millis(50)),
        )
        .await
        .expect("the drain is bounded");
        assert!(outcome.is_ok());
    }
}
