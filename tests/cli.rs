//! End-to-end tests of the `teachin` binary against a fresh database each (zero2prod style):
//! configuration errors, migrations, the operator's view of the log, admin bootstrap, and
//! the roles' health endpoints.

mod support;

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{free_port, teachin, verify_all};
use teachin_commands::testing::TestDatabase;

fn migration_count() -> usize {
    teachin_commands::migrations::MIGRATOR.iter().count()
}

fn run(mut command: Command) -> Output {
    command.output().expect("the binary runs")
}

fn stdout_lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// Runs `teachin events ARGS` until it prints `expected` events. The settled horizon is
/// cluster-wide, so another test's open transaction can hold the log back for a moment.
fn events_until(db: &TestDatabase, args: &[&str], expected: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let mut command = teachin(db);
        command.arg("events").args(args);
        let output = run(command);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let events = stdout_lines(&output);
        if events.len() >= expected || started.elapsed() > Duration::from_secs(60) {
            return events;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn create_admin(db: &TestDatabase, email: &str) -> String {
    let mut command = teachin(db);
    command
        .args([
            "admin",
            "create",
            "--email",
            email,
            "--first-name",
            "Noa",
            "--last-name",
            "Barak",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long enough password\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "admin create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn a_malformed_setting_stops_start_up_with_one_line_and_exit_code_2() {
    let db = TestDatabase::empty().await;
    for (name, value) in [
        ("TEACHIN_MANAGER_PORT", "eighty"),
        ("DATABASE_URL", "mysql://nope"),
        ("TEACHIN_DB_MAX_CONNECTIONS", "0"),
    ] {
        let mut command = teachin(&db);
        command.arg("migrate").env(name, value);
        let output = run(command);
        assert_eq!(output.status.code(), Some(2), "{name}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "one line, got: {stderr}");
        assert!(stderr.contains(name), "the line names {name}: {stderr}");
    }
    // A cloud environment has no default secrets.
    let mut command = teachin(&db);
    command.arg("migrate").env("TEACHIN_ENV", "prod");
    let output = run(command);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("TEACHIN_LOOKUP_HASH_KEY"));
}

#[tokio::test]
async fn migrate_then_events_on_an_empty_database() {
    let db = TestDatabase::empty().await;
    let mut command = teachin(&db);
    command.arg("migrate");
    let output = run(command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        format!("migrations applied: {}", migration_count())
    );

    let mut again = teachin(&db);
    again.arg("migrate");
    assert_eq!(
        String::from_utf8_lossy(&run(again).stdout).trim(),
        "migrations applied: 0"
    );

    let mut events = teachin(&db);
    events.arg("events");
    let output = run(events);
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn replicas_migrating_at_once_apply_each_migration_once() {
    let db = TestDatabase::empty().await;
    let children: Vec<Child> = (0..4)
        .map(|_| {
            let mut command = teachin(&db);
            command
                .arg("migrate")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, migration_count() as i64);
}

#[tokio::test]
async fn events_prints_a_populated_log_without_personal_data() {
    let db = TestDatabase::new().await;
    let admin = create_admin(&db, "noa.barak@example.com");
    create_admin(&db, "second@example.com");

    let events = events_until(&db, &[], 2);
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("noa.barak"), "email in clear: {text}");
    assert!(!text.contains("Barak"), "name in clear");
    assert!(!text.contains("argon2"), "password hash in clear");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_type"], "UserRegistered");
    assert_eq!(
        events[0]["aggregate_id"], admin,
        "first admin first: {events:#?}"
    );
    assert_eq!(events[0]["metadata"]["issued_by"], "system");
    assert_eq!(events[0]["metadata"]["causation_id"], "cli:admin-create");
    assert_eq!(events[0]["payload"]["UserRegistered"]["role"], "Admin");

    // --after resumes from a printed position; --stream shows one aggregate.
    let rest = events_until(
        &db,
        &["--after", events[0]["position"].as_str().unwrap()],
        1,
    );
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["event_id"], events[1]["event_id"]);

    let mut stream = teachin(&db);
    stream.args(["events", "--stream", &format!("User/{admin}")]);
    let one = stdout_lines(&run(stream));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["aggregate_id"], admin);

    // The same email cannot be registered twice.
    let mut duplicate = teachin(&db);
    duplicate
        .args(["admin", "create", "--email", "NOA.BARAK@example.com"])
        .env("TEACHIN_ADMIN_PASSWORD", "a long enough password");
    let output = run(duplicate);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already"));
}

#[tokio::test]
async fn events_follow_prints_events_as_they_are_committed() {
    let db = TestDatabase::new().await;
    let mut command = teachin(&db);
    command
        .args(["events", "--follow", "--limit", "1"])
        .stdout(Stdio::piped());
    let follower = command.spawn().unwrap();
    create_admin(&db, "late@example.com");
    let output = wait_with_deadline(follower, Duration::from_secs(60));
    let events = stdout_lines(&output);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "UserRegistered");
}

/// A minimal HTTP/1.1 GET; `None` while nothing listens yet.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().ok();
            panic!("the process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn all_serves_each_roles_health_and_stops_cleanly_on_sigterm() {
    let db = TestDatabase::empty().await;
    let ports = [free_port(), free_port(), free_port()];
    let mut command = teachin(&db);
    command
        .arg("all")
        .env("TEACHIN_MANAGER_PORT", ports[0].to_string())
        .env("TEACHIN_ACCESSOR_PORT", ports[1].to_string())
        .env("TEACHIN_ENGINE_PORT", ports[2].to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();

    for (port, role) in ports.iter().zip(["manager", "accessor", "engine"]) {
        // Wait until the role listens (it migrates first); bounded, not timed.
        let started = Instant::now();
        let (status, body) = loop {
            if let Some(answer) = http_get(*port, "/readyz") {
                break answer;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{role} never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status, 200, "{role} ready: {body}");
        assert!(body.contains(role), "{body}");
        let (status, _) = http_get(*port, "/healthz").unwrap();
        assert_eq!(status, 200);
    }
    let (status, metrics) = http_get(ports[1], "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("teachin_projection_halted{projection=\"users\"} 0"),
        "{metrics}"
    );
    // `all` migrated the empty database on start-up.
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(applied, migration_count() as i64);

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let output = wait_with_deadline(child, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "clean exit: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn projections_status_and_rebuild_from_the_command_line() {
    let db = TestDatabase::new().await;
    let admin = create_admin(&db, "ops@example.com");

    let status = |db: &TestDatabase| {
        let mut command = teachin(db);
        command.args(["projections", "status", "--json"]);
        let output = run(command);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout_lines(&output)
    };
    let before = status(&db);
    assert_eq!(before.len(), teachin_projections::read_models::all().len());
    let users = before.iter().find(|l| l["name"] == "users").unwrap();
    assert_eq!(users["status"], "running");
    assert_eq!(users["events_applied"], 0);

    // The settled horizon is cluster-wide: repeat (boundedly) until the rebuild saw the event.
    let started = Instant::now();
    let role = loop {
        let mut rebuild = teachin(&db);
        rebuild.args(["projections", "rebuild", "users"]);
        let output = run(rebuild);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("rebuilt users"));
        let row: Option<(String,)> =
            sqlx::query_as("SELECT role FROM read_model.users WHERE user_id = $1::uuid")
                .bind(&admin)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
        if let Some((role,)) = row {
            break role;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rebuild never saw the admin"
        );
    };
    assert_eq!(role, "Admin");
    // The swapped-in table has the live table's keys and indexes, under the same names.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes
          WHERE schemaname = 'read_model' AND tablename = 'users' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "users_first_name",
            "users_last_name",
            "users_pkey",
            "users_role"
        ]
    );
    let after = status(&db);
    let users = after.iter().find(|l| l["name"] == "users").unwrap();
    assert_eq!(users["lag_events"], 0);

    let mut unknown = teachin(&db);
    unknown.args(["projections", "rebuild", "nonsense"]);
    let output = run(unknown);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("known: "));

    // The rebuilt read models are the fold of the log.
    verify_all(&db);
}

/// Runs `teachin projections verify ARGS` and returns its exit code and stdout lines.
fn verify_command(db: &TestDatabase, args: &[&str]) -> (Option<i32>, Vec<String>, String) {
    let mut command = teachin(db);
    command.args(["projections", "verify"]).args(args);
    let output = run(command);
    let lines = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        output.status.code(),
        lines,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn projections_verify_exits_0_when_equal_and_1_when_a_live_row_differs() {
    let db = TestDatabase::new().await;
    let admin = create_admin(&db, "verify@example.com");
    // Bring the live read models to the log (the settled horizon is cluster-wide: repeat,
    // boundedly, until the rebuild saw the admin).
    let started = Instant::now();
    loop {
        let mut rebuild = teachin(&db);
        rebuild.args(["projections", "rebuild", "all"]);
        let output = run(rebuild);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM read_model.users")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if seen == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the rebuild never saw the admin"
        );
    }
    verify_all(&db);

    sqlx::query("UPDATE read_model.users SET last_name = 'Tampered' WHERE user_id = $1::uuid")
        .bind(&admin)
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, lines, stderr) = verify_command(&db, &["all"]);
    assert_eq!(code, Some(1), "{lines:#?}");
    let users = lines
        .iter()
        .position(|l| l.starts_with("users: DIFFERS at "))
        .unwrap_or_else(|| panic!("no users line: {lines:#?}"));
    assert!(
        lines[users].contains("users has 1 rows (expected 1)"),
        "{}",
        lines[users]
    );
    assert!(
        lines[users + 1].starts_with("    users (user_id=")
            && lines[users + 1].contains("last_name: live \"Tampered\", expected \"Barak\""),
        "the differing row under its projection: {lines:#?}"
    );
    let summaries: Vec<&String> = lines.iter().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        summaries.len(),
        teachin_projections::read_models::all().len()
    );
    assert_eq!(
        summaries
            .iter()
            .filter(|l| l.contains(": equal at "))
            .count(),
        summaries.len() - 1,
        "the others are equal: {lines:#?}"
    );
    assert!(stderr.contains("users"), "{stderr}");

    // One projection by name; JSON for scripts.
    let (code, lines, _) = verify_command(&db, &["game_configs"]);
    assert_eq!((code, lines.len()), (Some(0), 1), "{lines:#?}");
    let (code, lines, _) = verify_command(&db, &["users", "--json"]);
    assert_eq!(code, Some(1));
    let verdict: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(verdict["outcome"]["kind"], "differs");
    assert_eq!(
        verdict["tables"][0]["differing"][0]["live"]["last_name"],
        "Tampered"
    );
    let (code, _, stderr) = verify_command(&db, &["nonsense"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("known: "), "{stderr}");

    let scratch: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'verify%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(scratch, 0, "the scratch schemas are dropped");
}

#[tokio::test]
async fn the_projection_bench_harness_runs_in_smoke_mode() {
    let db = TestDatabase::empty().await;
    let mut command = teachin(&db);
    command.args(["bench", "projections", "--smoke"]);
    let output = run(command);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("| commands | achieved/s"), "{report}");
    assert!(
        report.contains("| raw scan events/s | rebuild events/s"),
        "{report}"
    );
    // The bench cleans up the database it created.
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE 'teachin_bench_%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
}
