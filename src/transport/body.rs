//! A live HTTP response body as a connection's wire, on both of the
//! server's paths:
//!
//! - plain HTTP/1.1 (the lean path, `server::http1`): each batch is one
//!   chunk of the chunked encoding, written straight to the socket by one
//!   `writev` beside its size line — the shared event bytes are never
//!   copied — and the client leaving is seen by reading the socket;
//! - TLS or HTTP/2 (hyper): each batch is handed to hyper's body through a
//!   small channel; the client leaving drops the body.
//!
//! Both have the write deadline of every transport (`limits.write_timeout`).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::pump::{Batch, Close, Inbound, Wire};
use super::writer::{self, WriteError};
use crate::protocol::http1;

/// Batches waiting between a connection and hyper's body.
pub const BUFFERED: usize = 16;

/// A live response body being written.
pub enum Body {
    /// Chunks written to the socket (plain HTTP/1.1).
    Socket { io: TcpStream, stall: Duration },
    /// Batches handed to hyper's body.
    Channel {
        tx: mpsc::Sender<Bytes>,
        /// Resolves when hyper dropped the body (the client went away).
        closed: Pin<Box<dyn Future<Output = ()> + Send>>,
        stall: Duration,
    },
}

impl Body {
    /// A body written to `io` (its head already written, chunked).
    pub fn socket(io: TcpStream, stall: Duration) -> Body {
        Body::Socket { io, stall }
    }

    /// A body handed to hyper: the receiver is what hyper streams.
    pub fn channel(stall: Duration) -> (Body, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(BUFFERED);
        let closed = Box::pin({
            let tx = tx.clone();
            async move { tx.closed().await }
        });
        (Body::Channel { tx, closed, stall }, rx)
    }
}

impl Wire for Body {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        match self {
            // The client sends nothing on a response stream; reading tells
            // when it goes (EOF or reset). Stray bytes are dropped.
            Body::Socket { io, .. } => {
                while io.poll_read_ready(cx).is_ready() {
                    let mut sink = [0u8; 256];
                    match io.try_read(&mut sink) {
                        Ok(0) => return Poll::Ready(Inbound::Gone),
                        Ok(_) => continue,
                        // Readiness was stale: polling again registers the
                        // waker (breaking out here left none, so a client
                        // that went away from an idle stream was noticed
                        // only at the next heartbeat).
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(_) => return Poll::Ready(Inbound::Gone),
                    }
                }
                Poll::Pending
            }
            Body::Channel { closed, .. } => closed.as_mut().poll(cx).map(|()| Inbound::Gone),
        }
    }

    async fn send(&mut self, batch: Batch<'_>) -> Result<(), WriteError> {
        match self {
            Body::Socket { io, stall } => match batch {
                Batch::Plain(bytes) => write_chunk(io, &[IoSlice::new(bytes)], *stall).await,
                Batch::Pieces(pieces) | Batch::Compressed(pieces) => {
                    let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
                    write_chunk(io, &slices, *stall).await
                }
            },
            Body::Channel { tx, stall, .. } => match batch {
                Batch::Plain(bytes) => hand_over(tx, Bytes::copy_from_slice(bytes), *stall).await,
                Batch::Pieces(pieces) | Batch::Compressed(pieces) => {
                    for p in pieces {
                        hand_over(tx, p.clone(), *stall).await?;
                    }
                    Ok(())
                }
            },
        }
    }

    async fn close(self, _close: &Close) {
        if let Body::Socket { mut io, stall } = self {
            let mut last = [IoSlice::new(http1::LAST_CHUNK)];
            let _ = writer::write_all(&mut io, &mut last, stall).await;
        }
        // A channel body ends when its sender is dropped.
    }
}

/// Hands bytes to hyper's body: a body that takes nothing for `stall` is
/// a stalled client (over HTTP/2, its stream's flow control is shut).
async fn hand_over(
    tx: &mpsc::Sender<Bytes>,
    bytes: Bytes,
    stall: Duration,
) -> Result<(), WriteError> {
    match tx.try_send(bytes) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(WriteError::Gone),
        // Full: wait, boxed, so that every connection's state does not
        // carry room for a timer and a send it rarely needs.
        Err(mpsc::error::TrySendError::Full(bytes)) => {
            match Box::pin(tokio::time::timeout(stall, tx.send(bytes))).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(WriteError::Gone),
                Err(_) => Err(WriteError::Stalled),
            }
        }
    }
}

/// Writes `pieces` as one HTTP/1.1 chunk: its size line, the pieces, CRLF,
/// in one `writev` when the socket takes it.
async fn write_chunk(
    io: &mut TcpStream,
    pieces: &[IoSlice<'_>],
    stall: Duration,
) -> Result<(), WriteError> {
    let len = pieces.iter().map(|p| p.len()).sum();
    if len == 0 {
        return Ok(());
    }
    let mut size = [0u8; 18];
    let size = http1::chunk_size_line(len, &mut size);
    let mut parts = Vec::with_capacity(pieces.len() + 2);
    parts.push(IoSlice::new(size));
    parts.extend_from_slice(pieces);
    parts.push(IoSlice::new(b"\r\n"));
    writer::write_all(io, &mut parts, stall).await
}
