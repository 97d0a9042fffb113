//! This node's feed from NATS: `P_LOG` tailed with an ordered consumer
//! from the last `seq` delivered (a log recreated under it is a reset:
//! clients recover from history), and `P.events` (joins, leaves, server
//! API commands of other nodes).

use std::sync::Arc;

use async_nats::jetstream::consumer;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::*;

impl NatsEngine {
    /// Tails `P_LOG` into `tx` until the receiver goes away.
    pub(super) async fn run_feed(self: Arc<Self>, mut after: u64, tx: mpsc::Sender<Feed>) {
        let mut backoff = Backoff::default();
        let mut known: Option<String> = None;
        'connect: while !tx.is_closed() {
            let created = match self.log_created().await {
                Ok(c) => c,
                Err(e) => {
                    crate::metrics::engine_error("nats", "feed");
                    tracing::warn!(error = %e, "nats feed: stream unavailable; retrying");
                    self.recreate_log().await;
                    backoff.wait().await;
                    continue;
                }
            };
            if known.as_ref().is_some_and(|k| *k != created) {
                after = self.last_seq().await.unwrap_or(0);
                self.tips.lock().clear();
                let why = "the JetStream stream was lost and created again".to_owned();
                if tx
                    .send(Feed::Reset {
                        last_seq: after,
                        why,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            known = Some(created);
            let consumer = self
                .log
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: after + 1,
                    },
                    ..Default::default()
                })
                .await;
            let messages = match consumer {
                Ok(c) => c.messages().await,
                Err(e) => {
                    crate::metrics::engine_error("nats", "feed");
                    tracing::warn!(error = %e, "nats feed: cannot read the stream; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    crate::metrics::engine_error("nats", "feed");
                    tracing::warn!(error = %e, "nats feed: cannot read the stream; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                // Wake up now and then to notice a stuck consumer.
                let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
                let msg = match next {
                    // Quiet: fine if nothing is pending, else the consumer
                    // is stuck (the server restarted) and is made again.
                    Err(_) if tx.is_closed() => return,
                    Err(_) => {
                        let created = self.log_created().await.ok();
                        let caught_up = matches!(self.last_seq().await, Ok(l) if l <= after);
                        if created.is_some() && created == known && caught_up {
                            continue;
                        }
                        continue 'connect;
                    }
                    Ok(None) => continue 'connect,
                    Ok(Some(Err(e))) => {
                        crate::metrics::engine_error("nats", "feed");
                        tracing::warn!(error = %e, "nats feed failed; resuming");
                        backoff.wait().await;
                        continue 'connect;
                    }
                    Ok(Some(Ok(m))) => m,
                };
                let Ok(info) = msg.info() else {
                    continue;
                };
                let seq = info.stream_sequence;
                if seq <= after {
                    continue;
                }
                if !report_gap(&tx, after, seq).await {
                    return;
                }
                after = seq;
                match self.decode(seq, &msg.message) {
                    Ok(Some(p)) => {
                        if tx
                            .send(Feed::Publications(vec![Arc::new(p)]))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        crate::metrics::engine_error("nats", "decode");
                        tracing::error!(error = %e, "nats feed: skipping a message");
                    }
                }
            }
        }
    }

    /// Makes the stream again after the server lost it (best effort).
    async fn recreate_log(&self) {
        let mut log = self.log.clone();
        let config = match log.info().await {
            Ok(i) => i.config.clone(),
            Err(_) => stream::Config {
                name: format!("{}_LOG", self.options.prefix),
                subjects: vec![format!("{}.ch.>", self.options.prefix)],
                allow_direct: true,
                ..Default::default()
            },
        };
        let _ = self.js.get_or_create_stream(config).await;
    }

    /// Forwards other nodes' events from `P.events` into `tx`.
    pub(super) async fn run_events(self: Arc<Self>, node: String, tx: mpsc::Sender<Feed>) {
        let mut backoff = Backoff::default();
        let subject = format!("{}.events", self.options.prefix);
        while !tx.is_closed() {
            let mut sub = match self.client.subscribe(subject.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    crate::metrics::engine_error("nats", "events");
                    tracing::warn!(error = %e, "nats events: cannot subscribe; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            while let Some(msg) = sub.next().await {
                if !forward_event(&tx, &node, "nats", &msg.payload).await {
                    return;
                }
            }
            backoff.wait().await;
        }
    }
}
