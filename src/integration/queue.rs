//! Where webhook events wait until their endpoint has them.
//!
//! An [`EventQueue`] holds named queues (one per endpoint) of opaque event
//! bodies. Events stay until acknowledged, so a failed delivery is retried
//! and a restart loses nothing that was pushed: that is the "at least once".
//! One node keeps them in its data directory ([`DiskQueue`], a redb file of
//! its own beside the history) or in memory ([`MemoryQueue`], for
//! `history.engine = "memory"`); a cluster keeps them in the shared engine
//! (Redis stream with a consumer group, JetStream work queue), so a dead
//! node's undelivered events are taken over by another.
//!
//! Every queue holds at most `max` events; past it the oldest are dropped
//! (counted in `tidings_webhook_events_total{outcome="dropped"}`).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use redb::{Database, ReadableTable, TableDefinition};

/// A queue could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("event queue: {0}")]
pub struct QueueError(pub String);

/// One waiting event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// The queue's id of it (acknowledge with it).
    pub id: String,
    /// The event body (JSON).
    pub body: Bytes,
}

/// Named queues of events, kept until acknowledged.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Appends events to `queue`; returns how many older ones were dropped
    /// to stay within `max`.
    async fn push(&self, queue: &str, events: &[Bytes], max: usize) -> Result<usize, QueueError>;
    /// Up to `count` of the oldest unacknowledged events of `queue` that no
    /// other consumer holds.
    async fn peek(&self, queue: &str, count: usize) -> Result<Vec<Queued>, QueueError>;
    /// Removes delivered events.
    async fn ack(&self, queue: &str, ids: &[String]) -> Result<(), QueueError>;
    /// Other nodes push to it too (the consumer polls instead of waiting
    /// for this node's pushes).
    fn shared(&self) -> bool {
        false
    }
}

/// One in-memory queue: the last number given, and the numbered events.
type Numbered = (u64, VecDeque<(u64, Bytes)>);

/// Events in memory: lost at restart (`history.engine = "memory"`).
#[derive(Default)]
pub struct MemoryQueue {
    queues: Mutex<HashMap<String, Numbered>>,
}

#[async_trait]
impl EventQueue for MemoryQueue {
    async fn push(&self, queue: &str, events: &[Bytes], max: usize) -> Result<usize, QueueError> {
        let mut queues = self.queues.lock();
        let (next, q) = queues.entry(queue.to_owned()).or_default();
        for e in events {
            *next += 1;
            q.push_back((*next, e.clone()));
        }
        let dropped = q.len().saturating_sub(max);
        q.drain(..dropped);
        Ok(dropped)
    }

