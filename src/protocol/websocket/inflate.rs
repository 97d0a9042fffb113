//! A client's frames with their compressed messages inflated, for the
//! WebSocket implementation that reads them.
//!
//! tungstenite reads client frames and enforces RFC 6455 (masking,
//! fragmentation, control frames, UTF-8, closing), but knows no extension:
//! a frame with RSV1 set is a protocol error to it. On a connection that
//! agreed to permessage-deflate, the client's bytes go through a
//! [`FrameInflater`] first. It copies every frame as it is, except the
//! frames of a compressed message (RSV1 on its first frame), which it
//! inflates and passes on as plain frames of the same kind, masked with a
//! zero key. Everything RFC 6455 checks is still checked by tungstenite on
//! what comes out; this only adds RFC 7692's own rules (RSV1 only on the
//! first frame of a data message) and limits (a compressed frame, and
//! what a message inflates to, are bounded).

use super::client_frame;
use super::deflate::{InflateError, MessageInflater};

/// Why the client's stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// RSV1 on a control or continuation frame.
    #[error("RSV1 is only allowed on the first frame of a data message")]
    Reserved,
    /// An unmasked client frame.
    #[error("client frames must be masked")]
    Unmasked,
    /// A compressed frame, or what a message inflates to, is over the limit.
    #[error("message too big")]
    TooBig,
    /// The compressed data is not valid deflate.
    #[error("invalid compressed data")]
    Corrupt,
}

impl FrameError {
    /// The close reason for it.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Reserved => "protocol error: RSV1 on a control or continuation frame",
            FrameError::Unmasked => "protocol error: unmasked client frame",
            FrameError::TooBig => "message too big",
            FrameError::Corrupt => "invalid compressed data",
        }
    }

    /// The WebSocket close code for it.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Reserved | FrameError::Unmasked => 1002,
            FrameError::TooBig => 1009,
            FrameError::Corrupt => 1007,
        }
    }
}

impl From<InflateError> for FrameError {
    fn from(e: InflateError) -> Self {
        match e {
            InflateError::Corrupt => FrameError::Corrupt,
            InflateError::TooBig => FrameError::TooBig,
        }
    }
}

/// Most bytes of a client frame header: a 64-bit length and a mask.
const MAX_HEADER: usize = 14;

/// Where in the stream the inflater is.
enum At {
    /// Reading a header; `have` bytes of it so far.
    Header { buf: [u8; MAX_HEADER], have: usize },
    /// Copying `left` payload bytes of a frame as they come.
    Copying { left: u64 },
    /// Gathering the payload of a compressed frame (unmasked as it comes).
    Gathering {
        first: u8,
        mask: [u8; 4],
        left: usize,
        payload: Vec<u8>,
    },
}

/// Inflates the compressed messages of one client's frame stream.
pub struct FrameInflater {
    at: At,
    max_message: usize,
    /// The compressed message in progress, between its first and last frame.
    message: Option<MessageInflater>,
}

impl FrameInflater {
    /// Compressed frames, and what a message inflates to, are at most
    /// `max_message` bytes.
    pub fn new(max_message: usize) -> FrameInflater {
        FrameInflater {
            at: At::Header {
                buf: [0; MAX_HEADER],
                have: 0,
            },
            max_message,
            message: None,
        }
    }

    /// Takes the next bytes from the client and appends what tungstenite
    /// should read to `out`. Once it fails, the stream is unusable.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        while !input.is_empty() {
            match &mut self.at {
                At::Header { buf, have } => {
                    let take = (header_len(&buf[..*have]) - *have).min(input.len());
                    buf[*have..*have + take].copy_from_slice(&input[..take]);
                    *have += take;
                    input = &input[take..];
                    if header_len(&buf[..*have]) == *have {
                        let header = *buf;
                        let len = *have;
                        self.at = self.start_frame(&header[..len], out)?;
                        self.end_if_done(out)?;
                    }
                }
                At::Copying { left } => {
                    let take = (*left).min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..take]);
                    *left -= take as u64;
                    input = &input[take..];
                    self.end_if_done(out)?;
                }
                At::Gathering {
                    mask,
                    left,
                    payload,
                    ..
                } => {
                    let take = (*left).min(input.len());
                    let offset = payload.len();
                    payload.extend(
                        input[..take]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ mask[(offset + i) % 4]),
                    );
                    *left -= take;
                    input = &input[take..];
                    self.end_if_done(out)?;
                }
            }
        }
        Ok(())
    }

    /// Decides what to do with the frame whose `header` was just read.
    fn start_frame(&mut self, header: &[u8], out: &mut Vec<u8>) -> Result<At, FrameError> {
        let (first, opcode) = (header[0], header[0] & 0x0f);
        let rsv1 = first & 0x40 != 0;
        let (len, masked) = payload_len(header);
        let control = opcode & 0x08 != 0;
        let compressed = match opcode {
            _ if control => false,
            0x0 => self.message.is_some(),
            0x1 | 0x2 => {
                self.message = rsv1.then(|| MessageInflater::new(self.max_message));
                rsv1
            }
            // Reserved opcodes go to tungstenite, which refuses them.
            _ => false,
        };
        if rsv1 && (control || opcode == 0x0) {
            return Err(FrameError::Reserved);
        }
        if !compressed {
            out.extend_from_slice(header);
            return Ok(At::Copying { left: len });
        }
        if !masked {
            return Err(FrameError::Unmasked);
        }
        if len > self.max_message as u64 {
            return Err(FrameError::TooBig);
        }
        let m = &header[header.len() - 4..];
        Ok(At::Gathering {
            first,
            mask: [m[0], m[1], m[2], m[3]],
            left: len as usize,
            payload: Vec::with_capacity(len as usize),
        })
    }

    /// Finishes the current frame if all of it has been read.
    fn end_if_done(&mut self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let done = match &self.at {
            At::Header { .. } => false,
            At::Copying { left } => *left == 0,
            At::Gathering { left, .. } => *left == 0,
        };
        if !done {
            return Ok(());
        }
        let at = std::mem::replace(
            &mut self.at,
            At::Header {
                buf: [0; MAX_HEADER],
                have: 0,
            },
        );
        if let At::Gathering { first, payload, .. } = at {
            let last = first & 0x80 != 0;
            let mut inflated = Vec::new();
            if let Some(message) = &mut self.message {
                message.frame(&payload, last, &mut inflated)?;
            }
            if last {
                self.message = None;
            }
            // The same frame, RSV1 cleared, masked with a zero key.
            client_frame(first & !0x40, &inflated, [0; 4], out);
        }
        Ok(())
    }
}

