//! `/metrics` in the Prometheus text format. The projection figures are read from the
//! checkpoint table at scrape time, so every replica reports the same truth whichever of them
//! owns a projection: halted (with the alert-worthy `1`), events applied, and backlog. The
//! manager adds its own request figures ([`ApiMetrics`], prometheus-client) in front.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use std::fmt::Write;
use std::sync::Arc;
use teachin_commands::BusStats;
use teachin_projections::checkpoint::{self, Status, LAG_COUNT_LIMIT};
use teachin_projections::read_models;

pub fn router(pool: PgPool) -> Router {
    router_with(pool, None)
}

/// `/metrics` with the projection figures and, for the manager, its request figures.
pub fn router_with(pool: PgPool, api: Option<ApiMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state((pool, api))
}

/// The manager's own figures: requests by GraphQL operation and outcome, their latency,
/// command conflicts answered to clients, and connected realtime clients.
#[derive(Clone)]
pub struct ApiMetrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
    conflicts: Counter,
    conflict_retries: Counter,
    command_appends: Counter,
    appended_commands: Counter,
    /// Read at scrape time: the command bus's figures.
    bus_stats_source: Option<Arc<dyn Fn() -> BusStats + Send + Sync>>,
    connections: Gauge,
    /// Read at scrape time: the hub's count of connected clients.
    connections_source: Option<Arc<dyn Fn() -> usize + Send + Sync>>,
    /// More figures rendered at scrape time by the role (the queues').
    extra: Option<ExtraMetrics>,
    quota_refusals: QuotaRefusals,
}

