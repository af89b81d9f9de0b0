//! The engine's settings and where they come from, kept here rather than in the binary's
//! configuration so the names the engine needs and their defaults live beside the code that
//! uses them; `src/config.rs` calls [`AiSettings::from_lookup`] and
//! [`WebSearchSettings::from_lookup`] with its own lookup (environment over the optional file).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `AZURE_OPENAI_ENDPOINT` | Azure OpenAI resource, e.g. `https://teachin.openai.azure.com` | — |
//! | `AZURE_OPENAI_API_KEY` | its key (`api-key` header) | — |
//! | `AZURE_OPENAI_DEPLOYMENT` | the chat deployment | — |
//! | `AZURE_OPENAI_API_VERSION` | REST API version | `2024-10-21` |
//! | `OPENAI_BASE_URL` | any OpenAI-compatible server, e.g. `http://localhost:11434/v1` | `https://api.openai.com/v1` when only a key is set |
//! | `OPENAI_API_KEY` | its bearer token (optional for self-hosted servers) | — |
//! | `OPENAI_MODEL` | the model to ask for | `gpt-4.1-mini` |
//! | `TAVILY_API_KEY` | enables the web-search tool | — (tool not offered) |
//! | `TAVILY_BASE_URL` | Tavily's REST base URL (tests point it at a local server) | `https://api.tavily.com` |
//!
//! The provider is chosen in this order: Azure OpenAI when `AZURE_OPENAI_ENDPOINT` is set
//! (then its key and deployment are required: a half-configured provider is an error, not a
//! silent fallback), else the OpenAI-compatible endpoint when `OPENAI_BASE_URL` or
//! `OPENAI_API_KEY` is set, else the `offline` provider (DESIGN.md decision 7).

use crate::ai::offline::Offline;
use crate::ai::openai::{Endpoint, OpenAiCompatible, RetryPolicy};
use crate::ai::AiProvider;
use std::sync::Arc;

/// The variable names, for the binary's configuration and its documentation.
pub mod env {
    pub const AZURE_OPENAI_ENDPOINT: &str = "AZURE_OPENAI_ENDPOINT";
    pub const AZURE_OPENAI_API_KEY: &str = "AZURE_OPENAI_API_KEY";
    pub const AZURE_OPENAI_DEPLOYMENT: &str = "AZURE_OPENAI_DEPLOYMENT";
    pub const AZURE_OPENAI_API_VERSION: &str = "AZURE_OPENAI_API_VERSION";
    pub const OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
    pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
    pub const OPENAI_MODEL: &str = "OPENAI_MODEL";
    pub const TAVILY_API_KEY: &str = "TAVILY_API_KEY";
    pub const TAVILY_BASE_URL: &str = "TAVILY_BASE_URL";
}

pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_OPENAI_MODEL: &str = "gpt-4.1-mini";
pub const DEFAULT_TAVILY_BASE_URL: &str = "https://api.tavily.com";

/// A setting that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {problem}")]
pub struct SettingsError {
    /// The variable to fix.
    pub name: &'static str,
    pub problem: String,
}

fn error(name: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        name,
        problem: problem.into(),
    }
}

/// The first non-blank value of `name`, trimmed.
fn value(lookup: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn http_url(name: &'static str, raw: String) -> Result<String, SettingsError> {
    match url::Url::parse(&raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(raw.trim_end_matches('/').to_string())
        }
        _ => Err(error(name, format!("`{raw}` is not an http(s) URL"))),
    }
}

/// Which chat model the engine talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AiBackend {
    Azure {
        endpoint: String,
        api_key: String,
        deployment: String,
        api_version: String,
    },
    OpenAiCompatible {
        base_url: String,
        api_key: Option<String>,
        model: String,
    },
    /// No keys: every answer says the tutor is offline.
    Offline,
}

#[derive(Debug, Clone)]
pub struct AiSettings {
    pub backend: AiBackend,
    pub retry: RetryPolicy,
}

