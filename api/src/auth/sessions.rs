//! Refresh sessions: the long-lived half of a login, kept in Redis.
//!
//! A login starts a *family*. The browser holds one opaque refresh token of the family (in an
//! HttpOnly cookie); Redis holds only its HMAC, so a leaked Redis dump cannot be replayed.
//! Every refresh rotates: the presented token must be the family's current one, and a new
//! one replaces it. Presenting an older token of the family means it was copied — the thief
//! or the victim is replaying a rotated token — so the whole family is revoked and both are
//! signed out. Rotation runs as one Lua script, so two concurrent refreshes with the same
//! token cannot both win.
//!
//! Keys (all under the environment's namespace):
//! - `teachin:{ns}:refresh:family:{id}` hash: `user`, `csrf` (HMAC of the CSRF token),
//!   `current` (HMAC of the current refresh token), `revoked`; expires with the session.
//! - `teachin:{ns}:refresh:token:{hmac}` → family id, for every token the family ever had,
//!   each expiring with its own lifetime, so a replay is recognised as long as it could work.
//! - `teachin:{ns}:refresh:user:{id}` set of family ids, to sign a person out everywhere;
//!   `cleanup` drops ids whose family has expired.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use fred::prelude::*;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::time::Duration;
use teachin_domain::ids::UserId;
use uuid::Uuid;

/// How long a refresh session lives without being used (the original's 60 days).
pub const REFRESH_TTL: Duration = Duration::from_secs(60 * 24 * 3600);

/// What a successful login or refresh hands to the browser.
#[derive(Debug, Clone)]
pub struct SessionTokens {
    pub family: Uuid,
    pub user_id: UserId,
    pub refresh_token: String,
    pub csrf_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such token: never issued, expired, logged out, or revoked earlier.
    #[error("the refresh token is unknown or expired")]
    Unknown,
    /// The token was already rotated: the family is now revoked.
    #[error(
        "a rotated refresh token was presented again; every session of this login was revoked"
    )]
    Reused { user_id: UserId },
    /// The CSRF token does not match the one issued with the session.
    #[error("the CSRF token does not match")]
    CsrfMismatch,
    #[error("session store unavailable: {0}")]
    Store(#[from] fred::error::Error),
}

/// The refresh-session store of one environment.
#[derive(Clone)]
pub struct RefreshSessions {
    redis: Client,
    hash_key: Vec<u8>,
    prefix: String,
    ttl: Duration,
    /// The access-token side of signing out: revocation epochs in the same Redis.
    revocations: super::revocation::Revocations,
}

/// Atomically checks the presented token against its family and rotates it.
/// KEYS: token key, new token key. ARGV: family-key prefix, presented hmac, new hmac,
/// presented CSRF hmac (or "" when the caller is not a browser), ttl seconds, new CSRF hmac.
const ROTATE: &str = r#"
local fam = redis.call('GET', KEYS[1])
if not fam then return {'unknown'} end
local famkey = ARGV[1] .. fam
local f = redis.call('HMGET', famkey, 'user', 'current', 'csrf', 'revoked')
if not f[1] or f[4] == '1' then return {'unknown'} end
if f[2] ~= ARGV[2] then
  redis.call('HSET', famkey, 'revoked', '1')
  return {'reused', f[1]}
end
if ARGV[4] ~= '' and f[3] ~= ARGV[4] then return {'csrf'} end
redis.call('HSET', famkey, 'current', ARGV[3], 'csrf', ARGV[6])
redis.call('EXPIRE', famkey, ARGV[5])
redis.call('SET', KEYS[2], fam, 'EX', ARGV[5])
return {'ok', f[1], fam}
"#;

impl RefreshSessions {
    pub fn new(redis: Client, hash_key: &[u8], namespace: &str) -> Self {
        Self {
            redis: redis.clone(),
            hash_key: hash_key.to_vec(),
            prefix: format!("teachin:{namespace}:refresh:"),
            ttl: REFRESH_TTL,
            revocations: super::revocation::Revocations::new(redis, namespace),
        }
    }

    /// The revocation epochs of this environment (access tokens and open sockets).
    pub fn revocations(&self) -> &super::revocation::Revocations {
        &self.revocations
    }

