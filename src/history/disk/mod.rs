//! History on local disk, in an embedded redb database (the default).
//!
//! One write transaction per batch of publications (group commit), so a
//! burst of publishes costs one fsync, not one each. The log, the id index,
//! the per-channel index and the channel positions are updated in the same
//! transaction, so they can never disagree after a crash. The choice of
//! redb over fjall and the measurement behind it are in docs/decisions.md.
//!
//! What is not written: asking a channel's position (a channel never
//! published is at offset 0 of the store's base epoch), and ephemeral
//! channels (Mercure subscription events), kept in memory [`Rings`] that
//! share the store's `seq`. Sweeping reads what expired in a read
//! transaction, then removes it in small write transactions, so appends
//! never wait behind a sweep of the whole store.
//!
//! [`tables`] holds the tables and every change a write transaction makes
//! to them; [`upgrade`] the one-time upgrades of older files.

mod tables;
mod upgrade;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use redb::{Database, ReadTransaction, ReadableTable};

use super::memory::Rings;
use super::{Draft, Publication};
use super::{History, HistoryError, ReplayPage, RetentionPolicy, Selection, StreamPosition};
use crate::time::now_ms;
use tables::*;
use upgrade::{upgrade_ids, upgrade_meta};

/// Most publications removed by one sweeping transaction.
const SWEEP_BATCH: usize = 2_000;

fn store(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Store(e.to_string())
}

fn epoch_name(base: u64) -> String {
    format!("{:08x}", base as u32)
}

fn random_base() -> u64 {
    u64::from(uuid::Uuid::new_v4().as_fields().0)
}

/// Durable history in a redb file.
pub struct DiskHistory {
    db: Arc<Database>,
    retention: Arc<RetentionPolicy>,
    /// Ephemeral channels, and the last `seq` given out to any channel.
    memory: Arc<Mutex<(u64, Rings)>>,
}

impl DiskHistory {
    /// Opens (or creates) `dir/history.redb`, caching at most
    /// `cache_bytes` of it in memory.
    pub fn open(
        dir: &Path,
        retention: RetentionPolicy,
        cache_bytes: usize,
    ) -> Result<Self, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            HistoryError::Store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(dir.join("history.redb"))
            .map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        let last_seq = {
            txn.open_table(LOG).map_err(store)?;
            txn.open_table(IDS).map_err(store)?;
            txn.open_table(CHAN).map_err(store)?;
            txn.open_table(ALT).map_err(store)?;
            txn.open_table(ALT_TOPICS).map_err(store)?;
            let mut state = txn.open_table(STATE).map_err(store)?;
            if state.get(STATE_EPOCH_BASE).map_err(store)?.is_none() {
                state
                    .insert(STATE_EPOCH_BASE, random_base())
                    .map_err(store)?;
            }
            let last_seq = state
                .get(STATE_LAST_SEQ)
                .map_err(store)?
                .map_or(0, |v| v.value());
            let version = state
                .get(STATE_META_VERSION)
                .map_err(store)?
                .map_or(1, |v| v.value());
            drop(state);
            if version < 2 {
                upgrade_meta(&txn, last_seq)?;
            }
            if version < 3 {
                upgrade_ids(&txn)?;
            }
            txn.open_table(STATE)
                .map_err(store)?
                .insert(STATE_META_VERSION, META_VERSION)
                .map_err(store)?;
            last_seq
        };
        txn.commit().map_err(store)?;
        let rings = Rings::new(retention.ephemeral_prefix.clone());
        Ok(DiskHistory {
            db: Arc::new(db),
            retention: Arc::new(retention),
            memory: Arc::new(Mutex::new((last_seq, rings))),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&DiskHistory) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let this = DiskHistory {
            db: self.db.clone(),
            retention: self.retention.clone(),
            memory: self.memory.clone(),
        };
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(store)?
    }

    fn read(&self) -> Result<ReadTransaction, HistoryError> {
        self.db.begin_read().map_err(store)
    }

    fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        let now = now_ms();
        let mut memory = self.memory.lock();
        let (last_seq, rings) = &mut *memory;
        let first = *last_seq + 1;
        *last_seq += drafts.len() as u64;
        let mut out: Vec<Option<Arc<Publication>>> = vec![None; drafts.len()];
        let mut durable = Vec::with_capacity(drafts.len());
        for (i, draft) in drafts.into_iter().enumerate() {
            let seq = first + i as u64;
            if self.retention.is_ephemeral(&draft.channel) {
                let size = self.retention.for_channel(&draft.channel).size;
                out[i] = Some(rings.insert(draft, seq, now, size));
            } else {
                durable.push((i, seq, draft));
            }
        }
        let last = *last_seq;
        drop(memory);
        if !durable.is_empty() {
            let txn = self.db.begin_write().map_err(store)?;
            {
                let mut t = Tables::open(&txn)?;
                let base = epoch_name(t.state_get(STATE_EPOCH_BASE)?);
                for (i, seq, draft) in durable {
                    let size = self.retention.for_channel(&draft.channel).size as u64;
                    out[i] = Some(t.append(draft, seq, now, size, &base)?);
                }
                t.state.insert(STATE_LAST_SEQ, last).map_err(store)?;
            }
            txn.commit().map_err(store)?;
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn replay_stored(
        &self,
        selection: &Selection,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ReplayPage, HistoryError> {
        let txn = self.read()?;
        let meta = txn.open_table(META).map_err(store)?;
        let chan = txn.open_table(CHAN).map_err(store)?;
        let alt = txn.open_table(ALT).map_err(store)?;
        let alt_topics = txn.open_table(ALT_TOPICS).map_err(store)?;
        let forgotten = txn
            .open_table(STATE)
            .map_err(store)?
            .get(STATE_FORGOTTEN)
            .map_err(store)?
            .map_or(0, |v| v.value());
        let mut seqs = std::collections::BTreeSet::new();
        // A topic forgotten entirely (idle past its `meta_ttl`) took what
        // it lost with it: any cursor before its last publication may have
        // lost something.
        let mut gap = forgotten > after;
        // Collects a channel's selected seqs; true when it lost some.
        let mut channel = |name: &str, m: Meta| -> Result<bool, HistoryError> {
            let found = first_offset_after(&chan, name, m.top, after)?;
            if let Some(offset) = found {
                let range = chan.range((name, offset)..=(name, m.top)).map_err(store)?;
                for entry in range.take(limit) {
                    let seq = entry.map_err(store)?.1.value().0;
                    if seq > upto {
                        break;
                    }
                    seqs.insert(seq);
                }
            }
            Ok(m.trimmed > after)
        };
        for topic in selection.exact() {
            if let Some(m) = read_meta(&meta, topic)? {
                gap |= channel(topic, m)?;
            }
        }
        if selection.has_patterns() {
            for entry in meta.iter().map_err(store)? {
                let (name, value) = entry.map_err(store)?;
                if selection.selects_by_pattern(name.value()) {
                    if let Some(m) = decode_meta(value.value()) {
                        gap |= channel(name.value(), m)?;
                    }
                }
            }
        }
        for entry in alt_topics.iter().map_err(store)? {
            let (name, trimmed) = entry.map_err(store)?;
            let name = name.value();
            if !selection.selects(name) {
                continue;
            }
            gap |= trimmed.value() > after;
            for entry in alt
                .range((name, after + 1)..=(name, upto))
                .map_err(store)?
                .take(limit)
            {
                seqs.insert(entry.map_err(store)?.0.value().1);
            }
        }
        let log = txn.open_table(LOG).map_err(store)?;
        let mut publications = Vec::new();
        for seq in seqs.into_iter().take(limit) {
            if let Some(bytes) = log.get(seq).map_err(store)? {
                publications.push(decode(bytes.value())?);
            }
        }
        Ok(ReplayPage { publications, gap })
    }

    /// Removes what expired, a few channels per transaction.
    fn sweep(&self) -> Result<usize, HistoryError> {
        let now = now_ms();
        let mut removed = self.memory.lock().1.sweep(now, &self.retention);
        // What to look at, read without blocking writers.
        let candidates: Vec<String> = {
            let txn = self.read()?;
            let meta = txn.open_table(META).map_err(store)?;
            let chan = txn.open_table(CHAN).map_err(store)?;
            let mut out = Vec::new();
            for entry in meta.iter().map_err(store)? {
                let (name, value) = entry.map_err(store)?;
                let name = name.value();
                let Some(m) = decode_meta(value.value()) else {
                    continue;
                };
                let r = self.retention.for_channel(name);
                let oldest = chan
                    .range((name, 0)..=(name, u64::MAX))
                    .map_err(store)?
                    .next()
                    .transpose()
                    .map_err(store)?
                    .map(|(_, v)| v.value().1);
                let due = match oldest {
                    Some(time) => now.saturating_sub(time) >= r.ttl.as_millis() as u64,
                    None => now.saturating_sub(m.touched_ms) >= r.meta_ttl.as_millis() as u64,
                };
                if due {
                    out.push(name.to_owned());
                }
            }
            out
        };
        let mut candidates = candidates.into_iter().peekable();
        while candidates.peek().is_some() {
            let txn = self.db.begin_write().map_err(store)?;
            let mut forgot = 0;
            {
                let mut t = Tables::open(&txn)?;
                let mut budget = SWEEP_BATCH;
                while budget > 0 {
                    let Some(name) = candidates.next() else { break };
                    let (n, f) = t.expire(&name, now, &self.retention, budget)?;
                    removed += n;
                    budget = budget.saturating_sub(n.max(1));
                    forgot = forgot.max(f);
                }
                if forgot > 0 {
                    t.forgot(forgot)?;
                }
            }
            txn.commit().map_err(store)?;
        }
        self.sweep_alternates()?;
        Ok(removed)
    }

    /// Forgets alternate topics that route nothing any more.
    fn sweep_alternates(&self) -> Result<(), HistoryError> {
        let empty: Vec<String> = {
            let txn = self.read()?;
            let alt = txn.open_table(ALT).map_err(store)?;
            let topics = txn.open_table(ALT_TOPICS).map_err(store)?;
            let mut out = Vec::new();
            for entry in topics.iter().map_err(store)? {
                let (name, _) = entry.map_err(store)?;
                let name = name.value();
                if alt
                    .range((name, 0)..=(name, u64::MAX))
                    .map_err(store)?
                    .next()
                    .is_none()
                {
                    out.push(name.to_owned());
                }
            }
            out
        };
        for chunk in empty.chunks(SWEEP_BATCH) {
            let txn = self.db.begin_write().map_err(store)?;
            {
                let mut t = Tables::open(&txn)?;
                let mut forgot = 0;
                for name in chunk {
                    let still_empty = t
                        .alt
                        .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
                        .map_err(store)?
                        .next()
                        .is_none();
                    if still_empty {
                        if let Some(trimmed) = t.alt_topics.remove(name.as_str()).map_err(store)? {
                            forgot = forgot.max(trimmed.value());
                        }
                    }
                }
                if forgot > 0 {
                    t.forgot(forgot)?;
                }
            }
            txn.commit().map_err(store)?;
        }
        Ok(())
    }
}

#[async_trait]
impl History for DiskHistory {
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        self.blocking(move |h| h.append(drafts)).await
    }

    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        if let Some(seq) = self.memory.lock().1.seq_of(id) {
            return Ok(Some(seq));
        }
        let id = id.to_owned();
        self.blocking(move |h| {
            let txn = h.read()?;
            let ids = txn.open_table(IDS).map_err(store)?;
            let mut range = ids
                .range((id.as_str(), 0)..=(id.as_str(), u64::MAX))
                .map_err(store)?;
            Ok(range
                .next()
                .transpose()
                .map_err(store)?
                .map(|(k, _)| k.value().1))
        })
        .await
    }

