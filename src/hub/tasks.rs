//! The hub's background tasks: the publish log (ordered appends to
//! history, then fan-out), the feed of a shared engine, the refresh of
//! shared presence, and the sweep of expired history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use super::index::Fanout;
use super::{Delivery, Hub, HubError, Job, ENGINE_RESET};
use crate::engine::{ClusterEvent, Feed};
use crate::history::History;

pub(super) async fn run_log(
    mut rx: mpsc::Receiver<Job>,
    history: Arc<dyn History>,
    fanout: Arc<Fanout>,
    max_batch: usize,
    publications: Arc<AtomicU64>,
    deliver: bool,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let (drafts, replies): (Vec<_>, Vec<_>) =
            jobs.drain(..).map(|j| (j.draft, j.reply)).unzip();
        let started = std::time::Instant::now();
        let appended = history.append(drafts).await;
        crate::metrics::history_append(started, replies.len());
        match appended {
            Ok(pubs) => {
                publications.fetch_add(pubs.len() as u64, Ordering::Relaxed);
                // Stored: publishers are answered before the fan-out, which
                // they need not wait for.
                for (p, reply) in pubs.iter().zip(replies) {
                    let _ = reply.send(Ok(p.clone()));
                }
                if deliver {
                    for p in &pubs {
                        fanout.deliver(p);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "history append failed");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(HubError::History(
                        crate::history::HistoryError::Store(msg.clone()),
                    )));
                }
            }
        }
    }
}

/// Fans out what the shared engine feeds this node, in `seq` order.
pub(super) async fn run_feed(mut feed: mpsc::Receiver<Feed>, hub: Weak<Hub>, engine: &'static str) {
    while let Some(item) = feed.recv().await {
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match item {
            Feed::Publications(pubs) => {
                for p in pubs {
                    // A reconnecting feed may repeat what was delivered.
                    if p.seq > hub.fanout.last_seq.load(Ordering::Acquire) {
                        crate::metrics::engine_lag(p.time_ms);
                        hub.fanout.deliver(&p);
                    }
                }
            }
            Feed::Reset { last_seq, why } => {
                tracing::warn!(engine, %why, "engine reset: clients sent to recover from history");
                crate::metrics::engine_reset(engine, &why);
                hub.fanout.last_seq.store(last_seq, Ordering::Release);
                hub.disconnect_all(ENGINE_RESET);
            }
            Feed::Event(ClusterEvent::Join(channel, info)) => {
                let event = Delivery::Join(channel.as_str().into(), Arc::new(info));
                hub.fanout.deliver_event(&channel, event);
            }
            Feed::Event(ClusterEvent::Leave(channel, info)) => {
                let event = Delivery::Leave(channel.as_str().into(), Arc::new(info));
                hub.fanout.deliver_event(&channel, event);
            }
            Feed::Event(ClusterEvent::Control {
                user,
                client,
                control,
            }) => {
                if let Some(handler) = hub.on_control.get() {
                    handler(&user, client.as_deref(), control);
                }
            }
        }
    }
}

/// Keeps this node's shared presence entries from expiring.
pub(super) async fn run_presence_refresh(hub: Weak<Hub>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        hub.presence.refresh().await;
    }
}

pub(super) async fn run_sweep(history: Arc<dyn History>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        match history.sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired history reclaimed"),
            Err(e) => tracing::warn!(error = %e, "history sweep failed"),
        }
    }
}
