//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), in PHC
//! string form so parameters can be raised later without invalidating stored hashes.
//!
//! Argon2 is slow on purpose, so requests never run it on the async workers: [`hash_async`]
//! and [`verify_async`] run it on tokio's blocking pool, at most as many at once as the
//! machine has cores ([`HASHING`]). A flood of sign-ups then queues for the hashers while
//! every other request keeps being served. The blocking [`hash`] and [`verify`] are for
//! command-line tools, which have no runtime to keep responsive.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::{Arc, LazyLock};
use tokio::sync::Semaphore;

/// The rules a new password must meet (the original's: 8 to 128 characters).
pub fn check_strength(password: &str) -> Result<(), &'static str> {
    let length = password.chars().count();
    if length < 8 {
        return Err("a password needs at least 8 characters");
    }
    if length > 128 {
        return Err("a password may have at most 128 characters");
    }
    Ok(())
}

/// Hashes a password into a PHC string (`$argon2id$v=19$...`). Blocks for the whole hash:
/// in a request, use [`hash_async`].
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password")
        .to_string()
}

/// True when `password` matches the PHC string `stored`. A malformed hash never matches.
/// Blocks for the whole check: in a request, use [`verify_async`].
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashing ended without an answer: the blocking task panicked or the runtime is shutting
/// down. Never the caller's fault.
#[derive(Debug, thiserror::Error)]
#[error("password hashing did not finish: {0}")]
pub struct HashingFailed(#[from] tokio::task::JoinError);

/// [`hash`], off the async workers and in turn with the other hashes.
pub async fn hash_async(password: String) -> Result<String, HashingFailed> {
    off_the_runtime(move || hash(&password)).await
}

/// [`verify`], off the async workers and in turn with the other hashes. Without a stored
/// hash (an unknown account) the password is checked against a real hash all the same and
/// `false` returned, so the answer takes as long as for an account that exists.
pub async fn verify_async(password: String, stored: Option<String>) -> Result<bool, HashingFailed> {
    off_the_runtime(move || match stored {
        Some(stored) => verify(&password, &stored),
        None => {
            verify(&password, &UNKNOWN_ACCOUNT_HASH);
            false
        }
    })
    .await
}

/// The hash unknown accounts are checked against (computed once, on a hashing thread).
static UNKNOWN_ACCOUNT_HASH: LazyLock<String> = LazyLock::new(|| hash("not a password anyone has"));

/// Permits to hash: one per core, so hashing cannot take more CPU than the machine has, and
/// waiting hashes cost an idle future each, not a thread.
pub static HASHING: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(hashing_permits())));

fn hashing_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `work` on the blocking pool once a hashing permit is free. The permit goes with the
/// work, so a caller that gives up (a client gone) frees its permit only when the work is
/// done, and the count of running hashes stays true.
async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, HashingFailed> {
    let permit = HASHING
        .clone()
        .acquire_owned()
        .await
        .expect("the hashing semaphore is never closed");
    Ok(tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_with_argon2id_and_verifies() {
        let stored = hash("correct horse battery");
        assert!(stored.starts_with("$argon2id$"));
        assert!(verify("correct horse battery", &stored));
        assert!(!verify("wrong horse battery", &stored));
        assert!(!verify("correct horse battery", "not a hash"));
        assert_ne!(stored, hash("correct horse battery"), "salted");
    }

    #[test]
    fn enforces_the_length_rules() {
        assert!(check_strength("short").is_err());
        assert!(check_strength(&"x".repeat(129)).is_err());
        assert!(check_strength("long enough").is_ok());
    }

    #[tokio::test]
    async fn the_async_forms_agree_with_the_blocking_ones() {
        let stored = hash_async("correct horse battery".into()).await.unwrap();
        assert!(stored.starts_with("$argon2id$"));
        let check = |password: &str, stored: Option<&str>| {
            verify_async(password.into(), stored.map(str::to_owned))
        };
        assert!(check("correct horse battery", Some(&stored)).await.unwrap());
        assert!(!check("wrong horse battery", Some(&stored)).await.unwrap());
        assert!(!check("correct horse battery", None).await.unwrap());
    }

    #[test]
    fn one_hasher_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(hashing_permits(), cores);
    }

    /// On a runtime with a single thread, requests are still answered while every hasher is
    /// busy and more hashes wait: the hashing cannot be running on that thread. Each piece
    /// of hashing work here blocks its thread until the "request" has been answered, so if
    /// the work ran on the runtime's thread the request could never be answered (and the
    /// work would give up, after a generous deadline, and report it).
    #[test]
    fn other_requests_are_served_while_hashes_are_in_flight() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let runtime_thread = std::thread::current().id();
        runtime.block_on(async {
            let (answered_tx, answered_rx) = std::sync::mpsc::channel::<()>();
            let answered_rx = Arc::new(std::sync::Mutex::new(answered_rx));
            let starved = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let in_flight = hashing_permits() + 3;
            let hashes: Vec<_> = (0..in_flight)
                .map(|_| {
                    let (answered, starved) = (answered_rx.clone(), starved.clone());
                    tokio::spawn(off_the_runtime(move || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let elsewhere = std::thread::current().id() != runtime_thread;
                        // Hashing "takes" until the request below has been answered (the
                        // channel closes then). Once one piece of work gave up, the others
                        // do not wait again.
                        if !starved.load(SeqCst) {
                            let receiver = answered.lock().unwrap();
                            let waited = receiver.recv_timeout(std::time::Duration::from_secs(60));
                            if matches!(waited, Err(std::sync::mpsc::RecvTimeoutError::Timeout)) {
                                starved.store(true, SeqCst);
                            }
                        }
                        elsewhere && !starved.load(SeqCst)
                    }))
                })
                .collect();
            // A request that needs only the runtime: it is served while the hashes run.
            let request = tokio::spawn(async { "pong" });
            assert_eq!(request.await.unwrap(), "pong");
            drop(answered_tx);
            for hashed in hashes {
                assert!(
                    hashed.await.unwrap().unwrap(),
                    "the work ran off the runtime and did not starve it"
                );
            }
        });
    }
}
