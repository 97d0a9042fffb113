//! Model-based property test of the hub's subscriber index and fan-out
//! (`Index`, `Fanout`), through the public API: random queues,
//! subscriptions (exact topics, the Mercure wildcard, Centrifugo channel
//! patterns, URL patterns and mixes of them), unsubscriptions (dropping a
//! handle), publications (with alternate topics, private or not) and
//! drains, checked against a naive list of live subscriptions.
//!
//! The delivery rule, as `Fanout::deliver` implements it: a publication is
//! offered to a queue once *per live subscription* of that queue that
//! selects it (one of its matchers matches one of the publication's topics,
//! the channel or an alternate, and its filter admits it). A subscription
//! selecting several of a publication's topics still gets it once; a queue
//! holding two subscriptions that both select it gets it twice (the
//! Centrifugo session drops the second by offset or seq, and an SSE stream
//! has one subscription per queue). Queues are bounded like any `Sink`: an
//! offer past the bound closes the queue as a slow consumer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::{
    Delivery, Draft, Filter, Hub, HubOptions, Offer, Publication, Sink, SubscriptionHandle,
    SLOW_CONSUMER,
};
use crate::history::memory::MemoryHistory;
use crate::history::{Retention, RetentionPolicy};
use crate::protocol::mercure::matcher::{MatcherType, TopicMatcher};

/// Topics publications go to (channel or alternate).
/// The last ones are spelled so that only parsing them as URLs tells what
/// URL patterns select them (case, default port, dot segments, relative
/// references), to check the index of patterns by key.
const TOPICS: [&str; 13] = [
    "a",
    "b",
    "ns:a",
    "ns:b",
    "https://hub.example/books/1",
    "HTTPS://HUB.EXAMPLE/books/2",
    "https://hub.example:443/books/3",
    "https://hub.example/x/../books/4",
    "/books/5",
    "https://hub.example/users/42/x",
    "https://hub.example:8080/books/6",
    "ns:deep/a",
    "https://hub.example/users/42/x/y",
];
const HUB_URL: &str = "https://hub.example/.well-known/mercure";

/// The matchers a subscription may hold.
fn matcher(i: usize) -> TopicMatcher {
    let url = url::Url::parse(HUB_URL).expect("hub url");
    let new = |kind, raw: &str| TopicMatcher::new(kind, raw, &url).expect("matcher");
    match i {
        0..=4 => new(MatcherType::Exact, TOPICS[i]),
        11 => new(MatcherType::Urlpattern, "/books/:id"),
        12 => new(MatcherType::Urlpattern, "https://hub.example/users/42/:x"),
        13 => new(MatcherType::Legacy, "https://hub.example/users/{u}/x"),
        14 => new(
            MatcherType::Urlpattern,
            "https://hub.example:8080/books/:id",
        ),
        15 => TopicMatcher::channel_pattern("ns:deep/*").expect("channel pattern"),
        16 => new(MatcherType::Urlpattern, "https://hub.example/:a/:b/:c"),
        17 => new(MatcherType::Legacy, "{+any}"),
        18 => new(MatcherType::Urlpattern, "https://hub.example/users/*"),
        // Mercure's `*`: every topic.
        5 => new(MatcherType::Exact, "*"),
        // The same spelling as a Centrifugo channel pattern: channels
        // without a namespace only.
        6 => TopicMatcher::channel_pattern("*").expect("channel pattern"),
        7 => TopicMatcher::channel_pattern("ns:*").expect("channel pattern"),
        8 => new(MatcherType::Urlpattern, "https://hub.example/books/:id"),
        // A URI template (legacy Mercure).
        9 => new(MatcherType::Legacy, "https://hub.example/books/{id}"),
        _ => new(MatcherType::Urlpattern, "*"),
    }
}
const MATCHERS: usize = 19;

