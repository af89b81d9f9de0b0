//! `achievement_progress` and `user_achievements`: how far each user is per feature, and the
//! badges they unlocked. `feature` is spelled as serde writes it (`WordCards`,
//! `TypingPractice`...). A `ProgressRecorded` carries the new count, which is authoritative:
//! the row takes it as it is, so nothing needs to be read first.

use super::{decode_all, int4, serde_name};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::HashMap;
use teachin_domain::achievements::{AchievementEvent, AchievementProgress};
use uuid::Uuid;

pub struct Achievements;

struct Unlocked {
    feature: String,
    target: i32,
    unlocked_at: DateTime<Utc>,
}

#[async_trait]
impl Projection for Achievements {
    fn name(&self) -> &'static str {
        "achievements"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["achievement_progress", "user_achievements"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let mut progress: HashMap<(Uuid, String), (i64, DateTime<Utc>)> = HashMap::new();
        let mut unlocked: HashMap<(Uuid, String), Unlocked> = HashMap::new();
        for (logged, event) in decode_all::<AchievementEvent>(batch, AchievementProgress::TYPE)? {
            let user = logged.aggregate_uuid()?;
            match event {
                AchievementEvent::ProgressRecorded {
                    feature, new_count, ..
                } => {
                    progress.insert(
                        (user, serde_name(&feature)),
                        (i64::from(new_count), logged.recorded_at),
                    );
                }
                AchievementEvent::AchievementUnlocked {
                    key,
                    feature,
                    target,
                } => {
                    // Unlocked once; should the log ever say it twice, the first time stands.
                    unlocked.entry((user, key)).or_insert(Unlocked {
                        feature: serde_name(&feature),
                        target: int4(target),
                        unlocked_at: logged.recorded_at,
                    });
                }
            }
        }

        if !progress.is_empty() {
            let (mut users, mut features, mut counts, mut times) = (vec![], vec![], vec![], vec![]);
            for ((user, feature), (count, at)) in progress {
                users.push(user);
                features.push(feature);
                counts.push(count);
                times.push(at);
            }
            sqlx::query(
                "INSERT INTO achievement_progress (user_id, feature, count, updated_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[])
                 ON CONFLICT (user_id, feature) DO UPDATE SET
                    count = EXCLUDED.count, updated_at = EXCLUDED.updated_at",
            )
            .bind(&users)
            .bind(&features)
            .bind(&counts)
            .bind(&times)
            .execute(&mut *cx.conn)
            .await?;
        }
        if !unlocked.is_empty() {
            let (mut users, mut keys, mut features, mut targets, mut times) =
                (vec![], vec![], vec![], vec![], vec![]);
            for ((user, key), row) in unlocked {
                users.push(user);
                keys.push(key);
                features.push(row.feature);
                targets.push(row.target);
                times.push(row.unlocked_at);
            }
            sqlx::query(
                "INSERT INTO user_achievements (user_id, achievement_key, feature, target, unlocked_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[])
                 ON CONFLICT (user_id, achievement_key) DO NOTHING",
            )
            .bind(&users)
            .bind(&keys)
            .bind(&features)
            .bind(&targets)
            .bind(&times)
            .execute(&mut *cx.conn)
            .await?;
        }
        Ok(())
    }
}
