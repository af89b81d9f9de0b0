//! The publishing side: log → notifications → Redis, then the checkpoint.

use super::mapping::{notifications_for, sealed_to_open, session_started, FeedLookup};
use super::{FeedConfig, FeedError};
use crate::checkpoint;
use crate::follower::{follow, LeaderLock, Pacing};
use crate::log::{read_after, EventLog, LogPosition, LoggedEvent};
use crate::projection::KeyRing;
use fred::prelude::{Builder, ClientLike, Config, PubsubInterface, ReconnectPolicy};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};
use std::collections::{HashMap, HashSet};
use teachin_domain::ids::UserId;
use teachin_domain::personal_data::Sealed;
use tokio::sync::watch;
use uuid::Uuid;

/// The feed's checkpoint in `public.projection_checkpoints`.
pub const CHECKPOINT: &str = "realtime_feed";

/// The advisory lock that makes one replica the publisher ("realtime_feed" in ASCII).
const LEADER_LOCK: LeaderLock = LeaderLock(0x7265_616c_7469_6d65);

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Consumed this many events, publishing this many notifications.
    Published { events: usize, notifications: usize },
    /// Nothing settled after the checkpoint.
    CaughtUp,
    /// Another replica holds the publisher's lock.
    NotLeader,
}

/// Publishes the feed. Cheap to run on every replica: only the one holding the lock works.
pub struct FeedPublisher {
    log: EventLog,
    redis: fred::prelude::Client,
    config: FeedConfig,
    channel: String,
}

impl FeedPublisher {
    /// Connects to Redis at `redis_url` (`redis://host:port/db`).
    pub async fn connect(
        pool: PgPool,
        redis_url: &str,
        config: FeedConfig,
    ) -> Result<Self, FeedError> {
        let redis = Builder::from_config(Config::from_url(redis_url)?)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()?;
        redis.init().await?;
        Self::new(pool, redis, config).await
    }

    /// Uses an already connected client.
    pub async fn new(
        pool: PgPool,
        redis: fred::prelude::Client,
        config: FeedConfig,
    ) -> Result<Self, FeedError> {
        Ok(FeedPublisher {
            log: EventLog::new(pool),
            channel: config.channel(),
            redis,
            config,
        })
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Publishes everything settled after the checkpoint, batch by batch, each batch
    /// checkpointed after it was published. Returns how many notifications were published
    /// (0 as well when another replica is the publisher).
    pub async fn publish_pending(&self) -> Result<usize, FeedError> {
        let mut published = 0;
        loop {
            match self.step(true).await? {
                Step::Published { notifications, .. } => published += notifications,
                Step::CaughtUp | Step::NotLeader => return Ok(published),
            }
        }
    }

    /// Test hook: publishes the next batch and then stops as if the process died before it
    /// could move the checkpoint. Returns how many notifications went out.
    #[doc(hidden)]
    pub async fn publish_batch_then_crash(&self) -> Result<usize, FeedError> {
        Ok(match self.step(false).await? {
            Step::Published { notifications, .. } => notifications,
            Step::CaughtUp | Step::NotLeader => 0,
        })
    }

    /// Publishes until `shutdown` turns true (or its sender goes away): woken by the log's
    /// NOTIFY, polling with back-off while idle, retrying with back-off after failures.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), FeedError> {
        let pacing = Pacing {
            min_poll: self.config.min_poll,
            max_poll: self.config.max_poll,
        };
        follow(&self.log, "realtime feed", pacing, shutdown, || async {
            self.step(true)
                .await
                .map(|step| matches!(step, Step::Published { .. }))
        })
        .await;
        Ok(())
    }

    /// One batch under the leader lock; `advance` false stops before the checkpoint.
    async fn step(&self, advance: bool) -> Result<Step, FeedError> {
        let mut conn = self.log.pool().acquire().await?;
        checkpoint::ensure(&mut *conn, CHECKPOINT).await?;
        // A panic or a cancellation before `release` closes the connection: the lock dies
        // with its session instead of staying held by an idle pooled connection.
        let Some(mut leader) = LEADER_LOCK.try_acquire(conn).await? else {
            return Ok(Step::NotLeader);
        };
        let outcome = self.step_as_leader(&mut leader, advance).await;
        leader.release().await;
        outcome
    }

