//! `teachin bench`: measurements of this system on this machine, each beside a baseline
//! measured in the same run. Every run starts from a fresh database of its own on the
//! configured server and drops it at the end.

pub mod projections;
pub mod system;

use crate::config::Settings;
use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

/// A throw-away database for one bench run.
pub struct BenchDatabase {
    server: PgConnectOptions,
    name: String,
    pub pool: PgPool,
}

impl BenchDatabase {
    pub async fn create(settings: &Settings, connections: u32) -> anyhow::Result<Self> {
        let server = settings.database.clone().database("postgres");
        let name = format!("teachin_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect_with(&server)
            .await
            .context("connecting to the PostgreSQL server for the bench")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(server.clone().database(&name))
            .await?;
        teachin_commands::migrations::run(&pool).await?;
        Ok(Self { server, name, pool })
    }

    /// How to connect to the database, for a pool of another runtime.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.server.clone().database(&self.name)
    }

    /// The database as a URL (password included), for processes that connect on their own:
    /// the roles `bench system` starts.
    pub fn url(&self) -> String {
        self.url_keeping(|_| true)
    }

    /// The same for libpq tools (`pgbench`), which refuse sqlx's own URL parameters.
    pub fn libpq_url(&self) -> String {
        const LIBPQ: [&str; 6] = [
            "sslmode",
            "sslrootcert",
            "sslcert",
            "sslkey",
            "application_name",
            "options",
        ];
        self.url_keeping(|key| LIBPQ.contains(&key))
    }

    fn url_keeping(&self, keep: impl Fn(&str) -> bool) -> String {
        use sqlx::ConnectOptions;
        let mut url = self.server.clone().database(&self.name).to_url_lossy();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(key, _)| keep(key))
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
        url.to_string()
    }

    pub async fn drop_database(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = PgConnection::connect_with(&self.server).await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        Ok(())
    }
}

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}
