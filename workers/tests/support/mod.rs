//! What the engine's end-to-end tests share: a fresh database with the relay, the manager's
//! callback consumers and the projection daemon running on it, the test LLM server, and a
//! `StreamPush` that records what the hub would have pushed.

#![allow(dead_code)] // each test file uses its own part

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use teachin_commands::testing::TestDatabase;
use teachin_commands::{command_bus, BusSettings, CommandBus, CommandContext, PortSecrets};
use teachin_domain::actor::{Actor, Role};
use teachin_domain::ids::{RequestId, TutorSessionId, UserId};
use teachin_domain::personal_data::Sealed;
use teachin_domain::tutor_session::{
    SessionKind, TutorSession, TutorSessionCommand, TutorSessionEvent,
};
use teachin_domain::user::{HebrewLevel, Language, User, UserCommand};
use teachin_projections::daemon::{DaemonSettings, ProjectionDaemon};
use teachin_workers::ai::openai::RetryPolicy;
use teachin_workers::bus::postgres::{PostgresBus, PostgresBusConfig};
use teachin_workers::bus::Bus;
use teachin_workers::callbacks::{CallbackDeps, CallbackSettings, StreamPush};
use teachin_workers::consumer::ConsumerConfig;
use teachin_workers::engine::settings::{AiBackend, AiSettings, WebSearchSettings};
use teachin_workers::engine::{EngineDeps, EngineSettings};
use teachin_workers::relay::{OutboxRelay, RelayConfig};
use teachin_workers::testing::{LlmReply, LlmServer, SeenRequest};
use teachin_workers::{run_engine, run_manager_callbacks};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const MODEL: &str = "llama-test";
pub const TITLE_PROMPT: &str = "Give this conversation a short title";

/// Waits, boundedly, until `check` gives something.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the hub would have pushed, in push order.
#[derive(Default)]
pub struct RecordingPush {
    pub pushed: Mutex<Vec<(UserId, Value)>>,
}

#[async_trait]
impl StreamPush for RecordingPush {
    async fn push_frame(&self, student: UserId, payload: Value) {
        self.pushed.lock().unwrap().push((student, payload));
    }
}

impl RecordingPush {
    /// The `StreamEvent` arguments pushed to `student` for `request`.
    pub fn frames(&self, student: UserId, request: RequestId) -> Vec<Value> {
        self.pushed
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, p)| *s == student && p["requestId"] == request.to_string())
            .map(|(_, p)| p.clone())
            .collect()
    }
}

pub fn quick_consumer() -> ConsumerConfig {
    ConsumerConfig {
        concurrency: 4,
        receive_wait: Duration::from_millis(200),
        renew_every: Duration::from_secs(20),
        shutdown_grace: Duration::from_secs(10),
        error_pause: Duration::from_millis(50),
    }
}

