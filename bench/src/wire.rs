//! What the benchmark's clients read off their sockets, without an HTTP or
//! WebSocket library: the lines of an event stream, the frames a WebSocket
//! server sends, and the responses to pipelined publishes. Pure (no I/O), so it is tested on byte streams
//! cut at every point.
//!
//! The bench shares the machine with the server it measures: a library's
//! per-message work (body channels, per-frame allocations, waker juggling)
//! is CPU the server does not get. These readers look at bytes in place and
//! keep only what a read cut in half.

/// Splits a byte stream into lines (without the `\n`), across reads.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

/// A line longer than this is dropped (no delivery is that long).
const MAX_LINE: usize = 1 << 20;

impl Lines {
    /// Calls `line` for every complete line in `bytes` (after what an
    /// earlier call left unfinished).
    pub fn feed(&mut self, bytes: &[u8], mut line: impl FnMut(&[u8])) {
        let mut rest = bytes;
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(end) => {
                    self.partial.extend_from_slice(&rest[..end]);
                    line(&self.partial);
                    self.partial.clear();
                    rest = &rest[end + 1..];
                }
                None => {
                    self.keep(rest);
                    return;
                }
            }
        }
        let complete = match memchr::memrchr(b'\n', rest) {
            Some(last) => {
                let (complete, tail) = rest.split_at(last + 1);
                self.keep(tail);
                complete
            }
            None => {
                self.keep(rest);
                return;
            }
        };
        for l in complete[..complete.len() - 1].split(|b| *b == b'\n') {
            line(l);
        }
    }

    fn keep(&mut self, tail: &[u8]) {
        if self.partial.len() + tail.len() > MAX_LINE {
            self.partial.clear();
        } else {
            self.partial.extend_from_slice(tail);
        }
    }
}

/// A WebSocket frame's opcode, as far as a subscriber cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Text or binary data (or a continuation of it).
    Data,
    /// A whole permessage-deflate message (RSV1 set).
    Compressed,
    /// A close frame: the server is done.
    Close,
    /// A ping: answer with a pong.
    Ping,
    /// Anything else (a pong).
    Other,
}

/// Parses the frames a WebSocket server sends (unmasked), across reads.
#[derive(Debug, Default)]
pub struct Frames {
    partial: Vec<u8>,
}

/// A frame longer than this ends the subscriber (nothing we publish is).
pub const MAX_FRAME: u64 = 64 << 20;

impl Frames {
    /// Calls `frame` with each complete frame's opcode and payload; false
    /// when the stream is unusable (a masked or oversized frame).
    pub fn feed(&mut self, bytes: &[u8], mut frame: impl FnMut(Op, &[u8])) -> bool {
        if self.partial.is_empty() {
            let used = match parse(bytes, &mut frame) {
                Some(used) => used,
                None => return false,
            };
            self.partial.extend_from_slice(&bytes[used..]);
            return true;
        }
        self.partial.extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.partial);
        let Some(used) = parse(&buf, &mut frame) else {
            return false;
        };
        self.partial = buf;
        self.partial.drain(..used);
        true
    }
}

/// Parses whole frames from the start of `bytes`; returns how many bytes
/// they took, or `None` on a frame no server may send us.
fn parse(bytes: &[u8], frame: &mut impl FnMut(Op, &[u8])) -> Option<usize> {
    let mut at = 0;
    loop {
        let rest = &bytes[at..];
        if rest.len() < 2 {
            return Some(at);
        }
        if rest[1] & 0x80 != 0 {
            return None; // servers do not mask
        }
        let (len, header) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 if rest.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Some(at),
            n => (u64::from(n), 2),
        };
        if len > MAX_FRAME {
            return None;
        }
        let end = header + len as usize;
        if rest.len() < end {
            return Some(at);
        }
        let op = match rest[0] & 0x0f {
            0x1 | 0x2 if rest[0] & 0x40 != 0 => Op::Compressed,
            0x0..=0x2 => Op::Data,
            0x8 => Op::Close,
            0x9 => Op::Ping,
            _ => Op::Other,
        };
        frame(op, &rest[header..end]);
        at += end;
    }
}

/// A masked frame from a client (RFC 6455 requires clients to mask).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    tidings::protocol::websocket::client_frame(0x80 | opcode, payload, rand_mask(), &mut out);
    out
}

