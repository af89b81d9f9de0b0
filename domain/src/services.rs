//! The ports an aggregate may call while it decides: facts owned by *other* aggregates or by
//! the platform, never its own state. They are bundled in [`DomainServices`], the cqrs-es
//! `Services` of every aggregate. The `commands` crate implements them over Postgres and the
//! event store; [`testing`] implements them in memory for given/when/then tests.

use crate::actor::Role;
use crate::error::ErrorKind;
use crate::ids::{AttemptId, ExerciseId, UserId};
use crate::personal_data::Sealed;
use crate::vocabulary::{Difficulty, GameType};
use async_trait::async_trait;
use std::sync::Arc;

/// A port failed, or refused because the subject's data was erased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("the personal data of user {0} has been erased")]
    Erased(UserId),
    #[error("{0}")]
    Unavailable(String),
}

impl PortError {
    /// What every aggregate's error makes of a port failure: refusing because the subject
    /// was erased contradicts the state of things (`Conflict`); anything else is not the
    /// caller's fault (`Unavailable`).
    pub fn kind(&self) -> ErrorKind {
        match self {
            PortError::Erased(_) => ErrorKind::Conflict,
            PortError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}

/// Where each person's data key lives. Sealing creates the key on first use; shredding
/// destroys it for good, after which sealing for that person is refused.
#[async_trait]
pub trait PersonalDataVault: Send + Sync {
    async fn seal(&self, subject: UserId, plaintext: &str) -> Result<Sealed, PortError>;
    /// `Ok(None)` once the subject's key has been shredded.
    async fn open(&self, sealed: &Sealed) -> Result<Option<String>, PortError>;
    async fn shred(&self, subject: UserId) -> Result<(), PortError>;
}

/// What an aggregate may know about a user it does not own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserFacts {
    pub role: Role,
    pub erased: bool,
}

#[async_trait]
pub trait UserDirectory: Send + Sync {
    /// `Ok(None)` when no such user was ever registered.
    async fn user(&self, id: UserId) -> Result<Option<UserFacts>, PortError>;
}

/// Values that must be unique across aggregates (an email, a class name, a join code).
/// A claim is held by an owner (an aggregate id) until released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimScope {
    UserEmail,
    ClassroomName,
    ClassroomJoinCode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The value is now (or already was) held by this owner.
    Claimed,
    /// Another owner holds it.
    TakenBy(String),
}

#[async_trait]
pub trait UniqueClaims: Send + Sync {
    /// Claims `value` (already normalised by the caller) for `owner`. Idempotent per owner.
    async fn claim(
        &self,
        scope: ClaimScope,
        value: &str,
        owner: &str,
    ) -> Result<ClaimOutcome, PortError>;
    /// Releases the claim if `owner` holds it; a no-op otherwise.
    async fn release(&self, scope: ClaimScope, value: &str, owner: &str) -> Result<(), PortError>;
    /// Releases every value of `scope` held by `owner`; a no-op if it holds none. For when the
    /// owner can no longer say which value it holds (an erased user's email is sealed under a
    /// key that may already be shredded).
    async fn release_owned(&self, scope: ClaimScope, owner: &str) -> Result<(), PortError>;
}

/// What a tutor session may know about a practice attempt it explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFacts {
    pub student: UserId,
    pub exercise: ExerciseId,
    pub game_type: GameType,
    pub difficulty: Difficulty,
    pub correct: bool,
}

#[async_trait]
pub trait PracticeRecords: Send + Sync {
    /// `Ok(None)` when the exercise has no such attempt.
    async fn attempt(
        &self,
        exercise: ExerciseId,
        attempt: AttemptId,
    ) -> Result<Option<AttemptFacts>, PortError>;
}

/// Everything an aggregate may ask of the outside world. Cheap to clone.
#[derive(Clone)]
pub struct DomainServices {
    pub vault: Arc<dyn PersonalDataVault>,
    pub users: Arc<dyn UserDirectory>,
    pub claims: Arc<dyn UniqueClaims>,
    pub practice: Arc<dyn PracticeRecords>,
}

