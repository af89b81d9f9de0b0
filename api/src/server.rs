//! The manager's HTTP surface put together: `/graphql` (POST queries and mutations, GET the
//! GraphiQL IDE in local mode, WebSocket subscriptions on `/graphql/ws`, see `subscriptions`), the SignalR hub
//! (`/hubs/notifications`), metrics,
//! and the cross-cutting layers — request ids, JSON access logs, CORS from configuration,
//! a body size limit, and a panic guard that answers `INTERNAL` instead of dropping the
//! connection.
//!
//! The GraphQL handler is written out rather than taken from `async-graphql-axum` so that
//! every failure before execution (oversized body, malformed JSON, a refused token) still
//! answers in GraphQL's shape with an `extensions.code`, and so that errors raised by
//! async-graphql itself (parse, validation, depth, argument types) get their code too.

use crate::access::Caller;
use crate::auth::revocation::RevocationError;
use crate::auth::tokens::TokenError;
use crate::error::{ApiError, Code};
use crate::graphql::people::UserLoader;
use crate::graphql::realtime::FeedFanout;
use crate::graphql::{ApiState, RequestInfo, TeachinSchema};
use crate::metrics::ApiMetrics;
use async_graphql::dataloader::DataLoader;
use async_graphql::http::GraphiQLSource;
use async_graphql::ServerError;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::time::Instant;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// The largest request body accepted on `/graphql`.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// How the manager's routes behave in this environment.
#[derive(Debug, Clone, Default)]
pub struct ManagerOptions {
    /// Serve the GraphiQL IDE on `GET /graphql` (local environments only).
    pub graphiql: bool,
    /// Origins allowed to call the API from a browser (the portals).
    pub cors_origins: Vec<String>,
    /// Take the client address from `X-Forwarded-For` (behind the ingress).
    pub trust_forwarded_for: bool,
}

#[derive(Clone)]
struct Manager {
    schema: TeachinSchema,
    state: ApiState,
    metrics: ApiMetrics,
    options: ManagerOptions,
}

/// The GraphQL schema with the process-wide data it needs.
pub fn schema(state: ApiState, fanout: FeedFanout) -> TeachinSchema {
    crate::graphql::builder().data(state).data(fanout).finish()
}

/// The manager's routes: GraphQL and metrics (health is mounted by the role runner).
pub fn router(
    state: ApiState,
    fanout: FeedFanout,
    metrics: ApiMetrics,
    options: ManagerOptions,
) -> Router {
    let manager = Manager {
        schema: schema(state.clone(), fanout),
        state: state.clone(),
        metrics: metrics.clone(),
        options: options.clone(),
    };
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            options
                .cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        ))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::HeaderName::from_static("x-csrf-token"),
            header::HeaderName::from_static("x-request-id"),
        ])
        .allow_credentials(true);
    let hub = match &state.hub {
        Some(hub) => crate::hub::router(hub.clone()),
        None => Router::new(),
    };
    Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(subscriptions))
        .with_state(manager)
        .merge(hub)
        .merge(crate::metrics::router_with(state.bus.pool().clone(), Some(metrics)))
        .layer(cors)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<Body>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn graphiql(State(m): State<Manager>) -> Response {
    if !m.options.graphiql {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "POST GraphQL requests to /graphql",
        )
            .into_response();
    }
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
    .into_response()
}

async fn graphql(
    State(m): State<Manager>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            let e = ApiError::bad_input(
                "body",
                format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            );
            m.metrics.observe("invalid", e.code.as_str(), 0.0);
            return error_response(StatusCode::PAYLOAD_TOO_LARGE, e);
        }
    };
    let request = match parse_request(&bytes) {
        Ok(r) => r,
        Err(e) => {
            m.metrics.observe("invalid", e.code.as_str(), 0.0);
            return error_response(StatusCode::BAD_REQUEST, e);
        }
    };
    let caller = match bearer(&headers) {
        None => Caller::Anonymous,
        Some(token) => match m.state.tokens.verify(token) {
            Ok(who) => match m.state.sessions.revocations().check(&who).await {
                Ok(()) => Caller::from_token(Some(who)),
                Err(e) => {
                    let (status, e) = match e {
                        RevocationError::Revoked => (StatusCode::UNAUTHORIZED, ApiError::from(e)),
                        RevocationError::Store(_) => {
                            (StatusCode::SERVICE_UNAVAILABLE, ApiError::from(e))
                        }
                    };
                    m.metrics.observe("invalid", e.code.as_str(), 0.0);
                    return error_response(status, e);
                }
            },
            Err(e) => {
                let message = match e {
                    TokenError::Expired => "the access token has expired; refresh it",
                    TokenError::Invalid(_) => "the access token is not valid",
                };
                let e = ApiError {
                    message: message.into(),
                    ..ApiError::unauthenticated()
                };
                m.metrics.observe("invalid", e.code.as_str(), 0.0);
                return error_response(StatusCode::UNAUTHORIZED, e);
            }
        },
    };
    let info = RequestInfo {
        caller,
        request_id: header_text(&headers, "x-request-id").unwrap_or_default(),
        client_ip: client_ip(&headers, peer, m.options.trust_forwarded_for),
        cookies: cookies(&headers),
        csrf_header: header_text(&headers, "x-csrf-token"),
    };
    let operation = root_field(&request.query);
    let request = request.data(info).data(DataLoader::new(
        UserLoader(m.state.read.clone()),
        tokio::spawn,
    ));
    let mut response = m.schema.execute(request).await;
    for error in &mut response.errors {
        give_code(error);
    }
    let outcome = response
        .errors
        .first()
        .and_then(|e| e.extensions.as_ref())
        .and_then(|x| x.get("code"))
        .map(|c| c.to_string().trim_matches('"').to_string())
        .unwrap_or_else(|| "ok".into());
    m.metrics
        .observe(&operation, &outcome, started.elapsed().as_secs_f64());
    let mut out = axum::Json(&response).into_response();
    for (name, value) in response.http_headers.iter() {
        out.headers_mut().append(name.clone(), value.clone());
    }
    out
}

