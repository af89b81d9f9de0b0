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
    /// Memory for the command path's cache of hot aggregates, in MiB (0: off).
    pub aggregate_cache_mib: usize,
    pub manager_port: u16,
    pub accessor_port: u16,
    pub engine_port: u16,
    /// Keys the hashes of unique values (emails, class names).
    pub lookup_hash_key: Vec<u8>,
    /// Redis for the realtime feed (and, later, sessions and presence): a `redis://` URL
    /// with this environment's database index.
    pub redis_url: String,
    /// Separates this environment's keys and channels on a shared Redis.
    pub namespace: String,
    pub log_filter: String,
    pub log_json: bool,
    /// Signs access tokens (HS256); at least 32 bytes.
    pub jwt_secret: Vec<u8>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Keys the HMACs under which refresh tokens are stored.
    pub refresh_token_hash_key: Vec<u8>,
    /// Browser origins allowed to call the API (the portals).
    pub cors_origins: Vec<String>,
    /// Proxies in front of the manager that append to `X-Forwarded-For` (the ingress: one);
    /// the client address is the entry the outermost wrote.
    pub trust_forwarded_for: teachin_api::server::TrustedProxies,
    /// `Azure__SignalR__ConnectionString`: browsers are redirected to Azure SignalR and
    /// pushes go through its REST API; `None` serves the hub from the manager itself.
    pub azure_signalr: Option<teachin_api::hub::AzureSignalR>,
    /// Failed sign-ins allowed per client address (successes never count).
    pub login_budget: teachin_api::auth::rate_limit::Budget,
    /// How an account is slowed down after failed sign-ins, from any address.
    pub login_backoff: teachin_api::auth::rate_limit::Backoff,
    /// Sign-ups allowed per client address.
    pub signup_budget: teachin_api::auth::rate_limit::Budget,
    /// Refreshes allowed per client address.
    pub refresh_budget: teachin_api::auth::rate_limit::Budget,
    /// `SameSite` of the session cookies: `Strict` unless the portals are on another site.
    pub cookie_same_site: teachin_api::auth::sessions::SameSite,
    /// The message bus: `TEACHIN_BUS` (`postgres`, the default, or `servicebus`) and its
    /// settings.
    pub bus: teachin_workers::BusConfig,
    /// Avatars: Azure Blob, a local directory, or `None` (a cloud environment with neither).
    pub avatars: Option<teachin_workers::media::AvatarSettings>,
    /// Azure Speech (`Speech__Key`, `Speech__Region`); `None` without a key.
    pub speech: Option<teachin_workers::speech::SpeechSettings>,
    /// The AI provider the engine writes with (`AZURE_OPENAI_*`, `OPENAI_*`; offline without).
    pub ai: teachin_workers::engine::settings::AiSettings,
    /// The tutor's web-search tool (`TAVILY_API_KEY`; off without).
    pub web_search: teachin_workers::engine::settings::WebSearchSettings,
    /// SMTP for `SendEmail` jobs (`BREVO_*`); `None` without `BREVO_SMTP_HOST`, and then the
    /// accessor does not consume `accessor-queue`.
    pub email: Option<teachin_workers::email::EmailSettings>,
    /// Daily quotas: model requests and tokens per role (`TEACHIN_MODEL_QUOTA_STUDENT`,
    /// `…_TEACHER`, `…_ADMIN` as `REQUESTS/TOKENS`), emails per sender
    /// (`TEACHIN_EMAIL_DAILY_CAP`).
    pub quotas: teachin_api::quota::QuotaLimits,
}

const LOCAL_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/teachin";
const LOCAL_LOOKUP_HASH_KEY: &str = "local-only-lookup-hash-key-change-me";
const LOCAL_JWT_SECRET: &str = "local-only-jwt-secret-change-me-0123456789";
const LOCAL_REFRESH_HASH_KEY: &str = "local-only-refresh-token-hash-key-change-me";
const LOCAL_PORTALS: &str = "http://localhost:3000,http://localhost:5173";
const LOCAL_MEDIA_SIGNING_KEY: &str = "local-only-media-signing-key-change-me";

/// Variables a platform sets in every process it runs (Kubernetes, Azure Container Apps, App
/// Service): with one present, an unset `TEACHIN_ENV` is a mistake, not a laptop.
const DEPLOYMENT_MARKERS: [&str; 3] = [
    "KUBERNETES_SERVICE_HOST",
    "CONTAINER_APP_NAME",
    "WEBSITE_SITE_NAME",
];

