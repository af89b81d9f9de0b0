//! The system under test: `teachin manager`, `teachin accessor` and `teachin engine` as three
//! separate processes of this very binary (`current_exe`), as they are deployed, against the
//! run's fresh database, a Redis namespace of their own, freshly generated secrets and the
//! offline AI provider (the environment is cleared, so no provider keys leak in).
//!
//! The bench keeps the secrets: it mints access tokens with the same JWT secret, issuer and
//! audience, and issues commands with the same lookup-hash key as the roles.

use crate::config::Settings;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The manager's pool: as many connections as the baseline's clients, so the command path
/// is compared with PostgreSQL at equal concurrency rather than limited by the pool.
pub const MANAGER_DB_CONNECTIONS: u32 = super::baseline::CLIENTS;

/// The secrets the roles were started with.
pub struct Secrets {
    pub jwt_secret: String,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub lookup_hash_key: String,
}

impl Secrets {
    /// Fresh secrets for one run, under the configured issuer and audience.
    pub fn generate(settings: &Settings) -> Self {
        Secrets {
            jwt_secret: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            jwt_issuer: settings.jwt_issuer.clone(),
            jwt_audience: settings.jwt_audience.clone(),
            lookup_hash_key: uuid::Uuid::new_v4().simple().to_string(),
        }
    }
}

pub struct RoleProcess {
    pub role: &'static str,
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl RoleProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub struct Deployment {
    pub roles: Vec<RoleProcess>,
    pub secrets: Secrets,
    pub namespace: String,
    workdir: PathBuf,
}

impl Deployment {
    /// Starts the three roles and waits until each answers `/readyz`: this binary, or
    /// `binary` (another build, to compare against), with `extra_environment` on top.
    pub async fn start(
        settings: &Settings,
        database_url: &str,
        binary: Option<&std::path::Path>,
        extra_environment: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let namespace = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let workdir = std::env::temp_dir().join(format!("teachin-{namespace}"));
        std::fs::create_dir_all(&workdir)?;
        let secrets = Secrets::generate(settings);
        let ports = [free_port()?, free_port()?, free_port()?];
        let exe = match binary {
            Some(path) => path.to_path_buf(),
            None => std::env::current_exe().context("locating the teachin binary")?,
        };
        let mut deployment = Deployment {
            roles: Vec::new(),
            secrets,
            namespace,
            workdir,
        };
        for (index, role) in ["manager", "accessor", "engine"].into_iter().enumerate() {
            let log = deployment.workdir.join(format!("{role}.log"));
            let mut command = Command::new(&exe);
            command
                .arg(role)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .envs(role_environment(
                    settings,
                    database_url,
                    &deployment.namespace,
                    &deployment.secrets,
                    ports,
                    &deployment.workdir,
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?);
            if role == "manager" {
                command.env(
                    "TEACHIN_DB_MAX_CONNECTIONS",
                    MANAGER_DB_CONNECTIONS.to_string(),
                );
            }
            command.envs(extra_environment.iter().map(|(k, v)| (k, v)));
            let child = command
                .spawn()
                .with_context(|| format!("starting `teachin {role}`"))?;
            deployment.roles.push(RoleProcess {
                role,
                port: ports[index],
                child,
                log,
            });
        }
        deployment.wait_until_ready().await?;
        Ok(deployment)
    }

    pub fn manager(&self) -> &RoleProcess {
        &self.roles[0]
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let started = Instant::now();
        for index in 0..self.roles.len() {
            let ready = format!("{}/readyz", self.roles[index].base());
            loop {
                if let Ok(response) = http.get(&ready).send().await {
                    if response.status().is_success() {
                        break;
                    }
                }
                let role = &mut self.roles[index];
                if let Some(status) = role.child.try_wait()? {
                    bail!(
                        "`teachin {}` exited ({status}) before it was ready:\n{}",
                        role.role,
                        tail(&role.log)
                    );
                }
                if started.elapsed() > Duration::from_secs(90) {
                    bail!(
                        "`teachin {}` was not ready within 90 s:\n{}",
                        role.role,
                        tail(&role.log)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Checks that no role died during a section (a crash must not pass for a figure).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for role in &mut self.roles {
            if let Some(status) = role.child.try_wait()? {
                bail!(
                    "`teachin {}` exited ({status}) during the run:\n{}",
                    role.role,
                    tail(&role.log)
                );
            }
        }
        Ok(())
    }

    /// Stops the roles (SIGKILL: their shutdown is not what is measured) and removes the
    /// working directory.
    pub fn stop(mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }

    fn kill_all(&mut self) {
        for role in &mut self.roles {
            let _ = role.child.kill();
            let _ = role.child.wait();
        }
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The settings every role gets: the run's database, Redis namespace, ports and secrets, the
/// offline AI provider (nothing else is set), logs at `warn`.
pub fn role_environment(
    settings: &Settings,
    database_url: &str,
    namespace: &str,
    secrets: &Secrets,
    ports: [u16; 3],
    workdir: &std::path::Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", database_url.to_string()),
        ("REDIS_URL", settings.redis_url.clone()),
        ("TEACHIN_NAMESPACE", namespace.to_string()),
        ("TEACHIN_MANAGER_PORT", ports[0].to_string()),
        ("TEACHIN_ACCESSOR_PORT", ports[1].to_string()),
        ("TEACHIN_ENGINE_PORT", ports[2].to_string()),
        ("JWT_SECRET", secrets.jwt_secret.clone()),
        ("JWT_ISSUER", secrets.jwt_issuer.clone()),
        ("JWT_AUDIENCE", secrets.jwt_audience.clone()),
        ("TEACHIN_LOOKUP_HASH_KEY", secrets.lookup_hash_key.clone()),
        (
            "TEACHIN_AVATARS_DIR",
            workdir.join("avatars").display().to_string(),
        ),
        ("TEACHIN_LOG", "warn".to_string()),
    ]
}

/// A port nothing listens on right now.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last lines of a role's log, for an error message.
fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
