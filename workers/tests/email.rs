//! `SendEmail` end to end: a message on `accessor-queue` (the PostgreSQL bus), the consumer
//! loop, the handler, and lettre speaking real SMTP to a small server this test runs on
//! loopback. The server records the envelope, the AUTH credentials and the DATA; it answers
//! RCPT for chosen addresses with a permanent (550) or transient (451) refusal, so the
//! handler's dead-letter and retry paths are exercised over the wire. The last test starts
//! from the teacher's command: the outbox relay turns the queued email into the job.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::outgoing_email::{OutgoingEmail, OutgoingEmailCommand};
use teachin_projections::{EventLog, LogPosition};
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::{reasons, Bus, OutgoingMessage, QueueName};
use teachin_workers::consumer::{Consumer, Settled};
use teachin_workers::email::{self, EmailSettings, SendEmailHandler, SmtpSecurity};
use teachin_workers::relay::{OutboxRelay, RelayConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(15);

/// One message as the server received it.
#[derive(Debug, Clone, Default)]
struct Received {
    auth: Option<String>,
    from: String,
    to: Vec<String>,
    data: String,
}

#[derive(Clone, Default)]
struct Mailbox {
    delivered: Arc<Mutex<Vec<Received>>>,
    /// Transactions that got as far as `MAIL FROM`.
    attempts: Arc<Mutex<usize>>,
}

/// A minimal ESMTP server: EHLO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
async fn smtp_server() -> (u16, Mailbox) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mailbox = Mailbox::default();
    let shared = mailbox.clone();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(session(socket, shared.clone()));
        }
    });
    (port, mailbox)
}