impl Default for AiSettings {
    fn default() -> Self {
        AiSettings {
            backend: AiBackend::Offline,
            retry: RetryPolicy::default(),
        }
    }
}

impl AiSettings {
    /// Reads the `AZURE_OPENAI_*` and `OPENAI_*` variables through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AiSettings, SettingsError> {
        let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
        let backend = if let Some(endpoint) = value(lookup, env::AZURE_OPENAI_ENDPOINT) {
            let required = |name: &'static str| {
                value(lookup, name)
                    .ok_or_else(|| error(name, "must be set when AZURE_OPENAI_ENDPOINT is set"))
            };
            AiBackend::Azure {
                endpoint: http_url(env::AZURE_OPENAI_ENDPOINT, endpoint)?,
                api_key: required(env::AZURE_OPENAI_API_KEY)?,
                deployment: required(env::AZURE_OPENAI_DEPLOYMENT)?,
                api_version: value(lookup, env::AZURE_OPENAI_API_VERSION)
                    .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.into()),
            }
        } else {
            let base_url = value(lookup, env::OPENAI_BASE_URL);
            let api_key = value(lookup, env::OPENAI_API_KEY);
            if base_url.is_none() && api_key.is_none() {
                AiBackend::Offline
            } else {
                AiBackend::OpenAiCompatible {
                    base_url: http_url(
                        env::OPENAI_BASE_URL,
                        base_url.unwrap_or_else(|| DEFAULT_OPENAI_BASE_URL.into()),
                    )?,
                    api_key,
                    model: value(lookup, env::OPENAI_MODEL)
                        .unwrap_or_else(|| DEFAULT_OPENAI_MODEL.into()),
                }
            }
        };
        Ok(AiSettings {
            backend,
            retry: RetryPolicy::default(),
        })
    }

    /// The provider these settings describe.
    pub fn provider(&self) -> Arc<dyn AiProvider> {
        match &self.backend {
            AiBackend::Azure {
                endpoint,
                api_key,
                deployment,
                api_version,
            } => Arc::new(OpenAiCompatible::new(
                Endpoint::Azure {
                    endpoint: endpoint.clone(),
                    deployment: deployment.clone(),
                    api_version: api_version.clone(),
                    api_key: api_key.clone(),
                },
                self.retry.clone(),
            )),
            AiBackend::OpenAiCompatible {
                base_url,
                api_key,
                model,
            } => Arc::new(OpenAiCompatible::new(
                Endpoint::OpenAiCompatible {
                    base_url: base_url.clone(),
                    api_key: api_key.clone(),
                    model: model.clone(),
                },
                self.retry.clone(),
            )),
            AiBackend::Offline => Arc::new(Offline),
        }
    }

    /// Which provider, for the start-up log line (no secrets).
    pub fn describe(&self) -> String {
        match &self.backend {
            AiBackend::Azure {
                endpoint,
                deployment,
                ..
            } => format!("azure-openai {endpoint} deployment {deployment}"),
            AiBackend::OpenAiCompatible {
                base_url, model, ..
            } => format!("openai-compatible {base_url} model {model}"),
            AiBackend::Offline => "offline (no AI keys configured)".into(),
        }
    }
}

/// The provider the environment describes (offline when no keys are set): what the binary
/// calls when it has no lookup of its own.
pub fn provider_from_env() -> Result<Arc<dyn AiProvider>, SettingsError> {
    Ok(AiSettings::from_lookup(|name| std::env::var(name).ok())?.provider())
}

/// The web-search tool (Tavily). Without a key the model is not offered the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSearchSettings {
    pub api_key: Option<String>,
    pub base_url: String,
}

impl Default for WebSearchSettings {
    fn default() -> Self {
        WebSearchSettings {
            api_key: None,
            base_url: DEFAULT_TAVILY_BASE_URL.into(),
        }
    }
}

