//! The personal-data vault over Postgres: one random AES-256 key per person in
//! `personal_data_keys`, created on first use. Shredding nulls the key and leaves a tombstone,
//! so the person's sealed data in the log can never be opened again and nothing new is sealed
//! for them.
//!
//! Opening never uses a cached key: an erasure must take effect on every replica at once.
//! Sealing does, for [`SEALING_KEY_TTL`]: a command seals two or three fields under one
//! person's key, and a lookup per field was a third of the command path's round trips. The
//! cache holds only keys read from the table; data sealed under a key that another replica
//! shredded moments earlier can never be opened (opening reads the table), so the erasure
//! still holds — the only difference is that such a late command is accepted instead of
//! refused. Shredding on this replica drops its cached key at once.

use async_trait::async_trait;
use rand::rngs::OsRng;
use rand::RngCore;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::{open_with, seal_with, Sealed, SubjectKey, KEY_LEN, NONCE_LEN};
use teachin_domain::services::{PersonalDataVault, PortError};

/// How long a sealing key read from the table is reused for sealing.
pub const SEALING_KEY_TTL: Duration = Duration::from_secs(2);

/// Beyond this many people the sealing cache starts over (it only saves round trips).
const SEALING_CACHE_LIMIT: usize = 10_000;

pub struct PostgresVault {
    pool: PgPool,
    sealing_keys: Mutex<HashMap<UserId, (SubjectKey, Instant)>>,
}

impl PostgresVault {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            sealing_keys: Mutex::default(),
        }
    }

    fn cached_sealing_key(&self, subject: UserId) -> Option<SubjectKey> {
        let keys = self.sealing_keys.lock().expect("sealing key cache");
        keys.get(&subject)
            .filter(|(_, read_at)| read_at.elapsed() < SEALING_KEY_TTL)
            .map(|(key, _)| key.clone())
    }

    fn remember_sealing_key(&self, subject: UserId, key: &SubjectKey) {
        let mut keys = self.sealing_keys.lock().expect("sealing key cache");
        if keys.len() >= SEALING_CACHE_LIMIT {
            keys.retain(|_, (_, read_at)| read_at.elapsed() < SEALING_KEY_TTL);
            if keys.len() >= SEALING_CACHE_LIMIT {
                keys.clear();
            }
        }
        keys.insert(subject, (key.clone(), Instant::now()));
    }

    /// The key to seal under: cached briefly, else from the table (created on first use).
    async fn sealing_key(&self, subject: UserId) -> Result<SubjectKey, PortError> {
        if let Some(key) = self.cached_sealing_key(subject) {
            return Ok(key);
        }
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
        self.remember_sealing_key(subject, &key);
        Ok(key)
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
        let key = self.sealing_key(subject).await?;
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
        self.sealing_keys
            .lock()
            .expect("sealing key cache")
            .remove(&subject);
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
