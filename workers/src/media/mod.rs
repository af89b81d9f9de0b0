//! Avatars: where the pictures live, how browsers get them there, and what is checked before
//! one becomes a person's avatar.
//!
//! Why this shape (original-system.md §1.2): the browser uploads straight to storage with a
//! short-lived signed URL, so image bytes never pass through the API; the API only signs,
//! checks and records. The flow:
//! 1. [`AvatarStore::upload_url`] — a URL good for one `PUT` of one new file under the
//!    person's own folder (`{userId}/{uuid}.{ext}` inside the `avatars` container), for five
//!    minutes.
//! 2. The browser uploads.
//! 3. [`AvatarStore::check_upload`] — the confirm step: the path is in the person's folder,
//!    the file exists, is at most [`AvatarStore::max_bytes`], and *is* a JPEG, PNG or WebP by
//!    its first bytes (a `Content-Type` is only a claim). The API then records it with the
//!    `User` aggregate's `SetAvatar` and deletes the previous file.
//! 4. [`AvatarStore::read_url`] — a URL good for reading one file for fifteen minutes.
//!
//! One store through `object_store`, two backends chosen by configuration:
//! - **Azure Blob** (the cloud): upload and read URLs are service SAS URLs signed with the
//!   account key (`object_store`'s `Signer`).
//! - **A local directory** (the default, `./data/avatars`): the manager serves
//!   `PUT /media/upload/...` and `GET /media/avatars/...` itself (`teachin_api::media`), and
//!   the URLs carry an HMAC signature with an expiry ([`signing`]) in place of the SAS.
//!
//! Nothing is kept that is not someone's avatar: an erasure deletes the person's folder, and
//! [`retention`] sweeps uploads never confirmed (and files an interrupted erasure left).

pub mod azure;
pub mod image;
pub mod retention;
pub mod signing;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{Attribute, GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::sync::Arc;
use std::time::Duration;
use teachin_domain::ids::UserId;
use uuid::Uuid;

pub use azure::AzureBlobSettings;
pub use image::ImageKind;
pub use signing::{Access, SignatureError, UrlSigner};

/// The largest avatar accepted unless configured otherwise (the original allowed 5 MB; a
/// profile picture needs far less).
pub const DEFAULT_MAX_BYTES: u64 = 2 * 1024 * 1024;
/// How long an upload URL works (the original's SAS lifetime).
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);
/// How long after it is written an upload may still be confirmed: far beyond an upload
/// URL's life, and far inside the upload sweep's shortest grace period
/// ([`retention::MIN_GRACE`]), so the sweep never deletes a file a confirm is about to use.
pub const CONFIRM_WITHIN: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// How long a read URL works.
pub const READ_URL_TTL: Duration = Duration::from_secs(15 * 60);
/// Where the local backend's upload route is mounted.
pub const UPLOAD_ROUTE: &str = "/media/upload";
/// Where the local backend's read route is mounted.
pub const READ_ROUTE: &str = "/media/avatars";

/// Where avatars are kept and how big they may be.
#[derive(Debug, Clone)]
pub struct AvatarSettings {
    pub backend: AvatarBackend,
    pub max_bytes: u64,
}

#[derive(Debug, Clone)]
pub enum AvatarBackend {
    Local(LocalAvatarSettings),
    Azure(AzureBlobSettings),
}

/// The local backend: a directory, the manager's public URL, and the key of its URLs.
#[derive(Clone)]
pub struct LocalAvatarSettings {
    pub directory: std::path::PathBuf,
    /// The manager as browsers reach it, e.g. `http://localhost:5001`.
    pub base_url: String,
    pub signing_key: Vec<u8>,
}

impl std::fmt::Debug for LocalAvatarSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAvatarSettings")
            .field("directory", &self.directory)
            .field("base_url", &self.base_url)
            .field("signing_key", &"<hidden>")
            .finish()
    }
}

