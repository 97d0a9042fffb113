//! HTTP/1.1 heads for the lean path of long-lived responses
//! (`server::http1`): which first requests it takes, the response head it
//! writes, and the chunk framing of a live body. Pure (no I/O), so they are
//! unit-tested and fuzzed (`fuzz/fuzz_targets/http1_heads.rs`).

use std::time::SystemTime;

use axum::body::Body;
use axum::http::response::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request};

/// A request head longer than this is not ours to parse (ours are a few
/// hundred bytes; hyper answers oversized heads properly).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a head we parse.
const MAX_HEADERS: usize = 64;

/// What the bytes at the start of a connection are.
#[derive(Debug)]
pub enum FirstRequest {
    /// Not a whole head yet: read more.
    Partial,
    /// A request the lean path does not take (or cannot parse, or too
    /// long): hyper serves it.
    Other,
    /// A bodiless GET on HTTP/1.1 asking for an event stream or a
    /// WebSocket, and the length of its head.
    LongLived(Box<Request<Body>>, usize),
}

/// Parses the start of a connection.
pub fn first_request(buf: &[u8]) -> FirstRequest {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => match long_lived(&parsed) {
            Some(req) => FirstRequest::LongLived(Box::new(req), len),
            None => FirstRequest::Other,
        },
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => FirstRequest::Partial,
        _ => FirstRequest::Other,
    }
}

/// The request as `http` types, when it is a GET on HTTP/1.1 without a
/// body that asks for an event stream or a WebSocket.
fn long_lived(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    if parsed.method != Some("GET") || parsed.version != Some(1) {
        return None;
    }
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.trim().as_bytes();
                t.len() >= token.len() && t[..token.len()].eq_ignore_ascii_case(token.as_bytes())
            })
    };
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    let wanted = has(header::ACCEPT, "text/event-stream") || has(header::UPGRADE, "websocket");
    if has_body || !wanted {
        return None;
    }
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = parsed.path?.parse().ok()?;
    *req.headers_mut() = headers;
    Some(req)
}

/// How a response body is delimited.
pub enum Framing {
    /// No body follows (an upgrade).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, until the terminating chunk.
    Chunked,
}

/// The head of a response, delimited by `framing` (the response's own
/// `Content-Length` and `Transfer-Encoding` give way to it), with a `Date`.
pub fn response_head(res: &Parts, framing: Framing) -> Vec<u8> {
    let status = res.status;
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &res.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !res.headers.contains_key(header::DATE) {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(len) => {
            head.extend_from_slice(format!("content-length: {len}\r\n").as_bytes())
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// `{len:x}\r\n` into `buf`.
pub fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let digits = if len == 0 {
        1
    } else {
        (usize::BITS - len.leading_zeros()).div_ceil(4) as usize
    };
    for (i, digit) in buf[..digits].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[(len >> (4 * (digits - 1 - i))) & 0xf];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

/// The chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        let mut buf = [0u8; 18];
        assert_eq!(chunk_size_line(0, &mut buf), b"0\r\n");
        assert_eq!(chunk_size_line(15, &mut buf), b"f\r\n");
        assert_eq!(chunk_size_line(16, &mut buf), b"10\r\n");
        assert_eq!(chunk_size_line(158, &mut buf), b"9e\r\n");
        assert_eq!(
            chunk_size_line(usize::MAX, &mut buf),
            b"ffffffffffffffff\r\n"
        );
    }

    fn parse(head: &str) -> Option<Request<Body>> {
        match first_request(head.as_bytes()) {
            FirstRequest::LongLived(req, len) => {
                assert_eq!(len, head.len());
                Some(*req)
            }
            FirstRequest::Other => None,
            FirstRequest::Partial => panic!("partial: {head}"),
        }
    }

    #[test]
    fn only_bodiless_streaming_gets_on_http_1_1_take_the_fast_path() {
        let sse = "GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        let req = parse(sse).unwrap();
        assert_eq!(req.uri().query(), Some("topic=a"));
        assert_eq!(req.headers()["host"], "x");
        let ws = "GET /connection/websocket HTTP/1.1\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(parse(ws).is_some());
        for other in [
            "GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /.well-known/mercure HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 3\r\n\r\n",
            "GET /.well-known/mercure HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 3\r\n\r\n",
            "GET /.well-known/mercure HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
    }
}
