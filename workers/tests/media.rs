//! The avatar store on both backends.
//!
//! - Local directory: upload URLs and their signatures, and every check of the confirm step
//!   (folder, presence, size, magic bytes against the announced type), read URLs, deletion.
//! - Azure Blob: against a loopback stand-in for the Blob REST API that verifies service SAS
//!   signatures the way Azure does (permissions, resource, expiry, and the HMAC over the
//!   string-to-sign with the account key). The browser's `PUT` and `GET` go to the signed URLs
//!   with no other credential; the store's own requests (`HEAD`, ranged `GET`, `DELETE`) use
//!   the account key (SharedKey, object_store's own signing, checked only for presence).

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use teachin_domain::ids::UserId;
use teachin_workers::media::{
    Access, AvatarBackend, AvatarError, AvatarSettings, AvatarStore, AzureBlobSettings,
    LocalAvatarSettings, SignatureError,
};

const MAX: u64 = 4096;

fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.resize(len.max(bytes.len()), 0);
    bytes
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
    bytes.resize(len.max(bytes.len()), 0);
    bytes
}

fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

// ---- Local directory ------------------------------------------------------------------

struct Local {
    store: AvatarStore,
    dir: std::path::PathBuf,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn local() -> Local {
    let dir = std::env::temp_dir().join(format!("teachin-avatars-{}", uuid::Uuid::new_v4()));
    let store = AvatarStore::from_settings(&AvatarSettings {
        backend: AvatarBackend::Local(LocalAvatarSettings {
            directory: dir.clone(),
            base_url: "http://localhost:5001/".into(),
            signing_key: b"a-local-signing-key".to_vec(),
        }),
        max_bytes: MAX,
    })
    .unwrap();
    Local { store, dir }
}

#[tokio::test]
async fn an_upload_url_is_for_one_new_file_in_the_persons_folder() {
    let l = local();
    let user = UserId::new();
    let ticket = l.store.upload_url(user, "image/png", 1000).await.unwrap();
    assert!(
        ticket.path.starts_with(&format!("{user}/")),
        "{}",
        ticket.path
    );
    assert!(ticket.path.ends_with(".png"));
    assert!(
        ticket.url.starts_with(&format!(
            "http://localhost:5001/media/upload/{}?",
            ticket.path
        )),
        "{}",
        ticket.url
    );
    assert_eq!(ticket.content_type, "image/png");
    assert_eq!(ticket.max_bytes, MAX);
    assert_eq!(
        ticket.headers,
        [("Content-Type".to_string(), "image/png".to_string())]
    );
    let left = ticket.expires_at - Utc::now();
    assert!(left > chrono::Duration::minutes(4) && left <= chrono::Duration::minutes(5));
    // Two requests, two files: an upload never overwrites the current avatar.
    let again = l.store.upload_url(user, "image/png", 1000).await.unwrap();
    assert_ne!(again.path, ticket.path);

    // The URL's signature opens that upload, nothing else.
    let q = query(&ticket.url);
    let expires: i64 = q["expires"].parse().unwrap();
    assert_eq!(
        l.store
            .verify_local(Access::Upload, &ticket.path, expires, &q["sig"]),
        Ok(())
    );
    assert_eq!(
        l.store
            .verify_local(Access::Read, &ticket.path, expires, &q["sig"]),
        Err(AvatarError::Signature(SignatureError::Invalid))
    );
    assert_eq!(
        l.store
            .verify_local(Access::Upload, &again.path, expires, &q["sig"]),
        Err(AvatarError::Signature(SignatureError::Invalid))
    );
    assert_eq!(
        l.store
            .verify_local(Access::Upload, &ticket.path, expires + 600, &q["sig"]),
        Err(AvatarError::Signature(SignatureError::Invalid))
    );
}

#[tokio::test]
async fn an_upload_url_is_refused_for_other_types_and_sizes() {
    let l = local();
    let user = UserId::new();
    for (content_type, size, expected) in [
        ("image/gif", 10, AvatarError::UnsupportedType),
        ("text/html", 10, AvatarError::UnsupportedType),
        ("image/png", 0, AvatarError::Empty),
        ("image/png", MAX + 1, AvatarError::TooLarge { max: MAX }),
    ] {
        assert_eq!(
            l.store.upload_url(user, content_type, size).await,
            Err(expected),
            "{content_type} {size}"
        );
    }
    assert!(l.store.upload_url(user, "image/jpeg", MAX).await.is_ok());
    assert!(l.store.upload_url(user, "IMAGE/WEBP", 1).await.is_ok());
}

#[tokio::test]
async fn the_confirm_checks_folder_presence_size_and_what_the_bytes_are() {
    let l = local();
    let (user, other) = (UserId::new(), UserId::new());
    let ticket = l.store.upload_url(user, "image/png", 100).await.unwrap();

    // Nothing uploaded yet.
    assert_eq!(
        l.store.check_upload(user, &ticket.path).await,
        Err(AvatarError::NotUploaded)
    );
    l.store
        .store_local(&ticket.path, png(100).into())
        .await
        .unwrap();
    // Someone else's folder.
    assert_eq!(
        l.store.check_upload(other, &ticket.path).await,
        Err(AvatarError::WrongFolder)
    );
    assert_eq!(
        l.store.check_upload(user, "../etc/passwd").await,
        Err(AvatarError::InvalidPath)
    );
    let checked = l.store.check_upload(user, &ticket.path).await.unwrap();
    assert_eq!(checked.content_type, "image/png");
    assert_eq!(checked.size, 100);
    assert_eq!(checked.path, ticket.path);

    // A page calling itself a PNG.
    let html = l.store.upload_url(user, "image/png", 40).await.unwrap();
    l.store
        .store_local(
            &html.path,
            Bytes::from_static(b"<html><script>alert(1)</script>"),
        )
        .await
        .unwrap();
    assert_eq!(
        l.store.check_upload(user, &html.path).await,
        Err(AvatarError::NotAnImage)
    );

    // A JPEG uploaded where a PNG was announced.
    let mixed = l.store.upload_url(user, "image/png", 40).await.unwrap();
    l.store
        .store_local(&mixed.path, jpeg(40).into())
        .await
        .unwrap();
    assert_eq!(
        l.store.check_upload(user, &mixed.path).await,
        Err(AvatarError::TypeMismatch {
            announced: "image/png",
            found: "image/jpeg"
        })
    );

    // Larger than allowed (written behind the route's back) and empty.
    let big = l.store.upload_url(user, "image/png", MAX).await.unwrap();
    std::fs::create_dir_all(l.dir.join(user.to_string())).unwrap();
    std::fs::write(l.dir.join(&big.path), png(MAX as usize + 1)).unwrap();
    assert_eq!(
        l.store.check_upload(user, &big.path).await,
        Err(AvatarError::TooLarge { max: MAX })
    );
    assert_eq!(
        l.store
            .store_local(&big.path, png(MAX as usize + 1).into())
            .await,
        Err(AvatarError::TooLarge { max: MAX })
    );
    let empty = l.store.upload_url(user, "image/png", 1).await.unwrap();
    std::fs::write(l.dir.join(&empty.path), b"").unwrap();
    assert_eq!(
        l.store.check_upload(user, &empty.path).await,
        Err(AvatarError::Empty)
    );
}

#[tokio::test]
async fn a_read_url_serves_the_image_and_deletion_is_idempotent() {
    let l = local();
    let user = UserId::new();
    let ticket = l.store.upload_url(user, "image/jpeg", 64).await.unwrap();
    l.store
        .store_local(&ticket.path, jpeg(64).into())
        .await
        .unwrap();
    let read = l.store.read_url(&ticket.path).await.unwrap();
    assert!(read.url.starts_with(&format!(
        "http://localhost:5001/media/avatars/{}?",
        ticket.path
    )));
    let q = query(&read.url);
    assert_eq!(
        l.store.verify_local(
            Access::Read,
            &ticket.path,
            q["expires"].parse().unwrap(),
            &q["sig"]
        ),
        Ok(())
    );
    let (bytes, kind) = l.store.open_local(&ticket.path).await.unwrap();
    assert_eq!(bytes.as_ref(), jpeg(64).as_slice());
    assert_eq!(kind.content_type(), "image/jpeg");

    l.store.delete(&ticket.path).await.unwrap();
    l.store.delete(&ticket.path).await.unwrap();
    assert_eq!(
        l.store.check_upload(user, &ticket.path).await,
        Err(AvatarError::NotUploaded)
    );
    assert_eq!(
        l.store.open_local(&ticket.path).await,
        Err(AvatarError::NotUploaded)
    );
}

// ---- Azure Blob stand-in --------------------------------------------------------------

const ACCOUNT: &str = "devaccount";
const CONTAINER: &str = "avatars";

struct Blob {
    bytes: Vec<u8>,
    content_type: Option<String>,
    modified: DateTime<Utc>,
}

#[derive(Clone)]
struct BlobService {
    key: Vec<u8>,
    blobs: Arc<Mutex<HashMap<String, Blob>>>,
}

impl BlobService {
    /// Verifies a service SAS (version 2020-12-06 and later) for `permission` on `blob`.
    fn check_sas(&self, blob: &str, permission: char, q: &HashMap<String, String>) -> bool {
        let field = |k: &str| q.get(k).cloned().unwrap_or_default();
        if field("sr") != "b" || !field("sp").contains(permission) {
            return false;
        }
        let (Ok(start), Ok(expiry)) = (
            DateTime::parse_from_rfc3339(&field("st")),
            DateTime::parse_from_rfc3339(&field("se")),
        ) else {
            return false;
        };
        let now = Utc::now();
        if now > expiry || start > now + chrono::Duration::minutes(15) {
            return false;
        }
        let string_to_sign = [
            field("sp"),
            field("st"),
            field("se"),
            format!("/blob/{ACCOUNT}/{CONTAINER}/{blob}"),
            field("si"),
            field("sip"),
            field("spr"),
            field("sv"),
            field("sr"),
            String::new(), // snapshot time
            field("ses"),
            field("rscc"),
            field("rscd"),
            field("rsce"),
            field("rscl"),
            field("rsct"),
        ]
        .join("\n");
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap();
        mac.update(string_to_sign.as_bytes());
        let Ok(given) = STANDARD.decode(field("sig")) else {
            return false;
        };
        mac.verify_slice(&given).is_ok()
    }
}

fn blob_headers(blob: &Blob) -> Vec<(header::HeaderName, String)> {
    let mut headers = vec![
        (
            header::LAST_MODIFIED,
            blob.modified
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        ),
        (
            header::ETAG,
            format!("\"0x{:X}\"", blob.modified.timestamp_micros()),
        ),
        (header::ACCEPT_RANGES, "bytes".into()),
    ];
    if let Some(ct) = &blob.content_type {
        headers.push((header::CONTENT_TYPE, ct.clone()));
    }
    headers
}

fn respond(
    status: StatusCode,
    headers: Vec<(header::HeaderName, String)>,
    body: Vec<u8>,
) -> Response {
    let mut response = (status, body).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

async fn blob_endpoint(
    State(service): State<BlobService>,
    method: Method,
    UrlPath((account, container, blob)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if account != ACCOUNT || container != CONTAINER {
        return StatusCode::NOT_FOUND.into_response();
    }
    let shared_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(&format!("SharedKey {ACCOUNT}:")));
    let permission = match method {
        Method::PUT => 'w',
        Method::GET | Method::HEAD => 'r',
        Method::DELETE => 'd',
        _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
    };
    let authorized = if q.contains_key("sig") {
        service.check_sas(&blob, permission, &q)
    } else {
        shared_key
    };
    if !authorized {
        return (StatusCode::FORBIDDEN, "AuthenticationFailed").into_response();
    }
    let mut blobs = service.blobs.lock().unwrap();
    match method {
        Method::PUT => {
            if headers.get("x-ms-blob-type").and_then(|v| v.to_str().ok()) != Some("BlockBlob") {
                return (StatusCode::BAD_REQUEST, "MissingRequiredHeader").into_response();
            }
            let content_type = headers
                .get("x-ms-blob-content-type")
                .or_else(|| headers.get(header::CONTENT_TYPE))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let blob_row = Blob {
                bytes: body.to_vec(),
                content_type,
                modified: Utc::now(),
            };
            let h = blob_headers(&blob_row);
            blobs.insert(blob, blob_row);
            respond(StatusCode::CREATED, h, Vec::new())
        }
        Method::DELETE => match blobs.remove(&blob) {
            Some(_) => StatusCode::ACCEPTED.into_response(),
            None => (StatusCode::NOT_FOUND, "BlobNotFound").into_response(),
        },
        _ => {
            let Some(found) = blobs.get(&blob) else {
                return (StatusCode::NOT_FOUND, "BlobNotFound").into_response();
            };
            let mut h = blob_headers(found);
            let size = found.bytes.len();
            if method == Method::HEAD {
                h.push((header::CONTENT_LENGTH, size.to_string()));
                return respond(StatusCode::OK, h, Vec::new());
            }
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
            match range {
                Some((first, last)) if first < size => {
                    let last = last.min(size - 1);
                    h.push((
                        header::CONTENT_RANGE,
                        format!("bytes {first}-{last}/{size}"),
                    ));
                    respond(
                        StatusCode::PARTIAL_CONTENT,
                        h,
                        found.bytes[first..=last].to_vec(),
                    )
                }
                Some(_) => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
                None => respond(StatusCode::OK, h, found.bytes.clone()),
            }
        }
    }
}

/// `POST /{account}/{container}?restype=container&comp=batch`: Blob Batch, which
/// object_store uses for deletes (multipart/mixed of `DELETE` sub-requests, answered with a
/// multipart/mixed of sub-responses matched by `Content-ID`).
async fn blob_batch(
    State(service): State<BlobService>,
    UrlPath((account, container)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let shared_key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(&format!("SharedKey {ACCOUNT}:")));
    if account != ACCOUNT || container != CONTAINER || !shared_key {
        return StatusCode::FORBIDDEN.into_response();
    }
    if q.get("comp").map(String::as_str) != Some("batch") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let text = String::from_utf8_lossy(&body);
    let mut parts = Vec::new();
    let mut id = None;
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("Content-ID: ") {
            id = n.trim().parse::<usize>().ok();
        } else if let Some(request) = line.strip_prefix("DELETE /") {
            let url = request.trim_end_matches(" HTTP/1.1");
            let blob = url
                .split_once(&format!("{CONTAINER}/"))
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            parts.push((id.take().unwrap_or(parts.len()), blob));
        }
    }
    let boundary = "batchresponse_standin";
    let mut out = String::new();
    let mut blobs = service.blobs.lock().unwrap();
    for (id, blob) in parts {
        let status = match blobs.remove(&blob) {
            Some(_) => "202 Accepted",
            None => "404 The specified blob does not exist.",
        };
        out.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: {id}\r\n\r\nHTTP/1.1 {status}\r\nx-ms-version: 2023-11-03\r\n\r\n"
        ));
    }
    out.push_str(&format!("--{boundary}--\r\n"));
    respond(
        StatusCode::ACCEPTED,
        vec![(
            header::CONTENT_TYPE,
            format!("multipart/mixed; boundary={boundary}"),
        )],
        out.into_bytes(),
    )
}

