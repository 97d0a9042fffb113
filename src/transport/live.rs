//! Responses that outlive their handler: endless event streams, and
//! protocol upgrades (WebSocket).
//!
//! A handler answers with a response carrying a [`LiveBody`] (the chunks of
//! a stream that ends when the connection does) or an [`Upgrade`] (what to
//! run on the connection once the handshake response is out), and leaves
//! the writing to the server (`server::http1`, `server::listener`): on a
//! plain HTTP/1.1 connection the chunks go straight to the TCP socket, with
//! no HTTP machinery kept per connection; over TLS or HTTP/2 they become a
//! hyper body or a hyper upgrade. Handlers do not know which.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The chunks of a live response body, in order; the stream ends when the
/// response should.
pub type Chunks = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// A live body and the name of its transport (for metrics).
pub type Live = (Chunks, &'static str);

/// A response extension holding a live body until the server takes it.
/// (Extensions must be `Clone`; the body is taken once.)
#[derive(Clone)]
pub struct LiveBody(Arc<Mutex<Option<Live>>>);

impl LiveBody {
    /// A response whose body is `chunks` of a `transport` (the caller adds
    /// status and headers).
    pub fn response(
        transport: &'static str,
        chunks: impl Stream<Item = Bytes> + Send + 'static,
    ) -> Response<Body> {
        let mut res = Response::new(Body::empty());
        res.extensions_mut()
            .insert(LiveBody(Arc::new(Mutex::new(Some((
                Box::pin(chunks),
                transport,
            ))))));
        res
    }

    /// Takes the live body out of a response, if it has one.
    pub fn take(res: &mut Response<Body>) -> Option<Live> {
        res.extensions_mut()
            .remove::<LiveBody>()
            .and_then(|live| live.0.lock().take())
    }

    /// Turns a live body into an ordinary streaming body (for hyper).
    pub fn into_hyper(mut res: Response<Body>) -> Response<Body> {
        if let Some((chunks, _)) = LiveBody::take(&mut res) {
            // The router sized the empty placeholder body.
            res.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
            *res.body_mut() = Body::from_stream(chunks.map(Ok::<_, std::convert::Infallible>));
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
    pub fn attach<F, Fut>(res: &mut Response<Body>, on_upgrade: F)
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
    pub fn take(res: &mut Response<Body>) -> Option<OnUpgrade> {
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
