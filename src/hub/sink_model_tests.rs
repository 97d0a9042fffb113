//! Model-based property test of a connection's queue ([`Sink`]): random
//! offers, takes, closes and (on a queue with a write clock) holds and
//! ticks, each checked against a naive bounded FIFO.
//!
//! The model, from the documentation of `sink.rs`:
//!
//! - a publication costs its payload plus 64 bytes, joins/leaves/controls
//!   cost nothing (`queued_cost`);
//! - an offer to a closed queue is refused (`Offer::Closed`);
//! - an offer overflows when the queue already holds `max_len` deliveries,
//!   or when it already holds some bytes and the new total would pass
//!   `max_bytes` (one delivery always fits a queue holding no bytes);
//!   overflowing closes the queue as [`SLOW_CONSUMER`] and drops what it
//!   held;
//! - `close` keeps the first reason and drops what was queued;
//! - `poll_take` gives everything queued, in order, or `Pending` when
//!   nothing is queued or the queue is held, or `Err(reason)` once closed;
//! - `wrote` holds a queue that has a clock (not a closed one) until the
//!   tick (`release`);
//! - the writer's waker (registered by a `Pending` take) is woken once by
//!   an offer (not to a held queue, unless it overflows), by a close, and by
//!   a tick that finds something queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::clock::{Held, WriteClock};
use super::sink::{OpenSinks, Sink};
use super::{ClientInfo, Delivery, Draft, Offer, Publication, SLOW_CONSUMER};

/// Close reasons a test may give (the first must stick).
const REASONS: [&str; 2] = ["first reason", "second reason"];

#[derive(Debug, Clone)]
enum Op {
    /// A publication with a payload of this many bytes.
    OfferPublication(usize),
    /// A join: queued, but costs no bytes.
    OfferJoin,
    Take,
    Close(usize),
    /// The writer wrote: hold the queue until the tick (clocked queues).
    Wrote,
    /// The write clock ticks for this queue.
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..200usize).prop_map(Op::OfferPublication),
        1 => Just(Op::OfferJoin),
        3 => Just(Op::Take),
        1 => (0..REASONS.len()).prop_map(Op::Close),
        1 => Just(Op::Wrote),
        1 => Just(Op::Tick),
    ]
}

/// A waker counting its wake-ups.
#[derive(Default)]
struct Count(AtomicUsize);

impl Wake for Count {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the model tracks of a delivery: its number (the publication's seq,
/// or the join's channel name as a number) and its cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Publication(u64),
    Join(u64),
}

/// The naive queue.
struct Model {
    max_len: usize,
    max_bytes: usize,
    clocked: bool,
    items: Vec<(Item, usize)>,
    closed: Option<&'static str>,
    held: bool,
    waiting: bool,
    wakes: usize,
}

impl Model {
    fn bytes(&self) -> usize {
        self.items.iter().map(|(_, c)| c).sum()
    }

    fn wake(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.wakes += 1;
        }
    }

    fn offer(&mut self, item: Item, cost: usize) -> Offer {
        if self.closed.is_some() {
            return Offer::Closed;
        }
        let bytes = self.bytes();
        let over = self.items.len() >= self.max_len || (bytes > 0 && bytes + cost > self.max_bytes);
        if over {
            self.closed = Some(SLOW_CONSUMER);
            self.items.clear();
            self.wake();
            Offer::Overflow
        } else {
            self.items.push((item, cost));
            if !self.held {
                self.wake();
            }
            Offer::Queued
        }
    }

    fn close(&mut self, reason: &'static str) {
        if self.closed.is_none() {
            self.closed = Some(reason);
            self.items.clear();
        }
        self.wake();
    }

    fn take(&mut self) -> Poll<Result<Vec<Item>, &'static str>> {
        if let Some(reason) = self.closed {
            return Poll::Ready(Err(reason));
        }
        if self.items.is_empty() || self.held {
            self.waiting = true;
            return Poll::Pending;
        }
        Poll::Ready(Ok(self.items.drain(..).map(|(i, _)| i).collect()))
    }

    fn wrote(&mut self) {
        if self.clocked && self.closed.is_none() {
            self.held = true;
        }
    }

    fn tick(&mut self) {
        self.held = false;
        if !self.items.is_empty() {
            self.wake();
        }
    }
}

