//! The GraphQL schema the three portals share: queries read the read models, mutations
//! issue commands through the command bus, subscriptions carry the realtime feed and paced
//! session replays.
//!
//! One module per feature area, each contributing a query, a mutation and (where it has
//! one) a subscription object, merged here. Every resolver starts by calling
//! [`authorize`] with its operation name, so the rules live in `crate::access` only.
//! Limits (depth, complexity, page size) are set here, in `schema`; what one document may
//! ask for (cost with page sizes, model calls, introspection) is `limits`.

mod auth;
mod classes;
mod email;
mod generation;
mod insights;
mod learning;
pub mod limits;
mod media;
pub(crate) mod people;
mod practice;
pub mod realtime;
mod tutor;

use crate::access::{self, Caller, Subject};
use crate::auth::rate_limit::{Budget, RateLimiter};
use crate::auth::sessions::RefreshSessions;
use crate::auth::tokens::AccessTokens;
use crate::error::{ApiError, ApiResult};
use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, MergedObject, MergedSubscription, OutputType, Schema, SimpleObject};
use teachin_commands::{CommandBus, CommandContext};
use teachin_projections::analytics::Analytics;
use teachin_projections::queries::paging::{Page, PageRequest};
use teachin_projections::queries::ReadModels;
use teachin_projections::replay::SessionReplay;
use uuid::Uuid;

/// Deepest query accepted (the portals' deepest is 6).
pub const MAX_DEPTH: usize = 12;
/// Most expensive query accepted (one point per field, list fields times their page size).
pub const MAX_COMPLEXITY: usize = 2_000;

/// Everything resolvers need, shared by all requests.
#[derive(Clone)]
pub struct ApiState {
    pub bus: CommandBus,
    pub read: ReadModels,
    pub replay: SessionReplay,
    pub analytics: Analytics,
    pub tokens: AccessTokens,
    pub sessions: RefreshSessions,
    pub limiter: RateLimiter,
    /// Finds the account of an email address at sign-in.
    pub claims: std::sync::Arc<teachin_commands::ports::PostgresClaims>,
    pub policy: SessionPolicy,
    /// The SignalR hub of this replica (online presence); `None` where no hub runs.
    pub hub: Option<crate::hub::NotificationHub>,
    /// Where the realtime feed comes from (for subscriptions).
    pub redis_url: String,
    pub namespace: String,
    /// Avatars: a local directory or Azure Blob (`graphql/media.rs`, `crate::media`); `None`
    /// where neither is configured.
    pub avatars: Option<teachin_workers::media::AvatarStore>,
    /// Speech tokens for the browser; `None` where no Speech key is configured.
    pub speech: Option<teachin_workers::speech::SpeechTokens>,
    /// Daily quotas on model calls and emails (`crate::quota`).
    pub quotas: crate::quota::Quotas,
    /// Schema introspection (`__schema`, `__type`) is answered: local mode only.
    pub introspection: bool,
}

/// How sessions are delivered to browsers, and how fast sign-up, sign-in and refresh may be
/// attempted (`auth::rate_limit`).
#[derive(Debug, Clone)]
pub struct SessionPolicy {
    /// `Secure` on cookies: true except on plain-HTTP local setups.
    pub secure_cookies: bool,
    /// `SameSite` of the refresh and CSRF cookies: `Strict` where the portals share the API's
    /// site; `None` only when configured for portals on another site.
    pub same_site: cookie::SameSite,
    /// Failed sign-ins per client address (successes never count).
    pub login_budget: Budget,
    /// How an account is slowed down after failed sign-ins, from any address.
    pub login_backoff: crate::auth::rate_limit::Backoff,
    /// Sign-ups per client address.
    pub signup_budget: Budget,
    pub refresh_budget: Budget,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            secure_cookies: true,
            same_site: cookie::SameSite::Strict,
            login_budget: DEFAULT_LOGIN_BUDGET,
            login_backoff: crate::auth::rate_limit::Backoff::default(),
            signup_budget: DEFAULT_SIGNUP_BUDGET,
            refresh_budget: Budget::per_minute(5),
        }
    }
}

