//! Signed URLs for the local avatar backend: the stand-in for Azure's SAS when avatars live
//! in a directory served by the manager.
//!
//! Why signed URLs at all: the portals upload and show avatars with plain `PUT` and `<img>`
//! requests that carry no access token, exactly as they do against Blob storage in the
//! cloud. A URL is good for one method, one path and until its expiry; the signature is an
//! HMAC-SHA256 over the three, so it cannot be stretched to another file or a later time.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a signed URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Upload (`PUT`) one file.
    Upload,
    /// Read (`GET`) one file.
    Read,
}

impl Access {
    fn as_str(self) -> &'static str {
        match self {
            Access::Upload => "PUT",
            Access::Read => "GET",
        }
    }
}

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the link has expired; ask for a new one")]
    Expired,
    #[error("the link's signature does not match")]
    Invalid,
}

/// Signs and verifies `(access, path, expiry)` with one key.
#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner { key: <hidden> }")
    }
}

impl UrlSigner {
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into() }
    }

    fn mac(&self, access: Access, path: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(format!("{}\n{path}\n{expires}", access.as_str()).as_bytes());
        mac
    }

    /// The signature of `access` to `path` until `expires` (Unix seconds), base64url.
    pub fn sign(&self, access: Access, path: &str, expires: i64) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(access, path, expires).finalize().into_bytes())
    }

    /// Checks a signature in constant time, then the expiry.
    pub fn verify(
        &self,
        access: Access,
        path: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let given = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| SignatureError::Invalid)?;
        self.mac(access, path, expires)
            .verify_slice(&given)
            .map_err(|_| SignatureError::Invalid)?;
        if now.timestamp() > expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "5b0e6f1c-0000-4000-8000-000000000001/a.png";

    #[test]
    fn a_signature_is_good_for_its_method_path_and_time_only() {
        let signer = UrlSigner::new(b"a-key-for-tests".to_vec());
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let expires = now.timestamp() + 300;
        let sig = signer.sign(Access::Upload, PATH, expires);
        assert_eq!(
            signer.verify(Access::Upload, PATH, expires, &sig, now),
            Ok(())
        );
        // The last second still counts; the next one does not.
        let at_expiry = DateTime::from_timestamp(expires, 0).unwrap();
        assert_eq!(
            signer.verify(Access::Upload, PATH, expires, &sig, at_expiry),
            Ok(())
        );
        let after = DateTime::from_timestamp(expires + 1, 0).unwrap();
        assert_eq!(
            signer.verify(Access::Upload, PATH, expires, &sig, after),
            Err(SignatureError::Expired)
        );
        // Another method, path or expiry, or another key: refused.
        assert_eq!(
            signer.verify(Access::Read, PATH, expires, &sig, now),
            Err(SignatureError::Invalid)
        );
        let other_path = PATH.replace("a.png", "b.png");
        assert_eq!(
            signer.verify(Access::Upload, &other_path, expires, &sig, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            signer.verify(Access::Upload, PATH, expires + 3600, &sig, now),
            Err(SignatureError::Invalid)
        );
        let other_key = UrlSigner::new(b"another-key".to_vec());
        assert_eq!(
            other_key.verify(Access::Upload, PATH, expires, &sig, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            signer.verify(Access::Upload, PATH, expires, "not base64!", now),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn a_forged_signature_for_an_expired_link_is_invalid_not_expired() {
        // Checking the signature first means an attacker learns nothing from the expiry.
        let signer = UrlSigner::new(b"k".to_vec());
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(
            signer.verify(Access::Read, PATH, now.timestamp() - 10, "AAAA", now),
            Err(SignatureError::Invalid)
        );
    }
}
