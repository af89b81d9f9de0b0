//! Per-client rate limits for the endpoints that guess-and-check attacks aim at (login,
//! refresh), counted in Redis so every manager replica shares one budget per client.
//!
//! A window per client and action that opens at the client's first attempt: one Lua script
//! increments the counter, gives it its expiry when it is new (atomically, so a crash cannot
//! leave a counter that never expires) and returns the time left, which a refused client is
//! told as its retry-after. One round trip per attempt.

use fred::prelude::*;
use std::time::Duration;

/// A budget: `max` attempts per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub window: Duration,
}

impl std::str::FromStr for Budget {
    type Err = String;
    /// `N/60s`, `N/5m` or just `N` (per minute).
    fn from_str(raw: &str) -> Result<Self, String> {
        let (max, window) = raw.split_once('/').unwrap_or((raw, "60s"));
        let max: u32 = max
            .trim()
            .parse()
            .map_err(|_| format!("`{raw}` is not N/window (e.g. 10/60s)"))?;
        let window = window.trim();
        let (digits, unit) = window.split_at(window.len().saturating_sub(1));
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{window}` is not a window like 60s or 5m"))?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            _ => return Err(format!("`{window}` is not a window like 60s or 5m")),
        };
        if max == 0 || secs == 0 {
            return Err("a budget allows at least one attempt per window".into());
        }
        Ok(Budget {
            max,
            window: Duration::from_secs(secs),
        })
    }
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

/// KEYS: the counter. ARGV: the window in seconds. Returns the count and seconds left.
const COUNT_ATTEMPT: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('TTL', KEYS[1])}
"#;

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
        let key = format!("{}{action}:{client}", self.prefix);
        let (count, ttl): (u64, i64) = self
            .redis
            .eval(COUNT_ATTEMPT, vec![key], vec![window_secs])
            .await?;
        if count > u64::from(budget.max) {
            let retry_after = Duration::from_secs(ttl.max(1) as u64);
            return Ok(Err(Limited { retry_after }));
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!("10/60s".parse(), Ok(Budget::per_minute(10)));
        assert_eq!("5".parse(), Ok(Budget::per_minute(5)));
        assert_eq!(
            "3/5m".parse(),
            Ok(Budget {
                max: 3,
                window: Duration::from_secs(300)
            })
        );
        assert!("0/60s".parse::<Budget>().is_err());
        assert!("ten".parse::<Budget>().is_err());
        assert!("10/60h".parse::<Budget>().is_err());
    }
}
