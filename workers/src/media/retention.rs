//! The sweep that keeps the avatars container to what is someone's avatar now.
//!
//! Why it exists: an upload URL is handed out before anything is recorded, so storage can
//! hold files nobody confirmed (a closed tab, a failed check, a client that never asked);
//! a replaced avatar's file is deleted after the change is recorded, and an erasure deletes
//! the person's folder after the erasure is recorded — each a second step a crash can skip.
//! The sweep (`teachin cron purge-uploads`, a daily CronJob) is what makes "nothing left
//! behind" true whatever crashed in between: for every person's folder it asks the `User`
//! aggregate (the source of truth the confirm step writes, not a read model that may lag)
//! and deletes
//! - every file of an erased person, at once;
//! - every other file that is not the person's current avatar, once older than the grace
//!   period ([`UNCONFIRMED_GRACE`], far beyond the five minutes an upload URL works, so an
//!   upload in progress is never taken from under its confirm).
//!
//! Deleting is idempotent, so two runs, or a run beside an erasure, do no harm.

use super::{AvatarError, AvatarStore};
use chrono::{DateTime, Utc};
use std::time::Duration;
use teachin_commands::bus::AggregateReader;
use teachin_domain::ids::UserId;
use teachin_domain::user::User;

/// How long an upload may wait for its confirm before the sweep deletes it.
pub const UNCONFIRMED_GRACE: Duration = Duration::from_secs(24 * 60 * 60);

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadSweep {
    /// Files deleted that were never (or are no longer) anyone's avatar.
    pub unconfirmed: usize,
    /// Files deleted because their owner was erased.
    pub erased: usize,
    /// Files kept: current avatars and uploads still inside the grace period.
    pub kept: usize,
}

/// What the sweep needs to know about a folder's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Erased,
    /// Registered or not (a folder of an id nobody registered holds only strays).
    Current(Option<String>),
}

async fn owner(reader: &AggregateReader, id: UserId) -> Result<Owner, AvatarError> {
    let user = reader
        .load::<User>(&id.to_string())
        .await
        .map_err(|e| AvatarError::Storage(format!("loading user {id}: {e}")))?;
    Ok(if user.is_erased() {
        Owner::Erased
    } else {
        Owner::Current(user.avatar().map(|a| a.blob_path.clone()))
    })
}

/// The shortest grace period the sweep accepts: twice [`super::CONFIRM_WITHIN`], so a file
/// the sweep may delete is well past the age at which a confirm still takes it.
pub const MIN_GRACE: Duration = Duration::from_secs(2 * 60 * 60);

/// Deletes, as of `now`, every file of an erased person and every file older than `grace`
/// that is not its owner's current avatar (see the module comment).
pub async fn purge_unconfirmed(
    store: &AvatarStore,
    reader: &AggregateReader,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<UploadSweep, AvatarError> {
    if grace < MIN_GRACE {
        return Err(AvatarError::Storage(format!(
            "a grace period under {} h could delete an upload a confirm still takes",
            MIN_GRACE.as_secs() / 3600
        )));
    }
    let cutoff = now
        - chrono::Duration::from_std(grace)
            .map_err(|_| AvatarError::Storage("the grace period is out of range".into()))?;
    let mut sweep = UploadSweep::default();
    for id in store.owners().await? {
        let owner = owner(reader, id).await?;
        for file in store.files_of(id).await? {
            match &owner {
                Owner::Erased => {
                    store.delete(&file.path).await?;
                    sweep.erased += 1;
                }
                Owner::Current(current) => {
                    if current.as_deref() == Some(file.path.as_str()) || file.written_at > cutoff {
                        sweep.kept += 1;
                    } else {
                        store.delete(&file.path).await?;
                        sweep.unconfirmed += 1;
                    }
                }
            }
        }
    }
    Ok(sweep)
}
