//! A Centrifugo client's connection, as a session of the pump, on any of
//! its transports.
//!
//! What is the same for all transports lives here: the handshake timeout,
//! pings and pongs, token expiry and subscription refresh, hub deliveries
//! and server controls handed to the session, and how a disconnect is told
//! (a disconnect push before a stream ends; a WebSocket says it in its
//! close frame). The protocol itself — commands, replies, pushes — is
//! `centrifugo::session`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use super::pump::{self, Batch, Close, Ended, Output, Wire};
use super::writer::WriteError;
use crate::centrifugo::session::{Disconnect, Session};
use crate::centrifugo::{Control, Node, Transport};
use crate::hub::{Delivery, ENGINE_RESET, SHUTTING_DOWN};
use crate::protocol::centrifuge::outbox::{Outbox, Payload};
use crate::protocol::centrifuge::resume::ChannelPosition;
use crate::protocol::centrifuge::{disconnect, Encoding};

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

impl Output for Outbox {
    fn batch(&mut self) -> Option<Batch<'_>> {
        if self.is_empty() {
            return None;
        }
        Some(match self.payload() {
            Payload::Plain(bytes) => Batch::Plain(bytes),
            Payload::Compressed(pieces) => Batch::Compressed(pieces),
        })
    }

    fn clear(&mut self) {
        Outbox::clear(self)
    }
}

/// The connection's deadlines; the timer is set to the earliest that
/// applies.
struct Deadlines {
    handshake: Instant,
    next_ping: Instant,
    pong: Option<Instant>,
}

/// A Centrifugo connection.
pub struct Connection {
    session: Session,
    node: Arc<Node>,
    transport: Transport,
    deadlines: Deadlines,
    /// Entered only where something may log (frames, controls, timers, the
    /// end), not on every delivery: entering a span costs more than the
    /// rest of a delivery's bookkeeping.
    span: tracing::Span,
    _open: crate::metrics::OpenConnection,
}

fn to_close((code, reason): Disconnect) -> Close {
    Close::new(code, reason)
}

fn code(code: disconnect::Code) -> Disconnect {
    (code.0, code.1.to_owned())
}

impl Connection {
    /// Ends with `d`: a stream is told first with a disconnect push.
    fn disconnect(&mut self, d: Disconnect, out: &mut Outbox) -> Close {
        if self.transport.disconnect_in_band() {
            self.session.write_disconnect(d.0, &d.1, out);
        }
        to_close(d)
    }

    /// What a step of the session came to.
    fn step(
        &mut self,
        was_connected: bool,
        result: Result<(), Disconnect>,
        out: &mut Outbox,
    ) -> Result<(), Close> {
        if !was_connected && self.session.is_connected() {
            self.span.record("user", self.session.user());
            self.span.in_scope(|| tracing::debug!("connected"));
        }
        if self.session.got_pong {
            self.deadlines.pong = None;
        }
        result.map_err(|d| self.disconnect(d, out))
    }
}

impl pump::Session for Connection {
    type Out = Outbox;

    async fn preface(&mut self, _out: &mut Outbox) -> Result<bool, Close> {
        Ok(false)
    }

    async fn frame(&mut self, frame: Bytes, out: &mut Outbox) -> Result<(), Close> {
        let was_connected = self.session.is_connected();
        let span = self.span.clone();
        let result = Box::pin(self.session.handle_frame(&frame, out).instrument(span)).await;
        self.step(was_connected, result, out)
    }

    async fn deliver(&mut self, batch: &mut Vec<Delivery>, out: &mut Outbox) -> Result<(), Close> {
        let mut result = Ok(());
        for d in batch.drain(..) {
            match d {
                _ if result.is_err() => {}
                Delivery::Control(bytes) => {
                    if let Some(control) = Control::from_bytes(&bytes) {
                        let span = self.span.clone();
                        result =
                            Box::pin(self.session.control(control, out).instrument(span)).await;
                    }
                }
                d => result = self.session.push(d, out),
            }
        }
        let was_connected = self.session.is_connected();
        self.step(was_connected, result, out)
    }

