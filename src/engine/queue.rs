//! Webhook event queues in the shared engines, so that any node delivers
//! them and a dead node's undelivered events are taken over.
//!
//! - Redis: a stream per endpoint (`P:hooks:<queue>`) read through the
//!   consumer group `hooks`, one consumer per node. A node re-reads its own
//!   pending entries until it acknowledges them (`XACK` + `XDEL`), and
//!   claims entries another consumer left pending for over a minute
//!   (`XAUTOCLAIM`): that consumer's node died.
//! - NATS: a work-queue stream `P_HOOKS` (subject `P.hooks.<queue>`) with a
//!   durable pull consumer per endpoint; a message not acknowledged within
//!   the ack wait is delivered again, to any node.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use crate::integration::queue::{EventQueue, QueueError, Queued};

const GROUP: &str = "hooks";
/// Pending this long, an entry's consumer is taken for dead.
const CLAIM_IDLE_MS: u64 = 60_000;
/// NATS redelivers a message not acknowledged within this.
const ACK_WAIT: Duration = Duration::from_secs(120);

fn failed(e: impl std::fmt::Display) -> QueueError {
    QueueError(e.to_string())
}

/// Webhook queues in Redis streams.
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    consumer: String,
    groups: Mutex<HashSet<String>>,
}

impl RedisQueue {
    /// Queues under `prefix`, consumed as `consumer` (unique per node).
    pub fn new(conn: ConnectionManager, prefix: &str, consumer: String) -> RedisQueue {
        RedisQueue {
            conn,
            prefix: prefix.to_owned(),
            consumer,
            groups: Mutex::new(HashSet::new()),
        }
    }

    fn key(&self, queue: &str) -> String {
        format!("{}:hooks:{queue}", self.prefix)
    }

    async fn ensure_group(&self, key: &str) -> Result<(), QueueError> {
        if self.groups.lock().contains(key) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(failed(e)),
        }
        self.groups.lock().insert(key.to_owned());
        Ok(())
    }
}

fn queued(entries: Vec<StreamId>) -> Vec<Queued> {
    entries
        .into_iter()
        .map(|e| Queued {
            body: e.get::<Vec<u8>>("e").map(Bytes::from).unwrap_or_default(),
            id: e.id,
        })
        .collect()
}

#[async_trait]
impl EventQueue for RedisQueue {
    async fn push(&self, queue: &str, events: &[Bytes], max: usize) -> Result<usize, QueueError> {
        let key = self.key(queue);
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max)
                .arg("*")
                .arg("e")
                .arg(&e[..])
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(failed)?;
        // Redis trims approximately and does not say how much.
        Ok(0)
    }

    async fn peek(&self, queue: &str, count: usize) -> Result<Vec<Queued>, QueueError> {
        let key = self.key(queue);
        self.ensure_group(&key).await?;
        let read = |from: &'static str| {
            let options = StreamReadOptions::default()
                .group(GROUP, &self.consumer)
                .count(count);
            let key = key.clone();
            let mut conn = self.conn.clone();
            async move {
                conn.xread_options::<_, _, Option<StreamReadReply>>(&[key], &[from], &options)
                    .await
                    .map(|r| {
                        r.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
                            .unwrap_or_default()
                    })
            }
        };
        // This node's own unacknowledged entries first (a failed delivery).
        let mine = read("0").await.map_err(failed)?;
        // Trimmed while pending: nothing to deliver, just forget them.
        let (gone, mine): (Vec<_>, Vec<_>) = mine.into_iter().partition(|e| e.map.is_empty());
        if !gone.is_empty() {
            let ids: Vec<String> = gone.into_iter().map(|e| e.id).collect();
            self.ack(queue, &ids).await?;
        }
        if !mine.is_empty() {
            return Ok(queued(mine));
        }
        let mut conn = self.conn.clone();
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&key)
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(CLAIM_IDLE_MS)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        if !claimed.claimed.is_empty() {
            return Ok(queued(claimed.claimed));
        }
        Ok(queued(read(">").await.map_err(failed)?))
    }

    async fn ack(&self, queue: &str, ids: &[String]) -> Result<(), QueueError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.key(queue);
        let mut conn = self.conn.clone();
        redis::pipe()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(ids)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(failed)
    }

    fn shared(&self) -> bool {
        true
    }
}

