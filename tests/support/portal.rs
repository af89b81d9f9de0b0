//! A portal as the end-to-end tests drive it: GraphQL over HTTP with a cookie jar (the
//! refresh and CSRF cookies), the bearer access token and the CSRF token.

#![allow(dead_code)] // each test file uses its own part

use super::RunningApp;
use serde_json::{json, Value};
use uuid::Uuid;

/// The password every test account is given.
pub const PASSWORD: &str = "correct horse battery";

pub struct Portal {
    pub http: reqwest::Client,
    pub jar: std::sync::Arc<reqwest::cookie::Jar>,
    pub url: String,
    pub token: Option<String>,
    pub csrf: Option<String>,
    pub user_id: Option<String>,
}

impl Portal {
    pub fn new(app: &RunningApp) -> Self {
        Self::at(&app.manager)
    }

    /// A portal of the manager at `manager` (`http://127.0.0.1:PORT`).
    pub fn at(manager: &str) -> Self {
        let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
        Portal {
            http: reqwest::Client::builder()
                .cookie_provider(jar.clone())
                .build()
                .unwrap(),
            jar,
            url: format!("{manager}/graphql"),
            token: None,
            csrf: None,
            user_id: None,
        }
    }

    /// [`Portal::gql`], with `Err` when the manager did not answer (killed, restarting): the
    /// command may or may not have been applied, and a portal retries it with the same
    /// idempotency key.
    pub async fn try_gql(&self, query: &str, variables: Value) -> Result<Value, reqwest::Error> {
        let mut request = self
            .http
            .post(&self.url)
            .json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request.send().await?.json().await
    }

    pub async fn post(&self, body: Value, csrf: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(&self.url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A request as the portals send it: JSON, the bearer token, and the CSRF token echoed
    /// (which `refreshSession` and a cookie `logout` require).
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        let body = json!({ "query": query, "variables": variables });
        self.post(body, self.csrf.as_deref()).await.1
    }

    pub async fn sign_up(&self, first: &str, email: &str) -> String {
        let r = self
            .gql(
                "mutation($email: String!, $first: String!, $password: String!) {
                   signUp(input: {firstName: $first, lastName: \"Test\", email: $email, password: $password}) { userId role }
                 }",
                json!({ "email": email, "first": first, "password": PASSWORD }),
            )
            .await;
        assert_eq!(r["data"]["signUp"]["role"], "STUDENT", "{r}");
        r["data"]["signUp"]["userId"].as_str().unwrap().to_string()
    }

    pub async fn login(&mut self, email: &str) -> Value {
        // A portal signing in forgets the token it had (it may have been revoked).
        self.token = None;
        let r = self
            .gql(
                "mutation($email: String!, $password: String!) {
                   login(email: $email, password: $password) { accessToken csrfToken userId role expiresAt }
                 }",
                json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        let session = r["data"]["login"].clone();
        assert!(session.is_object(), "login failed: {r}");
        self.token = session["accessToken"].as_str().map(str::to_owned);
        self.csrf = session["csrfToken"].as_str().map(str::to_owned);
        self.user_id = session["userId"].as_str().map(str::to_owned);
        session
    }

    pub async fn refresh(&mut self) -> Value {
        let csrf = self.csrf.clone();
        let (_, r) = self
            .post(
                json!({ "query": "mutation { refreshSession { accessToken csrfToken userId role } }" }),
                csrf.as_deref(),
            )
            .await;
        if let Some(session) = r["data"]["refreshSession"].as_object() {
            self.token = session["accessToken"].as_str().map(str::to_owned);
            self.csrf = session["csrfToken"].as_str().map(str::to_owned);
        }
        r
    }

    /// A cookie the browser holds for the API.
    pub fn cookie(&self, name: &str) -> Option<String> {
        use reqwest::cookie::CookieStore;
        let header = self.jar.cookies(&self.url.parse().unwrap())?;
        header
            .to_str()
            .unwrap()
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }

    pub fn token(&self) -> &str {
        self.token.as_deref().unwrap()
    }

    pub fn id(&self) -> &str {
        self.user_id.as_deref().unwrap()
    }
}

pub fn code(response: &Value) -> Option<String> {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned)
}

/// A fresh address, so tests never share an account.
pub fn email(name: &str) -> String {
    format!("{name}-{}@example.com", Uuid::new_v4().simple())
}

/// A new admin (made by the operator's command, as in production), signed in.
pub async fn admin(app: &RunningApp) -> Portal {
    let address = email("admin");
    app.create_admin(&address, PASSWORD);
    let mut portal = Portal::new(app);
    portal.login(&address).await;
    portal
}

/// A new teacher, created by `admin` (teachers cannot sign up), signed in.
pub async fn teacher(app: &RunningApp, admin: &Portal, name: &str) -> Portal {
    let address = email(name);
    let r = admin
        .gql(
            "mutation($email: String!, $name: String!, $password: String!) {
               createUser(input: {role: TEACHER, firstName: $name, lastName: \"Teacher\", email: $email, password: $password}) { id }
             }",
            json!({ "email": address, "name": name, "password": PASSWORD }),
        )
        .await;
    assert!(r["data"]["createUser"]["id"].is_string(), "{r}");
    let mut portal = Portal::new(app);
    portal.login(&address).await;
    portal
}

/// A new student who signed up, signed in.
pub async fn student(app: &RunningApp, name: &str) -> Portal {
    let address = email(name);
    let mut portal = Portal::new(app);
    portal.sign_up(name, &address).await;
    portal.login(&address).await;
    portal
}

/// The smallest file the avatar check takes for a PNG: the signature, then padding.
pub fn png() -> Vec<u8> {
    [&b"\x89PNG\r\n\x1a\n"[..], &[0u8; 64][..]].concat()
}

impl Portal {
    /// Asks for an avatar upload URL for `user` and uploads `bytes` (a PNG) there, as the
    /// portal's browser does; returns the path to confirm.
    pub async fn upload_avatar(&self, user: &str, bytes: Vec<u8>) -> String {
        let r = self
            .gql(
                "mutation($s: UUID!, $n: Int!) { requestAvatarUpload(userId: $s, contentType: \"image/png\", size: $n) { uploadUrl path headers { name value } } }",
                json!({ "s": user, "n": bytes.len() }),
            )
            .await;
        let ticket = &r["data"]["requestAvatarUpload"];
        let mut put = reqwest::Client::new()
            .put(
                ticket["uploadUrl"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{r}")),
            )
            .body(bytes);
        for h in ticket["headers"].as_array().unwrap() {
            put = put.header(h["name"].as_str().unwrap(), h["value"].as_str().unwrap());
        }
        let status = put.send().await.unwrap().status();
        assert!(status.is_success(), "upload answered {status}");
        ticket["path"].as_str().unwrap().to_string()
    }
}
