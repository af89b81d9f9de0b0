//! `classrooms`, `classroom_members` and `classroom_invitations`: every existing class, who is
//! in it, and which students were invited and have not answered. A deleted class is removed
//! with its members and invitations. A member's `role` is the one they had when they joined,
//! spelled as serde writes it (`Student` | `Teacher` | `Admin`). Invitations have a table of
//! their own so that `classroom_members` holds only memberships, which is what makes a
//! teacher anyone's teacher.

use super::{decode_all, serde_name};
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::{HashMap, HashSet};
use teachin_domain::actor::Role;
use teachin_domain::classroom::{Classroom, ClassroomEvent};
use teachin_domain::ids::UserId;
use uuid::Uuid;

pub struct Classrooms;

struct ClassRow {
    name: String,
    description: Option<String>,
    join_code: String,
    created_by: Option<Uuid>,
    created_at: DateTime<Utc>,
}

struct MemberRow {
    role: String,
    added_by: Option<Uuid>,
    added_at: DateTime<Utc>,
}

struct InvitationRow {
    invited_by: Option<Uuid>,
    invited_at: DateTime<Utc>,
}

#[async_trait]
impl Projection for Classrooms {
    fn name(&self) -> &'static str {
        "classrooms"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["classrooms", "classroom_members", "classroom_invitations"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        // Final state per class and per membership: Some = saved, None = deleted.
        let mut classes: HashMap<Uuid, Option<ClassRow>> = HashMap::new();
        let mut members: HashMap<(Uuid, Uuid), Option<MemberRow>> = HashMap::new();
        let mut invitations: HashMap<(Uuid, Uuid), Option<InvitationRow>> = HashMap::new();
        // Classes deleted in this batch: their members from earlier batches go too.
        let mut deleted: HashSet<Uuid> = HashSet::new();
        for (logged, event) in decode_all::<ClassroomEvent>(batch, Classroom::TYPE)? {
            let class = logged.aggregate_uuid()?;
            match event {
                ClassroomEvent::ClassroomCreated {
                    classroom_id: _,
                    name,
                    description,
                    join_code,
                    created_by,
                } => {
                    classes.insert(
                        class,
                        Some(ClassRow {
                            name,
                            description,
                            join_code: join_code.to_string(),
                            created_by: created_by.map(|u| u.0),
                            created_at: logged.recorded_at,
                        }),
                    );
                }
                ClassroomEvent::MemberAdded {
                    user,
                    role,
                    added_by,
                } => {
                    invitations.insert((class, user.0), None);
                    members.insert(
                        (class, user.0),
                        Some(MemberRow {
                            role: serde_name(&role),
                            added_by: added_by.map(|u| u.0),
                            added_at: logged.recorded_at,
                        }),
                    );
                }
                ClassroomEvent::MemberInvited {
                    student,
                    invited_by,
                } => {
                    invitations.insert(
                        (class, student.0),
                        Some(InvitationRow {
                            invited_by: invited_by.map(|u| u.0),
                            invited_at: logged.recorded_at,
                        }),
                    );
                }
                // A member through their own answer: added by whoever invited them, or by
                // nobody when they came with the code.
                ClassroomEvent::InvitationAccepted {
                    student,
                    invited_by,
                } => {
                    admit(
                        &mut members,
                        &mut invitations,
                        (class, student.0),
                        invited_by,
                        logged,
                    );
                }
                ClassroomEvent::MemberJoined { student } => {
                    admit(
                        &mut members,
                        &mut invitations,
                        (class, student.0),
                        None,
                        logged,
                    );
                }
                ClassroomEvent::InvitationDeclined { student }
                | ClassroomEvent::InvitationWithdrawn { student } => {
                    invitations.insert((class, student.0), None);
                }
                ClassroomEvent::MemberRemoved { user } => {
                    members.insert((class, user.0), None);
                }
                ClassroomEvent::ClassroomDeleted => {
                    classes.insert(class, None);
                    deleted.insert(class);
                    for ((member_class, _), row) in members.iter_mut() {
                        if *member_class == class {
                            *row = None;
                        }
                    }
                    for ((invited_class, _), row) in invitations.iter_mut() {
                        if *invited_class == class {
                            *row = None;
                        }
                    }
                }
            }
        }
        if classes.is_empty() && members.is_empty() && invitations.is_empty() {
            return Ok(());
        }

        // Deletes first: a deleted class releases its join code for a class created later.
        let deleted: Vec<Uuid> = deleted.into_iter().collect();
        if !deleted.is_empty() {
            sqlx::query("DELETE FROM classrooms WHERE classroom_id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *cx.conn)
                .await?;
            sqlx::query("DELETE FROM classroom_members WHERE classroom_id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *cx.conn)
                .await?;
            sqlx::query("DELETE FROM classroom_invitations WHERE classroom_id = ANY($1)")
                .bind(&deleted)
                .execute(&mut *cx.conn)
                .await?;
        }
        write_invitations(invitations, cx).await?;
        let (mut gone_classes, mut gone_users) = (vec![], vec![]);
        let mut m = MemberColumns::default();
        for ((class, user), row) in members {
            match row {
                Some(row) => {
                    m.classroom_id.push(class);
                    m.user_id.push(user);
                    m.role.push(row.role);
                    m.added_by.push(row.added_by);
                    m.added_at.push(row.added_at);
                }
                None => {
                    gone_classes.push(class);
                    gone_users.push(user);
                }
            }
        }
        if !gone_classes.is_empty() {
            sqlx::query(
                "DELETE FROM classroom_members
                  WHERE (classroom_id, user_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))",
            )
            .bind(&gone_classes)
            .bind(&gone_users)
            .execute(&mut *cx.conn)
            .await?;
        }

        let mut c = ClassColumns::default();
        for (class, row) in classes {
            if let Some(row) = row {
                c.classroom_id.push(class);
                c.name.push(row.name);
                c.description.push(row.description);
                c.join_code.push(row.join_code);
                c.created_by.push(row.created_by);
                c.created_at.push(row.created_at);
            }
        }
        if !c.classroom_id.is_empty() {
            sqlx::query(
                "INSERT INTO classrooms (classroom_id, name, description, join_code, created_by, created_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                                      $6::timestamptz[])
                 ON CONFLICT (classroom_id) DO UPDATE SET
                    name = EXCLUDED.name, description = EXCLUDED.description,
                    join_code = EXCLUDED.join_code, created_by = EXCLUDED.created_by,
                    created_at = EXCLUDED.created_at",
            )
            .bind(&c.classroom_id)
            .bind(&c.name)
            .bind(&c.description)
            .bind(&c.join_code)
            .bind(&c.created_by)
            .bind(&c.created_at)
            .execute(&mut *cx.conn)
            .await?;
        }
        if !m.classroom_id.is_empty() {
            sqlx::query(
                "INSERT INTO classroom_members (classroom_id, user_id, role, added_by, added_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::timestamptz[])
                 ON CONFLICT (classroom_id, user_id) DO UPDATE SET
                    role = EXCLUDED.role, added_by = EXCLUDED.added_by, added_at = EXCLUDED.added_at",
            )
            .bind(&m.classroom_id)
            .bind(&m.user_id)
            .bind(&m.role)
            .bind(&m.added_by)
            .bind(&m.added_at)
            .execute(&mut *cx.conn)
            .await?;
        }
        Ok(())
    }
}

/// A student becomes a member by their own answer; their invitation, if any, is spent.
fn admit(
    members: &mut HashMap<(Uuid, Uuid), Option<MemberRow>>,
    invitations: &mut HashMap<(Uuid, Uuid), Option<InvitationRow>>,
    key: (Uuid, Uuid),
    added_by: Option<UserId>,
    logged: &LoggedEvent,
) {
    invitations.insert(key, None);
    members.insert(
        key,
        Some(MemberRow {
            role: serde_name(&Role::Student),
            added_by: added_by.map(|u| u.0),
            added_at: logged.recorded_at,
        }),
    );
}

/// Each touched invitation once: removed, or upserted.
async fn write_invitations(
    invitations: HashMap<(Uuid, Uuid), Option<InvitationRow>>,
    cx: &mut ApplyContext<'_>,
) -> Result<(), ApplyError> {
    let (mut gone_classes, mut gone_students) = (vec![], vec![]);
    let (mut classes, mut students, mut invited_by, mut invited_at) =
        (vec![], vec![], vec![], vec![]);
    for ((class, student), row) in invitations {
        match row {
            Some(row) => {
                classes.push(class);
                students.push(student);
                invited_by.push(row.invited_by);
                invited_at.push(row.invited_at);
            }
            None => {
                gone_classes.push(class);
                gone_students.push(student);
            }
        }
    }
    if !gone_classes.is_empty() {
        sqlx::query(
            "DELETE FROM classroom_invitations
              WHERE (classroom_id, student_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))",
        )
        .bind(&gone_classes)
        .bind(&gone_students)
        .execute(&mut *cx.conn)
        .await?;
    }
    if !classes.is_empty() {
        sqlx::query(
            "INSERT INTO classroom_invitations (classroom_id, student_id, invited_by, invited_at)
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::timestamptz[])
             ON CONFLICT (classroom_id, student_id) DO UPDATE SET
                invited_by = EXCLUDED.invited_by, invited_at = EXCLUDED.invited_at",
        )
        .bind(&classes)
        .bind(&students)
        .bind(&invited_by)
        .bind(&invited_at)
        .execute(&mut *cx.conn)
        .await?;
    }
    Ok(())
}

#[derive(Default)]
struct ClassColumns {
    classroom_id: Vec<Uuid>,
    name: Vec<String>,
    description: Vec<Option<String>>,
    join_code: Vec<String>,
    created_by: Vec<Option<Uuid>>,
    created_at: Vec<DateTime<Utc>>,
}

#[derive(Default)]
struct MemberColumns {
    classroom_id: Vec<Uuid>,
    user_id: Vec<Uuid>,
    role: Vec<String>,
    added_by: Vec<Option<Uuid>>,
    added_at: Vec<DateTime<Utc>>,
}
