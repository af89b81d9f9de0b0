//! A teacher's email to someone (original-system.md §1.12: `POST /emails-manager/send`), often
//! a draft the AI wrote (see [`crate::generation`]) that the teacher then sends.
//!
//! Sending is asynchronous: the command only records that the email was queued, and the
//! outbox relay turns that event into the accessor's `SendEmail` job (DESIGN.md decision 3 —
//! no dual write between the log and the bus). The email is an aggregate of its own, named by
//! the email id the caller chose, so that a retried send (the same idempotency key) names the
//! same email and can never mail twice; sending anything else under that id is a conflict.
//!
//! The address, subject and body are personal data of the *recipient's*: the email is theirs
//! once sent, and it is their address. So they are sealed under the recipient's key — the
//! account holding the address, or for an address no account holds (a parent) a key of this
//! email's own, which no one else's erasure touches. Erasing the sender leaves the email
//! deliverable and readable; erasing the recipient shreds it, and the relay then sends nothing
//! for an email still waiting. (Emails queued before this sealed under the sender's key; a
//! `Sealed` names its subject, so they open as before.)

use crate::actor::{Actor, Role};
use crate::error::{DomainError, ErrorKind};
use crate::ids::UserId;
use crate::personal_data::Sealed;
use crate::services::{DomainServices, PortError};
use crate::text;
use crate::user::{EmailAddress, UserError};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The longest subject, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// The longest body (HTML), in characters.
pub const MAX_BODY_CHARS: usize = 50_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum OutgoingEmailCommand {
    /// Queue one email to one recipient; the body is HTML.
    Send {
        sender: Actor,
        /// Whose key the email is sealed under: the account that holds `recipient_email`, or,
        /// for an address no account holds, the email's own id (see the module comment).
        recipient: UserId,
        recipient_email: String,
        subject: String,
        body: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutgoingEmailEvent {
    /// The email is waiting to be sent; the relay hands it to the accessor.
    EmailQueued {
        sender: UserId,
        recipient_email: Sealed,
        subject: Sealed,
        body: Sealed,
    },
}

impl DomainEvent for OutgoingEmailEvent {
    fn event_type(&self) -> String {
        match self {
            OutgoingEmailEvent::EmailQueued { .. } => "EmailQueued",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutgoingEmailError {
    #[error("only teachers and admins send emails")]
    TeachersOnly,
    #[error("{0}")]
    RecipientInvalid(String),
    #[error("the subject is empty")]
    SubjectEmpty,
    #[error("the subject is longer than {MAX_SUBJECT_CHARS} characters")]
    SubjectTooLong,
    #[error("the body is empty")]
    BodyEmpty,
    #[error("the body is longer than {MAX_BODY_CHARS} characters")]
    BodyTooLong,
    #[error("this email was already sent")]
    AlreadySent,
    #[error(transparent)]
    Port(#[from] PortError),
}

impl DomainError for OutgoingEmailError {
    fn kind(&self) -> ErrorKind {
        use OutgoingEmailError::*;
        match self {
            TeachersOnly => ErrorKind::Forbidden,
            RecipientInvalid(_) | SubjectEmpty | SubjectTooLong | BodyEmpty | BodyTooLong => {
                ErrorKind::InvalidInput
            }
            AlreadySent => ErrorKind::Conflict,
            Port(e) => e.kind(),
        }
    }

    fn field(&self) -> Option<&'static str> {
        use OutgoingEmailError::*;
        match self {
            RecipientInvalid(_) => Some("recipientEmail"),
            SubjectEmpty | SubjectTooLong => Some("subject"),
            BodyEmpty | BodyTooLong => Some("body"),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutgoingEmail {
    sender: Option<UserId>,
}

impl OutgoingEmail {
    /// Who queued the email, once queued.
    pub fn sender(&self) -> Option<UserId> {
        self.sender
    }
}

/// A required text, or the error of its problem.
fn required(
    raw: &str,
    max: usize,
    empty: OutgoingEmailError,
    too_long: OutgoingEmailError,
) -> Result<&str, OutgoingEmailError> {
    text::bounded(raw, max).map_err(|p| p.pick(empty, too_long))
}

impl Aggregate for OutgoingEmail {
    const TYPE: &'static str = "OutgoingEmail";
    type Command = OutgoingEmailCommand;
    type Event = OutgoingEmailEvent;
    type Error = OutgoingEmailError;
    type Services = DomainServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        use OutgoingEmailError as E;
        let event = match command {
            OutgoingEmailCommand::Send {
                sender,
                recipient,
                recipient_email,
                subject,
                body,
            } => {
                // The platform itself has no key to seal under and no one to answer to.
                let sender = match sender {
                    Actor::User {
                        id,
                        role: Role::Teacher | Role::Admin,
                    } => id,
                    _ => return Err(E::TeachersOnly),
                };
                if self.sender.is_some() {
                    return Err(E::AlreadySent);
                }
                // Nothing is sealed under the sender's key any more, so their erasure is
                // asked of the directory.
                if services.users.user(sender).await?.is_some_and(|u| u.erased) {
                    return Err(E::Port(PortError::Erased(sender)));
                }
                let address = EmailAddress::parse(&recipient_email).map_err(|e| match e {
                    UserError::InvalidInput { reason, .. } => E::RecipientInvalid(reason),
                    other => E::RecipientInvalid(other.to_string()),
                })?;
                let subject = required(
                    &subject,
                    MAX_SUBJECT_CHARS,
                    E::SubjectEmpty,
                    E::SubjectTooLong,
                )?;
                let body = required(&body, MAX_BODY_CHARS, E::BodyEmpty, E::BodyTooLong)?;
                OutgoingEmailEvent::EmailQueued {
                    sender,
                    recipient_email: services.vault.seal(recipient, address.as_str()).await?,
                    subject: services.vault.seal(recipient, subject).await?,
                    body: services.vault.seal(recipient, body).await?,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OutgoingEmailEvent::EmailQueued { sender, .. } => self.sender = Some(sender),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::testing::{sealed, TestWorld};
    use cqrs_es::test::TestFramework;

    type Framework = TestFramework<OutgoingEmail>;

    fn framework() -> Framework {
        Framework::with(TestWorld::default().services())
    }

    /// The recipient every test email is sealed for.
    fn recipient() -> UserId {
        UserId(uuid::Uuid::from_u128(0x5eed))
    }

    fn send(sender: Actor, recipient: &str, subject: &str, body: &str) -> OutgoingEmailCommand {
        OutgoingEmailCommand::Send {
            sender,
            recipient: self::recipient(),
            recipient_email: recipient.into(),
            subject: subject.into(),
            body: body.into(),
        }
    }

    fn queued(sender: UserId) -> OutgoingEmailEvent {
        OutgoingEmailEvent::EmailQueued {
            sender,
            recipient_email: sealed(recipient(), "parent@example.com"),
            subject: sealed(recipient(), "Parents' evening"),
            body: sealed(recipient(), "<p>שלום רב</p>"),
        }
    }

    #[test]
    fn a_teacher_or_admin_queues_an_email_sealed_under_the_recipients_key() {
        for role in [Role::Teacher, Role::Admin] {
            let sender = UserId::new();
            framework()
                .given_no_previous_events()
                .when(send(
                    Actor::user(sender, role),
                    "  Parent@Example.com ",
                    " Parents' evening ",
                    "<p>שלום רב</p>\n",
                ))
                .then_expect_events(vec![queued(sender)]);
        }
    }

    #[test]
    fn students_anonymous_callers_and_the_platform_send_nothing() {
        let error = OutgoingEmailError::TeachersOnly;
        assert_eq!(error.kind(), ErrorKind::Forbidden);
        for sender in [
            Actor::user(UserId::new(), Role::Student),
            Actor::Anonymous,
            Actor::System,
        ] {
            framework()
                .given_no_previous_events()
                .when(send(sender, "parent@example.com", "Hi", "<p>Hi</p>"))
                .then_expect_error(error.clone());
        }
    }

    #[test]
    fn the_recipient_subject_and_body_are_checked_field_by_field() {
        let teacher = Actor::user(UserId::new(), Role::Teacher);
        let long_subject = "ש".repeat(MAX_SUBJECT_CHARS + 1);
        let long_body = "x".repeat(MAX_BODY_CHARS + 1);
        for (recipient, subject, body, field) in [
            ("not-an-address", "Hi", "Hi", "recipientEmail"),
            ("", "Hi", "Hi", "recipientEmail"),
            ("a@b.c", " ", "Hi", "subject"),
            ("a@b.c", &*long_subject, "Hi", "subject"),
            ("a@b.c", "Hi", "", "body"),
            ("a@b.c", "Hi", &*long_body, "body"),
        ] {
            let error = framework()
                .given_no_previous_events()
                .when(send(teacher, recipient, subject, body))
                .inspect_result()
                .expect_err("refused");
            assert_eq!(
                (error.kind(), error.field()),
                (ErrorKind::InvalidInput, Some(field)),
                "{recipient:?} {subject:?} {body:?}: {error}"
            );
        }
        // The limits themselves are allowed.
        framework()
            .given_no_previous_events()
            .when(send(
                teacher,
                "a@b.c",
                &"ש".repeat(MAX_SUBJECT_CHARS),
                &"x".repeat(MAX_BODY_CHARS),
            ))
            .then_expect_events(vec![OutgoingEmailEvent::EmailQueued {
                sender: teacher.user_id().unwrap(),
                recipient_email: sealed(recipient(), "a@b.c"),
                subject: sealed(recipient(), &"ש".repeat(MAX_SUBJECT_CHARS)),
                body: sealed(recipient(), &"x".repeat(MAX_BODY_CHARS)),
            }]);
    }

    #[test]
    fn an_email_is_sent_once() {
        let sender = UserId::new();
        assert_eq!(OutgoingEmailError::AlreadySent.kind(), ErrorKind::Conflict);
        framework()
            .given(vec![queued(sender)])
            .when(send(
                Actor::user(sender, Role::Teacher),
                "parent@example.com",
                "Parents' evening",
                "<p>שלום רב</p>",
            ))
            .then_expect_error(OutgoingEmailError::AlreadySent);
    }

    #[test]
    fn an_erased_senders_queued_email_stays_readable_and_an_erased_recipients_does_not() {
        let sender = UserId::new();
        let world = TestWorld::default().with_user(sender, Role::Teacher);
        let services = world.services();
        let OutgoingEmailEvent::EmailQueued {
            recipient_email, ..
        } = queued(sender);
        world.shred(sender);
        let open = |sealed| run_ready(services.vault.open(sealed));
        assert_eq!(
            open(&recipient_email),
            Ok(Some("parent@example.com".to_string()))
        );
        world.shred(recipient());
        assert_eq!(open(&recipient_email), Ok(None));
    }

    /// Runs a future of the in-memory ports (they never wait) to completion.
    fn run_ready<T>(future: impl std::future::Future<Output = T>) -> T {
        let waker = std::task::Waker::noop();
        let mut context = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let std::task::Poll::Ready(value) = future.as_mut().poll(&mut context) {
                return value;
            }
        }
    }

    #[test]
    fn an_erased_recipient_gets_no_email() {
        let sender = UserId::new();
        let world = TestWorld::default().with_user(sender, Role::Teacher);
        world.shred(recipient());
        Framework::with(world.services())
            .given_no_previous_events()
            .when(send(
                Actor::user(sender, Role::Teacher),
                "parent@example.com",
                "Hi",
                "<p>Hi</p>",
            ))
            .then_expect_error(OutgoingEmailError::Port(PortError::Erased(recipient())));
    }

    #[test]
    fn an_erased_sender_cannot_send() {
        let sender = UserId::new();
        let world = TestWorld::default().with_user(sender, Role::Teacher);
        world.erase_user(sender);
        let error = OutgoingEmailError::Port(PortError::Erased(sender));
        assert_eq!(error.kind(), ErrorKind::Conflict);
        Framework::with(world.services())
            .given_no_previous_events()
            .when(send(
                Actor::user(sender, Role::Teacher),
                "parent@example.com",
                "Hi",
                "<p>Hi</p>",
            ))
            .then_expect_error(error);
    }

    #[test]
    fn the_state_knows_its_sender() {
        let sender = UserId::new();
        let mut email = OutgoingEmail::default();
        assert_eq!(email.sender(), None);
        email.apply(queued(sender));
        assert_eq!(email.sender(), Some(sender));
        assert_eq!(queued(sender).event_type(), "EmailQueued");
        assert_eq!(queued(sender).event_version(), "1.0");
    }
}
