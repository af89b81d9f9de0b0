//! Azure SignalR Service in serverless mode: when `Azure__SignalR__ConnectionString` is set,
//! browsers hold their WebSockets with Azure instead of with the manager, and the manager
//! pushes through Azure's data-plane REST API.
//!
//! Why serverless (REST) rather than Azure's "default" mode: default mode needs the manager
//! to keep a persistent server connection speaking Azure's private service protocol; REST
//! needs only HTTPS calls, which any replica can make at any time. Two things follow:
//!
//! - **negotiate redirects**: the hub answers `{url, accessToken}`; the stock client then
//!   negotiates with `url` itself, presenting `accessToken` (HS256 signed with the access
//!   key, `aud` = `url`, `nameid` = the user id, which is what Azure's user-targeted sends
//!   match on).
//! - **pushes are REST calls** authorised by a short JWT per request whose `aud` is the
//!   request URL: `POST /api/v1/hubs/{hub}/users/{user}`, `POST …/groups/{group}` (body
//!   `{target, arguments}`), `PUT …/groups/{group}/users/{user}` to add an admin to `Admins`
//!   and `DELETE` of the same to take a former admin out (Azure keeps memberships across
//!   connections, so a demoted admin would otherwise keep receiving admin pushes).
//!
//! The signing key is the access key's text as UTF-8 bytes (not base64-decoded), as Azure's
//! own SDK does. The REST base URL is injectable so tests can point it at a local server.

use chrono::Utc;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use teachin_domain::ids::UserId;

/// The hub name Azure knows this hub by.
pub const AZURE_HUB: &str = "notifications";

/// How long a REST call's token is valid (it is made per request).
const REST_TOKEN_TTL: Duration = Duration::from_secs(5 * 60);
/// How long one REST call may take.
const REST_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per REST call for transient failures (network, 429, 5xx).
const REST_ATTEMPTS: u32 = 3;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum AzureError {
    #[error("the Azure SignalR connection string is not usable: {0}")]
    ConnectionString(String),
    #[error("Azure SignalR answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("calling Azure SignalR failed: {0}")]
    Http(String),
    #[error("calling Azure SignalR timed out")]
    Timeout,
}

/// A configured Azure SignalR Service (cheap to clone).
#[derive(Clone)]
pub struct AzureSignalR {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where browsers connect (`ClientEndpoint`, else `Endpoint`), without a trailing slash.
    client_endpoint: String,
    /// Where REST calls go (`ServerEndpoint`, else `Endpoint`, or the injected base).
    api_base: String,
    access_key: String,
    hub: String,
    http: HttpClient,
}

impl std::fmt::Debug for AzureSignalR {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSignalR")
            .field("client_endpoint", &self.inner.client_endpoint)
            .field("api_base", &self.inner.api_base)
            .field("hub", &self.inner.hub)
            .finish_non_exhaustive()
    }
}

/// What a redirecting negotiate answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    pub url: String,
    pub access_token: String,
}

#[derive(Serialize)]
struct ClientClaims<'a> {
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
    nameid: String,
}

#[derive(Serialize)]
struct ServerClaims<'a> {
    aud: &'a str,
    exp: i64,
    iat: i64,
    nbf: i64,
}

