//! The NATS engine: history, fan-out between nodes and presence on
//! JetStream.
//!
//! - Stream `P_LOG`, subjects `P.ch.<channel>` (the channel name in
//!   unpadded URL-safe base64, so any name is a valid subject token). Its
//!   sequence is the hub-wide `seq`; each message carries its channel
//!   `offset`, `epoch` and time in headers, the draft in the body.
//! - Per-channel offsets come from optimistic concurrency: a node publishes
//!   with `Nats-Expected-Last-Subject-Sequence` set to the channel's last
//!   message it knows, so two nodes can never give out the same offset; the
//!   loser re-reads the channel's tip and tries again. A channel's epoch is
//!   born with a marker message (offset 0) written the same way, so a
//!   position handed to a subscriber before the first publication stays
//!   valid. When all of a channel's messages are gone, so is its epoch: the
//!   next one is new, and clients are told their position is lost.
//! - Stream `P_IDS`, subjects `P.id.<id>`: a Mercure event id's `seq`
//!   (written only if absent, so the earliest wins).
//! - Stream `P_PRESENCE`, subjects `P.pr.<channel>.<client>`: the client's
//!   info, one message per subject, the stream's age limit as presence TTL.
//!   (Plain streams rather than the key-value API: the same thing, and it
//!   works with older servers.)
//! - Subject `P.events`: join/leave and server API commands (core NATS).
//!
//! Every node reads `P_LOG` with an ordered consumer from the last `seq` it
//! delivered.

mod feed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{
    forward_event, report_gap, Broker, Engine, EngineError, EngineOptions, Envelope, Feed,
    PresenceStore,
};
use crate::history::{new_epoch, History, HistoryError, ReplayPage, Selection, StreamPosition};
use crate::history::{ClientInfo, Draft, Publication};
use crate::time::now_ms;
use crate::time::Backoff;

const OFFSET: &str = "Tidings-Offset";
const EPOCH: &str = "Tidings-Epoch";
const TIME: &str = "Tidings-Time";
const MARKER: &str = "Tidings-Marker";
const EXPECTED: &str = "Nats-Expected-Last-Subject-Sequence";
/// Tries before an append gives up on a channel other nodes keep writing.
const CAS_TRIES: usize = 32;
/// Log messages read per consumer of a replay.
const REPLAY_SCAN: usize = 1000;
/// Channel tips remembered; the cache is cleared past this.
const TIPS: usize = 100_000;

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Nats(e.to_string())
}

fn token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The newest message of a channel: where the next one goes.
#[derive(Clone)]
struct Tip {
    subject_seq: u64,
    offset: u64,
    epoch: Arc<str>,
}

/// History, broker and presence on one NATS JetStream.
#[derive(Clone)]
pub struct NatsEngine {
    client: async_nats::Client,
    js: jetstream::Context,
    log: stream::Stream,
    ids: stream::Stream,
    presence: stream::Stream,
    options: EngineOptions,
    tips: Arc<Mutex<HashMap<String, Tip>>>,
}

impl NatsEngine {
    /// Connects to `url` (`nats://host:port`), creating the stream and the
    /// buckets if they do not exist, and returns the engine's parts.
    pub async fn connect(url: &str, options: EngineOptions) -> Result<Engine, EngineError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(url)
            .await
            .map_err(err)?;
        let js = jetstream::new(client.clone());
        let p = &options.prefix;
        let retention = &options.retention;
        let all = std::iter::once(&retention.default).chain(retention.namespaces.values());
        let (mut size, mut ttl) = (1, Duration::from_secs(1));
        for r in all {
            size = size.max(r.size);
            ttl = ttl.max(r.ttl).max(r.meta_ttl.min(r.ttl));
        }
        let log = js
            .get_or_create_stream(stream::Config {
                name: format!("{p}_LOG"),
                subjects: vec![format!("{p}.ch.>")],
                // One more than the history: the epoch marker.
                max_messages_per_subject: size as i64 + 1,
                max_age: ttl,
                storage: stream::StorageType::File,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| err(format!("stream {p}_LOG: {e}")))?;
        let ids = keyed(&js, format!("{p}_IDS"), format!("{p}.id.>"), ttl).await?;
        let presence = keyed(
            &js,
            format!("{p}_PRESENCE"),
            format!("{p}.pr.>"),
            options.presence_ttl,
        )
        .await?;
        let presence_ttl = options.presence_ttl;
        let events = Arc::new(super::queue::NatsQueue::new(js.clone(), p));
        let engine = Arc::new(NatsEngine {
            client,
            js,
            log,
            ids,
            presence,
            options,
            tips: Arc::default(),
        });
        Ok(Engine {
            name: "nats",
            history: engine.clone(),
            broker: engine.clone(),
            presence: engine,
            presence_ttl,
            events,
        })
    }

