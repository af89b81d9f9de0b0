//! Signing up, in and out, and renewing an access token.
//!
//! The refresh token never reaches JavaScript: it travels in an HttpOnly cookie. Its
//! companion CSRF token is readable, and a refresh or a logout that presents the refresh
//! cookie must echo it in `X-CSRF-Token`; the API compares the header with the cookie and
//! with the value bound to the session, so a cross-site request — which carries the cookies
//! but cannot read them — is refused.
//! Sign-up and refresh are rate-limited per client address; sign-in counts only failures,
//! per account and per client address (`auth::rate_limit`).

use super::{authorize, command_context, new_id, request, state};
use crate::access::Subject;
use crate::auth::password;
use crate::auth::rate_limit::{Budget, Limited, SignInLimits};
use crate::auth::sessions::{SessionError, SessionTokens};
use crate::error::{ApiError, ApiResult};
use async_graphql::{Context, InputObject, Object, SimpleObject};
use chrono::{DateTime, Utc};
use cookie::Cookie;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::services::ClaimScope;
use teachin_domain::user::{EmailAddress, HebrewLevel, Language, User, UserCommand};
use uuid::Uuid;

pub const REFRESH_COOKIE: &str = "refreshToken";
pub const CSRF_COOKIE: &str = "csrfToken";

#[derive(InputObject)]
pub struct SignUpInput {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    /// 8 to 128 characters.
    pub password: String,
    pub preferred_language: Option<Language>,
    pub hebrew_level: Option<HebrewLevel>,
    #[graphql(default)]
    pub interests: Vec<String>,
}

/// A new account.
#[derive(SimpleObject)]
pub struct SignedUp {
    pub user_id: Uuid,
    pub role: Role,
    /// True when this answers a retry of an earlier sign-up with the same idempotency key.
    pub replayed: bool,
}

/// What a browser needs after signing in or refreshing. The refresh token itself is in the
/// HttpOnly cookie set on the same response.
#[derive(SimpleObject)]
pub struct AuthSession {
    pub access_token: String,
    pub expires_at: DateTime<Utc>,
    /// Echo it in the `X-CSRF-Token` header when refreshing.
    pub csrf_token: String,
    pub user_id: Uuid,
    pub role: Role,
}

