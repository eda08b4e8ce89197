//! ringcast's JSON protocol over WebSocket text frames (docs/PROTOCOL.md): client commands
//! parsed into [`Command`], and the server's control objects (subscribed, unsubscribed,
//! ack, error, reset, gap, lagged) encoded as JSON text.
//!
//! Owns: the wire shapes and their checks (room names as `ringcast_core::room`, resume ids
//! as `ringcast_core::event_id`, idempotency keys as `idempotency.rs`: the same rules as the
//! HTTP routes). Must not touch rooms, subscriptions or publishing: the shard acts on a
//! `Command`. A room message's own frame, and the reset, gap and lagged objects the fan-out
//! sends, are the core's (`ringcast_core::ws`, re-exported here); this module builds the rest
//! with the same JSON writer (`ringcast_core::ws::JsonObject`).

use crate::idempotency::{validate_key, KeyError};
use ringcast_core::event_id::{parse_resume_id, ResumeId, ResumeIdError};
use ringcast_core::room::{validate_room_name, RoomNameError};
use ringcast_core::ws::JsonObject;
pub use ringcast_core::ws::{encode_gap, encode_lagged, encode_reset};
use serde_json::{Map, Number, Value};

/// Longest string `ref`, in bytes (it is echoed back, so it is bounded like a room name).
pub const REF_BYTES_MAX: usize = 128;

/// The client's tag for a publish, echoed in its ack or error: a JSON number or string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    /// A number, echoed as the client wrote it (serde_json keeps its text form).
    Number(Number),
    /// A string of at most [`REF_BYTES_MAX`] bytes.
    Text(String),
}

/// A client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{"type":"subscribe","room":R,"since":ID?}`: join a room, resuming after `since`.
    Subscribe {
        /// The room.
        room: String,
        /// The last id the client holds (`None`: live only, as SSE without
        /// `Last-Event-ID`).
        since: Option<ResumeId>,
    },
    /// `{"type":"unsubscribe","room":R}`.
    Unsubscribe {
        /// The room.
        room: String,
    },
    /// `{"type":"publish","room":R,"data":"…","ref":REF?,"idempotency_key":"k"?}`.
    Publish {
        /// The room.
        room: String,
        /// The message text.
        data: String,
        /// Echoed in the ack or error.
        reference: Option<Ref>,
        /// Deduplicates retries, as the `Idempotency-Key` header does.
        idempotency_key: Option<String>,
    },
}

/// Why a command is refused; each is answered with an error object, status 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Not JSON.
    #[error("not JSON")]
    NotJson,
    /// JSON, but not an object.
    #[error("command must be a JSON object")]
    NotObject,
    /// No `type` string.
    #[error("missing type")]
    NoType,
    /// A `type` this server does not know.
    #[error("unknown type")]
    UnknownType,
    /// A required field is absent or not a string.
    #[error("{0} must be a string")]
    Field(&'static str),
    /// The room name breaks the room name rules.
    #[error("bad room name: {0}")]
    Room(RoomNameError),
    /// `since` is not a resume id.
    #[error("bad since: {0}")]
    Since(ResumeIdError),
    /// `ref` is neither a number nor a short string.
    #[error("ref must be a number or a string of at most 128 bytes")]
    Ref,
    /// The idempotency key breaks the key rules.
    #[error("bad idempotency_key: {0}")]
    IdempotencyKey(KeyError),
    /// A binary message where commands are text (answered, not closed: 1003 is not used).
    #[error("binary messages are not commands")]
    Binary,
}

impl CommandError {
    /// The HTTP-like status of the error object.
    pub fn status(&self) -> u16 {
        400
    }
}

/// A refused command, with what could be read of it so the error object can carry the
/// client's `ref` and `room`.
#[derive(Debug, PartialEq, Eq)]
pub struct CommandRefusal {
    /// Why.
    pub error: CommandError,
    /// The command's `ref`, if it had a valid one.
    pub reference: Option<Ref>,
    /// The command's room, if it had a valid one.
    pub room: Option<String>,
}

