//! The write side: where commands become events.
//!
//! - [`migrations`] creates the event store (postgres-es's tables, extended for the global log)
//!   and runs under sqlx's advisory lock, so replicas starting together don't race.
//! - [`bus`] runs commands against aggregates: queued per stream ([`stream_queues`]), a
//!   stream's queued commands are decided one after another and appended together — loading
//!   once (from a snapshot where there is one), retrying optimistic-concurrency conflicts,
//!   stamping each command's metadata, and answering a repeated command with its first receipt.
//! - [`event_repository`] loads and appends in one round trip each, and [`aggregate_cache`]
//!   lets a command on a hot stream skip the load.
//! - [`pool`] builds every pool, closing a connection returned inside a transaction.
//! - [`ports`] implements the domain's ports over Postgres and the event store.

pub mod aggregate_cache;
pub mod bus;
pub mod event_repository;
pub mod migrations;
pub mod pool;
pub mod ports;
pub mod stream_queues;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "workload")]
pub mod workload;

pub use bus::{
    AggregateReader, BusAggregate, BusSettings, BusStats, CommandBus, CommandContext, CommandError,
    CommandReceipt,
};
pub use ports::{command_bus, PortSecrets};