#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Creates a student account (teachers and admins are created by an admin).
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        input: SignUpInput,
        idempotency_key: Option<String>,
    ) -> ApiResult<SignedUp> {
        let caller = authorize(ctx, "signUp", Subject::Caller).await?;
        // Every sign-up in a request counts, aliased ones included.
        limit(ctx, "signUp", state(ctx).policy.signup_budget).await?;
        password::check_strength(&input.password)
            .map_err(|rule| ApiError::bad_input("password", rule))?;
        let password_hash = password::hash_async(input.password)
            .await
            .map_err(ApiError::internal)?;
        // Anonymous callers share one issuer name, so the key is scoped by the address too:
        // two people who picked the same key do not collide.
        let idempotency_key = idempotency_key.map(|key| {
            let scoped = format!("{}:{}", input.email.trim().to_lowercase(), key.trim());
            Uuid::new_v5(&Uuid::NAMESPACE_OID, scoped.as_bytes()).to_string()
        });
        let user_id = UserId(new_id(caller, "signUp", idempotency_key.as_deref()));
        let command = UserCommand::Register {
            user_id,
            role: Role::Student,
            first_name: input.first_name,
            last_name: input.last_name,
            email: input.email,
            password_hash,
            preferred_language: input.preferred_language.unwrap_or_default(),
            hebrew_level: input.hebrew_level,
            interests: input.interests,
            registered_by: Actor::Anonymous,
        };
        let context = command_context(ctx, caller, idempotency_key.as_deref())?;
        let receipt = state(ctx)
            .bus
            .execute::<User>(&user_id.to_string(), command, &context)
            .await?;
        Ok(SignedUp {
            user_id: user_id.0,
            role: Role::Student,
            replayed: receipt.replayed,
        })
    }

    /// Signs in with email and password; sets the refresh cookie.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> ApiResult<AuthSession> {
        authorize(ctx, "login", Subject::Caller).await?;
        let api = state(ctx);
        // Before anything is looked up, and the same for every email, so a refusal tells
        // nothing about which addresses have accounts.
        let limits = SignInLimits {
            client_failures: api.policy.login_budget,
            account: api.policy.login_backoff,
        };
        let attempt = api
            .limiter
            .begin_sign_in(&request(ctx).client_ip, &email, limits)
            .await?
            .map_err(rate_limited)?;
        let refused = || ApiError {
            message: "the email or password is wrong".into(),
            ..ApiError::unauthenticated()
        };
        // The revocation epoch is read before the role, so a token issued here under a role
        // that changes meanwhile carries an epoch the change has already passed.
        let mut epoch = 0;
        let user = match EmailAddress::parse(&email) {
            Ok(address) => match api
                .claims
                .holder(ClaimScope::UserEmail, address.as_str())
                .await?
            {
                Some(owner) => {
                    if let Ok(id) = owner.parse::<UserId>() {
                        epoch = api
                            .sessions
                            .revocations()
                            .epoch(id)
                            .await
                            .map_err(ApiError::internal)?;
                    }
                    api.bus
                        .reader()
                        .load::<User>(&owner)
                        .await
                        .map_err(ApiError::internal)?
                }
                None => User::default(),
            },
            Err(_) => User::default(),
        };
        let stored = match user.password_hash() {
            Some(sealed) if !user.is_erased() => api
                .bus
                .services()
                .vault
                .open(sealed)
                .await
                .map_err(ApiError::internal)?,
            _ => None,
        };
        // Unknown emails are checked against a real hash too, so timing does not tell which
        // addresses have accounts.
        let password_ok = password::verify_async(password, stored)
            .await
            .map_err(ApiError::internal)?;
        if !password_ok {
            api.limiter.sign_in_failed(&attempt, limits).await?;
            return Err(refused());
        }
        api.limiter.sign_in_succeeded(&attempt).await?;
        let session = api.sessions.start(user.id()).await.map_err(session_error)?;
        Ok(deliver(ctx, session, user.role(), epoch))
    }

    /// Exchanges the refresh cookie (with the CSRF header) for a new access token, rotating
    /// the refresh token. Replaying an already rotated token signs that login out everywhere.
    async fn refresh_session(&self, ctx: &Context<'_>) -> ApiResult<AuthSession> {
        authorize(ctx, "refreshSession", Subject::Caller).await?;
        let api = state(ctx);
        limit(ctx, "refresh", api.policy.refresh_budget).await?;
        let info = request(ctx);
        let refresh = info.cookie(REFRESH_COOKIE).ok_or_else(|| ApiError {
            message: "no refresh cookie: sign in again".into(),
            ..ApiError::unauthenticated()
        })?;
        let csrf = echoed_csrf(info)?;
        let session = api
            .sessions
            .rotate(refresh, Some(csrf))
            .await
            .map_err(session_error)?;
        // The epoch first, then the role (see `auth::revocation`): a role change or an
        // erasure takes effect here.
        let epoch = api
            .sessions
            .revocations()
            .epoch(session.user_id)
            .await
            .map_err(ApiError::internal)?;
        let user = api
            .bus
            .reader()
            .load::<User>(&session.user_id.to_string())
            .await
            .map_err(ApiError::internal)?;
        if !user.is_registered() || user.is_erased() {
            api.sessions
                .revoke_user(session.user_id)
                .await
                .map_err(session_error)?;
            return Err(ApiError::unauthenticated());
        }
        Ok(deliver(ctx, session, user.role(), epoch))
    }

    /// Ends the login of the refresh cookie and clears the cookies. With the refresh cookie,
    /// the CSRF token must be echoed in `X-CSRF-Token` (as for `refreshSession`), so another
    /// site cannot sign a browser out; otherwise it ends the bearer token's login.
    async fn logout(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let caller = authorize(ctx, "logout", Subject::Caller).await?;
        let sessions = &state(ctx).sessions;
        let info = request(ctx);
        // Whose access tokens end: the refresh session's person and the caller's.
        let mut signed_out = Vec::new();
        if let Some(token) = info.cookie(REFRESH_COOKIE) {
            let csrf = echoed_csrf(info)?;
            signed_out.extend(sessions.revoke(token, csrf).await.map_err(session_error)?);
        }
        signed_out.extend(caller.user_id());
        signed_out.dedup();
        for user in signed_out {
            // Their access tokens stop working and their open sockets close; their other
            // devices refresh (their refresh sessions live on) and carry on.
            sessions
                .revocations()
                .bump(user)
                .await
                .map_err(ApiError::internal)?;
        }
        let policy = &state(ctx).policy;
        for name in [REFRESH_COOKIE, CSRF_COOKIE] {
            let mut gone = session_cookie(name, String::new(), name == REFRESH_COOKIE, policy);
            gone.make_removal();
            ctx.append_http_header("set-cookie", gone.to_string());
        }
        Ok(true)
    }
}