    async fn peek(&self, queue: &str, count: usize) -> Result<Vec<Queued>, QueueError> {
        let queues = self.queues.lock();
        Ok(queues
            .get(queue)
            .map(|(_, q)| {
                q.iter()
                    .take(count)
                    .map(|(id, body)| Queued {
                        id: id.to_string(),
                        body: body.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn ack(&self, queue: &str, ids: &[String]) -> Result<(), QueueError> {
        let mut queues = self.queues.lock();
        if let Some((_, q)) = queues.get_mut(queue) {
            q.retain(|(id, _)| !ids.contains(&id.to_string()));
        }
        Ok(())
    }
}

/// Events by (queue, number).
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events");
/// Per queue: (next number, length).
const COUNTS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("counts");

/// Events in `data_dir/webhooks.redb`: they survive a restart.
pub struct DiskQueue {
    db: Arc<Database>,
}

fn store(e: impl std::fmt::Display) -> QueueError {
    QueueError(e.to_string())
}

impl DiskQueue {
    /// Opens (or creates) `dir/webhooks.redb`.
    pub fn open(dir: &Path) -> Result<DiskQueue, QueueError> {
        std::fs::create_dir_all(dir).map_err(store)?;
        let db = Database::create(dir.join("webhooks.redb")).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        txn.open_table(EVENTS).map_err(store)?;
        txn.open_table(COUNTS).map_err(store)?;
        txn.commit().map_err(store)?;
        Ok(DiskQueue { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(store)?
    }
}

#[async_trait]
impl EventQueue for DiskQueue {
    async fn push(&self, queue: &str, events: &[Bytes], max: usize) -> Result<usize, QueueError> {
        let (queue, events) = (queue.to_owned(), events.to_vec());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(store)?;
            let dropped;
            {
                let mut table = txn.open_table(EVENTS).map_err(store)?;
                let mut counts = txn.open_table(COUNTS).map_err(store)?;
                let (mut next, mut len) = counts
                    .get(queue.as_str())
                    .map_err(store)?
                    .map_or((1, 0), |v| v.value());
                for e in &events {
                    table
                        .insert((queue.as_str(), next), &e[..])
                        .map_err(store)?;
                    next += 1;
                    len += 1;
                }
                dropped = len.saturating_sub(max as u64);
                for _ in 0..dropped {
                    table.pop_first_in(&queue).map_err(store)?;
                }
                len -= dropped;
                counts.insert(queue.as_str(), (next, len)).map_err(store)?;
            }
            txn.commit().map_err(store)?;
            Ok(dropped as usize)
        })
        .await
    }

    async fn peek(&self, queue: &str, count: usize) -> Result<Vec<Queued>, QueueError> {
        let queue = queue.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(store)?;
            let table = txn.open_table(EVENTS).map_err(store)?;
            let mut out = Vec::new();
            for entry in table
                .range((queue.as_str(), 0)..=(queue.as_str(), u64::MAX))
                .map_err(store)?
                .take(count)
            {
                let (k, v) = entry.map_err(store)?;
                out.push(Queued {
                    id: k.value().1.to_string(),
                    body: Bytes::copy_from_slice(v.value()),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn ack(&self, queue: &str, ids: &[String]) -> Result<(), QueueError> {
        let queue = queue.to_owned();
        let ids: Vec<u64> = ids.iter().filter_map(|i| i.parse().ok()).collect();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(store)?;
            {
                let mut table = txn.open_table(EVENTS).map_err(store)?;
                let mut counts = txn.open_table(COUNTS).map_err(store)?;
                let mut removed = 0;
                for id in ids {
                    if table.remove((queue.as_str(), id)).map_err(store)?.is_some() {
                        removed += 1;
                    }
                }
                let (next, len) = counts
                    .get(queue.as_str())
                    .map_err(store)?
                    .map_or((1, 0), |v| v.value());
                counts
                    .insert(queue.as_str(), (next, len.saturating_sub(removed)))
                    .map_err(store)?;
            }
            txn.commit().map_err(store)?;
            Ok(())
        })
        .await
    }
}

/// Removes the first event of `queue`.
trait PopFirstIn {
    fn pop_first_in(&mut self, queue: &str) -> Result<(), redb::StorageError>;
}

impl PopFirstIn for redb::Table<'_, (&'static str, u64), &'static [u8]> {
    fn pop_first_in(&mut self, queue: &str) -> Result<(), redb::StorageError> {
        let first = self
            .range((queue, 0)..=(queue, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        if let Some(n) = first {
            self.remove((queue, n))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn behaves_like_a_queue(q: &dyn EventQueue) {
        let ev = |s: &str| Bytes::from(s.to_owned());
        assert_eq!(
            q.push("a", &[ev("1"), ev("2"), ev("3")], 10).await.unwrap(),
            0
        );
        q.push("b", &[ev("x")], 10).await.unwrap();
        let got = q.peek("a", 2).await.unwrap();
        assert_eq!(
            got.iter().map(|e| &e.body[..]).collect::<Vec<_>>(),
            [b"1", b"2"]
        );
        // Not acknowledged: still there.
        assert_eq!(q.peek("a", 2).await.unwrap(), got);
        q.ack("a", &[got[0].id.clone()]).await.unwrap();
        let rest = q.peek("a", 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| &e.body[..]).collect::<Vec<_>>(),
            [b"2", b"3"]
        );
        // Over the limit: the oldest go.
        assert_eq!(q.push("a", &[ev("4"), ev("5")], 3).await.unwrap(), 1);
        let rest = q.peek("a", 10).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| &e.body[..]).collect::<Vec<_>>(),
            [b"3", b"4", b"5"]
        );
        assert_eq!(q.peek("b", 10).await.unwrap().len(), 1);
        assert!(q.peek("none", 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_queue() {
        behaves_like_a_queue(&MemoryQueue::default()).await;
    }

    #[tokio::test]
    async fn disk_queue_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        behaves_like_a_queue(&DiskQueue::open(dir.path()).unwrap()).await;
        let reopened = DiskQueue::open(dir.path()).unwrap();
        assert_eq!(reopened.peek("a", 10).await.unwrap().len(), 3);
    }
}
