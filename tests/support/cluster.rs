//! A PostgreSQL server of a test's own, for the one thing the shared test server cannot be
//! used for: being crashed and restarted under load while other tests run on it. Made with
//! the machine's `initdb` and `pg_ctl` (the same PostgreSQL the shared server runs), in a
//! temporary directory, on a free port, with trust authentication on loopback; stopped and
//! removed when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct ScratchCluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
}

/// The newest installed PostgreSQL's programs (`/usr/lib/postgresql/<version>/bin`).
fn postgres_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs are installed (./dev test installs them)")
        .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().expect("an initdb under /usr/lib/postgresql")
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl ScratchCluster {
    /// Creates and starts a new cluster.
    pub fn start() -> Self {
        Self::start_at_transaction(None)
    }

    /// Creates a new cluster whose transaction counter starts at `next_transaction_id`
    /// (`pg_resetwal -x`, with the commit-log segment that id falls in created, as the tool's
    /// documentation asks), and starts it: a test can be right before a digit step of the
    /// counter at once, instead of spending millions of transactions to get there.
    pub fn start_near_transaction(next_transaction_id: u64) -> Self {
        Self::start_at_transaction(Some(next_transaction_id))
    }

    fn start_at_transaction(next_transaction_id: Option<u64>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("teachin-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let cluster = ScratchCluster {
            dir,
            bin: postgres_bin(),
            port: super::free_port(),
        };
        if running_as_root() {
            // The server refuses to run as root: the cluster belongs to `postgres`.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of the scratch cluster");
        }
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        if let Some(next) = next_transaction_id {
            cluster.run(
                "pg_resetwal",
                &["-x", &next.to_string(), "-D", &cluster.data()],
            );
            // One commit-log segment covers 32 pages of 8 KiB at four transactions a byte.
            let segment = format!("{:04X}", next / (32 * 8192 * 4));
            let path = format!("{}/pg_xact/{segment}", cluster.data());
            cluster.as_owner(
                Path::new("dd"),
                &[
                    "if=/dev/zero",
                    &format!("of={path}"),
                    "bs=262144",
                    "count=1",
                ],
            );
        }
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l", &cluster.log()]);
        cluster
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.join("server.log").display().to_string()
    }

    /// A program of the server's, as the cluster's owner.
    fn run(&self, program: &str, args: &[&str]) {
        self.as_owner(&self.bin.join(program), args);
    }

    /// Any program, as the cluster's owner (the server refuses to run as root).
    fn as_owner(&self, program: &Path, args: &[&str]) {
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let output = command.args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        let data = self.data();
        let mut all = vec!["-D", &data, "-o", &options];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Stops the server the way a crash does (no shutdown checkpoint: recovery replays the
    /// write-ahead log at the next start), then starts it again.
    pub fn crash_and_restart(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        self.pg_ctl(&["start", "-w", "-t", "60", "-l", &self.log()]);
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let _ = command
            .args(["-D", &data, "stop", "-m", "immediate", "-w"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
