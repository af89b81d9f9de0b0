//! The tools the tutor model may call while it writes a reply, as in the original (§3): the
//! current time, and a web search through Tavily's REST API. The tool names are the
//! original's (`Time-current_time`, `WebSearch-web_search`), which is how they appear in the
//! stream and in the recorded session.
//!
//! A tool that fails does not fail the reply: the model is told the tool failed and answers
//! without it, and the call is recorded with no result.

use super::settings::WebSearchSettings;
use crate::ai::{ToolCall, ToolSpec};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub const CURRENT_TIME: &str = "Time-current_time";
pub const WEB_SEARCH: &str = "WebSearch-web_search";

/// How many search results the model gets (the original's top 5).
const SEARCH_RESULTS: usize = 5;
/// The longest search result text kept, in characters.
const RESULT_CHARS: usize = 600;

/// What a tool call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutcome {
    /// What the model reads back.
    pub for_model: String,
    /// What is recorded in the session (`None`: the tool failed).
    pub result: Option<String>,
}

/// The tools on offer.
#[derive(Clone)]
pub struct Tools {
    web_search: Option<WebSearch>,
}

impl Tools {
    pub fn new(settings: &WebSearchSettings) -> Self {
        Tools {
            web_search: settings.api_key.as_ref().map(|key| WebSearch {
                api_key: key.clone(),
                base_url: settings.base_url.trim_end_matches('/').to_string(),
                client: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .timeout(Duration::from_secs(20))
                    .build()
                    .expect("a reqwest client with rustls builds"),
            }),
        }
    }

    /// The tools' descriptions for the model: the clock always, the search when configured.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = vec![ToolSpec {
            name: CURRENT_TIME.into(),
            description: "The current date and time in UTC (ISO-8601).".into(),
            parameters: json!({"type": "object", "properties": {}}),
        }];
        if self.web_search.is_some() {
            specs.push(ToolSpec {
                name: WEB_SEARCH.into(),
                description: "Search the web for current information. Returns the top results \
                              as a numbered list with their addresses."
                    .into(),
                parameters: json!({
                    "type": "object",
                    "properties": {"query": {"type": "string", "description": "What to search for"}},
                    "required": ["query"],
                }),
            });
        }
        specs
    }

    /// Runs one call at `now`.
    pub async fn run(&self, call: &ToolCall, now: DateTime<Utc>) -> ToolOutcome {
        match call.name.as_str() {
            CURRENT_TIME => {
                let time = now.to_rfc3339_opts(SecondsFormat::Secs, true);
                ToolOutcome {
                    for_model: time.clone(),
                    result: Some(time),
                }
            }
            WEB_SEARCH => match &self.web_search {
                Some(search) => {
                    let query = serde_json::from_str::<serde_json::Value>(&call.arguments)
                        .ok()
                        .and_then(|v| v.get("query")?.as_str().map(str::to_string))
                        .filter(|q| !q.trim().is_empty());
                    let Some(query) = query else {
                        return failed("the search needs a non-empty `query`");
                    };
                    match search.search(&query).await {
                        Ok(text) => ToolOutcome {
                            for_model: text.clone(),
                            result: Some(text),
                        },
                        Err(why) => {
                            tracing::warn!(%why, "web search failed");
                            failed("the web search is unavailable right now")
                        }
                    }
                }
                None => failed("web search is not available"),
            },
            other => failed(&format!("there is no tool named `{other}`")),
        }
    }
}

fn failed(why: &str) -> ToolOutcome {
    ToolOutcome {
        for_model: format!("The tool failed: {why}. Answer without it."),
        result: None,
    }
}

#[derive(Clone)]
struct WebSearch {
    api_key: String,
    base_url: String,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct SearchResponse {
    #[serde(default)]
    results: Vec<SearchResult>,
}

#[derive(Deserialize)]
struct SearchResult {
    #[serde(default)]
    title: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    content: String,
}

impl WebSearch {
    /// `POST {base}/search`, top 5 at basic depth, as a numbered text list.
    async fn search(&self, query: &str) -> Result<String, String> {
        let response = self
            .client
            .post(format!("{}/search", self.base_url))
            .bearer_auth(&self.api_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(
                json!({
                    "query": query,
                    "max_results": SEARCH_RESULTS,
                    "search_depth": "basic",
                })
                .to_string(),
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("Tavily answered {status}"));
        }
        let bytes = response.bytes().await.map_err(|e| e.to_string())?;
        let body: SearchResponse = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if body.results.is_empty() {
            return Ok("No results.".into());
        }
        Ok(body
            .results
            .iter()
            .take(SEARCH_RESULTS)
            .enumerate()
            .map(|(i, r)| {
                let content: String = r.content.chars().take(RESULT_CHARS).collect();
                format!("{}. {} — {}\n{}", i + 1, r.title, r.url, content)
            })
            .collect::<Vec<_>>()
            .join("\n\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[tokio::test]
    async fn the_clock_answers_in_utc_and_search_is_offered_only_with_a_key() {
        let tools = Tools::new(&WebSearchSettings::default());
        assert_eq!(
            tools
                .specs()
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            [CURRENT_TIME]
        );
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let outcome = tools.run(&call(CURRENT_TIME, "{}"), at).await;
        assert_eq!(outcome.result.as_deref(), Some("2023-11-14T22:13:20Z"));
        let unknown = tools.run(&call("rm-rf", "{}"), at).await;
        assert_eq!(unknown.result, None);
        assert!(unknown.for_model.contains("rm-rf"));
        let search = tools.run(&call(WEB_SEARCH, r#"{"query":"x"}"#), at).await;
        assert_eq!(search.result, None);

        let with_key = Tools::new(&WebSearchSettings {
            api_key: Some("tvly".into()),
            base_url: "http://127.0.0.1:9".into(),
        });
        assert_eq!(with_key.specs().len(), 2);
        let no_query = with_key.run(&call(WEB_SEARCH, r#"{"q":1}"#), at).await;
        assert_eq!(no_query.result, None);
        assert!(no_query.for_model.contains("query"));
    }
}
