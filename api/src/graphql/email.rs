//! A teacher's email to a student or a parent (original-system.md §1.12,
//! `POST /emails-manager/send`). The mutation only records the email as queued (an
//! `OutgoingEmail` event); the outbox relay hands it to the accessor, which sends it over
//! SMTP. So the answer means "accepted", not "delivered" — as the original's, whose send was
//! asynchronous too.
//!
//! Each sender may queue `QuotaLimits::emails_per_day` a day (`QUOTA_EXCEEDED` past it), so a
//! compromised teacher account cannot spam from the platform's address. The email is sealed
//! under the recipient's key (`teachin_domain::outgoing_email`): here the address is looked up
//! among the accounts; an address no account holds gets a key of the email's own. The body is
//! sanitised where it leaves, in the sender (`teachin_workers::email`).

use super::{authorize, execute, new_id, state, Changed};
use crate::access::Subject;
use crate::error::ApiResult;
use async_graphql::{Context, Object};
use teachin_domain::ids::UserId;
use teachin_domain::outgoing_email::{OutgoingEmail, OutgoingEmailCommand};
use teachin_domain::services::ClaimScope;
use teachin_domain::user::EmailAddress;
use uuid::Uuid;

#[derive(Default)]
pub struct EmailMutation;

#[Object]
impl EmailMutation {
    /// Sends `body` (HTML) under `subject` to `recipientEmail`, from the platform's sender
    /// address. Teachers and admins only, a daily number each. A retry with the same
    /// idempotency key sends nothing more; the id is the email's.
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
        let recipient = recipient_key(ctx, &recipient_email, id).await?;
        let command = OutgoingEmailCommand::Send {
            sender: caller.actor(),
            recipient,
            recipient_email,
            subject,
            body,
        };
        let quotas = &state(ctx).quotas;
        let admitted = quotas.admit_email(caller).await?;
        let outcome = execute::<OutgoingEmail>(ctx, caller, id, command, key).await;
        if !matches!(&outcome, Ok(changed) if !changed.replayed) {
            quotas.give_back(admitted).await;
        }
        outcome
    }
}

/// Whose key an email to `address` is sealed under: the account that holds the address, or,
/// for an address no account holds (or a malformed one, which the domain refuses), the
/// email's own id.
async fn recipient_key(ctx: &Context<'_>, address: &str, email: Uuid) -> ApiResult<UserId> {
    let own = UserId(email);
    let Ok(address) = EmailAddress::parse(address) else {
        return Ok(own);
    };
    let holder = state(ctx)
        .claims
        .holder(ClaimScope::UserEmail, address.as_str())
        .await?;
    Ok(holder
        .and_then(|owner| owner.parse::<UserId>().ok())
        .unwrap_or(own))
}
