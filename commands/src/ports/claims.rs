//! Cross-aggregate uniqueness (emails, class names, join codes) as rows with a primary key:
//! the database, not a check-then-act race, decides who holds a value. Values are stored as
//! HMAC-SHA256 hashes under a secret key, so the table reveals no email.

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use teachin_domain::services::{ClaimOutcome, ClaimScope, PortError, UniqueClaims};

pub struct PostgresClaims {
    pool: PgPool,
    hash_key: Vec<u8>,
}

impl PostgresClaims {
    pub fn new(pool: PgPool, hash_key: Vec<u8>) -> Self {
        Self { pool, hash_key }
    }

    fn hash(&self, scope: ClaimScope, value: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.hash_key).expect("HMAC takes any key");
        mac.update(scope_name(scope).as_bytes());
        mac.update(&[0]);
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

impl PostgresClaims {
    /// Who holds `value` in `scope`, if anyone: how sign-in finds the account of an email
    /// address without the table ever holding the address.
    pub async fn holder(
        &self,
        scope: ClaimScope,
        value: &str,
    ) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT owner FROM unique_claims WHERE scope = $1 AND value_hash = $2")
            .bind(scope_name(scope))
            .bind(self.hash(scope, value))
            .fetch_optional(&self.pool)
            .await
    }
}

fn scope_name(scope: ClaimScope) -> &'static str {
    match scope {
        ClaimScope::UserEmail => "user_email",
        ClaimScope::ClassroomName => "classroom_name",
        ClaimScope::ClassroomJoinCode => "classroom_join_code",
    }
}

fn unavailable(e: sqlx::Error) -> PortError {
    PortError::Unavailable(format!("unique claims: {e}"))
}

#[async_trait]
impl UniqueClaims for PostgresClaims {
    async fn claim(
        &self,
        scope: ClaimScope,
        value: &str,
        owner: &str,
    ) -> Result<ClaimOutcome, PortError> {
        let hash = self.hash(scope, value);
        // Insert-or-read; a release racing between the two statements just means we try again.
        for _ in 0..3 {
            sqlx::query(
                "INSERT INTO unique_claims (scope, value_hash, owner) VALUES ($1, $2, $3)
             ON CONFLICT (scope, value_hash) DO NOTHING",
            )
            .bind(scope_name(scope))
            .bind(&hash)
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
            let holder: Option<String> = sqlx::query_scalar(
                "SELECT owner FROM unique_claims WHERE scope = $1 AND value_hash = $2",
            )
            .bind(scope_name(scope))
            .bind(&hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
            match holder {
                Some(holder) if holder == owner => return Ok(ClaimOutcome::Claimed),
                Some(holder) => return Ok(ClaimOutcome::TakenBy(holder)),
                None => continue,
            }
        }
        Err(PortError::Unavailable(
            "unique claims: the value kept changing hands".into(),
        ))
    }

    async fn release(&self, scope: ClaimScope, value: &str, owner: &str) -> Result<(), PortError> {
        sqlx::query(
            "DELETE FROM unique_claims WHERE scope = $1 AND value_hash = $2 AND owner = $3",
        )
        .bind(scope_name(scope))
        .bind(self.hash(scope, value))
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn release_owned(&self, scope: ClaimScope, owner: &str) -> Result<(), PortError> {
        sqlx::query("DELETE FROM unique_claims WHERE scope = $1 AND owner = $2")
            .bind(scope_name(scope))
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