/// A database, the buses and servers around it, and the roles running on them.
pub struct World {
    pub db: TestDatabase,
    pub commands: CommandBus,
    pub bus: Arc<dyn Bus>,
    pub llm: LlmServer,
    pub push: Arc<RecordingPush>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl World {
    /// Everything but the engine: the relay, the callback consumers, the read models.
    pub async fn new(lock_duration: Duration) -> World {
        let db = TestDatabase::new().await;
        let commands = command_bus(
            db.pool.clone(),
            PortSecrets {
                claims_hash_key: b"engine-tests-key".to_vec(),
            },
            BusSettings::default(),
        );
        let bus: Arc<dyn Bus> = Arc::new(PostgresBus::new(
            db.pool.clone(),
            PostgresBusConfig {
                lock_duration,
                max_delivery_count: 10,
                min_poll: Duration::from_millis(10),
                max_poll: Duration::from_millis(100),
            },
        ));
        let llm = LlmServer::start().await;
        llm.when(
            TITLE_PROMPT,
            LlmReply::answer(MODEL, &[r#"{"title": "#, r#""ברכות בעברית"}"#], (3, 4)),
        );
        let (stop, stopped) = watch::channel(false);
        let push = Arc::new(RecordingPush::default());
        let mut world = World {
            db,
            commands,
            bus,
            llm,
            push,
            stop,
            tasks: Vec::new(),
        };
        let relay = OutboxRelay::new(
            world.db.pool.clone(),
            world.bus.clone(),
            RelayConfig::default(),
        );
        world.tasks.push(tokio::spawn(relay.run(stopped.clone())));
        let callbacks = CallbackDeps {
            pool: world.db.pool.clone(),
            bus: world.bus.clone(),
            commands: world.commands.clone(),
            push: world.push.clone(),
            settings: CallbackSettings {
                results: quick_consumer(),
                frames: quick_consumer(),
                ..CallbackSettings::default()
            },
        };
        world.tasks.push(tokio::spawn(run_manager_callbacks(
            callbacks,
            stopped.clone(),
        )));
        let daemon = ProjectionDaemon::new(
            world.db.pool.clone(),
            teachin_projections::read_models::all(),
            DaemonSettings::default(),
        );
        world.tasks.push(tokio::spawn(daemon.run(stopped)));
        world
    }

    pub fn engine_deps(&self, web_search: WebSearchSettings) -> EngineDeps {
        let ai = AiSettings {
            backend: AiBackend::OpenAiCompatible {
                base_url: format!("{}/v1", self.llm.url()),
                api_key: Some("sk-test".into()),
                model: MODEL.into(),
            },
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_secs(5),
            },
        };
        EngineDeps {
            pool: self.db.pool.clone(),
            bus: self.bus.clone(),
            commands: self.commands.clone(),
            provider: ai.provider(),
            settings: EngineSettings {
                consumer: quick_consumer(),
                web_search,
                ..EngineSettings::default()
            },
        }
    }

    /// Starts an engine worker; abort the handle to kill it.
    pub fn start_engine(&self, web_search: WebSearchSettings) -> JoinHandle<()> {
        tokio::spawn(run_engine(
            self.engine_deps(web_search),
            self.stop.subscribe(),
        ))
    }

    pub async fn shut_down(self) {
        self.stop.send(true).unwrap();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the roles stop")
                .unwrap();
        }
    }

    pub async fn post(
        &self,
        session: TutorSessionId,
        student: UserId,
        kind: SessionKind,
        text: &str,
        page_context: Option<&str>,
    ) -> RequestId {
        let request_id = RequestId::new();
        self.commands
            .execute::<TutorSession>(
                &session.to_string(),
                TutorSessionCommand::PostStudentMessage {
                    student,
                    kind,
                    text: text.into(),
                    page_context: page_context.map(str::to_string),
                    request_id,
                },
                &CommandContext::new(Actor::user(student, Role::Student), "test"),
            )
            .await
            .expect("message posted");
        request_id
    }

    /// A student who reads Hebrew, at the intermediate level, interested in music.
    pub async fn register(&self, first_name: &str) -> UserId {
        self.register_as(first_name, Role::Student).await
    }

    /// A registered user of `role` (students are intermediate and like music).
    pub async fn register_as(&self, first_name: &str, role: Role) -> UserId {
        let id = UserId::new();
        let student = role == Role::Student;
        // Only an admin may register a teacher or an admin.
        let registered_by = if student {
            Actor::Anonymous
        } else {
            Actor::System
        };
        self.commands
            .execute::<User>(
                &id.to_string(),
                UserCommand::Register {
                    user_id: id,
                    role,
                    first_name: first_name.into(),
                    last_name: "Levi".into(),
                    email: format!("{}@example.com", id.0.simple()),
                    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
                    preferred_language: Language::He,
                    hebrew_level: student.then_some(HebrewLevel::Intermediate),
                    interests: if student {
                        vec!["music".into()]
                    } else {
                        vec![]
                    },
                    registered_by,
                },
                &CommandContext::new(registered_by, "sign-up"),
            )
            .await
            .expect("registered");
        id
    }

    /// The events of `event_type` in one stream, decoded, with their metadata.
    pub async fn logged<E: DeserializeOwned>(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        event_type: &str,
    ) -> Vec<(E, Value)> {
        let rows: Vec<(Value, Value)> = sqlx::query_as(
            "SELECT payload, metadata FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = $3
              ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(event_type)
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|(payload, metadata)| (serde_json::from_value(payload).unwrap(), metadata))
            .collect()
    }

    /// The session's events of `event_type`, decoded, with their metadata.
    pub async fn events(
        &self,
        session: TutorSessionId,
        event_type: &str,
    ) -> Vec<(TutorSessionEvent, Value)> {
        self.logged("TutorSession", &session.to_string(), event_type)
            .await
    }

    /// Waits for the session's first `event_type` event.
    pub async fn wait_for(
        &self,
        session: TutorSessionId,
        event_type: &str,
    ) -> (TutorSessionEvent, Value) {
        eventually(event_type, || async {
            self.events(session, event_type).await.into_iter().next()
        })
        .await
    }

    pub async fn open(&self, sealed: &Sealed) -> String {
        self.commands
            .services()
            .vault
            .open(sealed)
            .await
            .unwrap()
            .expect("not erased")
    }

    /// The chat-completion requests the LLM got, title requests left out.
    pub fn chat_requests(&self) -> Vec<SeenRequest> {
        self.llm
            .seen()
            .into_iter()
            .filter(|r| !r.text().contains(TITLE_PROMPT))
            .collect()
    }

    /// Waits until the student was pushed a closing frame for `request`; returns all frames.
    pub async fn pushed_until_closed(&self, student: UserId, request: RequestId) -> Vec<Value> {
        eventually("the closing frame was pushed", || async {
            let frames = self.push.frames(student, request);
            frames
                .iter()
                .any(|f| f["stage"] == "Last" || f["stage"] == "Error")
                .then_some(frames)
        })
        .await
    }
}
