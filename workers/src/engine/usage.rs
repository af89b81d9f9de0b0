//! The day's model usage of each person, counted in Redis so every manager and engine replica
//! shares one ledger: the manager counts a request when it accepts one that will call the
//! model (and refuses once the day's requests or tokens are spent, `teachin_api::quota`); the
//! engine adds the tokens each model call used once the model has answered, since only then
//! are they known. Sent emails are counted here too, per sender and day.
//!
//! One hash per person and UTC day (`teachin:{ns}:usage:{user}:{YYYY-MM-DD}`, fields
//! `requests`, `tokens`, `emails`) that expires at the day's end. Each change is one Lua script,
//! so a check and its increment are atomic across replicas and a key never lives without its
//! expiry.

use chrono::{DateTime, Days, NaiveTime, Utc};
use fred::prelude::{Client, LuaInterface};
use teachin_domain::ids::UserId;

/// What the ledger counts per person and day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Requests that lead to a model call.
    Requests,
    /// Tokens the model used (prompt and completion).
    Tokens,
    /// Emails queued.
    Emails,
}

impl Counted {
    pub fn field(self) -> &'static str {
        match self {
            Counted::Requests => "requests",
            Counted::Tokens => "tokens",
            Counted::Emails => "emails",
        }
    }
}

/// The outcome of [`UsageLedger::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Counted; the day's count is now this.
    Admitted(u64),
    /// Refused, nothing counted: this budget of the day is spent.
    Spent(Counted),
}

/// KEYS: the day's hash. ARGV: the field to count, its limit, a second field that must stay
/// under its own limit ('' for none), that limit, and the expiry (Unix seconds).
/// Returns {1, count} when counted, {0, which} (1: the counted field, 2: the other) when spent.
const ADMIT: &str = r#"
if ARGV[3] ~= '' then
  local other = tonumber(redis.call('HGET', KEYS[1], ARGV[3]) or '0')
  if other >= tonumber(ARGV[4]) then return {0, 2} end
end
local count = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if count >= tonumber(ARGV[2]) then return {0, 1} end
count = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIREAT', KEYS[1], ARGV[5])
return {1, count}
"#;

/// KEYS: the day's hash. ARGV: the field, the amount (may be negative), the expiry.
/// Never lets a count go below zero. Returns the new count.
const ADD: &str = r#"
local count = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if count < 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 0)
  count = 0
end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return count
"#;

/// The shared ledger. Cheap to clone.
#[derive(Clone)]
pub struct UsageLedger {
    redis: Client,
    prefix: String,
}

impl std::fmt::Debug for UsageLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageLedger")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// When the UTC day of `now` ends (the next midnight): when a spent budget comes back.
pub fn day_end(now: DateTime<Utc>) -> DateTime<Utc> {
    let tomorrow = now.date_naive() + Days::new(1);
    tomorrow.and_time(NaiveTime::MIN).and_utc()
}

impl UsageLedger {
    /// The ledger of environment `namespace` on `redis` (a connected client).
    pub fn new(redis: Client, namespace: &str) -> Self {
        Self {
            redis,
            prefix: format!("teachin:{namespace}:usage:"),
        }
    }

    /// The key of `user`'s day at `now`.
    pub fn key(&self, user: UserId, now: DateTime<Utc>) -> String {
        format!("{}{user}:{}", self.prefix, now.format("%Y-%m-%d"))
    }

    /// Counts one `what` for `user` today if the day's count is under `limit` and, when
    /// `also` is given, that other count is under its limit too (a model request is refused
    /// once the day's tokens are spent).
    pub async fn admit(
        &self,
        user: UserId,
        what: Counted,
        limit: u64,
        also: Option<(Counted, u64)>,
        now: DateTime<Utc>,
    ) -> Result<Admission, fred::error::Error> {
        let (other, other_limit) = match also {
            Some((other, limit)) => (other.field().to_string(), limit.to_string()),
            None => (String::new(), "0".to_string()),
        };
        let (counted, value): (i64, i64) = self
            .redis
            .eval(
                ADMIT,
                vec![self.key(user, now)],
                vec![
                    what.field().to_string(),
                    limit.to_string(),
                    other,
                    other_limit,
                    day_end(now).timestamp().to_string(),
                ],
            )
            .await?;
        Ok(match (counted, value) {
            (1, count) => Admission::Admitted(count.max(0) as u64),
            (_, 2) => Admission::Spent(also.map_or(what, |(other, _)| other)),
            _ => Admission::Spent(what),
        })
    }

    /// Adds `amount` (negative: gives back) to `user`'s count of `what` today.
    pub async fn add(
        &self,
        user: UserId,
        what: Counted,
        amount: i64,
        now: DateTime<Utc>,
    ) -> Result<u64, fred::error::Error> {
        let count: i64 = self
            .redis
            .eval(
                ADD,
                vec![self.key(user, now)],
                vec![
                    what.field().to_string(),
                    amount.to_string(),
                    day_end(now).timestamp().to_string(),
                ],
            )
            .await?;
        Ok(count.max(0) as u64)
    }

    /// Records the tokens a model call used for `user`. A ledger that cannot be reached is
    /// logged, never a reason to fail the answer already written: the tokens are spent.
    pub async fn record_tokens(&self, user: UserId, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let amount = i64::try_from(tokens).unwrap_or(i64::MAX);
        if let Err(error) = self.add(user, Counted::Tokens, amount, Utc::now()).await {
            tracing::warn!(%user, tokens, %error, "model usage not recorded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_ends_at_the_next_utc_midnight() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            day_end(at("2026-12-06T23:59:59Z")),
            at("2026-12-07T00:00:00Z")
        );
        assert_eq!(
            day_end(at("2026-12-07T00:00:00Z")),
            at("2026-12-08T00:00:00Z")
        );
        assert_eq!(
            day_end(at("2026-12-31T12:00:00Z")),
            at("2027-01-01T00:00:00Z")
        );
    }
}
