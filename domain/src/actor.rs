//! Who is acting. Roles drive the few authorization rules that are *domain* rules (only an
//! admin changes a role, only an admin creates a teacher); the API's authorization module
//! decides everything else before a command is issued.

use crate::ids::UserId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "graphql", derive(async_graphql::Enum))]
pub enum Role {
    #[default]
    Student,
    Teacher,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "Student",
            Role::Teacher => "Teacher",
            Role::Admin => "Admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "student" => Ok(Role::Student),
            "teacher" => Ok(Role::Teacher),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}` (expected Student, Teacher or Admin)"
            )),
        }
    }
}

/// The issuer of a command, as recorded in every event's metadata (`issued_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A signed-in person.
    User { id: UserId, role: Role },
    /// Someone who is not signed in (self sign-up).
    Anonymous,
    /// The platform itself: an engine callback, a cron job, an operator command.
    System,
}

impl Actor {
    pub fn user(id: UserId, role: Role) -> Self {
        Actor::User { id, role }
    }

    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Actor::User {
                role: Role::Admin,
                ..
            } | Actor::System
        )
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Actor::User { id, .. } => Some(*id),
            _ => None,
        }
    }
}

impl fmt::Display for Actor {
    /// The form stored in event metadata: `user:<id>:<role>`, `anonymous` or `system`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User { id, role } => write!(f, "user:{id}:{role}"),
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::System => f.write_str("system"),
        }
    }
}
