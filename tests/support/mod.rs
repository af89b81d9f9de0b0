//! What the end-to-end tests share: the `teachin` binary pointed at a test database, and a
//! free port to give a role.

use std::net::TcpListener;
use std::process::Command;
use teachin_commands::testing::TestDatabase;

/// The binary with a clean environment, using `db`.
pub fn teachin(db: &TestDatabase) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_teachin"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
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
