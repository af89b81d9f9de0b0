//! Teachin's domain model: what a language-learning platform *is*, with no I/O.
//!
//! Every aggregate here is a cqrs-es [`cqrs_es::Aggregate`]: commands come in, events go out,
//! and state is the fold of the events. What an aggregate cannot know by itself — another
//! user's role, whether a name is already taken, the key that seals a person's data — it asks
//! through the ports in [`services`], which the `commands` crate implements over Postgres and
//! the tests implement in memory.

pub mod actor;
pub mod error;
pub mod ids;
pub mod personal_data;
pub mod services;
pub mod text;
pub mod vocabulary;

pub mod achievements;
pub mod classroom;
pub mod game_config;
pub mod generation;
pub mod outgoing_email;
pub mod practice;
pub mod teaching;
pub mod tutor_session;
pub mod upcasting;
pub mod user;
pub mod word_cards;
