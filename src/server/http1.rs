//! The fast path for long-lived HTTP/1.1 responses on plain connections.
//!
//! Most connections of a hub are event streams and WebSockets that live for
//! hours and mostly sit idle. Served by hyper, each would keep hyper's
//! buffers and connection state (about 16 KB) for its whole life, and every
//! event would go through hyper's body, encoder and buffers. Here the first
//! request head of a plain TCP connection is read into a small buffer; when
//! it asks for a stream (`Accept: text/event-stream`) or a WebSocket
//! upgrade, the router answers it as usual and the answer is written
//! straight to the socket: the head once, then each chunk of the live body
//! as one `writev` (chunked encoding around the shared event bytes), or the
//! upgraded protocol on the bare socket. Nothing else is kept.
//!
//! Any other request, and whatever follows a short answer on the same
//! connection, goes to hyper with the bytes already read.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::ConnectInfo;
use axum::http::response::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::transport::live::{Chunks, LiveBody, OnUpgrade, Socket, Upgrade};

/// A request head longer than this goes to hyper (ours are a few hundred
/// bytes; hyper answers oversized heads properly).
const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a head we parse.
const MAX_HEADERS: usize = 64;

/// What a first request needs from the connection it came on.
pub(super) struct Conn {
    pub peer: SocketAddr,
    pub router: Router,
    /// The head must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// A write that makes no progress for this long ends the connection.
    pub stall_timeout: Duration,
}

/// Serves the first request of a plain connection when it is long-lived.
/// Returns the socket and the bytes read so far when hyper should serve
/// the connection (from its first request, or after a short answer), and
/// `None` when the connection is finished.
pub(super) async fn serve_first(mut stream: TcpStream, conn: Conn) -> Option<(TcpStream, Bytes)> {
    let stall_timeout = conn.stall_timeout;
    // Boxed: answering needs room (the request, the router's future) only
    // for a moment, and this task lives as long as the connection.
    match Box::pin(answer(&mut stream, conn)).await {
        Answered::Hyper(read) => Some((stream, read)),
        Answered::Upgraded(on_upgrade, read_ahead) => {
            on_upgrade(Socket::Tcp(stream), read_ahead).await;
            None
        }
        Answered::Streaming(chunks) => {
            write_chunks(&mut stream, chunks, stall_timeout).await;
            None
        }
        Answered::Closed => None,
    }
}

/// What is left to do once the first request is answered.
enum Answered {
    /// Hyper serves the connection, these bytes first.
    Hyper(Bytes),
    /// The head of a 101 is out: run the protocol on the socket.
    Upgraded(OnUpgrade, Bytes),
    /// The head is out: write these chunks.
    Streaming(Chunks),
    /// Nothing: the client went away.
    Closed,
}

async fn answer(stream: &mut TcpStream, conn: Conn) -> Answered {
    let mut buf = BytesMut::with_capacity(4096);
    let head = tokio::time::timeout(conn.header_timeout, read_head(stream, &mut buf)).await;
    let (mut req, head_len) = match head {
        Ok(Ok(Some(parsed))) => parsed,
        Ok(Ok(None)) => return Answered::Hyper(buf.freeze()),
        // The client went away, or its head did not arrive in time.
        Ok(Err(_)) | Err(_) => return Answered::Closed,
    };
    // Copied out: a slice of `buf` would keep its whole allocation alive
    // for as long as the connection lives.
    let read_ahead = Bytes::copy_from_slice(&buf[head_len..]);
    drop(buf);
    req.extensions_mut().insert(ConnectInfo(conn.peer));
    let Ok(mut res) = conn.router.oneshot(req).await;
    let upgrade = Upgrade::take(&mut res);
    let live = LiveBody::take(&mut res);
    let (head, body) = res.into_parts();
    if let Some(on_upgrade) = upgrade {
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return match write_head(stream, &head, Framing::None).await {
                Ok(()) => Answered::Upgraded(on_upgrade, read_ahead),
                Err(_) => Answered::Closed,
            };
        }
    }
    let chunks: Chunks = match live {
        Some(chunks) => chunks,
        None => match body.size_hint().exact() {
            Some(len) => {
                // A short answer (an error, usually); hyper serves the rest.
                let written = async {
                    write_head(stream, &head, Framing::Length(len)).await?;
                    let body = axum::body::to_bytes(body, usize::MAX)
                        .await
                        .map_err(io::Error::other)?;
                    stream.write_all(&body).await
                };
                return match written.await {
                    Ok(()) => Answered::Hyper(read_ahead),
                    Err(_) => Answered::Closed,
                };
            }
            // Any other streaming body ends at its first error.
            None => Box::pin(
                body.into_data_stream()
                    .take_while(|frame| std::future::ready(frame.is_ok()))
                    .map(Result::unwrap_or_default),
            ),
        },
    };
    match write_head(stream, &head, Framing::Chunked).await {
        Ok(()) => Answered::Streaming(chunks),
        Err(_) => Answered::Closed,
    }
}

