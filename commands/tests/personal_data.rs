//! Crypto-shredding and cross-aggregate uniqueness against the real database: personal data
//! is sealed in the log, erasure makes it unreadable for good, and an email is held by one
//! account at a time even under concurrent sign-ups.

use futures::future::join_all;
use serde_json::Value;
use teachin_commands::bus::{BusSettings, CommandBus, CommandContext, CommandError};
use teachin_commands::ports::PostgresVault;
use teachin_commands::testing::TestDatabase;
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::Sealed;
use teachin_domain::services::{ClaimOutcome, ClaimScope, PersonalDataVault, PortError};
use teachin_domain::user::{Language, User, UserCommand, UserError};

fn bus(db: &TestDatabase) -> CommandBus {
    db.bus(BusSettings::default())
}

fn sign_up(user_id: UserId, email: &str) -> UserCommand {
    UserCommand::Register {
        user_id,
        role: Role::Student,
        first_name: "Dana".into(),
        last_name: "Mizrahi".into(),
        email: email.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo".into(),
        preferred_language: Language::He,
        hebrew_level: None,
        interests: vec!["music".into(), "football".into()],
        registered_by: Actor::Anonymous,
    }
}

async fn register(
    bus: &CommandBus,
    user_id: UserId,
    email: &str,
) -> Result<(), CommandError<UserError>> {
    bus.execute::<User>(
        &user_id.to_string(),
        sign_up(user_id, email),
        &CommandContext::new(Actor::Anonymous, "request:sign-up"),
    )
    .await
    .map(|_| ())
}

/// Every `Sealed` value in the stored payloads of one stream.
async fn sealed_values_in_log(db: &TestDatabase, user_id: UserId) -> Vec<Sealed> {
    let payloads: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'User' AND aggregate_id = $1",
    )
    .bind(user_id.to_string())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut found = Vec::new();
    fn walk(value: &Value, found: &mut Vec<Sealed>) {
        if let Ok(sealed) = serde_json::from_value::<Sealed>(value.clone()) {
            found.push(sealed);
            return;
        }
        match value {
            Value::Object(map) => map.values().for_each(|v| walk(v, found)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    payloads.iter().for_each(|p| walk(p, &mut found));
    found
}

#[tokio::test]
async fn personal_data_is_sealed_in_the_log_and_erasure_makes_it_unreadable() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let dana = UserId::new();
    register(&bus, dana, "Dana@Example.com").await.unwrap();

    let raw: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    for secret in ["Dana", "Mizrahi", "dana@example.com", "music", "argon2"] {
        assert!(!raw.contains(secret), "`{secret}` is readable in the log");
    }
    let sealed = sealed_values_in_log(&db, dana).await;
    assert!(
        sealed.len() >= 5,
        "names, email, password hash and interests are sealed"
    );
    let mut opened = Vec::new();
    for value in &sealed {
        opened.push(
            bus.services()
                .vault
                .open(value)
                .await
                .unwrap()
                .expect("readable before erasure"),
        );
    }
    assert!(opened.contains(&"Dana".to_string()));
    assert!(opened.contains(&"dana@example.com".to_string()));

    bus.execute::<User>(
        &dana.to_string(),
        UserCommand::Erase {
            actor: Actor::user(dana, Role::Student),
        },
        &CommandContext::new(Actor::user(dana, Role::Student), "request:erase"),
    )
    .await
    .unwrap();

    // Nothing sealed for Dana can be opened again: not by the vault, not by a rebuild.
    for value in sealed_values_in_log(&db, dana).await {
        assert_eq!(bus.services().vault.open(&value).await.unwrap(), None);
    }
    let key: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT key FROM personal_data_keys WHERE subject_id = $1")
            .bind(dana.0)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(key, None, "the key itself is gone");
    // Nothing new can be sealed for an erased person.
    assert_eq!(
        bus.services().vault.seal(dana, "anything").await,
        Err(PortError::Erased(dana))
    );
    // The account is closed to every command.
    let again = bus
        .execute::<User>(
            &dana.to_string(),
            UserCommand::ClearAvatar,
            &CommandContext::new(Actor::System, "test"),
        )
        .await;
    assert!(matches!(
        again,
        Err(CommandError::Rejected(UserError::Erased))
    ));
    // ...and the email is free for a new account.
    register(&bus, UserId::new(), "dana@example.com")
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_sign_ups_with_one_email_create_one_account() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let results = join_all((0..6).map(|i| {
        let bus = bus.clone();
        let email = if i % 2 == 0 {
            "same@example.com"
        } else {
            "SAME@example.com "
        };
        async move { register(&bus, UserId::new(), email).await }
    }))
    .await;
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 1, "{results:?}");
    for result in results.into_iter().filter(Result::is_err) {
        assert!(matches!(
            result,
            Err(CommandError::Rejected(UserError::EmailTaken))
        ));
    }
}

