//! A connection's delivery queue: the hub's fan-out on one side, the
//! connection's writer on the other.
//!
//! Fan-out is the hottest loop of the hub (one offer per subscriber per
//! publication), so the queue is as plain as it can be: a mutex around a
//! `Vec`, the waker of a writer that found it empty, and why it was closed.
//! A publication costs the fan-out one uncontended lock and a push; the
//! writer is woken once per batch (only when it was waiting), takes the
//! whole batch by swapping two vectors (no allocation once both have
//! grown), and an idle connection holds no buffer at all.
//!
//! After a write, the writer may ask for the queue to be *held* until the
//! hub's [`WriteClock`] ticks: offers then queue without waking it, and
//! the tick wakes it only if something waits, so a busy connection gets
//! its publications in one write per tick (see [`super::clock`]).
//!
//! The queue is bounded by count and by bytes. An offer past either bound
//! closes it with [`SLOW_CONSUMER`](super::SLOW_CONSUMER): the connection
//! ends with its protocol's "slow" reason and the client resumes from
//! history. Closing for any other reason (shutdown, engine reset) works
//! the same way, so a writer has one thing to wait on.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::clock::{Held, WriteClock};
use super::{Delivery, SLOW_CONSUMER};

/// Batches kept above this capacity are released after use, so a burst
/// does not pin memory on an otherwise idle connection.
const KEEP_CAPACITY: usize = 64;

/// The hub's side of one connection's bounded queue, shared by all of the
/// connection's subscriptions.
pub struct Sink {
    id: u64,
    state: Mutex<Queue>,
    max_len: usize,
    max_bytes: usize,
    open: Weak<OpenSinks>,
    clock: Option<Arc<WriteClock>>,
}

/// Every open queue of a hub, subscribed or not, so that a shutdown
/// reaches connections that hold no subscription yet.
/// They share the hub's write clock, if it has one.
#[derive(Default)]
pub(crate) struct OpenSinks {
    open: Mutex<HashMap<u64, Weak<Sink>>>,
    clock: Option<Arc<WriteClock>>,
}

impl OpenSinks {
    /// Queues held after a write until `clock` ticks (none: never held).
    pub(crate) fn new(clock: Option<Arc<WriteClock>>) -> OpenSinks {
        OpenSinks {
            open: Mutex::default(),
            clock,
        }
    }

    /// Opens a queue and keeps track of it until it is dropped.
    pub(crate) fn open(self: &Arc<Self>, id: u64, max_len: usize, max_bytes: usize) -> Arc<Sink> {
        let mut sink = Sink::new(id, max_len, max_bytes, Arc::downgrade(self));
        sink.clock = self.clock.clone();
        let sink = Arc::new(sink);
        self.open.lock().insert(id, Arc::downgrade(&sink));
        sink
    }

    /// Closes every open queue with `reason`.
    pub(crate) fn close_all(&self, reason: &'static str) {
        let open: Vec<_> = self
            .open
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for sink in open {
            sink.close(reason);
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(open) = self.open.upgrade() {
            open.open.lock().remove(&self.id);
        }
    }
}

struct Queue {
    items: Vec<Delivery>,
    bytes: usize,
    waiting: Option<Waker>,
    closed: Option<&'static str>,
    /// Held until the write clock ticks: offers do not wake the writer.
    held: bool,
}

/// What became of an offered delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued.
    Queued,
    /// Over a bound: the queue is now closed as a slow consumer.
    Overflow,
    /// The queue was already closed.
    Closed,
}

/// What a delivery counts against `limits.queue_bytes`: its payload plus a
/// little for the frame around it.
fn queued_cost(d: &Delivery) -> usize {
    match d {
        Delivery::Publication(p) => p.draft.data.len() + 64,
        Delivery::Join(..) | Delivery::Leave(..) | Delivery::Control(_) => 0,
    }
}

impl Sink {
    /// An open queue of at most `max_len` deliveries and `max_bytes` bytes
    /// (one delivery always fits an empty queue, however large).
    fn new(id: u64, max_len: usize, max_bytes: usize, open: Weak<OpenSinks>) -> Sink {
        Sink {
            id,
            state: Mutex::new(Queue {
                items: Vec::new(),
                bytes: 0,
                waiting: None,
                closed: None,
                held: false,
            }),
            max_len,
            max_bytes,
            open,
            clock: None,
        }
    }