/// Why an avatar operation failed. Everything but [`AvatarError::Storage`] is the caller's to
/// fix; [`AvatarError::field`] names the argument at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvatarError {
    #[error("an avatar must be a JPEG, PNG or WebP image")]
    UnsupportedType,
    #[error("an avatar may be at most {max} bytes")]
    TooLarge { max: u64 },
    #[error("the image is empty")]
    Empty,
    #[error("the upload is too old to confirm; request a new upload URL")]
    UploadExpired,
    #[error("this is not an avatar path this API issued")]
    InvalidPath,
    #[error("the avatar must be uploaded to this user's own folder")]
    WrongFolder,
    #[error("nothing was uploaded at this path (or the upload was already replaced)")]
    NotUploaded,
    #[error("the uploaded file is not a JPEG, PNG or WebP image")]
    NotAnImage,
    #[error("the uploaded file is a {found} image, not the {announced} it was announced as")]
    TypeMismatch {
        announced: &'static str,
        found: &'static str,
    },
    #[error("the upload was stored as `{stored}`; send `Content-Type: {expected}` with it")]
    StoredTypeMismatch {
        stored: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(
        "avatars are kept in Azure Blob storage here; this route serves the local backend only"
    )]
    NotLocal,
    #[error("avatar storage failed: {0}")]
    Storage(String),
}

impl AvatarError {
    /// The argument a client should correct, for the errors that are its own.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            AvatarError::UnsupportedType => Some("contentType"),
            AvatarError::TooLarge { .. } | AvatarError::Empty => Some("size"),
            AvatarError::InvalidPath
            | AvatarError::UploadExpired
            | AvatarError::WrongFolder
            | AvatarError::NotAnImage
            | AvatarError::TypeMismatch { .. }
            | AvatarError::StoredTypeMismatch { .. } => Some("path"),
            _ => None,
        }
    }
}

fn storage(e: object_store::Error) -> AvatarError {
    match e {
        object_store::Error::NotFound { .. } => AvatarError::NotUploaded,
        other => AvatarError::Storage(other.to_string()),
    }
}

/// What the browser needs to upload one avatar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTicket {
    /// `PUT` the file here.
    pub url: String,
    /// The path to confirm afterwards.
    pub path: String,
    pub content_type: &'static str,
    pub expires_at: DateTime<Utc>,
    pub max_bytes: u64,
    /// Headers the `PUT` must carry (`Content-Type`; for Blob also `x-ms-blob-type`).
    pub headers: Vec<(String, String)>,
}

/// A URL good until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// An upload that passed the confirm checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUpload {
    pub path: String,
    /// What the file is, by its first bytes.
    pub content_type: &'static str,
    pub size: u64,
}

/// A file in a person's folder, as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub path: String,
    /// When it was uploaded (the store's last-modified time).
    pub written_at: DateTime<Utc>,
}

enum Signing {
    Local { signer: UrlSigner, base_url: String },
    Azure(Arc<MicrosoftAzure>),
}

struct Inner {
    store: Arc<dyn ObjectStore>,
    signing: Signing,
    max_bytes: u64,
}

/// The avatars container, over either backend. Cheap to clone.
#[derive(Clone)]
pub struct AvatarStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AvatarStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "AvatarStore {{ backend: {}, max_bytes: {} }}",
            self.backend_name(),
            self.inner.max_bytes
        )
    }
}