/// Reads until a whole request head is in `buf`. `Some` with the request
/// and the head's length when it is one we serve; `None` when hyper
/// should have it (anything else, including what we cannot parse: hyper
/// answers it properly).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> io::Result<Option<(Request<Body>, usize)>> {
    loop {
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(len)) => return Ok(long_lived(&parsed).map(|r| (r, len))),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                if buf.capacity() == buf.len() {
                    buf.reserve(buf.len());
                }
            }
            _ => return Ok(None),
        }
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
enum Framing {
    /// No body follows (an upgrade).
    None,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`, until the terminating chunk.
    Chunked,
}

async fn write_head(stream: &mut TcpStream, res: &Parts, framing: Framing) -> io::Result<()> {
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
    stream.write_all(&head).await
}

/// Writes each chunk of a live body as an HTTP/1.1 chunk until the body
/// ends (then the terminating chunk) or the client goes away.
async fn write_chunks(stream: &mut TcpStream, mut chunks: Chunks, stall_timeout: Duration) {
    loop {
        let next = poll_fn(|cx| {
            // The client sends nothing on an event stream; reading tells
            // when it goes (EOF or reset). Stray bytes are dropped.
            while stream.poll_read_ready(cx).is_ready() {
                let mut sink = [0u8; 256];
                match stream.try_read(&mut sink) {
                    Ok(0) => return Poll::Ready(None),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => return Poll::Ready(None),
                }
            }
            chunks.poll_next_unpin(cx).map(Some)
        })
        .await;
        let written = match next {
            None => return, // the client went away
            Some(None) => {
                write_all_vectored(stream, &mut [IoSlice::new(b"0\r\n\r\n")], stall_timeout).await;
                return;
            }
            Some(Some(chunk)) if chunk.is_empty() => continue,
            Some(Some(chunk)) => {
                let mut size = [0u8; 18];
                let size = chunk_size_line(chunk.len(), &mut size);
                let mut parts = [
                    IoSlice::new(size),
                    IoSlice::new(&chunk),
                    IoSlice::new(b"\r\n"),
                ];
                write_all_vectored(stream, &mut parts, stall_timeout).await
            }
        };
        if !written {
            return;
        }
    }
}

/// `{len:x}\r\n` into `buf`.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
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

/// Writes all of `parts`: straight away when the socket takes them (the
/// usual case: no timer, one system call), else waiting for it to drain,
/// for at most `stall_timeout` without progress. False when the client is
/// gone or stalled.
async fn write_all_vectored(
    stream: &mut TcpStream,
    mut parts: &mut [IoSlice<'_>],
    stall_timeout: Duration,
) -> bool {
    loop {
        match stream.try_write_vectored(parts) {
            Ok(0) => return false,
            Ok(n) => {
                IoSlice::advance_slices(&mut parts, n);
                if parts.is_empty() {
                    return true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Boxed: the timer is needed only when the client lags.
                match Box::pin(tokio::time::timeout(stall_timeout, stream.writable())).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
            Err(_) => return false,
        }
    }
}

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
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(head.as_bytes()).unwrap().is_complete());
        long_lived(&parsed)
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
