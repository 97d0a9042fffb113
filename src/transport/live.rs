//! Responses that outlive their handler: endless event streams, and
//! protocol upgrades (WebSocket).
//!
//! A handler answers with a response carrying a [`LiveBody`] (what writes
//! the body of a stream that ends when the connection does: its pump) or
//! an [`Upgrade`] (what to run on the connection once the handshake
//! response is out), and leaves the rest to the server (`server::http1`,
//! `server::listener`): on a plain HTTP/1.1 connection the body is written
//! straight to the TCP socket, with no HTTP machinery kept per connection;
//! over TLS or HTTP/2 it becomes a hyper body or a hyper upgrade. Handlers
//! do not know which: they get a [`Body`] either way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Response;
use bytes::Bytes;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::Body;

/// What runs a live response body: given the body to write to (see
/// [`Body`]), the connection's pump, until the response ends.
pub type OnBody = Box<dyn FnOnce(Body) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A response extension holding a live body until the server takes it.
/// (Extensions must be `Clone`; the body is taken once.)
#[derive(Clone)]
pub struct LiveBody(Arc<Mutex<Option<OnBody>>>);

impl LiveBody {
    /// A response whose body `run` writes (the caller adds status and
    /// headers).
    pub fn response<F, Fut>(run: F) -> Response<axum::body::Body>
    where
        F: FnOnce(Body) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let boxed: OnBody = Box::new(move |body| Box::pin(run(body)));
        let mut res = Response::new(axum::body::Body::empty());
        res.extensions_mut()
            .insert(LiveBody(Arc::new(Mutex::new(Some(boxed)))));
        res
    }

    /// Takes the live body out of a response, if it has one.
    pub fn take(res: &mut Response<axum::body::Body>) -> Option<OnBody> {
        res.extensions_mut()
            .remove::<LiveBody>()
            .and_then(|live| live.0.lock().take())
    }

    /// Turns a live body into an ordinary streaming body for hyper: the
    /// body runs as a task of `tasks` (so that shutdown waits for it),
    /// handing its batches over a channel.
    pub fn into_hyper(
        mut res: Response<axum::body::Body>,
        stall: std::time::Duration,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Response<axum::body::Body> {
        if let Some(run) = LiveBody::take(&mut res) {
            let (body, mut rx) = Body::channel(stall);
            tasks.spawn(run(body));
            // The router sized the empty placeholder body.
            res.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
            let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
            *res.body_mut() =
                axum::body::Body::from_stream(stream.map(Ok::<_, std::convert::Infallible>));
        }
        res
    }
}

/// The byte stream of an upgraded connection.
pub enum Socket {
    /// A plain TCP connection, after the server wrote the handshake.
    Tcp(TcpStream),
    /// A connection hyper upgraded (TLS, HTTP/2 extended CONNECT).
    Hyper(TokioIo<hyper::upgrade::Upgraded>),
}

/// What runs on an upgraded connection: given the socket and the bytes the
/// client sent after its handshake request (already read by the server).
pub type OnUpgrade =
    Box<dyn FnOnce(Socket, Bytes) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A response extension: run this once the handshake response is out.
#[derive(Clone)]
pub struct Upgrade(Arc<Mutex<Option<OnUpgrade>>>);

impl Upgrade {
    /// Marks `res` (a 101, or a 200 to an HTTP/2 extended CONNECT) to run
    /// `on_upgrade` on the connection afterwards.
    pub fn attach<F, Fut>(res: &mut Response<axum::body::Body>, on_upgrade: F)
    where
        F: FnOnce(Socket, Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let boxed: OnUpgrade =
            Box::new(move |socket, read_ahead| Box::pin(on_upgrade(socket, read_ahead)));
        res.extensions_mut()
            .insert(Upgrade(Arc::new(Mutex::new(Some(boxed)))));
    }

    /// Takes the upgrade out of a response, if it has one.
    pub fn take(res: &mut Response<axum::body::Body>) -> Option<OnUpgrade> {
        res.extensions_mut()
            .remove::<Upgrade>()
            .and_then(|u| u.0.lock().take())
    }
}

impl Socket {
    /// Ready when there may be something to read; registers the task to be
    /// woken when there is (a hyper connection always answers maybe).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Socket::Tcp(s) => s.poll_read_ready(cx).map(|_| ()),
            Socket::Hyper(_) => Poll::Ready(()),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Hyper(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Hyper(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Hyper(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Hyper(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Hyper(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Hyper(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
