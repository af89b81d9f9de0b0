//! The read-model query service: what the GraphQL API reads to answer the portals.
//!
//! [`ReadModels`] wraps the pool and offers one async method per question the portals ask
//! (original system §1.2–1.9, §7, §9). It reads only the `read_model` schema, always by fully
//! qualified names, and never writes. Every answer is a typed, `Serialize` struct whose enum
//! columns are parsed into the domain's vocabulary; a value the domain does not know is a
//! decode error, not a silent default.
//!
//! Authorization is the API's job: these methods answer for whatever ids they are given. The
//! relation checks the API needs for that ([`ReadModels::is_teacher_of`],
//! [`ReadModels::shares_class`]) are here because they are read-model questions.

pub mod classes;
pub mod learning;
pub mod paging;
pub mod practice;
pub mod tutor;
pub mod users;

pub use classes::{ClassInvitation, ClassMember, ClassView};
pub use learning::{AchievementStatus, GameConfigView, WordCardView};
pub use paging::{
    clamp_page_size, Cursor, InvalidCursor, Page, PageRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE,
};
pub use practice::{
    AttemptDetail, FailedAttempt, MistakeExercise, PracticeSummaryRow, StudentPracticeRow,
};
pub use tutor::{AiRequestView, TutorMessageView, TutorSessionView, TutorSessionWithMessages};
pub use users::{Recipient, Recipients, UserView};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::str::FromStr;

/// Reads the read models.
#[derive(Debug, Clone)]
pub struct ReadModels {
    pool: PgPool,
}

impl ReadModels {
    pub fn new(pool: PgPool) -> Self {
        ReadModels { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// An optional time window: `from <= t` and `t <= to`, each bound only when given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateRange {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl DateRange {
    pub fn new(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        DateRange { from, to }
    }

    /// No bounds: everything.
    pub fn all() -> Self {
        DateRange::default()
    }

    pub fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        DateRange {
            from: Some(from),
            to: Some(to),
        }
    }

    pub fn is_unbounded(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }
}

/// Reads a text column holding one of the domain's enum spellings.
pub(crate) fn enum_column<T>(row: &PgRow, column: &str) -> Result<T, sqlx::Error>
where
    T: FromStr<Err = String>,
{
    let text: String = row.try_get(column)?;
    text.parse()
        .map_err(|reason: String| sqlx::Error::ColumnDecode {
            index: column.to_string(),
            source: reason.into(),
        })
}

/// Reads a jsonb column holding a list of strings (answers). Anything else reads as its
/// string values, so an unexpected shape never fails a whole page.
pub(crate) fn strings_column(row: &PgRow, column: &str) -> Result<Vec<String>, sqlx::Error> {
    let value: Option<serde_json::Value> = row.try_get(column)?;
    Ok(value.map(json_strings).unwrap_or_default())
}

pub(crate) fn json_strings(value: serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect(),
        serde_json::Value::String(s) => vec![s],
        serde_json::Value::Null => Vec::new(),
        other => vec![other.to_string()],
    }
}