#[derive(Debug, Clone)]
enum Op {
    OpenQueue,
    Subscribe {
        queue: usize,
        matchers: Vec<usize>,
        public_only: bool,
    },
    /// Drops one live subscription's handle.
    Unsubscribe(usize),
    Publish {
        channel: usize,
        alternates: Vec<usize>,
        private: bool,
        len: usize,
    },
    Drain(usize),
    Close(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let matchers = prop_oneof![
        1 => Just(Vec::new()),
        8 => prop::collection::vec(0..MATCHERS, 1..2),
        4 => prop::collection::vec(0..MATCHERS, 2..4),
    ];
    prop_oneof![
        2 => Just(Op::OpenQueue),
        5 => (any::<usize>(), matchers, prop::bool::weighted(0.2)).prop_map(
            |(queue, matchers, public_only)| Op::Subscribe {
                queue,
                matchers,
                public_only,
            }
        ),
        2 => any::<usize>().prop_map(Op::Unsubscribe),
        6 => (
            0..TOPICS.len(),
            prop_oneof![
                3 => Just(Vec::new()),
                1 => prop::collection::vec(0..TOPICS.len(), 1..3),
            ],
            prop::bool::weighted(0.2),
            0..100usize,
        )
            .prop_map(|(channel, alternates, private, len)| Op::Publish {
                channel,
                alternates,
                private,
                len,
            }),
        3 => any::<usize>().prop_map(Op::Drain),
        1 => any::<usize>().prop_map(Op::Close),
    ]
}

/// Admits everything, or only public publications.
struct TestFilter {
    public_only: bool,
}

impl Filter for TestFilter {
    fn admits(&self, p: &Publication) -> bool {
        !(self.public_only && p.draft.private)
    }
}

/// A live subscription of the model (and its handle, dropped to
/// unsubscribe).
struct Sub {
    queue: usize,
    matchers: Vec<TopicMatcher>,
    public_only: bool,
    handle: SubscriptionHandle,
}

impl Sub {
    fn selects(&self, p: &Publication) -> bool {
        !(self.public_only && p.draft.private)
            && self
                .matchers
                .iter()
                .any(|m| p.topics().any(|t| m.matches(t)))
    }

    /// All matchers exact: listed by `Hub::channels`.
    fn exact_topics(&self) -> Option<Vec<&str>> {
        let mut topics: Vec<&str> = self
            .matchers
            .iter()
            .map(TopicMatcher::exact_topic)
            .collect::<Option<_>>()?;
        topics.sort_unstable();
        topics.dedup();
        Some(topics)
    }
}

/// A queue of the model: what it holds (publication seqs) and why it closed.
struct Queue {
    sink: Arc<Sink>,
    items: Vec<(u64, usize)>,
    closed: Option<&'static str>,
}

struct Model {
    capacity: usize,
    max_bytes: usize,
    queues: Vec<Queue>,
    subs: Vec<Sub>,
    deliveries: u64,
    drops: u64,
}

impl Model {
    /// The bounded-queue rule (see `sink_model_tests`).
    fn offer(&mut self, q: usize, seq: u64, cost: usize) -> Offer {
        let (max_len, max_bytes) = (self.capacity, self.max_bytes);
        let q = &mut self.queues[q];
        if q.closed.is_some() {
            return Offer::Closed;
        }
        let bytes: usize = q.items.iter().map(|(_, c)| c).sum();
        if q.items.len() >= max_len || (bytes > 0 && bytes + cost > max_bytes) {
            q.closed = Some(SLOW_CONSUMER);
            q.items.clear();
            self.drops += 1;
            Offer::Overflow
        } else {
            q.items.push((seq, cost));
            self.deliveries += 1;
            Offer::Queued
        }
    }

