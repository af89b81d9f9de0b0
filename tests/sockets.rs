//! Identity on open sockets (issue 15 §1, §4): the real binary (`teachin all`), a real
//! graphql-transport-ws client and a raw SignalR client over tokio-tungstenite.
//!
//! The graphql-ws socket carries subscriptions only, refuses an anonymous
//! `connection_init`, limits frames to 64 KiB and live operations per socket, and closes with
//! 4403 when its token expires and within seconds of a logout, a role change or an erasure
//! (the per-user revocation epoch), which also ends the access token over HTTP and the
//! person's SignalR connections. Privileged mutations read the caller's role from the store.

mod support;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::portal::{code, email, Portal, PASSWORD};
use support::RunningApp;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

const JWT_SECRET: &str = "a-sockets-test-secret-of-32-bytes-or-more";

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn start() -> RunningApp {
    RunningApp::start_with(&[
        ("JWT_SECRET", JWT_SECRET),
        ("TEACHIN_LOGIN_RATE_LIMIT", "100/60s"),
    ])
    .await
}

/// An admin, signed in.
async fn admin(app: &RunningApp) -> Portal {
    let address = email("admin");
    app.create_admin(&address, PASSWORD);
    let mut admin = Portal::new(app);
    admin.login(&address).await;
    admin
}

/// A student, signed up and signed in.
async fn student(app: &RunningApp) -> (Portal, String) {
    let address = email("student");
    let mut browser = Portal::new(app);
    browser.sign_up("Sam", &address).await;
    browser.login(&address).await;
    (browser, address)
}