/// 100 failed sign-ins per address in 10 minutes: far more than a school's typos, far fewer
/// than a password spray needs.
pub const DEFAULT_LOGIN_BUDGET: Budget = Budget {
    max: 100,
    window: std::time::Duration::from_secs(600),
};
/// 60 sign-ups per address an hour: two classes signing up in one lesson, not a flood.
pub const DEFAULT_SIGNUP_BUDGET: Budget = Budget {
    max: 60,
    window: std::time::Duration::from_secs(3600),
};

/// What the HTTP layer learned about one request.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    pub caller: Caller,
    pub request_id: String,
    /// The client's address, for rate limits.
    pub client_ip: String,
    /// The `Cookie` header, parsed.
    pub cookies: Vec<(String, String)>,
    /// The `X-CSRF-Token` header.
    pub csrf_header: Option<String>,
}

impl RequestInfo {
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.cookies
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(MergedObject, Default)]
pub struct Query(
    people::PeopleQuery,
    classes::ClassQuery,
    tutor::TutorQuery,
    practice::PracticeQuery,
    learning::LearningQuery,
    insights::InsightQuery,
    media::MediaQuery,
);

#[derive(MergedObject, Default)]
pub struct Mutation(
    auth::AuthMutation,
    people::PeopleMutation,
    classes::ClassMutation,
    tutor::TutorMutation,
    practice::PracticeMutation,
    learning::LearningMutation,
    media::MediaMutation,
    generation::GenerationMutation,
    email::EmailMutation,
);

#[derive(MergedSubscription, Default)]
pub struct Subscription(realtime::RealtimeSubscription);

pub type TeachinSchema = Schema<Query, Mutation, Subscription>;

/// The schema definition (SDL), committed as `api/schema.graphql`.
pub fn sdl() -> String {
    builder().finish().sdl()
}

pub(crate) fn builder() -> async_graphql::SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
    .limit_recursive_depth(32)
    // First, so it judges every document, parsed now or taken from the cache after it.
    .extension(limits::DocumentLimits)
    .extension(crate::parsed_documents::ParsedDocuments::default())
}

// ---- Helpers every area uses -------------------------------------------------------------

pub(crate) fn state<'a>(ctx: &Context<'a>) -> &'a ApiState {
    ctx.data_unchecked::<ApiState>()
}

pub(crate) fn request<'a>(ctx: &Context<'a>) -> &'a RequestInfo {
    ctx.data_unchecked::<RequestInfo>()
}

/// Checks the rule of `operation` for this request's caller. For privileged operations
/// (`access::CURRENT_ROLE`) the caller's role is read from the store first, and the caller
/// returned carries it.
pub(crate) async fn authorize(
    ctx: &Context<'_>,
    operation: &str,
    subject: Subject,
) -> ApiResult<Caller> {
    let mut caller = request(ctx).caller;
    if let Caller::User { id, .. } = caller {
        if access::needs_current_role(operation) {
            caller = current_caller(state(ctx), id).await?;
        }
    }
    access::authorize(&state(ctx).read, caller, operation, subject).await
}

/// The caller as the event store knows them now: their current role, or `UNAUTHENTICATED`
/// for someone erased (or never registered).
async fn current_caller(api: &ApiState, id: teachin_domain::ids::UserId) -> ApiResult<Caller> {
    let user = api
        .bus
        .reader()
        .load::<teachin_domain::user::User>(&id.to_string())
        .await
        .map_err(ApiError::internal)?;
    if !user.is_registered() || user.is_erased() {
        return Err(ApiError::unauthenticated());
    }
    Ok(Caller::User {
        id,
        role: user.role(),
    })
}

/// The signed-in caller's id (after `authorize` let a `SignedIn` rule through).
pub(crate) fn signed_in(caller: Caller) -> ApiResult<teachin_domain::ids::UserId> {
    caller.user_id().ok_or_else(ApiError::unauthenticated)
}

