//! Hot streams across replicas with the aggregate cache on: two manager processes on one
//! database write one student's deck, and no acknowledged command is lost.
//!
//! Each manager keeps the deck as its own last append left it (`aggregate_cache`), so once
//! the other manager has appended, that entry is stale. The append's sequence check refuses
//! the stale decision, the entry is evicted and the bus's retry reloads; the first test makes
//! that happen deterministically (a write on each manager in turn), the second under load.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::portal::{email, Portal};
use support::{free_port, read_models_caught_up, teachin_at, verify_all, RunningApp};

const ADD: &str =
    "mutation($h: String!, $e: String!) { addWordCard(hebrew: $h, english: $e) { id } }";
const CACHE: (&str, &str) = ("TEACHIN_AGGREGATE_CACHE_MIB", "16");
const DEADLINE: Duration = Duration::from_secs(60);

/// A second `teachin manager` on the app's database and Redis namespace: another replica.
struct SecondManager {
    child: std::process::Child,
    url: String,
}

impl SecondManager {
    async fn start(app: &RunningApp) -> Self {
        let port = free_port();
        let child = teachin_at(&app.db.url)
            .arg("manager")
            .env("TEACHIN_NAMESPACE", &app.namespace)
            .env("TEACHIN_MANAGER_PORT", port.to_string())
            .env(
                "TEACHIN_AVATARS_DIR",
                std::env::temp_dir().join(format!("teachin-avatars-{}", app.namespace)),
            )
            .env(CACHE.0, CACHE.1)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the second manager starts");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while !http
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                started.elapsed() < DEADLINE,
                "the second manager is not ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SecondManager { child, url }
    }
}

impl Drop for SecondManager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A signed-in student, and a portal of theirs on each manager.
async fn student_on_both(app: &RunningApp, second: &SecondManager) -> (Portal, Portal) {
    let mut first = Portal::new(app);
    let address = email("hot");
    first.sign_up("Hot", &address).await;
    first.login(&address).await;
    let mut other = Portal::at(&second.url);
    other.token = first.token.clone();
    other.user_id = first.user_id.clone();
    (first, other)
}

/// One `addWordCard`; the new card's id when it was acknowledged, else the error code.
async fn add(portal: &Portal, n: usize) -> Result<String, String> {
    let r: Value = portal
        .try_gql(
            ADD,
            json!({ "h": format!("מילה {n}"), "e": format!("word {n}") }),
        )
        .await
        .map_err(|e| format!("TRANSPORT {e}"))?;
    match r["data"]["addWordCard"]["id"].as_str() {
        Some(id) => Ok(id.to_string()),
        None => Err(support::portal::code(&r).unwrap_or_else(|| r.to_string())),
    }
}

/// A counter's value on a manager's `/metrics` (0 when absent).
async fn counter(manager: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{manager}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The deck stream's event count and last sequence.
async fn deck_stream(app: &RunningApp, student: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), coalesce(max(sequence), 0) FROM events
          WHERE aggregate_type = 'WordCardDeck' AND aggregate_id = $1",
    )
    .bind(student)
    .fetch_one(&app.db.pool)
    .await
    .unwrap()
}

