//! How a connection's outgoing messages are laid out on its transport.
//!
//! A session writes replies and pushes into an [`Outbox`]; the transport
//! takes the bytes and writes them in one go. The same messages are framed
//! three ways:
//!
//! - [`Framing::Frame`] (WebSocket): a batch is one message; JSON messages
//!   are joined by `\n`, Protobuf messages are varint-length-prefixed.
//! - [`Framing::Stream`] (HTTP streaming): a byte stream; every JSON message
//!   ends with `\n` so the client can split lines across chunks; Protobuf
//!   as above.
//! - [`Framing::EventStream`] (SSE, JSON only): one event per message,
//!   `data: <json>`, with an `id:` line where the session gives one. JSON
//!   text never holds a raw newline, so a message cannot split an event.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::Encoding;

/// How messages are laid out on a transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One transport message per batch (WebSocket).
    Frame,
    /// A byte stream (HTTP streaming).
    Stream,
    /// Server-sent events, one event per message.
    EventStream,
}

/// An outbox buffer larger than this is released after use.
const KEEP_CAPACITY: usize = 4096;

/// Outgoing messages of one connection, framed for its transport.
#[derive(Debug)]
pub struct Outbox {
    encoding: Encoding,
    framing: Framing,
    buf: BytesMut,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(encoding: Encoding, framing: Framing) -> Outbox {
        Outbox {
            encoding,
            framing,
            buf: BytesMut::new(),
        }
    }

    /// The encoding messages are written in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The framing messages are written in.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Encodes and appends one message (a reply, or a push on its own for
    /// unidirectional connections).
    pub fn message<M: Serialize + prost::Message>(&mut self, message: &M) {
        self.message_with_id(message, None)
    }

    /// Like [`Outbox::message`], with an SSE event id.
    pub fn message_with_id<M: Serialize + prost::Message>(
        &mut self,
        message: &M,
        id: Option<&str>,
    ) {
        match self.encoding {
            Encoding::Json => {
                self.open(id);
                // Serializing our own structs cannot fail.
                let _ = serde_json::to_writer((&mut self.buf).writer(), message);
                self.close();
            }
            Encoding::Protobuf => {
                let _ = message.encode_length_delimited(&mut self.buf);
            }
        }
    }

    /// Appends one already encoded message (JSON text, or a length-prefixed
    /// Protobuf message), such as a publication's shared push.
    pub fn encoded(&mut self, message: &[u8], id: Option<&str>) {
        match self.encoding {
            Encoding::Json => {
                self.open(id);
                self.buf.extend_from_slice(message);
                self.close();
            }
            Encoding::Protobuf => self.buf.extend_from_slice(message),
        }
    }

    fn open(&mut self, id: Option<&str>) {
        match self.framing {
            Framing::Frame if !self.buf.is_empty() => self.buf.put_u8(b'\n'),
            Framing::Frame | Framing::Stream => {}
            Framing::EventStream => {
                if let Some(id) = id {
                    // Ids come from `resume::encode`: no CR, LF or NUL.
                    self.buf.extend_from_slice(b"id: ");
                    self.buf.extend_from_slice(id.as_bytes());
                    self.buf.put_u8(b'\n');
                }
                self.buf.extend_from_slice(b"data: ");
            }
        }
    }

    fn close(&mut self) {
        match self.framing {
            Framing::Frame => {}
            Framing::Stream => self.buf.put_u8(b'\n'),
            Framing::EventStream => self.buf.extend_from_slice(b"\n\n"),
        }
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What was written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the outbox once its bytes are written. Its buffer is kept
    /// for the next batch, unless a burst made it large.
    pub fn clear(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
    }

    /// Takes what was written so far, leaving the outbox empty.
    pub fn take(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::centrifuge::{Push, Reply};

    fn ping_and_push(outbox: &mut Outbox) -> String {
        outbox.message(&Reply::default());
        let push = Push {
            channel: "a\nb".into(),
            ..Default::default()
        };
        outbox.message_with_id(&push, Some("a%0Ab=1.e"));
        String::from_utf8(outbox.take().to_vec()).unwrap()
    }

    #[test]
    fn each_framing_lays_out_messages_its_way() {
        let mut ws = Outbox::new(Encoding::Json, Framing::Frame);
        assert_eq!(ping_and_push(&mut ws), "{}\n{\"channel\":\"a\\nb\"}");
        let mut stream = Outbox::new(Encoding::Json, Framing::Stream);
        assert_eq!(ping_and_push(&mut stream), "{}\n{\"channel\":\"a\\nb\"}\n");
        let mut sse = Outbox::new(Encoding::Json, Framing::EventStream);
        assert_eq!(
            ping_and_push(&mut sse),
            "data: {}\n\nid: a%0Ab=1.e\ndata: {\"channel\":\"a\\nb\"}\n\n"
        );
        assert!(sse.is_empty(), "take empties the outbox");
    }

    #[test]
    fn protobuf_messages_are_length_prefixed_in_every_framing() {
        let mut stream = Outbox::new(Encoding::Protobuf, Framing::Stream);
        stream.message(&Reply {
            id: 3,
            ..Default::default()
        });
        stream.encoded(&[1, 8], None);
        assert_eq!(&stream.take()[..], &[2, 8, 3, 1, 8]);
    }
}