impl AvatarStore {
    /// Opens the configured backend. The local directory is created if missing.
    pub fn from_settings(settings: &AvatarSettings) -> Result<Self, AvatarError> {
        let (store, signing): (Arc<dyn ObjectStore>, Signing) = match &settings.backend {
            AvatarBackend::Local(local) => {
                std::fs::create_dir_all(&local.directory).map_err(|e| {
                    AvatarError::Storage(format!(
                        "cannot create the avatars directory {}: {e}",
                        local.directory.display()
                    ))
                })?;
                let fs = LocalFileSystem::new_with_prefix(&local.directory)
                    .map_err(|e| AvatarError::Storage(e.to_string()))?
                    .with_automatic_cleanup(true);
                (
                    Arc::new(fs),
                    Signing::Local {
                        signer: UrlSigner::new(local.signing_key.clone()),
                        base_url: local.base_url.trim_end_matches('/').to_string(),
                    },
                )
            }
            AvatarBackend::Azure(azure) => {
                let mut builder = MicrosoftAzureBuilder::new()
                    .with_account(&azure.account)
                    .with_access_key(&azure.access_key)
                    .with_container_name(&azure.container)
                    .with_retry(object_store::RetryConfig {
                        max_retries: 3,
                        retry_timeout: Duration::from_secs(15),
                        ..Default::default()
                    });
                if let Some(endpoint) = &azure.endpoint {
                    builder = builder
                        .with_endpoint(endpoint.clone())
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                let blob = Arc::new(
                    builder
                        .build()
                        .map_err(|e| AvatarError::Storage(e.to_string()))?,
                );
                (blob.clone(), Signing::Azure(blob))
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                signing,
                max_bytes: settings.max_bytes,
            }),
        })
    }

    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// `local` or `azure`.
    pub fn backend_name(&self) -> &'static str {
        match self.inner.signing {
            Signing::Local { .. } => "local",
            Signing::Azure(_) => "azure",
        }
    }

    /// Step 1: a URL to upload one new avatar of `content_type` and `size` bytes for `owner`.
    pub async fn upload_url(
        &self,
        owner: UserId,
        content_type: &str,
        size: u64,
    ) -> Result<UploadTicket, AvatarError> {
        let kind =
            ImageKind::from_content_type(content_type).ok_or(AvatarError::UnsupportedType)?;
        if size == 0 {
            return Err(AvatarError::Empty);
        }
        if size > self.inner.max_bytes {
            return Err(AvatarError::TooLarge {
                max: self.inner.max_bytes,
            });
        }
        let path = format!("{owner}/{}.{}", Uuid::new_v4().simple(), kind.extension());
        let signed = self.sign(Access::Upload, &path, UPLOAD_URL_TTL).await?;
        let mut headers = vec![("Content-Type".to_string(), kind.content_type().to_string())];
        if let Signing::Azure(_) = self.inner.signing {
            headers.push(("x-ms-blob-type".to_string(), "BlockBlob".to_string()));
        }
        Ok(UploadTicket {
            url: signed.url,
            path,
            content_type: kind.content_type(),
            expires_at: signed.expires_at,
            max_bytes: self.inner.max_bytes,
            headers,
        })
    }

    /// Step 3: checks what was uploaded at `path` for `owner` (see the module comment).
    pub async fn check_upload(
        &self,
        owner: UserId,
        path: &str,
    ) -> Result<CheckedUpload, AvatarError> {
        let (location, announced) = parse_path(path)?;
        if !path.starts_with(&format!("{owner}/")) {
            return Err(AvatarError::WrongFolder);
        }
        let meta = self.inner.store.head(&location).await.map_err(storage)?;
        // An upload is confirmed soon after it is written or never: the upload sweep may
        // delete one older than its grace period, and must not race a late confirm.
        if meta.last_modified < Utc::now() - CONFIRM_WITHIN {
            return Err(AvatarError::UploadExpired);
        }
        if meta.size == 0 {
            return Err(AvatarError::Empty);
        }
        if meta.size > self.inner.max_bytes {
            return Err(AvatarError::TooLarge {
                max: self.inner.max_bytes,
            });
        }
        let head = self
            .inner
            .store
            .get_opts(
                &location,
                GetOptions {
                    range: Some(GetRange::Bounded(0..meta.size.min(image::SNIFF_BYTES))),
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(storage)?;
        // Blob serves reads with the type stored at upload: it must be what the file is.
        let stored = head
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string());
        let bytes = head.bytes().await.map_err(storage)?;
        let found = ImageKind::sniff(&bytes).ok_or(AvatarError::NotAnImage)?;
        if found != announced {
            return Err(AvatarError::TypeMismatch {
                announced: announced.content_type(),
                found: found.content_type(),
            });
        }
        if let Some(stored) = stored {
            if ImageKind::from_content_type(&stored) != Some(found) {
                return Err(AvatarError::StoredTypeMismatch {
                    stored,
                    expected: found.content_type(),
                });
            }
        }
        Ok(CheckedUpload {
            path: path.to_string(),
            content_type: found.content_type(),
            size: meta.size,
        })
    }

    /// Step 4: a URL to read the avatar at `path`.
    pub async fn read_url(&self, path: &str) -> Result<SignedUrl, AvatarError> {
        parse_path(path)?;
        self.sign(Access::Read, path, READ_URL_TTL).await
    }

    /// Deletes the file at `path`; one already gone is not an error (a retried confirm or
    /// removal may delete twice).
    pub async fn delete(&self, path: &str) -> Result<(), AvatarError> {
        let (location, _) = parse_path(path)?;
        match self.inner.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(AvatarError::Storage(e.to_string())),
        }
    }

    /// Deletes every file in `owner`'s folder (their avatar and any upload never confirmed)
    /// and returns how many; an empty or missing folder is not an error, so an erasure can
    /// run this again.
    pub async fn delete_all_of(&self, owner: UserId) -> Result<usize, AvatarError> {
        let files = self.files_of(owner).await?;
        for file in &files {
            self.delete(&file.path).await?;
        }
        Ok(files.len())
    }

    /// The folders in the container, by owner (anything that is not a person's folder is
    /// not this module's and is left alone).
    pub async fn owners(&self) -> Result<Vec<UserId>, AvatarError> {
        let listed = self
            .inner
            .store
            .list_with_delimiter(None)
            .await
            .map_err(|e| AvatarError::Storage(e.to_string()))?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|prefix| Uuid::parse_str(prefix.as_ref()).ok())
            .map(UserId)
            .collect())
    }

    /// The files in `owner`'s folder that have the issued shape, with when each was written.
    pub async fn files_of(&self, owner: UserId) -> Result<Vec<StoredFile>, AvatarError> {
        let folder = Path::from(owner.to_string());
        let listed = self
            .inner
            .store
            .list_with_delimiter(Some(&folder))
            .await
            .map_err(|e| AvatarError::Storage(e.to_string()))?;
        Ok(listed
            .objects
            .into_iter()
            .filter(|meta| parse_path(meta.location.as_ref()).is_ok())
            .map(|meta| StoredFile {
                path: meta.location.to_string(),
                written_at: meta.last_modified,
            })
            .collect())
    }

    async fn sign(
        &self,
        access: Access,
        path: &str,
        ttl: Duration,
    ) -> Result<SignedUrl, AvatarError> {
        let now = Utc::now();
        let expires_at = now + chrono::Duration::from_std(ttl).expect("a short TTL");
        match &self.inner.signing {
            Signing::Local { signer, base_url } => {
                let expires = expires_at.timestamp();
                let route = match access {
                    Access::Upload => UPLOAD_ROUTE,
                    Access::Read => READ_ROUTE,
                };
                let sig = signer.sign(access, path, expires);
                Ok(SignedUrl {
                    url: format!("{base_url}{route}/{path}?expires={expires}&sig={sig}"),
                    expires_at: DateTime::from_timestamp(expires, 0).expect("in range"),
                })
            }
            Signing::Azure(blob) => {
                let method = match access {
                    Access::Upload => reqwest::Method::PUT,
                    Access::Read => reqwest::Method::GET,
                };
                let url = blob
                    .signed_url(method, &Path::from(path), ttl)
                    .await
                    .map_err(|e| AvatarError::Storage(e.to_string()))?;
                Ok(SignedUrl {
                    url: url.to_string(),
                    expires_at,
                })
            }
        }
    }

    // ---- The local backend's HTTP routes (served by the manager) -----------------------

    /// Checks a local URL's signature; refused on the Azure backend, which has its own.
    pub fn verify_local(
        &self,
        access: Access,
        path: &str,
        expires: i64,
        signature: &str,
    ) -> Result<(), AvatarError> {
        match &self.inner.signing {
            Signing::Local { signer, .. } => {
                parse_path(path)?;
                Ok(signer.verify(access, path, expires, signature, Utc::now())?)
            }
            Signing::Azure(_) => Err(AvatarError::NotLocal),
        }
    }

    /// Stores an upload that came through the local route (signature already verified).
    pub async fn store_local(&self, path: &str, body: Bytes) -> Result<(), AvatarError> {
        if let Signing::Azure(_) = self.inner.signing {
            return Err(AvatarError::NotLocal);
        }
        let (location, _) = parse_path(path)?;
        if body.len() as u64 > self.inner.max_bytes {
            return Err(AvatarError::TooLarge {
                max: self.inner.max_bytes,
            });
        }
        self.inner
            .store
            .put(&location, body.into())
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Reads a file for the local read route, with the type its bytes show. A file that is
    /// not one of the image kinds is never served.
    pub async fn open_local(&self, path: &str) -> Result<(Bytes, ImageKind), AvatarError> {
        if let Signing::Azure(_) = self.inner.signing {
            return Err(AvatarError::NotLocal);
        }
        let (location, _) = parse_path(path)?;
        let result = self.inner.store.get(&location).await.map_err(storage)?;
        if result.meta.size > self.inner.max_bytes {
            return Err(AvatarError::TooLarge {
                max: self.inner.max_bytes,
            });
        }
        let bytes = result.bytes().await.map_err(storage)?;
        let kind = ImageKind::sniff(&bytes).ok_or(AvatarError::NotAnImage)?;
        Ok((bytes, kind))
    }
}

