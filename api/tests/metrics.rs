//! A poisoned event shows in `/metrics` as a halted projection, beside its backlog.

use teachin_commands::testing::TestDatabase;
use teachin_projections::read_models;
use teachin_projections::runner::{catch_up, BatchOutcome, Target};

#[tokio::test]
async fn a_halted_projection_is_reported_with_its_backlog() {
    let db = TestDatabase::new().await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('User', gen_random_uuid()::text, 1, 'UserRegistered', '1.0', '{\"UserRegistered\": {\"role\": 42}}', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let users = read_models::all()
        .into_iter()
        .find(|p| p.name() == "users")
        .unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    // The horizon is cluster-wide: another test's open transaction may hold it back a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, outcome) = catch_up(&mut conn, &*users, &Target::live(&*users), 100)
            .await
            .unwrap();
        if outcome == BatchOutcome::Halted || std::time::Instant::now() > deadline {
            assert_eq!(outcome, BatchOutcome::Halted);
            break;
        }
        tokio::task::yield_now().await;
    }

    let text = teachin_api::metrics::render(&db.pool).await.unwrap();
    assert!(
        text.contains("teachin_projection_halted{projection=\"users\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("teachin_projection_lag_events{projection=\"users\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("teachin_projection_halted{projection=\"practice\"} 0"),
        "{text}"
    );
    assert!(text.contains("# TYPE teachin_projection_halted gauge"));
}