/// The command context of a mutation: who, as part of which request, with the client's
/// idempotency key if it sent one.
pub(crate) fn command_context(
    ctx: &Context<'_>,
    caller: Caller,
    idempotency_key: Option<&str>,
) -> ApiResult<CommandContext> {
    let info = request(ctx);
    let mut command = CommandContext::new(caller.actor(), format!("request:{}", info.request_id));
    // The request id (a UUID unless the client chose its own) ties the events of one
    // request, and what follows from them, to its log lines.
    if let Ok(id) = Uuid::parse_str(&info.request_id) {
        command = command.with_correlation_id(id);
    }
    if let Some(key) = idempotency_key {
        let key = key.trim();
        if key.is_empty() || key.len() > 128 {
            return Err(ApiError::bad_input(
                "idempotencyKey",
                "an idempotency key has 1 to 128 characters",
            ));
        }
        command = command.with_idempotency_key(key);
    }
    Ok(command)
}

/// Runs one command for a mutation and reports what it changed.
pub(crate) async fn execute<A>(
    ctx: &Context<'_>,
    caller: Caller,
    id: Uuid,
    command: A::Command,
    idempotency_key: Option<&str>,
) -> ApiResult<Changed>
where
    A: teachin_commands::bus::BusAggregate,
    A::Error: teachin_domain::error::DomainError,
{
    let context = command_context(ctx, caller, idempotency_key)?;
    let receipt = state(ctx)
        .bus
        .execute::<A>(&id.to_string(), command, &context)
        .await?;
    Ok(Changed::from(id, receipt))
}

/// The id a creating mutation gives its new aggregate. With an idempotency key it is derived
/// from the caller, the operation and the key, so a retry targets the same aggregate and the
/// bus answers it with the first result; without one it is fresh.
pub(crate) fn new_id(caller: Caller, operation: &str, idempotency_key: Option<&str>) -> Uuid {
    match idempotency_key {
        Some(key) => Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("teachin:{}:{operation}:{}", caller.actor(), key.trim()).as_bytes(),
        ),
        None => Uuid::new_v4(),
    }
}

/// A page request from `first` / `after`, with a clear error for a bad cursor.
pub(crate) fn page_request(first: Option<i32>, after: Option<&str>) -> ApiResult<PageRequest> {
    PageRequest::new(first.map(i64::from), after)
        .map_err(|_| ApiError::bad_input("after", "the cursor is not one this API issued"))
}

/// The extra fields every connection carries.
#[derive(SimpleObject)]
pub struct PageTotals {
    /// Rows matching the filters, across every page.
    pub total_count: i64,
}

pub type PageConnection<T> = Connection<String, T, PageTotals, EmptyFields>;

/// A read-model page as a Relay connection.
pub(crate) fn connection<T: OutputType>(page: Page<T>) -> PageConnection<T> {
    let mut conn = Connection::with_additional_fields(
        false,
        page.has_next_page,
        PageTotals {
            total_count: page.total_count,
        },
    );
    conn.edges.extend(
        page.items
            .into_iter()
            .zip(page.cursors)
            .map(|(item, cursor)| Edge::new(cursor, item)),
    );
    conn
}

/// The outcome of a mutation that changed an aggregate.
#[derive(SimpleObject, Debug, Clone)]
pub struct Changed {
    /// The aggregate the command went to.
    pub id: Uuid,
    /// Events the command appended (for a retried command, those of its first run).
    pub events: i32,
    /// True when this answer is the replay of an earlier run with the same idempotency key.
    pub replayed: bool,
}

impl Changed {
    pub(crate) fn from<A: cqrs_es::Aggregate>(
        id: Uuid,
        r: teachin_commands::CommandReceipt<A>,
    ) -> Self {
        Self {
            id,
            events: r.events.len() as i32,
            replayed: r.replayed,
        }
    }
}