fn rand_mask() -> [u8; 4] {
    let n = uuid::Uuid::new_v4();
    let b = n.as_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// Reads the HTTP/1.1 responses to pipelined requests, across reads:
/// only their status codes matter (reported, in order, once the head is
/// in; the body is skipped).
#[derive(Debug, Default)]
pub struct Responses {
    buf: Vec<u8>,
    /// Where the current response's body is, if one is being skipped.
    body: Option<Body>,
}

#[derive(Debug, Clone, Copy)]
enum Body {
    /// So many bytes left.
    Length(usize),
    /// Chunked, at a chunk-size line.
    Chunked,
    /// Chunked, inside a chunk: so many bytes (its CRLF included) left.
    InChunk(usize),
}

impl Responses {
    /// Calls `status` for every response head completed by `bytes`, in
    /// order; false when the stream is not HTTP/1.1 responses whose end can
    /// be told (a body delimited by the connection's close, or garbage).
    pub fn feed(&mut self, bytes: &[u8], mut status: impl FnMut(u16)) -> bool {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        let ok = loop {
            let rest = &self.buf[at..];
            match self.body {
                None => {
                    let mut headers = [httparse::EMPTY_HEADER; 32];
                    let mut res = httparse::Response::new(&mut headers);
                    let len = match res.parse(rest) {
                        Ok(httparse::Status::Complete(len)) => len,
                        Ok(httparse::Status::Partial) => break true,
                        Err(_) => break false,
                    };
                    let code = res.code.unwrap_or(0);
                    let header = |name: &str| {
                        res.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                    };
                    let body = if code == 204 || code == 304 || (100..200).contains(&code) {
                        Body::Length(0)
                    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                        Body::Chunked
                    } else {
                        match header("content-length").and_then(|v| v.trim().parse().ok()) {
                            Some(n) => Body::Length(n),
                            None => break false,
                        }
                    };
                    status(code);
                    at += len;
                    self.body = Some(body);
                }
                Some(Body::Length(n)) => {
                    let skip = n.min(rest.len());
                    at += skip;
                    if skip < n {
                        self.body = Some(Body::Length(n - skip));
                        break true;
                    }
                    self.body = None;
                }
                Some(Body::Chunked) => {
                    let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
                        break true;
                    };
                    let size = std::str::from_utf8(&rest[..eol]).ok().and_then(|line| {
                        usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()
                    });
                    let Some(size) = size else {
                        break false;
                    };
                    at += eol + 2;
                    // The last chunk is followed by an empty trailer line.
                    self.body = Some(match size {
                        0 => Body::Length(2),
                        n => Body::InChunk(n + 2),
                    });
                }
                Some(Body::InChunk(n)) => {
                    let skip = n.min(rest.len());
                    at += skip;
                    if skip < n {
                        self.body = Some(Body::InChunk(n - skip));
                        break true;
                    }
                    self.body = Some(Body::Chunked);
                }
            }
        };
        self.buf.drain(..at);
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(stream: &[u8], cut: usize) -> Vec<String> {
        let mut lines = Lines::default();
        let mut out = Vec::new();
        let (a, b) = stream.split_at(cut);
        for part in [a, b] {
            lines.feed(part, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        out
    }

    #[test]
    fn lines_survive_any_cut() {
        let stream = b"9e\r\ndata: {\"seq\":1}\n\n\r\nid: x\ndata: {\"seq\":2}\n\n";
        let whole = lines_of(stream, 0);
        assert!(whole.contains(&"data: {\"seq\":2}".to_owned()));
        for cut in 0..=stream.len() {
            assert_eq!(lines_of(stream, cut), whole, "cut at {cut}");
        }
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_survive_any_cut() {
        let big = vec![b'x'; 70_000];
        let mut stream = server_frame(0x1, b"{\"seq\":1}");
        stream.extend(server_frame(0x9, b""));
        stream.extend(server_frame(0x1, &[b'y'; 300]));
        stream.extend(server_frame(0x2, &big));
        stream.extend(server_frame(0x8, &[3, 232]));
        let expected = vec![
            (Op::Data, 9),
            (Op::Ping, 0),
            (Op::Data, 300),
            (Op::Data, 70_000),
            (Op::Close, 2),
        ];
        for cut in (0..stream.len()).step_by(97).chain([1, 2, 3, 11, 12, 13]) {
            let mut frames = Frames::default();
            let mut got = Vec::new();
            let (a, b) = stream.split_at(cut);
            for part in [a, b] {
                assert!(frames.feed(part, |op, p| got.push((op, p.len()))));
            }
            assert_eq!(got, expected, "cut at {cut}");
        }
    }

    #[test]
    fn masked_or_oversized_server_frames_are_refused() {
        let mut masked = server_frame(0x1, b"hi");
        masked[1] |= 0x80;
        assert!(!Frames::default().feed(&masked, |_, _| {}));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        assert!(!Frames::default().feed(&huge, |_, _| {}));
    }

    #[test]
    fn pipelined_responses_are_counted_across_any_cut() {
        let stream = concat!(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n",
        )
        .as_bytes();
        for cut in 0..=stream.len() {
            let mut responses = Responses::default();
            let mut got = Vec::new();
            let (a, b) = stream.split_at(cut);
            for part in [a, b] {
                assert!(responses.feed(part, |code| got.push(code)), "cut at {cut}");
            }
            assert_eq!(got, vec![200, 201, 204, 429], "cut at {cut}");
            assert!(responses.buf.is_empty() && responses.body.is_none());
        }
        let mut responses = Responses::default();
        assert!(!responses.feed(b"HTTP/1.1 200 OK\r\n\r\nuntil close", |_| {}));
        assert!(!Responses::default().feed(b"garbage\r\n\r\n", |_| {}));
    }

    #[test]
    fn client_frames_are_masked_and_tungstenite_reads_them() {
        use tungstenite::protocol::frame::FrameHeader;
        for len in [2usize, 200, 70_000] {
            let payload = vec![b'a'; len];
            let frame = client_frame(0x1, &payload);
            let mut cursor = std::io::Cursor::new(frame.as_slice());
            let (header, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(parsed_len, len as u64);
            let mask = header.mask.expect("masked");
            let body = &frame[cursor.position() as usize..];
            let unmasked: Vec<u8> = body
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked, payload);
        }
    }
}
