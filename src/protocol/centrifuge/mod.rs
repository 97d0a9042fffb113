//! The Centrifugo client protocol (version 2): frames of commands in,
//! frames of replies and pushes out, in JSON or Protobuf.
//!
//! A frame holds several messages: JSON messages are separated by `\n`,
//! Protobuf messages are each prefixed by their varint length. A command
//! with no request set (`{}` in JSON) is the client's pong.

pub mod messages;
pub mod outbox;
pub mod resume;

use bytes::Bytes;
use prost::Message as _;

pub use messages::*;

/// Which encoding a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Newline-delimited JSON in text frames.
    Json,
    /// Length-delimited Protobuf in binary frames.
    Protobuf,
}

/// A frame that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("malformed command frame: {0}")]
pub struct DecodeError(String);

/// Decodes every command of one frame.
pub fn decode_commands(encoding: Encoding, frame: &[u8]) -> Result<Vec<Command>, DecodeError> {
    match encoding {
        Encoding::Json => frame
            .split(|&b| b == b'\n')
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .map(|line| serde_json::from_slice(line).map_err(|e| DecodeError(e.to_string())))
            .collect(),
        Encoding::Protobuf => {
            let mut buf = frame;
            let mut out = Vec::new();
            while !buf.is_empty() {
                let cmd = Command::decode_length_delimited(&mut buf)
                    .map_err(|e| DecodeError(e.to_string()))?;
                out.push(cmd);
            }
            Ok(out)
        }
    }
}

/// Encodes one message on its own (JSON text; Protobuf length-prefixed),
/// ready for [`outbox::Outbox::encoded`].
pub fn encode<M: serde::Serialize + prost::Message>(encoding: Encoding, message: &M) -> Bytes {
    match encoding {
        // Serializing our own structs cannot fail.
        Encoding::Json => Bytes::from(serde_json::to_vec(message).unwrap_or_default()),
        Encoding::Protobuf => Bytes::from(message.encode_length_delimited_to_vec()),
    }
}

/// The push inside an encoded JSON reply `{"push":…}`, without copying:
/// unidirectional connections receive pushes unwrapped.
pub fn push_of_json_reply(reply: &Bytes) -> Option<Bytes> {
    const PREFIX: &[u8] = b"{\"push\":";
    (reply.starts_with(PREFIX) && reply.ends_with(b"}"))
        .then(|| reply.slice(PREFIX.len()..reply.len() - 1))
}

/// Decodes a `POST /emulation` body: Protobuf when the request says
/// `application/octet-stream`, JSON otherwise (`data` is then a string).
pub fn decode_emulation(protobuf: bool, body: &[u8]) -> Result<EmulationRequest, DecodeError> {
    if protobuf {
        return EmulationRequest::decode(body).map_err(|e| DecodeError(e.to_string()));
    }
    #[derive(serde::Deserialize)]
    struct Json {
        #[serde(default)]
        node: String,
        session: String,
        data: String,
    }
    let j: Json = serde_json::from_slice(body).map_err(|e| DecodeError(e.to_string()))?;
    Ok(EmulationRequest {
        node: j.node,
        session: j.session,
        data: Bytes::from(j.data),
    })
}

/// A payload as the JSON protocol needs it: valid JSON passes through, any
/// other text (say, a Mercure update's plain-text data) becomes a JSON
/// string. Protobuf clients receive payloads unchanged.
pub fn json_payload(data: &Bytes) -> Bytes {
    let is_json = std::str::from_utf8(data)
        .ok()
        .is_some_and(|t| serde_json::from_str::<&serde_json::value::RawValue>(t).is_ok());
    if is_json {
        data.clone()
    } else {
        Bytes::from(serde_json::to_vec(&String::from_utf8_lossy(data)).unwrap_or_default())
    }
}

