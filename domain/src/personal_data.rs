//! Crypto-shredding: personal data (names, email, free text) is sealed in events with a key
//! that belongs to the person it is about. Erasing a person destroys that key, after which
//! the ciphertext in the (immutable) log is noise: nothing can serve it and no rebuild can
//! recover it. The event log itself is never rewritten.
//!
//! This module holds the pure part — the value type and the AES-256-GCM sealing with a given
//! key and nonce. Where keys live (and where nonces come from) is the
//! [`crate::services::PersonalDataVault`] port's business.

use crate::ids::UserId;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Length of a subject key (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a GCM nonce.
pub const NONCE_LEN: usize = 12;

/// A person's data-encryption key. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey(pub [u8; KEY_LEN]);

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

/// A piece of personal data as it is stored in an event: whose it is, and the ciphertext
/// (base64 of nonce ‖ AES-GCM output). The subject is bound as associated data, so a value
/// cannot be replayed under another person's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub subject: UserId,
    pub ciphertext: String,
}

impl Sealed {
    /// The text shown wherever sealed data can no longer be opened.
    pub const ERASED: &'static str = "[erased]";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed value is not valid base64 or is too short")]
    Malformed,
    #[error("sealed value does not authenticate under this subject's key")]
    Tampered,
}

/// Seals `plaintext` for `subject` with `key` and a nonce that must never repeat for this key.
pub fn seal_with(
    key: &SubjectKey,
    nonce: [u8; NONCE_LEN],
    subject: UserId,
    plaintext: &str,
) -> Sealed {
    let cipher = Aes256Gcm::new_from_slice(&key.0).expect("key length is fixed");
    let aad = subject.0.as_bytes();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext.as_bytes(),
                aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Sealed {
        subject,
        ciphertext: BASE64.encode(out),
    }
}

/// Opens a sealed value with its subject's key.
pub fn open_with(key: &SubjectKey, sealed: &Sealed) -> Result<String, SealError> {
    let raw = BASE64
        .decode(&sealed.ciphertext)
        .map_err(|_| SealError::Malformed)?;
    if raw.len() < NONCE_LEN {
        return Err(SealError::Malformed);
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let cipher = Aes256Gcm::new_from_slice(&key.0).expect("key length is fixed");
    let pt = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: sealed.subject.0.as_bytes(),
            },
        )
        .map_err(|_| SealError::Tampered)?;
    String::from_utf8(pt).map_err(|_| SealError::Tampered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_only_with_its_key_and_subject() {
        let subject = UserId::new();
        let key = SubjectKey([7; KEY_LEN]);
        let sealed = seal_with(&key, [1; NONCE_LEN], subject, "Dana Levi");
        assert!(!sealed.ciphertext.contains("Dana"));
        assert_eq!(open_with(&key, &sealed).unwrap(), "Dana Levi");
        assert_eq!(
            open_with(&SubjectKey([8; KEY_LEN]), &sealed),
            Err(SealError::Tampered)
        );
        let moved = Sealed {
            subject: UserId::new(),
            ..sealed
        };
        assert_eq!(open_with(&key, &moved), Err(SealError::Tampered));
    }
}
