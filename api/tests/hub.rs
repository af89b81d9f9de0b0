//! The SignalR hub end to end: a real axum server on a random port, real Redis, and the stock
//! `@microsoft/signalr` client (driven by `tests/signalr/client.mjs` under Node) — plus a raw
//! WebSocket client for the protocol's edges, and a stand-in for Azure SignalR's REST API.
//!
//! Each test uses a namespace of its own, so they run in parallel. Every wait is bounded
//! ([`WAIT`]); nothing asserts on how long something took.
//!
//! Node packages: if `tests/signalr/node_modules` is missing, the first test that needs it
//! runs `npm ci` there (CI may run `npm ci --prefix tests/signalr` beforehand instead).

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use fred::prelude::{Builder, ClientLike, Config, PubsubInterface};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use teachin_api::auth::tokens::AccessTokens;
use teachin_api::hub::{self, AzureSignalR, DisplayNames, HubConfig, NotificationHub};
use teachin_domain::actor::Role;
use teachin_domain::ids::UserId;
use teachin_projections::feed::{channel, Notification, Target};
use teachin_projections::log::LogPosition;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::ServiceExt;
use uuid::Uuid;

/// The longest any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const RS: char = '\u{1e}';

fn redis_url() -> String {
    std::env::var("TEACHIN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn tokens() -> AccessTokens {
    AccessTokens::new(SECRET, "teachin", "teachin-portals").unwrap()
}

async fn redis() -> fred::prelude::Client {
    let client = Builder::from_config(Config::from_url(&redis_url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client
}

/// Names for `UserOnline`, as the read models would give them.
struct Names;

impl DisplayNames for Names {
    fn display_name(&self, user: UserId) -> futures::future::BoxFuture<'_, Option<String>> {
        Box::pin(async move { Some(format!("User {}", &user.to_string()[..8])) })
    }
}

/// A running hub: server, feed task, and what the test needs to drive it.
struct TestHub {
    hub: NotificationHub,
    base: String,
    namespace: String,
    redis: fred::prelude::Client,
    _shutdown: watch::Sender<bool>,
}

impl TestHub {
    async fn start(configure: impl FnOnce(&mut HubConfig)) -> TestHub {
        let namespace = format!("hubtest-{}", Uuid::new_v4().simple());
        let mut config = HubConfig::new(&namespace);
        configure(&mut config);
        let redis = redis().await;
        let hub = NotificationHub::new(tokens(), redis.clone(), config, None);
        hub.set_display_names(Names);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = hub::router(hub.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn({
            let hub = hub.clone();
            async move { hub::run_feed(hub, &redis_url(), shutdown_rx).await }
        });
        eventually("the hub subscribes to Redis", || async {
            hub.is_subscribed()
        })
        .await;
        TestHub {
            hub,
            base,
            namespace,
            redis,
            _shutdown: shutdown,
        }
    }

    fn url(&self) -> String {
        format!("{}{}", self.base, hub::HUB_PATH)
    }

    /// Publishes a notification exactly as the accessor's `FeedPublisher` does.
    async fn publish(&self, notification: &Notification) {
        let text = serde_json::to_string(notification).unwrap();
        let _: i64 = self
            .redis
            .publish(channel(&self.namespace), text)
            .await
            .unwrap();
    }
}

fn notification(target: Target, method: &str, payload: Value) -> Notification {
    Notification {
        id: Uuid::new_v4(),
        part: 0,
        target,
        method: method.into(),
        payload,
        position: LogPosition {
            transaction_id: 1,
            global_position: 1,
        },
    }
}

/// Polls `condition` until it holds, failing after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- the Node client -----------------------------------------------------------------

fn signalr_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/signalr")
}

/// Installs the npm packages once per test binary unless they are there already.
fn node_packages() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let dir = signalr_dir();
        if dir.join("node_modules/@microsoft/signalr").is_dir() {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (Node 20+ and npm are needed for the SignalR client test)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    });
}

/// One `@microsoft/signalr` connection in a Node process.
struct NodeClient {
    child: Child,
    stdin: Option<ChildStdin>,
    events: Lines<BufReader<ChildStdout>>,
}

