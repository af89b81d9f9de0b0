//! `teachin bench system --stages`: where one command's microseconds go.
//!
//! Throughput and CPU per command say how much a command costs, not where. This runs the
//! manager in this process, on a runtime of its own whose threads report to a
//! [`StageTimings`] layer (and to nothing else: the rest of the process keeps its logging),
//! drives `addWordCard` mutations at it over HTTP one at a time, and reports each stage's
//! span: its count, mean and percentiles in µs.
//!
//! The spans are the code's own (`tracing::debug_span!`, free when nothing listens):
//! `request` (tower-http, the whole HTTP exchange inside the manager), `auth.jwt`
//! (`api::auth::tokens`), `graphql.parse` / `graphql.validate` / `graphql.execute`
//! (`api::parsed_documents`), `command.load` with `cache=hit|miss` and `command.append`
//! (`commands::event_repository`), `command.decide` (`commands::bus`), `pool.checkout` (the
//! append's connection) and `pool.before_acquire` (`commands::pool`, the check of an idle
//! connection on the general pool). Three stages
//! have no span of their own in the manager and are measured apart in this process, with the
//! same code against the same servers: the revocation-epoch `GET` in Redis, sealing a text
//! (`PostgresVault::seal`, its key cached), and the commit's wait for the WAL flush (an insert
//! with `synchronous_commit` on, less the same insert with it off).

use super::deployment::{role_environment, Secrets};
use super::Latencies;
use crate::bench::BenchDatabase;
use crate::config::{Settings, SettingsSource};
use anyhow::Context;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The spans the profile reports, in the order of the table.
pub const STAGES: [&str; 10] = [
    "request",
    "auth.jwt",
    "graphql.parse",
    "graphql.validate",
    "graphql.execute",
    "command.load",
    "command.decide",
    "pool.checkout",
    "pool.before_acquire",
    "command.append",
];

/// Commands before the measured ones (connections opened, statements prepared, caches warm).
const WARM_UP: usize = 200;
/// Students the commands take turns over (so their decks stay small and their streams hot).
const STUDENTS: usize = 8;
/// Repetitions of each stage measured apart.
const APART: usize = 2000;

/// A tracing layer that records how long each stage span lived, from creation to close.
#[derive(Clone, Default)]
pub struct StageTimings {
    samples: Arc<Mutex<HashMap<String, Vec<f64>>>>,
}

/// When a span opened and the label it reports under (its name, and a `cache` field's value).
struct Opened {
    at: Instant,
    label: String,
}

struct CacheField<'a>(&'a mut String);

impl Visit for CacheField<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "cache" {
            self.0.push_str(&format!(" ({value})"));
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl<S> Layer<S> for StageTimings
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut label = attrs.metadata().name().to_string();
        attrs.record(&mut CacheField(&mut label));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Opened {
                at: Instant::now(),
                label,
            });
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(opened) = span.extensions_mut().get_mut::<Opened>() {
                values.record(&mut CacheField(&mut opened.label));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let extensions = span.extensions();
        let Some(opened) = extensions.get::<Opened>() else {
            return;
        };
        let micros = opened.at.elapsed().as_secs_f64() * 1e6;
        self.lock()
            .entry(opened.label.clone())
            .or_default()
            .push(micros);
    }
}

impl StageTimings {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<f64>>> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reset(&self) {
        self.lock().clear();
    }

    fn take(&self) -> HashMap<String, Vec<f64>> {
        std::mem::take(&mut *self.lock())
    }

    /// A dispatcher that sends the stage spans to this layer and drops everything else.
    pub fn dispatch(&self) -> tracing::Dispatch {
        let only_stages = tracing_subscriber::filter::filter_fn(|meta| {
            meta.is_span() && STAGES.contains(&meta.name())
        });
        tracing::Dispatch::new(
            tracing_subscriber::registry().with(self.clone().with_filter(only_stages)),
        )
    }
}

/// One row of the table: a stage and its durations in µs.
pub struct StageRow {
    pub stage: String,
    pub count: usize,
    pub mean: f64,
    pub latencies: Latencies,
    pub note: String,
}

impl StageRow {
    fn of(stage: impl Into<String>, samples: Vec<f64>, note: impl Into<String>) -> Self {
        let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
        StageRow {
            stage: stage.into(),
            count: samples.len(),
            mean,
            latencies: Latencies::of(samples),
            note: note.into(),
        }
    }
}

pub struct StageProfile {
    pub commands: usize,
    pub client_round_trip: StageRow,
    pub rows: Vec<StageRow>,
    pub apart: Vec<StageRow>,
    pub cache: teachin_commands::aggregate_cache::CacheStats,
}