    /// `P.pr.<channel>.<client>`; `*` as the client matches them all.
    fn presence_subject(&self, channel: &str, client: &str) -> String {
        let client = if client == "*" {
            "*".to_owned()
        } else {
            format!("c{}", token(client))
        };
        format!("{}.pr.c{}.{client}", self.options.prefix, token(channel))
    }

    fn subject(&self, channel: &str) -> String {
        format!("{}.ch.c{}", self.options.prefix, token(channel))
    }

    /// The channel's newest message, read from the stream.
    async fn read_tip(&self, channel: &str) -> Result<Option<Tip>, EngineError> {
        match self
            .log
            .direct_get_last_for_subject(self.subject(channel))
            .await
        {
            Ok(m) => {
                let (offset, epoch) = position_of(&m.headers).ok_or_else(|| err("bad headers"))?;
                Ok(Some(Tip {
                    subject_seq: m.sequence,
                    offset,
                    epoch: epoch.into(),
                }))
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e)),
        }
    }

    async fn tip(&self, channel: &str) -> Result<Option<Tip>, EngineError> {
        if let Some(t) = self.tips.lock().get(channel) {
            return Ok(Some(t.clone()));
        }
        self.read_tip(channel).await
    }

    fn remember(&self, channel: &str, tip: Tip) {
        let mut tips = self.tips.lock();
        if tips.len() >= TIPS {
            tips.clear();
        }
        tips.insert(channel.to_owned(), tip);
    }

    /// Writes one message after the channel's tip, retrying when another
    /// node got there first. A marker (no draft) only fixes the epoch, and
    /// only on a channel with no messages.
    async fn write(
        &self,
        channel: &str,
        draft: Option<&Draft>,
    ) -> Result<(u64, Tip, u64), EngineError> {
        let subject = self.subject(channel);
        let body = draft
            .map(|d| postcard::to_stdvec(d).unwrap_or_default())
            .unwrap_or_default();
        for _ in 0..CAS_TRIES {
            let tip = self.tip(channel).await?;
            if draft.is_none() {
                if let Some(t) = tip {
                    return Ok((0, t, 0));
                }
            }
            let (expected, offset, epoch) = match &tip {
                Some(t) => (t.subject_seq, t.offset + 1, t.epoch.clone()),
                None => (0, u64::from(draft.is_some()), new_epoch()),
            };
            let time = now_ms();
            let mut headers = HeaderMap::new();
            headers.insert(EXPECTED, expected.to_string().as_str());
            headers.insert(OFFSET, offset.to_string().as_str());
            headers.insert(EPOCH, &*epoch);
            headers.insert(TIME, time.to_string().as_str());
            if draft.is_none() {
                headers.insert(MARKER, "1");
            }
            let sent = self
                .js
                .publish_with_headers(subject.clone(), headers, body.clone().into())
                .await
                .map_err(err)?
                .await;
            match sent {
                Ok(ack) => {
                    let tip = Tip {
                        subject_seq: ack.sequence,
                        offset,
                        epoch,
                    };
                    self.remember(channel, tip.clone());
                    return Ok((ack.sequence, tip, time));
                }
                Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                    self.tips.lock().remove(channel);
                }
                Err(e) => return Err(err(e)),
            }
        }
        Err(err(format!(
            "channel {channel:?}: gave up after {CAS_TRIES} concurrent writes"
        )))
    }

    /// Appends one channel's drafts in order.
    async fn append_channel(
        &self,
        drafts: Vec<(usize, Draft)>,
    ) -> Result<Vec<(usize, Arc<Publication>)>, EngineError> {
        let mut out = Vec::with_capacity(drafts.len());
        for (i, draft) in drafts {
            let (seq, tip, time) = self.write(&draft.channel.clone(), Some(&draft)).await?;
            // The earliest publication with an id wins, as on one node.
            let mut headers = HeaderMap::new();
            headers.insert(EXPECTED, "0");
            let subject = format!("{}.id.c{}", self.options.prefix, token(&draft.id));
            if let Ok(ack) = self
                .js
                .publish_with_headers(subject, headers, seq.to_string().into())
                .await
            {
                let _ = ack.await;
            }
            out.push((
                i,
                Arc::new(Publication::new(draft, seq, tip.offset, tip.epoch, time)),
            ));
        }
        Ok(out)
    }

    /// Reads the log (or one channel's subject) from `start` in order with
    /// an ordered consumer, while `keep` says so, at most `limit` messages.
    async fn scan(
        &self,
        filter: String,
        policy: consumer::DeliverPolicy,
        limit: usize,
        mut keep: impl FnMut(u64) -> bool,
    ) -> Result<Vec<Arc<Publication>>, EngineError> {
        let consumer = self
            .log
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter,
                deliver_policy: policy,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(Vec::new());
        }
        let mut messages = consumer.messages().await.map_err(err)?;
        let mut out = Vec::new();
        while out.len() < limit {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(msg)) = next else {
                return Err(err("the stream stopped answering"));
            };
            let msg = msg.map_err(err)?;
            let info = msg.info().map_err(err)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if !keep(seq) {
                break;
            }
            if let Some(p) = self.decode(seq, &msg.message)? {
                out.push(Arc::new(p));
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// A stored message as a publication (None for a marker or one past
    /// its channel's TTL).
    fn decode(
        &self,
        seq: u64,
        msg: &async_nats::Message,
    ) -> Result<Option<Publication>, EngineError> {
        let headers = msg
            .headers
            .as_ref()
            .ok_or_else(|| err("message without headers"))?;
        if headers.get(MARKER).is_some() {
            return Ok(None);
        }
        let (offset, epoch) = position_of(headers).ok_or_else(|| err("bad headers"))?;
        let time: u64 = header(headers, TIME).unwrap_or(0);
        let draft: Draft =
            postcard::from_bytes(&msg.payload).map_err(|_| err("unreadable publication"))?;
        let ttl = self.options.retention.for_channel(&draft.channel).ttl;
        if time + (ttl.as_millis() as u64) < now_ms() {
            return Ok(None);
        }
        Ok(Some(Publication::new(
            draft,
            seq,
            offset,
            epoch.into(),
            time,
        )))
    }

    /// When the stream was created: a different answer means it was lost
    /// and made again (its sequence restarted).
    async fn log_created(&self) -> Result<String, EngineError> {
        let mut log = self.log.clone();
        let info = log.info().await.map_err(err)?;
        Ok(info.created.to_string())
    }

    async fn last_seq(&self) -> Result<u64, EngineError> {
        let mut log = self.log.clone();
        Ok(log.info().await.map_err(err)?.state.last_sequence)
    }
}

