//! Limits on the endpoints that guessing and flooding aim at (sign-in, refresh, sign-up),
//! counted in Redis so every manager replica shares them.
//!
//! Two shapes of limit:
//! - A **budget per client and action** ([`RateLimiter::check`]: refresh, sign-up): a window
//!   that opens at the client's first attempt, every attempt counted. One Lua script
//!   increments the counter, gives it its expiry when it is new (atomically, so a crash cannot
//!   leave a counter that never expires) and returns the time left, which a refused client is
//!   told as its retry-after.
//! - **Sign-in** ([`RateLimiter::begin_sign_in`]), where a whole class behind one school
//!   address signs in at once, so a budget of attempts per address would lock lessons out.
//!   Only failures count: per *account* (the normalised email, whether or not it has an
//!   account, so a refusal tells nothing about which addresses exist), where they earn an
//!   exponential hold ([`Backoff`]) whatever address they come from, and per *client
//!   address*, where a generous budget of failures stops a password spray over many
//!   accounts. A successful sign-in is never counted and clears its account's failures.
//!
//! Client addresses are grouped as the network hands them out: an IPv6 client owns its
//! whole /64, so it is one client (see [`client_key`]).

use fred::prelude::*;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A budget: `max` attempts per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max: u32,
    pub window: Duration,
}

/// `30s`, `5m` or `1h`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let bad = || format!("`{raw}` is not a duration like 60s, 5m or 1h");
    let (digits, unit) = raw.split_at(raw.len().saturating_sub(1));
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

impl std::str::FromStr for Budget {
    type Err = String;
    /// `N/60s`, `N/5m`, `N/1h` or just `N` (per minute).
    fn from_str(raw: &str) -> Result<Self, String> {
        let (max, window) = raw.split_once('/').unwrap_or((raw, "60s"));
        let max: u32 = max
            .trim()
            .parse()
            .map_err(|_| format!("`{raw}` is not N/window (e.g. 10/60s)"))?;
        let window = parse_duration(window)?;
        if max == 0 || window.is_zero() {
            return Err("a budget allows at least one attempt per window".into());
        }
        Ok(Budget { max, window })
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

/// How an account is slowed down after failed sign-ins: `free` failures cost nothing; from
/// then on each failure holds the account for `first`, doubled per further failure, at most
/// `cap`. The failures are forgotten `cap` after the last hold ends, and at once on success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub free: u32,
    pub first: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    /// After 5 failures: 1 s, 2 s, 4 s, … up to 15 minutes.
    fn default() -> Self {
        Self {
            free: 5,
            first: Duration::from_secs(1),
            cap: Duration::from_secs(15 * 60),
        }
    }
}

impl std::str::FromStr for Backoff {
    type Err = String;
    /// `N/first..cap`, e.g. `5/1s..15m`: after N failures, hold for `first`, doubling up to
    /// `cap`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let bad = || format!("`{raw}` is not failures/first..cap (e.g. 5/1s..15m)");
        let (free, holds) = raw.split_once('/').ok_or_else(bad)?;
        let (first, cap) = holds.split_once("..").ok_or_else(bad)?;
        let free: u32 = free.trim().parse().map_err(|_| bad())?;
        let (first, cap) = (parse_duration(first)?, parse_duration(cap)?);
        if free == 0 || first.is_zero() || cap < first {
            return Err(format!(
                "`{raw}`: at least one free failure, and 0 < first <= cap"
            ));
        }
        Ok(Backoff { free, first, cap })
    }
}

/// How sign-in is limited: failures per client address, and the per-account backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignInLimits {
    pub client_failures: Budget,
    pub account: Backoff,
}

/// The client (or account) has to wait; it may try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

/// A sign-in that may go ahead; report how it ended with [`RateLimiter::sign_in_failed`] or
/// [`RateLimiter::sign_in_succeeded`].
#[derive(Debug, Clone)]
pub struct SignInAttempt {
    client_key: String,
    account_key: String,
}