impl AzureSignalR {
    /// Parses `Endpoint=https://…;AccessKey=…;Version=1.0;[Port=…;][ClientEndpoint=…;]
    /// [ServerEndpoint=…;]`. Managed-identity connection strings (`AuthType=azure.msi`)
    /// are refused: they need an Entra token source this service does not have.
    pub fn from_connection_string(text: &str) -> Result<Self, AzureError> {
        let bad = |why: &str| AzureError::ConnectionString(why.to_owned());
        let mut endpoint = None;
        let mut access_key = None;
        let mut port = None;
        let mut client_endpoint = None;
        let mut server_endpoint = None;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| bad("every part must be KEY=VALUE"))?;
            match key.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_owned()),
                "accesskey" => access_key = Some(value.trim().to_owned()),
                "port" => {
                    port = Some(
                        value
                            .trim()
                            .parse::<u16>()
                            .map_err(|_| bad("Port must be a number"))?,
                    )
                }
                "clientendpoint" => client_endpoint = Some(value.trim().to_owned()),
                "serverendpoint" => server_endpoint = Some(value.trim().to_owned()),
                "version" if value.trim() != "1.0" => return Err(bad("only Version=1.0 is known")),
                "authtype" if !value.trim().eq_ignore_ascii_case("accesskey") => {
                    return Err(bad("only access-key authentication is supported"))
                }
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or_else(|| bad("Endpoint is missing"))?;
        let access_key = access_key
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("AccessKey is missing"))?;
        let endpoint = with_port(&checked_url(&endpoint)?, port);
        let client_endpoint = match client_endpoint {
            Some(url) => checked_url(&url)?,
            None => endpoint.clone(),
        };
        let api_base = match server_endpoint {
            Some(url) => checked_url(&url)?,
            None => endpoint,
        };
        Ok(AzureSignalR {
            inner: Arc::new(Inner {
                client_endpoint,
                api_base,
                access_key,
                hub: AZURE_HUB.to_owned(),
                http: http_client()?,
            }),
        })
    }

    /// The same service with REST calls sent to `base` (`http://127.0.0.1:PORT` in tests).
    /// Tokens are still signed for the URL actually called.
    pub fn with_api_base(self, base: impl Into<String>) -> Self {
        let inner = &self.inner;
        AzureSignalR {
            inner: Arc::new(Inner {
                client_endpoint: inner.client_endpoint.clone(),
                api_base: base.into().trim_end_matches('/').to_owned(),
                access_key: inner.access_key.clone(),
                hub: inner.hub.clone(),
                http: inner.http.clone(),
            }),
        }
    }

    pub fn hub(&self) -> &str {
        &self.inner.hub
    }

    /// Where browsers are sent: `{endpoint}/client/?hub={hub}`.
    pub fn client_url(&self) -> String {
        format!(
            "{}/client/?hub={}",
            self.inner.client_endpoint, self.inner.hub
        )
    }

    /// The negotiate redirect for `user`, valid until `expires_at` (the user's own access
    /// token's expiry, so Azure never accepts a connection Teachin would refuse).
    pub fn redirect(&self, user: UserId, expires_at: chrono::DateTime<Utc>) -> Redirect {
        let url = self.client_url();
        let now = Utc::now().timestamp();
        let claims = ClientClaims {
            aud: &url,
            exp: expires_at.timestamp(),
            iat: now,
            nbf: now,
            nameid: user.to_string(),
        };
        let access_token = self.sign(&claims);
        Redirect { url, access_token }
    }

    /// Calls `method(arguments…)` on every connection of `user`.
    pub async fn send_to_user(
        &self,
        user: UserId,
        method: &str,
        arguments: &[Value],
    ) -> Result<(), AzureError> {
        let path = format!(
            "/api/v1/hubs/{}/users/{}",
            segment(&self.inner.hub),
            segment(&user.to_string())
        );
        let body = json!({ "target": method, "arguments": arguments });
        self.call(Method::POST, &path, Some(body)).await
    }

    /// Calls `method(arguments…)` on every connection in `group`.
    pub async fn send_to_group(
        &self,
        group: &str,
        method: &str,
        arguments: &[Value],
    ) -> Result<(), AzureError> {
        let path = format!(
            "/api/v1/hubs/{}/groups/{}",
            segment(&self.inner.hub),
            segment(group)
        );
        let body = json!({ "target": method, "arguments": arguments });
        self.call(Method::POST, &path, Some(body)).await
    }

    /// Adds every present and future connection of `user` to `group`.
    pub async fn add_user_to_group(&self, group: &str, user: UserId) -> Result<(), AzureError> {
        let path = format!(
            "/api/v1/hubs/{}/groups/{}/users/{}",
            segment(&self.inner.hub),
            segment(group),
            segment(&user.to_string())
        );
        self.call(Method::PUT, &path, None).await
    }

    /// Takes `user` out of `group` (a 404-free no-op when they were not in it).
    pub async fn remove_user_from_group(
        &self,
        group: &str,
        user: UserId,
    ) -> Result<(), AzureError> {
        let path = format!(
            "/api/v1/hubs/{}/groups/{}/users/{}",
            segment(&self.inner.hub),
            segment(group),
            segment(&user.to_string())
        );
        self.call(Method::DELETE, &path, None).await
    }

    /// Closes every connection `user` holds with Azure (revocation: logout, role change,
    /// erasure). The v1 API has no such call, so this one uses the 2022-06-01 API.
    pub async fn close_user_connections(
        &self,
        user: UserId,
        reason: &str,
    ) -> Result<(), AzureError> {
        let path = format!(
            "/api/hubs/{}/users/{}/:closeConnections?api-version=2022-06-01&reason={}",
            segment(&self.inner.hub),
            segment(&user.to_string()),
            segment(reason)
        );
        self.call(Method::POST, &path, None).await
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.inner.access_key.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), AzureError> {
        let url = format!("{}{path}", self.inner.api_base);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut attempt = 1;
        loop {
            match self.call_once(&method, &url, &body).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt < REST_ATTEMPTS && is_transient(&error) => {
                    tracing::debug!(%error, attempt, %url, "azure signalr: retrying");
                    tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt - 1))).await;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    async fn call_once(&self, method: &Method, url: &str, body: &str) -> Result<(), AzureError> {
        let now = Utc::now().timestamp();
        // The audience is the request URL without its query, as Azure's own SDK signs it.
        let audience = url.split_once('?').map_or(url, |(path, _)| path);
        let token = self.sign(&ServerClaims {
            aud: audience,
            exp: now + REST_TOKEN_TTL.as_secs() as i64,
            iat: now,
            nbf: now,
        });
        let mut request = Request::builder()
            .method(method.clone())
            .uri(url)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        if !body.is_empty() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| AzureError::Http(e.to_string()))?;
        let response = tokio::time::timeout(REST_TIMEOUT, self.inner.http.request(request))
            .await
            .map_err(|_| AzureError::Timeout)?
            .map_err(|e| AzureError::Http(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = tokio::time::timeout(REST_TIMEOUT, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(500)
                    .collect()
            })
            .unwrap_or_default();
        Err(AzureError::Status { status, body })
    }
}