/// Client error codes (in replies).
pub mod errors {
    /// `(code, message)`.
    pub type Code = (u32, &'static str);
    /// Something failed on the server.
    pub const INTERNAL: Code = (100, "internal server error");
    /// Not authenticated, or the token is invalid.
    pub const UNAUTHORIZED: Code = (101, "unauthorized");
    /// The channel's namespace does not exist.
    pub const UNKNOWN_CHANNEL: Code = (102, "unknown channel");
    /// Not allowed.
    pub const PERMISSION_DENIED: Code = (103, "permission denied");
    /// Unknown or unsupported command.
    pub const METHOD_NOT_FOUND: Code = (104, "method not found");
    /// Subscribing twice to a channel.
    pub const ALREADY_SUBSCRIBED: Code = (105, "already subscribed");
    /// A limit was reached.
    pub const LIMIT_EXCEEDED: Code = (106, "limit exceeded");
    /// Malformed request.
    pub const BAD_REQUEST: Code = (107, "bad request");
    /// The feature is off or has no backend.
    pub const NOT_AVAILABLE: Code = (108, "not available");
    /// The token expired.
    pub const TOKEN_EXPIRED: Code = (109, "token expired");
    /// A rate limit was reached (`limits.publish_rate`).
    pub const TOO_MANY_REQUESTS: Code = (111, "too many requests");
    /// The position cannot be recovered.
    pub const UNRECOVERABLE_POSITION: Code = (112, "unrecoverable position");
}

/// Disconnect codes (WebSocket close codes): 3000–3499 ask the client to
/// reconnect, 3500–3999 not to.
pub mod disconnect {
    /// `(code, reason)`.
    pub type Code = (u16, &'static str);
    /// The server is shutting down; reconnect (elsewhere).
    pub const SHUTDOWN: Code = (3001, "shutdown");
    /// Server error.
    pub const SERVER_ERROR: Code = (3004, "internal server error");
    /// The connection token expired and was not refreshed.
    pub const EXPIRED: Code = (3005, "connection expired");
    /// A server-side subscription expired and was not refreshed.
    pub const SUB_EXPIRED: Code = (3006, "subscription expired");
    /// The client could not keep up; resume from history.
    pub const SLOW: Code = (3008, "slow");
    /// The client's position in a stream is wrong; resume from history.
    pub const INSUFFICIENT_STATE: Code = (3010, "insufficient state");
    /// Disconnected by the server; reconnect.
    pub const FORCE_RECONNECT: Code = (3011, "force reconnect");
    /// No pong in time.
    pub const NO_PONG: Code = (3012, "no pong");
    /// The token is invalid.
    pub const INVALID_TOKEN: Code = (3500, "invalid token");
    /// Malformed frames or commands.
    pub const BAD_REQUEST: Code = (3501, "bad request");
    /// No connect command in time.
    pub const STALE: Code = (3502, "stale");
    /// Disconnected by the server; do not reconnect.
    pub const FORCE_NO_RECONNECT: Code = (3503, "force disconnect");
    /// Too many connections for this user (`limits.max_connections_per_user`).
    pub const CONNECTION_LIMIT: Code = (3504, "connection limit");
    /// Too many channels on one connection.
    pub const CHANNEL_LIMIT: Code = (3505, "channel limit");
    /// Permission denied.
    pub const PERMISSION_DENIED: Code = (3507, "permission denied");
}

/// Unsubscribe codes (in unsubscribe pushes).
pub mod unsubscribe {
    /// `(code, reason)`.
    pub type Code = (u32, &'static str);
    /// The server unsubscribed the client.
    pub const SERVER: Code = (2000, "server unsubscribe");
    /// The client's position is lost; resubscribe and recover.
    pub const INSUFFICIENT: Code = (2500, "insufficient state");
    /// The subscription expired and was not refreshed in time.
    pub const EXPIRED: Code = (2501, "subscription expired");
}

/// A reply carrying an error.
pub fn error_reply(id: u32, code: errors::Code) -> Reply {
    Reply {
        id,
        error: Some(Error {
            code: code.0,
            message: code.1.to_owned(),
            // The client may try again: after a while, or at a lower rate.
            temporary: code == errors::INTERNAL || code == errors::TOO_MANY_REQUESTS,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_frames_hold_several_commands() {
        let frame = br#"{"id":1,"connect":{"token":"t","name":"js"}}
{"id":2,"subscribe":{"channel":"chat","recover":true,"offset":5,"epoch":"e","data":{"x":[1,2]}}}

{}"#;
        let cmds = decode_commands(Encoding::Json, frame).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0].connect.as_ref().unwrap().token, "t");
        let sub = cmds[1].subscribe.as_ref().unwrap();
        assert_eq!(
            (sub.channel.as_str(), sub.recover, sub.offset),
            ("chat", true, 5)
        );
        assert_eq!(&sub.data[..], br#"{"x":[1,2]}"#);
        assert_eq!(cmds[2], Command::default(), "an empty command is a pong");
    }

    #[test]
    fn json_replies_omit_defaults_and_embed_raw_payloads() {
        let push = Reply {
            push: Some(Push {
                channel: "chat".into(),
                publication: Some(Publication {
                    data: Bytes::from_static(br#"{"a":1}"#),
                    offset: 3,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut frame = outbox::Outbox::new(Encoding::Json, outbox::Framing::Frame);
        frame.message(&error_reply(7, errors::PERMISSION_DENIED));
        frame.message(&push);
        assert_eq!(
            std::str::from_utf8(&frame.take()).unwrap(),
            "{\"id\":7,\"error\":{\"code\":103,\"message\":\"permission denied\"}}\n{\"push\":{\"channel\":\"chat\",\"pub\":{\"data\":{\"a\":1},\"offset\":3}}}"
        );
        assert_eq!(
            &encode(Encoding::Json, &Reply::default())[..],
            b"{}",
            "a ping"
        );
        let encoded = encode(Encoding::Json, &push);
        assert_eq!(
            &push_of_json_reply(&encoded).unwrap()[..],
            br#"{"channel":"chat","pub":{"data":{"a":1},"offset":3}}"#
        );
        assert_eq!(
            push_of_json_reply(&encode(Encoding::Json, &Reply::default())),
            None
        );
    }

    #[test]
    fn emulation_requests_in_both_encodings() {
        let json = br#"{"session":"s1","node":"n1","data":"{\"id\":1,\"ping\":{}}"}"#;
        let req = decode_emulation(false, json).unwrap();
        assert_eq!((req.session.as_str(), req.node.as_str()), ("s1", "n1"));
        let cmds = decode_commands(Encoding::Json, &req.data).unwrap();
        assert_eq!(cmds[0].id, 1);
        let proto = EmulationRequest {
            node: "n".into(),
            session: "s".into(),
            data: Bytes::from_static(&[1, 2]),
        };
        let back = decode_emulation(true, &proto.encode_to_vec()).unwrap();
        assert_eq!(back, proto);
        for bad in [&b"{}"[..], b"{\"session\":1,\"data\":\"\"}", b"[", b"\xff"] {
            assert!(decode_emulation(false, bad).is_err(), "{bad:?}");
        }
        assert!(decode_emulation(true, &[0xff, 0xff]).is_err());
    }

    #[test]
    fn protobuf_round_trip_with_several_messages() {
        let mut frame = bytes::BytesMut::new();
        for id in 1..=3 {
            let cmd = Command {
                id,
                ping: Some(PingRequest {}),
                ..Default::default()
            };
            cmd.encode_length_delimited(&mut frame).unwrap();
        }
        let cmds = decode_commands(Encoding::Protobuf, &frame).unwrap();
        assert_eq!(cmds.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(decode_commands(Encoding::Protobuf, &frame[..frame.len() - 1]).is_err());
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        for bad in [
            &b"{"[..],
            b"[1,2]",
            b"{\"id\":\"x\"}",
            b"\xff\xfe",
            b"{\"subscribe\":{\"channel\":5}}",
        ] {
            assert!(decode_commands(Encoding::Json, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payloads_become_json() {
        assert_eq!(
            &json_payload(&Bytes::from_static(b"{\"a\":1}"))[..],
            b"{\"a\":1}"
        );
        assert_eq!(
            &json_payload(&Bytes::from_static(b"plain text"))[..],
            b"\"plain text\""
        );
    }
}