/// KEYS: the counter. ARGV: the window in seconds. Returns the count and seconds left.
const COUNT_ATTEMPT: &str = r#"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('TTL', KEYS[1])}
"#;

/// Before a sign-in is checked. KEYS: the client's failure counter, the account's hash
/// (`failures`, `until` in ms). ARGV: the client's budget, now (ms), free failures, first
/// hold (ms), cap (ms). Returns {0, ms to wait} when refused, {1, 0} when it may go ahead.
///
/// The attempt is counted against the account as a failure *before* the password is
/// checked (success clears it), and the hold it would earn is set already, so a burst of
/// parallel guesses at one account gets `free` tries, not one per request.
const BEGIN_SIGN_IN: &str = r#"
local client_failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if client_failures >= tonumber(ARGV[1]) then
  return {0, math.max(redis.call('PTTL', KEYS[1]), 1000)}
end
local now = tonumber(ARGV[2])
local held_until = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
if now < held_until then return {0, held_until - now} end
local failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
local free, first, cap = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local hold = 0
if failures >= free then
  hold = math.floor(math.min(first * 2 ^ (failures - free), cap))
  redis.call('HSET', KEYS[2], 'until', string.format('%d', now + hold))
end
redis.call('PEXPIRE', KEYS[2], hold + cap)
return {1, 0}
"#;

/// After a failed sign-in. KEYS: the client's failure counter, the account's hash. ARGV: the
/// client's window (s), now (ms), free failures, first hold (ms), cap (ms). The account's
/// hold runs from the failure, not from when the attempt began.
const SIGN_IN_FAILED: &str = r#"
if redis.call('INCR', KEYS[1]) == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local failures = tonumber(redis.call('HGET', KEYS[2], 'failures') or '0')
local now, free = tonumber(ARGV[2]), tonumber(ARGV[3])
local first, cap = tonumber(ARGV[4]), tonumber(ARGV[5])
if failures >= free then
  local hold = math.floor(math.min(first * 2 ^ (failures - free), cap))
  local held_until = tonumber(redis.call('HGET', KEYS[2], 'until') or '0')
  if now + hold > held_until then
    redis.call('HSET', KEYS[2], 'until', string.format('%d', now + hold))
  end
  redis.call('PEXPIRE', KEYS[2], hold + cap)
