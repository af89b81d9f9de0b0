//! The local avatar backend's HTTP routes: what Blob storage does in the cloud, for a laptop
//! and CI. `PUT /media/upload/{path}` stores one upload and `GET /media/avatars/{path}` serves
//! one avatar, each only with a URL signed by `AvatarStore` (method, path, expiry; see
//! `teachin_workers::media::signing`) — no access token, as browsers send none with an
//! `<img>` or a plain upload.
//!
//! On the Azure backend these routes answer 404: the URLs point at Blob storage instead.
//! Served files are images by their bytes, with `nosniff`, so nothing uploaded here can be
//! served as a page.

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use teachin_workers::media::{
    Access, AvatarError, AvatarStore, ImageKind, SignatureError, READ_ROUTE, UPLOAD_ROUTE,
};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The routes, for the manager to merge. `cors_origins` are the portals allowed to upload
/// from a browser (the same list as the API's).
pub fn media_router(avatars: AvatarStore, cors_origins: &[String]) -> Router {
    let limit = usize::try_from(avatars.max_bytes()).unwrap_or(usize::MAX);
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(
            cors_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        ))
        .allow_methods([Method::GET, Method::PUT, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE]);
    Router::new()
        .route(&format!("{UPLOAD_ROUTE}/{{*path}}"), put(upload))
        .route(&format!("{READ_ROUTE}/{{*path}}"), get(read))
        .layer(DefaultBodyLimit::max(limit))
        .layer(cors)
        .with_state(avatars)
}

#[derive(Deserialize)]
struct Signed {
    expires: i64,
    sig: String,
}

fn refuse(e: AvatarError) -> Response {
    let status = match &e {
        AvatarError::Signature(SignatureError::Expired | SignatureError::Invalid) => {
            StatusCode::FORBIDDEN
        }
        AvatarError::InvalidPath | AvatarError::NotUploaded | AvatarError::NotLocal => {
            StatusCode::NOT_FOUND
        }
        AvatarError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        AvatarError::UnsupportedType | AvatarError::NotAnImage => {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        }
        AvatarError::Storage(detail) => {
            tracing::error!(error = %detail, "avatar storage failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage failed; try again",
            )
                .into_response();
        }
        _ => StatusCode::BAD_REQUEST,
    };
    (status, e.to_string()).into_response()
}

async fn upload(
    State(avatars): State<AvatarStore>,
    Path(path): Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Query(signed)) = query else {
        return refuse(AvatarError::Signature(SignatureError::Invalid));
    };
    // The signature first: nothing is read from an unsigned request.
    if let Err(e) = avatars.verify_local(Access::Upload, &path, signed.expires, &signed.sig) {
        return refuse(e);
    }
    // The announced type must be the one the URL was issued for (its extension).
    let announced = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(ImageKind::from_content_type);
    let issued = teachin_workers::media::parse_path(&path).map(|(_, kind)| kind);
    if announced.is_none() || announced != issued.ok() {
        return refuse(AvatarError::UnsupportedType);
    }
    let limit = usize::try_from(avatars.max_bytes()).unwrap_or(usize::MAX);
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return refuse(AvatarError::TooLarge {
                max: avatars.max_bytes(),
            })
        }
    };
    match avatars.store_local(&path, bytes).await {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(e) => refuse(e),
    }
}

async fn read(
    State(avatars): State<AvatarStore>,
    Path(path): Path<String>,
    query: Result<Query<Signed>, QueryRejection>,
) -> Response {
    let Ok(Query(signed)) = query else {
        return refuse(AvatarError::Signature(SignatureError::Invalid));
    };
    if let Err(e) = avatars.verify_local(Access::Read, &path, signed.expires, &signed.sig) {
        return refuse(e);
    }
    match avatars.open_local(&path).await {
        Ok((bytes, kind)) => (
            [
                (header::CONTENT_TYPE, kind.content_type()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CACHE_CONTROL, "private, max-age=600"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => refuse(e),
    }
}