fn is_transient(error: &AzureError) -> bool {
    match error {
        AzureError::Http(_) | AzureError::Timeout => true,
        AzureError::Status { status, .. } => {
            status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
        }
        AzureError::ConnectionString(_) => false,
    }
}

fn http_client() -> Result<HttpClient, AzureError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| AzureError::Http(format!("TLS setup: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

fn checked_url(url: &str) -> Result<String, AzureError> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(AzureError::ConnectionString(format!(
            "`{url}` is not an http(s) URL"
        )));
    }
    Ok(url.to_owned())
}

/// Puts `Port` into the endpoint unless it already has one (the local emulator uses 8888).
fn with_port(endpoint: &str, port: Option<u16>) -> String {
    let Some(port) = port else {
        return endpoint.to_owned();
    };
    let authority = endpoint
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or("");
    if authority.contains(':') {
        endpoint.to_owned()
    } else {
        format!("{endpoint}:{port}")
    }
}

/// Percent-encodes one path segment (group names are free text).
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefg=";

    #[test]
    fn connection_strings_parse() {
        let azure = AzureSignalR::from_connection_string(&format!(
            "Endpoint=https://teachin.service.signalr.net/;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        assert_eq!(
            azure.client_url(),
            "https://teachin.service.signalr.net/client/?hub=notifications"
        );
        assert_eq!(azure.inner.access_key, KEY, "the '=' padding is kept");
        assert_eq!(azure.inner.api_base, "https://teachin.service.signalr.net");

        let emulator = AzureSignalR::from_connection_string(&format!(
            "Endpoint=http://localhost;Port=8888;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        assert_eq!(emulator.inner.api_base, "http://localhost:8888");

        let split = AzureSignalR::from_connection_string(&format!(
            "Endpoint=https://a.example;AccessKey={KEY};ClientEndpoint=https://public.example;ServerEndpoint=https://private.example"
        ))
        .unwrap();
        assert_eq!(
            split.client_url(),
            "https://public.example/client/?hub=notifications"
        );
        assert_eq!(split.inner.api_base, "https://private.example");

        for bad in [
            "AccessKey=x;Version=1.0",
            "Endpoint=https://a.example;Version=1.0",
            "Endpoint=https://a.example;AccessKey=x;Version=2.0",
            "Endpoint=ftp://a.example;AccessKey=x",
            "Endpoint=https://a.example;AuthType=azure.msi;Version=1.0",
            "Endpoint=https://a.example;AccessKey=x;Port=http",
        ] {
            assert!(AzureSignalR::from_connection_string(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_redirect_token_is_for_the_client_url_and_names_the_user() {
        let azure = AzureSignalR::from_connection_string(&format!(
            "Endpoint=https://teachin.service.signalr.net;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        let user = UserId::new();
        let expires = Utc::now() + chrono::Duration::minutes(15);
        let redirect = azure.redirect(user, expires);
        assert_eq!(redirect.url, azure.client_url());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[redirect.url.as_str()]);
        let claims = jsonwebtoken::decode::<Value>(
            &redirect.access_token,
            &DecodingKey::from_secret(KEY.as_bytes()),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["nameid"], json!(user.to_string()));
        assert_eq!(claims["exp"], json!(expires.timestamp()));
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(segment("Admins"), "Admins");
        assert_eq!(segment("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(segment("שם"), "%D7%A9%D7%9D");
    }
}