/// Refuses a local default given explicitly outside a local environment: it is published in
/// this repository, so anything it protects could be forged.
fn not_a_local_default(
    name: &str,
    value: &str,
    local_default: &str,
    local: bool,
) -> Result<(), ConfigError> {
    if !local && value == local_default {
        return Err(ConfigError::new(
            name,
            "is the published local default; set a secret of your own outside a local environment",
        ));
    }
    Ok(())
}

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
            None => match DEPLOYMENT_MARKERS
                .iter()
                .find(|m| self.first(&[**m]).is_some())
            {
                // Local mode means well-known secrets: a deployment must ask for it by name.
                Some(marker) => {
                    return Err(ConfigError::new(
                        "TEACHIN_ENV",
                        format!(
                            "is unset, but {marker} says this is a deployment, not a \
                             developer's machine; set TEACHIN_ENV (e.g. `production`)"
                        ),
                    ))
                }
                None => Environment::Local,
            },
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
            Some((name, key)) => {
                not_a_local_default(&name, &key, LOCAL_LOOKUP_HASH_KEY, local)?;
                key.into_bytes()
            }
            None if local => LOCAL_LOOKUP_HASH_KEY.as_bytes().to_vec(),
            None => {
                return Err(ConfigError::new(
                    "TEACHIN_LOOKUP_HASH_KEY",
                    "must be set outside a local environment",
                ))
            }
        };

        let jwt_secret =
            self.secret(&["JWT_SECRET", "Jwt__Secret"], 32, LOCAL_JWT_SECRET, local)?;
        let refresh_token_hash_key = self.secret(
            &["JWT_REFRESH_TOKEN_HASH_KEY", "Jwt__RefreshTokenHashKey"],
            16,
            LOCAL_REFRESH_HASH_KEY,
            local,
        )?;
        let cors_origins = self
            .first(&["TEACHIN_CORS_ORIGINS"])
            .map(|(_, v)| v)
            .unwrap_or_else(|| {
                if local {
                    LOCAL_PORTALS.into()
                } else {
                    String::new()
                }
            })
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = cors_origins
            .iter()
            .find(|o| !(o.starts_with("https://") || o.starts_with("http://")))
        {
            return Err(ConfigError::new(
                "TEACHIN_CORS_ORIGINS",
                format!("`{bad}` is not an origin (scheme://host[:port])"),
            ));
        }
        let login_budget = self.parsed(
            "TEACHIN_LOGIN_RATE_LIMIT",
            teachin_api::graphql::DEFAULT_LOGIN_BUDGET,
            "failed sign-ins per window, e.g. 100/10m",
        )?;
        let login_backoff = self.parsed(
            "TEACHIN_LOGIN_BACKOFF",
            teachin_api::auth::rate_limit::Backoff::default(),
            "failures/first..cap, e.g. 5/1s..15m",
        )?;
        let signup_budget = self.parsed(
            "TEACHIN_SIGNUP_RATE_LIMIT",
            teachin_api::graphql::DEFAULT_SIGNUP_BUDGET,
            "sign-ups per window, e.g. 60/1h",
        )?;
        let cookie_same_site = match self.first(&["TEACHIN_COOKIE_SAME_SITE"]) {
            None => teachin_api::auth::sessions::SameSite::Strict,
            Some((name, raw)) => teachin_api::auth::sessions::same_site(&raw).ok_or_else(|| {
                ConfigError::new(
                    &name,
                    format!("`{raw}` is not strict, lax or none (portals on another site)"),
                )
            })?,
        };
        let refresh_budget = self.parsed(
            "TEACHIN_REFRESH_RATE_LIMIT",
            teachin_api::auth::rate_limit::Budget::per_minute(5),
            "attempts per window, e.g. 5/60s",
        )?;
        let azure_signalr = match self.first(&["Azure__SignalR__ConnectionString"]) {
            Some((name, raw)) => Some(
                teachin_api::hub::AzureSignalR::from_connection_string(&raw)
                    .map_err(|e| ConfigError::new(&name, e.to_string()))?,
            ),
            None => None,
        };
        let trust_forwarded_for = self.parsed(
            "TEACHIN_TRUST_FORWARDED_FOR",
            teachin_api::server::TrustedProxies {
                hops: usize::from(!local),
            },
            "true, false or a number of proxies",
        )?;

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

        let redis_db: u8 = self.parsed("TEACHIN_REDIS_DB", 0, "a Redis database index (0-15)")?;
        if redis_db > 15 {
            return Err(ConfigError::new(
                "TEACHIN_REDIS_DB",
                format!("{redis_db} is not a Redis database index (0-15)"),
            ));
        }
        let redis_url = match self.first(&["REDIS_URL", "ConnectionStrings__Redis"]) {
            Some((name, raw)) => {
                parse_redis(&raw, redis_db).map_err(|p| ConfigError::new(&name, p))?
            }
            None => format!("redis://127.0.0.1:6379/{redis_db}"),
        };
        let namespace = match (self.first(&["TEACHIN_NAMESPACE"]), &environment) {
            (Some((name, ns)), _) => {
                if ns.is_empty()
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ConfigError::new(&name, "letters, digits, - and _ only"));
                }
                ns
            }
            (None, Environment::Local) => "local".to_string(),
            (None, Environment::Cloud(name)) => name.clone(),
        };

        Ok(Settings {
            redis_url,
            namespace,
            environment,
            database,
            database_max_connections,
            aggregate_cache_mib: self.parsed(
                "TEACHIN_AGGREGATE_CACHE_MIB",
                teachin_commands::aggregate_cache::DEFAULT_CAPACITY_MIB,
                "a size in MiB",
            )?,
            manager_port: self.parsed("TEACHIN_MANAGER_PORT", 5001, "a port number")?,
            accessor_port: self.parsed("TEACHIN_ACCESSOR_PORT", 5002, "a port number")?,
            engine_port: self.parsed("TEACHIN_ENGINE_PORT", 5003, "a port number")?,
            lookup_hash_key,
            log_filter: self
                .first(&["TEACHIN_LOG", "RUST_LOG"])
                .map(|(_, v)| v)
                .unwrap_or_else(|| "info,sqlx=warn".into()),
            log_json,
            jwt_secret,
            jwt_issuer: self
                .first(&["JWT_ISSUER", "Jwt__Issuer"])
                .map(|(_, v)| v)
                .unwrap_or_else(|| "teachin".into()),
            jwt_audience: self
                .first(&["JWT_AUDIENCE", "Jwt__Audience"])
                .map(|(_, v)| v)
                .unwrap_or_else(|| "teachin-portals".into()),
            refresh_token_hash_key,
            cors_origins,
            trust_forwarded_for,
            login_budget,
            login_backoff,
            signup_budget,
            refresh_budget,
            cookie_same_site,
            azure_signalr,
            ai: teachin_workers::engine::settings::AiSettings::from_lookup(|name| {
                self.first(&[name]).map(|(_, v)| v)
            })
            .map_err(|e| ConfigError::new(e.name, e.problem))?,
            web_search: teachin_workers::engine::settings::WebSearchSettings::from_lookup(|name| {
                self.first(&[name]).map(|(_, v)| v)
            })
            .map_err(|e| ConfigError::new(e.name, e.problem))?,
            bus: self.bus()?,
            avatars: self.avatars(local)?,
            speech: self.speech()?,
            email: self.email()?,
            quotas: self.quotas()?,
        })
    }

    /// A secret of at least `min` bytes: required outside a local environment, where a
    /// well-known value would let anyone forge what it protects.
    fn secret(
        &self,
        names: &[&str],
        min: usize,
        local_default: &str,
        local: bool,
    ) -> Result<Vec<u8>, ConfigError> {
        match self.first(names) {
            Some((name, key)) if key.len() < min => Err(ConfigError::new(
                &name,
                format!("must be at least {min} characters"),
            )),
            Some((name, key)) => {
                not_a_local_default(&name, &key, local_default, local)?;
                Ok(key.into_bytes())
            }
            None if local => Ok(local_default.as_bytes().to_vec()),
            None => Err(ConfigError::new(
                names[0],
                "must be set outside a local environment",
            )),
        }
    }

    /// `TEACHIN_BUS=postgres` (default): `TEACHIN_BUS_LOCK_SECONDS` (60) and
    /// `TEACHIN_BUS_MAX_DELIVERY_COUNT` (10). `TEACHIN_BUS=servicebus`:
    /// `ServiceBus__ConnectionString` (the namespace's; lock duration and maximum delivery
    /// count are then the queues' own, set in Terraform), and `ServiceBus__StatsConnectionString`
    /// (a policy with Manage, for queue statistics; else the first one reads them).
    fn bus(&self) -> Result<teachin_workers::BusConfig, ConfigError> {
        use teachin_workers::bus::{postgres::PostgresBusConfig, servicebus::ServiceBusConfig};
        let backend = self
            .first(&["TEACHIN_BUS"])
            .map(|(_, v)| v.to_ascii_lowercase());
        match backend.as_deref() {
            None | Some("postgres") => {
                let lock_seconds: u64 =
                    self.parsed("TEACHIN_BUS_LOCK_SECONDS", 60, "a number of seconds")?;
                let max_delivery_count: u32 = self.parsed(
                    "TEACHIN_BUS_MAX_DELIVERY_COUNT",
                    10,
                    "a number of deliveries",
                )?;
                if lock_seconds == 0 {
                    return Err(ConfigError::new(
                        "TEACHIN_BUS_LOCK_SECONDS",
                        "must be at least 1",
                    ));
                }
                if max_delivery_count == 0 {
                    return Err(ConfigError::new(
                        "TEACHIN_BUS_MAX_DELIVERY_COUNT",
                        "must be at least 1",
                    ));
                }
                Ok(teachin_workers::BusConfig::Postgres(PostgresBusConfig {
                    lock_duration: std::time::Duration::from_secs(lock_seconds),
                    max_delivery_count,
                    ..PostgresBusConfig::default()
                }))
            }
            Some("servicebus") => match self.first(&["ServiceBus__ConnectionString"]) {
                Some((name, raw)) => {
                    let config = ServiceBusConfig::from_connection_string(&raw)
                        .map_err(|p| ConfigError::new(&name, p))?;
                    // Statistics need Manage: a policy of their own when given.
                    let config = match self.first(&["ServiceBus__StatsConnectionString"]) {
                        Some((name, raw)) => config
                            .with_stats_connection_string(&raw)
                            .map_err(|p| ConfigError::new(&name, p))?,
                        None => config,
                    };
                    Ok(teachin_workers::BusConfig::ServiceBus(config))
                }
                None => Err(ConfigError::new(
                    "ServiceBus__ConnectionString",
                    "must be set when TEACHIN_BUS=servicebus",
                )),
            },
            Some(other) => Err(ConfigError::new(
                "TEACHIN_BUS",
                format!("`{other}` is not `postgres` or `servicebus`"),
            )),
        }
    }
}

