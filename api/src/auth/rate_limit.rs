//! Per-client rate limits for the endpoints that guess-and-check attacks aim at (login,
//! refresh), counted in Redis so every manager replica shares one budget per client.
//!
//! A fixed window per client and action: `INCR` the window's counter, give it an expiry on
//! first use, refuse once the count passes the limit and tell the client when the window
//! ends. Fixed windows allow a burst of twice the limit across a boundary, which is fine
//! for slowing down password guessing and cheap (one round trip).

use fred::prelude::*;
use std::time::Duration;

/// A budget: `max` attempts per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub window: Duration,
}

impl Budget {
    pub const fn per_minute(max: u32) -> Self {
        Self {
            max,
            window: Duration::from_secs(60),
        }
    }
}

/// The client used up its budget; it may try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

#[derive(Clone)]
pub struct RateLimiter {
    redis: Client,
    prefix: String,
}

impl RateLimiter {
    pub fn new(redis: Client, namespace: &str) -> Self {
        Self {
            redis,
            prefix: format!("teachin:{namespace}:ratelimit:"),
        }
    }

    /// Counts one attempt of `action` by `client`; `Err` once the budget is spent.
    pub async fn check(
        &self,
        action: &str,
        client: &str,
        budget: Budget,
    ) -> Result<Result<(), Limited>, fred::error::Error> {
        let window_secs = budget.window.as_secs().max(1);
        let now = chrono::Utc::now().timestamp() as u64;
        let window = now / window_secs;
        let key = format!("{}{action}:{client}:{window}", self.prefix);
        let count: u64 = self.redis.incr(&key).await?;
        if count == 1 {
            let _: () = self
                .redis
                .expire(&key, window_secs as i64 + 1, None)
                .await?;
        }
        if count > u64::from(budget.max) {
            let retry_after = Duration::from_secs((window + 1) * window_secs - now);
            return Ok(Err(Limited { retry_after }));
        }
        Ok(Ok(()))
    }
}
