//! What the projection tests share: a projection that counts how many times each event is
//! applied to it. Exactly once means every count is 1, and a missing row is an event never
//! applied.

#![allow(dead_code)] // each test file uses its own part

use async_trait::async_trait;
use sqlx::PgPool;
use teachin_projections::{ApplyContext, ApplyError, LoggedEvent, Projection};

/// Counts applications per event in its one table, `read_model.<table>(event_id, times)`.
#[derive(Debug, Clone, Copy)]
pub struct ApplicationCounter {
    name: &'static str,
    tables: &'static [&'static str],
}

impl Default for ApplicationCounter {
    /// `application_counter`, into `applied_events`.
    fn default() -> Self {
        Self::named("application_counter", &["applied_events"])
    }
}

impl ApplicationCounter {
    /// A counter of another name and table (a second projection deployed beside the first).
    pub const fn named(name: &'static str, tables: &'static [&'static str; 1]) -> Self {
        ApplicationCounter { name, tables }
    }

    fn table(&self) -> &'static str {
        self.tables[0]
    }

    /// Creates the counter's table (a projection's tables exist before it runs).
    pub async fn create_table(&self, pool: &PgPool) {
        sqlx::query(&format!(
            "CREATE TABLE read_model.{} (event_id uuid PRIMARY KEY, times int NOT NULL)",
            self.table()
        ))
        .execute(pool)
        .await
        .unwrap();
    }
}

#[async_trait]
impl Projection for ApplicationCounter {
    fn name(&self) -> &'static str {
        self.name
    }
    fn tables(&self) -> &'static [&'static str] {
        self.tables
    }
    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        let ids: Vec<uuid::Uuid> = batch.iter().map(|e| e.event_id).collect();
        sqlx::query(&format!(
            "INSERT INTO {table} (event_id, times) SELECT id, 1 FROM UNNEST($1::uuid[]) AS id
             ON CONFLICT (event_id) DO UPDATE SET times = {table}.times + 1",
            table = self.table()
        ))
        .bind(&ids)
        .execute(&mut *cx.conn)
        .await?;
        Ok(())
    }
}
