//! The loop that drives one Centrifugo session over any transport.
//!
//! A transport provides a [`Wire`]: where the client's frames come from
//! (WebSocket messages, `POST /emulation` bodies, or nothing after the
//! connect request of a unidirectional client), where batches of output
//! go, and how the connection ends. Everything else is the same for all
//! transports and lives here: the handshake timeout, pings and pongs, token
//! expiry, hub deliveries written in batches (the queue is held after each
//! until the hub's write clock ticks), server controls, slow-consumer and shutdown
//! disconnects.
//!
//! The loop waits on the wire, the hub queue, the control channel and one
//! timer (the earliest of its deadlines), all polled in place: waiting
//! again after a delivery creates no future and touches no timer unless a
//! deadline moved.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::session::{Disconnect, Session};
use super::{Node, Transport};
use crate::hub::{Delivery, ENGINE_RESET, SHUTTING_DOWN};
use crate::protocol::centrifuge::outbox::{Outbox, Payload};
use crate::protocol::centrifuge::resume::ChannelPosition;
use crate::protocol::centrifuge::{disconnect, Encoding};

/// What the client sent.
#[derive(Debug)]
pub enum Inbound {
    /// A frame of commands (or a unidirectional client's connect request).
    Frame(Bytes),
    /// The client went away.
    Gone,
    /// The client broke the transport's rules: close with this code.
    Broken(u16, &'static str),
}

/// A transport's side of a connection.
pub trait Wire: Send {
    /// Polls for the client's next frame.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;
    /// Writes one batch of output; false when the client is gone.
    fn send(&mut self, batch: Payload<'_>) -> impl Future<Output = bool> + Send;
    /// Ends the connection. WebSocket sends a close frame with the code;
    /// streams just end (the disconnect push was written before).
    fn close(self, code: u16, reason: &str) -> impl Future<Output = ()> + Send;
}

/// How a connection starts.
pub struct Start {
    /// The transport.
    pub transport: Transport,
    /// The encoding.
    pub encoding: Encoding,
    /// The emulated or unidirectional session id (else empty).
    pub session_id: String,
    /// A frame that came with the request (HTTP body, `cf_connect`).
    pub first_frame: Option<Bytes>,
    /// Positions to recover from (`uni_sse` `Last-Event-ID`).
    pub resume_from: Vec<ChannelPosition>,
    /// The client's address, for logs.
    pub remote: String,
    /// Request headers forwarded to proxies (`proxy.http_headers`).
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// permessage-deflate was agreed: batches are compressed at this level.
    pub compression: Option<u32>,
}

/// Runs a connection until it ends (the hub closes its queue on shutdown).
pub fn run<W: Wire>(wire: W, node: Arc<Node>, start: Start) -> impl Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "connection",
        transport = start.transport.name(),
        remote = %start.remote,
        client = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    drive(wire, node, start, span)
}

/// What woke the loop.
enum Event {
    Inbound(Inbound),
    Deliveries(Result<(), &'static str>),
    Timer,
}

/// The loop's deadlines; the timer is set to the earliest that applies.
struct Deadlines {
    handshake: Instant,
    next_ping: Instant,
    pong: Option<Instant>,
}

/// The loop itself. A function returning a block, not an `async fn`: an
/// `async fn` keeps a second copy of its arguments in its state, and this
/// state lives as long as the connection.
///
/// The connection's span is entered only where something may log (frames,
/// controls, timers, the end), not around the whole loop: deliveries, the
/// hot path, never log, and entering a span on every poll costs more than
/// the rest of a delivery's bookkeeping.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn drive<W: Wire>(
    mut wire: W,
    node: Arc<Node>,
    start: Start,
    span: tracing::Span,
) -> impl Future<Output = ()> + Send {
    async move {
        let transport = start.transport;
        let _open = crate::metrics::connection_opened("centrifugo", transport.name());
        let sink = node.hub.open_queue();
        let mut session = Session::new(
            node.clone(),
            transport,
            start.encoding,
            sink.clone(),
            start.session_id,
            start.headers,
        );
        span.record("client", session.client());
        session.resume_from(start.resume_from);
        let settings = &node.settings;
        let began = Instant::now();
        let far = began + Duration::from_secs(365 * 24 * 3600);
        let mut deadlines = Deadlines {
            handshake: began + settings.handshake_timeout,
            next_ping: began + settings.ping_interval,
            pong: None,
        };
        let mut timer = pin!(tokio::time::sleep_until(far));
        let mut timer_at = far;
        let mut batch = Vec::new();
        let mut out = Outbox::new(start.encoding, transport.framing());
        if let Some(level) = start.compression {
            out.compress(level);
        }
        let mut first_frame = start.first_frame;
        let result: Result<(), Disconnect> = loop {
            let was_connected = session.is_connected();
            let mut delivered = false;
            let step: Result<(), Disconnect> = if let Some(frame) = first_frame.take() {
                Box::pin(
                    session
                        .handle_frame(&frame, &mut out)
                        .instrument(span.clone()),
                )
                .await
            } else {
                let now = Instant::now();
                let at = next_deadline(&session, &deadlines, far);
                // A timer set too late is moved; one set too early just
                // fires and is set again (resetting costs a timer-wheel
                // update, and deadlines move later on every write).
                if at < timer_at || timer_at <= now {
                    timer.as_mut().reset(at);
                    timer_at = at;
                }
                let event = poll_fn(|cx| {
                    if let Poll::Ready(inbound) = wire.poll_recv(cx) {
                        return Poll::Ready(Event::Inbound(inbound));
                    }
                    if let Poll::Ready(taken) = sink.poll_take(cx, &mut batch) {
                        return Poll::Ready(Event::Deliveries(taken));
                    }
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Event::Timer),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                match event {
                    Event::Inbound(Inbound::Frame(frame)) => {
                        Box::pin(
                            session
                                .handle_frame(&frame, &mut out)
                                .instrument(span.clone()),
                        )
                        .await
                    }
                    Event::Inbound(Inbound::Gone) => break Ok(()),
                    Event::Inbound(Inbound::Broken(code, reason)) => Err((code, reason.to_owned())),
                    Event::Deliveries(Ok(())) => {
                        delivered = true;
                        deliver(&mut session, &mut batch, &mut out, &span).await
                    }
                    Event::Deliveries(Err(reason)) => Err(to_disconnect(match reason {
                        r if r == SHUTTING_DOWN => disconnect::SHUTDOWN,
                        r if r == ENGINE_RESET => disconnect::INSUFFICIENT_STATE,
                        _ => disconnect::SLOW,
                    })),
                    Event::Timer => {
                        on_timer(&mut session, &mut deadlines, &node, transport, &mut out)
                            .instrument(span.clone())
                            .await
                    }
                }
            };
            if !was_connected && session.is_connected() {
                span.record("user", session.user());
                span.in_scope(|| tracing::debug!("connected"));
            }
            if session.got_pong {
                deadlines.pong = None;
            }
            if let Err((code, reason)) = &step {
                if transport.disconnect_in_band() {
                    session.write_disconnect(*code, reason, &mut out);
                }
            }
            if !out.is_empty() {
                let sent = wire.send(out.payload()).await;
                out.clear();
                if !sent {
                    break Ok(());
                }
                if delivered {
                    sink.wrote();
                }
            }
            if let Err(d) = step {
                break Err(d);
            }
        };
        // The close frame goes out before the session counts as ended: a
        // shutdown waits for sessions to end, then the process exits.
        match &result {
            Ok(()) => span.in_scope(|| tracing::debug!("client went away")),
            Err((code, reason)) => {
                span.in_scope(|| tracing::debug!(code, %reason, "disconnecting"));
                crate::metrics::disconnect(transport.name(), *code, reason);
                // Boxed: only a closing connection needs its room.
                Box::pin(wire.close(*code, reason)).await;
            }
        }
        span.in_scope(|| session.ended(result.as_ref().err()));
    }
}

/// Pushes a batch of deliveries, in order, and carries out server controls
/// among them (one may end the connection: the rest is dropped).
async fn deliver(
    session: &mut Session,
    batch: &mut Vec<Delivery>,
    out: &mut Outbox,
    span: &tracing::Span,
) -> Result<(), Disconnect> {
    let mut result = Ok(());
    for d in batch.drain(..) {
        match d {
            _ if result.is_err() => {}
            Delivery::Control(bytes) => {
                let Some(control) = super::Control::from_bytes(&bytes) else {
                    continue;
                };
                result = Box::pin(session.control(control, out).instrument(span.clone())).await
            }
            d => result = session.push(d, out),
        }
    }
    result
}

/// The earliest deadline that applies now.
fn next_deadline(session: &Session, d: &Deadlines, far: Instant) -> Instant {
    let connected = session.is_connected();
    let from_secs = |at: u64| {
        let now = crate::time::now_secs();
        Instant::now() + Duration::from_secs(at.saturating_sub(now))
    };
    [
        (!connected).then_some(d.handshake),
        connected.then_some(d.next_ping),
        d.pong,
        session.expires_at().map(from_secs),
        session.next_sub_refresh().map(from_secs),
    ]
    .into_iter()
    .flatten()
    .fold(far, Instant::min)
}

/// Acts on every deadline that has passed.
async fn on_timer(
    session: &mut Session,
    d: &mut Deadlines,
    node: &Node,
    transport: Transport,
    out: &mut Outbox,
) -> Result<(), Disconnect> {
    let now = Instant::now();
    let settings = &node.settings;
    if !session.is_connected() {
        if now >= d.handshake {
            return Err(to_disconnect(disconnect::STALE));
        }
        return Ok(());
    }
    if d.pong.is_some_and(|p| now >= p) {
        if !session.got_pong {
            return Err(to_disconnect(disconnect::NO_PONG));
        }
        d.pong = None;
    }
    if now >= d.next_ping {
        session.ping(out);
        d.next_ping = now + settings.ping_interval;
        if !transport.unidirectional() {
            d.pong = Some(now + settings.pong_timeout);
        }
    }
    if session
        .expires_at()
        .is_some_and(|e| e <= crate::time::now_secs())
    {
        Box::pin(session.expired()).await?;
    }
    if session
        .next_sub_refresh()
        .is_some_and(|at| at <= crate::time::now_secs())
    {
        Box::pin(session.refresh_subscriptions(out)).await;
    }
    Ok(())
}

fn to_disconnect(code: disconnect::Code) -> Disconnect {
    (code.0, code.1.to_owned())
}
