//! The Server-Sent Events response body.
//!
//! One [`EventStream`] per connection. It first yields the prelude (an
//! opening comment so clients see the stream open, and an optional
//! `retry:`), then the replayed publications, then live ones: each one's
//! shared encoding itself, never a copy. The writer takes everything ready
//! at once and writes it in one go (`server::http1` gathers the pieces into
//! one `writev`), so a burst costs one write, not one per event.
//!
//! After each batch of live publications the stream tells its queue, which
//! the hub's write clock then holds until its next tick
//! (`hub.write_interval`): a busy connection costs one system call per tick
//! instead of one per publication (a publication after a quiet spell still
//! goes out at once).
//!
//! The stream ends cleanly (so `EventSource` reconnects and resumes with its
//! `Last-Event-ID`) when the hub closes its queue (slow consumer, shutdown),
//! the token expires or the lifetime limit is reached.
//!
//! One timer serves the heartbeat and the deadline, and a write never
//! touches it: a busy stream costs no timer work per event.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::time::{Instant, Sleep};

use crate::hub::{Delivery, Subscription};
use crate::mercure::replay::Replay;
use crate::protocol::mercure::sse;

/// The body of one SSE response.
pub struct EventStream {
    prelude: Option<Bytes>,
    replay: Option<Replay>,
    subscription: Subscription,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    heartbeat: Duration,
    last_write: Instant,
    deadline: Option<Instant>,
    /// Deliveries taken from the queue, yielded from `next` on.
    batch: Vec<Delivery>,
    next: usize,
    finished: bool,
    _guard: Option<Box<dyn Send + Sync>>,
    _open: crate::metrics::OpenConnection,
}

/// How an [`EventStream`] behaves.
pub struct StreamOptions {
    /// Most time without a write: a keep-alive comment is sent then.
    pub heartbeat: Duration,
    /// `retry:` sent first, if any.
    pub retry: Option<u64>,
    /// When the stream must end (token expiry, lifetime limit).
    pub deadline: Option<Instant>,
}

impl EventStream {
    /// Streams `replay` (what the subscriber missed), then what
    /// `subscription` receives. `guard` is
    /// dropped with the stream (to run cleanup when the client goes).
    pub fn new(
        subscription: Subscription,
        replay: Option<Replay>,
        options: StreamOptions,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        let mut prelude = BytesMut::from(&b":\n\n"[..]);
        if let Some(ms) = options.retry {
            prelude.extend_from_slice(&sse::retry(ms));
        }
        let now = Instant::now();
        let first_heartbeat = now + options.heartbeat;
        EventStream {
            prelude: Some(prelude.freeze()),
            replay,
            subscription,
            timer: Box::pin(tokio::time::sleep_until(first_heartbeat)),
            timer_at: first_heartbeat,
            heartbeat: options.heartbeat,
            last_write: now,
            deadline: options.deadline,
            batch: Vec::new(),
            next: 0,
            finished: false,
            _guard: guard,
            _open: crate::metrics::connection_opened("mercure", "sse"),
        }
    }

    fn finish(&mut self, reason: &str) -> Poll<Option<Bytes>> {
        self.finished = true;
        Poll::Ready(Some(sse::comment(&format!("tidings: {reason}"))))
    }

    /// The next publication of the batch taken from the queue, if any is
    /// left (those at or before the snapshot came through replay).
    fn next_in_batch(&mut self) -> Option<Bytes> {
        let skip_upto = self.subscription.handle.snapshot_seq;
        while let Some(d) = self.batch.get(self.next) {
            self.next += 1;
            if let Delivery::Publication(p) = d {
                if p.seq > skip_upto {
                    return Some(crate::mercure::event(p).clone());
                }
            }
        }
        self.batch.clear();
        self.next = 0;
        None
    }
}

impl Stream for EventStream {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(p) = this.prelude.take() {
            return Poll::Ready(Some(p));
        }
        if let Some(replay) = &mut this.replay {
            match replay.poll_next(cx) {
                Poll::Ready(Ok(Some(p))) => {
                    return Poll::Ready(Some(crate::mercure::event(&p).clone()))
                }
                Poll::Ready(Ok(None)) => this.replay = None,
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "replay ended early");
                    return this.finish("the replay could not be completed, reconnect");
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Some(event) = this.next_in_batch() {
            return Poll::Ready(Some(event));
        }
        loop {
            let now = Instant::now();
            if this.deadline.is_some_and(|d| now >= d) {
                return this.finish("the token or connection lifetime expired, reconnect");
            }
            match this.subscription.sink.poll_take(cx, &mut this.batch) {
                Poll::Ready(Err(reason)) => return this.finish(reason),
                Poll::Ready(Ok(())) => {
                    let Some(event) = this.next_in_batch() else {
                        continue;
                    };
                    this.last_write = now;
                    this.subscription.sink.wrote();
                    return Poll::Ready(Some(event));
                }
                Poll::Pending => {}
            }
            let heartbeat_at = this.last_write + this.heartbeat;
            if now >= heartbeat_at {
                this.last_write = now;
                return Poll::Ready(Some(sse::comment("")));
            }
            let at = this.deadline.map_or(heartbeat_at, |d| d.min(heartbeat_at));
            // Only moved earlier: one set too early (the heartbeat moves
            // later on every write) fires and is set again.
            if at < this.timer_at || this.timer_at <= now {
                this.timer.as_mut().reset(at);
                this.timer_at = at;
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}