    fn deliver(&mut self, p: &Publication) {
        for q in 0..self.queues.len() {
            let times = self
                .subs
                .iter()
                .filter(|s| s.queue == q && s.selects(p))
                .count();
            for _ in 0..times {
                self.offer(q, p.seq, p.draft.data.len() + 64);
            }
        }
    }
}

/// Waits until the hub has fanned out everything up to `seq` (the log task
/// answers the publisher before fanning out): a subscription's snapshot is
/// the last seq fanned out.
async fn settle(hub: &Hub, probe: &Arc<Sink>, seq: u64) {
    loop {
        let handle = hub.subscribe_on(
            probe,
            Vec::new(),
            Arc::new(TestFilter { public_only: false }),
            false,
        );
        if handle.snapshot_seq >= seq {
            return;
        }
        drop(handle);
        tokio::task::yield_now().await;
    }
}

async fn run(capacity: usize, max_bytes: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let history = Arc::new(MemoryHistory::new(RetentionPolicy::uniform(Retention {
        size: 1000,
        ttl: Duration::from_secs(3600),
        meta_ttl: Duration::from_secs(3600),
    })));
    let options = HubOptions {
        queue_capacity: capacity,
        queue_bytes: max_bytes,
        max_batch: 16,
        sweep_interval: Duration::from_secs(3600),
        write_interval: Duration::ZERO,
    };
    let hub = Hub::start(history, options)
        .await
        .map_err(|e| TestCaseError::fail(format!("hub start: {e}")))?;
    let probe = hub.open_queue();
    let mut model = Model {
        capacity,
        max_bytes,
        queues: Vec::new(),
        subs: Vec::new(),
        deliveries: 0,
        drops: 0,
    };
    let mut cx = Context::from_waker(Waker::noop());
    for op in ops {
        match op {
            Op::OpenQueue => {
                let sink = hub.open_queue();
                model.queues.push(Queue {
                    sink,
                    items: Vec::new(),
                    closed: None,
                });
            }
            Op::Subscribe {
                queue,
                matchers,
                public_only,
            } => {
                if model.queues.is_empty() {
                    continue;
                }
                let queue = queue % model.queues.len();
                let matchers: Vec<TopicMatcher> = matchers.into_iter().map(matcher).collect();
                let handle = hub.subscribe_on(
                    &model.queues[queue].sink,
                    matchers.clone(),
                    Arc::new(TestFilter { public_only }),
                    false,
                );
                model.subs.push(Sub {
                    queue,
                    matchers,
                    public_only,
                    handle,
                });
            }
            Op::Unsubscribe(i) => {
                if !model.subs.is_empty() {
                    let sub = model.subs.remove(i % model.subs.len());
                    drop(sub.handle);
                }
            }
            Op::Publish {
                channel,
                alternates,
                private,
                len,
            } => {
                let mut draft = Draft::to_channel(
                    TOPICS[channel].to_owned(),
                    Bytes::from(vec![b'x'; len]),
                    None,
                    Default::default(),
                );
                draft.alternates = alternates.iter().map(|&i| TOPICS[i].to_owned()).collect();
                draft.private = private;
                let p = hub
                    .publish(draft)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("publish: {e}")))?;
                settle(&hub, &probe, p.seq).await;
                model.deliver(&p);
            }
            Op::Drain(q) => {
                if model.queues.is_empty() {
                    continue;
                }
                let n = model.queues.len();
                let q = &mut model.queues[q % n];
                let mut batch = Vec::new();
                let got = q.sink.poll_take(&mut cx, &mut batch);
                let seqs: Vec<u64> = batch
                    .iter()
                    .filter_map(|d| match d {
                        Delivery::Publication(p) => Some(p.seq),
                        _ => None,
                    })
                    .collect();
                prop_assert_eq!(seqs.len(), batch.len(), "only publications are queued");
                if let Some(reason) = q.closed {
                    prop_assert_eq!(got, Poll::Ready(Err(reason)));
                } else if q.items.is_empty() {
                    prop_assert!(got.is_pending(), "nothing queued, got {:?}", got);
                } else {
                    prop_assert_eq!(got, Poll::Ready(Ok(())));
                    let want: Vec<u64> = q.items.drain(..).map(|(s, _)| s).collect();
                    prop_assert_eq!(seqs, want, "the queue's publications, in order");
                }
            }
            Op::Close(q) => {
                if model.queues.is_empty() {
                    continue;
                }
                let n = model.queues.len();
                let q = &mut model.queues[q % n];
                q.sink.close("closed by the test");
                if q.closed.is_none() {
                    q.closed = Some("closed by the test");
                    q.items.clear();
                }
            }
        }

        // What every queue holds, without taking it.
        for (i, q) in model.queues.iter().enumerate() {
            prop_assert_eq!(q.sink.len(), q.items.len(), "length of queue {}", i);
            prop_assert_eq!(q.sink.close_reason(), q.closed, "queue {} closed", i);
        }
        // Channels with exact subscribers, and how many.
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for s in &model.subs {
            for t in s.exact_topics().unwrap_or_default() {
                *want.entry(t.to_owned()).or_default() += 1;
            }
        }
        let got: BTreeMap<String, usize> = hub.channels().into_iter().collect();
        prop_assert_eq!(&got, &want, "channels()");
        prop_assert_eq!(hub.channel_count(), want.len());
        let stats = hub.stats();
        prop_assert_eq!(stats.subscribers, model.subs.len(), "live subscribers");
        prop_assert_eq!(stats.deliveries, model.deliveries, "deliveries");
        prop_assert_eq!(stats.drops, model.drops, "drops");
        prop_assert_eq!(stats.slow_disconnects, model.drops, "slow disconnects");
        // Depths of the queues holding a subscription.
        let depths: Vec<usize> = (0..model.queues.len())
            .filter(|&q| model.subs.iter().any(|s| s.queue == q))
            .map(|q| model.queues[q].items.len())
            .collect();
        let want_depths = (
            depths.iter().sum(),
            depths.iter().copied().max().unwrap_or(0),
        );
        prop_assert_eq!(hub.queue_depths(), want_depths, "queue_depths()");
    }
    hub.shutdown().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::with_cases(64)
    })]

    /// Fan-out against the naive list of live subscriptions: after every
    /// operation, each queue holds exactly the publications it should
    /// (once per live subscription of it that selects them, in publication
    /// order, bounded), and `channels()`, the subscriber count, the delivery
    /// and drop counters and the queue depths agree with the model.
    #[test]
    fn fanout_follows_the_subscription_model(
        capacity in 2..8usize,
        max_bytes in prop_oneof![Just(1usize << 20), 150..400usize],
        ops in prop::collection::vec(op(), 1..100),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run(capacity, max_bytes, ops))?;
    }
}