/// An avatar path as this module issues them: `{uuid}/{32 hex}.{jpg|png|webp}`. Anything else
/// (another shape, `..`, a backslash, another extension) is refused before storage is asked.
pub fn parse_path(path: &str) -> Result<(Path, ImageKind), AvatarError> {
    let (folder, file) = path.split_once('/').ok_or(AvatarError::InvalidPath)?;
    Uuid::parse_str(folder).map_err(|_| AvatarError::InvalidPath)?;
    if folder != folder.to_ascii_lowercase() || folder.len() != 36 {
        return Err(AvatarError::InvalidPath);
    }
    let (name, extension) = file.split_once('.').ok_or(AvatarError::InvalidPath)?;
    let name_ok = name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let kind = ImageKind::from_extension(extension).filter(|k| k.extension() == extension);
    match (name_ok, kind) {
        (true, Some(kind)) => Ok((Path::from(path), kind)),
        _ => Err(AvatarError::InvalidPath),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_of_the_issued_shape_are_accepted() {
        let user = "5b0e6f1c-1d2e-4f3a-8b4c-5d6e7f8a9b0c";
        let name = "0123456789abcdef0123456789abcdef";
        let (location, kind) = parse_path(&format!("{user}/{name}.png")).unwrap();
        assert_eq!(kind, ImageKind::Png);
        assert_eq!(location.as_ref(), format!("{user}/{name}.png"));
        for bad in [
            format!("{user}/{name}.gif"),
            format!("{user}/{name}.PNG"),
            format!("{user}/../{name}.png"),
            format!("{user}/x/{name}.png"),
            format!("{user}/{name}"),
            format!("{user}\\{name}.png"),
            format!("not-a-uuid/{name}.png"),
            format!("{}/{name}.png", user.to_uppercase()),
            format!("{user}/{}.png", &name[..31]),
            format!("{user}/{}.png", name.to_uppercase()),
            format!("/{user}/{name}.png"),
            String::new(),
        ] {
            assert_eq!(
                parse_path(&bad).unwrap_err(),
                AvatarError::InvalidPath,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_folder_lists_the_issued_files_and_deletes_whole() {
        let directory = std::env::temp_dir().join(format!("avatars-{}", Uuid::new_v4()));
        let store = AvatarStore::from_settings(&AvatarSettings {
            backend: AvatarBackend::Local(LocalAvatarSettings {
                directory: directory.clone(),
                base_url: "http://localhost".into(),
                signing_key: b"a key for this test only".to_vec(),
            }),
            max_bytes: DEFAULT_MAX_BYTES,
        })
        .unwrap();
        let owner = UserId(Uuid::new_v4());
        let other = UserId(Uuid::new_v4());
        let png = Bytes::from_static(b"\x89PNG\r\n\x1a\n0000");
        let name = |n: u8| format!("{}.png", format!("{n:x}").repeat(32));
        for path in [
            format!("{owner}/{}", name(1)),
            format!("{owner}/{}", name(2)),
        ] {
            store.store_local(&path, png.clone()).await.unwrap();
        }
        store
            .store_local(&format!("{other}/{}", name(3)), png.clone())
            .await
            .unwrap();
        // Not this module's: a stray file and a folder that is nobody's.
        std::fs::write(directory.join(owner.to_string()).join("notes.txt"), "x").unwrap();
        std::fs::create_dir_all(directory.join("tmp")).unwrap();
        std::fs::write(directory.join("tmp").join("x"), "x").unwrap();

        let mut owners = store.owners().await.unwrap();
        owners.sort_by_key(|o| o.0);
        let mut expected = vec![owner, other];
        expected.sort_by_key(|o| o.0);
        assert_eq!(owners, expected);
        let files = store.files_of(owner).await.unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.iter().all(|f| f.written_at <= Utc::now()));

        assert_eq!(store.delete_all_of(owner).await.unwrap(), 2);
        assert!(store.files_of(owner).await.unwrap().is_empty());
        assert_eq!(store.files_of(other).await.unwrap().len(), 1);
        // Again, as a retried erasure does: nothing left, no error.
        assert_eq!(store.delete_all_of(owner).await.unwrap(), 0);
        std::fs::remove_dir_all(directory).unwrap();
    }

    #[test]
    fn errors_name_the_argument_to_fix() {
        assert_eq!(AvatarError::UnsupportedType.field(), Some("contentType"));
        assert_eq!(AvatarError::TooLarge { max: 1 }.field(), Some("size"));
        assert_eq!(AvatarError::WrongFolder.field(), Some("path"));
        assert_eq!(AvatarError::NotUploaded.field(), None);
        assert_eq!(AvatarError::Storage("x".into()).field(), None);
    }
}
