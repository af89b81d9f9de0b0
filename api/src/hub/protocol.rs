//! The ASP.NET Core SignalR JSON hub protocol, the wire format the stock `@microsoft/signalr`
//! client speaks once its WebSocket is open.
//!
//! Why by hand: there is no maintained Rust SignalR server, and the protocol is small — a
//! handshake, then JSON records each terminated by the record separator `0x1E`. A WebSocket
//! frame may carry several records, and a record may be split across frames, so reading goes
//! through [`RecordBuffer`], which keeps the incomplete tail. Everything the server writes is
//! produced here, so the shapes the client depends on live in one place.
//!
//! | type | message | direction here |
//! |---|---|---|
//! | — | handshake `{"protocol":"json","version":1}` → `{}` or `{"error":…}` | both |
//! | 1 | invocation `{type, invocationId?, target, arguments}` | both (client → hub methods) |
//! | 3 | completion `{type, invocationId, result? / error?}` | server → client |
//! | 4 | stream invocation | client → server, refused with a completion |
//! | 6 | ping `{type:6}` | both |
//! | 7 | close `{type:7, error?, allowReconnect?}` | both |
//! | 2, 5, 8, 9 | stream item, cancel, ack, sequence | ignored (no streaming, no stateful reconnect) |

use serde::Deserialize;
use serde_json::{json, Value};

/// Ends every record of the text protocols.
pub const RECORD_SEPARATOR: char = '\u{1e}';

/// The largest record (or incomplete tail) accepted from a client: ASP.NET Core's default
/// `MaximumReceiveMessageSize`. A client has nothing big to send to this hub.
pub const MAX_RECORD_BYTES: usize = 32 * 1024;

/// The protocol this hub speaks and the versions of it it accepts. Version 2 only adds the
/// stateful-reconnect messages, which this hub never offers in negotiate, so a version-2
/// client behaves as version 1 here.
pub const PROTOCOL: &str = "json";
const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u64> = 1..=2;

/// Accumulates text from WebSocket frames and yields complete records.
#[derive(Debug, Default)]
pub struct RecordBuffer {
    tail: String,
}

/// A client sent more than [`MAX_RECORD_BYTES`] without a record separator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a message exceeded the maximum size of {MAX_RECORD_BYTES} bytes")]
pub struct RecordTooLarge;

impl RecordBuffer {
    /// Adds a frame's text and returns the records it completed, separators removed. Empty
    /// records (two separators in a row) are skipped.
    pub fn push(&mut self, text: &str) -> Result<Vec<String>, RecordTooLarge> {
        self.tail.push_str(text);
        let mut records = Vec::new();
        if let Some(last) = self.tail.rfind(RECORD_SEPARATOR) {
            let rest = self.tail.split_off(last + RECORD_SEPARATOR.len_utf8());
            let complete = std::mem::replace(&mut self.tail, rest);
            for record in complete.split(RECORD_SEPARATOR) {
                if record.len() > MAX_RECORD_BYTES {
                    return Err(RecordTooLarge);
                }
                if !record.is_empty() {
                    records.push(record.to_owned());
                }
            }
        }
        if self.tail.len() > MAX_RECORD_BYTES {
            return Err(RecordTooLarge);
        }
        Ok(records)
    }

    /// Whether an incomplete record is waiting for its separator.
    pub fn has_partial(&self) -> bool {
        !self.tail.is_empty()
    }
}

/// What the handshake request asked for.
#[derive(Debug, Deserialize)]
struct HandshakeRequest {
    protocol: String,
    version: u64,
}

/// Checks the client's handshake record. `Ok` means answer [`handshake_ok`]; `Err` carries
/// the message for [`handshake_error`], after which the connection is closed.
pub fn check_handshake(record: &str) -> Result<(), String> {
    let request: HandshakeRequest = serde_json::from_str(record)
        .map_err(|e| format!("The handshake request is not valid: {e}."))?;
    if request.protocol != PROTOCOL {
        return Err(format!(
            "The protocol '{}' is not supported.",
            request.protocol
        ));
    }
    if !SUPPORTED_VERSIONS.contains(&request.version) {
        return Err(format!(
            "The server does not support version {} of the '{}' protocol.",
            request.version, request.protocol
        ));
    }
    Ok(())
}

