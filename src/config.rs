//! Configuration, read once at start-up (DESIGN.md decision 8).
//!
//! Sources, strongest first: the process environment, then an optional `KEY=VALUE` file
//! (`TEACHIN_CONFIG_FILE`), then the local defaults below. The names the cloud architecture
//! injects from Key Vault (`ConnectionStrings__Postgres`, ...) are accepted beside ours.
//! Every setting has a safe local default; outside `TEACHIN_ENV=local` the secrets have none.
//! A missing or malformed setting is one [`ConfigError`] naming it, and the binary exits 2.

use sqlx::postgres::PgConnectOptions;
use std::collections::HashMap;
use std::str::FromStr;

/// A setting that could not be used; its `Display` is the one line an operator sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("configuration error: {name}: {problem}")]
pub struct ConfigError {
    pub name: String,
    pub problem: String,
}

impl ConfigError {
    fn new(name: &str, problem: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            problem: problem.into(),
        }
    }
}

/// Where the process runs. `Local` is the laptop and CI; anything else is a cloud
/// environment (dev, prod, or a dynamic one), where secrets must be given explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Environment {
    Local,
    Cloud(String),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub environment: Environment,
    pub database: PgConnectOptions,
    pub database_max_connections: u32,
    pub manager_port: u16,
    pub accessor_port: u16,
    pub engine_port: u16,
    /// Keys the hashes of unique values (emails, class names).
    pub lookup_hash_key: Vec<u8>,
    pub log_filter: String,
    pub log_json: bool,
}

const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/teachin";
const LOCAL_LOOKUP_HASH_KEY: &str = "local-only-lookup-hash-key-change-me";

/// Finds a setting's raw value by name.
type Lookup<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// Reads settings from a lookup function (the environment, in production; a map, in tests).
pub struct SettingsSource<'a> {
    lookup: Lookup<'a>,
}

impl<'a> SettingsSource<'a> {
    pub fn new(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self {
            lookup: Box::new(lookup),
        }
    }

