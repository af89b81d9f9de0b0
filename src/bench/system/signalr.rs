//! A minimal SignalR client: just enough of the protocol the manager's hub speaks
//! (`teachin_api::hub`) to hold a student's connection open and time what is pushed to it.
//!
//! Why our own: the realtime figure needs a thousand connections from one process, and the
//! only stock client is JavaScript. The framing and message parsing are the hub's own
//! (`teachin_api::hub::protocol`), so client and server cannot disagree on the wire format:
//! negotiate (version 1, bearer token) → WebSocket with `id` and `access_token` → JSON
//! handshake → records separated by `0x1E`; server pings are answered, and the client sends
//! its own keep-alive so the hub's client timeout never closes an idle connection.

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use std::time::Duration;
use teachin_api::hub::protocol::{self, Incoming, RecordBuffer};
use teachin_api::hub::HUB_PATH;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How often the client pings when it has sent nothing else (the stock client's default).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// A server-to-client invocation: `target(arguments…)`.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub target: String,
    pub arguments: Vec<Value>,
}

/// One open hub connection, past the handshake.
pub struct HubConnection {
    socket: Socket,
    records: RecordBuffer,
    pending: std::collections::VecDeque<String>,
    last_sent: Instant,
}

impl HubConnection {
    /// Negotiates with `manager` (`http://host:port`) as the holder of `token`, opens the
    /// WebSocket and completes the handshake.
    pub async fn connect(
        http: &reqwest::Client,
        manager: &str,
        token: &str,
    ) -> anyhow::Result<Self> {
        let negotiated: Value = http
            .post(format!("{manager}{HUB_PATH}/negotiate?negotiateVersion=1"))
            .bearer_auth(token)
            .send()
            .await
            .context("negotiate")?
            .error_for_status()
            .context("negotiate")?
            .json()
            .await
            .context("negotiate's answer")?;
        let connection_token = negotiated["connectionToken"]
            .as_str()
            .context("negotiate answered without a connectionToken")?;
        let ws_base = manager
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .context("the manager's address is not http://")?;
        let url = format!("{ws_base}{HUB_PATH}?id={connection_token}&access_token={token}");
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .context("the WebSocket upgrade")?;
        let mut connection = HubConnection {
            socket,
            records: RecordBuffer::default(),
            pending: Default::default(),
            last_sent: Instant::now(),
        };
        connection
            .send(&format!(
                "{{\"protocol\":\"{}\",\"version\":1}}{}",
                protocol::PROTOCOL,
                protocol::RECORD_SEPARATOR
            ))
            .await?;
        let answer = connection
            .next_record()
            .await?
            .context("the hub closed the connection during the handshake")?;
        let answer: Value = serde_json::from_str(&answer).context("the handshake answer")?;
        if let Some(error) = answer.get("error") {
            bail!("the hub refused the handshake: {error}");
        }
        Ok(connection)
    }

    /// The next invocation the hub sends, answering pings meanwhile and keeping the
    /// connection alive. `None` when the hub closes the connection.
    pub async fn next_invocation(&mut self) -> anyhow::Result<Option<Invocation>> {
        loop {
            let Some(record) = self.next_record().await? else {
                return Ok(None);
            };
            match protocol::parse(&record).context("a record from the hub")? {
                Incoming::Invocation {
                    target, arguments, ..
                } => return Ok(Some(Invocation { target, arguments })),
                Incoming::Ping => self.send(&protocol::ping()).await?,
                Incoming::Close { error } => {
                    if let Some(error) = error {
                        bail!("the hub closed the connection: {error}");
                    }
                    return Ok(None);
                }
                Incoming::StreamInvocation { .. } | Incoming::Ignored { .. } => {}
            }
        }
    }

    /// Closes the WebSocket politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.socket
            .send(Message::text(text))
            .await
            .context("writing to the hub")?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// The next complete record; pings the hub whenever the client has been quiet for
    /// [`KEEP_ALIVE`].
    async fn next_record(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(record) = self.pending.pop_front() {
                return Ok(Some(record));
            }
            let quiet_until = self.last_sent + KEEP_ALIVE;
            let frame = tokio::select! {
                frame = self.socket.next() => frame,
                _ = tokio::time::sleep_until(quiet_until) => {
                    self.send(&protocol::ping()).await?;
                    continue;
                }
            };
            match frame {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(e).context("reading from the hub"),
                Some(Ok(Message::Text(text))) => {
                    let records = self
                        .records
                        .push(text.as_str())
                        .context("a record from the hub")?;
                    self.pending.extend(records);
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