end
return 1
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
        let key = format!("{}{action}:{}", self.prefix, client_key(client));
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

    /// Whether `client` may try to sign in to `account` (an email as typed) now; counts the
    /// attempt against the account until [`Self::sign_in_succeeded`] clears it.
    pub async fn begin_sign_in(
        &self,
        client: &str,
        account: &str,
        limits: SignInLimits,
    ) -> Result<Result<SignInAttempt, Limited>, fred::error::Error> {
        self.begin_sign_in_at(client, account, limits, SystemTime::now())
            .await
    }

    async fn begin_sign_in_at(
        &self,
        client: &str,
        account: &str,
        limits: SignInLimits,
        now: SystemTime,
    ) -> Result<Result<SignInAttempt, Limited>, fred::error::Error> {
        let attempt = SignInAttempt {
            client_key: format!("{}signin:client:{}", self.prefix, client_key(client)),
            account_key: format!("{}signin:account:{}", self.prefix, account_digest(account)),
        };
        let backoff = limits.account;
        let (allowed, wait_ms): (i64, i64) = self
            .redis
            .eval(
                BEGIN_SIGN_IN,
                vec![attempt.client_key.clone(), attempt.account_key.clone()],
                vec![
                    u64::from(limits.client_failures.max),
                    millis(now),
                    u64::from(backoff.free),
                    backoff.first.as_millis() as u64,
                    backoff.cap.as_millis() as u64,
                ],
            )
            .await?;
        if allowed == 1 {
            return Ok(Ok(attempt));
        }
        // Whole seconds, rounded up: a client told 0 would come straight back.
        let retry_after = Duration::from_secs((wait_ms.max(1) as u64).div_ceil(1000));
        Ok(Err(Limited { retry_after }))
    }

    /// The password was wrong (or the account unknown): one more failure for the client,
    /// and the account's hold runs from now.
    pub async fn sign_in_failed(
        &self,
        attempt: &SignInAttempt,
        limits: SignInLimits,
    ) -> Result<(), fred::error::Error> {
        self.sign_in_failed_at(attempt, limits, SystemTime::now())
            .await
    }

    async fn sign_in_failed_at(
        &self,
        attempt: &SignInAttempt,
        limits: SignInLimits,
        now: SystemTime,
    ) -> Result<(), fred::error::Error> {
        let backoff = limits.account;
        let _: i64 = self
            .redis
            .eval(
                SIGN_IN_FAILED,
                vec![attempt.client_key.clone(), attempt.account_key.clone()],
                vec![
                    limits.client_failures.window.as_secs().max(1),
                    millis(now),
                    u64::from(backoff.free),
                    backoff.first.as_millis() as u64,
                    backoff.cap.as_millis() as u64,
                ],
            )
            .await?;
        Ok(())
    }

    /// The person proved who they are: their account's failures are forgotten, and nothing
    /// is counted against their address.
    pub async fn sign_in_succeeded(
        &self,
        attempt: &SignInAttempt,
    ) -> Result<(), fred::error::Error> {
        let _: i64 = self.redis.del(&attempt.account_key).await?;
        Ok(())
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The account a sign-in aims at, as a key: the email trimmed and lower-cased (as
/// `EmailAddress` stores it), hashed so the keys do not list who tried to sign in.
fn account_digest(account: &str) -> String {
    let normalised = account.trim().to_lowercase();
    Sha256::digest(normalised.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The client a limit counts: an IPv4 address as it is, an IPv6 address as its /64 (what
/// one subscriber is given, so rotating through it gains nothing), an IPv4-mapped IPv6
/// address as the IPv4 one. Anything else (no address known) as given.
pub fn client_key(client: &str) -> String {
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Err(_) => client.to_owned(),
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
        assert_eq!(
            "60/1h".parse(),
            Ok(Budget {
                max: 60,
                window: Duration::from_secs(3600)
            })
        );
        assert!("0/60s".parse::<Budget>().is_err());
        assert!("ten".parse::<Budget>().is_err());
        assert!("10/60d".parse::<Budget>().is_err());
    }

    #[test]
    fn backoffs_parse() {
        assert_eq!("5/1s..15m".parse(), Ok(Backoff::default()));
        assert!("5/1s".parse::<Backoff>().is_err());
        assert!("0/1s..15m".parse::<Backoff>().is_err());
        assert!("5/10m..1m".parse::<Backoff>().is_err());
        assert!("5/0s..1m".parse::<Backoff>().is_err());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        assert_eq!(client_key("203.0.113.7"), "203.0.113.7");
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1"),
            client_key("2001:db8:1:2:bbbb::9")
        );
        assert_eq!(client_key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(client_key("2001:db8:1:2::1"), client_key("2001:db8:1:3::1"));
        assert_eq!(client_key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(client_key("unknown"), "unknown");
    }

    #[test]
    fn accounts_are_keyed_by_the_normalised_email() {
        assert_eq!(
            account_digest("  Dana@Example.COM "),
            account_digest("dana@example.com")
        );
        assert!(!account_digest("dana@example.com").contains("dana"));
    }

    // ---- Against the real Redis, with a clock the test moves -------------------------------

    async fn limiter() -> RateLimiter {
        let url = std::env::var("TEACHIN_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let redis = Builder::from_config(Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        redis.init().await.unwrap();
        RateLimiter::new(redis, &format!("test-{}", uuid::Uuid::new_v4().simple()))
    }

    const LIMITS: SignInLimits = SignInLimits {
        client_failures: Budget {
            max: 100,
            window: Duration::from_secs(600),
        },
        account: Backoff {
            free: 3,
            first: Duration::from_secs(10),
            cap: Duration::from_secs(60),
        },
    };

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    /// One attempt at `at`: `Err(seconds to wait)` or, when it went ahead, whether it failed.
    async fn attempt(
        limiter: &RateLimiter,
        client: &str,
        account: &str,
        limits: SignInLimits,
        now: SystemTime,
        succeeds: bool,
    ) -> Result<(), u64> {
        match limiter
            .begin_sign_in_at(client, account, limits, now)
            .await
            .unwrap()
        {
            Err(limited) => Err(limited.retry_after.as_secs()),
            Ok(attempt) if succeeds => {
                limiter.sign_in_succeeded(&attempt).await.unwrap();
                Ok(())
            }
            Ok(attempt) => {
                limiter
                    .sign_in_failed_at(&attempt, limits, now)
                    .await
                    .unwrap();
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn failures_hold_the_account_from_any_address_with_a_doubling_hold() {
        let l = limiter().await;
        let (a, b) = ("203.0.113.1", "198.51.100.2");
        for _ in 0..3 {
            assert_eq!(
                attempt(&l, a, "dana@example.com", LIMITS, at(0), false).await,
                Ok(())
            );
        }
        // Held 10 s from the third failure, from any address, even with the right password.
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(1), true).await,
            Err(9)
        );
        assert_eq!(
            attempt(&l, a, "Dana@Example.com", LIMITS, at(9), false).await,
            Err(1)
        );
        // Other accounts from the same address are not held.
        assert_eq!(
            attempt(&l, a, "eli@example.com", LIMITS, at(1), true).await,
            Ok(())
        );
        // The hold ends; the next failure doubles it, and so on up to the cap.
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(10), false).await,
            Ok(())
        );
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(11), false).await,
            Err(19)
        );
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(30), false).await,
            Ok(())
        );
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(31), false).await,
            Err(39)
        );
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(70), false).await,
            Ok(())
        );
        assert_eq!(
            attempt(&l, b, "dana@example.com", LIMITS, at(70), false).await,
            Err(60)
        );
        // The right password once the hold is over clears every failure.
        assert_eq!(
            attempt(&l, a, "dana@example.com", LIMITS, at(130), true).await,
            Ok(())
        );
        for _ in 0..3 {
            assert_eq!(
                attempt(&l, a, "dana@example.com", LIMITS, at(131), false).await,
                Ok(())
            );
        }
        assert_eq!(
            attempt(&l, a, "dana@example.com", LIMITS, at(131), true).await,
            Err(10)
        );
    }

    #[tokio::test]
    async fn a_burst_of_parallel_guesses_gets_the_free_failures_only() {
        let l = limiter().await;
        let begun = futures::future::join_all((0..20).map(|i| {
            let l = l.clone();
            async move {
                let client = format!("203.0.113.{i}");
                l.begin_sign_in_at(&client, "dana@example.com", LIMITS, at(0))
                    .await
                    .unwrap()
                    .is_ok()
            }
        }))
        .await;
        assert_eq!(begun.iter().filter(|ok| **ok).count(), 3);
    }

    #[tokio::test]
    async fn an_address_is_stopped_by_its_failures_never_by_its_successes() {
        let l = limiter().await;
        let limits = SignInLimits {
            client_failures: Budget {
                max: 5,
                window: Duration::from_secs(600),
            },
            ..LIMITS
        };
        let school = "203.0.113.9";
        // A class signing in: never limited, however many.
        for student in 0..40 {
            let account = format!("student{student}@example.com");
            assert_eq!(
                attempt(&l, school, &account, limits, at(0), true).await,
                Ok(())
            );
        }
        // A spray: one guess per account, stopped by the address's failures.
        for victim in 0..5 {
            let account = format!("victim{victim}@example.com");
            assert_eq!(
                attempt(&l, school, &account, limits, at(1), false).await,
                Ok(())
            );
        }
        let refused = attempt(&l, school, "victim9@example.com", limits, at(2), false).await;
        assert!(matches!(refused, Err(1..=600)), "{refused:?}");
        // Another address is not affected.
        assert_eq!(
            attempt(
                &l,
                "198.51.100.2",
                "victim9@example.com",
                limits,
                at(2),
                false
            )
            .await,
            Ok(())
        );
    }
}
