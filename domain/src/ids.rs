//! Typed identifiers, so a `ClassroomId` can never be passed where a `UserId` belongs.
//!
//! Each is a UUID on the wire and in the log; the aggregate id stored by cqrs-es is its
//! hyphenated string form (`Display`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self(Uuid::nil())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

id_type!(
    /// A person: student, teacher or admin.
    UserId
);
id_type!(
    /// A class that teachers and students belong to.
    ClassroomId
);
id_type!(
    /// A tutor chat thread (the original's `threadId`).
    TutorSessionId
);
id_type!(
    /// One generated exercise (a sentence to order, type or speak).
    ExerciseId
);
id_type!(
    /// One submitted answer to an exercise.
    AttemptId
);
id_type!(
    /// One word card in a student's deck.
    WordCardId
);
id_type!(
    /// An AI request (reply, generation) that the engine answers asynchronously.
    RequestId
);