/// A teacher created by `admin`, signed in.
async fn teacher(app: &RunningApp, admin: &Portal) -> (Portal, String) {
    let address = email("teacher");
    let r = admin
        .gql(
            "mutation($email: String!, $password: String!) {
               createUser(input: {role: TEACHER, firstName: \"Tal\", lastName: \"Teacher\", email: $email, password: $password}) { id }
             }",
            json!({ "email": address, "password": PASSWORD }),
        )
        .await;
    assert!(r["data"]["createUser"]["id"].is_string(), "{r}");
    let mut browser = Portal::new(app);
    browser.login(&address).await;
    (browser, address)
}

/// What the server sent next on a socket.
#[derive(Debug)]
enum Event {
    Text(Value),
    Closed(Option<u16>, String),
}

/// The next protocol message (pings and pongs skipped), or the close.
async fn next(socket: &mut Socket, within: Duration) -> Event {
    loop {
        let message = tokio::time::timeout(within, socket.next())
            .await
            .unwrap_or_else(|_| panic!("nothing from the server within {within:?}"));
        match message {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "ping" && v["type"] != "pong" {
                    return Event::Text(v);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return match frame {
                    Some(f) => Event::Closed(Some(f.code.into()), f.reason.to_string()),
                    None => Event::Closed(None, String::new()),
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Event::Closed(None, e.to_string()),
            None => return Event::Closed(None, "the stream ended".into()),
        }
    }
}

async fn closed_with(socket: &mut Socket, within: Duration) -> u16 {
    let started = Instant::now();
    loop {
        let left = within.saturating_sub(started.elapsed());
        match next(socket, left.max(Duration::from_millis(1))).await {
            Event::Closed(Some(code), _) => return code,
            Event::Closed(None, why) => panic!("the socket ended without a close code: {why}"),
            Event::Text(_) => continue,
        }
    }
}

/// A graphql-transport-ws socket, not yet initialised.
async fn open(app: &RunningApp) -> Socket {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/graphql/ws", app.manager.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request).await.unwrap().0
}

async fn send(socket: &mut Socket, v: Value) {
    socket.send(Message::text(v.to_string())).await.unwrap();
}

/// A socket initialised with `token` and acknowledged.
async fn connect(app: &RunningApp, token: &str) -> Socket {
    let mut socket = open(app).await;
    send(
        &mut socket,
        json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }),
    )
    .await;
    match next(&mut socket, Duration::from_secs(10)).await {
        Event::Text(ack) => assert_eq!(ack["type"], "connection_ack", "{ack}"),
        other => panic!("no acknowledgement: {other:?}"),
    }
    socket
}

async fn subscribe(socket: &mut Socket, id: &str, query: &str) {
    send(
        socket,
        json!({ "id": id, "type": "subscribe", "payload": { "query": query } }),
    )
    .await;
}

/// The `extensions.code` of an `error` message (or of a `next` carrying errors).
fn ws_code(m: &Value) -> Option<String> {
    let errors = if m["type"] == "error" {
        &m["payload"]
    } else {
        &m["payload"]["errors"]
    };
    errors[0]["extensions"]["code"].as_str().map(str::to_owned)
}

/// A SignalR connection of the JSON hub protocol, handshake done.
async fn hub(app: &RunningApp, token: &str) -> Socket {
    let negotiate: Value = reqwest::Client::new()
        .post(format!(
            "{}/hubs/notifications/negotiate?negotiateVersion=1",
            app.manager
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = negotiate["connectionToken"].as_str().unwrap();
    let url = format!(
        "{}/hubs/notifications?id={id}&access_token={token}",
        app.manager.replace("http://", "ws://")
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.to_text().unwrap(), "{}\u{1e}");
    socket
}

/// The SignalR close record the hub sends before closing (`{"type":7,…}`).
async fn hub_close_record(socket: &mut Socket, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let left = within.saturating_sub(started.elapsed());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .expect("the hub closed the connection in time")
            .expect("a close record before the socket ends")
            .unwrap();
        if let Message::Text(text) = message {
            for record in text.as_str().split('\u{1e}').filter(|r| !r.is_empty()) {
                let v: Value = serde_json::from_str(record).unwrap();
                if v["type"] == 7 {
                    return v;
                }
            }
        }
    }
}

async fn negotiate_status(app: &RunningApp, token: &str) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "{}/hubs/notifications/negotiate?negotiateVersion=1",
            app.manager
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// How soon a revocation must reach open sockets.
const WITHIN_SECONDS: Duration = Duration::from_secs(5);

#[tokio::test]
async fn the_socket_carries_subscriptions_only() {
    let app = start().await;
    let (student, _) = student(&app).await;
    let events = app.event_count().await;
    let mut socket = connect(&app, student.token()).await;
    subscribe(&mut socket, "q", "{ me { userId } }").await;
    subscribe(
        &mut socket,
        "m",
        "mutation { addWordCard(hebrew: \"ספר\", english: \"book\") { id } }",
    )
    .await;
    subscribe(
        &mut socket,
        "both",
        "subscription S { notifications { id } } query Q { me { userId } }",
    )
    .await;
    for id in ["q", "m", "both"] {
        let Event::Text(m) = next(&mut socket, Duration::from_secs(10)).await else {
            panic!("the socket closed");
        };
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(ws_code(&m).as_deref(), Some("SUBSCRIPTIONS_ONLY"), "{m}");
    }
    // Nothing ran: no word card was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.event_count().await, events);
    // The socket is still open for subscriptions: a replay the student may not see is
    // refused by its rule (so it ran), not by the socket.
    subscribe(
        &mut socket,
        "s",
        &format!(
            "subscription {{ sessionReplayStream(sessionType: TUTOR, id: \"{}\") {{ sequence }} }}",
            Uuid::new_v4()
        ),
    )
    .await;
    let Event::Text(m) = next(&mut socket, Duration::from_secs(10)).await else {
        panic!("the socket closed");
    };
    assert_eq!(m["id"], "s", "{m}");
    assert_ne!(ws_code(&m).as_deref(), Some("SUBSCRIPTIONS_ONLY"), "{m}");
}

#[tokio::test]
async fn connection_init_without_a_valid_token_is_refused() {
    let app = start().await;
    for payload in [
        json!({}),
        json!({ "authorization": "Bearer not.a.jwt" }),
        json!({ "token": "" }),
    ] {
        let mut socket = open(&app).await;
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": payload }),
        )
        .await;
        assert_eq!(
            closed_with(&mut socket, Duration::from_secs(10)).await,
            4403,
            "{payload}"
        );
    }
    // Subscribing before connection_init: 4401, as the protocol says.
    let mut socket = open(&app).await;
    subscribe(&mut socket, "1", "subscription { notifications { id } }").await;
    assert_eq!(
        closed_with(&mut socket, Duration::from_secs(10)).await,
        4401
    );
}

#[tokio::test]
async fn a_frame_over_64_kib_closes_the_socket() {
    let app = start().await;
    let (student, _) = student(&app).await;
    let mut socket = connect(&app, student.token()).await;
    // Just under the limit is fine.
    send(
        &mut socket,
        json!({ "type": "ping", "payload": { "pad": "x".repeat(60 * 1024) } }),
    )
    .await;
    let pong = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(pong.to_text().unwrap().contains("pong"), "{pong:?}");
    // Over it, the socket closes with 1009 (Message Too Big).
    let padding = " ".repeat(70 * 1024);
    subscribe(
        &mut socket,
        "big",
        &format!("subscription {{ notifications {{ id }} {padding} }}"),
    )
    .await;
    assert_eq!(
        closed_with(&mut socket, Duration::from_secs(10)).await,
        1009
    );
}

#[tokio::test]
async fn live_operations_per_socket_are_capped() {
    let app = start().await;
    let (student, _) = student(&app).await;
    let mut socket = connect(&app, student.token()).await;
    for id in 0..16 {
        subscribe(
            &mut socket,
            &id.to_string(),
            "subscription { notifications { id } }",
        )
        .await;
    }
    subscribe(&mut socket, "17th", "subscription { notifications { id } }").await;
    let Event::Text(m) = next(&mut socket, Duration::from_secs(10)).await else {
        panic!("the socket closed");
    };
    assert_eq!(m["id"], "17th", "{m}");
    assert_eq!(ws_code(&m).as_deref(), Some("TOO_MANY_OPERATIONS"), "{m}");
    // Completing one makes room again.
    send(&mut socket, json!({ "id": "0", "type": "complete" })).await;
    subscribe(
        &mut socket,
        "again",
        "subscription { notifications { id } }",
    )
    .await;
    subscribe(
        &mut socket,
        "one too many",
        "subscription { notifications { id } }",
    )
    .await;
    let m = loop {
        let Event::Text(m) = next(&mut socket, Duration::from_secs(10)).await else {
            panic!("the socket closed");
        };
        // The server confirms the completed one.
        if !(m["type"] == "complete" && m["id"] == "0") {
            break m;
        }
    };
    assert_eq!(m["id"], "one too many", "{m}");
    assert_eq!(ws_code(&m).as_deref(), Some("TOO_MANY_OPERATIONS"), "{m}");
}

#[tokio::test]
async fn a_socket_closes_with_4403_when_its_token_expires() {
    use teachin_api::auth::tokens::AccessTokens;
    use teachin_domain::actor::Role;
    use teachin_domain::ids::UserId;
    let app = start().await;
    let (student, _) = student(&app).await;
    let short = AccessTokens::new(JWT_SECRET.as_bytes(), "teachin", "teachin-portals")
        .unwrap()
        .with_ttl(Duration::from_secs(3))
        .issue(UserId(student.id().parse().unwrap()), Role::Student);
    let mut socket = connect(&app, &short.token).await;
    subscribe(&mut socket, "n", "subscription { notifications { id } }").await;
    let started = Instant::now();
    assert_eq!(
        closed_with(&mut socket, Duration::from_secs(15)).await,
        4403
    );
    // At the expiry, not at the verifier's leeway after it.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn logout_closes_sockets_and_ends_the_access_token() {
    let app = start().await;
    let (mut student, address) = student(&app).await;
    let token = student.token().to_owned();
    let mut socket = connect(&app, &token).await;
    subscribe(&mut socket, "n", "subscription { notifications { id } }").await;
    let mut signalr = hub(&app, &token).await;

    let r = student.gql("mutation { logout }", json!({})).await;
    assert_eq!(r["data"]["logout"], true, "{r}");

    assert_eq!(closed_with(&mut socket, WITHIN_SECONDS).await, 4403);
    let close = hub_close_record(&mut signalr, WITHIN_SECONDS).await;
    assert!(
        close["error"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked"),
        "{close}"
    );
    // The token no longer works anywhere.
    let r = student.gql("{ me { userId } }", json!({})).await;
    assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    let mut again = open(&app).await;
    send(
        &mut again,
        json!({ "type": "connection_init", "payload": { "token": token } }),
    )
    .await;
    assert_eq!(closed_with(&mut again, Duration::from_secs(10)).await, 4403);
    assert_eq!(negotiate_status(&app, &token).await, 401);

    // Signing in again gives a token that works.
    student.login(&address).await;
    let r = student.gql("{ me { userId } }", json!({})).await;
    assert_ne!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    connect(&app, student.token()).await;
}

#[tokio::test]
async fn a_role_change_closes_the_socket_and_the_old_role_is_gone() {
    let app = start().await;
    let admin = admin(&app).await;
    let (mut teacher, address) = teacher(&app, &admin).await;
    let old = teacher.token().to_owned();
    let mut socket = connect(&app, &old).await;
    subscribe(&mut socket, "n", "subscription { notifications { id } }").await;
    let mut signalr = hub(&app, &old).await;

    let r = admin
        .gql(
            "mutation($u: UUID!) { changeRole(userId: $u, role: STUDENT) { id } }",
            json!({ "u": teacher.id() }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");

    assert_eq!(closed_with(&mut socket, WITHIN_SECONDS).await, 4403);
    hub_close_record(&mut signalr, WITHIN_SECONDS).await;
    // The teacher's token no longer creates classes...
    let r = teacher
        .gql(
            "mutation { createClass(name: \"After demotion\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    // ...and signing in again gives the new role, which may not.
    let session = teacher.login(&address).await;
    assert_eq!(session["role"], "STUDENT");
    let r = teacher
        .gql(
            "mutation { createClass(name: \"After demotion\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{r}");
}

#[tokio::test]
async fn an_erased_users_token_no_longer_reads_me() {
    let app = start().await;
    let admin = admin(&app).await;
    let (student, _) = student(&app).await;
    // The profile is readable once the read model has it.
    let started = Instant::now();
    loop {
        let r = student.gql("{ me { userId } }", json!({})).await;
        if r["data"]["me"]["userId"] == student.id() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut socket = connect(&app, student.token()).await;
    subscribe(&mut socket, "n", "subscription { notifications { id } }").await;

    let r = admin
        .gql(
            "mutation($u: UUID!) { eraseUser(userId: $u) { id } }",
            json!({ "u": student.id() }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");

    let r = student.gql("{ me { userId } }", json!({})).await;
    assert_eq!(code(&r).as_deref(), Some("UNAUTHENTICATED"), "{r}");
    assert_eq!(closed_with(&mut socket, WITHIN_SECONDS).await, 4403);
}

#[tokio::test]
async fn privileged_mutations_read_the_callers_role_from_the_store() {
    use teachin_api::auth::tokens::AccessTokens;
    use teachin_domain::actor::Role;
    use teachin_domain::ids::UserId;
    let app = start().await;
    let admin = admin(&app).await;
    let (teacher, _) = teacher(&app, &admin).await;
    let (student, _) = student(&app).await;
    // A token whose role claim says admin for someone the store knows as a teacher: what a
    // demoted admin would hold if the revocation bump had been lost.
    let stale = AccessTokens::new(JWT_SECRET.as_bytes(), "teachin", "teachin-portals")
        .unwrap()
        .issue(UserId(teacher.id().parse().unwrap()), Role::Admin);
    let mut holder = Portal::new(&app);
    holder.token = Some(stale.token);
    let privileged = [
        (
            "mutation($u: UUID!) { changeRole(userId: $u, role: ADMIN) { id } }",
            json!({ "u": teacher.id() }),
        ),
        (
            "mutation($e: String!) { createUser(input: {role: ADMIN, firstName: \"E\", lastName: \"V\", email: $e, password: \"correct horse battery\"}) { id } }",
            json!({ "e": email("eve") }),
        ),
        (
            "mutation($u: UUID!) { eraseUser(userId: $u) { id } }",
            json!({ "u": student.id() }),
        ),
        (
            "mutation($t: UUID!, $s: UUID!) { assignStudent(teacherId: $t, studentId: $s) { id } }",
            json!({ "t": admin.id(), "s": student.id() }),
        ),
    ];
    for (document, variables) in privileged {
        let r = holder.gql(document, variables).await;
        assert_eq!(code(&r).as_deref(), Some("FORBIDDEN"), "{document}: {r}");
    }
    // The real admin still may.
    let r = admin
        .gql(
            "mutation($t: UUID!, $s: UUID!) { assignStudent(teacherId: $t, studentId: $s) { id } }",
            json!({ "t": teacher.id(), "s": student.id() }),
        )
        .await;
    assert!(code(&r).is_none(), "{r}");
}