/// Webhook queues in a JetStream work-queue stream.
pub struct NatsQueue {
    js: jetstream::Context,
    prefix: String,
    stream: tokio::sync::OnceCell<stream::Stream>,
    /// Fetched, not yet acknowledged, by queue: offered again on the next
    /// peek (a failed delivery is retried in order).
    held: Mutex<HashMap<String, Vec<(String, jetstream::Message)>>>,
}

impl NatsQueue {
    /// Queues under `prefix`.
    pub fn new(js: jetstream::Context, prefix: &str) -> NatsQueue {
        NatsQueue {
            js,
            prefix: prefix.to_owned(),
            stream: tokio::sync::OnceCell::new(),
            held: Mutex::new(HashMap::new()),
        }
    }

    fn subject(&self, queue: &str) -> String {
        format!("{}.hooks.{queue}", self.prefix)
    }

    async fn stream(&self, max: usize) -> Result<&stream::Stream, QueueError> {
        self.stream
            .get_or_try_init(|| async {
                self.js
                    .get_or_create_stream(stream::Config {
                        name: format!("{}_HOOKS", self.prefix),
                        subjects: vec![format!("{}.hooks.>", self.prefix)],
                        retention: stream::RetentionPolicy::WorkQueue,
                        max_messages_per_subject: max as i64,
                        discard: stream::DiscardPolicy::Old,
                        storage: stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(failed)
            })
            .await
    }
}

#[async_trait]
impl EventQueue for NatsQueue {
    async fn push(&self, queue: &str, events: &[Bytes], max: usize) -> Result<usize, QueueError> {
        self.stream(max).await?;
        let subject = self.subject(queue);
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            acks.push(
                self.js
                    .publish(subject.clone(), e.clone())
                    .await
                    .map_err(failed)?,
            );
        }
        for ack in acks {
            ack.await.map_err(failed)?;
        }
        Ok(0)
    }

    async fn peek(&self, queue: &str, count: usize) -> Result<Vec<Queued>, QueueError> {
        let held: Vec<(String, jetstream::Message)> =
            self.held.lock().get(queue).cloned().unwrap_or_default();
        if !held.is_empty() {
            for (_, m) in &held {
                // Still working on it: do not redeliver yet.
                let _ = m.ack_with(AckKind::Progress).await;
            }
            return Ok(held
                .into_iter()
                .take(count)
                .map(|(id, m)| Queued {
                    id,
                    body: m.payload.clone(),
                })
                .collect());
        }
        let stream = self.stream(usize::MAX >> 1).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &format!("hooks_{queue}"),
                consumer::pull::Config {
                    durable_name: Some(format!("hooks_{queue}")),
                    filter_subject: self.subject(queue),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    ..Default::default()
                },
            )
            .await
            .map_err(failed)?;
        let mut batch = consumer
            .fetch()
            .max_messages(count)
            .expires(Duration::from_millis(200))
            .messages()
            .await
            .map_err(failed)?;
        let mut got = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(failed)?;
            let id = m.reply.as_ref().map(|r| r.to_string()).unwrap_or_default();
            got.push((id, m));
        }
        let out = got
            .iter()
            .map(|(id, m)| Queued {
                id: id.clone(),
                body: m.payload.clone(),
            })
            .collect();
        self.held.lock().insert(queue.to_owned(), got);
        Ok(out)
    }

    async fn ack(&self, queue: &str, ids: &[String]) -> Result<(), QueueError> {
        let done: Vec<jetstream::Message> = {
            let mut held = self.held.lock();
            let list = held.entry(queue.to_owned()).or_default();
            let (done, keep) = std::mem::take(list)
                .into_iter()
                .partition(|(id, _)| ids.contains(id));
            *list = keep;
            done.into_iter().map(|(_, m)| m).collect()
        };
        for m in done {
            m.ack().await.map_err(failed)?;
        }
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }
}