impl NodeClient {
    async fn spawn(url: &str, token: &str) -> NodeClient {
        NodeClient::spawn_with(url, token, false).await
    }

    /// `quiet`: the client logs nothing (for a connection expected to fail).
    async fn spawn_with(url: &str, token: &str, quiet: bool) -> NodeClient {
        node_packages();
        let mut command = Command::new("node");
        if quiet {
            command.env("HUB_QUIET", "1");
        }
        let mut child = command
            .arg("client.mjs")
            .current_dir(signalr_dir())
            .env("HUB_URL", url)
            .env("HUB_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take();
        let events = BufReader::new(child.stdout.take().unwrap()).lines();
        NodeClient {
            child,
            stdin,
            events,
        }
    }

    /// Connects and waits until `start()` resolved.
    async fn connect(url: &str, token: &str) -> NodeClient {
        let mut client = NodeClient::spawn(url, token).await;
        let first = client.next().await;
        assert_eq!(first["event"], "connected", "{first}");
        client
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.events.next_line())
            .await
            .expect("the client said something in time")
            .unwrap()
            .expect("the client is still running");
        serde_json::from_str(&line).unwrap()
    }

    /// The next pushed message (`connection.on` handler call).
    async fn next_message(&mut self) -> Value {
        loop {
            let event = self.next().await;
            match event["event"].as_str() {
                Some("message") => return event,
                Some("closed") => panic!("the connection closed: {event}"),
                _ => continue,
            }
        }
    }

    /// The next push that is not a presence change (admins get those at any moment).
    async fn next_push(&mut self) -> Value {
        loop {
            let event = self.next_message().await;
            let method = event["method"].as_str().unwrap_or_default();
            if ![
                hub::USER_ONLINE,
                hub::USER_OFFLINE,
                hub::UPDATE_USER_CONNECTIONS,
            ]
            .contains(&method)
            {
                return event;
            }
        }
    }

    /// Skips pushes until one of `method` arrives.
    async fn message_of(&mut self, method: &str) -> Value {
        loop {
            let event = self.next_message().await;
            if event["method"] == method {
                return event;
            }
        }
    }

    async fn command(&mut self, command: Value) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    async fn invoke(&mut self, method: &str) -> Value {
        self.command(json!({"cmd": "invoke", "method": method}))
            .await;
        loop {
            let event = self.next().await;
            if event["event"] == "invoked" || event["event"] == "invoke-failed" {
                return event;
            }
        }
    }

    /// Stops the connection and waits for the process to end.
    async fn stop(mut self) {
        self.command(json!({"cmd": "stop"})).await;
        drop(self.stdin.take());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the client exits")
            .unwrap();
    }
}

/// Publishes `notification` until `client` receives it (the subscription may still be
/// settling); the same id every time, so the hub's dedupe lets exactly one through.
async fn publish_until_received(hub: &TestHub, client: &mut NodeClient, n: &Notification) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        hub.publish(n).await;
        let attempt = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                let event = client.next_message().await;
                if event["method"] == n.method.as_str() {
                    return event;
                }
            }
        })
        .await;
        match attempt {
            Ok(event) => return event,
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "the notification never arrived"
            ),
        }
    }
}

