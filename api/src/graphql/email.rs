//! A teacher's email to a student or a parent (original-system.md §1.12,
//! `POST /emails-manager/send`). The mutation only records the email as queued (an
//! `OutgoingEmail` event); the outbox relay hands it to the accessor, which sends it over
//! SMTP. So the answer means "accepted", not "delivered" — as the original's, whose send was
//! asynchronous too.

use super::{authorize, execute, new_id, Changed};
use crate::access::Subject;
use crate::error::ApiResult;
use async_graphql::{Context, Object};
use teachin_domain::outgoing_email::{OutgoingEmail, OutgoingEmailCommand};

#[derive(Default)]
pub struct EmailMutation;

#[Object]
impl EmailMutation {
    /// Sends `body` (HTML) under `subject` to `recipientEmail`, from the platform's sender
    /// address. Teachers and admins only. A retry with the same idempotency key sends nothing
    /// more; the id is the email's.
    async fn send_email(
        &self,
        ctx: &Context<'_>,
        recipient_email: String,
        subject: String,
        body: String,
        idempotency_key: Option<String>,
    ) -> ApiResult<Changed> {
        let caller = authorize(ctx, "sendEmail", Subject::Caller).await?;
        let key = idempotency_key.as_deref();
        let id = new_id(caller, "sendEmail", key);
        let command = OutgoingEmailCommand::Send {
            sender: caller.actor(),
            recipient_email,
            subject,
            body,
        };
        execute::<OutgoingEmail>(ctx, caller, id, command, key).await
    }
}
