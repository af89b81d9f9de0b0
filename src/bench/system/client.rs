//! The bench's view of the manager over HTTP, as a portal sees it: GraphQL mutations with a
//! bearer token, each sorted into ok or the error code the API put in
//! `extensions.code`; and single counters read from `/metrics`.

use serde_json::{json, Value};
use std::time::Duration;

/// What became of one mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The first error's `extensions.code`, or what went wrong before GraphQL answered
    /// (`TRANSPORT`, `HTTP_<status>`, `NO_CODE`).
    Failed(String),
}

#[derive(Clone)]
pub struct Manager {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Manager {
    pub fn new(base: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http, base })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Sends one GraphQL operation as `token`'s holder.
    pub async fn mutate(&self, token: &str, query: &str, variables: Value) -> Outcome {
        let response = self
            .http
            .post(format!("{}/graphql", self.base))
            .bearer_auth(token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(_) => return Outcome::Failed("TRANSPORT".into()),
        };
        let status = response.status();
        let body: Value = match response.json().await {
            Ok(body) => body,
            Err(_) => return Outcome::Failed(format!("HTTP_{}", status.as_u16())),
        };
        match body["errors"].as_array().and_then(|errors| errors.first()) {
            None if status.is_success() => Outcome::Ok,
            None => Outcome::Failed(format!("HTTP_{}", status.as_u16())),
            Some(error) => Outcome::Failed(
                error["extensions"]["code"]
                    .as_str()
                    .unwrap_or("NO_CODE")
                    .to_string(),
            ),
        }
    }

    /// The sum of every series of counter `name` on `/metrics`; `None` when the manager
    /// does not export it.
    pub async fn counter(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(sum_of_series(&text, name))
    }
}

/// Sums the samples of metric `name` (any labels) in the Prometheus text format.
fn sum_of_series(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let series_name = line.split(['{', ' ']).next().unwrap_or_default();
        if series_name != name {
            continue;
        }
        if let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::sum_of_series;

    #[test]
    fn a_counter_is_summed_over_its_labels_and_absent_when_not_exported() {
        let text = "# HELP x_total x\n# TYPE x_total counter\nx_total{a=\"1\"} 2\nx_total{a=\"2\"} 3\nx_total_other 9\ny_total 1\n";
        assert_eq!(sum_of_series(text, "x_total"), Some(5.0));
        assert_eq!(sum_of_series(text, "y_total"), Some(1.0));
        assert_eq!(sum_of_series(text, "z_total"), None);
    }
}
