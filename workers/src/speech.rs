//! Speech tokens: the short-lived Azure Speech token the portals' browser SDK uses for
//! text-to-speech and speech-to-text (original-system.md §1.10). The subscription key
//! (`Speech__Key`) never leaves the server; the browser gets a token and the region.
//!
//! Why a cache: Azure issues a token for ten minutes, and every page that speaks asks for
//! one. [`SpeechTokens`] keeps the last token and hands it out until a minute before it
//! expires, so each replica calls the token service about once every nine minutes however
//! many students practise. Concurrent callers wait for one refresh rather than each calling.
//! (Per replica, in memory: a shared Redis copy would save a handful of calls an hour and
//! put a credential in Redis.)

use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio::sync::Mutex;

/// How long Azure's tokens live.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How long before expiry a token is no longer handed out.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The Speech resource: its key and region, and (for tests) another token service.
#[derive(Clone, PartialEq, Eq)]
pub struct SpeechSettings {
    pub key: String,
    pub region: String,
    /// Base URL of the token service; `https://{region}.api.cognitive.microsoft.com` if unset.
    pub endpoint: Option<String>,
}

impl std::fmt::Debug for SpeechSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechSettings")
            .field("key", &"<hidden>")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// A token for the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeechToken {
    pub token: String,
    pub region: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpeechError {
    /// The token service refused the key (401/403): a configuration problem.
    #[error("the speech service refused the key (HTTP {0})")]
    Refused(u16),
    #[error("the speech service is unavailable: {0}")]
    Unavailable(String),
}

/// Issues and caches speech tokens. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct SpeechTokens {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: SpeechSettings,
    url: String,
    cached: Mutex<Option<SpeechToken>>,
}

impl SpeechTokens {
    pub fn new(settings: SpeechSettings) -> Self {
        let base = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.api.cognitive.microsoft.com", settings.region));
        let url = format!("{}/sts/v1.0/issueToken", base.trim_end_matches('/'));
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("a client with a timeout builds");
        Self {
            inner: std::sync::Arc::new(Inner {
                http,
                settings,
                url,
                cached: Mutex::new(None),
            }),
        }
    }

    pub fn region(&self) -> &str {
        &self.inner.settings.region
    }

    /// A token valid for at least [`REFRESH_MARGIN`] more.
    pub async fn token(&self) -> Result<SpeechToken, SpeechError> {
        self.token_at(Utc::now()).await
    }

    /// [`Self::token`] as of `now` (tests move the clock).
    pub async fn token_at(&self, now: DateTime<Utc>) -> Result<SpeechToken, SpeechError> {
        // Held across the refresh: concurrent callers wait for one call, then share it.
        let mut cached = self.inner.cached.lock().await;
        let margin = chrono::Duration::from_std(REFRESH_MARGIN).expect("small");
        if let Some(token) = cached.as_ref().filter(|t| now + margin < t.expires_at) {
            return Ok(token.clone());
        }
        let token = self.issue(now).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    async fn issue(&self, now: DateTime<Utc>) -> Result<SpeechToken, SpeechError> {
        let response = self
            .inner
            .http
            .post(&self.inner.url)
            .header("Ocp-Apim-Subscription-Key", &self.inner.settings.key)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| SpeechError::Unavailable(e.without_url().to_string()))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(SpeechError::Refused(status.as_u16()));
        }
        if !status.is_success() {
            return Err(SpeechError::Unavailable(format!("HTTP {status}")));
        }
        let token = response
            .text()
            .await
            .map_err(|e| SpeechError::Unavailable(e.without_url().to_string()))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(SpeechError::Unavailable("an empty token".into()));
        }
        Ok(SpeechToken {
            token,
            region: self.inner.settings.region.clone(),
            expires_at: now + chrono::Duration::from_std(TOKEN_LIFETIME).expect("small"),
        })
    }
}
