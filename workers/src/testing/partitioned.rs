//! A consumer's process partitioned from the bus, for the lock-loss tests: everything
//! reaches the bus but lock renewals.

use crate::bus::{
    Abandon, Bus, BusError, DeadLetter, OutgoingMessage, QueueName, QueueStats, ReceivedMessage,
};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// A bus reached for everything but lock renewals, which fail as they would when its process
/// is cut off from the broker or the database for a while: its locks run out and another
/// consumer takes its messages.
pub struct Partitioned(pub Arc<dyn Bus>);

#[async_trait]
impl Bus for Partitioned {
    async fn send(&self, queue: QueueName, message: OutgoingMessage) -> Result<(), BusError> {
        self.0.send(queue, message).await
    }
    async fn receive(
        &self,
        queue: QueueName,
        wait: Duration,
    ) -> Result<Option<ReceivedMessage>, BusError> {
        self.0.receive(queue, wait).await
    }
    async fn complete(&self, message: &ReceivedMessage) -> Result<(), BusError> {
        self.0.complete(message).await
    }
    async fn complete_recorded(
        &self,
        message: &ReceivedMessage,
        pool: &sqlx::PgPool,
        consumer: &str,
        key: &str,
    ) -> Result<(), BusError> {
        self.0.complete_recorded(message, pool, consumer, key).await
    }
    async fn abandon(&self, message: &ReceivedMessage, how: Abandon) -> Result<(), BusError> {
        self.0.abandon(message, how).await
    }
    async fn renew_lock(
        &self,
        _: &ReceivedMessage,
    ) -> Result<chrono::DateTime<chrono::Utc>, BusError> {
        Err(BusError::ServiceBus("partitioned from the broker".into()))
    }
    async fn dead_letter(
        &self,
        message: &ReceivedMessage,
        reason: &str,
        description: &str,
    ) -> Result<(), BusError> {
        self.0.dead_letter(message, reason, description).await
    }
    async fn stats(&self, queue: QueueName) -> Result<QueueStats, BusError> {
        self.0.stats(queue).await
    }
    async fn dead_letters(
        &self,
        queue: QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        self.0.dead_letters(queue, limit).await
    }
    async fn resubmit(&self, queue: QueueName, message_id: &str) -> Result<bool, BusError> {
        self.0.resubmit(queue, message_id).await
    }
}