    async fn replay(
        &self,
        selection: Arc<Selection>,
        after: u64,
        upto: u64,
        limit: usize,
    ) -> Result<ReplayPage, HistoryError> {
        if after >= upto {
            return Ok(ReplayPage::default());
        }
        let ephemeral = self.memory.lock().1.replay(&selection, after, upto, limit);
        let mut page = self
            .blocking(move |h| h.replay_stored(&selection, after, upto, limit))
            .await?;
        if !ephemeral.publications.is_empty() {
            page.publications.extend(ephemeral.publications);
            page.publications.sort_by_key(|p| p.seq);
            page.publications.truncate(limit);
        }
        page.gap |= ephemeral.gap;
        Ok(page)
    }

    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError> {
        let ephemeral = self.memory.lock().1.last();
        let stored = self
            .blocking(|h| {
                let txn = h.read()?;
                let log = txn.open_table(LOG).map_err(store)?;
                let last = match log.last().map_err(store)? {
                    Some((k, v)) => Some((k.value(), decode(v.value())?.id().to_owned())),
                    None => None,
                };
                Ok(last)
            })
            .await?;
        Ok(match (stored, ephemeral) {
            (Some(a), Some(b)) => Some(if a.0 > b.0 { a } else { b }),
            (a, b) => a.or(b),
        })
    }

    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError> {
        if self.retention.is_ephemeral(channel) {
            return Ok(self.memory.lock().1.read_channel(channel, since, limit));
        }
        let channel = channel.to_owned();
        self.blocking(move |h| {
            let txn = h.read()?;
            let position = position(&txn, &channel)?;
            let chan = txn.open_table(CHAN).map_err(store)?;
            let log = txn.open_table(LOG).map_err(store)?;
            let mut out = Vec::new();
            let range = (channel.as_str(), since.saturating_add(1))..=(channel.as_str(), u64::MAX);
            for entry in chan.range(range).map_err(store)?.take(limit) {
                let (_, v) = entry.map_err(store)?;
                if let Some(bytes) = log.get(v.value().0).map_err(store)? {
                    out.push(decode(bytes.value())?);
                }
            }
            Ok((out, position))
        })
        .await
    }