impl CommandRefusal {
    /// The refusal of a binary message on a command route.
    pub fn binary() -> Self {
        Self {
            error: CommandError::Binary,
            reference: None,
            room: None,
        }
    }

    /// The error object to send back.
    pub fn to_json(&self) -> String {
        encode_error(
            self.reference.as_ref(),
            self.room.as_deref(),
            self.error.status(),
            &self.error.to_string(),
        )
    }
}

fn string_field<'a>(
    object: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, CommandError> {
    object
        .get(name)
        .and_then(Value::as_str)
        .ok_or(CommandError::Field(name))
}

/// Parses one client text message.
pub fn parse_command(text: &str) -> Result<Command, CommandRefusal> {
    let refuse = |error| CommandRefusal {
        error,
        reference: None,
        room: None,
    };
    let value: Value = serde_json::from_str(text).map_err(|_| refuse(CommandError::NotJson))?;
    let Value::Object(object) = value else {
        return Err(refuse(CommandError::NotObject));
    };
    // `Err(())`: a `ref` of the wrong shape (refused for a publish, which echoes it).
    let reference: Result<Option<Ref>, ()> = match object.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => Ok(Some(Ref::Number(number.clone()))),
        Some(Value::String(text)) if text.len() <= REF_BYTES_MAX => {
            Ok(Some(Ref::Text(text.clone())))
        }
        Some(_) => Err(()),
    };
    let room = object
        .get("room")
        .and_then(Value::as_str)
        .and_then(|room| validate_room_name(room.as_bytes()).ok())
        .map(str::to_owned);
    let refuse = |error| CommandRefusal {
        error,
        reference: reference.clone().ok().flatten(),
        room: room.clone(),
    };
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(CommandError::NoType))?;
    let room_checked = || -> Result<String, CommandError> {
        let name = string_field(&object, "room")?;
        validate_room_name(name.as_bytes()).map_err(CommandError::Room)?;
        Ok(name.to_owned())
    };
    match kind {
        "subscribe" => {
            let room = room_checked().map_err(refuse)?;
            let since = match object.get("since") {
                None | Some(Value::Null) => None,
                Some(Value::String(id)) => parse_resume_id(id.as_bytes())
                    .map_err(|err| refuse(CommandError::Since(err)))?,
                // A bare number is an id of no epoch: placed as "cannot place" (reset).
                Some(Value::Number(number)) => parse_resume_id(number.to_string().as_bytes())
                    .map_err(|err| refuse(CommandError::Since(err)))?,
                Some(_) => return Err(refuse(CommandError::Field("since"))),
            };
            Ok(Command::Subscribe { room, since })
        }
        "unsubscribe" => Ok(Command::Unsubscribe {
            room: room_checked().map_err(refuse)?,
        }),
        "publish" => {
            let reference = reference.clone().map_err(|()| refuse(CommandError::Ref))?;
            let room = room_checked().map_err(refuse)?;
            let data = string_field(&object, "data").map_err(refuse)?.to_owned();
            let idempotency_key = match object.get("idempotency_key") {
                None | Some(Value::Null) => None,
                Some(Value::String(key)) => Some(
                    validate_key(key.as_bytes())
                        .map_err(|err| refuse(CommandError::IdempotencyKey(err)))?
                        .to_owned(),
                ),
                Some(_) => return Err(refuse(CommandError::Field("idempotency_key"))),
            };
            Ok(Command::Publish {
                room,
                data,
                reference,
                idempotency_key,
            })
        }
        _ => Err(refuse(CommandError::UnknownType)),
    }
}

/// Appends the client's `ref` (as it sent it) to a control object, if it had one.
fn with_reference(object: JsonObject, reference: Option<&Ref>) -> JsonObject {
    match reference {
        None => object,
        Some(Ref::Number(number)) => object.raw("ref", &number.to_string()),
        Some(Ref::Text(text)) => object.string("ref", text),
    }
}