impl WebSearchSettings {
    /// Reads `TAVILY_API_KEY` and `TAVILY_BASE_URL` through `lookup`.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<WebSearchSettings, SettingsError> {
        let lookup: &dyn Fn(&str) -> Option<String> = &lookup;
        Ok(WebSearchSettings {
            api_key: value(lookup, env::TAVILY_API_KEY),
            base_url: match value(lookup, env::TAVILY_BASE_URL) {
                Some(raw) => http_url(env::TAVILY_BASE_URL, raw)?,
                None => DEFAULT_TAVILY_BASE_URL.into(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ai(vars: &[(&str, &str)]) -> Result<AiSettings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AiSettings::from_lookup(move |name| map.get(name).cloned())
    }

    #[test]
    fn no_keys_means_offline() {
        let settings = ai(&[("OPENAI_MODEL", "ignored"), ("OPENAI_API_KEY", "  ")]).unwrap();
        assert_eq!(settings.backend, AiBackend::Offline);
        assert_eq!(settings.provider().model(), "offline");
    }

    #[test]
    fn azure_wins_and_must_be_complete() {
        let settings = ai(&[
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com/"),
            ("AZURE_OPENAI_API_KEY", "k"),
            ("AZURE_OPENAI_DEPLOYMENT", "tutor"),
            ("OPENAI_API_KEY", "sk"),
        ])
        .unwrap();
        assert_eq!(
            settings.backend,
            AiBackend::Azure {
                endpoint: "https://x.openai.azure.com".into(),
                api_key: "k".into(),
                deployment: "tutor".into(),
                api_version: DEFAULT_AZURE_API_VERSION.into(),
            }
        );
        assert_eq!(settings.provider().model(), "tutor");
        let missing = ai(&[
            ("AZURE_OPENAI_ENDPOINT", "https://x.openai.azure.com"),
            ("AZURE_OPENAI_DEPLOYMENT", "tutor"),
        ])
        .unwrap_err();
        assert_eq!(missing.name, "AZURE_OPENAI_API_KEY");
        let bad = ai(&[("AZURE_OPENAI_ENDPOINT", "x.openai.azure.com")]).unwrap_err();
        assert_eq!(bad.name, "AZURE_OPENAI_ENDPOINT");
    }

    #[test]
    fn an_openai_compatible_server_needs_a_base_url_or_a_key() {
        let local = ai(&[("OPENAI_BASE_URL", "http://localhost:11434/v1")]).unwrap();
        assert_eq!(
            local.backend,
            AiBackend::OpenAiCompatible {
                base_url: "http://localhost:11434/v1".into(),
                api_key: None,
                model: DEFAULT_OPENAI_MODEL.into(),
            }
        );
        let hosted = ai(&[("OPENAI_API_KEY", "sk"), ("OPENAI_MODEL", "gpt-x")]).unwrap();
        assert_eq!(
            hosted.backend,
            AiBackend::OpenAiCompatible {
                base_url: DEFAULT_OPENAI_BASE_URL.into(),
                api_key: Some("sk".into()),
                model: "gpt-x".into(),
            }
        );
        assert!(!hosted.describe().contains("sk"));
        assert_eq!(
            ai(&[("OPENAI_BASE_URL", "ftp://x")]).unwrap_err().name,
            "OPENAI_BASE_URL"
        );
    }

    #[test]
    fn web_search_is_enabled_by_its_key() {
        let none = WebSearchSettings::from_lookup(|_| None).unwrap();
        assert_eq!(none, WebSearchSettings::default());
        let set = WebSearchSettings::from_lookup(|name| match name {
            "TAVILY_API_KEY" => Some("tvly-1".into()),
            "TAVILY_BASE_URL" => Some("http://127.0.0.1:9/".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(set.api_key.as_deref(), Some("tvly-1"));
        assert_eq!(set.base_url, "http://127.0.0.1:9");
    }
}