/// How long the header starting with `partial` is (as far as known).
fn header_len(partial: &[u8]) -> usize {
    if partial.len() < 2 {
        return 2;
    }
    let mask = if partial[1] & 0x80 != 0 { 4 } else { 0 };
    2 + mask
        + match partial[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        }
}

/// The payload length of a whole header, and whether it is masked.
fn payload_len(header: &[u8]) -> (u64, bool) {
    let masked = header[1] & 0x80 != 0;
    let len = match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&header[2..10]);
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    (len, masked)
}

#[cfg(test)]
mod tests {
    use super::super::deflate::{finish, piece};
    use super::*;

    /// A client frame: `first` byte, masked with `mask`.
    fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        client_frame(first, payload, mask, &mut out);
        out
    }

    fn compressed(data: &[u8]) -> Vec<u8> {
        let mut pieces = vec![piece(data, 1)];
        finish(&mut pieces);
        pieces.concat()
    }

    /// Feeds `input` in chunks of `step` bytes.
    fn run(input: &[u8], step: usize) -> Result<Vec<u8>, FrameError> {
        let mut inflater = FrameInflater::new(1 << 16);
        let mut out = Vec::new();
        for chunk in input.chunks(step) {
            inflater.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn plain_frames_pass_unchanged_and_compressed_ones_come_out_inflated() {
        let text =
            br#"{"id":1,"publish":{"channel":"chat","data":{"text":"hello hello hello hello"}}}"#;
        let mask = [1, 2, 3, 4];
        let ping = frame(0x89, b"ping", mask);
        let plain = frame(0x81, b"{}", mask);
        let mut input = plain.clone();
        input.extend(frame(0xc1, &compressed(text), mask));
        input.extend(&ping);
        for step in [1, 3, 7, 1000] {
            let out = run(&input, step).unwrap();
            let mut expected = plain.clone();
            client_frame(0x81, text, [0; 4], &mut expected);
            expected.extend(&ping);
            assert_eq!(out, expected, "step {step}");
        }
    }

    #[test]
    fn a_fragmented_compressed_message_inflates_frame_by_frame() {
        let text = vec![b'z'; 4000];
        let data = compressed(&text);
        let (a, b) = data.split_at(data.len() / 2);
        let mut input = frame(0x41, a, [9, 8, 7, 6]); // text, RSV1, not final
        input.extend(frame(0x89, b"", [1, 1, 1, 1])); // a ping between
        input.extend(frame(0x80, b, [5, 5, 5, 5])); // final continuation
        let out = run(&input, 5).unwrap();
        let mut read = tungstenite_frames(&out);
        let ping = read.remove(1);
        assert_eq!(ping.0 & 0x0f, 0x9);
        let message: Vec<u8> = read.iter().flat_map(|(_, p)| p.clone()).collect();
        assert_eq!(message, text);
        assert!(read.iter().all(|(first, _)| first & 0x70 == 0));
    }

    /// Parses frames with tungstenite's own frame parser.
    fn tungstenite_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        use tungstenite::protocol::frame::FrameHeader;
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let first = bytes[0];
            let mut cursor = std::io::Cursor::new(bytes);
            let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            let start = cursor.position() as usize;
            let mut payload = bytes[start..start + len as usize].to_vec();
            if let Some(mask) = header.mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= mask[i % 4];
                }
            }
            frames.push((first, payload));
            bytes = &bytes[start + len as usize..];
        }
        frames
    }

    #[test]
    fn rsv1_where_it_may_not_be_and_bad_data_are_refused() {
        let mask = [0; 4];
        assert_eq!(run(&frame(0xc9, b"", mask), 10), Err(FrameError::Reserved));
        let mut fragmented = frame(0x01, b"{", mask);
        fragmented.extend(frame(0xc0, b"}", mask));
        assert_eq!(run(&fragmented, 10), Err(FrameError::Reserved));
        assert_eq!(
            run(&frame(0xc1, &[0xff; 20], mask), 10),
            Err(FrameError::Corrupt)
        );
        let bomb = compressed(&vec![0u8; 1 << 20]);
        assert_eq!(run(&frame(0xc2, &bomb, mask), 100), Err(FrameError::TooBig));
        // Its header alone is enough to refuse an oversized compressed frame.
        let mut huge = vec![0xc2, 0xff];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(run(&huge, 100), Err(FrameError::TooBig));
        let mut unmasked = frame(0xc1, &compressed(b"{}"), mask);
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert_eq!(run(&unmasked, 100), Err(FrameError::Unmasked));
        assert_eq!(FrameError::TooBig.close_code(), 1009);
    }
}
