//! Test support for every crate: a fresh, migrated database per test (zero2prod style), so
//! tests run in parallel against the real Postgres and never share state.
//!
//! The server comes from `TEACHIN_TEST_DATABASE_URL` (default: the local trust-auth server).
//! Each database is dropped when its guard is dropped.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use uuid::Uuid;

pub const DEFAULT_SERVER_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";

pub fn server_url() -> String {
    std::env::var("TEACHIN_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER_URL.into())
}

/// A database that exists for one test.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// A command bus on this database, with the ports over it and a fixed test key for
    /// uniqueness claims.
    pub fn bus(&self, settings: crate::BusSettings) -> crate::CommandBus {
        crate::command_bus(
            self.pool.clone(),
            crate::PortSecrets {
                claims_hash_key: b"test-claims-hash-key".to_vec(),
            },
            settings,
        )
    }

    /// Creates and migrates a fresh database.
    pub async fn new() -> Self {
        let db = Self::empty().await;
        crate::migrations::run(&db.pool)
            .await
            .expect("migrations apply to a fresh database");
        db
    }

    /// Creates a fresh database with no tables (for migration tests).
    pub async fn empty() -> Self {
        let server = PgConnectOptions::from_str(&server_url()).expect("valid test server URL");
        let name = format!("teachin_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&server)
            .await
            .expect("the test PostgreSQL server is reachable (see README)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("can create a test database");
        admin.close().await.ok();
        let options = server.database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = crate::pool::options()
            .max_connections(20)
            .connect_with(options)
            .await
            .expect("can connect to the test database");
        Self { name, url, pool }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context guarantees; use a short-lived runtime on a thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async move {
                let server = PgConnectOptions::from_str(&server_url()).expect("valid URL");
                if let Ok(mut admin) = PgConnection::connect_with(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
