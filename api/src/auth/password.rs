//! Password hashing with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes), in PHC
//! string form so parameters can be raised later without invalidating stored hashes.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

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

/// Hashes a password into a PHC string (`$argon2id$v=19$...`).
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters accepts any password")
        .to_string()
}

/// True when `password` matches the PHC string `stored`. A malformed hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
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
}
