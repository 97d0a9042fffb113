//! Accepting connections: TCP, then TLS when configured, then HTTP/1.1 or
//! HTTP/2 (by ALPN over TLS; by the client's preface in cleartext, h2c),
//! with WebSocket upgrades on both (RFC 8441 extended CONNECT on HTTP/2).
//! On a plain connection, a first request for an event stream or a
//! WebSocket is served by the lean path of [`super::http1`]; everything
//! else by hyper.
//!
//! The listener is also the first line of defence of a hub facing the open
//! internet: a connection over `limits.max_connections` or
//! `max_connections_per_ip` is answered 503 or 429 and closed, TLS and
//! request headers must arrive within `limits.header_timeout` (slowloris),
//! and a connection silent both ways for `limits.idle_timeout` is closed.
//! Event streams are never silent: heartbeats and pings keep them busy.

use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::http1;
use crate::limits::{self, LimitSettings, Refusal, Ticket};
use crate::transport::live::{LiveBody, Socket, Upgrade};
use crate::transport::writer::Deadline;

/// Serves `router` on `tcp` until `stop` fires, then asks every connection
/// to finish (HTTP/1.1 after its current response, HTTP/2 with GOAWAY).
/// The returned tracker is closed; wait on it for the connections to end.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: &LimitSettings,
    router: Router,
    stop: CancellationToken,
) -> TaskTracker {
    let admission = limits::connections(limits);
    let http = Arc::new(http_builder(limits));
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: the listener is
                    // fine, so wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let admitted = admission.admit(peer.ip()).map(Admitted::new);
        let conn = Connection {
            peer,
            http: http.clone(),
            router: router.clone(),
            stop: stop.clone(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            write_timeout: limits.write_timeout,
            upgrades: connections.clone(),
        };
        // Two task types, not one future with both branches: a plain
        // connection's task would otherwise be sized for a TLS session
        // (measured: +4 KB per idle SSE connection).
        match &tls {
            None => connections.spawn(conn.plain(stream, admitted)),
            Some(acceptor) => connections.spawn(conn.tls(stream, acceptor.clone(), admitted)),
        };
    }
    connections.close();
    connections
}

fn http_builder(limits: &LimitSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(limits.max_streams).unwrap_or(u32::MAX))
        .enable_connect_protocol();
    builder
}

/// One accepted TCP connection and what it needs to be served.
struct Connection {
    peer: SocketAddr,
    http: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    stop: CancellationToken,
    header_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    /// Where upgraded connections run (so that shutdown waits for them).
    upgrades: TaskTracker,
}