async fn caught_up_and_verified(app: &RunningApp) {
    let started = Instant::now();
    while !read_models_caught_up(&app.db.pool).await {
        assert!(
            started.elapsed() < DEADLINE,
            "the read models did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    verify_all(&app.db);
}

/// The read model's cards of the student.
async fn cards(portal: &Portal) -> Vec<String> {
    let r = portal
        .gql(
            "query($s: UUID!) { wordCards(userId: $s) { cardId } }",
            json!({ "s": portal.id() }),
        )
        .await;
    r["data"]["wordCards"]
        .as_array()
        .unwrap_or_else(|| panic!("wordCards: {r}"))
        .iter()
        .map(|c| c["cardId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_cached_deck_is_refused_evicted_and_reloaded_on_the_other_manager() {
    let app = RunningApp::start_with(&[CACHE]).await;
    let second = SecondManager::start(&app).await;
    let (on_first, on_second) = student_on_both(&app, &second).await;
    let before = deck_stream(&app, on_first.id()).await;

    // The first manager caches the deck; the second appends after it; the first's entry is
    // now one event behind the stream.
    let mut acknowledged = vec![add(&on_first, 1).await.expect("first write")];
    acknowledged.push(add(&on_second, 2).await.expect("second write"));
    let retries_before = counter(&app.manager, "teachin_command_conflict_retries_total").await;
    let hits_before = counter(&app.manager, "teachin_aggregate_cache_hits_total").await;
    // So this command starts from the stale entry, is refused, and is retried on a reload.
    acknowledged.push(
        add(&on_first, 3)
            .await
            .expect("the write from a stale entry is retried and applied"),
    );
    assert_eq!(
        counter(&app.manager, "teachin_aggregate_cache_hits_total").await - hits_before,
        1.0,
        "the third write started from the cached (stale) deck"
    );
    assert_eq!(
        counter(&app.manager, "teachin_command_conflict_retries_total").await - retries_before,
        1.0,
        "the stale decision was refused once, then applied on a reload"
    );
    // And the entry is current again: the next write on the first manager is a clean hit.
    acknowledged.push(add(&on_first, 4).await.expect("fourth write"));

    let after = deck_stream(&app, on_first.id()).await;
    assert_eq!(after.0 - before.0, acknowledged.len() as i64);
    assert_eq!(after.1 - before.1, acknowledged.len() as i64);
    caught_up_and_verified(&app).await;
    let mut held = cards(&on_first).await;
    held.sort();
    acknowledged.sort();
    assert_eq!(held, acknowledged, "every acknowledged card is in the deck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_managers_writing_one_deck_at_once_lose_no_acknowledged_card() {
    const WRITERS_PER_MANAGER: usize = 4;
    const WRITES_EACH: usize = 15;
    let app = RunningApp::start_with(&[CACHE]).await;
    let second = SecondManager::start(&app).await;
    let (on_first, on_second) = student_on_both(&app, &second).await;
    let before = deck_stream(&app, on_first.id()).await;
    let portals = [
        std::sync::Arc::new(on_first),
        std::sync::Arc::new(on_second),
    ];

    let mut writers = Vec::new();
    for (m, portal) in portals.iter().enumerate() {
        for w in 0..WRITERS_PER_MANAGER {
            let portal = portal.clone();
            writers.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for i in 0..WRITES_EACH {
                    outcomes.push(add(&portal, (m * 100 + w) * 100 + i).await);
                }
                outcomes
            }));
        }
    }
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    for writer in writers {
        for outcome in writer.await.unwrap() {
            match outcome {
                Ok(id) => acknowledged.push(id),
                Err(code) => refused.push(code),
            }
        }
    }
    // A refusal may only be the bus's bounded retries running out, never anything else.
    assert!(
        refused.iter().all(|code| code == "CONFLICT"),
        "unexpected errors: {refused:?}"
    );
    let sent = 2 * WRITERS_PER_MANAGER * WRITES_EACH;
    assert!(
        acknowledged.len() * 10 >= sent * 9,
        "{} of {sent} writes acknowledged: {refused:?}",
        acknowledged.len()
    );

    // No lost update: the stream holds exactly the acknowledged writes, in an unbroken
    // sequence, and the deck holds exactly their cards.
    let after = deck_stream(&app, portals[0].id()).await;
    assert_eq!(after.0 - before.0, acknowledged.len() as i64);
    assert_eq!(after.1 - before.1, acknowledged.len() as i64);
    caught_up_and_verified(&app).await;
    let mut held = cards(&portals[1]).await;
    held.sort();
    acknowledged.sort();
    assert_eq!(held, acknowledged);
    for manager in [&app.manager, &second.url] {
        assert!(
            counter(manager, "teachin_aggregate_cache_hits_total").await > 0.0,
            "{manager} served writes from its cache"
        );
    }
}
