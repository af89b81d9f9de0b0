//! Media: avatars (upload URL → the browser uploads → confirm → read URL; remove) and the
//! speech token the browser's speech SDK uses. Storage, signing and the checks are in
//! `teachin_workers::media` and `teachin_workers::speech`; here they meet authorization and
//! the `User` aggregate, which records the avatar (`SetAvatar` / `ClearAvatar`).
//!
//! The avatar's current path is read from the aggregate, not the read model: a portal that
//! confirms and then asks for the read URL at once must see its own write, and the previous
//! file must be known exactly to be deleted. An erasure deletes the person's whole folder
//! ([`delete_files_of_erased`], called by `eraseUser`).

use super::{authorize, execute, state, Changed};
use crate::access::Subject;
use crate::error::{ApiError, ApiResult, Code};
use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use teachin_domain::ids::UserId;
use teachin_domain::user::{User, UserCommand, AVATAR_CONTENT_TYPES};
use teachin_workers::media::{AvatarError, AvatarStore};
use uuid::Uuid;

/// Where and how to upload one avatar.
#[derive(SimpleObject)]
pub struct AvatarUpload {
    /// `PUT` the image bytes here, with `headers`, before `expiresAt`.
    pub upload_url: String,
    /// Pass this to `confirmAvatarUpload` once the upload is done.
    pub path: String,
    pub content_type: String,
    pub expires_at: DateTime<Utc>,
    pub max_bytes: i64,
    pub headers: Vec<HttpHeader>,
    pub accepted_content_types: Vec<String>,
}

#[derive(SimpleObject)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// A URL that works until `expiresAt`.
#[derive(SimpleObject)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// An Azure Speech token for the browser's speech SDK.
#[derive(SimpleObject)]
pub struct SpeechToken {
    pub token: String,
    pub region: String,
    pub expires_at: DateTime<Utc>,
}

fn avatar_error(e: AvatarError) -> ApiError {
    match (&e, e.field()) {
        (_, Some(field)) => ApiError::bad_input(field, e.to_string()),
        (AvatarError::NotUploaded, None) => ApiError {
            code: Code::NotFound,
            message: e.to_string(),
            field: None,
            retry_after: None,
        },
        _ => ApiError::internal(e),
    }
}

/// The avatar store, or the answer for an environment without one.
fn avatars<'a>(ctx: &Context<'a>) -> ApiResult<&'a AvatarStore> {
    state(ctx).avatars.as_ref().ok_or_else(|| ApiError {
        code: Code::NotFound,
        message: "avatars are not configured in this environment".into(),
        field: None,
        retry_after: None,
    })
}

/// The person's current avatar path, from their aggregate.
async fn current_avatar(ctx: &Context<'_>, user: Uuid) -> ApiResult<Option<String>> {
    let user = state(ctx)
        .bus
        .reader()
        .load::<User>(&user.to_string())
        .await
        .map_err(|e| ApiError::internal(format!("loading user {user}: {e}")))?;
    Ok(user.avatar().map(|a| a.blob_path.clone()))
}

/// Deletes a file that is no longer anyone's avatar. A failure leaves an orphan file, not a
/// wrong avatar, so it is logged rather than reported.
async fn delete_quietly(ctx: &Context<'_>, path: &str) {
    let Ok(store) = avatars(ctx) else { return };
    if let Err(e) = store.delete(path).await {
        tracing::warn!(%path, error = %e, "the replaced avatar file could not be deleted");
    }
}

/// Deletes every file of a person just erased: their avatar and any upload never confirmed.
/// Called once the erasure is recorded, and again by a retried erasure; a failure (or a crash
/// before this runs) leaves the files to the daily sweep (`teachin cron purge-uploads`,
/// `teachin_workers::media::retention`), which deletes an erased person's files at once.
pub(super) async fn delete_files_of_erased(ctx: &Context<'_>, user_id: Uuid) {
    let Ok(store) = avatars(ctx) else { return };
    if let Err(e) = store.delete_all_of(UserId(user_id)).await {
        tracing::warn!(%user_id, error = %e, "an erased person's files could not be deleted yet; the upload sweep will");
    }
}

