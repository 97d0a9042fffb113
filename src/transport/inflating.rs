//! The byte stream tungstenite reads a WebSocket from: the socket itself,
//! or, when the client agreed to permessage-deflate, the socket's bytes
//! with compressed messages inflated (`protocol::websocket::inflate`).
//!
//! Writes go straight to the socket either way. A connection without
//! compression pays one branch per read; one with compression holds no
//! buffer while idle (the inflated bytes waiting for tungstenite are
//! released once it has them all).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::live::Socket;
use crate::protocol::websocket::inflate::{FrameError, FrameInflater};

/// Bytes read from the socket at a time while inflating.
const READ_CHUNK: usize = 4096;

/// A WebSocket's socket, inflating on the way in if compression was agreed.
pub struct InflatingSocket {
    socket: Socket,
    inflating: Option<Box<Inflating>>,
}

struct Inflating {
    frames: FrameInflater,
    /// Inflated bytes not yet read, from `at`.
    ready: Vec<u8>,
    at: usize,
    /// The stream broke here; reported once `ready` is read.
    failed: Option<FrameError>,
}

impl InflatingSocket {
    /// `socket` as it is.
    pub fn plain(socket: Socket) -> InflatingSocket {
        InflatingSocket {
            socket,
            inflating: None,
        }
    }

    /// `socket` with compressed messages of at most `max_message` bytes
    /// (compressed or not) inflated; `read_ahead` is what the client sent
    /// after its handshake, read by the server already.
    pub fn inflating(socket: Socket, read_ahead: &Bytes, max_message: usize) -> InflatingSocket {
        let mut inflating = Inflating {
            frames: FrameInflater::new(max_message),
            ready: Vec::new(),
            at: 0,
            failed: None,
        };
        inflating.feed(read_ahead);
        InflatingSocket {
            socket,
            inflating: Some(Box::new(inflating)),
        }
    }

    /// Why the stream broke, if inflating broke it (tungstenite only sees
    /// an I/O error).
    pub fn failure(&self) -> Option<FrameError> {
        self.inflating.as_ref().and_then(|i| i.failed)
    }

    /// Ready when there may be something to read; registers the task to be
    /// woken when there is.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.inflating {
            Some(i) if i.at < i.ready.len() || i.failed.is_some() => Poll::Ready(()),
            _ => self.socket.poll_read_ready(cx),
        }
    }
}

impl Inflating {
    fn feed(&mut self, input: &[u8]) {
        if self.failed.is_none() {
            if let Err(e) = self.frames.feed(input, &mut self.ready) {
                self.failed = Some(e);
            }
        }
    }
}

impl AsyncRead for InflatingSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(inflating) = &mut this.inflating else {
            return Pin::new(&mut this.socket).poll_read(cx, buf);
        };
        loop {
            if inflating.at < inflating.ready.len() {
                let n = buf.remaining().min(inflating.ready.len() - inflating.at);
                buf.put_slice(&inflating.ready[inflating.at..inflating.at + n]);
                inflating.at += n;
                if inflating.at == inflating.ready.len() {
                    inflating.ready = Vec::new();
                    inflating.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = inflating.failed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.socket).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => inflating.feed(read.filled()),
                other => return other,
            }
        }
    }
}

impl AsyncWrite for InflatingSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().socket).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}