impl StageProfile {
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "{} `addWordCard` mutations, one at a time, over {STUDENTS} students' decks (after \
             {WARM_UP} to warm up); µs per span, from its creation to its close.\n\n\
             | stage | count | mean µs | p50 µs | p95 µs | p99 µs | note |\n\
             |---|---|---|---|---|---|---|\n",
            self.commands
        );
        let row = |r: &StageRow| {
            format!(
                "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |\n",
                r.stage, r.count, r.mean, r.latencies.p50, r.latencies.p95, r.latencies.p99, r.note
            )
        };
        out.push_str(&row(&self.client_round_trip));
        for r in &self.rows {
            out.push_str(&row(r));
        }
        out.push_str("\nMeasured apart, in the bench process, with the manager's code:\n\n");
        out.push_str(
            "| stage | count | mean µs | p50 µs | p95 µs | p99 µs | note |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for r in &self.apart {
            out.push_str(&row(r));
        }
        out.push_str(&format!(
            "\nAggregate cache over the run: {} hits, {} misses.\n",
            self.cache.hits, self.cache.misses
        ));
        out
    }
}

fn note(stage: &str) -> &'static str {
    match stage {
        "request" => "in the manager: body, auth, GraphQL, response",
        "auth.jwt" => "HS256 verification and claims",
        "graphql.parse" => "parse, or the kept document",
        "graphql.validate" => "rules, depth, complexity",
        "graphql.execute" => "resolver: load, decide, seal, append",
        s if s.starts_with("command.load") => "the aggregate, cached or from the database",
        "command.decide" => "the aggregate's rules, sealing included",
        "pool.checkout" => "the append's connection (check included)",
        "pool.before_acquire" => "the not-in-a-transaction check, one round trip",
        "command.append" => "one statement, commit included (checkout included)",
        _ => "",
    }
}

/// Runs the profile against a fresh database, `commands` mutations after the warm-up;
/// `environment` goes to the manager on top of the run's own settings.
pub async fn run(
    settings: &Settings,
    commands: usize,
    environment: &[(String, String)],
) -> anyhow::Result<StageProfile> {
    let db = BenchDatabase::create(settings, 8).await?;
    let result = profile(settings, &db, commands, environment).await;
    db.drop_database().await?;
    result
}