/// `{"type":"subscribed","room":R}`: the subscription is live.
pub fn encode_subscribed(room: &str) -> String {
    JsonObject::new("subscribed").string("room", room).end()
}

/// `{"type":"unsubscribed","room":R}`.
pub fn encode_unsubscribed(room: &str) -> String {
    JsonObject::new("unsubscribed").string("room", room).end()
}

/// `{"type":"ack","ref":REF,"room":R,"id":ID}`: a publish was sequenced as `id`
/// (`ref` omitted when the publish had none).
pub fn encode_ack(reference: Option<&Ref>, room: &str, id: &str) -> String {
    with_reference(JsonObject::new("ack"), reference)
        .string("room", room)
        .string("id", id)
        .end()
}

/// `{"type":"error","ref":REF?,"room":R?,"status":S,"reason":"…"}`: a command refused with
/// an HTTP-like status (400 bad command, 401/403 auth, 404, 409, 413, 429, 503…).
pub fn encode_error(
    reference: Option<&Ref>,
    room: Option<&str>,
    status: u16,
    reason: &str,
) -> String {
    assert!(
        (400..=599).contains(&status),
        "error status {status} is not 4xx/5xx"
    );
    let object = with_reference(JsonObject::new("error"), reference);
    let object = match room {
        Some(room) => object.string("room", room),
        None => object,
    };
    object
        .raw("status", &status.to_string())
        .string("reason", reason)
        .end()
}