/// The successful handshake response.
pub fn handshake_ok() -> String {
    frame(&json!({}))
}

/// A refused handshake.
pub fn handshake_error(message: &str) -> String {
    frame(&json!({ "error": message }))
}

/// A message from a client, as far as this hub cares.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// Call a hub method. Without an invocation id the client expects no completion.
    Invocation {
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<Value>,
    },
    /// A streaming call, which this hub has none of.
    StreamInvocation {
        invocation_id: Option<String>,
    },
    Ping,
    /// The client is going away (with the error it reports, if any).
    Close {
        error: Option<String>,
    },
    /// Stream items, cancellations, completions of client results, acks, sequences, and types
    /// a newer client may add: the protocol says to ignore what one does not use.
    Ignored {
        message_type: u64,
    },
}

/// A record that is not a hub message; the connection is closed with this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message: {0}")]
pub struct InvalidMessage(pub String);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMessage {
    #[serde(rename = "type")]
    message_type: u64,
    invocation_id: Option<String>,
    target: Option<String>,
    arguments: Option<Vec<Value>>,
    error: Option<String>,
}

/// Parses one record (without its separator).
pub fn parse(record: &str) -> Result<Incoming, InvalidMessage> {
    let raw: RawMessage =
        serde_json::from_str(record).map_err(|e| InvalidMessage(e.to_string()))?;
    Ok(match raw.message_type {
        1 => Incoming::Invocation {
            invocation_id: raw.invocation_id,
            target: raw
                .target
                .ok_or_else(|| InvalidMessage("an invocation without a target".into()))?,
            arguments: raw.arguments.unwrap_or_default(),
        },
        4 => Incoming::StreamInvocation {
            invocation_id: raw.invocation_id,
        },
        6 => Incoming::Ping,
        7 => Incoming::Close { error: raw.error },
        other => Incoming::Ignored {
            message_type: other,
        },
    })
}

/// A server-to-client invocation that expects no answer: call `target(arguments…)`.
pub fn invocation(target: &str, arguments: &[Value]) -> String {
    frame(&json!({ "type": 1, "target": target, "arguments": arguments }))
}

/// A completion of a hub method without a result (`void` in ASP.NET terms).
pub fn completion_ok(invocation_id: &str) -> String {
    frame(&json!({ "type": 3, "invocationId": invocation_id }))
}

/// A failed hub method call.
pub fn completion_error(invocation_id: &str, error: &str) -> String {
    frame(&json!({ "type": 3, "invocationId": invocation_id, "error": error }))
}

/// The keep-alive both sides send while idle.
pub fn ping() -> String {
    frame(&json!({ "type": 6 }))
}

/// The server is closing the connection. `allow_reconnect` tells a client with automatic
/// reconnect whether to try again (yes after a token expiry or a shutdown, where a new
/// token or another replica will do; no after a protocol violation).
pub fn close(error: Option<&str>, allow_reconnect: bool) -> String {
    let mut message = json!({ "type": 7 });
    if let Some(error) = error {
        message["error"] = json!(error);
    }
    if allow_reconnect {
        message["allowReconnect"] = json!(true);
    }
    frame(&message)
}

