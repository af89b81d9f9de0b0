//! Access tokens: short-lived JWTs (HS256) that every request and hub connection presents.
//!
//! They are the only thing the API trusts about a caller's identity, so verification is
//! strict: the algorithm is pinned (a token claiming `none` or RS256 is refused before its
//! signature is looked at), issuer and audience must match, and expiry is checked with a
//! small leeway for clock skew. The role travels in the token; a role change, a logout or an
//! erasure bumps the person's revocation epoch (`auth::revocation`), and a token carrying an
//! older epoch (`ep`) is refused, so it takes effect at once rather than at the next refresh.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use uuid::Uuid;

/// How long an access token is valid.
pub const ACCESS_TOKEN_TTL: Duration = Duration::from_secs(15 * 60);
/// The shortest secret accepted: 256 bits, the HS256 key size.
pub const MIN_SECRET_BYTES: usize = 32;
/// Clock skew tolerated between replicas, in seconds.
const LEEWAY_SECS: u64 = 5;

/// The claims Teachin puts in an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    role: Role,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
    jti: Uuid,
    /// The person's revocation epoch when the token was issued (absent: 0).
    #[serde(default)]
    ep: u64,
}

/// A verified caller: who they are and in which role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    pub user_id: UserId,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    /// The revocation epoch the token was issued under.
    pub epoch: u64,
}

/// A freshly issued token and when it stops working.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused. The client only ever learns `UNAUTHENTICATED`; the reason is
/// for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is malformed, tampered with, or not ours: {0}")]
    Invalid(String),
}

#[derive(Debug, thiserror::Error)]
#[error("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")]
pub struct WeakSecret;

/// Issues and verifies access tokens with one shared secret.
#[derive(Clone)]
pub struct AccessTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(WeakSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl: ACCESS_TOKEN_TTL,
        })
    }

    /// The same keys with another lifetime (tests use a lifetime in the past).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// A token under revocation epoch 0 (a person whose logins were never revoked).
    pub fn issue(&self, user_id: UserId, role: Role) -> IssuedToken {
        self.issue_at(user_id, role, Utc::now())
    }

    /// A token under the person's current revocation `epoch` (read before their role was).
    pub fn issue_with_epoch(&self, user_id: UserId, role: Role, epoch: u64) -> IssuedToken {
        self.issue_full(user_id, role, Utc::now(), epoch)
    }

    /// Issues a token as if it were `now` (tests make expired tokens this way).
    pub fn issue_at(&self, user_id: UserId, role: Role, now: DateTime<Utc>) -> IssuedToken {
        self.issue_full(user_id, role, now, 0)
    }

    fn issue_full(
        &self,
        user_id: UserId,
        role: Role,
        now: DateTime<Utc>,
        epoch: u64,
    ) -> IssuedToken {
        let expires_at = now + chrono::Duration::from_std(self.ttl).expect("ttl fits");
        let claims = Claims {
            sub: user_id.0,
            role,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
            jti: Uuid::new_v4(),
            ep: epoch,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        IssuedToken { token, expires_at }
    }

    pub fn verify(&self, token: &str) -> Result<Authenticated, TokenError> {
        let _span = tracing::debug_span!("auth.jwt").entered();
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                other => TokenError::Invalid(format!("{other:?}")),
            })?;
        let expires_at = DateTime::from_timestamp(data.claims.exp, 0)
            .ok_or_else(|| TokenError::Invalid("expiry out of range".into()))?;
        Ok(Authenticated {
            user_id: UserId(data.claims.sub),
            role: data.claims.role,
            expires_at,
            epoch: data.claims.ep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn tokens() -> AccessTokens {
        AccessTokens::new(SECRET, "teachin", "teachin-portals").unwrap()
    }

    #[test]
    fn a_token_round_trips() {
        let user = UserId::new();
        let issued = tokens().issue(user, Role::Teacher);
        let who = tokens().verify(&issued.token).unwrap();
        assert_eq!((who.user_id, who.role), (user, Role::Teacher));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(AccessTokens::new(b"short", "teachin", "teachin-portals").is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let old = Utc::now() - chrono::Duration::hours(1);
        let issued = tokens().issue_at(UserId::new(), Role::Student, old);
        assert_eq!(tokens().verify(&issued.token), Err(TokenError::Expired));
    }

    #[test]
    fn another_issuer_audience_or_secret_is_refused() {
        let user = UserId::new();
        let other_aud = AccessTokens::new(SECRET, "teachin", "elsewhere").unwrap();
        let other_iss = AccessTokens::new(SECRET, "someone", "teachin-portals").unwrap();
        let other_key = AccessTokens::new(
            b"ffffffffffffffffffffffffffffffff",
            "teachin",
            "teachin-portals",
        )
        .unwrap();
        for wrong in [other_aud, other_iss, other_key] {
            let t = wrong.issue(user, Role::Admin).token;
            assert!(matches!(tokens().verify(&t), Err(TokenError::Invalid(_))));
        }
    }

    #[test]
    fn alg_none_and_a_tampered_payload_are_refused() {
        let issued = tokens().issue(UserId::new(), Role::Student);
        let parts: Vec<&str> = issued.token.split('.').collect();
        // Same claims, header says `none`, no signature.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let unsigned = format!("{none_header}.{}.", parts[1]);
        assert!(tokens().verify(&unsigned).is_err());
        // Promote ourselves to admin without re-signing.
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(payload.replace("Student", "Admin"));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(tokens().verify(&tampered).is_err());
    }
}