    /// The connection number (unique within the hub).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues `delivery` and wakes the writer if it was waiting (and the
    /// queue is not held).
    pub(crate) fn offer(&self, delivery: Delivery) -> Offer {
        let cost = queued_cost(&delivery);
        let mut q = self.state.lock();
        if q.closed.is_some() {
            return Offer::Closed;
        }
        let over =
            q.items.len() >= self.max_len || (q.bytes > 0 && q.bytes + cost > self.max_bytes);
        let offer = if over {
            q.closed = Some(SLOW_CONSUMER);
            // Nothing queued will be written now: let it go.
            q.items = Vec::new();
            Offer::Overflow
        } else {
            q.items.push(delivery);
            q.bytes += cost;
            Offer::Queued
        };
        if q.held && offer == Offer::Queued {
            return offer;
        }
        let waiting = q.waiting.take();
        drop(q);
        if let Some(w) = waiting {
            w.wake();
        }
        offer
    }

    /// Closes the queue: the writer sees `reason` at its next take (the
    /// first reason given is kept).
    pub fn close(&self, reason: &'static str) {
        let mut q = self.state.lock();
        if q.closed.is_none() {
            q.closed = Some(reason);
            q.items = Vec::new();
        }
        let waiting = q.waiting.take();
        drop(q);
        if let Some(w) = waiting {
            w.wake();
        }
    }

    /// Why the queue was closed, if it was.
    pub fn close_reason(&self) -> Option<&'static str> {
        self.state.lock().closed
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves everything queued into `batch` (which must be empty), or
    /// registers the task to be woken by the next offer (or the tick that
    /// releases a held queue). `Err` once the queue is closed, with the
    /// reason.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Delivery>,
    ) -> Poll<Result<(), &'static str>> {
        debug_assert!(batch.is_empty());
        let mut q = self.state.lock();
        if let Some(reason) = q.closed {
            return Poll::Ready(Err(reason));
        }
        if q.items.is_empty() || q.held {
            match &q.waiting {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => q.waiting = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        if batch.capacity() > KEEP_CAPACITY {
            *batch = Vec::new();
        }
        std::mem::swap(&mut q.items, batch);
        q.bytes = 0;
        Poll::Ready(Ok(()))
    }

    /// Tells the queue that its writer has just written publications: with
    /// a write clock, the queue is held until the next tick.
    pub fn wrote(self: &Arc<Self>) {
        let Some(clock) = &self.clock else {
            return;
        };
        let mut q = self.state.lock();
        if q.held || q.closed.is_some() {
            return;
        }
        q.held = true;
        drop(q);
        clock.hold(self.clone());
    }
}

impl Held for Sink {
    /// The clock ticked: no longer held; the writer is woken if something
    /// waits for it.
    fn release(&self) {
        let mut q = self.state.lock();
        q.held = false;
        let waiting = if q.items.is_empty() {
            None
        } else {
            q.waiting.take()
        };
        drop(q);
        if let Some(w) = waiting {
            w.wake();
        }
    }
}

impl Sink {
    /// Waits for deliveries and moves them into `batch` (see
    /// [`Sink::poll_take`]).
    pub async fn take(&self, batch: &mut Vec<Delivery>) -> Result<(), &'static str> {
        poll_fn(|cx| self.poll_take(cx, batch)).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::history::{Draft, Publication};

    fn publication(data: &'static [u8]) -> Delivery {
        let draft = Draft::to_channel(
            "c".into(),
            Bytes::from_static(data),
            None,
            Default::default(),
        );
        Delivery::Publication(Arc::new(Publication::new(draft, 1, 1, "e".into(), 0)))
    }

