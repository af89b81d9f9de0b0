//! Facts about other aggregates, read from the event store itself rather than from a
//! projection, so a command never decides on stale data: a user registered a moment ago
//! can be assigned to a teacher at once.

use async_trait::async_trait;
use teachin_domain::ids::{AttemptId, ExerciseId, UserId};
use teachin_domain::practice::Exercise;
use teachin_domain::services::{
    AttemptFacts, PortError, PracticeRecords, UserDirectory, UserFacts,
};
use teachin_domain::user::User;

use crate::bus::AggregateReader;

pub struct EventStoreUserDirectory {
    reader: AggregateReader,
}

impl EventStoreUserDirectory {
    pub fn new(reader: AggregateReader) -> Self {
        Self { reader }
    }
}

#[async_trait]
impl UserDirectory for EventStoreUserDirectory {
    async fn user(&self, id: UserId) -> Result<Option<UserFacts>, PortError> {
        let user: User = self
            .reader
            .load(&id.to_string())
            .await
            .map_err(PortError::Unavailable)?;
        Ok(user.is_registered().then(|| UserFacts {
            role: user.role(),
            erased: user.is_erased(),
        }))
    }
}

pub struct EventStorePracticeRecords {
    reader: AggregateReader,
}

impl EventStorePracticeRecords {
    pub fn new(reader: AggregateReader) -> Self {
        Self { reader }
    }
}

#[async_trait]
impl PracticeRecords for EventStorePracticeRecords {
    async fn attempt(
        &self,
        exercise: ExerciseId,
        attempt: AttemptId,
    ) -> Result<Option<AttemptFacts>, PortError> {
        let loaded: Exercise = self
            .reader
            .load(&exercise.to_string())
            .await
            .map_err(PortError::Unavailable)?;
        Ok(loaded
            .attempt(attempt)
            .map(|summary| summary.facts(exercise)))
    }
}
