//! The read side. Everything here starts from [`log::EventLog`], the one reader of the global
//! event log: projections, the realtime feed, the outbox relay and the operator's
//! `teachin events` all consume the log through it, each with its own checkpoint.

pub mod analytics;
pub mod checkpoint;
pub mod daemon;
pub mod feed;
pub mod follower;
pub mod log;
pub mod projection;
pub mod queries;
pub mod read_models;
pub mod rebuild;
pub mod replay;
pub mod runner;
pub mod verify;

pub use log::{EventLog, LogPosition, LoggedEvent};
pub use projection::{ApplyContext, ApplyError, KeyRing, Projection};
pub use verify::{
    verify, Outcome, ProjectionVerdict, RowDifference, TableComparison, VerifyError, VerifyOptions,
};

/// The domain's upcasters, built once: every read of the log brings events to their
/// current version with them.
pub fn upcasters() -> &'static [Box<dyn cqrs_es::persist::EventUpcaster>] {
    use std::sync::OnceLock;
    static UPCASTERS: OnceLock<Vec<Box<dyn cqrs_es::persist::EventUpcaster>>> = OnceLock::new();
    UPCASTERS.get_or_init(teachin_domain::upcasting::upcasters)
}
