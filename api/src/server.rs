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
//! It also insists on `Content-Type: application/json`, which async-graphql's own extractor
//! does not (it reads any non-multipart body as JSON): a `text/plain` or form POST is what a
//! page on another site can send with the browser's cookies without asking CORS first.
//!
//! The client's address (for rate limits) is the peer's, or behind proxies the entry of
//! `X-Forwarded-For` that the outermost trusted proxy wrote ([`TrustedProxies`]).

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
use std::net::{IpAddr, SocketAddr};
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
    /// How many proxies in front of the manager append to `X-Forwarded-For` (behind the
    /// ingress: one); none takes the peer's address.
    pub trust_forwarded_for: TrustedProxies,
}

/// The proxies in front of the manager that append the address they saw to
/// `X-Forwarded-For`: the client is the entry the outermost of them wrote, `hops` from the
/// right. Entries further left were written by the client itself and prove nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    pub hops: usize,
}

impl TrustedProxies {
    /// No proxy: the peer is the client.
    pub const NONE: TrustedProxies = TrustedProxies { hops: 0 };

    /// The client's address: the `hops`-th `X-Forwarded-For` entry from the right (all the
    /// header's lines read as one list), or the peer's when the header is absent or that
    /// entry is not an address (a proxy that did not append, a forged header).
    pub fn client_ip(self, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
        if self.hops == 0 {
            return peer.ip();
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        entries
            .len()
            .checked_sub(self.hops)
            .and_then(|i| forwarded_address(entries[i]))
            .unwrap_or_else(|| peer.ip())
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;
    /// A number of hops, or `true` (one: the ingress) / `false` (none).
    fn from_str(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(TrustedProxies { hops: 1 }),
            "false" => Ok(Self::NONE),
            n => n
                .parse()
                .map(|hops| TrustedProxies { hops })
                .map_err(|_| format!("`{raw}` is not true, false or a number of proxies")),
        }
    }
}

/// An `X-Forwarded-For` entry as an address: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or
/// `[2001:db8::1]:5678`.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
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
    if !is_json(&headers) {
        let e = ApiError::bad_input(
            "content-type",
            "send GraphQL requests as Content-Type: application/json",
        );
        m.metrics.observe("invalid", e.code.as_str(), 0.0);
        return error_response(StatusCode::UNSUPPORTED_MEDIA_TYPE, e);
    }
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
        client_ip: m
            .options
            .trust_forwarded_for
            .client_ip(&headers, peer)
            .to_string(),
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

/// Whether the body is declared JSON (`application/json`, parameters such as `charset`
/// allowed). Anything else is refused before the body is read.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    const PEER: &str = "10.0.0.5:40000";

    fn client(hops: usize, lines: &[&str]) -> String {
        TrustedProxies { hops }
            .client_ip(&forwarded(lines), PEER.parse().unwrap())
            .to_string()
    }

    #[test]
    fn behind_one_proxy_the_right_most_entry_is_the_client() {
        // ingress-nginx appends the address it saw; what the client wrote stays on the left.
        assert_eq!(client(1, &["203.0.113.7"]), "203.0.113.7");
        assert_eq!(client(1, &["1.1.1.1, 2.2.2.2, 203.0.113.7"]), "203.0.113.7");
        assert_eq!(client(1, &["1.1.1.1", "203.0.113.7"]), "203.0.113.7");
        assert_eq!(client(1, &["spoofed, [2001:db8::7]:4711"]), "2001:db8::7");
        assert_eq!(client(1, &["203.0.113.7:4711"]), "203.0.113.7");
    }

    #[test]
    fn spoofed_left_entries_are_ignored() {
        // Each request forges a new left-most address; the client stays one client.
        let clients: std::collections::HashSet<String> = (0..50)
            .map(|i| client(1, &[&format!("198.51.100.{i}, 203.0.113.7")]))
            .collect();
        assert_eq!(clients.len(), 1);
        assert!(clients.contains("203.0.113.7"));
        // Two trusted hops: the entry the outer proxy wrote, whatever the client put before.
        assert_eq!(
            client(2, &["6.6.6.6, 203.0.113.7, 10.1.0.9"]),
            "203.0.113.7"
        );
    }

    #[test]
    fn without_a_usable_entry_the_peer_is_the_client() {
        assert_eq!(client(0, &["203.0.113.7"]), "10.0.0.5", "not trusted");
        assert_eq!(client(1, &[]), "10.0.0.5");
        assert_eq!(
            client(2, &["203.0.113.7"]),
            "10.0.0.5",
            "fewer entries than proxies"
        );
        assert_eq!(client(1, &["1.1.1.1, not-an-address"]), "10.0.0.5");
    }

    #[test]
    fn trusted_proxies_parse() {
        assert_eq!("true".parse(), Ok(TrustedProxies { hops: 1 }));
        assert_eq!("false".parse(), Ok(TrustedProxies::NONE));
        assert_eq!("2".parse(), Ok(TrustedProxies { hops: 2 }));
        assert!("yes".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn only_json_bodies_are_accepted() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("text/plain; charset=application/json"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("multipart/form-data; boundary=x"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
