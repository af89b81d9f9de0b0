//! Users and who teaches whom (original §1.2, §1.12).

use super::paging::{Cursor, Page, PageRequest};
use super::{enum_column, ReadModels};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::Row;
use teachin_domain::actor::Role;
use uuid::Uuid;

/// A user's profile as the portals show it. The password hash is never read here.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct UserView {
    pub user_id: Uuid,
    pub role: Role,
    /// `None` once the user is erased.
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub preferred_language: String,
    pub hebrew_level: Option<String>,
    pub interests: Vec<String>,
    pub avatar_path: Option<String>,
    pub avatar_content_type: Option<String>,
    pub avatar_updated_at: Option<DateTime<Utc>>,
    pub erased: bool,
    pub registered_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserView {
    /// "First Last", as the original's class members and presence lists show names.
    pub fn display_name(&self) -> String {
        full_name(self.first_name.as_deref(), self.last_name.as_deref())
    }

    fn cursor(&self) -> Cursor {
        Cursor::new(self.registered_at, self.user_id)
    }
}

pub(crate) fn full_name(first: Option<&str>, last: Option<&str>) -> String {
    [first.unwrap_or(""), last.unwrap_or("")]
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Someone a teacher can write to (original `GET /emails-manager/recipients/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct Recipient {
    pub user_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub role: Role,
}

/// Whose names [`ReadModels::search_recipients`] looks among.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// Everyone (an admin).
    Everyone,
    /// The students this teacher teaches (see [`teaches`]).
    StudentsOf(Uuid),
}

/// The one definition of "teaches", as an SQL condition on two uuid expressions: the student
/// is on the teacher's list (`teacher_students`, which only an admin fills), or is a *Student*
/// member of a class the teacher is a *Teacher* member of. `classroom_members` holds only
/// memberships the student agreed to (joined with the code, accepted an invitation) or an
/// admin made; pending invitations live in `classroom_invitations` and count for nothing,
/// and neither does a teacher or admin who was once put in a class.
pub(crate) fn teaches(teacher: &str, student: &str) -> String {
    format!(
        "(EXISTS (
             SELECT 1 FROM read_model.teacher_students ts
             WHERE ts.teacher_id = {teacher} AND ts.student_id = {student}
         ) OR EXISTS (
             SELECT 1 FROM read_model.classroom_members t
             JOIN read_model.classroom_members s ON s.classroom_id = t.classroom_id
             WHERE t.user_id = {teacher} AND t.role = 'Teacher'
               AND s.user_id = {student} AND s.role = 'Student'
         ))"
    )
}

const USER_COLUMNS: &str = "u.user_id, u.role, u.first_name, u.last_name, u.email, \
     u.preferred_language, u.hebrew_level, u.interests, u.avatar_path, u.avatar_content_type, \
     u.avatar_updated_at, u.erased, u.registered_at, u.updated_at";

fn user_from_row(row: &PgRow) -> Result<UserView, sqlx::Error> {
    let interests: serde_json::Value = row.try_get("interests")?;
    Ok(UserView {
        user_id: row.try_get("user_id")?,
        role: enum_column(row, "role")?,
        first_name: row.try_get("first_name")?,
        last_name: row.try_get("last_name")?,
        email: row.try_get("email")?,
        preferred_language: row.try_get("preferred_language")?,
        hebrew_level: row.try_get("hebrew_level")?,
        interests: super::json_strings(interests),
        avatar_path: row.try_get("avatar_path")?,
        avatar_content_type: row.try_get("avatar_content_type")?,
        avatar_updated_at: row.try_get("avatar_updated_at")?,
        erased: row.try_get("erased")?,
        registered_at: row.try_get("registered_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl ReadModels {
    /// One user, or `None` if unknown.
    pub async fn user(&self, user_id: Uuid) -> Result<Option<UserView>, sqlx::Error> {
        let sql = format!("SELECT {USER_COLUMNS} FROM read_model.users u WHERE u.user_id = $1");
        sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    /// Several users by id, in no particular order (unknown ids are left out).
    pub async fn users_by_ids(&self, user_ids: &[Uuid]) -> Result<Vec<UserView>, sqlx::Error> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM read_model.users u WHERE u.user_id = ANY($1) \
             ORDER BY u.registered_at DESC, u.user_id DESC"
        );
        sqlx::query(&sql)
            .bind(user_ids)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    /// Every user (the admin's user list), newest registration first, optionally of one role.
    pub async fn users(
        &self,
        role: Option<Role>,
        page: &PageRequest,
    ) -> Result<Page<UserView>, sqlx::Error> {
        let role = role.map(|r| r.as_str());
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM read_model.users u WHERE ($1::text IS NULL OR u.role = $1)",
        )
        .bind(role)
        .fetch_one(&self.pool)
        .await?;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM read_model.users u
             WHERE ($1::text IS NULL OR u.role = $1)
               AND ($2::timestamptz IS NULL OR (u.registered_at, u.user_id) < ($2, $3))
             ORDER BY u.registered_at DESC, u.user_id DESC
             LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(role)
            .bind(page.after_at())
            .bind(page.after_id())
            .bind(page.fetch_limit())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(rows, total, UserView::cursor))
    }

    /// A teacher's assigned students (`teacher_students`), newest registration first.
    pub async fn students_of(
        &self,
        teacher_id: Uuid,
        page: &PageRequest,
    ) -> Result<Page<UserView>, sqlx::Error> {
        let total: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM read_model.teacher_students ts
             JOIN read_model.users u ON u.user_id = ts.student_id
             WHERE ts.teacher_id = $1",
        )
        .bind(teacher_id)
        .fetch_one(&self.pool)
        .await?;
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM read_model.teacher_students ts
             JOIN read_model.users u ON u.user_id = ts.student_id
             WHERE ts.teacher_id = $1
               AND ($2::timestamptz IS NULL OR (u.registered_at, u.user_id) < ($2, $3))
             ORDER BY u.registered_at DESC, u.user_id DESC
             LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(teacher_id)
            .bind(page.after_at())
            .bind(page.after_id())
            .bind(page.fetch_limit())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(page.finish(rows, total, UserView::cursor))
    }

    /// The ids of a teacher's assigned students (what the API passes to
    /// [`ReadModels::all_practice_history`] to scope a teacher's view).
    pub async fn student_ids_of(&self, teacher_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT student_id FROM read_model.teacher_students WHERE teacher_id = $1
             ORDER BY student_id",
        )
        .bind(teacher_id)
        .fetch_all(&self.pool)
        .await
    }

    /// A student's assigned teachers.
    pub async fn teachers_of(&self, student_id: Uuid) -> Result<Vec<UserView>, sqlx::Error> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM read_model.teacher_students ts
             JOIN read_model.users u ON u.user_id = ts.teacher_id
             WHERE ts.student_id = $1
             ORDER BY ts.assigned_at, u.user_id"
        );
        sqlx::query(&sql)
            .bind(student_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    /// Users whose first, last or full ("First Last") name equals `name`, ignoring case and
    /// surrounding spaces, among `among`; erased users and users without an email are left
    /// out.
    pub async fn search_recipients(
        &self,
        name: &str,
        among: Recipients,
    ) -> Result<Vec<Recipient>, sqlx::Error> {
        let wanted = name.split_whitespace().collect::<Vec<_>>().join(" ");
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let teacher = match among {
            Recipients::Everyone => None,
            Recipients::StudentsOf(teacher) => Some(teacher),
        };
        let sql = format!(
            "SELECT u.user_id, u.first_name, u.last_name, u.email, u.role
             FROM read_model.users u
             WHERE NOT u.erased AND u.email IS NOT NULL
               AND (lower(u.first_name) = lower($1)
                    OR lower(u.last_name) = lower($1)
                    OR lower(concat_ws(' ', u.first_name, u.last_name)) = lower($1))
               AND ($2::uuid IS NULL OR {})
             ORDER BY lower(u.last_name), lower(u.first_name), u.user_id",
            teaches("$2", "u.user_id")
        );
        let rows = sqlx::query(&sql)
            .bind(&wanted)
            .bind(teacher)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Recipient {
                    user_id: row.try_get("user_id")?,
                    first_name: row
                        .try_get::<Option<String>, _>("first_name")?
                        .unwrap_or_default(),
                    last_name: row
                        .try_get::<Option<String>, _>("last_name")?
                        .unwrap_or_default(),
                    email: row.try_get("email")?,
                    role: enum_column(row, "role")?,
                })
            })
            .collect()
    }

    /// Whether `teacher_id` teaches `student_id` (see [`teaches`]).
    pub async fn is_teacher_of(
        &self,
        teacher_id: Uuid,
        student_id: Uuid,
    ) -> Result<bool, sqlx::Error> {
        if teacher_id == student_id {
            return Ok(false);
        }
        sqlx::query_scalar(&format!("SELECT {}", teaches("$1", "$2")))
            .bind(teacher_id)
            .bind(student_id)
            .fetch_one(&self.pool)
            .await
    }

    /// Whether two different users are members of at least one common classroom.
    pub async fn shares_class(&self, a: Uuid, b: Uuid) -> Result<bool, sqlx::Error> {
        if a == b {
            return Ok(false);
        }
        sqlx::query_scalar(
            "SELECT EXISTS (
                 SELECT 1 FROM read_model.classroom_members x
                 JOIN read_model.classroom_members y ON y.classroom_id = x.classroom_id
                 WHERE x.user_id = $1 AND y.user_id = $2
             )",
        )
        .bind(a)
        .bind(b)
        .fetch_one(&self.pool)
        .await
    }
}