// ----- tests with the stock client -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_client_receives_its_users_feed_notification_once() {
    let hub = TestHub::start(|_| {}).await;
    let student = UserId::new();
    let token = tokens().issue(student, Role::Student).token;
    let mut client = NodeClient::connect(&hub.url(), &token).await;
    assert_eq!(hub.hub.connections(), 1);

    let payload = json!({"eventType": "AchievementUnlocked", "payload": {"key": "first_steps"}});
    let pushed = notification(Target::User(student), "ReceiveEvent", payload.clone());
    let event = publish_until_received(&hub, &mut client, &pushed).await;
    assert_eq!(event["args"], json!([payload]));

    // A redelivery of the same notification is dropped; the next one arrives, and it is the
    // very next thing the client sees.
    hub.publish(&pushed).await;
    let next = notification(
        Target::User(student),
        "NotificationMessage",
        json!({"message": "You were added to a class", "type": "Info"}),
    );
    hub.publish(&next).await;
    let event = client.next_message().await;
    assert_eq!(event["method"], "NotificationMessage", "{event}");
    assert_eq!(event["args"][0]["message"], "You were added to a class");

    // Someone else's notification does not arrive either.
    hub.publish(&notification(
        Target::User(UserId::new()),
        "ReceiveEvent",
        json!({"eventType": "not yours"}),
    ))
    .await;
    hub.hub
        .send_to_user(student, "StreamEvent", vec![json!({"stage": "Last"})])
        .await
        .unwrap();
    let event = client.next_message().await;
    assert_eq!(event["method"], "StreamEvent", "{event}");

    client.stop().await;
    eventually("the connection is gone", || async {
        hub.hub.connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_group_pushes_reach_admins_and_not_students() {
    let hub = TestHub::start(|_| {}).await;
    let (admin, student) = (UserId::new(), UserId::new());
    let mut admin_client =
        NodeClient::connect(&hub.url(), &tokens().issue(admin, Role::Admin).token).await;
    let mut student_client =
        NodeClient::connect(&hub.url(), &tokens().issue(student, Role::Student).token).await;

    let registered = notification(
        Target::Group(hub::ADMINS_GROUP.into()),
        "NotificationMessage",
        json!({"message": "A new student registered", "type": "Info"}),
    );
    let event = publish_until_received(&hub, &mut admin_client, &registered).await;
    assert_eq!(event["args"][0]["message"], "A new student registered");

    // Published after the group push on the same channel, so delivered after it: the
    // student's first message being this one shows the group push skipped them.
    let marker = notification(
        Target::User(student),
        "ReceiveEvent",
        json!({"marker": true}),
    );
    hub.publish(&marker).await;
    let event = student_client.next_message().await;
    assert_eq!(event["args"][0], json!({"marker": true}), "{event}");

    // The original's admin-only hub methods.
    assert_eq!(
        admin_client.invoke("SubscribeAdmin").await["event"],
        "invoked"
    );
    assert_eq!(
        admin_client.invoke("UnSubscribeAdmin").await["event"],
        "invoked"
    );
    let refused = student_client.invoke("SubscribeAdmin").await;
    assert_eq!(refused["event"], "invoke-failed");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("unauthorized"),
        "{refused}"
    );
    let unknown = student_client.invoke("DropTables").await;
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("Unknown hub method 'DropTables'"),
        "{unknown}"
    );

    // After UnSubscribeAdmin the admin is out of the group; a user push still arrives first.
    hub.publish(&notification(
        Target::Group(hub::ADMINS_GROUP.into()),
        "NotificationMessage",
        json!({"message": "not for you now"}),
    ))
    .await;
    let marker = notification(Target::User(admin), "ReceiveEvent", json!({"marker": 2}));
    hub.publish(&marker).await;
    let event = admin_client.next_push().await;
    assert_eq!(event["args"][0], json!({"marker": 2}), "{event}");

    admin_client.stop().await;
    student_client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_online_counts_and_offline_reach_an_admin() {
    let hub = TestHub::start(|_| {}).await;
    let (admin, student) = (UserId::new(), UserId::new());
    let mut admin_client =
        NodeClient::connect(&hub.url(), &tokens().issue(admin, Role::Admin).token).await;
    let student_token = tokens().issue(student, Role::Student).token;

    let first = NodeClient::connect(&hub.url(), &student_token).await;
    let online = admin_client.message_of("UserOnline").await;
    let name = format!("User {}", &student.to_string()[..8]);
    assert_eq!(
        online["args"],
        json!([student.to_string(), "Student", name]),
        "{online}"
    );
    let listed = hub.hub.online_users().await.unwrap();
    assert_eq!(listed.len(), 1, "admins are not listed: {listed:?}");
    assert_eq!((listed[0].user_id, listed[0].connections), (student, 1));
    assert_eq!(listed[0].name.as_deref(), Some(name.as_str()));

    let second = NodeClient::connect(&hub.url(), &student_token).await;
    let update = admin_client.message_of("UpdateUserConnections").await;
    assert_eq!(update["args"], json!([student.to_string(), 2]));

    first.stop().await;
    let update = admin_client.message_of("UpdateUserConnections").await;
    assert_eq!(update["args"], json!([student.to_string(), 1]));

    second.stop().await;
    let offline = admin_client.message_of("UserOffline").await;
    assert_eq!(offline["args"], json!([student.to_string()]));
    assert!(hub.hub.online_users().await.unwrap().is_empty());
    admin_client.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_expired_tokens_get_401_at_negotiate() {
    let hub = TestHub::start(|_| {}).await;
    let user = UserId::new();

    let expired = tokens()
        .issue_at(
            user,
            Role::Student,
            chrono::Utc::now() - chrono::Duration::hours(1),
        )
        .token;
    let mut client = NodeClient::spawn_with(&hub.url(), &expired, true).await;
    let failed = client.next().await;
    assert_eq!(failed["event"], "failed", "{failed}");
    assert!(
        failed["message"].as_str().unwrap().contains("401"),
        "{failed}"
    );

    let foreign = AccessTokens::new(
        b"ffffffffffffffffffffffffffffffff",
        "teachin",
        "teachin-portals",
    )
    .unwrap()
    .issue(user, Role::Admin)
    .token;
    let router = hub::router(hub.hub.clone());
    let negotiate = |auth: Option<String>| {
        let mut request = Request::post(format!("{}/negotiate?negotiateVersion=1", hub::HUB_PATH));
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        router.clone().oneshot(request.body(Body::empty()).unwrap())
    };
    for refused in [
        None,
        Some("Bearer not-a-jwt".to_owned()),
        Some(format!("Bearer {foreign}")),
        Some(format!("Bearer {expired}")),
    ] {
        let response = negotiate(refused.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{refused:?}");
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
    }

    let good = tokens().issue(user, Role::Student).token;
    let response = negotiate(Some(format!("Bearer {good}"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["negotiateVersion"], 1);
    assert!(body["connectionId"].is_string() && body["connectionToken"].is_string());
    assert_ne!(body["connectionId"], body["connectionToken"]);
    assert_eq!(
        body["availableTransports"],
        json!([{"transport": "WebSockets", "transferFormats": ["Text"]}])
    );

    // A client of negotiate version 0 uses the connection id itself as the token.
    let response = router
        .clone()
        .oneshot(
            Request::post(format!("{}/negotiate", hub::HUB_PATH))
                .header(header::AUTHORIZATION, format!("Bearer {good}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["negotiateVersion"], 0);
    assert!(body["connectionId"].is_string() && body.get("connectionToken").is_none());

    // The token may also come in the query string, as browsers send it.
    let response = router
        .clone()
        .oneshot(
            Request::post(format!(
                "{}/negotiate?negotiateVersion=1&access_token={good}",
                hub::HUB_PATH
            ))
            .body(Body::empty())
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // The WebSocket request itself is refused without a valid token.
    let ws = format!("ws://{}{}", &hub.base["http://".len()..], hub::HUB_PATH);
    match tokio_tungstenite::connect_async(format!("{ws}?access_token={expired}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
}

// ----- the protocol's edges, with a raw WebSocket ----------------------------------------

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Negotiates for `token` and returns the connection token.
async fn negotiate(hub: &TestHub, token: &str) -> String {
    let response = hub::router(hub.hub.clone())
        .oneshot(
            Request::post(format!("{}/negotiate?negotiateVersion=1", hub::HUB_PATH))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    body["connectionToken"].as_str().unwrap().to_owned()
}

fn ws_url(hub: &TestHub, id: &str, token: &str) -> String {
    format!(
        "ws://{}{}?id={id}&access_token={token}",
        &hub.base["http://".len()..],
        hub::HUB_PATH
    )
}

/// Reads hub messages from a raw socket, split on the record separator.
struct Records {
    socket: Socket,
    pending: std::collections::VecDeque<Value>,
}

impl Records {
    /// A raw WebSocket straight to the hub (no negotiate: `skipNegotiation`), past the
    /// handshake.
    async fn handshaken(hub: &TestHub, token: String) -> Records {
        let (socket, _) = tokio_tungstenite::connect_async(format!(
            "ws://{}{}?access_token={token}",
            &hub.base["http://".len()..],
            hub::HUB_PATH
        ))
        .await
        .unwrap();
        let mut records = Records {
            socket,
            pending: Default::default(),
        };
        records
            .send(&format!("{{\"protocol\":\"json\",\"version\":1}}{RS}"))
            .await;
        assert_eq!(records.next().await, json!({}));
        records
    }

    async fn next(&mut self) -> Value {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return message;
            }
            let frame = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .unwrap();
            if let WsMessage::Text(text) = frame {
                assert!(text.ends_with(RS), "records end with 0x1E: {text:?}");
                for record in text.split(RS).filter(|r| !r.is_empty()) {
                    self.pending
                        .push_back(serde_json::from_str(record).unwrap());
                }
            }
        }
    }

    /// The next message that is not a ping.
    async fn next_non_ping(&mut self) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] != 6 {
                return message;
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.socket
            .send(WsMessage::Text(text.to_owned().into()))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_protocol_handshake_framing_invocations_pings_and_token_reuse() {
    let hub = TestHub::start(|config| config.keep_alive = Duration::from_millis(300)).await;
    let student = UserId::new();
    let token = tokens().issue(student, Role::Student).token;
    let id = negotiate(&hub, &token).await;
    let (socket, _) = tokio_tungstenite::connect_async(ws_url(&hub, &id, &token))
        .await
        .unwrap();
    let mut records = Records {
        socket,
        pending: Default::default(),
    };

    // The handshake split over two frames, the second carrying a ping and an invocation too.
    records.send("{\"protocol\":\"js").await;
    records
        .send(&format!(
            "on\",\"version\":1}}{RS}{{\"type\":6}}{RS}{{\"type\":1,\"invocationId\":\"1\",\"target\":\"Nope\",\"arguments\":[]}}{RS}"
        ))
        .await;
    assert_eq!(records.next().await, json!({}), "the handshake response");
    assert_eq!(
        records.next_non_ping().await,
        json!({"type": 3, "invocationId": "1", "error": "Unknown hub method 'Nope'"})
    );

    // A non-admin may not subscribe to Admins; an invocation without an id gets no answer.
    records
        .send(&format!(
            "{{\"type\":1,\"target\":\"Nope\",\"arguments\":[]}}{RS}{{\"type\":1,\"invocationId\":\"2\",\"target\":\"subscribeadmin\",\"arguments\":[]}}{RS}"
        ))
        .await;
    let refused = records.next_non_ping().await;
    assert_eq!(refused["invocationId"], "2", "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("unauthorized"));

    // The server pings an idle connection.
    assert_eq!(records.next().await, json!({"type": 6}));

    // Pushes arrive as invocations without an invocation id.
    assert_eq!(
        hub.hub
            .deliver_local(&Target::User(student), "ReceiveEvent", &[json!({"a": 1})]),
        1
    );
    assert_eq!(
        records.next_non_ping().await,
        json!({"type": 1, "target": "ReceiveEvent", "arguments": [{"a": 1}]})
    );

    // The connection token was used up: a second socket with it is refused, as is a made-up
    // one and one negotiated by someone else.
    for (id, token) in [
        (id.clone(), token.clone()),
        ("made-up".to_owned(), token.clone()),
        (
            negotiate(&hub, &token).await,
            tokens().issue(UserId::new(), Role::Student).token,
        ),
    ] {
        match tokio_tungstenite::connect_async(ws_url(&hub, &id, &token)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::NOT_FOUND)
            }
            other => panic!("expected a 404, got {other:?}"),
        }
    }

    // A malformed message ends the connection with an error and no invitation to retry.
    records.send(&format!("{{\"type\":\"banana\"}}{RS}")).await;
    let close = records.next_non_ping().await;
    assert_eq!(close["type"], 7, "{close}");
    assert!(close["error"].as_str().unwrap().contains("invalid message"));
    assert!(close.get("allowReconnect").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_tokens_expire_unused() {
    let hub =
        TestHub::start(|config| config.connection_token_ttl = Duration::from_millis(50)).await;
    let token = tokens().issue(UserId::new(), Role::Teacher).token;
    let id = negotiate(&hub, &token).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    match tokio_tungstenite::connect_async(ws_url(&hub, &id, &token)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::NOT_FOUND)
        }
        other => panic!("expected a 404, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_on_token_expiry_silence_and_shutdown() {
    let hub = TestHub::start(|config| {
        config.keep_alive = Duration::from_millis(200);
        config.client_timeout = Duration::from_millis(600);
    })
    .await;
    let connect = |token: String| Records::handshaken(&hub, token);

    // A token with two seconds left (skipNegotiation: no connection token at all).
    let short = tokens().with_ttl(Duration::from_secs(2));
    let mut expiring = connect(short.issue(UserId::new(), Role::Student).token).await;
    // A client that pings keeps its connection until the token runs out.
    let deadline = tokio::time::Instant::now() + WAIT;
    let close = loop {
        assert!(tokio::time::Instant::now() < deadline, "no close in time");
        expiring.send(&format!("{{\"type\":6}}{RS}")).await;
        if let Ok(message) =
            tokio::time::timeout(Duration::from_millis(100), expiring.next_non_ping()).await
        {
            break message;
        }
    };
    assert_eq!(
        close,
        json!({"type": 7, "error": "Unauthorized: the access token has expired.", "allowReconnect": true})
    );

    // A client that says nothing is closed once the client timeout passes.
    let mut silent = connect(tokens().issue(UserId::new(), Role::Student).token).await;
    let close = silent.next_non_ping().await;
    assert_eq!(close["type"], 7);
    assert!(
        close["error"].as_str().unwrap().contains("timeout"),
        "{close}"
    );

    // Shutdown closes every connection, inviting clients to reconnect elsewhere.
    let mut open = connect(tokens().issue(UserId::new(), Role::Teacher).token).await;
    let shutdown = tokio::spawn({
        let hub = hub.hub.clone();
        async move { hub.shutdown().await }
    });
    let close = open.next_non_ping().await;
    assert_eq!(
        close,
        json!({"type": 7, "error": "Server is shutting down.", "allowReconnect": true})
    );
    shutdown.await.unwrap();
    assert_eq!(hub.hub.connections(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_messagepack_handshake_is_refused() {
    let hub = TestHub::start(|_| {}).await;
    let token = tokens().issue(UserId::new(), Role::Student).token;
    let id = negotiate(&hub, &token).await;
    let (socket, _) = tokio_tungstenite::connect_async(ws_url(&hub, &id, &token))
        .await
        .unwrap();
    let mut records = Records {
        socket,
        pending: Default::default(),
    };
    records
        .send(&format!(
            "{{\"protocol\":\"messagepack\",\"version\":1}}{RS}"
        ))
        .await;
    assert_eq!(
        records.next().await,
        json!({"error": "The protocol 'messagepack' is not supported."})
    );
}

// ----- Azure SignalR -----------------------------------------------------------------------

const ACCESS_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5YWJjZGVm";

/// What the stand-in for Azure received: (method, path, body).
type Calls = Arc<Mutex<Vec<(String, String, Value)>>>;

/// A local stand-in for Azure SignalR's REST API that checks each call's bearer token the
/// way Azure does (HS256 with the access key, `aud` = the request URL) and records it.
async fn fake_azure(key: &'static str) -> (String, Calls) {
    use axum::extract::{Request as AxumRequest, State};
    use axum::routing::any;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let calls: Calls = Arc::default();

    async fn handle(
        State((base, key, calls)): State<(String, &'static str, Calls)>,
        request: AxumRequest,
    ) -> StatusCode {
        let (parts, body) = request.into_parts();
        let url = format!("{base}{}", parts.uri.path());
        let Some(token) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return StatusCode::UNAUTHORIZED;
        };
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.set_audience(&[url.as_str()]);
        if jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(key.as_bytes()),
            &validation,
        )
        .is_err()
        {
            return StatusCode::UNAUTHORIZED;
        }
        let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        calls
            .lock()
            .unwrap()
            .push((parts.method.to_string(), parts.uri.path().to_owned(), body));
        if parts.method == axum::http::Method::PUT {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        }
    }

    let app = axum::Router::new()
        .route("/api/v1/{*rest}", any(handle))
        .route("/api/hubs/{*rest}", any(handle))
        .with_state((base.clone(), key, calls.clone()));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, calls)
}

fn azure(api_base: &str, key: &str) -> AzureSignalR {
    AzureSignalR::from_connection_string(&format!(
        "Endpoint=https://teachin.service.signalr.net;AccessKey={key};Version=1.0;"
    ))
    .unwrap()
    .with_api_base(api_base)
}

#[tokio::test]
async fn the_azure_rest_sender_signs_each_call_for_its_url() {
    let (base, calls) = fake_azure(ACCESS_KEY).await;
    let azure = azure(&base, ACCESS_KEY);
    let user = UserId::new();
    azure
        .send_to_user(user, "ReceiveEvent", &[json!({"eventType": "WordExplain"})])
        .await
        .unwrap();
    azure
        .send_to_group("Admins", "UserOffline", &[json!(user.to_string())])
        .await
        .unwrap();
    azure.add_user_to_group("Admins", user).await.unwrap();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![
            (
                "POST".to_owned(),
                format!("/api/v1/hubs/notifications/users/{user}"),
                json!({"target": "ReceiveEvent", "arguments": [{"eventType": "WordExplain"}]})
            ),
            (
                "POST".to_owned(),
                "/api/v1/hubs/notifications/groups/Admins".to_owned(),
                json!({"target": "UserOffline", "arguments": [user.to_string()]})
            ),
            (
                "PUT".to_owned(),
                format!("/api/v1/hubs/notifications/groups/Admins/users/{user}"),
                Value::Null
            ),
        ]
    );

    // Signed with another key: Azure refuses, and the error says so.
    let wrong = azure_with_other_key(&base);
    let error = wrong
        .send_to_user(user, "ReceiveEvent", &[])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("401"), "{error}");
}

#[tokio::test]
async fn in_azure_mode_a_revocation_closes_the_persons_azure_connections() {
    // Azure holds the browsers' sockets, so no replica can close them itself: the bump
    // asks Azure to, for that person only, signed for the call's URL like every call.
    let (base, calls) = fake_azure(ACCESS_KEY).await;
    let namespace = format!("hubtest-{}", Uuid::new_v4().simple());
    let hub = NotificationHub::new(
        tokens(),
        redis().await,
        HubConfig::new(&namespace),
        Some(azure(&base, ACCESS_KEY)),
    );
    let (signed_out, bystander) = (UserId::new(), UserId::new());
    assert_eq!(hub.revocations().bump(signed_out).await.unwrap(), 1);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![(
            "POST".to_owned(),
            format!("/api/hubs/notifications/users/{signed_out}/:closeConnections"),
            Value::Null
        )],
        "exactly the signed-out person's connections are closed, not {bystander}'s"
    );
}

fn azure_with_other_key(base: &str) -> AzureSignalR {
    azure(base, "another-key-another-key-another-key-0000")
}

#[tokio::test]
async fn in_azure_mode_negotiate_redirects_and_the_feed_goes_out_once() {
    let (base, calls) = fake_azure(ACCESS_KEY).await;
    let namespace = format!("hubtest-{}", Uuid::new_v4().simple());
    let hub = NotificationHub::new(
        tokens(),
        redis().await,
        HubConfig::new(&namespace),
        Some(azure(&base, ACCESS_KEY)),
    );
    let router = hub::router(hub.clone());
    let admin = UserId::new();
    let token = tokens().issue(admin, Role::Admin).token;
    let response = router
        .clone()
        .oneshot(
            Request::post(format!("{}/negotiate?negotiateVersion=1", hub::HUB_PATH))
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    let url = "https://teachin.service.signalr.net/client/?hub=notifications";
    assert_eq!(body["url"], url);
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&[url]);
    let claims = jsonwebtoken::decode::<Value>(
        body["accessToken"].as_str().unwrap(),
        &jsonwebtoken::DecodingKey::from_secret(ACCESS_KEY.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["nameid"], admin.to_string());
    assert_eq!(
        calls.lock().unwrap().as_slice(),
        &[(
            "PUT".to_owned(),
            format!("/api/v1/hubs/notifications/groups/Admins/users/{admin}"),
            Value::Null
        )],
        "the admin joined Admins in Azure"
    );

    // Every replica receives each feed notification; only one sends it to Azure.
    let student = UserId::new();
    let n = notification(
        Target::User(student),
        "ReceiveEvent",
        json!({"eventType": "X"}),
    );
    let replica_b = NotificationHub::new(
        tokens(),
        redis().await,
        HubConfig::new(&namespace),
        Some(azure(&base, ACCESS_KEY)),
    );
    let sent = hub.deliver(&n).await.unwrap() + replica_b.deliver(&n).await.unwrap();
    assert_eq!(sent, 1);
    let calls_handle = calls.clone();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1],
        (
            "POST".to_owned(),
            format!("/api/v1/hubs/notifications/users/{student}"),
            json!({"target": "ReceiveEvent", "arguments": [{"eventType": "X"}]})
        )
    );

    // A non-admin's negotiate takes them out of Azure's Admins group (a demoted admin).
    let response = router
        .clone()
        .oneshot(
            Request::post(format!("{}/negotiate?negotiateVersion=1", hub::HUB_PATH))
                .header(
                    header::AUTHORIZATION,
                    format!("Bearer {}", tokens().issue(student, Role::Teacher).token),
                )
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let removal = (
        "DELETE".to_owned(),
        format!("/api/v1/hubs/notifications/groups/Admins/users/{student}"),
        Value::Null,
    );
    eventually("the removal reaches Azure", || {
        let calls = calls_handle.clone();
        let removal = removal.clone();
        async move { calls.lock().unwrap().contains(&removal) }
    })
    .await;

    // Sockets are Azure's: the local WebSocket endpoint sends clients back to negotiate.
    let response = router
        .oneshot(
            Request::get(format!("{}?access_token={token}", hub::HUB_PATH))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// A bump made on another replica arrives over the backplane (`{"revoke": user, "epoch": n}`)
/// and closes that person's connections here, and only theirs; once the epoch is stored, the
/// old token is refused at negotiate.
#[tokio::test]
async fn a_revocation_from_another_replica_closes_the_persons_connections() {
    let hub = TestHub::start(|_| {}).await;
    let connect = |token: String| Records::handshaken(&hub, token);
    let (signed_out, bystander) = (UserId::new(), UserId::new());
    let old = tokens().issue(signed_out, Role::Teacher).token;
    let mut revoked = connect(old.clone()).await;
    let mut other = connect(tokens().issue(bystander, Role::Student).token).await;

    // What another replica's `Revocations::bump` publishes, straight onto the channel.
    let bump = json!({ "revoke": signed_out, "epoch": 1 }).to_string();
    let _: i64 = hub
        .redis
        .publish(hub::backplane_channel(&hub.namespace), bump)
        .await
        .unwrap();
    let close = tokio::time::timeout(WAIT, revoked.next_non_ping())
        .await
        .expect("the connection closed in time");
    assert_eq!(
        close,
        json!({"type": 7, "error": "Unauthorized: the access token was revoked.", "allowReconnect": true})
    );
    // The bystander's connection carries on: a push still reaches it.
    assert_eq!(
        hub.hub
            .deliver_local(&Target::User(bystander), "Hello", &[json!(1)]),
        1,
        "the bystander is still connected"
    );
    let push = tokio::time::timeout(WAIT, other.next_non_ping())
        .await
        .unwrap();
    assert_eq!(push["target"], "Hello", "{push}");

    // With the epoch stored, the old token is refused before any socket opens.
    teachin_api::auth::revocation::Revocations::new(hub.redis.clone(), &hub.namespace)
        .bump(signed_out)
        .await
        .unwrap();
    let response = hub::router(hub.hub.clone())
        .oneshot(
            Request::post(format!("{}/negotiate?negotiateVersion=1", hub::HUB_PATH))
                .header(header::AUTHORIZATION, format!("Bearer {old}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