fn item_of(d: &Delivery) -> Option<Item> {
    match d {
        Delivery::Publication(p) => Some(Item::Publication(p.seq)),
        Delivery::Join(channel, _) => channel.parse().ok().map(Item::Join),
        _ => None,
    }
}

fn run(max_len: usize, max_bytes: usize, clocked: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // The clock's ticking task is spawned on this runtime but never run:
    // the test ticks by hand (`Sink::release`), so the order is exact.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let _entered = rt.enter();
    let clock = clocked.then(|| WriteClock::start(std::time::Duration::from_secs(3600)));
    let open = Arc::new(OpenSinks::new(clock));
    let sink: Arc<Sink> = open.open(7, max_len, max_bytes);
    let count = Arc::new(Count::default());
    let waker = Waker::from(count.clone());
    let mut cx = Context::from_waker(&waker);
    let mut model = Model {
        max_len,
        max_bytes,
        clocked,
        items: Vec::new(),
        closed: None,
        held: false,
        waiting: false,
        wakes: 0,
    };
    let info = Arc::new(ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: None,
        chan_info: None,
    });
    for (n, op) in ops.into_iter().enumerate() {
        let n = n as u64;
        match op {
            Op::OfferPublication(len) => {
                let draft = Draft::to_channel(
                    "ch".into(),
                    Bytes::from(vec![b'x'; len]),
                    None,
                    Default::default(),
                );
                let p = Arc::new(Publication::new(draft, n, n, "e".into(), 0));
                let got = sink.offer(Delivery::Publication(p));
                let want = model.offer(Item::Publication(n), len + 64);
                prop_assert_eq!(got, want, "offer of a publication of {} bytes", len);
            }
            Op::OfferJoin => {
                let got = sink.offer(Delivery::Join(n.to_string().into(), info.clone()));
                let want = model.offer(Item::Join(n), 0);
                prop_assert_eq!(got, want, "offer of a join");
            }
            Op::Take => {
                let mut batch = Vec::new();
                let got = sink.poll_take(&mut cx, &mut batch);
                let items: Vec<Option<Item>> = batch.iter().map(item_of).collect();
                match model.take() {
                    Poll::Pending => {
                        prop_assert!(got.is_pending(), "take: expected Pending, got {:?}", got);
                        prop_assert!(items.is_empty());
                    }
                    Poll::Ready(Err(reason)) => {
                        prop_assert_eq!(got, Poll::Ready(Err(reason)), "take of a closed queue");
                        prop_assert!(items.is_empty());
                    }
                    Poll::Ready(Ok(want)) => {
                        prop_assert_eq!(got, Poll::Ready(Ok(())), "take");
                        let want: Vec<Option<Item>> = want.into_iter().map(Some).collect();
                        prop_assert_eq!(items, want, "take gives everything, in order");
                    }
                }
            }
            Op::Close(i) => {
                sink.close(REASONS[i]);
                model.close(REASONS[i]);
            }
            Op::Wrote => {
                sink.wrote();
                model.wrote();
            }
            Op::Tick => {
                sink.release();
                model.tick();
            }
        }
        prop_assert_eq!(sink.close_reason(), model.closed, "close reason");
        prop_assert_eq!(sink.len(), model.items.len(), "queued deliveries");
        prop_assert_eq!(sink.is_empty(), model.items.is_empty());
        prop_assert_eq!(
            count.0.load(Ordering::Relaxed),
            model.wakes,
            "writer wake-ups"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(256)
    })]

    /// The queue against the naive bounded FIFO: every offer's outcome,
    /// every take (what, in which order, or why not), the close reason, the
    /// length and the writer's wake-ups, after every operation; with and
    /// without a write clock.
    #[test]
    fn sink_follows_the_bounded_fifo_model(
        max_len in 1..6usize,
        max_bytes in 64..600usize,
        clocked in any::<bool>(),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(max_len, max_bytes, clocked, ops)?;
    }
}
