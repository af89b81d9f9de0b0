//! Avatars and the speech token through the API: GraphQL for the steps, the local backend's
//! signed routes (`teachin_api::media`) for the bytes, a real PostgreSQL for the `User`
//! aggregate and real Redis for the sessions' store. Requests go to the routers in process
//! (`tower::ServiceExt::oneshot`), exactly as the manager would route them.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::routing::post;
use axum::Router;
use fred::prelude::{Builder, ClientLike, Config};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use teachin_api::auth::tokens::AccessTokens;
use teachin_api::graphql::ApiState;
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::UserId;
use teachin_domain::user::{Language, User, UserCommand};
use teachin_workers::media::{
    AvatarBackend, AvatarSettings, AvatarStore, LocalAvatarSettings, READ_ROUTE,
};
use teachin_workers::speech::{SpeechSettings, SpeechTokens};
use tower::ServiceExt;
use uuid::Uuid;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const KEY: &[u8] = b"local-only-lookup-hash-key-change-me";
const BASE: &str = "http://manager.test";
const MAX: u64 = 4096;

struct App {
    router: Router,
    tokens: AccessTokens,
    db: TestDatabase,
    dir: std::path::PathBuf,
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn app(speech: Option<SpeechTokens>) -> App {
    use teachin_api::auth::{rate_limit::RateLimiter, sessions::RefreshSessions};
    let db = TestDatabase::new().await;
    let redis_url =
        std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let redis = Builder::from_config(Config::from_url(&redis_url).unwrap())
        .build()
        .unwrap();
    redis.init().await.unwrap();
    let namespace = format!("test-{}", Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(format!("teachin-api-avatars-{}", Uuid::new_v4()));
    let avatars = AvatarStore::from_settings(&AvatarSettings {
        backend: AvatarBackend::Local(LocalAvatarSettings {
            directory: dir.clone(),
            base_url: BASE.into(),
            signing_key: b"media-signing-key-for-tests".to_vec(),
        }),
        max_bytes: MAX,
    })
    .unwrap();
    let tokens = AccessTokens::new(SECRET, "teachin", "teachin-portals").unwrap();
    let state = ApiState {
        bus: command_bus(
            db.pool.clone(),
            PortSecrets {
                claims_hash_key: KEY.to_vec(),
            },
            BusSettings::default(),
        ),
        read: teachin_projections::queries::ReadModels::new(db.pool.clone()),
        replay: teachin_projections::replay::SessionReplay::new(db.pool.clone()),
        analytics: teachin_projections::analytics::Analytics::new(db.pool.clone()),
        tokens: tokens.clone(),
        sessions: RefreshSessions::new(redis.clone(), KEY, &namespace),
        limiter: RateLimiter::new(redis.clone(), &namespace),
        claims: Arc::new(teachin_commands::ports::PostgresClaims::new(
            db.pool.clone(),
            KEY.to_vec(),
        )),
        policy: Default::default(),
        quotas: teachin_api::quota::Quotas::new(redis.clone(), &namespace, Default::default()),
        introspection: true,
        hub: None,
        redis_url,
        namespace,
        avatars: Some(avatars.clone()),
        speech,
    };
    let router = teachin_api::server::router(
        state,
        Default::default(),
        Default::default(),
        Default::default(),
    )
    .merge(teachin_api::media::media_router(avatars, &[]));
    App {
        router,
        tokens,
        db,
        dir,
    }
}

impl App {
    /// Registers a person through the `User` aggregate; returns their id and a token.
    async fn person(&self, role: Role) -> (Uuid, String) {
        let id = UserId::new();
        let bus = command_bus(
            self.db.pool.clone(),
            PortSecrets {
                claims_hash_key: KEY.to_vec(),
            },
            BusSettings::default(),
        );
        bus.execute::<User>(
            &id.to_string(),
            UserCommand::Register {
                user_id: id,
                role,
                first_name: "Test".into(),
                last_name: "Person".into(),
                email: format!("{}@example.com", id.0.simple()),
                password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                preferred_language: Language::En,
                hebrew_level: None,
                interests: vec![],
                registered_by: Actor::System,
            },
            &CommandContext::new(Actor::System, "test:register"),
        )
        .await
        .unwrap();
        (id.0, self.tokens.issue(id, role).token)
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut request = request;
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        (status, headers, body)
    }

    async fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        let request = Request::post("/graphql")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(
                json!({ "query": query, "variables": variables }).to_string(),
            ))
            .unwrap();
        let (_, _, body) = self.send(request).await;
        serde_json::from_slice(&body).unwrap()
    }

