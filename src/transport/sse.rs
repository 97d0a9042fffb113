//! The Server-Sent Events response body.
//!
//! One [`EventStream`] per connection. It first writes the prelude (an
//! opening comment so clients see the stream open, and an optional
//! `retry:`), then the replayed publications, then live ones. Everything
//! queued when the socket is ready is written as one chunk, so a burst costs
//! one write, not one per event. Publications reuse their shared encoding.
//!
//! The stream ends cleanly (so `EventSource` reconnects and resumes with its
//! `Last-Event-ID`) when the hub drops the subscriber, the token expires, the
//! lifetime limit is reached, or the server shuts down.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use tokio::time::{Instant, Interval, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::hub::{Delivery, Publication, Subscription};
use crate::protocol::mercure::sse;

/// Most publications written in one chunk.
const BATCH: usize = 256;

/// The body of one SSE response.
pub struct EventStream {
    prelude: Option<Bytes>,
    replay: std::vec::IntoIter<Arc<Publication>>,
    subscription: Subscription,
    heartbeat: Interval,
    deadline: Option<Pin<Box<Sleep>>>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    kicked: Pin<Box<WaitForCancellationFutureOwned>>,
    batch: Vec<Delivery>,
    finished: bool,
    _guard: Option<Box<dyn Send + Sync>>,
    _open: crate::metrics::OpenConnection,
}

/// How an [`EventStream`] behaves.
pub struct StreamOptions {
    /// Interval of keep-alive comments.
    pub heartbeat: Duration,
    /// `retry:` sent first, if any.
    pub retry: Option<u64>,
    /// When the stream must end (token expiry, lifetime limit).
    pub deadline: Option<Instant>,
    /// Server shutdown.
    pub shutdown: CancellationToken,
}

impl EventStream {
    /// Streams `replay`, then what `subscription` receives. `guard` is
    /// dropped with the stream (to run cleanup when the client goes).
    pub fn new(
        subscription: Subscription,
        replay: Vec<Arc<Publication>>,
        options: StreamOptions,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        let mut prelude = BytesMut::from(&b":\n\n"[..]);
        if let Some(ms) = options.retry {
            prelude.extend_from_slice(&sse::retry(ms));
        }
        let start = Instant::now() + options.heartbeat;
        let kicked = subscription.sink.closed().clone().cancelled_owned();
        EventStream {
            prelude: Some(prelude.freeze()),
            replay: replay.into_iter(),
            subscription,
            heartbeat: tokio::time::interval_at(start, options.heartbeat),
            deadline: options
                .deadline
                .map(|d| Box::pin(tokio::time::sleep_until(d))),
            shutdown: Box::pin(options.shutdown.cancelled_owned()),
            kicked: Box::pin(kicked),
            batch: Vec::with_capacity(BATCH),
            finished: false,
            _guard: guard,
            _open: crate::metrics::connection_opened("mercure", "sse"),
        }
    }

    fn finish(&mut self, reason: &str) -> Poll<Option<Result<Bytes, Infallible>>> {
        self.finished = true;
        Poll::Ready(Some(Ok(sse::comment(&format!("tidings: {reason}")))))
    }
}

impl Stream for EventStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some(p) = this.prelude.take() {
            return Poll::Ready(Some(Ok(p)));
        }
        if this.replay.len() > 0 {
            let mut out = BytesMut::new();
            for p in this.replay.by_ref().take(BATCH) {
                out.extend_from_slice(p.sse());
            }
            return Poll::Ready(Some(Ok(out.freeze())));
        }
        if this.shutdown.as_mut().poll(cx).is_ready() {
            return this.finish("the hub is shutting down, reconnect");
        }
        if this.kicked.as_mut().poll(cx).is_ready() {
            let reason = this
                .subscription
                .sink
                .close_reason()
                .unwrap_or("closed by the hub");
            return this.finish(reason);
        }
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return this.finish("the token or connection lifetime expired, reconnect");
            }
        }
        let skip_upto = this.subscription.handle.snapshot_seq;
        match this
            .subscription
            .rx
            .poll_recv_many(cx, &mut this.batch, BATCH)
        {
            Poll::Ready(0) => this.finish("unsubscribed"),
            Poll::Ready(_) => {
                this.subscription.sink.dequeued(&this.batch);
                let mut out = BytesMut::new();
                for d in this.batch.drain(..) {
                    // Anything at or before the snapshot came through replay.
                    if let Delivery::Publication(p) = d {
                        if p.seq > skip_upto {
                            out.extend_from_slice(p.sse());
                        }
                    }
                }
                this.heartbeat.reset();
                if out.is_empty() {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(out.freeze())))
            }
            Poll::Pending => match this.heartbeat.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(sse::comment("")))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
