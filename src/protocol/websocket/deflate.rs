//! permessage-deflate (RFC 7692): the offer we accept, the pieces a
//! compressed message is made of, and inflating a client's messages.
//!
//! The hub compresses each *piece* of what it sends on its own, as a run
//! of deflate blocks ending on a byte boundary (a sync flush), with no
//! reference to anything before it. A decoder reads pieces one after the
//! other as a single deflate stream, so any run of pieces is a valid
//! message, and a publication's push is compressed once and the same bytes
//! go to every subscriber (the encode-once rule of the fan-out), whatever
//! else shares their message. The answer says `server_no_context_takeover`
//! (the hub never refers to earlier messages, and the client may forget
//! them).
//!
//! The answer also says `client_no_context_takeover`, which a server may
//! always ask for: each compressed message from a client inflates on its
//! own, so a connection keeps no inflate window between messages and an
//! idle compressed connection costs what an uncompressed one does.

use std::cell::RefCell;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` answer when compression is agreed.
pub const AGREED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The end of a sync flush: dropped from a message's end by the sender and
/// added back by the receiver (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Runs shorter than this are stored, not compressed: a separator or a
/// tiny reply gains nothing from a compressor.
const STORE_BELOW: usize = 32;

/// True when one of the offers in `Sec-WebSocket-Extensions` values is a
/// permessage-deflate offer the hub can honour with [`AGREED`].
///
/// The hub's window is always 32 KiB, so an offer limiting it
/// (`server_max_window_bits` below 15) is declined, as is an offer with an
/// unknown, repeated or malformed parameter (RFC 7692 §7.1); the client
/// then gets an uncompressed connection, or its next acceptable offer.
pub fn accepts_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(acceptable)
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return false;
        }
        seen.push(name);
        let bits = |v: &str| matches!(v.parse::<u8>(), Ok(8..=15));
        let ok = match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("server_max_window_bits", Some(v)) => v == "15",
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => bits(v),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

thread_local! {
    /// One compressor per thread, reset for each piece: a compressor is
    /// large (its hash tables), and no piece refers to another.
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// `data` as one piece: compressed at `level` (1–9) with a sync flush, or
/// stored when it is tiny.
pub fn piece(data: &[u8], level: u32) -> Bytes {
    if data.len() < STORE_BELOW {
        return stored(data);
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = match &mut *cell {
            Some((l, c)) if *l == level => {
                c.reset();
                c
            }
            slot => {
                &mut slot
                    .insert((level, Compress::new(Compression::new(level), false)))
                    .1
            }
        };
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let start_in = compressor.total_in();
        loop {
            let consumed = (compressor.total_in() - start_in) as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            // Compressing into memory cannot fail.
            let _ = compressor.compress_vec(&data[consumed..], &mut out, FlushCompress::Sync);
            let done = (compressor.total_in() - start_in) as usize == data.len();
            // The flush is complete once it stopped with room to spare (a
            // sync flush then ends with `TAIL`, on a byte boundary).
            if done && out.len() < out.capacity() {
                debug_assert!(out.ends_with(&TAIL));
                break;
            }
        }
        Bytes::from(out)
    })
}

/// `data` as stored (uncompressed) deflate blocks.
fn stored(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 5 * (data.len() / 0xffff + 1));
    for block in data.chunks(0xffff) {
        let len = block.len() as u16;
        // BFINAL 0, BTYPE 00, then padding to the byte boundary.
        out.put_u8(0);
        out.put_u16_le(len);
        out.put_u16_le(!len);
        out.extend_from_slice(block);
    }
    out.freeze()
}

/// Makes `pieces` a message payload: a message must not end with the
/// sync flush's four bytes (the receiver adds them), and must end where
/// they can be added (after a stored piece, one more byte starts the
/// empty block they end).
pub fn finish(pieces: &mut Vec<Bytes>) {
    match pieces.last_mut() {
        Some(last) if last.ends_with(&TAIL) => last.truncate(last.len() - TAIL.len()),
        Some(_) => pieces.push(Bytes::from_static(&[0])),
        None => {}
    }
}

/// Why a compressed message from a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// Not a valid deflate stream.
    #[error("invalid compressed data")]
    Corrupt,
    /// It inflates past the message size limit.
    #[error("message too big once inflated")]
    TooBig,
}

/// Inflates one compressed message, frame by frame.
pub struct MessageInflater {
    inner: Box<Decompress>,
    max: usize,
    total: usize,
    /// A final block was read (RFC 7692 §7.2.3.4 allows one): nothing may
    /// follow it, and the tail is not added after it.
    ended: bool,
}

impl MessageInflater {
    /// A message that may inflate to at most `max` bytes.
    pub fn new(max: usize) -> MessageInflater {
        MessageInflater {
            inner: Box::new(Decompress::new(false)),
            max,
            total: 0,
            ended: false,
        }
    }

    /// Ready for another message (the same limit).
    pub fn reset(&mut self) {
        self.inner.reset(false);
        self.total = 0;
        self.ended = false;
    }

    /// Inflates one frame's payload into `out`; `last` for the message's
    /// final frame.
    pub fn frame(
        &mut self,
        payload: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), InflateError> {
        self.inflate(payload, out)?;
        if last && !self.ended {
            self.inflate(&TAIL, out)?;
        }
        Ok(())
    }

    fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        if self.ended {
            return if input.is_empty() {
                Ok(())
            } else {
                Err(InflateError::Corrupt)
            };
        }
        loop {
            if out.len() == out.capacity() {
                // Room for what the limit still allows and one byte more,
                // which, if it comes, tells the message is too big.
                let room = self.max - self.total + 1;
                out.reserve_exact((input.len() * 4).max(256).min(room));
            }
            let (before_in, before_out) = (self.inner.total_in(), out.len());
            let status = self
                .inner
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            self.total += out.len() - before_out;
            if self.total > self.max {
                return Err(InflateError::TooBig);
            }
            input = &input[(self.inner.total_in() - before_in) as usize..];
            // A final block is allowed, but nothing may follow it.
            if status == Status::StreamEnd {
                self.ended = true;
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(InflateError::Corrupt)
                };
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
            let stuck = self.inner.total_in() == before_in && out.len() == before_out;
            if stuck && out.len() < out.capacity() {
                // Room for output, yet nothing taken and nothing made.
                return Err(InflateError::Corrupt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inflates a whole message payload the way a client does.
    fn inflate(message: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        MessageInflater::new(1 << 20)
            .frame(message, true, &mut out)
            .expect("inflates");
        out
    }

    fn message(pieces: &[Bytes]) -> Vec<u8> {
        let mut pieces = pieces.to_vec();
        finish(&mut pieces);
        pieces.concat()
    }

    #[test]
    fn offers_we_can_honour_and_offers_we_decline() {
        for ok in [
            "permessage-deflate",
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; client_max_window_bits=10; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=15",
            "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover",
            "Permessage-Deflate; client_max_window_bits=\"12\"",
        ] {
            assert!(accepts_offer([ok]), "{ok}");
        }
        for no in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
        ] {
            assert!(!accepts_offer([no]), "{no}");
        }
        // A declined offer does not hide an acceptable one after it.
        assert!(accepts_offer([
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate"
        ]));
    }

    #[test]
    fn pieces_compressed_apart_inflate_as_one_message() {
        let a = br#"{"push":{"channel":"news","pub":{"data":{"text":"hello hello hello"},"offset":1}}}"#;
        let b = br#"{"push":{"channel":"news","pub":{"data":{"text":"again again again"},"offset":2}}}"#;
        let pieces = [piece(a, 1), piece(b"\n", 1), piece(b, 6)];
        assert!(pieces[0].len() < a.len(), "compressed");
        let expected = [&a[..], b"\n", &b[..]].concat();
        assert_eq!(inflate(&message(&pieces)), expected);
        // A stored piece last: the message ends so the tail can be added.
        assert_eq!(
            inflate(&message(&[piece(a, 1), piece(b"!", 1)])),
            [&a[..], b"!"].concat()
        );
        assert_eq!(inflate(&message(&[piece(b"tiny", 9)])), b"tiny");
    }

    #[test]
    fn a_piece_is_the_same_bytes_every_time() {
        let data = vec![b'x'; 5000];
        assert_eq!(piece(&data, 1), piece(&data, 1));
        assert_eq!(inflate(&message(&[piece(&data, 1)])), data);
    }

    #[test]
    fn stored_blocks_split_at_their_size_limit() {
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(inflate(&message(&[stored(&data)])), data);
    }

    #[test]
    fn a_message_inflates_across_frames() {
        let data = vec![b'y'; 3000];
        let whole = message(&[piece(&data, 1)]);
        let (first, second) = whole.split_at(whole.len() / 2);
        let mut out = Vec::new();
        let mut inflater = MessageInflater::new(10_000);
        inflater.frame(first, false, &mut out).unwrap();
        inflater.frame(second, true, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let bomb = message(&[piece(&vec![0u8; 1 << 20], 9)]);
        assert!(bomb.len() < 2000);
        let mut out = Vec::new();
        assert_eq!(
            MessageInflater::new(64 << 10).frame(&bomb, true, &mut out),
            Err(InflateError::TooBig)
        );
        assert!(
            out.len() <= (64 << 10) + 1,
            "stopped one byte past the limit"
        );
        // Exactly at the limit is fine.
        let exact = message(&[piece(&[7u8; 4096], 1)]);
        let mut out = Vec::new();
        assert!(MessageInflater::new(4096)
            .frame(&exact, true, &mut out)
            .is_ok());
        assert_eq!(out.len(), 4096);

        let mut out = Vec::new();
        assert_eq!(
            MessageInflater::new(1024).frame(&[0xff; 16], true, &mut out),
            Err(InflateError::Corrupt)
        );
    }
}