    fn queue_closed(&mut self, reason: &'static str, out: &mut Outbox) -> Close {
        let d = code(match reason {
            r if r == SHUTTING_DOWN => disconnect::SHUTDOWN,
            r if r == ENGINE_RESET => disconnect::INSUFFICIENT_STATE,
            _ => disconnect::SLOW,
        });
        self.disconnect(d, out)
    }

    fn broken(&mut self, code: u16, reason: &'static str, out: &mut Outbox) -> Close {
        self.disconnect((code, reason.to_owned()), out)
    }

    fn deadline(&self) -> Option<Instant> {
        let connected = self.session.is_connected();
        let d = &self.deadlines;
        let from_secs = |at: u64| {
            Instant::now() + Duration::from_secs(at.saturating_sub(crate::time::now_secs()))
        };
        [
            (!connected).then_some(d.handshake),
            connected.then_some(d.next_ping),
            d.pong,
            self.session.expiry_due().map(from_secs),
            self.session.next_sub_refresh().map(from_secs),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    async fn timer(&mut self, out: &mut Outbox) -> Result<(), Close> {
        let span = self.span.clone();
        let result = Box::pin(self.on_timer(out).instrument(span)).await;
        let was_connected = self.session.is_connected();
        self.step(was_connected, result, out)
    }

    fn ended(mut self, how: &Ended) {
        let transport = self.transport.name();
        let disconnect = match how {
            Ended::Closed(close) => {
                self.span.in_scope(
                    || tracing::debug!(code = close.code, reason = %close.reason, "disconnected"),
                );
                crate::metrics::disconnect(transport, close.code, &close.reason);
                Some((close.code, close.reason.clone()))
            }
            Ended::Write(WriteError::Stalled) => {
                crate::metrics::write_stalled(transport);
                self.span
                    .in_scope(|| tracing::debug!("stopped reading: closed"));
                None
            }
            Ended::Write(WriteError::Gone) | Ended::ClientGone => {
                self.span.in_scope(|| tracing::debug!("client went away"));
                None
            }
        };
        let span = self.span.clone();
        span.in_scope(|| self.session.ended(disconnect.as_ref()));
    }
}

impl Connection {
    /// Acts on every deadline that has passed.
    async fn on_timer(&mut self, out: &mut Outbox) -> Result<(), Disconnect> {
        let now = Instant::now();
        let settings = &self.node.settings;
        let d = &mut self.deadlines;
        if !self.session.is_connected() {
            if now >= d.handshake {
                return Err(code(disconnect::STALE));
            }
            return Ok(());
        }
        if d.pong.is_some_and(|p| now >= p) {
            if !self.session.got_pong {
                return Err(code(disconnect::NO_PONG));
            }
            d.pong = None;
        }
        if now >= d.next_ping {
            self.session.ping(out);
            d.next_ping = now + settings.ping_interval;
            if !self.transport.unidirectional() {
                d.pong = Some(now + settings.pong_timeout);
            }
        }
        let now_secs = crate::time::now_secs();
        if self.session.expiry_due().is_some_and(|e| e <= now_secs) {
            Box::pin(self.session.expired()).await?;
        }
        if self
            .session
            .next_sub_refresh()
            .is_some_and(|at| at <= now_secs)
        {
            Box::pin(self.session.refresh_subscriptions(out)).await?;
        }
        Ok(())
    }
}

/// Runs a connection over `wire` until it ends (the hub closes its queue
/// on shutdown).
pub fn run<W: Wire>(wire: W, node: Arc<Node>, start: Start) -> impl Future<Output = ()> + Send {
    let transport = start.transport;
    let span = tracing::info_span!(
        "connection",
        transport = transport.name(),
        remote = %start.remote,
        client = tracing::field::Empty,
        user = tracing::field::Empty,
    );
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
    let began = Instant::now();
    let deadlines = Deadlines {
        handshake: began + node.settings.handshake_timeout,
        next_ping: began + node.settings.ping_interval,
        pong: None,
    };
    let mut out = Outbox::new(start.encoding, transport.framing());
    if let Some(level) = start.compression {
        out.compress(level);
    }
    let connection = Connection {
        session,
        node,
        transport,
        deadlines,
        span,
        _open: crate::metrics::connection_opened("centrifugo", transport.name()),
    };
    pump::run(connection, wire, sink, out, start.first_frame)
}
