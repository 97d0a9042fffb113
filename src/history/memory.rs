//! History in memory: a ring per channel plus a hub-wide ordered log.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{new_epoch, History, HistoryError, RetentionPolicy, StreamPosition};
use crate::hub::publication::now_ms;
use crate::hub::{Draft, Publication};

struct Channel {
    epoch: Arc<str>,
    top: u64,
    ring: VecDeque<Arc<Publication>>,
    touched_ms: u64,
}

#[derive(Default)]
struct Inner {
    last_seq: u64,
    log: BTreeMap<u64, Arc<Publication>>,
    ids: HashMap<String, u64>,
    channels: HashMap<String, Channel>,
}

impl Inner {
    fn forget(&mut self, p: &Publication) {
        self.log.remove(&p.seq);
        if self.ids.get(p.id()) == Some(&p.seq) {
            self.ids.remove(p.id());
        }
    }
}

/// Rings in memory: fast, bounded, and gone at restart.
pub struct MemoryHistory {
    retention: RetentionPolicy,
    inner: Mutex<Inner>,
}

impl MemoryHistory {
    /// An empty history.
    pub fn new(retention: RetentionPolicy) -> Self {
        MemoryHistory {
            retention,
            inner: Mutex::new(Inner::default()),
        }
    }
}

#[async_trait]
impl History for MemoryHistory {
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        let now = now_ms();
        let mut inner = self.inner.lock();
        let mut out = Vec::with_capacity(drafts.len());
        for draft in drafts {
            inner.last_seq += 1;
            let seq = inner.last_seq;
            let ch = inner
                .channels
                .entry(draft.channel.clone())
                .or_insert_with(|| Channel {
                    epoch: new_epoch(),
                    top: 0,
                    ring: VecDeque::new(),
                    touched_ms: now,
                });
            ch.top += 1;
            ch.touched_ms = now;
            let p = Arc::new(Publication::new(draft, seq, ch.top, ch.epoch.clone(), now));
            ch.ring.push_back(p.clone());
            let trimmed = if ch.ring.len() > self.retention.for_channel(&p.draft.channel).size {
                ch.ring.pop_front()
            } else {
                None
            };
            if let Some(old) = trimmed {
                inner.forget(&old);
            }
            inner.log.insert(seq, p.clone());
            inner.ids.entry(p.id().to_owned()).or_insert(seq);
            out.push(p);
        }
        Ok(out)
    }

    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        Ok(self.inner.lock().ids.get(id).copied())
    }

    async fn read_after(
        &self,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Publication>>, HistoryError> {
        if after >= upto {
            return Ok(Vec::new());
        }
        let inner = self.inner.lock();
        Ok(inner
            .log
            .range(after + 1..=upto)
            .take(limit)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError> {
        let inner = self.inner.lock();
        Ok(inner
            .log
            .last_key_value()
            .map(|(s, p)| (*s, p.id().to_owned())))
    }

    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError> {
        let inner = self.inner.lock();
        let Some(ch) = inner.channels.get(channel) else {
            return Ok((
                Vec::new(),
                StreamPosition {
                    offset: 0,
                    epoch: String::new(),
                },
            ));
        };
        let pubs = ch
            .ring
            .iter()
            .filter(|p| p.offset > since)
            .take(limit)
            .cloned()
            .collect();
        Ok((
            pubs,
            StreamPosition {
                offset: ch.top,
                epoch: ch.epoch.to_string(),
            },
        ))
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError> {
        let mut inner = self.inner.lock();
        let ch = inner
            .channels
            .entry(channel.to_owned())
            .or_insert_with(|| Channel {
                epoch: new_epoch(),
                top: 0,
                ring: VecDeque::new(),
                touched_ms: now_ms(),
            });
        Ok(StreamPosition {
            offset: ch.top,
            epoch: ch.epoch.to_string(),
        })
    }

    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError> {
        let mut inner = self.inner.lock();
        let removed: Vec<_> = match inner.channels.get_mut(channel) {
            Some(ch) => ch.ring.drain(..).collect(),
            None => return Ok(()),
        };
        for p in removed {
            inner.forget(&p);
        }
        Ok(())
    }

    async fn sweep(&self) -> Result<usize, HistoryError> {
        let now = now_ms();
        let mut inner = self.inner.lock();
        let mut expired = Vec::new();
        inner.channels.retain(|name, ch| {
            let r = self.retention.for_channel(name);
            let (ttl, meta_ttl) = (r.ttl.as_millis() as u64, r.meta_ttl.as_millis() as u64);
            while ch
                .ring
                .front()
                .is_some_and(|p| now.saturating_sub(p.time_ms) >= ttl)
            {
                expired.extend(ch.ring.pop_front());
            }
            !(ch.ring.is_empty() && now.saturating_sub(ch.touched_ms) >= meta_ttl)
        });
        for p in &expired {
            inner.forget(p);
        }
        Ok(expired.len())
    }

    async fn close(&self) -> Result<(), HistoryError> {
        Ok(())
    }
}
