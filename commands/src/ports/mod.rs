//! The domain's ports, implemented over Postgres and the event store.

mod claims;
mod directory;
mod vault;

pub use claims::PostgresClaims;
pub use directory::{EventStorePracticeRecords, EventStoreUserDirectory};
pub use vault::{PostgresVault, SEALING_KEY_TTL};

use std::sync::Arc;
use teachin_domain::services::DomainServices;

use crate::bus::{AggregateReader, BusSettings, CommandBus};

/// Secrets the ports need. Both have local defaults; production injects them.
#[derive(Clone)]
pub struct PortSecrets {
    /// Keys the hashes in `unique_claims`, so the table holds no readable emails.
    pub claims_hash_key: Vec<u8>,
}

/// Wires the production ports into a command bus.
pub fn command_bus(pool: sqlx::PgPool, secrets: PortSecrets, settings: BusSettings) -> CommandBus {
    let reader = AggregateReader::new(pool.clone(), settings);
    let services = DomainServices {
        vault: Arc::new(PostgresVault::new(pool.clone())),
        users: Arc::new(EventStoreUserDirectory::new(reader.clone())),
        claims: Arc::new(PostgresClaims::new(pool.clone(), secrets.claims_hash_key)),
        practice: Arc::new(EventStorePracticeRecords::new(reader)),
    };
    CommandBus::new(pool, services, settings)
}