impl SettingsSource<'_> {
    /// The daily quotas (see `Settings::quotas`); every one defaults to
    /// `QuotaLimits::default()`.
    fn quotas(&self) -> Result<teachin_api::quota::QuotaLimits, ConfigError> {
        let defaults = teachin_api::quota::QuotaLimits::default();
        let what = "requests/tokens a day, e.g. 200/200000";
        let emails_per_day: u64 = self.parsed(
            "TEACHIN_EMAIL_DAILY_CAP",
            defaults.emails_per_day,
            "a number of emails",
        )?;
        if emails_per_day == 0 {
            return Err(ConfigError::new(
                "TEACHIN_EMAIL_DAILY_CAP",
                "must be at least 1",
            ));
        }
        Ok(teachin_api::quota::QuotaLimits {
            student: self.parsed("TEACHIN_MODEL_QUOTA_STUDENT", defaults.student, what)?,
            teacher: self.parsed("TEACHIN_MODEL_QUOTA_TEACHER", defaults.teacher, what)?,
            admin: self.parsed("TEACHIN_MODEL_QUOTA_ADMIN", defaults.admin, what)?,
            emails_per_day,
        })
    }

    /// Avatars. `ConnectionStrings__AvatarsStorage` (the storage account's connection string)
    /// selects Azure Blob, container `Avatars__Container` (`avatars`). Otherwise a directory,
    /// `TEACHIN_AVATARS_DIR` (`./data/avatars`), served by the manager at
    /// `TEACHIN_MEDIA_BASE_URL` (`http://localhost:{TEACHIN_MANAGER_PORT}`) with URLs signed by
    /// `TEACHIN_MEDIA_SIGNING_KEY` — which a cloud environment must set to use a directory;
    /// without it and without Blob, avatars are off there (`None`). Either way at most
    /// `TEACHIN_AVATARS_MAX_BYTES` (2 MiB).
    fn avatars(
        &self,
        local: bool,
    ) -> Result<Option<teachin_workers::media::AvatarSettings>, ConfigError> {
        use teachin_workers::media::{
            AvatarBackend, AvatarSettings, AzureBlobSettings, LocalAvatarSettings,
            DEFAULT_MAX_BYTES,
        };
        let max_bytes: u64 = self.parsed(
            "TEACHIN_AVATARS_MAX_BYTES",
            DEFAULT_MAX_BYTES,
            "a number of bytes",
        )?;
        if max_bytes == 0 {
            return Err(ConfigError::new(
                "TEACHIN_AVATARS_MAX_BYTES",
                "must be at least 1",
            ));
        }
        if let Some((name, raw)) = self.first(&["ConnectionStrings__AvatarsStorage"]) {
            let container = self
                .first(&["Avatars__Container"])
                .map(|(_, v)| v)
                .unwrap_or_else(|| "avatars".into());
            let azure = AzureBlobSettings::from_connection_string(&raw, &container)
                .map_err(|p| ConfigError::new(&name, p))?;
            return Ok(Some(AvatarSettings {
                backend: AvatarBackend::Azure(azure),
                max_bytes,
            }));
        }
        let signing_key = match self.first(&["TEACHIN_MEDIA_SIGNING_KEY"]) {
            Some((name, key)) if key.len() < 16 => {
                return Err(ConfigError::new(&name, "must be at least 16 characters"))
            }
            Some((name, key)) => {
                not_a_local_default(&name, &key, LOCAL_MEDIA_SIGNING_KEY, local)?;
                key.into_bytes()
            }
            None if local => LOCAL_MEDIA_SIGNING_KEY.as_bytes().to_vec(),
            None => return Ok(None),
        };
        let manager_port: u16 = self.parsed("TEACHIN_MANAGER_PORT", 5001, "a port number")?;
        let base_url = self
            .first(&["TEACHIN_MEDIA_BASE_URL"])
            .map(|(_, v)| v.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://localhost:{manager_port}"));
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "TEACHIN_MEDIA_BASE_URL",
                format!("`{base_url}` is not an http(s) URL"),
            ));
        }
        let directory = self
            .first(&["TEACHIN_AVATARS_DIR"])
            .map(|(_, v)| v)
            .unwrap_or_else(|| "./data/avatars".into());
        Ok(Some(AvatarSettings {
            backend: AvatarBackend::Local(LocalAvatarSettings {
                directory: directory.into(),
                base_url,
                signing_key,
            }),
            max_bytes,
        }))
    }

    /// Azure Speech: `Speech__Key` turns it on and then needs `Speech__Region`;
    /// `TEACHIN_SPEECH_ENDPOINT` replaces the token service's URL (tests, sovereign clouds).
    fn speech(&self) -> Result<Option<teachin_workers::speech::SpeechSettings>, ConfigError> {
        let Some((_, key)) = self.first(&["Speech__Key"]) else {
            return Ok(None);
        };
        let Some((name, region)) = self.first(&["Speech__Region"]) else {
            return Err(ConfigError::new(
                "Speech__Region",
                "must be set with Speech__Key (e.g. westeurope)",
            ));
        };
        if !region.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(ConfigError::new(
                &name,
                format!("`{region}` is not an Azure region name"),
            ));
        }
        Ok(Some(teachin_workers::speech::SpeechSettings {
            key,
            region,
            endpoint: self.first(&["TEACHIN_SPEECH_ENDPOINT"]).map(|(_, v)| v),
        }))
    }

    /// SMTP through Brevo: `BREVO_SMTP_HOST` turns it on; `BREVO_SMTP_PORT` (587),
    /// `BREVO_SMTP_TLS` (`starttls`, `tls` or `none`; by default TLS on 465, STARTTLS
    /// otherwise), `BREVO_SMTP_USER` with `BREVO_SMTP_PASSWORD`, `BREVO_SENDER_EMAIL`
    /// (required), `BREVO_SENDER_NAME` (`Teachin`).
    fn email(&self) -> Result<Option<teachin_workers::email::EmailSettings>, ConfigError> {
        use teachin_workers::email::{EmailSettings, SmtpSecurity};
        let Some((_, host)) = self.first(&["BREVO_SMTP_HOST"]) else {
            return Ok(None);
        };
        let port: u16 = self.parsed("BREVO_SMTP_PORT", 587, "a port number")?;
        let security = match self.first(&["BREVO_SMTP_TLS"]) {
            None => SmtpSecurity::for_port(port),
            Some((name, raw)) => SmtpSecurity::parse(&raw).ok_or_else(|| {
                ConfigError::new(&name, format!("`{raw}` is not `starttls`, `tls` or `none`"))
            })?,
        };
        let username = self.first(&["BREVO_SMTP_USER"]).map(|(_, v)| v);
        let password = self.first(&["BREVO_SMTP_PASSWORD"]).map(|(_, v)| v);
        if username.is_some() != password.is_some() {
            let missing = if username.is_none() {
                "BREVO_SMTP_USER"
            } else {
                "BREVO_SMTP_PASSWORD"
            };
            return Err(ConfigError::new(
                missing,
                "BREVO_SMTP_USER and BREVO_SMTP_PASSWORD go together",
            ));
        }
        let Some((_, sender_email)) = self.first(&["BREVO_SENDER_EMAIL"]) else {
            return Err(ConfigError::new(
                "BREVO_SENDER_EMAIL",
                "must be set with BREVO_SMTP_HOST",
            ));
        };
        if !sender_email.contains('@') {
            return Err(ConfigError::new(
                "BREVO_SENDER_EMAIL",
                format!("`{sender_email}` is not an email address"),
            ));
        }
        Ok(Some(EmailSettings {
            host,
            port,
            security,
            username,
            password,
            sender_email,
            sender_name: self
                .first(&["BREVO_SENDER_NAME"])
                .map(|(_, v)| v)
                .unwrap_or_else(|| "Teachin".into()),
        }))
    }
}

