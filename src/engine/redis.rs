//! The Redis engine: history, fan-out between nodes and presence in Redis.
//!
//! Keys (all under the configured prefix `P`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:seq` | string | the hub-wide sequence (`INCR`) |
//! | `P:gen` | string | a random generation, set once; a new one means Redis lost its data |
//! | `P:log` | stream | every publication, entry id `seq-0`, capped at `cluster.log_size` |
//! | `P:ch:<channel>` | stream | a channel's history, entry id `offset-0`, capped at its size, expiring `ttl` after the last publish |
//! | `P:meta:<channel>` | hash | the channel's `e`poch and last `o`ffset, expiring after `meta_ttl` |
//! | `P:id:<id>` | string | a Mercure event id's `seq` |
//! | `P:pr:<channel>`, `P:pe:<channel>` | hash, sorted set | presence: client → info, client → expiry |
//! | `P:events` | pub/sub | join/leave and server API commands between nodes |
//!
//! One Lua script positions and stores a batch of publications atomically,
//! so `seq`, `offset` and the two streams never disagree. Every node tails
//! `P:log` with `XREAD BLOCK` from the last `seq` it delivered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncConnectionConfig, AsyncTypedCommands, Script};
use tokio::sync::mpsc;

use super::{
    forward_event, report_gap, Broker, Engine, EngineError, EngineOptions, Envelope, Feed,
    PresenceStore,
};
use crate::history::{new_epoch, History, HistoryError, ReplayPage, Selection, StreamPosition};
use crate::history::{ClientInfo, Draft, Publication};
use crate::time::Backoff;