#[tokio::test]
async fn claims_are_keyed_hashes_held_by_one_owner() {
    let db = TestDatabase::new().await;
    let bus = bus(&db);
    let claims = &bus.services().claims;
    assert_eq!(
        claims
            .claim(ClaimScope::ClassroomName, "hebrew 101", "a")
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        claims
            .claim(ClaimScope::ClassroomName, "hebrew 101", "a")
            .await
            .unwrap(),
        ClaimOutcome::Claimed,
        "idempotent for the holder"
    );
    assert_eq!(
        claims
            .claim(ClaimScope::ClassroomName, "hebrew 101", "b")
            .await
            .unwrap(),
        ClaimOutcome::TakenBy("a".into())
    );
    // Scopes are independent.
    assert_eq!(
        claims
            .claim(ClaimScope::ClassroomJoinCode, "hebrew 101", "b")
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    // Only the holder releases.
    claims
        .release(ClaimScope::ClassroomName, "hebrew 101", "b")
        .await
        .unwrap();
    assert_eq!(
        claims
            .claim(ClaimScope::ClassroomName, "hebrew 101", "b")
            .await
            .unwrap(),
        ClaimOutcome::TakenBy("a".into())
    );
    claims
        .release(ClaimScope::ClassroomName, "hebrew 101", "a")
        .await
        .unwrap();
    assert_eq!(
        claims
            .claim(ClaimScope::ClassroomName, "hebrew 101", "b")
            .await
            .unwrap(),
        ClaimOutcome::Claimed
    );
    // Erasure releases by owner, whatever the values were.
    claims
        .claim(ClaimScope::UserEmail, "one@example.com", "c")
        .await
        .unwrap();
    claims
        .claim(ClaimScope::UserEmail, "two@example.com", "c")
        .await
        .unwrap();
    claims
        .release_owned(ClaimScope::UserEmail, "c")
        .await
        .unwrap();
    for email in ["one@example.com", "two@example.com"] {
        assert_eq!(
            claims
                .claim(ClaimScope::UserEmail, email, "d")
                .await
                .unwrap(),
            ClaimOutcome::Claimed
        );
    }

    let readable: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unique_claims WHERE position('hebrew' in encode(value_hash, 'escape')) > 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(readable, 0, "values are stored hashed");
}

#[tokio::test]
async fn an_erasure_on_another_replica_leaves_nothing_it_can_open() {
    let db = TestDatabase::new().await;
    let this_replica = PostgresVault::new(db.pool.clone());
    let other_replica = PostgresVault::new(db.pool.clone());
    let dana = UserId::new();
    // This replica has Dana's sealing key cached from a recent command.
    let before = this_replica.seal(dana, "before").await.unwrap();
    assert_eq!(
        other_replica.open(&before).await.unwrap().as_deref(),
        Some("before")
    );

    other_replica.shred(dana).await.unwrap();

    // Opening reads the table on every replica: nothing of Dana's opens, at once.
    assert_eq!(this_replica.open(&before).await.unwrap(), None);
    // A command sealing on this replica within the cache's lifetime still seals, but under the
    // destroyed key: what it wrote can never be opened either.
    if let Ok(late) = this_replica.seal(dana, "late").await {
        assert_eq!(this_replica.open(&late).await.unwrap(), None);
        assert_eq!(other_replica.open(&late).await.unwrap(), None);
    }
    // Once the cached key has lapsed, sealing is refused here too.
    tokio::time::sleep(teachin_commands::ports::SEALING_KEY_TTL).await;
    assert_eq!(
        this_replica.seal(dana, "later").await,
        Err(PortError::Erased(dana))
    );
}