/// Accepts a URL (`postgres://user:pass@host:5432/db?sslmode=require`) or the ADO.NET form
/// the .NET services and Key Vault use (`Host=h;Port=5432;Database=d;Username=u;Password=p`).
pub fn parse_postgres(raw: &str) -> Result<PgConnectOptions, String> {
    let options = parse_postgres_as_given(raw)?;
    Ok(without_tls_on_loopback(raw, options))
}

/// When neither the settings nor `PGSSLMODE` choose an SSL mode and the server is on this
/// machine, no TLS: bytes that never leave the host gain nothing from encryption, and on
/// loopback the handshake and record layer cost the server about 7 % of its CPU
/// (`bench/profile.md`). sqlx's default, `prefer`, negotiates TLS whenever the server offers
/// it; a remote server keeps that default, and deployments name `require` (the connection
/// string Terraform writes to Key Vault does).
fn without_tls_on_loopback(raw: &str, options: PgConnectOptions) -> PgConnectOptions {
    let chosen =
        raw.to_ascii_lowercase().contains("sslmode") || std::env::var_os("PGSSLMODE").is_some();
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.starts_with('/')
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if chosen || !loopback {
        return options;
    }
    options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
}

fn parse_postgres_as_given(raw: &str) -> Result<PgConnectOptions, String> {
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

/// Accepts a `redis://` / `rediss://` URL (used as given), or the StackExchange.Redis form the
/// .NET services and Key Vault use (`host:port,password=...,ssl=True,abortConnect=False`),
/// turned into a URL on database `db`.
pub fn parse_redis(raw: &str, db: u8) -> Result<String, String> {
    if raw.starts_with("redis://") || raw.starts_with("rediss://") {
        return Ok(raw.to_string());
    }
    let mut parts = raw.split(',').map(str::trim).filter(|p| !p.is_empty());
    let endpoint = parts
        .next()
        .filter(|e| !e.contains('='))
        .ok_or("expected a redis:// URL or host:port,password=... settings")?;
    let (mut password, mut tls) = (None, false);
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not a key=value setting"))?;
        match key.trim().to_ascii_lowercase().as_str() {
            "password" => password = Some(value.to_string()),
            "ssl" => tls = value.eq_ignore_ascii_case("true"),
            // Client-side knobs of StackExchange.Redis with no meaning here.
            _ => {}
        }
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let auth = password
        .map(|p| format!(":{}@", percent_encode(&p)))
        .unwrap_or_default();
    Ok(format!("{scheme}://{auth}{endpoint}/{db}"))
}

/// Escapes what a URL's userinfo cannot hold as is.
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
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
    fn sign_in_and_sign_up_limits_and_the_cookie_policy() {
        use teachin_api::auth::rate_limit::{Backoff, Budget};
        use teachin_api::auth::sessions::SameSite;
        let s = load(&[]).unwrap();
        assert_eq!(s.login_budget, teachin_api::graphql::DEFAULT_LOGIN_BUDGET);
        assert_eq!(s.login_backoff, Backoff::default());
        assert_eq!(s.signup_budget, teachin_api::graphql::DEFAULT_SIGNUP_BUDGET);
        assert_eq!(s.cookie_same_site, SameSite::Strict, "same site");
        assert_eq!(s.trust_forwarded_for.hops, 0, "no proxy on a laptop");
        let s = load(&[
            ("TEACHIN_LOGIN_RATE_LIMIT", "30/5m"),
            ("TEACHIN_LOGIN_BACKOFF", "3/2s..1h"),
            ("TEACHIN_SIGNUP_RATE_LIMIT", "20/1h"),
            ("TEACHIN_COOKIE_SAME_SITE", "None"),
            ("TEACHIN_TRUST_FORWARDED_FOR", "2"),
        ])
        .unwrap();
        assert_eq!(s.login_budget, "30/5m".parse::<Budget>().unwrap());
        assert_eq!(s.login_backoff, "3/2s..1h".parse::<Backoff>().unwrap());
        assert_eq!(s.signup_budget.max, 20);
        assert_eq!(s.cookie_same_site, SameSite::None);
        assert_eq!(s.trust_forwarded_for.hops, 2);
        assert_eq!(
            load(&[("TEACHIN_TRUST_FORWARDED_FOR", "true")])
                .unwrap()
                .trust_forwarded_for
                .hops,
            1
        );
        for (name, bad) in [
            ("TEACHIN_LOGIN_BACKOFF", "5"),
            ("TEACHIN_SIGNUP_RATE_LIMIT", "0/1h"),
            ("TEACHIN_COOKIE_SAME_SITE", "sometimes"),
            ("TEACHIN_TRUST_FORWARDED_FOR", "yes"),
        ] {
            assert_eq!(load(&[(name, bad)]).unwrap_err().name, name);
        }
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
        let e = load(&[
            ("TEACHIN_ENV", "prod"),
            ("ConnectionStrings__Postgres", "postgres://u@db/prod"),
            ("TEACHIN_LOOKUP_HASH_KEY", "0123456789abcdef0123"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "JWT_SECRET");
        let e = load(&[
            ("TEACHIN_ENV", "prod"),
            ("ConnectionStrings__Postgres", "postgres://u@db/prod"),
            ("TEACHIN_LOOKUP_HASH_KEY", "0123456789abcdef0123"),
            ("JWT_SECRET", "too short"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "JWT_SECRET");
        let s = load(&[
            ("TEACHIN_ENV", "prod"),
            ("ConnectionStrings__Postgres", "postgres://u@db/prod"),
            ("TEACHIN_LOOKUP_HASH_KEY", "0123456789abcdef0123"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("JWT_REFRESH_TOKEN_HASH_KEY", "0123456789abcdef"),
        ])
        .unwrap();
        assert_eq!(s.trust_forwarded_for.hops, 1, "behind the ingress");
        assert!(s.cors_origins.is_empty());
        assert_eq!(s.environment, Environment::Cloud("prod".into()));
        assert!(s.log_json);
    }

    /// A cloud environment's settings, complete and valid, to vary one at a time.
    const PRODUCTION: [(&str, &str); 5] = [
        ("TEACHIN_ENV", "production"),
        ("ConnectionStrings__Postgres", "postgres://u@db/prod"),
        ("TEACHIN_LOOKUP_HASH_KEY", "0123456789abcdef0123"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ("JWT_REFRESH_TOKEN_HASH_KEY", "0123456789abcdef"),
    ];

    fn production_with(name: &str, value: &str) -> Result<Settings, ConfigError> {
        let mut pairs: Vec<(&str, &str)> = PRODUCTION
            .iter()
            .filter(|(n, _)| *n != name)
            .copied()
            .collect();
        pairs.push((name, value));
        load(&pairs)
    }

    #[test]
    fn a_cloud_environment_refuses_the_published_local_defaults() {
        load(&PRODUCTION).expect("the baseline is valid");
        for (name, default) in [
            ("JWT_SECRET", LOCAL_JWT_SECRET),
            ("TEACHIN_LOOKUP_HASH_KEY", LOCAL_LOOKUP_HASH_KEY),
            ("JWT_REFRESH_TOKEN_HASH_KEY", LOCAL_REFRESH_HASH_KEY),
            ("TEACHIN_MEDIA_SIGNING_KEY", LOCAL_MEDIA_SIGNING_KEY),
        ] {
            let e = production_with(name, default).unwrap_err();
            assert_eq!(e.name, name);
            assert!(e.problem.contains("published local default"), "{e}");
            assert_eq!(e.to_string().lines().count(), 1, "one line: {e}");
        }
        // Locally the same values are the defaults, and fine.
        load(&[("JWT_SECRET", LOCAL_JWT_SECRET)]).unwrap();
    }

    #[test]
    fn an_unset_environment_is_local_only_off_a_deployment() {
        assert_eq!(load(&[]).unwrap().environment, Environment::Local);
        for marker in DEPLOYMENT_MARKERS {
            let e = load(&[(marker, "10.0.0.1")]).unwrap_err();
            assert_eq!(e.name, "TEACHIN_ENV");
            assert!(e.problem.contains(marker), "{e}");
            // Asking for local mode by name still works (a developer's cluster).
            let s = load(&[(marker, "10.0.0.1"), ("TEACHIN_ENV", "local")]).unwrap();
            assert_eq!(s.environment, Environment::Local);
        }
    }

    #[test]
    fn accepts_redis_urls_and_the_stackexchange_form() {
        let s = load(&[]).unwrap();
        assert_eq!(s.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(s.namespace, "local");
        let s = load(&[
            (
                "ConnectionStrings__Redis",
                "redis.redis.svc:6379,password=p@ss/w,ssl=True,abortConnect=False",
            ),
            ("TEACHIN_REDIS_DB", "2"),
        ])
        .unwrap();
        assert_eq!(s.redis_url, "rediss://:p%40ss%2Fw@redis.redis.svc:6379/2");
        assert_eq!(
            load(&[("TEACHIN_REDIS_DB", "16")]).unwrap_err().name,
            "TEACHIN_REDIS_DB"
        );
        assert_eq!(
            load(&[("REDIS_URL", "password=x")]).unwrap_err().name,
            "REDIS_URL"
        );
    }

    #[test]
    fn chooses_the_bus_backend() {
        use teachin_workers::BusConfig;
        match load(&[]).unwrap().bus {
            BusConfig::Postgres(c) => {
                assert_eq!(c.lock_duration, std::time::Duration::from_secs(60));
                assert_eq!(c.max_delivery_count, 10);
            }
            other => panic!("{other:?}"),
        }
        match load(&[("TEACHIN_BUS_MAX_DELIVERY_COUNT", "3")])
            .unwrap()
            .bus
        {
            BusConfig::Postgres(c) => assert_eq!(c.max_delivery_count, 3),
            other => panic!("{other:?}"),
        }
        let e = load(&[("TEACHIN_BUS", "servicebus")]).unwrap_err();
        assert_eq!(e.name, "ServiceBus__ConnectionString");
        let s = load(&[
            ("TEACHIN_BUS", "servicebus"),
            (
                "ServiceBus__ConnectionString",
                "Endpoint=sb://dev-sb.servicebus.windows.net/;SharedAccessKeyName=p;SharedAccessKey=k",
            ),
        ])
        .unwrap();
        assert!(
            matches!(s.bus, BusConfig::ServiceBus(c) if c.namespace == "dev-sb" && c.stats_policy.is_none())
        );
        let data = (
            "ServiceBus__ConnectionString",
            "Endpoint=sb://dev-sb.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=k",
        );
        let s = load(&[
            ("TEACHIN_BUS", "servicebus"),
            data,
            (
                "ServiceBus__StatsConnectionString",
                "Endpoint=sb://dev-sb.servicebus.windows.net/;SharedAccessKeyName=stats;SharedAccessKey=m",
            ),
        ])
        .unwrap();
        assert!(matches!(s.bus, BusConfig::ServiceBus(c)
            if c.policy_name == "app" && c.statistics_policy().name == "stats"));
        let e = load(&[
            ("TEACHIN_BUS", "servicebus"),
            data,
            (
                "ServiceBus__StatsConnectionString",
                "Endpoint=sb://prod-sb.servicebus.windows.net/;SharedAccessKeyName=stats;SharedAccessKey=m",
            ),
        ])
        .unwrap_err();
        assert_eq!(e.name, "ServiceBus__StatsConnectionString");
        let e = load(&[
            ("TEACHIN_BUS", "servicebus"),
            ("ServiceBus__ConnectionString", "Endpoint=sb://elsewhere/"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "ServiceBus__ConnectionString");
        assert_eq!(
            load(&[("TEACHIN_BUS", "kafka")]).unwrap_err().name,
            "TEACHIN_BUS"
        );
        assert_eq!(
            load(&[("TEACHIN_BUS_LOCK_SECONDS", "0")]).unwrap_err().name,
            "TEACHIN_BUS_LOCK_SECONDS"
        );
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

    #[test]
    fn tls_is_skipped_on_loopback_unless_asked_for() {
        use sqlx::postgres::PgSslMode;
        if std::env::var_os("PGSSLMODE").is_some() {
            return; // the environment chooses for every case below
        }
        let mode = |raw: &str| format!("{:?}", parse_postgres(raw).unwrap().get_ssl_mode());
        let disabled = format!("{:?}", PgSslMode::Disable);
        let preferred = format!("{:?}", PgSslMode::Prefer);
        let required = format!("{:?}", PgSslMode::Require);
        assert_eq!(mode("postgres://u@127.0.0.1/db"), disabled);
        assert_eq!(mode("postgres://u@localhost:5432/db"), disabled);
        assert_eq!(mode("postgres://u@[::1]/db"), disabled);
        assert_eq!(mode("Host=127.0.0.1;Database=db;Username=u"), disabled);
        assert_eq!(mode("postgres://u@pg.example/db"), preferred);
        assert_eq!(mode("postgres://u@127.0.0.1/db?sslmode=require"), required);
        assert_eq!(
            mode("Host=localhost;Database=db;Username=u;SslMode=Require"),
            required
        );
    }

    #[test]
    fn avatars_default_to_a_local_directory_and_use_blob_when_given_its_account() {
        use teachin_workers::media::AvatarBackend;
        let s = load(&[("TEACHIN_MANAGER_PORT", "8080")]).unwrap();
        let avatars = s.avatars.unwrap();
        assert_eq!(avatars.max_bytes, 2 * 1024 * 1024);
        match avatars.backend {
            AvatarBackend::Local(l) => {
                assert_eq!(l.directory, std::path::PathBuf::from("./data/avatars"));
                assert_eq!(l.base_url, "http://localhost:8080");
            }
            other => panic!("{other:?}"),
        }
        let s = load(&[
            (
                "ConnectionStrings__AvatarsStorage",
                "DefaultEndpointsProtocol=https;AccountName=devavatars;AccountKey=a2V5;EndpointSuffix=core.windows.net",
            ),
            ("Avatars__Container", "pictures"),
            ("TEACHIN_AVATARS_MAX_BYTES", "1000"),
        ])
        .unwrap();
        let avatars = s.avatars.unwrap();
        assert_eq!(avatars.max_bytes, 1000);
        match avatars.backend {
            AvatarBackend::Azure(a) => {
                assert_eq!(
                    (a.account.as_str(), a.container.as_str()),
                    ("devavatars", "pictures")
                )
            }
            other => panic!("{other:?}"),
        }
        let e = load(&[("ConnectionStrings__AvatarsStorage", "AccountName=x")]).unwrap_err();
        assert_eq!(e.name, "ConnectionStrings__AvatarsStorage");
        assert!(!e.problem.contains("a2V5"));
        assert_eq!(
            load(&[("TEACHIN_MEDIA_SIGNING_KEY", "short")])
                .unwrap_err()
                .name,
            "TEACHIN_MEDIA_SIGNING_KEY"
        );
        assert_eq!(
            load(&[("TEACHIN_MEDIA_BASE_URL", "localhost:5001")])
                .unwrap_err()
                .name,
            "TEACHIN_MEDIA_BASE_URL"
        );
        assert_eq!(
            load(&[("TEACHIN_AVATARS_MAX_BYTES", "0")])
                .unwrap_err()
                .name,
            "TEACHIN_AVATARS_MAX_BYTES"
        );
    }

    #[test]
    fn a_cloud_environment_without_storage_has_no_avatars() {
        let cloud = [
            ("TEACHIN_ENV", "dev"),
            ("ConnectionStrings__Postgres", "postgres://u@db/dev"),
            ("TEACHIN_LOOKUP_HASH_KEY", "0123456789abcdef0123"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("JWT_REFRESH_TOKEN_HASH_KEY", "0123456789abcdef"),
        ];
        assert!(load(&cloud).unwrap().avatars.is_none());
        let mut with_key = cloud.to_vec();
        with_key.push(("TEACHIN_MEDIA_SIGNING_KEY", "0123456789abcdef0123"));
        assert!(load(&with_key).unwrap().avatars.is_some());
    }

    #[test]
    fn speech_is_on_with_a_key_and_needs_its_region() {
        assert!(load(&[]).unwrap().speech.is_none());
        let e = load(&[("Speech__Key", "k")]).unwrap_err();
        assert_eq!(e.name, "Speech__Region");
        let s = load(&[("Speech__Key", "k"), ("Speech__Region", "westeurope")])
            .unwrap()
            .speech
            .unwrap();
        assert_eq!((s.key.as_str(), s.region.as_str()), ("k", "westeurope"));
        assert_eq!(s.endpoint, None);
        assert!(!format!("{s:?}").contains("\"k\""));
        assert_eq!(
            load(&[("Speech__Key", "k"), ("Speech__Region", "west europe")])
                .unwrap_err()
                .name,
            "Speech__Region"
        );
    }

    #[test]
    fn quotas_default_by_role_and_are_configurable() {
        let s = load(&[]).unwrap();
        assert_eq!(s.quotas, teachin_api::quota::QuotaLimits::default());
        let s = load(&[
            ("TEACHIN_MODEL_QUOTA_STUDENT", "3/1000"),
            ("TEACHIN_EMAIL_DAILY_CAP", "2"),
        ])
        .unwrap();
        assert_eq!(s.quotas.student.requests_per_day, 3);
        assert_eq!(s.quotas.student.tokens_per_day, 1000);
        assert_eq!(s.quotas.emails_per_day, 2);
        assert_eq!(
            s.quotas.teacher,
            teachin_api::quota::QuotaLimits::default().teacher
        );
        for (name, bad) in [
            ("TEACHIN_MODEL_QUOTA_TEACHER", "lots"),
            ("TEACHIN_MODEL_QUOTA_ADMIN", "0/10"),
            ("TEACHIN_EMAIL_DAILY_CAP", "0"),
        ] {
            assert_eq!(load(&[(name, bad)]).unwrap_err().name, name);
        }
    }

    #[test]
    fn email_is_on_with_a_host_and_reads_the_brevo_names() {
        use teachin_workers::email::SmtpSecurity;
        assert!(load(&[]).unwrap().email.is_none());
        let e = load(&[("BREVO_SMTP_HOST", "smtp-relay.brevo.com")]).unwrap_err();
        assert_eq!(e.name, "BREVO_SENDER_EMAIL");
        let brevo = [
            ("BREVO_SMTP_HOST", "smtp-relay.brevo.com"),
            ("BREVO_SENDER_EMAIL", "no-reply@teachin.app"),
            ("BREVO_SMTP_USER", "user"),
            ("BREVO_SMTP_PASSWORD", "pass"),
        ];
        let s = load(&brevo).unwrap().email.unwrap();
        assert_eq!(s.port, 587);
        assert_eq!(s.security, SmtpSecurity::StartTls);
        assert_eq!(s.sender_name, "Teachin");
        assert_eq!(s.username.as_deref(), Some("user"));
        let mut implicit = brevo.to_vec();
        implicit.push(("BREVO_SMTP_PORT", "465"));
        assert_eq!(
            load(&implicit).unwrap().email.unwrap().security,
            SmtpSecurity::Tls
        );
        let e = load(&[
            ("BREVO_SMTP_HOST", "h"),
            ("BREVO_SENDER_EMAIL", "a@b.c"),
            ("BREVO_SMTP_USER", "user"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "BREVO_SMTP_PASSWORD");
        let e = load(&[
            ("BREVO_SMTP_HOST", "h"),
            ("BREVO_SENDER_EMAIL", "a@b.c"),
            ("BREVO_SMTP_TLS", "ssl"),
        ])
        .unwrap_err();
        assert_eq!(e.name, "BREVO_SMTP_TLS");
    }
}
