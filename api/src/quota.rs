//! Daily quotas, checked at the edge before anything is queued: every call of the AI model
//! costs money and capacity, and a teacher's email reaches someone's inbox, so one account
//! must not be able to spend the platform's budget or spam from its address.
//!
//! - Model calls: per person and day, a number of requests and a number of tokens, by role
//!   ([`QuotaLimits`], configured in `src/config.rs`). The manager counts a request when it
//!   accepts one (`sendTutorMessage`, `explainMistake`, the `request…` generation fields) and
//!   refuses once either budget is spent; the engine adds each answer's tokens afterwards
//!   (`teachin_workers::engine::usage`), since only then are they known.
//! - Emails: per sender and day.
//!
//! A refusal is `QUOTA_EXCEEDED` with `retryAfter` (seconds to the next UTC midnight, when
//! every quota resets) and counts in `teachin_quota_refusals_total{role, kind}`.

use crate::access::Caller;
use crate::error::{ApiError, ApiResult};
use crate::metrics::QuotaRefusals;
use chrono::{DateTime, Utc};
use fred::prelude::Client;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use teachin_workers::engine::usage::{day_end, Admission, Counted, UsageLedger};

/// One role's daily model budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelQuota {
    pub requests_per_day: u64,
    pub tokens_per_day: u64,
}

impl std::str::FromStr for ModelQuota {
    type Err = String;
    /// `REQUESTS/TOKENS` a day, e.g. `200/200000`.
    fn from_str(raw: &str) -> Result<Self, String> {
        let problem = || format!("`{raw}` is not requests/tokens a day, e.g. 200/200000");
        let (requests, tokens) = raw.split_once('/').ok_or_else(problem)?;
        let requests: u64 = requests.trim().parse().map_err(|_| problem())?;
        let tokens: u64 = tokens.trim().parse().map_err(|_| problem())?;
        if requests == 0 || tokens == 0 {
            return Err("a quota allows at least one request and one token a day".into());
        }
        Ok(ModelQuota {
            requests_per_day: requests,
            tokens_per_day: tokens,
        })
    }
}

/// The daily budgets of each role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    pub student: ModelQuota,
    pub teacher: ModelQuota,
    pub admin: ModelQuota,
    /// Emails one teacher (or admin) may queue a day.
    pub emails_per_day: u64,
}

impl Default for QuotaLimits {
    /// A student's day of practice is far below 200 requests (a tutor message is one, ten
    /// generated sentences are one); teachers also draft emails and generate for classes.
    fn default() -> Self {
        QuotaLimits {
            student: ModelQuota {
                requests_per_day: 200,
                tokens_per_day: 200_000,
            },
            teacher: ModelQuota {
                requests_per_day: 500,
                tokens_per_day: 1_000_000,
            },
            admin: ModelQuota {
                requests_per_day: 1_000,
                tokens_per_day: 2_000_000,
            },
            emails_per_day: 100,
        }
    }
}

impl QuotaLimits {
    pub fn model(&self, role: Role) -> ModelQuota {
        match role {
            Role::Student => self.student,
            Role::Teacher => self.teacher,
            Role::Admin => self.admin,
        }
    }
}

/// A counted use, to give back if what it was for did not happen (a refused command, a
/// replayed one).
#[derive(Debug, Clone, Copy)]
#[must_use = "give it back if the work is not done"]
pub struct Admitted {
    user: UserId,
    what: Counted,
    at: DateTime<Utc>,
}

/// The quotas of this environment over the shared ledger. Cheap to clone.
#[derive(Clone)]
pub struct Quotas {
    ledger: UsageLedger,
    limits: QuotaLimits,
    refusals: QuotaRefusals,
}

impl Quotas {
    /// Quotas of environment `namespace`, counted on `redis` (a connected client).
    pub fn new(redis: Client, namespace: &str, limits: QuotaLimits) -> Self {
        Quotas {
            ledger: UsageLedger::new(redis, namespace),
            limits,
            refusals: QuotaRefusals::default(),
        }
    }

