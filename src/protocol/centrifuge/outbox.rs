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
//!
//! A WebSocket that agreed to permessage-deflate gets its batch as
//! compressed pieces ([`Payload::Compressed`]): a publication's push is a
//! piece compressed once and shared by every connection, and what lies
//! between shared pushes (replies, separators) is compressed here (see
//! `protocol::websocket::deflate`).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::Encoding;
use crate::protocol::sse;
use crate::protocol::websocket::deflate;

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
    /// What was written (with compression: since the last piece).
    buf: BytesMut,
    compression: Option<Compression>,
}

/// A batch with permessage-deflate.
#[derive(Debug)]
struct Compression {
    level: u32,
    /// The batch's compressed pieces so far.
    pieces: Vec<Bytes>,
}

/// A batch, ready to be written.
#[derive(Debug)]
pub enum Payload<'a> {
    /// The bytes as they are.
    Plain(&'a [u8]),
    /// A permessage-deflate message: its pieces, in order.
    Compressed(&'a [Bytes]),
}

impl Outbox {
    /// An empty outbox.
    pub fn new(encoding: Encoding, framing: Framing) -> Outbox {
        Outbox {
            encoding,
            framing,
            buf: BytesMut::new(),
            compression: None,
        }
    }

    /// Compresses batches from now on (permessage-deflate, at `level`).
    pub fn compress(&mut self, level: u32) {
        self.compression = Some(Compression {
            level,
            pieces: Vec::new(),
        });
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

    /// Appends a message encoded once for many connections (a
    /// publication's push). With compression, `compressed` gives its piece
    /// at the level asked for (also made once, by the caller).
    pub fn shared(&mut self, message: &[u8], compressed: impl FnOnce(u32) -> Bytes) {
        let Some(level) = self.compression.as_ref().map(|c| c.level) else {
            return self.encoded(message, None);
        };
        if self.encoding == Encoding::Json && !self.is_empty() {
            self.buf.put_u8(b'\n');
        }
        self.seal_piece();
        let piece = compressed(level);
        if let Some(c) = &mut self.compression {
            c.pieces.push(piece);
        }
    }

    /// Compresses what was written since the last piece into a piece.
    fn seal_piece(&mut self) {
        if let Some(c) = &mut self.compression {
            if !self.buf.is_empty() {
                c.pieces.push(deflate::piece(&self.buf, c.level));
                self.buf.clear();
            }
        }
    }

    fn open(&mut self, id: Option<&str>) {
        match self.framing {
            Framing::Frame if !self.is_empty() => self.buf.put_u8(b'\n'),
            Framing::Frame | Framing::Stream => {}
            Framing::EventStream => sse::open_single_line(&mut self.buf, id),
        }
    }

    fn close(&mut self) {
        match self.framing {
            Framing::Frame => {}
            Framing::Stream => self.buf.put_u8(b'\n'),
            Framing::EventStream => sse::close_single_line(&mut self.buf),
        }
    }

    /// True when nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
            && self
                .compression
                .as_ref()
                .is_none_or(|c| c.pieces.is_empty())
    }

    /// What was written so far (without compression).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The batch, ready to be written; [`Outbox::clear`] once it is.
    pub fn payload(&mut self) -> Payload<'_> {
        self.seal_piece();
        match &mut self.compression {
            Some(c) => {
                deflate::finish(&mut c.pieces);
                Payload::Compressed(&c.pieces)
            }
            None => Payload::Plain(&self.buf),
        }
    }

    /// Empties the outbox once its bytes are written. Its buffer is kept
    /// for the next batch, unless a burst made it large.
    pub fn clear(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = BytesMut::new();
        } else {
            self.buf.clear();
        }
        if let Some(c) = &mut self.compression {
            c.pieces.clear();
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
    fn a_compressed_batch_inflates_to_the_plain_one_with_shared_pieces_untouched() {
        use crate::protocol::websocket::deflate::{piece, MessageInflater};
        let push = br#"{"push":{"channel":"news","pub":{"data":"a long enough payload, a long enough payload"}}}"#;
        let shared = piece(push, 1);
        for encoding in [Encoding::Json, Encoding::Protobuf] {
            let mut plain = Outbox::new(encoding, Framing::Frame);
            let mut compressed = Outbox::new(encoding, Framing::Frame);
            compressed.compress(1);
            for out in [&mut plain, &mut compressed] {
                out.message(&Reply {
                    id: 1,
                    ..Default::default()
                });
                out.shared(push, |_| shared.clone());
                out.shared(push, |_| shared.clone());
                out.message(&Reply::default());
            }
            let Payload::Compressed(pieces) = compressed.payload() else {
                panic!("compressed");
            };
            assert!(pieces.iter().any(|p| p.as_ptr() == shared.as_ptr()));
            let mut inflated = Vec::new();
            MessageInflater::new(1 << 20)
                .frame(&pieces.concat(), true, &mut inflated)
                .unwrap();
            assert_eq!(inflated, plain.bytes(), "{encoding:?}");
            compressed.clear();
            assert!(compressed.is_empty());
        }
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