async fn session(socket: tokio::net::TcpStream, mailbox: Mailbox) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut current = Received::default();
    let mut auth = None;
    write
        .write_all(b"220 localhost ESMTP test\r\n")
        .await
        .unwrap();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250-localhost\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME".into()
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            auth = Some(String::from_utf8_lossy(&raw).replace('\0', "|"));
            "235 2.7.0 Authentication successful".into()
        } else if upper.starts_with("MAIL FROM:") {
            *mailbox.attempts.lock().unwrap() += 1;
            current = Received {
                auth: auth.clone(),
                from: line[10..].trim().to_string(),
                ..Received::default()
            };
            "250 2.1.0 Ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = line[8..].trim().to_string();
            if to.contains("gone@") {
                "550 5.1.1 No such user".into()
            } else if to.contains("busy@") {
                "451 4.3.0 Try again later".into()
            } else {
                current.to.push(to);
                "250 2.1.5 Ok".into()
            }
        } else if upper == "DATA" {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await
                .unwrap();
            let mut data = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "." {
                    break;
                }
                data.push_str(&line);
                data.push('\n');
            }
            current.data = data;
            mailbox.delivered.lock().unwrap().push(current.clone());
            "250 2.0.0 Ok: queued".into()
        } else if upper == "RSET" || upper == "NOOP" {
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "502 5.5.2 Command not recognized".into()
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

struct Fixture {
    bus: Arc<dyn Bus>,
    consumer: Consumer,
    mailbox: Mailbox,
    db: TestDatabase,
}

async fn fixture() -> Fixture {
    let (port, mailbox) = smtp_server().await;
    let db = TestDatabase::new().await;
    let bus: Arc<dyn Bus> = Arc::new(PostgresBus::new(
        db.pool.clone(),
        PostgresBusConfig::default(),
    ));
    let handler = SendEmailHandler::from_settings(&EmailSettings {
        host: "127.0.0.1".into(),
        port,
        security: SmtpSecurity::None,
        username: Some("brevo-user".into()),
        password: Some("brevo-pass".into()),
        sender_email: "no-reply@teachin.app".into(),
        sender_name: "Teachin".into(),
    })
    .unwrap();
    let consumer = email::register(
        Consumer::new(
            "accessor",
            QueueName::Accessor,
            bus.clone(),
            db.pool.clone(),
        ),
        handler,
    );
    Fixture {
        bus,
        consumer,
        mailbox,
        db,
    }
}

async fn send(bus: &Arc<dyn Bus>, id: &str, recipient: &str) {
    bus.send(
        QueueName::Accessor,
        OutgoingMessage::new(
            id,
            email::SEND_EMAIL,
            serde_json::json!({
                "recipientEmail": recipient,
                "subject": "Your homework",
                "body": "<p>Shalom! Read <b>chapter 2</b>.</p>",
            }),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_send_email_job_is_delivered_over_smtp_with_auth_and_a_stable_message_id() {
    let f = fixture().await;
    let id = uuid::Uuid::new_v4().to_string();
    send(&f.bus, &id, "shira@example.com").await;
    let settled = f.consumer.process_one(WAIT).await.unwrap();
    assert_eq!(settled, Some(Settled::Completed));

    let delivered = f.mailbox.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let mail = &delivered[0];
    assert_eq!(mail.auth.as_deref(), Some("|brevo-user|brevo-pass"));
    assert_eq!(mail.from, "<no-reply@teachin.app>");
    assert_eq!(mail.to, ["<shira@example.com>"]);
    assert!(
        mail.data.contains("Subject: Your homework"),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("From: Teachin <no-reply@teachin.app>"),
        "{}",
        mail.data
    );
    assert!(
        mail.data
            .contains(&format!("Message-ID: <{id}@teachin.app>")),
        "{}",
        mail.data
    );
    assert!(
        mail.data.contains("Content-Type: text/html"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("chapter 2"), "{}", mail.data);

    // The queue is empty afterwards, and the same id cannot be sent again.
    send(&f.bus, &id, "shira@example.com").await;
    assert_eq!(
        f.consumer
            .process_one(Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(f.mailbox.delivered.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_permanent_refusal_is_dead_lettered_and_a_transient_one_retried() {
    let f = fixture().await;
    send(&f.bus, "to-gone", "gone@example.com").await;
    match f.consumer.process_one(WAIT).await.unwrap() {
        Some(Settled::DeadLettered {
            reason,
            description,
        }) => {
            assert_eq!(reason, reasons::REJECTED);
            assert!(description.contains("550"), "{description}");
        }
        other => panic!("{other:?}"),
    }

    send(&f.bus, "to-busy", "busy@example.com").await;
    match f.consumer.process_one(WAIT).await.unwrap() {
        Some(Settled::Abandoned { why }) => assert!(why.contains("451"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(f.mailbox.delivered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_malformed_job_is_dead_lettered_without_touching_the_server() {
    let f = fixture().await;
    send(&f.bus, "bad-address", "not an address").await;
    match f.consumer.process_one(WAIT).await.unwrap() {
        Some(Settled::DeadLettered { reason, .. }) => assert_eq!(reason, reasons::REJECTED),
        other => panic!("{other:?}"),
    }
    f.bus
        .send(
            QueueName::Accessor,
            OutgoingMessage::new(
                "no-body",
                email::SEND_EMAIL,
                serde_json::json!({"subject": "x"}),
            ),
        )
        .await
        .unwrap();
    match f.consumer.process_one(WAIT).await.unwrap() {
        Some(Settled::DeadLettered { reason, .. }) => {
            assert_eq!(reason, reasons::MALFORMED_PAYLOAD)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(*f.mailbox.attempts.lock().unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_teachers_email_is_relayed_and_arrives_once_even_if_the_relay_crashes() {
    let f = fixture().await;
    let commands = command_bus(
        f.db.pool.clone(),
        PortSecrets {
            claims_hash_key: b"k".to_vec(),
        },
        BusSettings::default(),
    );
    let teacher = Actor::user(UserId::new(), Role::Teacher);
    commands
        .execute::<OutgoingEmail>(
            &uuid::Uuid::new_v4().to_string(),
            OutgoingEmailCommand::Send {
                sender: teacher,
                recipient_email: "Parent@Example.com".into(),
                subject: "Parents evening".into(),
                body: "<p>See you on <b>Tuesday</b>.</p>".into(),
            },
            &CommandContext::new(teacher, "test"),
        )
        .await
        .expect("email queued");
    // The settled horizon is cluster-wide: wait until the relay can see the event.
    let log = EventLog::new(f.db.pool.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while log
        .read_after(LogPosition::START, 10)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The relay sends and dies before its checkpoint; the restarted one sends again.
    let relay = OutboxRelay::new(f.db.pool.clone(), f.bus.clone(), RelayConfig::default());
    assert_eq!(relay.relay_batch_then_crash().await.unwrap(), 1);
    assert_eq!(relay.relay_pending().await.unwrap(), 1);

    assert_eq!(
        f.consumer.process_one(WAIT).await.unwrap(),
        Some(Settled::Completed)
    );
    assert_eq!(
        f.consumer
            .process_one(Duration::from_secs(1))
            .await
            .unwrap(),
        None,
        "the resent job was the same message"
    );
    let delivered = f.mailbox.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let mail = &delivered[0];
    assert_eq!(mail.to, ["<parent@example.com>"]);
    assert!(
        mail.data.contains("Subject: Parents evening"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("Tuesday"), "{}", mail.data);
}