/// An admitted connection's place in the counts, held until it closes.
struct Admitted(#[allow(dead_code)] Ticket<IpAddr>);

impl Admitted {
    fn new(ticket: Ticket<IpAddr>) -> Admitted {
        metrics::gauge!("tidings_tcp_connections").increment(1.0);
        Admitted(ticket)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::gauge!("tidings_tcp_connections").decrement(1.0);
    }
}

impl Connection {
    /// A plain connection: the lean path for a first request that opens a
    /// stream or a WebSocket, hyper for the rest.
    async fn plain(self, stream: TcpStream, admitted: Result<Admitted, Refusal>) {
        let admitted = match admitted {
            Ok(admitted) => admitted,
            // Refused: hyper answers every request with the refusal.
            refused => return Box::pin(self.http(stream, Bytes::new(), refused)).await,
        };
        let first = http1::Conn {
            peer: self.peer,
            router: self.router.clone(),
            header_timeout: self.header_timeout,
            stall_timeout: self.write_timeout,
        };
        if let Some((stream, read)) = http1::serve_first(stream, first).await {
            // Boxed: hyper's connection state is large, and this task must
            // stay small for the many connections that never get here.
            Box::pin(self.http(stream, read, Ok(admitted))).await;
        }
    }

    /// TLS first (within `header_timeout`), then HTTP.
    async fn tls(
        self,
        stream: TcpStream,
        acceptor: TlsAcceptor,
        admitted: Result<Admitted, Refusal>,
    ) {
        match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.http(stream, Bytes::new(), admitted).await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    /// Serves the connection with hyper, `read` being bytes already read
    /// from it. Without an admission, every request gets the refusal.
    async fn http<IO>(self, stream: IO, read: Bytes, admitted: Result<Admitted, Refusal>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            last_ms: AtomicU64::new(now_ms()),
            spoke: AtomicBool::new(!read.is_empty()),
        });
        let (admitted, refusal) = match admitted {
            Ok(admitted) => (Some(admitted), None),
            Err(refusal) => (None, Some(refusal)),
        };
        let io = Tracked {
            inner: stream,
            read_ahead: read,
            activity: activity.clone(),
            deadline: Deadline::new(self.write_timeout),
            _admitted: admitted,
        };
        let (router, peer, upgrades) = (self.router, self.peer, self.upgrades);
        let write_timeout = self.write_timeout;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let router = router.clone();
            let upgrades = upgrades.clone();
            async move {
                if let Some(refusal) = refusal {
                    return Ok::<_, Infallible>(refused(refusal));
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                let on_upgrade = hyper::upgrade::on(&mut req);
                let Ok(mut res) = router.oneshot(req).await;
                if let Some(session) = Upgrade::take(&mut res) {
                    upgrades.spawn(async move {
                        match on_upgrade.await {
                            Ok(upgraded) => {
                                session(Socket::Hyper(TokioIo::new(upgraded)), Bytes::new()).await
                            }
                            Err(e) => tracing::debug!(%peer, error = %e, "upgrade failed"),
                        }
                    });
                }
                Ok(LiveBody::into_hyper(res, write_timeout, &upgrades))
            }
        });
        let conn = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut stopping = false;
        loop {
            // Until the client's first byte (which the HTTP version
            // detection waits for, untimed) it has header_timeout; a
            // refused connection gets its answer, then little time to go.
            let idle_timeout = if refusal.is_some() {
                self.header_timeout.min(Duration::from_secs(5))
            } else if !activity.spoke.load(Ordering::Relaxed) {
                self.header_timeout.min(self.idle_timeout)
            } else {
                self.idle_timeout
            };
            let last_ms = activity.last_ms.load(Ordering::Relaxed);
            let idle_deadline = epoch() + Duration::from_millis(last_ms) + idle_timeout;
            if Instant::now() >= idle_deadline {
                tracing::debug!(%peer, "closing an idle connection");
                metrics::counter!("tidings_idle_closes_total").increment(1);
                return;
            }
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
                // Bytes may have moved meanwhile: the loop re-checks.
                _ = tokio::time::sleep_until(idle_deadline.into()) => {}
            }
        }
    }
}

/// The answer to every request on a connection over a limit.
fn refused(refusal: Refusal) -> Response<Body> {
    let status = match refusal {
        Refusal::Connections => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut response = Response::new(Body::from(format!(
        "{} ({})\n",
        refusal.message(),
        refusal.label()
    )));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// A connection's byte stream, noting when bytes last moved either way and
/// holding the connection's admission for as long as the bytes flow
/// (after a WebSocket upgrade too: the upgraded stream is this one).
/// Bytes read before hyper took over come first. Writes have the write
/// deadline every transport has (`limits.write_timeout`): past it, hyper
/// sees an error and the connection ends.
struct Tracked<IO> {
    inner: IO,
    read_ahead: Bytes,
    activity: Arc<Activity>,
    deadline: Deadline,
    _admitted: Option<Admitted>,
}

/// When bytes last moved, and whether the client has sent any yet.
struct Activity {
    last_ms: AtomicU64,
    spoke: AtomicBool,
}

impl<IO> Tracked<IO> {
    fn touch(&self) {
        self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Applies the write deadline to a write attempt.
    fn written<T>(
        &mut self,
        cx: &mut Context<'_>,
        attempt: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let outcome = self.deadline.check(cx, attempt);
        if matches!(&outcome, Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::TimedOut) {
            crate::metrics::write_stalled("http");
        }
        outcome
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
            self.activity.spoke.store(true, Ordering::Relaxed);
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write(cx, buf);
        let poll = self.written(cx, attempt);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let poll = self.written(cx, attempt);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let attempt = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(cx, attempt)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
