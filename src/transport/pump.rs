//! The connection pump: the one loop every live connection runs, whatever
//! its protocol (Mercure SSE, Centrifugo) and its transport (WebSocket, an
//! HTTP/1.1 or HTTP/2 response body, with or without `/emulation`).
//!
//! It waits on three things at once — what the client sends, the
//! connection's hub queue, and one timer (the earliest deadline the
//! session has: heartbeat, ping, pong, expiry) — hands each to the
//! [`Session`], and writes what the session produced through the
//! [`Wire`], in one write per wake-up. After a write of publications it
//! tells the queue, which the hub's write clock then holds until its next
//! tick (`hub.write_interval`). The queue closing (slow consumer,
//! shutdown, engine reset), the client going, a write that stalls past
//! `limits.write_timeout` and the session's own decisions all end the loop
//! the same way: the session's last words are written, then the wire is
//! closed.
//!
//! Everything is polled in place: waiting again after a delivery creates
//! no future and touches no timer unless a deadline moved earlier.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::Instant;

use super::writer::WriteError;
use crate::hub::{Delivery, Sink};

/// How a session ends a connection: a close code (WebSocket close frames
/// carry it; streams end with the session's last words instead) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The close code (0 where the protocol has none).
    pub code: u16,
    /// Why, for the client and the logs.
    pub reason: String,
}

impl Close {
    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Close {
        Close {
            code,
            reason: reason.into(),
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The client went away.
    ClientGone,
    /// A write failed: the client is gone, or stopped reading
    /// (`limits.write_timeout`).
    Write(WriteError),
    /// The session (or the hub, through it) closed the connection.
    Closed(Close),
}

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

/// One write's worth of output.
#[derive(Debug)]
pub enum Batch<'a> {
    /// Bytes as they are.
    Plain(&'a [u8]),
    /// Shared pieces, written together without a copy.
    Pieces(&'a [Bytes]),
    /// A permessage-deflate message, as its pieces (WebSocket only).
    Compressed(&'a [Bytes]),
}

/// Where a session writes its output between two writes.
pub trait Output: Send {
    /// What to write now; `None` when nothing.
    fn batch(&mut self) -> Option<Batch<'_>>;
    /// Forgets what was written.
    fn clear(&mut self);
}

/// A protocol's side of a connection: what each event means, and what to
/// write for it.
pub trait Session: Send {
    /// Where it writes.
    type Out: Output;

    /// What it writes before anything else (a stream's opening, a replay);
    /// called again as long as it answers `Ok(true)`, each answer written
    /// before the next call.
    fn preface(&mut self, out: &mut Self::Out) -> impl Future<Output = Result<bool, Close>> + Send;

    /// A frame from the client.
    fn frame(
        &mut self,
        frame: Bytes,
        out: &mut Self::Out,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// Deliveries taken from the queue, in order (the batch is emptied).
    fn deliver(
        &mut self,
        batch: &mut Vec<Delivery>,
        out: &mut Self::Out,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// The hub closed the queue with `reason`: the last words, and how the
    /// connection closes.
    fn queue_closed(&mut self, reason: &'static str, out: &mut Self::Out) -> Close;

    /// The client broke the transport's rules (`code`, `reason`): the last
    /// words, and how the connection closes.
    fn broken(&mut self, code: u16, reason: &'static str, out: &mut Self::Out) -> Close;

    /// When [`Session::timer`] should run next (None: no deadline).
    fn deadline(&self) -> Option<Instant>;

    /// The deadline came.
    fn timer(&mut self, out: &mut Self::Out) -> impl Future<Output = Result<(), Close>> + Send;

    /// The connection ended; the session cleans up (presence, webhooks).
    fn ended(self, how: &Ended);
}

/// How a connection moves bytes: the client's frames in, output out.
pub trait Wire: Send {
    /// Polls for what the client sent (`Pending` for ever on a transport
    /// the client sends nothing on, once it is known to be there).
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;

    /// Writes one batch, within the write deadline.
    fn send(&mut self, batch: Batch<'_>) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Ends the connection the session closed: a WebSocket close frame
    /// with the code, the end of a response body. (A connection the client
    /// left, or whose write failed, is just dropped.)
    fn close(self, close: &Close) -> impl Future<Output = ()> + Send;
}

/// What woke the loop.
enum Event {
    Inbound(Inbound),
    Deliveries(Result<(), &'static str>),
    Timer,
}

/// A deadline far enough to mean "none".
fn far() -> Instant {
    Instant::now() + std::time::Duration::from_secs(365 * 24 * 3600)
}

/// Runs a connection: `first` (a frame that came with the request, if any)
/// is handed to the session first, then everything as it comes, until the
/// connection ends. The session's output goes out through `wire`.
///
/// A function returning a block, not an `async fn`: an `async fn` keeps a
/// second copy of its arguments in its state, and this state lives as
/// long as the connection.
#[allow(clippy::manual_async_fn)] // on purpose, see above
pub fn run<S: Session, W: Wire>(
    mut session: S,
    mut wire: W,
    sink: Arc<Sink>,
    mut out: S::Out,
    first: Option<Bytes>,
) -> impl Future<Output = ()> + Send {
    async move {
        let ended = 'run: {
            let far = far();
            let mut timer = pin!(tokio::time::sleep_until(far));
            let mut timer_at = far;
            let mut batch = Vec::new();
            let mut first = first;
            // The preface (what is written before anything else) goes first,
            // a part per turn, each written before the next is made.
            let mut prefacing = true;
            loop {
                let mut delivered = false;
                let step = if prefacing {
                    match session.preface(&mut out).await {
                        Ok(more) => {
                            prefacing = more;
                            Ok(())
                        }
                        Err(close) => Err(close),
                    }
                } else if let Some(frame) = first.take() {
                    session.frame(frame, &mut out).await
                } else {
                    let now = Instant::now();
                    let at = session.deadline().unwrap_or(far);
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
                            session.frame(frame, &mut out).await
                        }
                        Event::Inbound(Inbound::Gone) => break 'run Ended::ClientGone,
                        Event::Inbound(Inbound::Broken(code, reason)) => {
                            Err(session.broken(code, reason, &mut out))
                        }
                        Event::Deliveries(Ok(())) => {
                            delivered = true;
                            session.deliver(&mut batch, &mut out).await
                        }
                        Event::Deliveries(Err(reason)) => {
                            Err(session.queue_closed(reason, &mut out))
                        }
                        Event::Timer => session.timer(&mut out).await,
                    }
                };
                // The one write of this turn, boxed: the state of a write in
                // progress is a few hundred bytes that a connection would
                // otherwise carry all its life, and most of its life it is
                // waiting, not writing. (An allocation per write costs
                // far less than the write's system call.)
                if let Some(batch) = out.batch() {
                    let sent = Box::pin(wire.send(batch)).await;
                    out.clear();
                    if let Err(e) = sent {
                        break 'run Ended::Write(e);
                    }
                }
                if delivered {
                    sink.wrote();
                }
                if let Err(close) = step {
                    break 'run Ended::Closed(close);
                }
            }
        };
        if let Ended::Closed(close) = &ended {
            // Boxed: only a closing connection needs its room.
            Box::pin(wire.close(close)).await;
        }
        session.ended(&ended);
    }
}
