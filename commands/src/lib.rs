//! The write side: where commands become events.
//!
//! - [`migrations`] creates the event store (postgres-es's tables, extended for the global log)
//!   and runs under sqlx's advisory lock, so replicas starting together don't race.
//! - [`bus`] runs a command against an aggregate through cqrs-es over postgres-es: load (from
//!   a snapshot where there is one), decide, append — retrying optimistic-concurrency
//!   conflicts, stamping metadata, and answering a repeated command with its first receipt.
//! - [`event_repository`] is postgres-es's repository with loading and appending made one
//!   round trip each, and [`aggregate_cache`] lets a command on a hot stream skip the load.
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