    /// What the browser does with a signed URL: the request to its path and query.
    async fn browser(
        &self,
        method: Method,
        url: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let target = url.strip_prefix(BASE).unwrap_or_else(|| panic!("{url}"));
        let request = Request::builder()
            .method(method)
            .uri(target)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        self.send(request).await
    }

    async fn request_upload(
        &self,
        token: &str,
        user: Uuid,
        content_type: &str,
        size: usize,
    ) -> Value {
        let r = self
            .gql(
                token,
                "mutation($u: UUID!, $t: String!, $n: Int!) {
                   requestAvatarUpload(userId: $u, contentType: $t, size: $n) {
                     uploadUrl path contentType expiresAt maxBytes headers { name value } acceptedContentTypes
                   }
                 }",
                json!({ "u": user, "t": content_type, "n": size }),
            )
            .await;
        r["data"]["requestAvatarUpload"].clone()
    }

    async fn confirm(&self, token: &str, user: Uuid, path: &str) -> Value {
        self.gql(
            token,
            "mutation($u: UUID!, $p: String!) { confirmAvatarUpload(userId: $u, path: $p) { id events } }",
            json!({ "u": user, "p": path }),
        )
        .await
    }

    async fn avatar_url(&self, token: &str, user: Uuid) -> Value {
        self.gql(
            token,
            "query($u: UUID!) { avatarUrl(userId: $u) { url expiresAt } }",
            json!({ "u": user }),
        )
        .await
    }
}

fn code(r: &Value) -> Option<&str> {
    r["errors"][0]["extensions"]["code"].as_str()
}

fn png(len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bytes.resize(len, 7);
    bytes
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
    bytes.resize(len, 9);
    bytes
}