fn frame(message: &Value) -> String {
    let mut text = message.to_string();
    text.push(RECORD_SEPARATOR);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS: &str = "\u{1e}";

    #[test]
    fn several_records_in_one_frame_and_one_record_over_several_frames() {
        let mut buffer = RecordBuffer::default();
        let two = format!("{{\"type\":6}}{RS}{{\"type\":1,\"target\":\"A\",\"arguments\":[]}}{RS}");
        assert_eq!(buffer.push(&two).unwrap().len(), 2);
        assert!(!buffer.has_partial());

        assert!(buffer.push("{\"type\"").unwrap().is_empty());
        assert!(buffer.has_partial());
        assert!(buffer.push(":6").unwrap().is_empty());
        let done = buffer.push(&format!("}}{RS}{{\"ty")).unwrap();
        assert_eq!(done, vec!["{\"type\":6}".to_owned()]);
        assert!(buffer.has_partial(), "the start of the next record is kept");
        assert_eq!(buffer.push(&format!("pe\":6}}{RS}{RS}")).unwrap().len(), 1);
        assert!(!buffer.has_partial());
    }

    #[test]
    fn multibyte_text_survives_splitting() {
        let mut buffer = RecordBuffer::default();
        assert!(buffer.push("{\"target\":\"שלום").unwrap().is_empty());
        let records = buffer.push(&format!("\"}}{RS}")).unwrap();
        assert_eq!(records, vec!["{\"target\":\"שלום\"}".to_owned()]);
    }

    #[test]
    fn an_endless_record_is_refused() {
        let mut buffer = RecordBuffer::default();
        let chunk = "x".repeat(MAX_RECORD_BYTES / 2);
        assert!(buffer.push(&chunk).is_ok());
        assert_eq!(buffer.push(&chunk).unwrap(), Vec::<String>::new());
        assert_eq!(buffer.push("x"), Err(RecordTooLarge));
        let mut buffer = RecordBuffer::default();
        let big = format!("{}{RS}", "y".repeat(MAX_RECORD_BYTES + 1));
        assert_eq!(buffer.push(&big), Err(RecordTooLarge));
    }

    #[test]
    fn the_handshake_accepts_json_and_refuses_the_rest() {
        assert_eq!(
            check_handshake(r#"{"protocol":"json","version":1}"#),
            Ok(())
        );
        assert_eq!(
            check_handshake(r#"{"protocol":"json","version":2}"#),
            Ok(())
        );
        assert_eq!(
            check_handshake(r#"{"protocol":"messagepack","version":1}"#),
            Err("The protocol 'messagepack' is not supported.".into())
        );
        assert!(check_handshake(r#"{"protocol":"json","version":9}"#)
            .unwrap_err()
            .contains("version 9"));
        assert!(check_handshake("hello").is_err());
        assert_eq!(handshake_ok(), format!("{{}}{RS}"));
        assert_eq!(
            handshake_error("nope"),
            format!("{{\"error\":\"nope\"}}{RS}")
        );
    }

    #[test]
    fn client_messages_parse() {
        assert_eq!(
            parse(r#"{"type":1,"invocationId":"0","target":"SubscribeAdmin","arguments":[]}"#),
            Ok(Incoming::Invocation {
                invocation_id: Some("0".into()),
                target: "SubscribeAdmin".into(),
                arguments: vec![],
            })
        );
        assert_eq!(
            parse(r#"{"type":1,"target":"Fire","arguments":[1,"a"]}"#),
            Ok(Incoming::Invocation {
                invocation_id: None,
                target: "Fire".into(),
                arguments: vec![json!(1), json!("a")],
            })
        );
        assert_eq!(parse(r#"{"type":6}"#), Ok(Incoming::Ping));
        assert_eq!(
            parse(r#"{"type":7,"error":"bye"}"#),
            Ok(Incoming::Close {
                error: Some("bye".into())
            })
        );
        assert_eq!(
            parse(r#"{"type":4,"invocationId":"3","target":"S","arguments":[]}"#),
            Ok(Incoming::StreamInvocation {
                invocation_id: Some("3".into())
            })
        );
        assert_eq!(
            parse(r#"{"type":99,"whatever":true}"#),
            Ok(Incoming::Ignored { message_type: 99 })
        );
        assert!(parse(r#"{"type":1,"arguments":[]}"#).is_err());
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"no":"type"}"#).is_err());
    }

    #[test]
    fn server_messages_have_the_shapes_the_client_expects() {
        let parsed = |s: String| -> Value {
            assert!(s.ends_with(RS), "{s:?} must end with the record separator");
            serde_json::from_str(s.trim_end_matches(RECORD_SEPARATOR)).unwrap()
        };
        assert_eq!(
            parsed(invocation("ReceiveEvent", &[json!({"eventType": "X"})])),
            json!({"type": 1, "target": "ReceiveEvent", "arguments": [{"eventType": "X"}]})
        );
        assert_eq!(
            parsed(completion_ok("7")),
            json!({"type": 3, "invocationId": "7"})
        );
        assert_eq!(
            parsed(completion_error("7", "no")),
            json!({"type": 3, "invocationId": "7", "error": "no"})
        );
        assert_eq!(parsed(ping()), json!({"type": 6}));
        assert_eq!(parsed(close(None, false)), json!({"type": 7}));
        assert_eq!(
            parsed(close(Some("expired"), true)),
            json!({"type": 7, "error": "expired", "allowReconnect": true})
        );
    }
}