/// Requests refused by a daily quota (`crate::quota`), by the caller's role and the kind of
/// quota (`requests`, `tokens`, `emails`). Cheap to clone; clones count together.
#[derive(Clone, Default)]
pub struct QuotaRefusals(Family<QuotaLabels, Counter>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuotaLabels {
    role: String,
    kind: String,
}

impl QuotaRefusals {
    /// Counts one refusal. Both labels come from bounded sets (three roles, three kinds).
    pub fn refused(&self, role: &str, kind: &str) {
        self.0
            .get_or_create(&QuotaLabels {
                role: role.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// Renders more Prometheus text at scrape time.
pub type ExtraMetrics = Arc<dyn Fn() -> futures::future::BoxFuture<'static, String> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for ApiMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("teachin");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<OperationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let conflicts = Counter::default();
        let conflict_retries = Counter::default();
        let command_appends = Counter::default();
        let appended_commands = Counter::default();
        let connections = Gauge::default();
        let quota_refusals = QuotaRefusals::default();
        registry.register(
            "quota_refusals",
            "Requests refused because a daily quota was spent, by role and kind (requests, tokens, emails)",
            quota_refusals.0.clone(),
        );
        registry.register(
            "http_requests",
            "GraphQL requests by root operation and outcome (ok or the error code)",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "GraphQL request latency by root operation",
            latency.clone(),
        );
        registry.register(
            "command_conflicts",
            "Mutations answered CONFLICT (concurrent changes, duplicates)",
            conflicts.clone(),
        );
        registry.register(
            "command_conflict_retries",
            "Optimistic-concurrency conflicts the command bus retried (contended streams)",
            conflict_retries.clone(),
        );
        registry.register(
            "command_appends",
            "Appends that stored events (one statement, one commit each)",
            command_appends.clone(),
        );
        registry.register(
            "command_appended_commands",
            "Commands those appends stored: more than the appends when hot streams batch",
            appended_commands.clone(),
        );
        registry.register(
            "signalr_connections",
            "Realtime clients connected to this replica",
            connections.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            latency,
            conflicts,
            conflict_retries,
            command_appends,
            appended_commands,
            bus_stats_source: None,
            connections,
            connections_source: None,
            extra: None,
            quota_refusals,
        }
    }
}

impl ApiMetrics {
    /// Records one request. `operation` must come from a bounded set (the schema's fields).
    pub fn observe(&self, operation: &str, outcome: &str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.latency
            .get_or_create(&OperationLabels {
                operation: operation.to_owned(),
            })
            .observe(seconds);
        if outcome == "CONFLICT" {
            self.conflicts.inc();
        }
    }

    /// The quota-refusal counter, for `crate::quota::Quotas` to count into.
    pub fn quota_refusals(&self) -> QuotaRefusals {
        self.quota_refusals.clone()
    }

    /// Reports `count()` as the connected-clients gauge at every scrape.
    pub fn with_connections(mut self, count: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        self.connections_source = Some(Arc::new(count));
        self
    }

    /// Reports the command bus's figures (monotonic) as its counters at every scrape.
    pub fn with_bus_stats(mut self, stats: impl Fn() -> BusStats + Send + Sync + 'static) -> Self {
        self.bus_stats_source = Some(Arc::new(stats));
        self
    }

    /// Adds the figures `render` produces at every scrape.
    pub fn with_extra(mut self, render: ExtraMetrics) -> Self {
        self.extra = Some(render);
        self
    }

    async fn render(&self) -> String {
        if let Some(count) = &self.connections_source {
            self.connections.set(count() as i64);
        }
        if let Some(stats) = &self.bus_stats_source {
            let stats = stats();
            for (counter, now) in [
                (&self.conflict_retries, stats.conflict_retries),
                (&self.command_appends, stats.appends),
                (&self.appended_commands, stats.appended_commands),
            ] {
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let extra = match &self.extra {
            Some(render) => render().await,
            None => String::new(),
        };
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        // The projection figures follow; drop the terminating `# EOF` of OpenMetrics.
        let cache = teachin_commands::aggregate_cache::metrics_text();
        format!(
            "{}\n{cache}{extra}",
            out.trim_end().trim_end_matches("# EOF").trim_end()
        )
    }
}

async fn metrics(State((pool, api)): State<(PgPool, Option<ApiMetrics>)>) -> impl IntoResponse {
    let own = match api {
        Some(m) => m.render().await,
        None => String::new(),
    };
    match render(&pool)
        .await
        .map(|projections| format!("{own}{projections}"))
    {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            body,
        ),
        Err(e) => {
            tracing::warn!(error = %e, "metrics unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                String::from("# database unreachable\n"),
            )
        }
    }
}

/// The projection metrics as Prometheus text.
pub async fn render(pool: &PgPool) -> Result<String, sqlx::Error> {
    let stored = checkpoint::all(pool).await?;
    let mut halted = String::new();
    let mut applied = String::new();
    let mut lag = String::new();
    for projection in read_models::all() {
        let name = projection.name();
        let cp = stored
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .unwrap_or_else(|| checkpoint::Checkpoint::not_started(name));
        let backlog = checkpoint::lag_events(pool, cp.position, LAG_COUNT_LIMIT).await?;
        let is_halted = u8::from(cp.status == Status::Halted);
        let _ = writeln!(
            halted,
            "teachin_projection_halted{{projection=\"{name}\"}} {is_halted}"
        );
        let _ = writeln!(
            applied,
            "teachin_projection_events_applied_total{{projection=\"{name}\"}} {}",
            cp.events_applied
        );
        let _ = writeln!(
            lag,
            "teachin_projection_lag_events{{projection=\"{name}\"}} {backlog}"
        );
    }
    Ok(format!(
        "# HELP teachin_projection_halted 1 when the projection stopped on an event it cannot apply (see `teachin projections status`).\n\
         # TYPE teachin_projection_halted gauge\n{halted}\
         # HELP teachin_projection_events_applied_total Events the projection has consumed since its last rebuild.\n\
         # TYPE teachin_projection_events_applied_total counter\n{applied}\
         # HELP teachin_projection_lag_events Events committed after the projection's checkpoint (counted up to {LAG_COUNT_LIMIT}).\n\
         # TYPE teachin_projection_lag_events gauge\n{lag}"
    ))
}