/// A GraphQL request from JSON; batches are not accepted (one operation, one rule check).
fn parse_request(bytes: &Bytes) -> Result<async_graphql::Request, ApiError> {
    serde_json::from_slice::<async_graphql::Request>(bytes).map_err(|e| {
        ApiError::bad_input(
            "body",
            format!("the body is not a GraphQL request (JSON with `query`): {e}"),
        )
    })
}

/// The first root field of the request, if it is one of the schema's operations; the
/// metrics label, kept to a bounded set.
fn root_field(query: &str) -> String {
    use async_graphql::parser::types::{DocumentOperations, Selection};
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return "invalid".into();
    };
    let operation = match &doc.operations {
        DocumentOperations::Single(op) => Some(&op.node),
        DocumentOperations::Multiple(ops) => ops.values().next().map(|op| &op.node),
    };
    operation
        .and_then(|op| op.selection_set.node.items.first())
        .and_then(|sel| match &sel.node {
            Selection::Field(f) => Some(f.node.name.node.to_string()),
            _ => None,
        })
        .filter(|name| crate::access::rule_of(name).is_some() || name == "__schema")
        .unwrap_or_else(|| "other".into())
}

/// Errors async-graphql raises itself (parse, validation, limits, argument types) are the
/// client's: `BAD_USER_INPUT`, with the argument named when the message names one.
fn give_code(error: &mut ServerError) {
    let has_code = error
        .extensions
        .as_ref()
        .is_some_and(|x| x.get("code").is_some());
    if has_code {
        return;
    }
    let field = error
        .message
        .split('"')
        .nth(1)
        .filter(|_| error.message.contains("argument") || error.message.contains("variable"))
        .map(str::to_owned);
    let x = error.extensions.get_or_insert_with(Default::default);
    x.set("code", Code::BadUserInput.as_str());
    if let Some(field) = field {
        x.set("field", field);
    }
}

fn error_response(status: StatusCode, e: ApiError) -> Response {
    let mut error = serde_json::json!({
        "message": e.message,
        "extensions": { "code": e.code.as_str() },
    });
    if let Some(field) = e.field {
        error["extensions"]["field"] = field.into();
    }
    (
        status,
        axum::Json(serde_json::json!({ "data": null, "errors": [error] })),
    )
        .into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        ApiError {
            code: Code::Internal,
            message: "something went wrong on our side; try again".into(),
            field: None,
            retry_after: None,
        },
    )
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn cookies(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .map(|c| (c.name().to_owned(), c.value().to_owned()))
        .collect()
}

fn client_ip(headers: &HeaderMap, peer: SocketAddr, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for {
        // The ingress appends the address it saw; the first entry is the client's.
        if let Some(first) = header_text(headers, "x-forwarded-for")
            .and_then(|v| v.split(',').next().map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
        {
            return first;
        }
    }
    peer.ip().to_string()
}

/// Subscriptions over WebSocket (graphql-transport-ws, or the legacy protocol under its
/// `graphql-ws` name); what the socket admits, and when it closes, is `crate::subscriptions`.
async fn subscriptions(
    State(m): State<Manager>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = upgrade.protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS);
    let Some(protocol) = upgrade
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(|p| p.parse::<async_graphql::http::WebSocketProtocols>().ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            "offer the graphql-transport-ws (or graphql-ws) subprotocol",
        )
            .into_response();
    };
    upgrade
        .max_message_size(crate::subscriptions::MAX_FRAME_BYTES)
        .max_frame_size(crate::subscriptions::MAX_FRAME_BYTES)
        .read_buffer_size(crate::hub::transport::SOCKET_READ_BUFFER)
        .on_upgrade(move |socket| {
            crate::subscriptions::serve(socket, m.schema, m.state, protocol, peer)
        })
}
