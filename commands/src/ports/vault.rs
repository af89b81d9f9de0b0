//! The personal-data vault over Postgres: one random AES-256 key per person in
//! `personal_data_keys`, created on first use. Shredding nulls the key and leaves a tombstone,
//! so the person's sealed data in the log can never be opened again and nothing new is sealed
//! for them. Keys are not cached: an erasure must take effect on every replica at once.

use async_trait::async_trait;
use rand::rngs::OsRng;
use rand::RngCore;
use sqlx::PgPool;
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::{open_with, seal_with, Sealed, SubjectKey, KEY_LEN, NONCE_LEN};
use teachin_domain::services::{PersonalDataVault, PortError};

pub struct PostgresVault {
    pool: PgPool,
}

impl PostgresVault {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// `Ok(None)`: never created; `Ok(Some(None))`: shredded.
    async fn stored_key(&self, subject: UserId) -> Result<Option<Option<SubjectKey>>, PortError> {
        let row: Option<(Option<Vec<u8>>,)> =
            sqlx::query_as("SELECT key FROM personal_data_keys WHERE subject_id = $1")
                .bind(subject.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        Ok(row.map(|(key,)| key.map(to_key)))
    }
}

fn to_key(bytes: Vec<u8>) -> SubjectKey {
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&bytes[..KEY_LEN]);
    SubjectKey(key)
}

fn unavailable(e: sqlx::Error) -> PortError {
    PortError::Unavailable(format!("personal data vault: {e}"))
}

#[async_trait]
impl PersonalDataVault for PostgresVault {
    async fn seal(&self, subject: UserId, plaintext: &str) -> Result<Sealed, PortError> {
        let key = match self.stored_key(subject).await? {
            Some(Some(key)) => key,
            Some(None) => return Err(PortError::Erased(subject)),
            None => {
                let mut fresh = [0u8; KEY_LEN];
                OsRng.fill_bytes(&mut fresh);
                // Two replicas may race to create the key; the first insert wins and both
                // then use the stored one.
                sqlx::query(
                    "INSERT INTO personal_data_keys (subject_id, key) VALUES ($1, $2)
                     ON CONFLICT (subject_id) DO NOTHING",
                )
                .bind(subject.0)
                .bind(&fresh[..])
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
                match self.stored_key(subject).await? {
                    Some(Some(key)) => key,
                    _ => return Err(PortError::Erased(subject)),
                }
            }
        };
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        Ok(seal_with(&key, nonce, subject, plaintext))
    }

    async fn open(&self, sealed: &Sealed) -> Result<Option<String>, PortError> {
        match self.stored_key(sealed.subject).await? {
            Some(Some(key)) => open_with(&key, sealed)
                .map(Some)
                .map_err(|e| PortError::Unavailable(e.to_string())),
            _ => Ok(None),
        }
    }

    async fn shred(&self, subject: UserId) -> Result<(), PortError> {
        sqlx::query(
            "INSERT INTO personal_data_keys (subject_id, key, shredded_at) VALUES ($1, NULL, now())
             ON CONFLICT (subject_id) DO UPDATE SET key = NULL, shredded_at = coalesce(personal_data_keys.shredded_at, now())",
        )
        .bind(subject.0)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }
}
