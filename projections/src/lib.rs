//! The read side. Everything here starts from [`log::EventLog`], the one reader of the global
//! event log: projections, the realtime feed, the outbox relay and the operator's
//! `teachin events` all consume the log through it, each with its own checkpoint.

pub mod log;

pub use log::{EventLog, LogPosition, LoggedEvent};
