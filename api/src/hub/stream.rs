//! Streamed tutor replies reach the student through the hub: the manager's callback consumer
//! (in `workers`) puts the engine's frames back in order and hands each to a `StreamPush`;
//! this is that push, a `StreamEvent` invocation to every connection of the student, on
//! whichever replica holds them (through the backplane, or Azure SignalR).

use super::NotificationHub;
use teachin_domain::ids::UserId;
use teachin_workers::StreamPush;

/// The SignalR client method streamed frames arrive as (original §5).
pub const STREAM_EVENT: &str = "StreamEvent";

#[async_trait::async_trait]
impl StreamPush for NotificationHub {
    async fn push_frame(&self, student: UserId, payload: serde_json::Value) {
        // Pushes are best-effort (the final answer is an event, and reaches the read model
        // and the feed regardless); a lost frame is logged, not retried.
        if let Err(e) = self
            .send_to_user(student, STREAM_EVENT, vec![payload])
            .await
        {
            tracing::warn!(%student, error = %e, "a tutor reply frame could not be pushed");
        }
    }
}