    async fn step_as_leader(
        &self,
        conn: &mut PoolConnection<Postgres>,
        advance: bool,
    ) -> Result<Step, FeedError> {
        let from = checkpoint::get(&mut **conn, CHECKPOINT)
            .await?
            .map(|c| c.position)
            .unwrap_or(LogPosition::START);
        let events = read_after(&mut **conn, from, self.config.batch_size).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(Step::CaughtUp);
        };

        let mut owners = load_owners(conn, &events).await?;
        let opened = open_all(conn, &events).await?;
        let mut started = Vec::new();
        let mut notifications = 0;
        for event in &events {
            if let Some((session, student)) = session_started(event) {
                owners.insert(session.clone(), student);
                started.push((session, student));
            }
            let lookup = BatchLookup {
                owners: &owners,
                opened: &opened,
            };
            for notification in notifications_for(event, &lookup) {
                let text = serde_json::to_string(&notification)?;
                tokio::time::timeout(
                    self.config.publish_timeout,
                    self.redis.publish::<i64, _, _>(self.channel.as_str(), text),
                )
                .await
                .map_err(|_| FeedError::Timeout)??;
                notifications += 1;
            }
        }

        if advance {
            let mut tx = conn.begin().await?;
            let current = checkpoint::lock(&mut tx, CHECKPOINT).await?;
            if current.position != from {
                return Err(FeedError::LostOwnership);
            }
            save_owners(&mut tx, &started).await?;
            checkpoint::advance(&mut tx, CHECKPOINT, last, events.len() as i64).await?;
            tx.commit().await?;
        }
        Ok(Step::Published {
            events: events.len(),
            notifications,
        })
    }
}

struct BatchLookup<'a> {
    owners: &'a HashMap<String, UserId>,
    opened: &'a HashMap<String, Option<String>>,
}

impl FeedLookup for BatchLookup<'_> {
    fn session_owner(&self, session_id: &str) -> Option<UserId> {
        self.owners.get(session_id).copied()
    }

    fn open(&self, sealed: &Sealed) -> Option<String> {
        self.opened.get(&sealed.ciphertext).cloned().flatten()
    }
}

/// The known owners of the tutor sessions `events` touch.
async fn load_owners(
    conn: &mut PgConnection,
    events: &[LoggedEvent],
) -> Result<HashMap<String, UserId>, sqlx::Error> {
    let sessions: HashSet<Uuid> = events
        .iter()
        .filter(|e| e.aggregate_type == "TutorSession")
        .filter_map(|e| e.aggregate_id.parse().ok())
        .collect();
    if sessions.is_empty() {
        return Ok(HashMap::new());
    }
    let sessions: Vec<Uuid> = sessions.into_iter().collect();
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT session_id, student_id FROM public.feed_session_owners WHERE session_id = ANY($1)",
    )
    .bind(&sessions)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(session, student)| (session.hyphenated().to_string(), UserId(student)))
        .collect())
}

async fn save_owners(
    conn: &mut PgConnection,
    started: &[(String, UserId)],
) -> Result<(), sqlx::Error> {
    let (sessions, students): (Vec<Uuid>, Vec<Uuid>) = started
        .iter()
        .filter_map(|(session, student)| Some((session.parse::<Uuid>().ok()?, student.0)))
        .unzip();
    if sessions.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO public.feed_session_owners (session_id, student_id)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[])
         ON CONFLICT (session_id) DO NOTHING",
    )
    .bind(&sessions)
    .bind(&students)
    .execute(conn)
    .await?;
    Ok(())
}

/// Opens every sealed value the batch's notifications will show, by ciphertext.
async fn open_all(
    conn: &mut PgConnection,
    events: &[LoggedEvent],
) -> Result<HashMap<String, Option<String>>, sqlx::Error> {
    let wanted: Vec<Sealed> = events.iter().flat_map(sealed_to_open).collect();
    let mut keys = KeyRing::default();
    keys.prefetch(conn, wanted.iter().map(|s| s.subject))
        .await?;
    let mut opened = HashMap::with_capacity(wanted.len());
    for sealed in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) =
            opened.entry(sealed.ciphertext.clone())
        {
            slot.insert(keys.open(conn, &sealed).await?);
        }
    }
    Ok(opened)
}
