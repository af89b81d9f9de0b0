//! Classrooms, their members, and the invitations students have not answered yet
//! (original §1.3).

use super::users::full_name;
use super::{enum_column, ReadModels};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;
use teachin_domain::actor::Role;
use uuid::Uuid;

/// A classroom with its members.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct ClassView {
    #[sqlx(rename = "classroom_id")]
    pub class_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub join_code: String,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    /// Teachers first, then admins, then students, each by name.
    #[sqlx(skip)]
    pub members: Vec<ClassMember>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct ClassMember {
    pub member_id: Uuid,
    /// "First Last" from the user's profile; empty for an erased (or unknown) user.
    pub name: String,
    /// The role the member has in the class (copied from the user's role when added).
    pub role: Role,
    pub added_at: DateTime<Utc>,
}

/// A teacher's invitation to a class, waiting for the student's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "graphql", derive(async_graphql::SimpleObject))]
pub struct ClassInvitation {
    pub class_id: Uuid,
    pub class_name: String,
    pub class_description: Option<String>,
    pub invited_by: Option<Uuid>,
    /// "First Last" of who invited; empty for an erased (or unknown) user.
    pub invited_by_name: String,
    pub invited_at: DateTime<Utc>,
}

/// Which classrooms to load.
enum Which {
    One(Uuid),
    All,
    OfMember(Uuid),
}

impl ReadModels {
    /// One classroom with its members, or `None` if unknown (or deleted).
    pub async fn class(&self, class_id: Uuid) -> Result<Option<ClassView>, sqlx::Error> {
        Ok(self.load_classes(Which::One(class_id)).await?.pop())
    }

    /// Every classroom (admin), by name.
    pub async fn classes(&self) -> Result<Vec<ClassView>, sqlx::Error> {
        self.load_classes(Which::All).await
    }

    /// The classrooms `user_id` is a member of, by name (the portals' "my classes").
    pub async fn classes_of_member(&self, user_id: Uuid) -> Result<Vec<ClassView>, sqlx::Error> {
        self.load_classes(Which::OfMember(user_id)).await
    }

    /// The invitations `student_id` has not answered, newest first.
    pub async fn class_invitations_of(
        &self,
        student_id: Uuid,
    ) -> Result<Vec<ClassInvitation>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT i.classroom_id, c.name, c.description, i.invited_by, i.invited_at,
                    u.first_name, u.last_name
             FROM read_model.classroom_invitations i
             JOIN read_model.classrooms c ON c.classroom_id = i.classroom_id
             LEFT JOIN read_model.users u ON u.user_id = i.invited_by
             WHERE i.student_id = $1
             ORDER BY i.invited_at DESC, i.classroom_id",
        )
        .bind(student_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let first: Option<String> = row.try_get("first_name")?;
                let last: Option<String> = row.try_get("last_name")?;
                Ok(ClassInvitation {
                    class_id: row.try_get("classroom_id")?,
                    class_name: row.try_get("name")?,
                    class_description: row.try_get("description")?,
                    invited_by: row.try_get("invited_by")?,
                    invited_by_name: full_name(first.as_deref(), last.as_deref()),
                    invited_at: row.try_get("invited_at")?,
                })
            })
            .collect()
    }

    async fn load_classes(&self, which: Which) -> Result<Vec<ClassView>, sqlx::Error> {
        let (filter, id) = match which {
            Which::One(id) => ("c.classroom_id = $1", Some(id)),
            Which::All => ("$1::uuid IS NULL", None),
            Which::OfMember(id) => (
                "EXISTS (SELECT 1 FROM read_model.classroom_members m
                         WHERE m.classroom_id = c.classroom_id AND m.user_id = $1)",
                Some(id),
            ),
        };
        let sql = format!(
            "SELECT c.classroom_id, c.name, c.description, c.join_code, c.created_by, c.created_at
             FROM read_model.classrooms c WHERE {filter}
             ORDER BY lower(c.name), c.classroom_id"
        );
        let mut classes = sqlx::query_as::<_, ClassView>(&sql)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        if classes.is_empty() {
            return Ok(classes);
        }
        let ids: Vec<Uuid> = classes.iter().map(|c| c.class_id).collect();
        let member_rows = sqlx::query(
            "SELECT m.classroom_id, m.user_id, m.role, m.added_at, u.first_name, u.last_name
             FROM read_model.classroom_members m
             LEFT JOIN read_model.users u ON u.user_id = m.user_id
             WHERE m.classroom_id = ANY($1)
             ORDER BY CASE m.role WHEN 'Teacher' THEN 0 WHEN 'Admin' THEN 1 ELSE 2 END,
                      lower(u.first_name), lower(u.last_name), m.user_id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let index: HashMap<Uuid, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        for row in &member_rows {
            let class_id: Uuid = row.try_get("classroom_id")?;
            let first: Option<String> = row.try_get("first_name")?;
            let last: Option<String> = row.try_get("last_name")?;
            let member = ClassMember {
                member_id: row.try_get("user_id")?,
                name: full_name(first.as_deref(), last.as_deref()),
                role: enum_column(row, "role")?,
                added_at: row.try_get("added_at")?,
            };
            if let Some(i) = index.get(&class_id) {
                classes[*i].members.push(member);
            }
        }
        Ok(classes)
    }
}