struct Azure {
    store: AvatarStore,
    service: BlobService,
}

async fn azure() -> Azure {
    let key = b"the stand-in account key".to_vec();
    let service = BlobService {
        key: key.clone(),
        blobs: Arc::default(),
    };
    let app = Router::new()
        .route("/{account}/{container}/{*blob}", any(blob_endpoint))
        .route("/{account}/{container}", axum::routing::post(blob_batch))
        .with_state(service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let settings = AzureBlobSettings::from_connection_string(
        &format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={};BlobEndpoint=http://{addr}/{ACCOUNT}",
            STANDARD.encode(&key)
        ),
        CONTAINER,
    )
    .unwrap();
    let store = AvatarStore::from_settings(&AvatarSettings {
        backend: AvatarBackend::Azure(settings),
        max_bytes: MAX,
    })
    .unwrap();
    Azure { store, service }
}

/// What a browser does with an upload ticket: a plain `PUT` with the headers it lists.
async fn browser_put(url: &str, headers: &[(String, String)], body: Vec<u8>) -> StatusCode {
    let mut request = reqwest::Client::new().put(url).body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn blob_sas_urls_upload_confirm_read_and_delete() {
    let a = azure().await;
    assert_eq!(a.store.backend_name(), "azure");
    let user = UserId::new();
    let ticket = a.store.upload_url(user, "image/webp", 64).await.unwrap();
    let q = query(&ticket.url);
    assert_eq!(
        (q["sp"].as_str(), q["sr"].as_str()),
        ("w", "b"),
        "{}",
        ticket.url
    );
    assert!(ticket
        .headers
        .contains(&("x-ms-blob-type".to_string(), "BlockBlob".to_string())));
    let mut webp = b"RIFF\x38\0\0\0WEBPVP8 ".to_vec();
    webp.resize(64, 0);

    assert_eq!(
        browser_put(&ticket.url, &ticket.headers, webp.clone()).await,
        StatusCode::CREATED
    );
    let checked = a.store.check_upload(user, &ticket.path).await.unwrap();
    assert_eq!((checked.content_type, checked.size), ("image/webp", 64));

    let read = a.store.read_url(&ticket.path).await.unwrap();
    assert_eq!(query(&read.url)["sp"], "r");
    let got = reqwest::get(&read.url).await.unwrap();
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.headers()[header::CONTENT_TYPE], "image/webp");
    assert_eq!(got.bytes().await.unwrap().as_ref(), webp.as_slice());

    a.store.delete(&ticket.path).await.unwrap();
    assert!(a.service.blobs.lock().unwrap().is_empty());
    a.store.delete(&ticket.path).await.unwrap();
    assert_eq!(
        a.store.check_upload(user, &ticket.path).await,
        Err(AvatarError::NotUploaded)
    );
}

