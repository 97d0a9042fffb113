//! A Mercure subscriber's event stream, as a session of the pump.
//!
//! It writes an opening comment (so clients see the stream open) and an
//! optional `retry:`, then the replay a page at a time, then each live
//! publication's shared SSE encoding itself, never a copy (those the
//! replay covered are skipped by sequence). A keep-alive comment goes out
//! after `mercure.heartbeat` without a write. The stream ends cleanly — so
//! `EventSource` reconnects and resumes with its `Last-Event-ID` — with a
//! comment saying why, when the hub closes its queue (slow consumer,
//! shutdown), or at the token's expiry or the lifetime limit.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use super::pump::{Batch, Close, Ended, Output, Session};
use crate::hub::{Delivery, SubscriptionHandle};
use crate::mercure::replay::Replay;
use crate::protocol::sse;

/// Most replayed events written at once.
const REPLAY_WRITE: usize = 256;

/// The pieces of one write: each event's shared bytes.
#[derive(Default)]
pub struct Events(Vec<Bytes>);

impl Output for Events {
    fn batch(&mut self) -> Option<Batch<'_>> {
        (!self.0.is_empty()).then_some(Batch::Pieces(&self.0))
    }

    fn clear(&mut self) {
        // Not kept large: a burst must not pin memory on a quiet stream.
        if self.0.capacity() > 64 {
            self.0 = Vec::new();
        } else {
            self.0.clear();
        }
    }
}

/// How an event stream behaves.
pub struct StreamOptions {
    /// Most time without a write: a keep-alive comment is sent then.
    pub heartbeat: Duration,
    /// `retry:` sent first, if any.
    pub retry: Option<u64>,
    /// When the stream must end (token expiry, lifetime limit).
    pub deadline: Option<Instant>,
}

/// One subscriber's stream.
pub struct EventStream {
    prelude: Option<Bytes>,
    /// Boxed: most streams have none, and every stream would carry its room.
    replay: Option<Box<Replay>>,
    /// Live publications at or before this were the replay's.
    snapshot_seq: u64,
    heartbeat: Duration,
    last_write: Instant,
    deadline: Option<Instant>,
    _subscription: SubscriptionHandle,
    _guard: Option<Box<dyn Send + Sync>>,
    _open: crate::metrics::OpenConnection,
}

impl EventStream {
    /// A stream of `replay` (what the subscriber missed), then of what the
    /// subscription receives. `guard` is dropped with the stream (to run
    /// cleanup when the client goes).
    pub fn new(
        subscription: SubscriptionHandle,
        replay: Option<Replay>,
        options: StreamOptions,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        let mut prelude = BytesMut::from(&b":\n\n"[..]);
        if let Some(ms) = options.retry {
            prelude.extend_from_slice(&sse::retry(ms));
        }
        EventStream {
            prelude: Some(prelude.freeze()),
            replay: replay.map(Box::new),
            snapshot_seq: subscription.snapshot_seq,
            heartbeat: options.heartbeat,
            last_write: Instant::now(),
            deadline: options.deadline,
            _subscription: subscription,
            _guard: guard,
            _open: crate::metrics::connection_opened("mercure", "sse"),
        }
    }

    fn last_words(&mut self, reason: &str, out: &mut Events) -> Close {
        out.0.push(sse::comment(&format!("tidings: {reason}")));
        Close::new(0, reason)
    }
}

impl Session for EventStream {
    type Out = Events;

    async fn preface(&mut self, out: &mut Events) -> Result<bool, Close> {
        if let Some(prelude) = self.prelude.take() {
            out.0.push(prelude);
            return Ok(self.replay.is_some());
        }
        let Some(replay) = &mut self.replay else {
            return Ok(false);
        };
        while out.0.len() < REPLAY_WRITE {
            match std::future::poll_fn(|cx| replay.poll_next(cx)).await {
                Ok(Some(p)) => out.0.push(crate::mercure::event(&p).clone()),
                Ok(None) => {
                    self.replay = None;
                    return Ok(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replay ended early");
                    return Err(
                        self.last_words("the replay could not be completed, reconnect", out)
                    );
                }
            }
        }
        Ok(true)
    }

    async fn frame(&mut self, _frame: Bytes, _out: &mut Events) -> Result<(), Close> {
        Ok(())
    }

    async fn deliver(&mut self, batch: &mut Vec<Delivery>, out: &mut Events) -> Result<(), Close> {
        for d in batch.drain(..) {
            if let Delivery::Publication(p) = d {
                if p.seq > self.snapshot_seq {
                    out.0.push(crate::mercure::event(&p).clone());
                }
            }
        }
        if !out.0.is_empty() {
            self.last_write = Instant::now();
        }
        Ok(())
    }

    fn queue_closed(&mut self, reason: &'static str, out: &mut Events) -> Close {
        self.last_words(reason, out)
    }

    fn broken(&mut self, _code: u16, reason: &'static str, out: &mut Events) -> Close {
        self.last_words(reason, out)
    }

    fn deadline(&self) -> Option<Instant> {
        let heartbeat = self.last_write + self.heartbeat;
        Some(self.deadline.map_or(heartbeat, |d| d.min(heartbeat)))
    }

    async fn timer(&mut self, out: &mut Events) -> Result<(), Close> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(self.last_words("the token or connection lifetime expired, reconnect", out));
        }
        if now >= self.last_write + self.heartbeat {
            out.0.push(sse::comment(""));
            self.last_write = now;
        }
        Ok(())
    }

    fn ended(self, how: &Ended) {
        if matches!(how, Ended::Write(super::writer::WriteError::Stalled)) {
            crate::metrics::write_stalled("sse");
        }
    }
}

/// Runs a subscriber's stream on `body` (used by the Mercure endpoint).
pub async fn run(stream: EventStream, sink: Arc<crate::hub::Sink>, body: super::body::Body) {
    super::pump::run(stream, body, sink, Events::default(), None).await
}
