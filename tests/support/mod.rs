//! What the end-to-end tests share: the `teachin` binary pointed at a test database, and a
//! free port to give a role.

pub mod cluster;
pub mod portal;

use std::net::TcpListener;
use std::process::Command;
use teachin_commands::testing::TestDatabase;

/// The binary with a clean environment, using `db`.
pub fn teachin(db: &TestDatabase) -> Command {
    teachin_at(&db.url)
}

/// The binary with a clean environment, using the database at `url`.
pub fn teachin_at(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_teachin"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("TEACHIN_LOG", "warn");
    command
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `teachin all` on free ports, against its own fresh database and its own Redis
/// namespace, so tests run in parallel without sharing sessions, rate limits or pushes.
/// Killed when dropped.
#[allow(dead_code)]
pub struct RunningApp {
    child: std::process::Child,
    pub db: TestDatabase,
    /// `http://127.0.0.1:PORT` of the manager.
    pub manager: String,
    pub accessor: String,
    pub namespace: String,
}

#[allow(dead_code)]
impl RunningApp {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts with extra environment variables.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let db = TestDatabase::new().await;
        let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (manager, accessor, engine) = (free_port(), free_port(), free_port());
        let mut command = teachin(&db);
        command
            .arg("all")
            .env("TEACHIN_NAMESPACE", &namespace)
            .env("TEACHIN_MANAGER_PORT", manager.to_string())
            .env("TEACHIN_ACCESSOR_PORT", accessor.to_string())
            .env("TEACHIN_ENGINE_PORT", engine.to_string())
            .env(
                "TEACHIN_AVATARS_DIR",
                std::env::temp_dir().join(format!("teachin-avatars-{namespace}")),
            )
            .stdout(std::process::Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("teachin starts");
        let app = RunningApp {
            child,
            db,
            manager: format!("http://127.0.0.1:{manager}"),
            accessor: format!("http://127.0.0.1:{accessor}"),
            namespace,
        };
        let ready = format!("{}/readyz", app.manager);
        let client = reqwest::Client::new();
        let started = std::time::Instant::now();
        loop {
            if let Ok(r) = client.get(&ready).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "the manager did not become ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        app
    }

    /// Creates an admin through the operator command; returns its id.
    pub fn create_admin(&self, email: &str, password: &str) -> String {
        let output = teachin(&self.db)
            .args([
                "admin",
                "create",
                "--email",
                email,
                "--first-name",
                "Ada",
                "--last-name",
                "Admin",
            ])
            .env("TEACHIN_ADMIN_PASSWORD", password)
            .output()
            .expect("admin create runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// How many events the log holds.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `teachin projections verify all` exits 0: every read model equals the fold of the log.
#[allow(dead_code)]
pub fn verify_all(db: &TestDatabase) {
    verify_all_at(&db.url)
}

/// [`verify_all`] on the database at `url`: exit 0, and one `equal` line per read model, in
/// the catalogue's order.
#[allow(dead_code)]
pub fn verify_all_at(url: &str) {
    let output = teachin_at(url)
        .args(["projections", "verify", "all"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "projections verify all: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.starts_with(' ')).collect();
    let projections = teachin_projections::read_models::all();
    assert_eq!(lines.len(), projections.len(), "{stdout}");
    for (line, projection) in lines.iter().zip(projections) {
        assert!(
            line.starts_with(&format!("{}: equal at ", projection.name())),
            "{stdout}"
        );
    }
}

/// Every read model has a checkpoint, none is halted, and none has a committed event left.
#[allow(dead_code)]
pub async fn read_models_caught_up(pool: &sqlx::PgPool) -> bool {
    let names: Vec<String> = teachin_projections::read_models::all()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    let (known, behind): (i64, i64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE c.status <> 'running' OR EXISTS (
                    SELECT 1 FROM events e
                     WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.global_position)))
           FROM projection_checkpoints c WHERE c.name = ANY($1)",
    )
    .bind(&names)
    .fetch_one(pool)
    .await
    .unwrap();
    known as usize == names.len() && behind == 0
}

/// Polls `check` until it returns `Some` (read models follow the log asynchronously); fails
/// the test after a minute, a deadline no healthy run comes near.
#[allow(dead_code)]
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