#[cfg(any(test, feature = "testing"))]
pub mod testing {
    //! In-memory ports for given/when/then tests. Sealing here is deterministic (the key is
    //! derived from the subject and the nonce from the plaintext) so that a test can state the
    //! exact events it expects with [`sealed`]; production vaults use random keys and nonces.

    use super::*;
    use crate::personal_data::{open_with, seal_with, SubjectKey, KEY_LEN, NONCE_LEN};
    use std::collections::{HashMap, HashSet};
    use std::hash::{DefaultHasher, Hash, Hasher};
    use std::sync::Mutex;

    fn test_key(subject: UserId) -> SubjectKey {
        let mut key = [0u8; KEY_LEN];
        key[..16].copy_from_slice(subject.0.as_bytes());
        key[16..].copy_from_slice(subject.0.as_bytes());
        SubjectKey(key)
    }

    fn test_nonce(plaintext: &str) -> [u8; NONCE_LEN] {
        let mut h = DefaultHasher::new();
        plaintext.hash(&mut h);
        let v = h.finish().to_le_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&v);
        nonce
    }

    /// The exact `Sealed` value the in-memory vault produces for `plaintext` about `subject`.
    pub fn sealed(subject: UserId, plaintext: &str) -> Sealed {
        seal_with(
            &test_key(subject),
            test_nonce(plaintext),
            subject,
            plaintext,
        )
    }

    #[derive(Default)]
    pub struct InMemoryVault {
        shredded: Mutex<HashSet<UserId>>,
    }

    #[async_trait]
    impl PersonalDataVault for InMemoryVault {
        async fn seal(&self, subject: UserId, plaintext: &str) -> Result<Sealed, PortError> {
            if self.shredded.lock().unwrap().contains(&subject) {
                return Err(PortError::Erased(subject));
            }
            Ok(sealed(subject, plaintext))
        }
        async fn open(&self, value: &Sealed) -> Result<Option<String>, PortError> {
            if self.shredded.lock().unwrap().contains(&value.subject) {
                return Ok(None);
            }
            open_with(&test_key(value.subject), value)
                .map(Some)
                .map_err(|e| PortError::Unavailable(e.to_string()))
        }
        async fn shred(&self, subject: UserId) -> Result<(), PortError> {
            self.shredded.lock().unwrap().insert(subject);
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct InMemoryUsers(pub Mutex<HashMap<UserId, UserFacts>>);

    #[async_trait]
    impl UserDirectory for InMemoryUsers {
        async fn user(&self, id: UserId) -> Result<Option<UserFacts>, PortError> {
            Ok(self.0.lock().unwrap().get(&id).copied())
        }
    }

    #[derive(Default)]
    pub struct InMemoryClaims(pub Mutex<HashMap<(ClaimScope, String), String>>);

    #[async_trait]
    impl UniqueClaims for InMemoryClaims {
        async fn claim(
            &self,
            scope: ClaimScope,
            value: &str,
            owner: &str,
        ) -> Result<ClaimOutcome, PortError> {
            let mut map = self.0.lock().unwrap();
            match map.get(&(scope, value.to_string())) {
                Some(holder) if holder != owner => Ok(ClaimOutcome::TakenBy(holder.clone())),
                _ => {
                    map.insert((scope, value.to_string()), owner.to_string());
                    Ok(ClaimOutcome::Claimed)
                }
            }
        }
        async fn release(
            &self,
            scope: ClaimScope,
            value: &str,
            owner: &str,
        ) -> Result<(), PortError> {
            let mut map = self.0.lock().unwrap();
            if map.get(&(scope, value.to_string())).map(String::as_str) == Some(owner) {
                map.remove(&(scope, value.to_string()));
            }
            Ok(())
        }
        async fn release_owned(&self, scope: ClaimScope, owner: &str) -> Result<(), PortError> {
            self.0
                .lock()
                .unwrap()
                .retain(|(held_scope, _), holder| *held_scope != scope || holder != owner);
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct InMemoryPractice(pub Mutex<HashMap<(ExerciseId, AttemptId), AttemptFacts>>);

    #[async_trait]
    impl PracticeRecords for InMemoryPractice {
        async fn attempt(
            &self,
            exercise: ExerciseId,
            attempt: AttemptId,
        ) -> Result<Option<AttemptFacts>, PortError> {
            Ok(self.0.lock().unwrap().get(&(exercise, attempt)).cloned())
        }
    }

    /// In-memory services with handles on each port, so a test can seed users, claims and
    /// attempts before it runs a command.
    #[derive(Clone, Default)]
    pub struct TestWorld {
        pub vault: Arc<InMemoryVault>,
        pub users: Arc<InMemoryUsers>,
        pub claims: Arc<InMemoryClaims>,
        pub practice: Arc<InMemoryPractice>,
    }

    impl TestWorld {
        pub fn with_user(self, id: UserId, role: Role) -> Self {
            self.users.0.lock().unwrap().insert(
                id,
                UserFacts {
                    role,
                    erased: false,
                },
            );
            self
        }

        /// Marks a user already in the directory as erased.
        pub fn erase_user(&self, id: UserId) {
            self.users
                .0
                .lock()
                .unwrap()
                .get_mut(&id)
                .expect("only a seeded user can be erased")
                .erased = true;
        }

        /// Shreds `subject`'s key, as the vault does during erasure, without any event.
        pub fn shred(&self, subject: UserId) {
            self.vault.shredded.lock().unwrap().insert(subject);
        }

        /// Makes `owner` hold `value` in `scope`, as if it had claimed it earlier.
        pub fn hold_claim(&self, scope: ClaimScope, value: &str, owner: &str) {
            self.claims
                .0
                .lock()
                .unwrap()
                .insert((scope, value.to_string()), owner.to_string());
        }

        /// Who holds `value` in `scope`, if anyone.
        pub fn claim_holder(&self, scope: ClaimScope, value: &str) -> Option<String> {
            self.claims
                .0
                .lock()
                .unwrap()
                .get(&(scope, value.to_string()))
                .cloned()
        }

        pub fn with_attempt(self, attempt: AttemptId, facts: AttemptFacts) -> Self {
            self.practice
                .0
                .lock()
                .unwrap()
                .insert((facts.exercise, attempt), facts);
            self
        }

        pub fn services(&self) -> DomainServices {
            DomainServices {
                vault: self.vault.clone(),
                users: self.users.clone(),
                claims: self.claims.clone(),
                practice: self.practice.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestWorld;
    use super::*;

    #[test]
    fn port_failures_map_to_conflict_when_erased_and_unavailable_otherwise() {
        assert_eq!(PortError::Erased(UserId::new()).kind(), ErrorKind::Conflict);
        assert_eq!(
            PortError::Unavailable("down".into()).kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn releasing_by_owner_frees_only_that_owners_values_in_that_scope() {
        let world = TestWorld::default();
        world.hold_claim(ClaimScope::UserEmail, "a@example.com", "dana");
        world.hold_claim(ClaimScope::UserEmail, "b@example.com", "dana");
        world.hold_claim(ClaimScope::UserEmail, "c@example.com", "noa");
        world.hold_claim(ClaimScope::ClassroomName, "hebrew 101", "dana");
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(world.claims.release_owned(ClaimScope::UserEmail, "dana"))
            .unwrap();
        assert_eq!(
            world.claim_holder(ClaimScope::UserEmail, "a@example.com"),
            None
        );
        assert_eq!(
            world.claim_holder(ClaimScope::UserEmail, "b@example.com"),
            None
        );
        assert_eq!(
            world.claim_holder(ClaimScope::UserEmail, "c@example.com"),
            Some("noa".into())
        );
        assert_eq!(
            world.claim_holder(ClaimScope::ClassroomName, "hebrew 101"),
            Some("dana".into())
        );
    }
}
