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
use std::time::Duration;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::ConnectInfo;
use axum::http::response::Parts;
use axum::http::{Request, StatusCode};
use axum::Router;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::protocol::http1::{self, FirstRequest, Framing};
use crate::transport::body::Body as LiveWire;
use crate::transport::live::{LiveBody, OnBody, OnUpgrade, Socket, Upgrade};
use crate::transport::writer::{self, WriteError};

/// What a first request needs from the connection it came on.
pub(super) struct Conn {
    pub peer: SocketAddr,
    pub router: Router,
    /// The head must arrive within this (slowloris).
    pub header_timeout: Duration,
    /// A write that makes no progress for this long ends the connection
    /// (`limits.write_timeout`).
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
        Answered::Live(run) => {
            run(LiveWire::socket(stream, stall_timeout)).await;
            None
        }
        Answered::Streaming(chunks) => {
            if write_chunks(&mut stream, chunks, stall_timeout).await == Err(WriteError::Stalled) {
                crate::metrics::write_stalled("stream");
            }
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
    /// The head is out: the connection's pump writes the body.
    Live(OnBody),
    /// The head is out: write these chunks (any other streaming body).
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
        Some(run) => {
            return match write_head(stream, &head, Framing::Chunked).await {
                Ok(()) => Answered::Live(run),
                Err(_) => Answered::Closed,
            }
        }
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
        match http1::first_request(buf) {
            FirstRequest::LongLived(req, len) => return Ok(Some((*req, len))),
            FirstRequest::Other => return Ok(None),
            FirstRequest::Partial => {
                if buf.capacity() == buf.len() {
                    buf.reserve(buf.len());
                }
            }
        }
    }
}

async fn write_head(stream: &mut TcpStream, res: &Parts, framing: Framing) -> io::Result<()> {
    stream.write_all(&http1::response_head(res, framing)).await
}

/// Most pieces of a live body gathered into one chunk (one `writev`).
const GATHER: usize = 64;

/// What is ready to be written.
enum Ready {
    /// Pieces (the first, then the others), and whether the body ended.
    Pieces(Bytes, Vec<Bytes>, bool),
    /// The body ended with nothing more.
    Ended,
    /// The client went away.
    Gone,
}

/// The chunks of a streaming body that is not a live one (none of the
/// hub's own endpoints answers with one; kept so that any other handler's
/// stream is still served on this path).
type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send>>;

/// Writes a streaming body until it ends (then the terminating chunk) or the
/// client goes away or stops reading. Everything ready at once is one
/// HTTP/1.1 chunk, written by one `writev` straight from the pieces
/// (shared event bytes, never copied).
async fn write_chunks(
    stream: &mut TcpStream,
    mut chunks: Chunks,
    stall_timeout: Duration,
) -> Result<(), WriteError> {
    loop {
        let ready = poll_fn(|cx| {
            // The client sends nothing on an event stream; reading tells
            // when it goes (EOF or reset). Stray bytes are dropped.
            while stream.poll_read_ready(cx).is_ready() {
                let mut sink = [0u8; 256];
                match stream.try_read(&mut sink) {
                    Ok(0) => return Poll::Ready(Ready::Gone),
                    Ok(_) => continue,
                    // Stale readiness: poll again, which registers the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Poll::Ready(Ready::Gone),
                }
            }
            let mut first: Option<Bytes> = None;
            let mut more = Vec::new();
            loop {
                match chunks.poll_next_unpin(cx) {
                    Poll::Ready(Some(piece)) if piece.is_empty() => {}
                    Poll::Ready(Some(piece)) => match &first {
                        None => first = Some(piece),
                        Some(_) => {
                            more.push(piece);
                            if more.len() + 1 >= GATHER {
                                break;
                            }
                        }
                    },
                    Poll::Ready(None) => {
                        return Poll::Ready(match first {
                            Some(first) => Ready::Pieces(first, more, true),
                            None => Ready::Ended,
                        })
                    }
                    Poll::Pending => break,
                }
            }
            match first {
                Some(first) => Poll::Ready(Ready::Pieces(first, more, false)),
                None => Poll::Pending,
            }
        })
        .await;
        let (first, more, ended) = match ready {
            Ready::Gone => return Err(WriteError::Gone),
            Ready::Ended => (None, Vec::new(), true),
            Ready::Pieces(first, more, ended) => (Some(first), more, ended),
        };
        if let Some(first) = first {
            let len = first.len() + more.iter().map(Bytes::len).sum::<usize>();
            let mut size = [0u8; 18];
            let size = http1::chunk_size_line(len, &mut size);
            if more.is_empty() {
                let mut parts = [
                    IoSlice::new(size),
                    IoSlice::new(&first),
                    IoSlice::new(b"\r\n"),
                ];
                writer::write_all(stream, &mut parts, stall_timeout).await?;
            } else {
                let mut parts = Vec::with_capacity(more.len() + 3);
                parts.push(IoSlice::new(size));
                parts.push(IoSlice::new(&first));
                parts.extend(more.iter().map(|p| IoSlice::new(p)));
                parts.push(IoSlice::new(b"\r\n"));
                writer::write_all(stream, &mut parts, stall_timeout).await?;
            }
        }
        if ended {
            let mut last = [IoSlice::new(http1::LAST_CHUNK)];
            return writer::write_all(stream, &mut last, stall_timeout).await;
        }
    }
}