async fn limit(ctx: &Context<'_>, action: &str, budget: Budget) -> ApiResult<()> {
    let client = &request(ctx).client_ip;
    state(ctx)
        .limiter
        .check(action, client, budget)
        .await?
        .map_err(rate_limited)
}

fn rate_limited(limited: Limited) -> ApiError {
    ApiError::rate_limited(limited.retry_after)
}

/// The CSRF token a browser echoed in `X-CSRF-Token`, when it equals the `csrfToken` cookie
/// (another site can make the browser send the cookies, but cannot read them to echo one).
fn echoed_csrf(info: &super::RequestInfo) -> ApiResult<&str> {
    match (info.cookie(CSRF_COOKIE), info.csrf_header.as_deref()) {
        (Some(c), Some(h)) if crate::auth::sessions::same_secret(c, h) => Ok(h),
        _ => Err(ApiError {
            message: "the X-CSRF-Token header must equal the csrfToken cookie".into(),
            ..ApiError::forbidden()
        }),
    }
}

fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::Unknown => ApiError {
            message: "the session has ended: sign in again".into(),
            ..ApiError::unauthenticated()
        },
        SessionError::Reused { user_id } => {
            tracing::warn!(%user_id, "refresh token reuse: the login was revoked");
            ApiError {
                message: "this session was revoked because its refresh token was used twice; sign in again".into(),
                ..ApiError::unauthenticated()
            }
        }
        SessionError::CsrfMismatch => ApiError {
            message: "the CSRF token does not belong to this session".into(),
            ..ApiError::forbidden()
        },
        SessionError::Store(e) => ApiError::from(e),
    }
}

/// Sets the cookies of `session` on the response and issues its access token.
fn deliver(ctx: &Context<'_>, session: SessionTokens, role: Role, epoch: u64) -> AuthSession {
    let api = state(ctx);
    let policy = &api.policy;
    ctx.append_http_header(
        "set-cookie",
        session_cookie(REFRESH_COOKIE, session.refresh_token, true, policy).to_string(),
    );
    ctx.append_http_header(
        "set-cookie",
        session_cookie(CSRF_COOKIE, session.csrf_token.clone(), false, policy).to_string(),
    );
    let issued = api.tokens.issue_with_epoch(session.user_id, role, epoch);
    AuthSession {
        access_token: issued.token,
        expires_at: issued.expires_at,
        csrf_token: session.csrf_token,
        user_id: session.user_id.0,
        role,
    }
}

fn session_cookie(
    name: &'static str,
    value: String,
    http_only: bool,
    policy: &super::SessionPolicy,
) -> Cookie<'static> {
    let max_age =
        cookie::time::Duration::seconds(crate::auth::sessions::REFRESH_TTL.as_secs() as i64);
    Cookie::build((name, value))
        .http_only(http_only)
        .secure(policy.secure_cookies)
        .same_site(policy.same_site)
        .path("/")
        .max_age(max_age)
        .build()
}
