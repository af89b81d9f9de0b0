//! `teacher_students`: which students each teacher looks after.

use super::decode_all;
use crate::log::LoggedEvent;
use crate::projection::{ApplyContext, ApplyError, Projection};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use std::collections::HashMap;
use teachin_domain::teaching::{TeacherStudents as TeacherStudentsAggregate, TeacherStudentsEvent};
use uuid::Uuid;

pub struct TeacherStudents;

#[async_trait]
impl Projection for TeacherStudents {
    fn name(&self) -> &'static str {
        "teacher_students"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["teacher_students"]
    }

    async fn apply(
        &self,
        batch: &[LoggedEvent],
        cx: &mut ApplyContext<'_>,
    ) -> Result<(), ApplyError> {
        // Final state per (teacher, student): Some(assigned_at) = assigned, None = removed.
        let mut rows: HashMap<(Uuid, Uuid), Option<DateTime<Utc>>> = HashMap::new();
        for (logged, event) in
            decode_all::<TeacherStudentsEvent>(batch, TeacherStudentsAggregate::TYPE)?
        {
            let teacher = logged.aggregate_uuid()?;
            match event {
                TeacherStudentsEvent::StudentAssigned { student } => {
                    rows.insert((teacher, student.0), Some(logged.recorded_at));
                }
                TeacherStudentsEvent::StudentUnassigned { student } => {
                    rows.insert((teacher, student.0), None);
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let (mut teachers, mut students, mut times) = (vec![], vec![], vec![]);
        let (mut gone_teachers, mut gone_students) = (vec![], vec![]);
        for ((teacher, student), assigned_at) in rows {
            match assigned_at {
                Some(at) => {
                    teachers.push(teacher);
                    students.push(student);
                    times.push(at);
                }
                None => {
                    gone_teachers.push(teacher);
                    gone_students.push(student);
                }
            }
        }
        if !gone_teachers.is_empty() {
            sqlx::query(
                "DELETE FROM teacher_students
                  WHERE (teacher_id, student_id) IN (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]))",
            )
            .bind(&gone_teachers)
            .bind(&gone_students)
            .execute(&mut *cx.conn)
            .await?;
        }
        if !teachers.is_empty() {
            sqlx::query(
                "INSERT INTO teacher_students (teacher_id, student_id, assigned_at)
                 SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[])
                 ON CONFLICT (teacher_id, student_id) DO UPDATE SET assigned_at = EXCLUDED.assigned_at",
            )
            .bind(&teachers)
            .bind(&students)
            .bind(&times)
            .execute(&mut *cx.conn)
            .await?;
        }
        Ok(())
    }
}