    async fn position(&self, channel: &str) -> Result<StreamPosition, HistoryError> {
        if self.retention.is_ephemeral(channel) {
            return Ok(self.memory.lock().1.position(channel));
        }
        let channel = channel.to_owned();
        self.blocking(move |h| position(&h.read()?, &channel)).await
    }

    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError> {
        if self.retention.is_ephemeral(channel) {
            self.memory.lock().1.remove_channel(channel);
            return Ok(());
        }
        let channel = channel.to_owned();
        self.blocking(move |h| loop {
            let txn = h.db.begin_write().map_err(store)?;
            let removed = Tables::open(&txn)?.remove_oldest(&channel, SWEEP_BATCH, |_| false)?;
            txn.commit().map_err(store)?;
            if removed < SWEEP_BATCH {
                return Ok(());
            }
        })
        .await
    }

    async fn sweep(&self) -> Result<usize, HistoryError> {
        self.blocking(|h| h.sweep()).await
    }

    async fn close(&self) -> Result<(), HistoryError> {
        // Every append committed durably; a final empty transaction makes
        // sure the file is consistent before the process exits.
        self.blocking(|h| h.db.begin_write().map_err(store)?.commit().map_err(store))
            .await
    }
}

/// A channel's position: its own, or offset 0 of the base epoch.
fn position(txn: &ReadTransaction, channel: &str) -> Result<StreamPosition, HistoryError> {
    let meta = txn.open_table(META).map_err(store)?;
    if let Some(m) = read_meta(&meta, channel)? {
        return Ok(StreamPosition {
            offset: m.top,
            epoch: m.epoch,
        });
    }
    let base = txn
        .open_table(STATE)
        .map_err(store)?
        .get(STATE_EPOCH_BASE)
        .map_err(store)?
        .map_or(0, |v| v.value());
    Ok(StreamPosition {
        offset: 0,
        epoch: epoch_name(base),
    })
}