#[tokio::test]
async fn an_avatar_is_uploaded_confirmed_shown_replaced_and_removed() {
    let app = app(None).await;
    let (student, token) = app.person(Role::Student).await;

    // 1. The upload URL, for the student's own folder.
    let ticket = app.request_upload(&token, student, "image/png", 300).await;
    let path = ticket["path"].as_str().unwrap().to_string();
    assert!(path.starts_with(&format!("{student}/")), "{ticket}");
    assert_eq!(ticket["maxBytes"], MAX);
    assert_eq!(
        ticket["headers"][0],
        json!({"name": "Content-Type", "value": "image/png"})
    );
    assert_eq!(
        ticket["acceptedContentTypes"],
        json!(["image/jpeg", "image/png", "image/webp"])
    );
    let upload_url = ticket["uploadUrl"].as_str().unwrap();

    // 2. The browser uploads. A tampered signature or another type is refused first.
    let tampered = upload_url.replace("sig=", "sig=x");
    assert_eq!(
        app.browser(Method::PUT, &tampered, "image/png", png(300))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.browser(Method::PUT, upload_url, "text/html", png(300))
            .await
            .0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        app.browser(Method::PUT, upload_url, "image/png", png(MAX as usize + 1))
            .await
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        app.browser(Method::PUT, upload_url, "image/png", png(300))
            .await
            .0,
        StatusCode::CREATED
    );

    // Nothing shows before the confirm.
    assert_eq!(
        app.avatar_url(&token, student).await["data"]["avatarUrl"],
        Value::Null
    );

    // 3. Confirm: recorded on the aggregate.
    let r = app.confirm(&token, student, &path).await;
    assert_eq!(r["data"]["confirmAvatarUpload"]["events"], 1, "{r}");

    // 4. The read URL serves the image.
    let r = app.avatar_url(&token, student).await;
    let read_url = r["data"]["avatarUrl"]["url"].as_str().unwrap().to_string();
    assert!(
        read_url.starts_with(&format!("{BASE}{READ_ROUTE}/{path}?")),
        "{r}"
    );
    let (status, headers, body) = app.browser(Method::GET, &read_url, "", vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(body, png(300));
    // The read URL does not open another file.
    let other = read_url.replace(&path, &format!("{student}/{}.png", Uuid::new_v4().simple()));
    assert_eq!(
        app.browser(Method::GET, &other, "", vec![]).await.0,
        StatusCode::FORBIDDEN
    );

    // A second avatar replaces the first, whose file is deleted.
    let second = app.request_upload(&token, student, "image/jpeg", 200).await;
    let second_path = second["path"].as_str().unwrap().to_string();
    assert_eq!(
        app.browser(
            Method::PUT,
            second["uploadUrl"].as_str().unwrap(),
            "image/jpeg",
            jpeg(200)
        )
        .await
        .0,
        StatusCode::CREATED
    );
    let r = app.confirm(&token, student, &second_path).await;
    assert_eq!(r["data"]["confirmAvatarUpload"]["events"], 1, "{r}");
    assert!(!app.dir.join(&path).exists(), "the previous file is gone");
    assert!(app.dir.join(&second_path).exists());
    let r = app.avatar_url(&token, student).await;
    assert!(r["data"]["avatarUrl"]["url"]
        .as_str()
        .unwrap()
        .contains(&second_path));
    // Confirming the current avatar again changes nothing and deletes nothing.
    let r = app.confirm(&token, student, &second_path).await;
    assert_eq!(r["data"]["confirmAvatarUpload"]["events"], 0, "{r}");
    assert!(app.dir.join(&second_path).exists());

    // Remove: the aggregate forgets it and the file is deleted.
    let r = app
        .gql(
            &token,
            "mutation($u: UUID!) { removeAvatar(userId: $u) { events } }",
            json!({ "u": student }),
        )
        .await;
    assert_eq!(r["data"]["removeAvatar"]["events"], 1, "{r}");
    assert!(!app.dir.join(&second_path).exists());
    assert_eq!(
        app.avatar_url(&token, student).await["data"]["avatarUrl"],
        Value::Null
    );
    let user: User = command_bus(
        app.db.pool.clone(),
        PortSecrets {
            claims_hash_key: KEY.to_vec(),
        },
        BusSettings::default(),
    )
    .reader()
    .load(&student.to_string())
    .await
    .unwrap();
    assert!(user.avatar().is_none());
}

#[tokio::test]
async fn the_confirm_refuses_what_is_not_the_persons_uploaded_image() {
    let app = app(None).await;
    let (student, token) = app.person(Role::Student).await;
    let (other, other_token) = app.person(Role::Student).await;

    let ticket = app.request_upload(&token, student, "image/png", 100).await;
    let path = ticket["path"].as_str().unwrap();
    // Not uploaded yet.
    let r = app.confirm(&token, student, path).await;
    assert_eq!(code(&r), Some("NOT_FOUND"), "{r}");
    app.browser(
        Method::PUT,
        ticket["uploadUrl"].as_str().unwrap(),
        "image/png",
        png(100),
    )
    .await;
    // Another person claiming it as theirs: not their folder.
    let r = app.confirm(&other_token, other, path).await;
    assert_eq!(code(&r), Some("BAD_USER_INPUT"), "{r}");
    assert_eq!(r["errors"][0]["extensions"]["field"], "path");
    // Nor may they act for the owner.
    let r = app.confirm(&other_token, student, path).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");

    // Bytes that are not the announced image.
    let fake = app.request_upload(&token, student, "image/png", 20).await;
    app.browser(
        Method::PUT,
        fake["uploadUrl"].as_str().unwrap(),
        "image/png",
        b"<html>not an image</html>".to_vec(),
    )
    .await;
    let r = app
        .confirm(&token, student, fake["path"].as_str().unwrap())
        .await;
    assert_eq!(code(&r), Some("BAD_USER_INPUT"), "{r}");
    // The read route never serves it either.
    assert_eq!(
        app.avatar_url(&token, student).await["data"]["avatarUrl"],
        Value::Null
    );

    // Unsupported types and sizes are refused at the first step.
    let r = app
        .gql(
            &token,
            "mutation($u: UUID!) { requestAvatarUpload(userId: $u, contentType: \"image/gif\", size: 10) { path } }",
            json!({ "u": student }),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["field"], "contentType", "{r}");
    let r = app
        .gql(
            &token,
            "mutation($u: UUID!, $n: Int!) { requestAvatarUpload(userId: $u, contentType: \"image/png\", size: $n) { path } }",
            json!({ "u": student, "n": MAX + 1 }),
        )
        .await;
    assert_eq!(r["errors"][0]["extensions"]["field"], "size", "{r}");
}

#[tokio::test]
async fn an_admin_manages_anyones_avatar_and_a_teacher_of_the_student_sees_it() {
    let app = app(None).await;
    let (student, student_token) = app.person(Role::Student).await;
    let (_, admin_token) = app.person(Role::Admin).await;
    let (_, stranger_token) = app.person(Role::Teacher).await;

    let ticket = app
        .request_upload(&admin_token, student, "image/png", 64)
        .await;
    let path = ticket["path"].as_str().unwrap();
    assert!(path.starts_with(&format!("{student}/")));
    app.browser(
        Method::PUT,
        ticket["uploadUrl"].as_str().unwrap(),
        "image/png",
        png(64),
    )
    .await;
    let r = app.confirm(&admin_token, student, path).await;
    assert_eq!(r["data"]["confirmAvatarUpload"]["events"], 1, "{r}");
    let r = app.avatar_url(&student_token, student).await;
    assert!(r["data"]["avatarUrl"]["url"].is_string(), "{r}");
    // A teacher who does not teach the student may not.
    let r = app.avatar_url(&stranger_token, student).await;
    assert_eq!(code(&r), Some("FORBIDDEN"), "{r}");
}

#[tokio::test]
async fn the_speech_token_is_issued_when_configured_and_explained_when_not() {
    let app_without = app(None).await;
    let (_, token) = app_without.person(Role::Student).await;
    let r = app_without
        .gql(
            &token,
            "{ speechToken { token region expiresAt } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r), Some("NOT_FOUND"), "{r}");
    assert_eq!(
        r["errors"][0]["message"],
        "speech is not configured in this environment"
    );

    // A stand-in for the token service, counting calls.
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = Router::new().route(
        "/sts/v1.0/issueToken",
        post(move |headers: axum::http::HeaderMap| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                match headers.get("ocp-apim-subscription-key") {
                    Some(k) if k == "the-key" => (StatusCode::OK, "browser-token"),
                    _ => (StatusCode::UNAUTHORIZED, ""),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    let app_with = app(Some(SpeechTokens::new(SpeechSettings {
        key: "the-key".into(),
        region: "westeurope".into(),
        endpoint: Some(endpoint),
    })))
    .await;
    let (_, token) = app_with.person(Role::Student).await;
    for _ in 0..2 {
        let r = app_with
            .gql(
                &token,
                "{ speechToken { token region expiresAt } }",
                json!({}),
            )
            .await;
        assert_eq!(r["data"]["speechToken"]["token"], "browser-token", "{r}");
        assert_eq!(r["data"]["speechToken"]["region"], "westeurope");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second answer came from the cache"
    );
    let r = app_with
        .gql("not-a-token", "{ speechToken { token } }", json!({}))
        .await;
    assert_eq!(code(&r), Some("UNAUTHENTICATED"), "{r}");
}