/// `{"type":"error","room":R,"status":429,"reason":"…","retry_after_ms":N}`: a command
/// refused for its rate, with the wait (milliseconds) after which the same command is
/// taken (an error object with one more field; clients ignore fields they do not know).
pub fn encode_rate_error(room: &str, reason: &str, retry_after_ms: u64) -> String {
    JsonObject::new("error")
        .string("room", room)
        .raw("status", "429")
        .string("reason", reason)
        .raw("retry_after_ms", &retry_after_ms.to_string())
        .end()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringcast_core::event_id::ResetReason;

    fn error_of(text: &str) -> CommandRefusal {
        parse_command(text).unwrap_err()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_command(r#"{"type":"subscribe","room":"a"}"#).unwrap(),
            Command::Subscribe {
                room: "a".into(),
                since: None
            }
        );
        let Command::Subscribe { since, .. } =
            parse_command(r#"{"type":"subscribe","room":"a","since":"17-3"}"#).unwrap()
        else {
            panic!("not a subscribe")
        };
        assert!(matches!(since, Some(ResumeId::At(_))), "{since:?}");
        let Command::Subscribe { since, .. } =
            parse_command(r#"{"type":"subscribe","room":"a","since":42}"#).unwrap()
        else {
            panic!("not a subscribe")
        };
        assert_eq!(since, Some(ResumeId::Unplaceable(ResetReason::BareNumber)));
        assert_eq!(
            parse_command(r#"{"type":"unsubscribe","room":"a.b"}"#).unwrap(),
            Command::Unsubscribe { room: "a.b".into() }
        );
        assert_eq!(
            parse_command(
                r#"{"type":"publish","room":"a","data":"hi \"x\"","ref":7,"idempotency_key":"k1","extra":1}"#
            )
            .unwrap(),
            Command::Publish {
                room: "a".into(),
                data: "hi \"x\"".into(),
                reference: Some(Ref::Number(7.into())),
                idempotency_key: Some("k1".into()),
            }
        );
    }

    #[test]
    fn refusals_carry_ref_and_room() {
        let cases: &[(&str, CommandError)] = &[
            ("nope", CommandError::NotJson),
            ("[1]", CommandError::NotObject),
            (r#"{"room":"a"}"#, CommandError::NoType),
            (r#"{"type":"dance","room":"a"}"#, CommandError::UnknownType),
            (r#"{"type":"subscribe"}"#, CommandError::Field("room")),
            (
                r#"{"type":"subscribe","room":5}"#,
                CommandError::Field("room"),
            ),
            (
                r#"{"type":"subscribe","room":"a b"}"#,
                CommandError::Room(RoomNameError::BadByte),
            ),
            (
                r#"{"type":"subscribe","room":""}"#,
                CommandError::Room(RoomNameError::Empty),
            ),
            (
                r#"{"type":"subscribe","room":"a","since":"a\u0001"}"#,
                CommandError::Since(ResumeIdError::BadByte),
            ),
            (
                r#"{"type":"subscribe","room":"a","since":[]}"#,
                CommandError::Field("since"),
            ),
            (
                r#"{"type":"publish","room":"a","ref":1}"#,
                CommandError::Field("data"),
            ),
            (
                r#"{"type":"publish","room":"a","data":"x","ref":{}}"#,
                CommandError::Ref,
            ),
            (
                r#"{"type":"publish","room":"a","data":"x","idempotency_key":"a b"}"#,
                CommandError::IdempotencyKey(KeyError::BadByte),
            ),
            (
                r#"{"type":"publish","room":"a","data":"x","idempotency_key":7}"#,
                CommandError::Field("idempotency_key"),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&error_of(text).error, want, "{text}");
        }
        let long_room = format!(r#"{{"type":"subscribe","room":"{}"}}"#, "a".repeat(129));
        assert_eq!(
            error_of(&long_room).error,
            CommandError::Room(RoomNameError::TooLong)
        );
        let refusal = error_of(r#"{"type":"publish","room":"r","ref":"c-9"}"#);
        assert_eq!(refusal.reference, Some(Ref::Text("c-9".into())));
        assert_eq!(
            refusal.to_json(),
            r#"{"type":"error","ref":"c-9","room":"r","status":400,"reason":"data must be a string"}"#
        );
        assert_eq!(
            CommandRefusal::binary().to_json(),
            r#"{"type":"error","status":400,"reason":"binary messages are not commands"}"#
        );
        assert_eq!(
            error_of("{").to_json(),
            r#"{"type":"error","status":400,"reason":"not JSON"}"#
        );
    }

    #[test]
    fn control_objects_are_exact() {
        let num = Ref::Number(serde_json::from_str("12.5").unwrap());
        let cases = [
            (
                encode_subscribed("a"),
                r#"{"type":"subscribed","room":"a"}"#,
            ),
            (
                encode_unsubscribed("a"),
                r#"{"type":"unsubscribed","room":"a"}"#,
            ),
            (
                encode_ack(Some(&num), "a", "5-1"),
                r#"{"type":"ack","ref":12.5,"room":"a","id":"5-1"}"#,
            ),
            (
                encode_ack(Some(&Ref::Text("x\"".into())), "a", "5-1"),
                r#"{"type":"ack","ref":"x\"","room":"a","id":"5-1"}"#,
            ),
            (
                encode_ack(None, "a", "5-1"),
                r#"{"type":"ack","room":"a","id":"5-1"}"#,
            ),
            (
                encode_error(None, Some("a"), 403, "forbidden"),
                r#"{"type":"error","room":"a","status":403,"reason":"forbidden"}"#,
            ),
            (
                encode_rate_error("a", "slow down", 40),
                r#"{"type":"error","room":"a","status":429,"reason":"slow down","retry_after_ms":40}"#,
            ),
            (
                encode_reset("a", "unknown epoch", Some("5-1"), Some("5-0")),
                r#"{"type":"reset","room":"a","reason":"unknown epoch","held_from":"5-1","id":"5-0"}"#,
            ),
            (
                encode_reset("a", "bare number", None, None),
                r#"{"type":"reset","room":"a","reason":"bare number","held_from":null}"#,
            ),
            (
                encode_gap("a", "5-1", "5-9"),
                r#"{"type":"gap","room":"a","from":"5-1","to":"5-9"}"#,
            ),
            (
                encode_lagged("a", Some("5-9")),
                r#"{"type":"lagged","room":"a","reason":"slow consumer","last_id":"5-9"}"#,
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
            serde_json::from_str::<Value>(&got).unwrap();
        }
    }
}