    /// The process environment, over the optional file named by `TEACHIN_CONFIG_FILE`.
    pub fn environment() -> Result<SettingsSource<'static>, ConfigError> {
        let file = match std::env::var("TEACHIN_CONFIG_FILE") {
            Ok(path) => dotenvy::from_filename_iter(&path)
                .map_err(|e| {
                    ConfigError::new("TEACHIN_CONFIG_FILE", format!("cannot read `{path}`: {e}"))
                })?
                .collect::<Result<HashMap<_, _>, _>>()
                .map_err(|e| {
                    ConfigError::new("TEACHIN_CONFIG_FILE", format!("`{path}` is malformed: {e}"))
                })?,
            Err(_) => HashMap::new(),
        };
        Ok(SettingsSource::new(move |name| {
            std::env::var(name).ok().or_else(|| file.get(name).cloned())
        }))
    }

    /// The first of `names` that is set (and not blank).
    fn first(&self, names: &[&str]) -> Option<(String, String)> {
        names.iter().find_map(|name| {
            (self.lookup)(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name.to_string(), v.trim().to_string()))
        })
    }

    fn parsed<T: FromStr>(&self, name: &str, default: T, what: &str) -> Result<T, ConfigError> {
        match self.first(&[name]) {
            None => Ok(default),
            Some((_, raw)) => raw
                .parse()
                .map_err(|_| ConfigError::new(name, format!("`{raw}` is not {what}"))),
        }
    }

    pub fn load(&self) -> Result<Settings, ConfigError> {
        let environment = match self.first(&["TEACHIN_ENV"]) {
            None => Environment::Local,
            Some((_, env)) if env.eq_ignore_ascii_case("local") => Environment::Local,
            Some((name, env)) => {
                if !env
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ConfigError::new(
                        &name,
                        format!("`{env}` is not an environment name (letters, digits, - and _)"),
                    ));
                }
                Environment::Cloud(env)
            }
        };
        let local = environment == Environment::Local;

        let database = match self.first(&["DATABASE_URL", "ConnectionStrings__Postgres"]) {
            Some((name, raw)) => parse_postgres(&raw).map_err(|p| ConfigError::new(&name, p))?,
            None if local => parse_postgres(LOCAL_DATABASE_URL).expect("the default parses"),
            None => {
                return Err(ConfigError::new(
                    "ConnectionStrings__Postgres",
                    "must be set outside a local environment (or DATABASE_URL)",
                ))
            }
        };

        let lookup_hash_key = match self.first(&["TEACHIN_LOOKUP_HASH_KEY"]) {
            Some((name, key)) if key.len() < 16 => {
                return Err(ConfigError::new(&name, "must be at least 16 characters"))
            }
            Some((_, key)) => key.into_bytes(),
            None if local => LOCAL_LOOKUP_HASH_KEY.as_bytes().to_vec(),
            None => {
                return Err(ConfigError::new(
                    "TEACHIN_LOOKUP_HASH_KEY",
                    "must be set outside a local environment",
                ))
            }
        };

        let database_max_connections: u32 =
            self.parsed("TEACHIN_DB_MAX_CONNECTIONS", 10, "a number of connections")?;
        if database_max_connections == 0 {
            return Err(ConfigError::new(
                "TEACHIN_DB_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }

        let log_json = match self.first(&["TEACHIN_LOG_FORMAT"]) {
            None => !local,
            Some((_, f)) if f.eq_ignore_ascii_case("json") => true,
            Some((_, f)) if f.eq_ignore_ascii_case("text") => false,
            Some((name, f)) => {
                return Err(ConfigError::new(
                    &name,
                    format!("`{f}` is not `text` or `json`"),
                ))
            }
        };

        Ok(Settings {
            environment,
            database,
            database_max_connections,
            manager_port: self.parsed("TEACHIN_MANAGER_PORT", 5001, "a port number")?,
            accessor_port: self.parsed("TEACHIN_ACCESSOR_PORT", 5002, "a port number")?,
            engine_port: self.parsed("TEACHIN_ENGINE_PORT", 5003, "a port number")?,
            lookup_hash_key,
            log_filter: self
                .first(&["TEACHIN_LOG", "RUST_LOG"])
                .map(|(_, v)| v)
                .unwrap_or_else(|| "info,sqlx=warn".into()),
            log_json,
        })
    }
}

/// Accepts a URL (`postgres://user:pass@host:5432/db?sslmode=require`) or the ADO.NET form
/// the .NET services and Key Vault use (`Host=h;Port=5432;Database=d;Username=u;Password=p`).
pub fn parse_postgres(raw: &str) -> Result<PgConnectOptions, String> {
    if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
        return PgConnectOptions::from_str(raw)
            .map_err(|e| format!("not a valid PostgreSQL URL: {e}"));
    }
    if !raw.contains('=') {
        return Err("expected a postgres:// URL or Host=...;Database=... pairs".into());
    }
    let mut options = PgConnectOptions::new();
    for pair in raw.split(';').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not a Key=Value pair"))?;
        let value = value.trim();
        options = match key.trim().to_ascii_lowercase().replace(' ', "").as_str() {
            "host" | "server" => options.host(value),
            "port" => options.port(
                value
                    .parse()
                    .map_err(|_| format!("port `{value}` is not a port number"))?,
            ),
            "database" => options.database(value),
            "username" | "userid" | "user" => options.username(value),
            "password" => options.password(value),
            "sslmode" => options.ssl_mode(
                value
                    .to_ascii_lowercase()
                    .parse()
                    .map_err(|_| format!("ssl mode `{value}` is unknown"))?,
            ),
            // Pooling knobs of Npgsql have no meaning here.
            "pooling"
            | "minimumpoolsize"
            | "maximumpoolsize"
            | "trustservercertificate"
            | "timeout"
            | "commandtimeout" => options,
            other => return Err(format!("unknown connection-string key `{other}`")),
        };
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let source = SettingsSource::new(|name| map.get(name).cloned());
        source.load()
    }

    #[test]
    fn local_defaults_need_nothing() {
        let s = load(&[]).unwrap();
        assert_eq!(s.environment, Environment::Local);
        assert_eq!(
            (s.manager_port, s.accessor_port, s.engine_port),
            (5001, 5002, 5003)
        );
        assert_eq!(s.database.get_database(), Some("teachin"));
        assert!(!s.log_json);
    }

    #[test]
    fn a_malformed_setting_is_named() {
        let e = load(&[("TEACHIN_MANAGER_PORT", "eighty")]).unwrap_err();
        assert_eq!(e.name, "TEACHIN_MANAGER_PORT");
        assert_eq!(
            e.to_string(),
            "configuration error: TEACHIN_MANAGER_PORT: `eighty` is not a port number"
        );
        let e = load(&[("TEACHIN_LOG_FORMAT", "xml")]).unwrap_err();
        assert_eq!(e.name, "TEACHIN_LOG_FORMAT");
    }

    #[test]
    fn cloud_environments_require_their_secrets() {
        let e = load(&[("TEACHIN_ENV", "prod")]).unwrap_err();
        assert_eq!(e.name, "ConnectionStrings__Postgres");
        let e = load(&[
            ("TEACHIN_ENV", "prod"),
            ("ConnectionStrings__Postgres", "postgres://u@db/prod"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "TEACHIN_LOOKUP_HASH_KEY");
        let s = load(&[
            ("TEACHIN_ENV", "prod"),
            ("ConnectionStrings__Postgres", "postgres://u@db/prod"),
            ("TEACHIN_LOOKUP_HASH_KEY", "0123456789abcdef0123"),
        ])
        .unwrap();
        assert_eq!(s.environment, Environment::Cloud("prod".into()));
        assert!(s.log_json);
    }

    #[test]
    fn accepts_the_ado_net_connection_string_from_key_vault() {
        let o = parse_postgres(
            "Host=pg.example;Port=6432;Database=dev;Username=teachin;Password=s3cret;SslMode=Require",
        )
        .unwrap();
        assert_eq!(o.get_host(), "pg.example");
        assert_eq!(o.get_port(), 6432);
        assert_eq!(o.get_database(), Some("dev"));
        assert_eq!(o.get_username(), "teachin");
        assert!(parse_postgres("Host=x;Colour=blue").is_err());
        assert!(parse_postgres("just words").is_err());
    }
}