    fn take_now(sink: &Sink, batch: &mut Vec<Delivery>) -> Poll<Result<(), &'static str>> {
        let mut cx = Context::from_waker(Waker::noop());
        sink.poll_take(&mut cx, batch)
    }

    #[test]
    fn takes_in_order_and_waits_when_empty() {
        let sink = Sink::new(1, 10, 1 << 20, Weak::new());
        let mut batch = Vec::new();
        assert!(take_now(&sink, &mut batch).is_pending());
        assert_eq!(sink.offer(publication(b"a")), Offer::Queued);
        assert_eq!(sink.offer(publication(b"b")), Offer::Queued);
        assert_eq!(take_now(&sink, &mut batch), Poll::Ready(Ok(())));
        let data: Vec<_> = batch
            .drain(..)
            .map(|d| match d {
                Delivery::Publication(p) => p.draft.data.clone(),
                _ => Bytes::new(),
            })
            .collect();
        assert_eq!(
            data,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert!(take_now(&sink, &mut batch).is_pending());
    }

    #[test]
    fn overflow_by_count_or_bytes_closes_as_slow() {
        let sink = Sink::new(1, 2, 1 << 20, Weak::new());
        sink.offer(publication(b"a"));
        sink.offer(publication(b"b"));
        assert_eq!(sink.offer(publication(b"c")), Offer::Overflow);
        assert_eq!(sink.offer(publication(b"d")), Offer::Closed);
        assert_eq!(
            take_now(&sink, &mut Vec::new()),
            Poll::Ready(Err(SLOW_CONSUMER))
        );

        // 64 + 100 bytes each: the first always fits, the second does not.
        let sink = Sink::new(2, 100, 200, Weak::new());
        let big = &[b'x'; 100];
        assert_eq!(sink.offer(publication(big)), Offer::Queued);
        assert_eq!(sink.offer(publication(big)), Offer::Overflow);
    }

    #[test]
    fn close_all_reaches_every_open_queue_and_forgets_dropped_ones() {
        let open = Arc::new(OpenSinks::default());
        let a = open.open(1, 10, 1 << 20);
        let b = open.open(2, 10, 1 << 20);
        drop(b);
        assert_eq!(open.open.lock().len(), 1);
        open.close_all("bye");
        assert_eq!(a.close_reason(), Some("bye"));
    }

    #[test]
    fn the_first_close_reason_stays() {
        let sink = Sink::new(1, 10, 1 << 20, Weak::new());
        sink.offer(publication(b"a"));
        sink.close("first");
        sink.close("second");
        assert_eq!(sink.close_reason(), Some("first"));
        assert_eq!(take_now(&sink, &mut Vec::new()), Poll::Ready(Err("first")));
        assert!(sink.is_empty());
    }

    /// A waker counting its wake-ups.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[test]
    fn an_offer_wakes_a_waiting_writer_once() {
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let sink = Sink::new(1, 10, 1 << 20, Weak::new());
        assert!(sink.poll_take(&mut cx, &mut Vec::new()).is_pending());
        sink.offer(publication(b"a"));
        sink.offer(publication(b"b"));
        assert_eq!(count.get(), 1);
    }

    /// A queue on a clock ticking every 10 ms, and a counting waker.
    fn clocked() -> (Arc<Sink>, Arc<Count>, Waker) {
        let clock = WriteClock::start(std::time::Duration::from_millis(10));
        let open = Arc::new(OpenSinks::new(Some(clock)));
        let sink = open.open(1, 10, 1 << 20);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        (sink, count, waker)
    }

    #[tokio::test]
    async fn a_held_queue_waits_for_the_tick_and_then_gives_everything_at_once() {
        let (sink, count, waker) = clocked();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();

        // Not held: the first publication is taken at once.
        sink.offer(publication(b"a"));
        assert_eq!(sink.poll_take(&mut cx, &mut batch), Poll::Ready(Ok(())));
        assert_eq!(batch.len(), 1);
        batch.clear();
        sink.wrote();

        // Held: offers neither wake the writer nor can be taken.
        assert!(sink.poll_take(&mut cx, &mut batch).is_pending());
        sink.offer(publication(b"b"));
        sink.offer(publication(b"c"));
        assert_eq!(count.get(), 0);
        assert!(sink.poll_take(&mut cx, &mut batch).is_pending());

        // The tick wakes the writer once, with both waiting.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(count.get(), 1);
        assert_eq!(sink.poll_take(&mut cx, &mut batch), Poll::Ready(Ok(())));
        assert_eq!(batch.len(), 2);
        batch.clear();

        // Released with nothing written since: the next offer wakes at once.
        assert!(sink.poll_take(&mut cx, &mut batch).is_pending());
        sink.offer(publication(b"d"));
        assert_eq!(count.get(), 2);
    }

    #[tokio::test]
    async fn a_tick_with_nothing_waiting_wakes_no_one_and_closing_wakes_a_held_writer() {
        let (sink, count, waker) = clocked();
        let mut cx = Context::from_waker(&waker);
        sink.wrote();
        assert!(sink.poll_take(&mut cx, &mut Vec::new()).is_pending());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(count.get(), 0);

        sink.wrote();
        assert!(sink.poll_take(&mut cx, &mut Vec::new()).is_pending());
        sink.close("bye");
        assert_eq!(count.get(), 1);
        assert_eq!(
            sink.poll_take(&mut cx, &mut Vec::new()),
            Poll::Ready(Err("bye"))
        );
    }
}
