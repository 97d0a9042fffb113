//! The loop that drives one Centrifugo session over any transport.
//!
//! A transport provides a [`Wire`]: where the client's frames come from
//! (WebSocket messages, `POST /emulation` bodies, or nothing after the
//! connect request of a unidirectional client), where batches of output
//! go, and how the connection ends. Everything else is the same for all
//! transports and lives here: the handshake timeout, pings and pongs, token
//! expiry, hub deliveries written in batches, server controls, slow-consumer
//! and shutdown disconnects.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::session::{Disconnect, Session};
use super::{Node, Transport};
use crate::hub::{ENGINE_RESET, SHUTTING_DOWN};
use crate::protocol::centrifuge::outbox::Outbox;
use crate::protocol::centrifuge::resume::ChannelPosition;
use crate::protocol::centrifuge::{disconnect, Encoding};

/// Most queued deliveries written in one batch.
const BATCH: usize = 256;

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
    /// The client's next frame.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
    /// Writes one batch of output; false when the client is gone.
    fn send(&mut self, batch: Bytes) -> impl Future<Output = bool> + Send;
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
}

/// Runs a connection until it ends.
pub async fn run<W: Wire>(wire: W, node: Arc<Node>, shutdown: CancellationToken, start: Start) {
    let span = tracing::info_span!(
        "connection",
        transport = start.transport.name(),
        remote = %start.remote,
        client = tracing::field::Empty,
        user = tracing::field::Empty,
    );
    drive(wire, node, shutdown, start, span.clone())
        .instrument(span)
        .await
}

async fn drive<W: Wire>(
    mut wire: W,
    node: Arc<Node>,
    shutdown: CancellationToken,
    start: Start,
    span: tracing::Span,
) {
    let transport = start.transport;
    let _open = crate::metrics::connection_opened("centrifugo", transport.name());
    let (sink, mut deliveries) = node.hub.open_queue();
    let kicked = sink.closed().clone();
    let (mut session, mut controls) = Session::new(
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
    let far = || Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let handshake_deadline = Instant::now() + settings.handshake_timeout;
    let mut next_ping = Instant::now() + settings.ping_interval;
    let mut pong_deadline: Option<Instant> = None;
    let mut batch = Vec::with_capacity(BATCH);
    let mut out = Outbox::new(start.encoding, transport.framing());
    let mut first_frame = start.first_frame;
    let result: Result<(), Disconnect> = loop {
        let expiry = session
            .expires_at()
            .map(|exp| Instant::now() + Duration::from_secs(exp.saturating_sub(now_secs())))
            .unwrap_or_else(far);
        let sub_refresh = session
            .next_sub_refresh()
            .map(|at| Instant::now() + Duration::from_secs(at.saturating_sub(now_secs())))
            .unwrap_or_else(far);
        let was_connected = session.is_connected();
        let step: Result<(), Disconnect> = if let Some(frame) = first_frame.take() {
            session.handle_frame(&frame, &mut out).await
        } else {
            tokio::select! {
                inbound = wire.recv() => match inbound {
                    Inbound::Frame(frame) => session.handle_frame(&frame, &mut out).await,
                    Inbound::Gone => break Ok(()),
                    Inbound::Broken(code, reason) => Err((code, reason.to_owned())),
                },
                n = deliveries.recv_many(&mut batch, BATCH) => {
                    if n == 0 { break Ok(()) }
                    sink.dequeued(&batch);
                    for d in batch.drain(..) {
                        session.push(d, &mut out);
                    }
                    Ok(())
                }
                Some(control) = controls.recv() => session.control(control, &mut out).await,
                _ = kicked.cancelled() => Err(to_disconnect(match sink.close_reason() {
                    Some(r) if r == SHUTTING_DOWN => disconnect::SHUTDOWN,
                    Some(r) if r == ENGINE_RESET => disconnect::INSUFFICIENT_STATE,
                    _ => disconnect::SLOW,
                })),
                _ = shutdown.cancelled() => Err(to_disconnect(disconnect::SHUTDOWN)),
                _ = sleep_until(handshake_deadline), if !session.is_connected() => Err(to_disconnect(disconnect::STALE)),
                _ = sleep_until(next_ping), if session.is_connected() => {
                    session.ping(&mut out);
                    next_ping = Instant::now() + settings.ping_interval;
                    if !transport.unidirectional() {
                        pong_deadline = Some(Instant::now() + settings.pong_timeout);
                    }
                    Ok(())
                }
                _ = sleep_until(pong_deadline.unwrap_or_else(far)), if pong_deadline.is_some() => {
                    if session.got_pong { pong_deadline = None; Ok(()) } else { Err(to_disconnect(disconnect::NO_PONG)) }
                }
                _ = sleep_until(expiry), if session.expires_at().is_some() => {
                    if session.expires_at().is_some_and(|e| e <= now_secs()) { session.expired().await } else { Ok(()) }
                }
                _ = sleep_until(sub_refresh), if session.next_sub_refresh().is_some() => {
                    session.refresh_subscriptions(&mut out).await;
                    Ok(())
                }
            }
        };
        if !was_connected && session.is_connected() {
            span.record("user", session.user());
            tracing::debug!("connected");
        }
        if session.got_pong {
            pong_deadline = None;
        }
        if let Err((code, reason)) = &step {
            if transport.disconnect_in_band() {
                session.write_disconnect(*code, reason, &mut out);
            }
        }
        if !out.is_empty() && !wire.send(out.take()).await {
            break Ok(());
        }
        if let Err(d) = step {
            break Err(d);
        }
    };
    session.ended(result.as_ref().err());
    match result {
        Ok(()) => tracing::debug!("client went away"),
        Err((code, reason)) => {
            tracing::debug!(code, %reason, "disconnecting");
            crate::metrics::disconnect(transport.name(), code, &reason);
            wire.close(code, &reason).await;
        }
    }
}

fn to_disconnect(code: disconnect::Code) -> Disconnect {
    (code.0, code.1.to_owned())
}

fn now_secs() -> u64 {
    crate::hub::publication::now_ms() / 1000
}