    fn digest(&self, token: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.hash_key).expect("any key length");
        mac.update(token.as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    fn family_key(&self, family: &str) -> String {
        format!("{}family:{family}", self.prefix)
    }
    fn token_key(&self, digest: &str) -> String {
        format!("{}token:{digest}", self.prefix)
    }
    fn user_key(&self, user: UserId) -> String {
        format!("{}user:{user}", self.prefix)
    }

    /// Starts a family for a person who just proved who they are.
    pub async fn start(&self, user_id: UserId) -> Result<SessionTokens, SessionError> {
        let family = Uuid::new_v4();
        let (refresh_token, csrf_token) = (random_token(), random_token());
        let digest = self.digest(&refresh_token);
        let ttl = self.ttl.as_secs() as i64;
        let fam_key = self.family_key(&family.to_string());
        let tx = self.redis.multi();
        let _: () = tx
            .hset(
                &fam_key,
                [
                    ("user", user_id.to_string()),
                    ("current", digest.clone()),
                    ("csrf", self.digest(&csrf_token)),
                    ("revoked", "0".to_string()),
                ],
            )
            .await?;
        let _: () = tx.expire(&fam_key, ttl, None).await?;
        let _: () = tx
            .set(
                self.token_key(&digest),
                family.to_string(),
                Some(Expiration::EX(ttl)),
                None,
                false,
            )
            .await?;
        let _: () = tx.sadd(self.user_key(user_id), family.to_string()).await?;
        let _: () = tx.exec(true).await?;
        Ok(SessionTokens {
            family,
            user_id,
            refresh_token,
            csrf_token,
        })
    }

    /// Exchanges the current refresh token (and, from a browser, its CSRF token) for new ones.
    pub async fn rotate(
        &self,
        refresh_token: &str,
        csrf_token: Option<&str>,
    ) -> Result<SessionTokens, SessionError> {
        let presented = self.digest(refresh_token);
        let (new_refresh, new_csrf) = (random_token(), random_token());
        let new_digest = self.digest(&new_refresh);
        let reply: Vec<String> = self
            .redis
            .eval(
                ROTATE,
                vec![self.token_key(&presented), self.token_key(&new_digest)],
                vec![
                    format!("{}family:", self.prefix),
                    presented,
                    new_digest,
                    csrf_token.map(|c| self.digest(c)).unwrap_or_default(),
                    self.ttl.as_secs().to_string(),
                    self.digest(&new_csrf),
                ],
            )
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let user_id = parse_user(reply.get(1))?;
                let family = reply
                    .get(2)
                    .and_then(|f| f.parse().ok())
                    .ok_or(SessionError::Unknown)?;
                Ok(SessionTokens {
                    family,
                    user_id,
                    refresh_token: new_refresh,
                    csrf_token: new_csrf,
                })
            }
            Some("reused") => Err(SessionError::Reused {
                user_id: parse_user(reply.get(1))?,
            }),
            Some("csrf") => Err(SessionError::CsrfMismatch),
            _ => Err(SessionError::Unknown),
        }
    }

    /// Ends the family the token belongs to (logout), when `csrf_token` is the one issued
    /// with it; returns whose it was. Unknown tokens are ignored.
    pub async fn revoke(
        &self,
        refresh_token: &str,
        csrf_token: &str,
    ) -> Result<Option<UserId>, SessionError> {
        let fam: Option<String> = self
            .redis
            .get(self.token_key(&self.digest(refresh_token)))
            .await?;
        let Some(fam) = fam else {
            return Ok(None);
        };
        let (user, csrf): (Option<String>, Option<String>) = self
            .redis
            .hmget(self.family_key(&fam), vec!["user", "csrf"])
            .await?;
        if let Some(bound) = csrf {
            if !same_secret(&bound, &self.digest(csrf_token)) {
                return Err(SessionError::CsrfMismatch);
            }
        }
        let _: () = self.redis.del(self.family_key(&fam)).await?;
        Ok(user.and_then(|u| u.parse().ok()))
    }

    /// Signs a person out everywhere (role change, erasure, password change).
    pub async fn revoke_user(&self, user_id: UserId) -> Result<usize, SessionError> {
        let families: Vec<String> = self.redis.smembers(self.user_key(user_id)).await?;
        for fam in &families {
            let _: () = self.redis.del(self.family_key(fam)).await?;
        }
        let _: () = self.redis.del(self.user_key(user_id)).await?;
        Ok(families.len())
    }

    /// Whether the family is still signed in.
    pub async fn is_active(&self, family: Uuid) -> Result<bool, SessionError> {
        let revoked: Option<String> = self
            .redis
            .hget(self.family_key(&family.to_string()), "revoked")
            .await?;
        Ok(revoked.as_deref() == Some("0"))
    }

    /// Purges what expiry leaves behind: ids of expired or revoked families in the per-user
    /// index, and revoked families themselves. Returns how many families were purged.
    pub async fn cleanup(&self) -> Result<usize, SessionError> {
        let mut purged = 0;
        let pattern = format!("{}user:*", self.prefix);
        let mut cursor = "0".to_string();
        loop {
            let (next, keys): (String, Vec<String>) = self
                .redis
                .custom(
                    fred::cmd!("SCAN"),
                    vec![
                        cursor.clone(),
                        "MATCH".into(),
                        pattern.clone(),
                        "COUNT".into(),
                        "500".into(),
                    ],
                )
                .await?;
            for user_key in keys {
                let families: Vec<String> = self.redis.smembers(&user_key).await?;
                for fam in families {
                    let revoked: Option<String> =
                        self.redis.hget(self.family_key(&fam), "revoked").await?;
                    if revoked.as_deref() != Some("0") {
                        let _: () = self.redis.del(self.family_key(&fam)).await?;
                        let _: () = self.redis.srem(&user_key, &fam).await?;
                        purged += 1;
                    }
                }
            }
            if next == "0" {
                break;
            }
            cursor = next;
        }
        Ok(purged)
    }
}

fn parse_user(raw: Option<&String>) -> Result<UserId, SessionError> {
    raw.and_then(|u| u.parse().ok())
        .ok_or(SessionError::Unknown)
}

/// 256 random bits, URL-safe.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub use cookie::SameSite;

/// The `SameSite` attribute of the session cookies, from its setting: `strict` where the
/// portals share the API's site; `none` only where they are on another site, and the browser
/// must send the cookies cross-site (the CSRF header is then what protects them); `lax`.
pub fn same_site(setting: &str) -> Option<SameSite> {
    match setting.trim().to_ascii_lowercase().as_str() {
        "strict" => Some(SameSite::Strict),
        "lax" => Some(SameSite::Lax),
        "none" => Some(SameSite::None),
        _ => None,
    }
}

/// Compares two secrets without leaking, through timing, where they first differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