#[derive(Default)]
pub struct MediaQuery;

#[Object]
impl MediaQuery {
    /// A URL to show a person's avatar (good for 15 minutes); `null` without an avatar.
    async fn avatar_url(&self, ctx: &Context<'_>, user_id: Uuid) -> ApiResult<Option<SignedUrl>> {
        authorize(ctx, "avatarUrl", Subject::Person(UserId(user_id))).await?;
        let Some(path) = current_avatar(ctx, user_id).await? else {
            return Ok(None);
        };
        let signed = avatars(ctx)?.read_url(&path).await.map_err(avatar_error)?;
        Ok(Some(SignedUrl {
            url: signed.url,
            expires_at: signed.expires_at,
        }))
    }

    /// A short-lived token (10 minutes) for the browser's Azure Speech SDK, and its region.
    async fn speech_token(&self, ctx: &Context<'_>) -> ApiResult<SpeechToken> {
        authorize(ctx, "speechToken", Subject::Caller).await?;
        let Some(speech) = &state(ctx).speech else {
            return Err(ApiError {
                code: Code::NotFound,
                message: "speech is not configured in this environment".into(),
                field: None,
                retry_after: None,
            });
        };
        let token = speech.token().await.map_err(ApiError::internal)?;
        Ok(SpeechToken {
            token: token.token,
            region: token.region,
            expires_at: token.expires_at,
        })
    }
}

#[derive(Default)]
pub struct MediaMutation;

#[Object]
impl MediaMutation {
    /// Step 1 of changing an avatar: a URL to upload one JPEG, PNG or WebP image of `size`
    /// bytes to, for 5 minutes.
    async fn request_avatar_upload(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        content_type: String,
        size: i64,
    ) -> ApiResult<AvatarUpload> {
        authorize(ctx, "requestAvatarUpload", Subject::Person(UserId(user_id))).await?;
        let size = u64::try_from(size)
            .map_err(|_| ApiError::bad_input("size", "a size is a number of bytes"))?;
        let ticket = avatars(ctx)?
            .upload_url(UserId(user_id), &content_type, size)
            .await
            .map_err(avatar_error)?;
        Ok(AvatarUpload {
            upload_url: ticket.url,
            path: ticket.path,
            content_type: ticket.content_type.to_string(),
            expires_at: ticket.expires_at,
            max_bytes: ticket.max_bytes as i64,
            headers: ticket
                .headers
                .into_iter()
                .map(|(name, value)| HttpHeader { name, value })
                .collect(),
            accepted_content_types: AVATAR_CONTENT_TYPES.iter().map(|t| t.to_string()).collect(),
        })
    }

    /// Step 2, after the upload: checks the file (the person's folder, present, an image by
    /// its bytes, not too large), makes it the avatar, and deletes the previous one.
    async fn confirm_avatar_upload(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        path: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller =
            authorize(ctx, "confirmAvatarUpload", Subject::Person(UserId(user_id))).await?;
        let checked = avatars(ctx)?
            .check_upload(UserId(user_id), path.trim())
            .await
            .map_err(avatar_error)?;
        let previous = current_avatar(ctx, user_id).await?;
        let changed = execute::<User>(
            ctx,
            caller,
            user_id,
            UserCommand::SetAvatar {
                blob_path: checked.path.clone(),
                content_type: checked.content_type.to_string(),
            },
            idempotency_key.as_deref(),
        )
        .await?;
        if let Some(previous) = previous.filter(|p| *p != checked.path) {
            delete_quietly(ctx, &previous).await;
        }
        Ok(changed)
    }

    /// Removes the avatar and deletes its file.
    async fn remove_avatar(
        &self,
        ctx: &Context<'_>,
        user_id: Uuid,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "removeAvatar", Subject::Person(UserId(user_id))).await?;
        let previous = current_avatar(ctx, user_id).await?;
        let changed = execute::<User>(
            ctx,
            caller,
            user_id,
            UserCommand::ClearAvatar,
            idempotency_key.as_deref(),
        )
        .await?;
        if let Some(previous) = previous {
            delete_quietly(ctx, &previous).await;
        }
        Ok(changed)
    }
}