/// A stream keeping one message per subject: a small key-value table.
async fn keyed(
    js: &jetstream::Context,
    name: String,
    subjects: String,
    ttl: Duration,
) -> Result<stream::Stream, EngineError> {
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subjects],
        max_messages_per_subject: 1,
        max_age: ttl,
        storage: stream::StorageType::File,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| err(format!("stream {name}: {e}")))
}

fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.as_str().parse().ok()
}

fn position_of(headers: &HeaderMap) -> Option<(u64, String)> {
    Some((
        header(headers, OFFSET)?,
        headers.get(EPOCH)?.as_str().to_owned(),
    ))
}

#[async_trait]
impl History for NatsEngine {
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        let n = drafts.len();
        // Channels are independent: write them concurrently, each in order.
        let mut by_channel: HashMap<String, Vec<(usize, Draft)>> = HashMap::new();
        for (i, d) in drafts.into_iter().enumerate() {
            by_channel
                .entry(d.channel.clone())
                .or_default()
                .push((i, d));
        }
        let results =
            futures::future::join_all(by_channel.into_values().map(|d| self.append_channel(d)))
                .await;
        let mut out: Vec<Option<Arc<Publication>>> = vec![None; n];
        for r in results {
            for (i, p) in r? {
                out[i] = Some(p);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        let subject = format!("{}.id.c{}", self.options.prefix, token(id));
        match self.ids.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|v| v.parse().ok())),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e).into()),
        }
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
        let mut log = self.log.clone();
        let state = log.info().await.map_err(err)?.state.clone();
        // The stream loses its oldest messages (age), and each channel its
        // own oldest (per-channel size): a gap is either before `after + 1`.
        let mut gap = after > 0 && state.first_sequence > after + 1;
        if state.last_sequence <= after {
            return Ok(ReplayPage {
                publications: Vec::new(),
                gap,
            });
        }
        let mut out = Vec::new();
        let mut channels = std::collections::HashSet::new();
        let mut from = after;
        while out.len() < limit && from < upto.min(state.last_sequence) {
            let policy = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            };
            let page = self
                .scan(String::new(), policy, REPLAY_SCAN, |seq| seq <= upto)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.seq;
            for p in page {
                if out.len() < limit && selection.selects_publication(&p) {
                    channels.insert(p.channel().to_owned());
                    out.push(p);
                }
            }
        }
        // A selected channel whose oldest stored message is already past
        // `after`, and is not its first: what preceded it may have been
        // after `after` too.
        if after > 0 && !gap {
            for channel in channels {
                let first = self
                    .log
                    .direct_get_next_for_subject(self.subject(&channel), None)
                    .await;
                if let Ok(m) = first {
                    let offset = position_of(&m.headers).map_or(0, |(o, _)| o);
                    if m.sequence > after && offset > 1 {
                        gap = true;
                        break;
                    }
                }
            }
        }
        Ok(ReplayPage {
            publications: out,
            gap,
        })
    }

    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError> {
        let last = self.last_seq().await?;
        // Markers have no id: look back a little for a publication.
        for seq in (1..=last).rev().take(100) {
            let Ok(m) = self.log.direct_get(seq).await else {
                continue;
            };
            if m.headers.get(MARKER).is_some() {
                continue;
            }
            if let Ok(d) = postcard::from_bytes::<Draft>(&m.payload) {
                return Ok(Some((last, d.id)));
            }
        }
        Ok((last > 0).then(|| (last, String::new())))
    }

    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError> {
        let Some(tip) = self.read_tip(channel).await? else {
            return Ok((
                Vec::new(),
                StreamPosition {
                    offset: 0,
                    epoch: String::new(),
                },
            ));
        };
        self.remember(channel, tip.clone());
        let position = StreamPosition {
            offset: tip.offset,
            epoch: tip.epoch.to_string(),
        };
        if tip.offset <= since {
            return Ok((Vec::new(), position));
        }
        let mut pubs = self
            .scan(
                self.subject(channel),
                consumer::DeliverPolicy::All,
                usize::MAX,
                |seq| seq <= tip.subject_seq,
            )
            .await?;
        pubs.retain(|p| p.offset > since && *p.epoch == *tip.epoch);
        pubs.truncate(limit);
        Ok((pubs, position))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError> {
        let (_, tip, _) = self.write(channel, None).await?;
        Ok(StreamPosition {
            offset: tip.offset,
            epoch: tip.epoch.to_string(),
        })
    }

    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError> {
        // Keep the newest message: it holds the channel's position.
        self.log
            .purge()
            .filter(self.subject(channel))
            .keep(1)
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn sweep(&self) -> Result<usize, HistoryError> {
        // JetStream applies the stream's age and per-channel limits itself.
        Ok(0)
    }

    async fn close(&self) -> Result<(), HistoryError> {
        let _ = self.client.flush().await;
        Ok(())
    }
}

#[async_trait]
impl Broker for NatsEngine {
    fn feed(&self, node: String, after: u64) -> mpsc::Receiver<Feed> {
        let (tx, rx) = mpsc::channel(64);
        let me = Arc::new(self.clone());
        tokio::spawn(me.clone().run_feed(after, tx.clone()));
        tokio::spawn(me.run_events(node, tx));
        rx
    }

    async fn broadcast(&self, envelope: &Envelope) -> Result<(), EngineError> {
        self.client
            .publish(
                format!("{}.events", self.options.prefix),
                envelope.to_bytes().into(),
            )
            .await
            .map_err(err)
    }
}

#[async_trait]
impl PresenceStore for NatsEngine {
    async fn add(&self, channel: &str, info: &ClientInfo) -> Result<(), EngineError> {
        let json = serde_json::to_vec(info).unwrap_or_default();
        self.js
            .publish(self.presence_subject(channel, &info.client), json.into())
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), EngineError> {
        self.presence
            .purge()
            .filter(self.presence_subject(channel, client))
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn get(&self, channel: &str) -> Result<HashMap<String, Arc<ClientInfo>>, EngineError> {
        let consumer = self
            .presence
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.presence_subject(channel, "*"),
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(err)?;
        let mut left = consumer.cached_info().num_pending;
        let mut out = HashMap::new();
        if left == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(err)?;
        while left > 0 {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(msg)) = next else {
                return Err(err("presence read stopped"));
            };
            let msg = msg.map_err(err)?;
            left = msg.info().map_err(err)?.pending;
            if let Ok(info) = serde_json::from_slice::<ClientInfo>(&msg.payload) {
                out.insert(info.client.clone(), Arc::new(info));
            }
        }
        Ok(out)
    }
}