#[tokio::test]
async fn a_blob_sas_grants_only_its_permission_on_its_blob() {
    let a = azure().await;
    let user = UserId::new();
    let ticket = a.store.upload_url(user, "image/png", 64).await.unwrap();
    // The read URL of the same path cannot write it.
    let read = a.store.read_url(&ticket.path).await.unwrap();
    assert_eq!(
        browser_put(&read.url, &ticket.headers, png(64)).await,
        StatusCode::FORBIDDEN
    );
    // The upload URL cannot be moved to another blob.
    let other = a.store.upload_url(user, "image/png", 64).await.unwrap();
    let moved = ticket.url.replace(&ticket.path, &other.path);
    assert_eq!(
        browser_put(&moved, &ticket.headers, png(64)).await,
        StatusCode::FORBIDDEN
    );
    // Nor stretched past its expiry.
    let q = query(&ticket.url);
    let stretched = ticket.url.replace(
        &format!("se={}", urlencode(&q["se"])),
        &format!("se={}", urlencode("2099-01-01T00:00:00Z")),
    );
    assert_ne!(stretched, ticket.url);
    assert_eq!(
        browser_put(&stretched, &ticket.headers, png(64)).await,
        StatusCode::FORBIDDEN
    );
    assert!(a.service.blobs.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_blob_stored_with_another_content_type_is_refused() {
    let a = azure().await;
    let user = UserId::new();
    let ticket = a.store.upload_url(user, "image/png", 64).await.unwrap();
    // PNG bytes, but stored to be served as a page.
    let headers = vec![
        ("Content-Type".to_string(), "text/html".to_string()),
        ("x-ms-blob-type".to_string(), "BlockBlob".to_string()),
    ];
    assert_eq!(
        browser_put(&ticket.url, &headers, png(64)).await,
        StatusCode::CREATED
    );
    assert_eq!(
        a.store.check_upload(user, &ticket.path).await,
        Err(AvatarError::StoredTypeMismatch {
            stored: "text/html".into(),
            expected: "image/png"
        })
    );
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