/// Positions and stores a batch. ARGV: prefix, log cap, then per draft:
/// channel, id, draft bytes, candidate epoch, size, ttl s, meta ttl s.
/// Returns per draft `{seq, offset, epoch, time_ms}`.
const APPEND: &str = r#"
local p = ARGV[1]
local log_max = ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local i = 3
while i <= #ARGV do
  local ch, id, draft, cand = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local size, ttl, mttl = ARGV[i+4], ARGV[i+5], ARGV[i+6]
  i = i + 7
  local meta = p .. ':meta:' .. ch
  redis.call('HSETNX', meta, 'e', cand)
  local epoch = redis.call('HGET', meta, 'e')
  local off = redis.call('HINCRBY', meta, 'o', 1)
  redis.call('EXPIRE', meta, mttl)
  local seq = redis.call('INCR', p .. ':seq')
  local chk = p .. ':ch:' .. ch
  redis.call('XADD', chk, 'MAXLEN', size, off .. '-0', 's', seq, 'e', epoch, 't', now, 'd', draft)
  redis.call('EXPIRE', chk, ttl)
  redis.call('XADD', p .. ':log', 'MAXLEN', '~', log_max, seq .. '-0', 'o', off, 'e', epoch, 't', now, 'd', draft)
  redis.call('SET', p .. ':id:' .. id, seq, 'EX', ttl, 'NX')
  out[#out + 1] = {seq, off, epoch, now}
end
return out
"#;

/// A channel's position, creating its epoch if needed. ARGV: prefix,
/// channel, candidate epoch, meta ttl s. Returns `{epoch, offset}`.
const POSITION: &str = r#"
local meta = ARGV[1] .. ':meta:' .. ARGV[2]
redis.call('HSETNX', meta, 'e', ARGV[3])
redis.call('EXPIRE', meta, ARGV[4])
local v = redis.call('HMGET', meta, 'e', 'o')
return {v[1], tonumber(v[2] or '0')}
"#;

/// Presence of a channel without its expired entries. KEYS: hash, zset.
const PRESENCE_GET: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, c in ipairs(gone) do
  redis.call('HDEL', KEYS[1], c)
  redis.call('ZREM', KEYS[2], c)
end
return redis.call('HGETALL', KEYS[1])
"#;

/// Log entries read per round trip of a replay.
const REPLAY_SCAN: usize = 1000;

fn err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

fn bad(what: &str) -> EngineError {
    EngineError::Redis(format!("unreadable {what} in Redis"))
}

/// History, broker and presence on one Redis.
#[derive(Clone)]
pub struct RedisEngine {
    client: redis::Client,
    conn: ConnectionManager,
    options: EngineOptions,
    append: Script,
    position: Script,
    presence_get: Script,
}

impl RedisEngine {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`) and
    /// returns the engine's parts.
    pub async fn connect(url: &str, options: EngineOptions) -> Result<Engine, EngineError> {
        let client = redis::Client::open(url).map_err(err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(err)?;
        let presence_ttl = options.presence_ttl;
        let events = Arc::new(super::queue::RedisQueue::new(
            conn.clone(),
            &options.prefix,
            uuid::Uuid::new_v4().simple().to_string(),
        ));
        let engine = Arc::new(RedisEngine {
            client,
            conn,
            options,
            append: Script::new(APPEND),
            position: Script::new(POSITION),
            presence_get: Script::new(PRESENCE_GET),
        });
        Ok(Engine {
            name: "redis",
            history: engine.clone(),
            broker: engine.clone(),
            presence: engine,
            presence_ttl,
            events,
        })
    }

    fn key(&self, what: &str, name: &str) -> String {
        format!("{}:{what}:{name}", self.options.prefix)
    }

    fn global(&self, what: &str) -> String {
        format!("{}:{what}", self.options.prefix)
    }

    /// A publication stored in `P:log` (`seq` from the entry id) or in a
    /// channel stream (`seq` in a field), or None when it expired.
    fn decode(&self, entry: &StreamId, in_log: bool) -> Result<Option<Publication>, EngineError> {
        let number = |field: &str| -> Result<u64, EngineError> {
            entry
                .get::<u64>(field)
                .ok_or_else(|| bad("publication field"))
        };
        let first = entry
            .id
            .split('-')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| bad("stream id"))?;
        let (seq, offset) = if in_log {
            (first, number("o")?)
        } else {
            (number("s")?, first)
        };
        let epoch: String = entry.get("e").ok_or_else(|| bad("epoch"))?;
        let time_ms = number("t")?;
        let raw: Vec<u8> = entry.get("d").ok_or_else(|| bad("publication"))?;
        let draft: Draft = postcard::from_bytes(&raw).map_err(|_| bad("publication"))?;
        // A channel's history is read up to its TTL; the log keeps what it
        // holds until it is cut (replaying an old one loses nothing).
        let ttl = self.options.retention.for_channel(&draft.channel).ttl;
        if !in_log && time_ms + (ttl.as_millis() as u64) < crate::time::now_ms() {
            return Ok(None);
        }
        Ok(Some(Publication::new(
            draft,
            seq,
            offset,
            epoch.into(),
            time_ms,
        )))
    }

    fn decode_all(
        &self,
        entries: &[StreamId],
        in_log: bool,
    ) -> Result<Vec<Arc<Publication>>, EngineError> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(p) = self.decode(e, in_log)? {
                out.push(Arc::new(p));
            }
        }
        Ok(out)
    }

    /// The generation marker: set on first use, replaced only when Redis
    /// lost it (restart without persistence, flush).
    async fn generation(&self, conn: &mut MultiplexedConnection) -> Result<String, EngineError> {
        let key = self.global("gen");
        let _: bool = redis::cmd("SET")
            .arg(&key)
            .arg(new_epoch().as_ref())
            .arg("NX")
            .query_async::<Option<String>>(conn)
            .await
            .map_err(err)?
            .is_some();
        conn.get(&key)
            .await
            .map_err(err)?
            .ok_or_else(|| bad("generation"))
    }

    async fn current_seq(&self, conn: &mut MultiplexedConnection) -> Result<u64, EngineError> {
        let seq: Option<String> = conn.get(self.global("seq")).await.map_err(err)?;
        Ok(seq.and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// Tails `P:log` into `tx` until the receiver goes away.
    async fn run_feed(self: Arc<Self>, mut after: u64, tx: mpsc::Sender<Feed>) {
        let mut known_gen: Option<String> = None;
        let mut backoff = Backoff::default();
        let log = self.global("log");
        let read = StreamReadOptions::default().block(2000).count(512);
        'connect: loop {
            if tx.is_closed() {
                return;
            }
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(10)));
            let mut conn = match self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    crate::metrics::engine_error("redis", "connect");
                    tracing::warn!(error = %e, "redis feed: cannot connect; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            loop {
                // A changed generation means Redis lost the log this node was
                // following (its sequence started again).
                let gen = match self.generation(&mut conn).await {
                    Ok(g) => g,
                    Err(e) => {
                        crate::metrics::engine_error("redis", "feed");
                        tracing::warn!(error = %e, "redis feed failed; reconnecting");
                        backoff.wait().await;
                        continue 'connect;
                    }
                };
                if known_gen.as_ref().is_some_and(|k| *k != gen) {
                    after = self.current_seq(&mut conn).await.unwrap_or(0);
                    let why = "Redis lost its data (new generation)".to_owned();
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
                known_gen = Some(gen);
                if tx.is_closed() {
                    return;
                }
                let reply: Result<Option<StreamReadReply>, _> = conn
                    .xread_options(&[&log], &[format!("{after}-0")], &read)
                    .await;
                let entries = match reply {
                    Ok(Some(r)) => r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>(),
                    Ok(None) => continue,
                    Err(e) => {
                        crate::metrics::engine_error("redis", "feed");
                        tracing::warn!(error = %e, "redis feed failed; reconnecting");
                        backoff.wait().await;
                        continue 'connect;
                    }
                };
                backoff.reset();
                let mut pubs = Vec::with_capacity(entries.len());
                for e in &entries {
                    match self.decode(e, true) {
                        Ok(Some(p)) => pubs.push(Arc::new(p)),
                        // Expired on the way: keep its place in the sequence.
                        Ok(None) => {}
                        Err(e) => {
                            crate::metrics::engine_error("redis", "decode");
                            tracing::error!(error = %e, "redis feed: skipping an entry");
                        }
                    }
                }
                let last = entries
                    .last()
                    .and_then(|e| e.id.split('-').next()?.parse::<u64>().ok());
                let first = entries
                    .first()
                    .and_then(|e| e.id.split('-').next()?.parse::<u64>().ok());
                if let (Some(first), Some(last)) = (first, last) {
                    if !report_gap(&tx, after, first).await {
                        return;
                    }
                    after = last;
                }
                if !pubs.is_empty() && tx.send(Feed::Publications(pubs)).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Forwards other nodes' events from `P:events` into `tx`.
    async fn run_events(self: Arc<Self>, node: String, tx: mpsc::Sender<Feed>) {
        use futures::StreamExt;
        let mut backoff = Backoff::default();
        let channel = self.global("events");
        while !tx.is_closed() {
            let mut pubsub = match self.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    crate::metrics::engine_error("redis", "connect");
                    tracing::warn!(error = %e, "redis events: cannot connect; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            if let Err(e) = pubsub.subscribe(&channel).await {
                crate::metrics::engine_error("redis", "events");
                tracing::warn!(error = %e, "redis events: cannot subscribe; retrying");
                backoff.wait().await;
                continue;
            }
            backoff.reset();
            let mut messages = pubsub.into_on_message();
            while let Some(msg) = messages.next().await {
                if !forward_event(&tx, &node, "redis", msg.get_payload_bytes()).await {
                    return;
                }
            }
            tracing::warn!("redis events: connection lost; reconnecting");
            backoff.wait().await;
        }
    }
}

#[async_trait]
impl History for RedisEngine {
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        let mut call = self.append.prepare_invoke();
        call.arg(&self.options.prefix).arg(self.options.log_size);
        for d in &drafts {
            let r = self.options.retention.for_channel(&d.channel);
            call.arg(&d.channel)
                .arg(&d.id)
                .arg(postcard::to_stdvec(d).unwrap_or_default())
                .arg(new_epoch().as_ref())
                .arg(r.size)
                .arg(r.ttl.as_secs().max(1))
                .arg(r.meta_ttl.as_secs().max(1));
        }
        let mut conn = self.conn.clone();
        let rows: Vec<(u64, u64, String, u64)> = call.invoke_async(&mut conn).await.map_err(err)?;
        if rows.len() != drafts.len() {
            return Err(bad("append reply").into());
        }
        Ok(drafts
            .into_iter()
            .zip(rows)
            .map(|(d, (seq, offset, epoch, time))| {
                Arc::new(Publication::new(d, seq, offset, epoch.into(), time))
            })
            .collect())
    }

    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        let mut conn = self.conn.clone();
        let seq: Option<String> = conn.get(self.key("id", id)).await.map_err(err)?;
        Ok(seq.and_then(|s| s.parse().ok()))
    }

    async fn replay(
        &self,
        selection: Arc<Selection>,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ReplayPage, HistoryError> {
        if upto <= after {
            return Ok(ReplayPage::default());
        }
        let mut conn = self.conn.clone();
        let log = self.global("log");
        // `P:log` is only ever cut from its start: a gap is a start past
        // `after + 1` (an empty log counts as starting after `seq`).
        let first: StreamRangeReply = conn.xrange_count(&log, "-", "+", 1).await.map_err(err)?;
        let first_seq = match first.ids.first() {
            Some(e) => {
                e.id.split('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }
            None => {
                let seq: Option<String> = conn.get(self.global("seq")).await.map_err(err)?;
                seq.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1
            }
        };
        let gap = after > 0 && first_seq > after + 1;
        let mut out = Vec::new();
        let mut from = after;
        while out.len() < limit {
            let page: StreamRangeReply = conn
                .xrange_count(&log, format!("({from}-0"), format!("{upto}-0"), REPLAY_SCAN)
                .await
                .map_err(err)?;
            for p in self.decode_all(&page.ids, true)? {
                from = p.seq;
                if out.len() < limit && selection.selects_publication(&p) {
                    out.push(p);
                }
            }
            if page.ids.len() < REPLAY_SCAN {
                break;
            }
        }
        Ok(ReplayPage {
            publications: out,
            gap,
        })
    }

    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError> {
        let mut conn = self.conn.clone();
        let reply: StreamRangeReply = conn
            .xrevrange_count(self.global("log"), "+", "-", 1)
            .await
            .map_err(err)?;
        Ok(self
            .decode_all(&reply.ids, true)?
            .first()
            .map(|p| (p.seq, p.id().to_owned())))
    }

    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError> {
        let mut conn = self.conn.clone();
        let (meta, range): ((Option<String>, Option<u64>), StreamRangeReply) = redis::pipe()
            .cmd("HMGET")
            .arg(self.key("meta", channel))
            .arg("e")
            .arg("o")
            .cmd("XRANGE")
            .arg(self.key("ch", channel))
            .arg(format!("({since}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let position = StreamPosition {
            offset: meta.1.unwrap_or(0),
            epoch: meta.0.unwrap_or_default(),
        };
        let pubs = self
            .decode_all(&range.ids, false)?
            .into_iter()
            .filter(|p| *p.epoch == *position.epoch)
            .collect();
        Ok((pubs, position))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError> {
        let meta_ttl = self.options.retention.for_channel(channel).meta_ttl;
        let mut conn = self.conn.clone();
        let (epoch, offset): (String, u64) = self
            .position
            .prepare_invoke()
            .arg(&self.options.prefix)
            .arg(channel)
            .arg(new_epoch().as_ref())
            .arg(meta_ttl.as_secs().max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(StreamPosition { offset, epoch })
    }

    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError> {
        let mut conn = self.conn.clone();
        conn.del(self.key("ch", channel)).await.map_err(err)?;
        Ok(())
    }

    async fn sweep(&self) -> Result<usize, HistoryError> {
        // Redis expires channel streams and positions by itself.
        Ok(0)
    }

    async fn close(&self) -> Result<(), HistoryError> {
        Ok(())
    }
}

#[async_trait]
impl Broker for RedisEngine {
    fn feed(&self, node: String, after: u64) -> mpsc::Receiver<Feed> {
        let (tx, rx) = mpsc::channel(64);
        let me = Arc::new(self.clone());
        tokio::spawn(me.clone().run_feed(after, tx.clone()));
        tokio::spawn(me.run_events(node, tx));
        rx
    }

    async fn broadcast(&self, envelope: &Envelope) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        conn.publish(self.global("events"), envelope.to_bytes())
            .await
            .map_err(err)?;
        Ok(())
    }
}

#[async_trait]
impl PresenceStore for RedisEngine {
    async fn add(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let ttl = self.options.presence_ttl.as_millis() as u64;
        let expires = crate::time::now_ms() + ttl;
        let (hash, zset) = (self.key("pr", channel), self.key("pe", channel));
        let json = serde_json::to_vec(info).unwrap_or_default();
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .hset(&hash, &info.client, json)
            .ignore()
            .zadd(&zset, &info.client, expires)
            .ignore()
            .pexpire(&hash, ttl as i64)
            .ignore()
            .pexpire(&zset, ttl as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .hdel(self.key("pr", channel), client)
            .ignore()
            .zrem(self.key("pe", channel), client)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn get(&self, channel: &str) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
        let mut conn = self.conn.clone();
        let entries: HashMap<String, Bytes> = self
            .presence_get
            .key(self.key("pr", channel))
            .key(self.key("pe", channel))
            .invoke_async(&mut conn)
            .await
            .map_err(err)?;
        Ok(entries
            .into_iter()
            .filter_map(|(client, json)| {
                let info: ClientInfo = serde_json::from_slice(&json).ok()?;
                Some((client, Arc::new(info)))
            })
            .collect())
    }
}
