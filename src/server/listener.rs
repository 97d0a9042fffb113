//! Accepting connections: TCP, then TLS when configured, then HTTP/1.1 or
//! HTTP/2 (by ALPN over TLS; by the client's preface in cleartext, h2c),
//! with WebSocket upgrades on both (RFC 8441 extended CONNECT on HTTP/2).
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
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::limits::{self, LimitSettings, Refusal, Ticket};

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
        let conn = Connection {
            peer,
            admitted: admission.admit(peer.ip()),
            http: http.clone(),
            router: router.clone(),
            stop: stop.clone(),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
        };
        // Two task types, not one future with both branches: a plain
        // connection's task would otherwise be sized for a TLS session
        // (measured: +4 KB per idle SSE connection).
        match &tls {
            None => connections.spawn(conn.http(stream)),
            Some(acceptor) => connections.spawn(conn.tls(stream, acceptor.clone())),
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
    admitted: Result<Ticket<IpAddr>, Refusal>,
    http: Arc<auto::Builder<TokioExecutor>>,
    router: Router,
    stop: CancellationToken,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Connection {
    /// TLS first (within `header_timeout`), then HTTP.
    async fn tls(self, stream: TcpStream, acceptor: TlsAcceptor) {
        match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.http(stream).await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    async fn http<IO>(self, stream: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(Activity {
            last_ms: AtomicU64::new(now_ms()),
            spoke: AtomicBool::new(false),
        });
        let (ticket, refusal) = match self.admitted {
            Ok(ticket) => {
                metrics::gauge!("tidings_tcp_connections").increment(1.0);
                (Some(ticket), None)
            }
            Err(refusal) => (None, Some(refusal)),
        };
        let io = Tracked {
            inner: stream,
            activity: activity.clone(),
            _ticket: ticket,
        };
        let (router, peer) = (self.router, self.peer);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let router = router.clone();
            async move {
                if let Some(refusal) = refusal {
                    return Ok::<_, Infallible>(refused(refusal));
                }
                req.extensions_mut().insert(ConnectInfo(peer));
                router.oneshot(req).await
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
/// holding the connection's admission ticket for as long as the bytes flow
/// (after a WebSocket upgrade too: the upgraded stream is this one).
struct Tracked<IO> {
    inner: IO,
    activity: Arc<Activity>,
    _ticket: Option<Ticket<IpAddr>>,
}

/// When bytes last moved, and whether the client has sent any yet.
struct Activity {
    last_ms: AtomicU64,
    spoke: AtomicBool,
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        if self._ticket.is_some() {
            metrics::gauge!("tidings_tcp_connections").decrement(1.0);
        }
    }
}

impl<IO> Tracked<IO> {
    fn touch(&self) {
        self.activity.last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
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
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