async fn profile(
    settings: &Settings,
    db: &BenchDatabase,
    commands: usize,
    environment: &[(String, String)],
) -> anyhow::Result<StageProfile> {
    let secrets = Secrets::generate(settings);
    let namespace = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let workdir = std::env::temp_dir().join(format!("teachin-{namespace}"));
    std::fs::create_dir_all(&workdir)?;
    let free_port = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, accessor_port) = (free_port()?, free_port()?);
    let environment_of_roles = role_environment(
        settings,
        &db.url(),
        &namespace,
        &secrets,
        [port, accessor_port, 0],
        &workdir,
    );
    // The read side in a process of its own, as deployed: its work stays out of the profile.
    let accessor =
        std::process::Command::new(std::env::current_exe().context("locating the teachin binary")?)
            .arg("accessor")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(environment_of_roles.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting `teachin accessor`")?;
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _accessor = Killed(accessor);
    let mut variables: HashMap<String, String> = environment_of_roles
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    variables.insert(
        "TEACHIN_DB_MAX_CONNECTIONS".into(),
        super::deployment::MANAGER_DB_CONNECTIONS.to_string(),
    );
    variables.extend(environment.iter().cloned());
    let manager_settings = SettingsSource::new(|name| variables.get(name).cloned())
        .load()
        .map_err(|e| anyhow::anyhow!("the manager's settings: {e}"))?;

    // The manager on a runtime of its own, every thread of which reports to the layer.
    let timings = StageTimings::default();
    let dispatch = timings.dispatch();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The thread's default for its whole life: the guard is never dropped.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        })
        .build()?;
    runtime.spawn(async move {
        if let Err(error) =
            crate::roles::run(&manager_settings, &[crate::roles::Role::Manager]).await
        {
            eprintln!("the profiled manager stopped: {error:#}");
        }
    });
    let result = async {
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await?;
        let population = super::population::enroll(&db.pool, &secrets, STUDENTS, 0).await?;
        let manager = super::client::Manager::new(base)?;
        let mut cache_before = teachin_commands::aggregate_cache::stats();
        let mut round_trips = Vec::with_capacity(commands);
        for index in 0..WARM_UP + commands {
            if index == WARM_UP {
                timings.reset();
                cache_before = teachin_commands::aggregate_cache::stats();
            }
            let student = &population.students[index % STUDENTS];
            let started = Instant::now();
            let outcome = manager
                .mutate(
                    &student.token,
                    super::command_path::ADD_WORD_CARD,
                    json!({ "hebrew": format!("מילה {index}"), "english": format!("word {index}") }),
                )
                .await;
            anyhow::ensure!(
                outcome == super::client::Outcome::Ok,
                "a profiled mutation failed: {outcome:?}"
            );
            if index >= WARM_UP {
                round_trips.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        // The last spans close as their responses finish; give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cache_after = teachin_commands::aggregate_cache::stats();
        let mut samples = timings.take();
        let mut rows = Vec::new();
        let mut labels: Vec<String> = samples.keys().cloned().collect();
        labels.sort_by_key(|label| {
            let name = label.split(' ').next().unwrap_or_default();
            (STAGES.iter().position(|s| *s == name), label.clone())
        });
        for label in labels {
            let values = samples.remove(&label).unwrap_or_default();
            let note = note(&label);
            rows.push(StageRow::of(label, values, note));
        }
        let apart = measured_apart(settings, &secrets, db, &population.students[0], &namespace).await?;
        anyhow::Ok(StageProfile {
            commands,
            client_round_trip: StageRow::of(
                "client round trip",
                round_trips,
                "the bench's request sent → response read",
            ),
            rows,
            apart,
            cache: teachin_commands::aggregate_cache::CacheStats {
                hits: cache_after.hits - cache_before.hits,
                misses: cache_after.misses - cache_before.misses,
                evictions: cache_after.evictions - cache_before.evictions,
                bytes: cache_after.bytes,
            },
        })
    }
    .await;
    runtime.shutdown_background();
    let _ = std::fs::remove_dir_all(&workdir);
    result
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(90),
            "the profiled manager was not ready within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stages with no span in the manager, timed here with the same code and servers.
async fn measured_apart(
    settings: &Settings,
    secrets: &Secrets,
    db: &BenchDatabase,
    student: &super::population::Member,
    namespace: &str,
) -> anyhow::Result<Vec<StageRow>> {
    use teachin_domain::services::PersonalDataVault;
    let mut rows = Vec::new();

    // The revocation epoch, as every authenticated request reads it.
    let redis = crate::roles::redis(settings).await?;
    let revocations = teachin_api::auth::revocation::Revocations::new(redis, namespace);
    let who = teachin_api::auth::tokens::AccessTokens::new(
        secrets.jwt_secret.as_bytes(),
        &secrets.jwt_issuer,
        &secrets.jwt_audience,
    )?
    .verify(&student.token)
    .map_err(|e| anyhow::anyhow!("the bench's own token: {e}"))?;
    let mut samples = Vec::with_capacity(APART);
    for _ in 0..APART {
        let started = Instant::now();
        revocations.check(&who).await.context("revocation check")?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    rows.push(StageRow::of(
        "auth.revocation",
        samples,
        "Redis GET of the epoch, one round trip",
    ));

    // Parsing the mutation's text, as async-graphql does without a kept document.
    let mut samples = Vec::with_capacity(APART);
    for _ in 0..APART {
        let started = Instant::now();
        async_graphql::parser::parse_query(super::command_path::ADD_WORD_CARD)
            .context("parsing the mutation")?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    rows.push(StageRow::of(
        "graphql.parse, not kept",
        samples,
        "what `graphql.parse` costs without the kept document",
    ));

    // Sealing a card's text under the student's key (kept for sealing, as in the manager).
    let vault = teachin_commands::ports::PostgresVault::new(db.pool.clone());
    let mut samples = Vec::with_capacity(APART);
    for index in 0..APART {
        let started = Instant::now();
        vault
            .seal(student.id, &format!("word {index}"))
            .await
            .map_err(|e| anyhow::anyhow!("sealing: {e:?}"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    rows.push(StageRow::of(
        "seal",
        samples,
        "AES-GCM under the person's key (key cached)",
    ));

    // The commit's wait for the WAL flush: the same one-row insert into a logged table,
    // durable and not; the difference of the means is the wait.
    let mut connection = db.pool.acquire().await?;
    sqlx::query("CREATE TABLE bench_commit (n int)")
        .execute(&mut *connection)
        .await?;
    let mut means = Vec::new();
    for synchronous in ["on", "off"] {
        sqlx::query(&format!("SET synchronous_commit = {synchronous}"))
            .execute(&mut *connection)
            .await?;
        let mut samples = Vec::with_capacity(APART);
        for n in 0..APART as i32 {
            let started = Instant::now();
            sqlx::query("INSERT INTO bench_commit (n) VALUES ($1)")
                .bind(n)
                .execute(&mut *connection)
                .await?;
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let row = StageRow::of(
            format!("insert, synchronous_commit {synchronous}"),
            samples,
            String::new(),
        );
        means.push(row.mean);
        rows.push(row);
    }
    sqlx::query("RESET synchronous_commit")
        .execute(&mut *connection)
        .await?;
    if let [on, off] = means[..] {
        let wait = on - off;
        if let Some(durable) = rows.iter_mut().find(|r| r.stage.ends_with(" on")) {
            durable.note = format!("commit wait (WAL flush) ≈ {wait:.0} µs of it");
        }
    }
    Ok(rows)
}