    /// Counts refusals into `refusals` (the manager's `/metrics`).
    pub fn with_metrics(mut self, refusals: QuotaRefusals) -> Self {
        self.refusals = refusals;
        self
    }

    pub fn limits(&self) -> &QuotaLimits {
        &self.limits
    }

    /// Counts one request that will call the model, or refuses it when the caller's
    /// requests or tokens of the day are spent.
    pub async fn admit_model_call(&self, caller: Caller) -> ApiResult<Admitted> {
        let Caller::User { id, role } = caller else {
            return Err(ApiError::unauthenticated());
        };
        let quota = self.limits.model(role);
        self.admit(
            id,
            role,
            Counted::Requests,
            quota.requests_per_day,
            Some((Counted::Tokens, quota.tokens_per_day)),
        )
        .await
    }

    /// Counts one queued email of the caller's, or refuses it when the day's are spent.
    pub async fn admit_email(&self, caller: Caller) -> ApiResult<Admitted> {
        let Caller::User { id, role } = caller else {
            return Err(ApiError::unauthenticated());
        };
        self.admit(id, role, Counted::Emails, self.limits.emails_per_day, None)
            .await
    }

    /// Gives back a use whose work did not happen. Best effort: a ledger that cannot be
    /// reached leaves the use counted (the caller loses one of the day's, nothing more).
    pub async fn give_back(&self, admitted: Admitted) {
        if let Err(error) = self
            .ledger
            .add(admitted.user, admitted.what, -1, admitted.at)
            .await
        {
            tracing::warn!(user = %admitted.user, %error, "a quota use was not given back");
        }
    }

    async fn admit(
        &self,
        user: UserId,
        role: Role,
        what: Counted,
        limit: u64,
        also: Option<(Counted, u64)>,
    ) -> ApiResult<Admitted> {
        let now = Utc::now();
        match self.ledger.admit(user, what, limit, also, now).await? {
            Admission::Admitted(_) => Ok(Admitted {
                user,
                what,
                at: now,
            }),
            Admission::Spent(spent) => {
                let kind = spent.field();
                self.refusals.refused(role_label(role), kind);
                Err(refusal(spent, now))
            }
        }
    }
}

/// The metric label of a role.
fn role_label(role: Role) -> &'static str {
    match role {
        Role::Student => "student",
        Role::Teacher => "teacher",
        Role::Admin => "admin",
    }
}

/// The error for a spent quota, with when it resets.
fn refusal(spent: Counted, now: DateTime<Utc>) -> ApiError {
    let resets = day_end(now);
    let what = match spent {
        Counted::Requests => "your AI requests for today are used up",
        Counted::Tokens => "your AI usage for today is used up",
        Counted::Emails => "you have sent as many emails as a day allows",
    };
    ApiError::quota_exceeded(
        format!(
            "{what}; the quota resets at {} UTC",
            resets.format("%Y-%m-%dT%H:%M:%SZ")
        ),
        (resets - now).to_std().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    #[test]
    fn quotas_parse_and_default_by_role() {
        assert_eq!(
            "200/200000".parse(),
            Ok(ModelQuota {
                requests_per_day: 200,
                tokens_per_day: 200_000
            })
        );
        assert!("200".parse::<ModelQuota>().is_err());
        assert!("0/100".parse::<ModelQuota>().is_err());
        assert!("a/b".parse::<ModelQuota>().is_err());
        let limits = QuotaLimits::default();
        assert!(
            limits.model(Role::Student).requests_per_day
                < limits.model(Role::Teacher).requests_per_day
        );
        assert!(
            limits.model(Role::Teacher).tokens_per_day < limits.model(Role::Admin).tokens_per_day
        );
    }

    #[test]
    fn a_refusal_says_when_the_quota_resets() {
        let now = "2026-12-06T22:00:00Z".parse().unwrap();
        let e = refusal(Counted::Tokens, now);
        assert_eq!(e.code, Code::QuotaExceeded);
        assert_eq!(e.retry_after, Some(2 * 3600));
        assert!(e.message.contains("2026-12-07T00:00:00Z"), "{}", e.message);
    }
}
