//! The disk store's tables, the per-channel position record, and the
//! changes one write transaction makes to them (append, trim, expire,
//! forget). Everything that writes to the tables is here, so their
//! invariants (log, id index, channel index and positions agree) are
//! kept in one place.

use std::sync::Arc;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{random_base, store};
use crate::history::{Draft, HistoryError, Publication, RetentionPolicy};

/// seq → encoded publication.
pub(super) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// (Mercure event id, seq): every stored publication of each id (a
/// publisher may repeat one; a cursor names the earliest still stored).
pub(super) const IDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("id_seqs");
/// What versions before 3 kept: id → seq of its first publication.
pub(super) const IDS_V2: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// (channel, offset) → (seq, time_ms).
pub(super) const CHAN: TableDefinition<(&str, u64), (u64, u64)> = TableDefinition::new("chan");
/// channel → encoded [`Meta`].
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// (alternate topic, seq): the publications an alternate topic routes.
pub(super) const ALT: TableDefinition<(&str, u64), ()> = TableDefinition::new("alt");
/// alternate topic → newest seq removed from it (0: none yet).
pub(super) const ALT_TOPICS: TableDefinition<&str, u64> = TableDefinition::new("alt_topics");
/// Store-wide numbers (see the `STATE_*` keys).
pub(super) const STATE: TableDefinition<&str, u64> = TableDefinition::new("state");

/// The last `seq` given out.
pub(super) const STATE_LAST_SEQ: &str = "last_seq";
/// The base epoch, as a number (see [`Rings`] for why it changes).
pub(super) const STATE_EPOCH_BASE: &str = "epoch_base";
/// Newest `seq` of a topic the store forgot.
pub(super) const STATE_FORGOTTEN: &str = "forgotten";
/// The format of [`META`] values.
pub(super) const STATE_META_VERSION: &str = "meta_version";
pub(super) const META_VERSION: u64 = 3;

/// A channel's position and what it lost.
#[derive(Serialize, Deserialize)]
pub(super) struct Meta {
    pub(super) epoch: String,
    pub(super) top: u64,
    pub(super) touched_ms: u64,
    /// Newest `seq` removed from the channel (trimmed, expired, deleted).
    pub(super) trimmed: u64,
}

/// The tables a write transaction changes.
pub(super) struct Tables<'txn> {
    pub(super) log: redb::Table<'txn, u64, &'static [u8]>,
    pub(super) ids: redb::Table<'txn, (&'static str, u64), ()>,
    pub(super) chan: redb::Table<'txn, (&'static str, u64), (u64, u64)>,
    pub(super) meta: redb::Table<'txn, &'static str, &'static [u8]>,
    pub(super) alt: redb::Table<'txn, (&'static str, u64), ()>,
    pub(super) alt_topics: redb::Table<'txn, &'static str, u64>,
    pub(super) state: redb::Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, HistoryError> {
        Ok(Tables {
            log: txn.open_table(LOG).map_err(store)?,
            ids: txn.open_table(IDS).map_err(store)?,
            chan: txn.open_table(CHAN).map_err(store)?,
            meta: txn.open_table(META).map_err(store)?,
            alt: txn.open_table(ALT).map_err(store)?,
            alt_topics: txn.open_table(ALT_TOPICS).map_err(store)?,
            state: txn.open_table(STATE).map_err(store)?,
        })
    }

    pub(super) fn state_get(&self, key: &str) -> Result<u64, HistoryError> {
        Ok(self.state.get(key).map_err(store)?.map_or(0, |v| v.value()))
    }

    pub(super) fn meta_get(&self, channel: &str) -> Result<Option<Meta>, HistoryError> {
        read_meta(&self.meta, channel)
    }

    pub(super) fn meta_put(&mut self, channel: &str, m: &Meta) -> Result<(), HistoryError> {
        let bytes = postcard::to_stdvec(m).map_err(store)?;
        self.meta.insert(channel, bytes.as_slice()).map_err(store)?;
        Ok(())
    }

    /// Stores one publication at `seq` and trims its channel to `size`.
    pub(super) fn append(
        &mut self,
        draft: Draft,
        seq: u64,
        now: u64,
        size: u64,
        base: &str,
    ) -> Result<Arc<Publication>, HistoryError> {
        let mut m = self.meta_get(&draft.channel)?.unwrap_or_else(|| Meta {
            epoch: base.to_owned(),
            top: 0,
            touched_ms: now,
            trimmed: 0,
        });
        m.top += 1;
        m.touched_ms = now;
        let p = Publication::new(draft, seq, m.top, m.epoch.as_str().into(), now);
        self.log
            .insert(seq, p.to_bytes().as_slice())
            .map_err(store)?;
        self.ids.insert((p.id(), seq), ()).map_err(store)?;
        self.chan
            .insert((p.channel(), p.offset), (seq, now))
            .map_err(store)?;
        for alternate in &p.draft.alternates {
            self.alt
                .insert((alternate.as_str(), seq), ())
                .map_err(store)?;
            if self
                .alt_topics
                .get(alternate.as_str())
                .map_err(store)?
                .is_none()
            {
                self.alt_topics
                    .insert(alternate.as_str(), 0)
                    .map_err(store)?;
            }
        }
        // Offsets are contiguous: everything at or below `top - size` goes.
        if m.top > size {
            let cut = m.top - size;
            let old: Vec<(u64, u64)> = self
                .chan
                .range((p.channel(), 0)..=(p.channel(), cut))
                .map_err(store)?
                .map(|e| e.map(|(k, v)| (k.value().1, v.value().0)))
                .collect::<Result<_, _>>()
                .map_err(store)?;
            for (offset, old_seq) in old {
                self.chan.remove((p.channel(), offset)).map_err(store)?;
                self.forget(old_seq)?;
                m.trimmed = m.trimmed.max(old_seq);
            }
        }
        self.meta_put(p.channel(), &m)?;
        Ok(Arc::new(p))
    }

    /// Removes one publication from the log, the id index and its
    /// alternate topics.
    pub(super) fn forget(&mut self, seq: u64) -> Result<(), HistoryError> {
        let removed = self
            .log
            .remove(seq)
            .map_err(store)?
            .and_then(|v| Publication::from_bytes(v.value()));
        let Some(p) = removed else {
            return Ok(());
        };
        self.ids.remove((p.id(), seq)).map_err(store)?;
        for alternate in &p.draft.alternates {
            self.alt.remove((alternate.as_str(), seq)).map_err(store)?;
            let trimmed = self
                .alt_topics
                .get(alternate.as_str())
                .map_err(store)?
                .map_or(0, |v| v.value());
            self.alt_topics
                .insert(alternate.as_str(), trimmed.max(seq))
                .map_err(store)?;
        }
        Ok(())
    }

    /// Removes a channel's publications with `keep` telling which stay
    /// (from the oldest on: the first kept one ends the removal), at most
    /// `budget` of them. Returns how many went.
    pub(super) fn remove_oldest(
        &mut self,
        channel: &str,
        budget: usize,
        mut keep: impl FnMut(u64) -> bool,
    ) -> Result<usize, HistoryError> {
        let Some(mut m) = self.meta_get(channel)? else {
            return Ok(0);
        };
        let mut old = Vec::new();
        for entry in self
            .chan
            .range((channel, 0)..=(channel, u64::MAX))
            .map_err(store)?
        {
            let (k, v) = entry.map_err(store)?;
            let (seq, time) = v.value();
            if old.len() >= budget || keep(time) {
                break;
            }
            old.push((k.value().1, seq));
        }
        for &(offset, seq) in &old {
            self.chan.remove((channel, offset)).map_err(store)?;
            self.forget(seq)?;
            m.trimmed = m.trimmed.max(seq);
        }
        if !old.is_empty() {
            self.meta_put(channel, &m)?;
        }
        Ok(old.len())
    }

    /// Expires a channel's old publications, and forgets the channel when
    /// nothing is left and it has been idle past its `meta_ttl`. Returns
    /// how many publications went, and the channel's `trimmed` when it was
    /// forgotten (else 0).
    pub(super) fn expire(
        &mut self,
        channel: &str,
        now: u64,
        retention: &RetentionPolicy,
        budget: usize,
    ) -> Result<(usize, u64), HistoryError> {
        let r = retention.for_channel(channel);
        let ttl = r.ttl.as_millis() as u64;
        let removed = self.remove_oldest(channel, budget, |time| now.saturating_sub(time) < ttl)?;
        let empty = self
            .chan
            .range((channel, 0)..=(channel, u64::MAX))
            .map_err(store)?
            .next()
            .is_none();
        let Some(m) = self.meta_get(channel)? else {
            return Ok((removed, 0));
        };
        if empty && now.saturating_sub(m.touched_ms) >= r.meta_ttl.as_millis() as u64 {
            self.meta.remove(channel).map_err(store)?;
            return Ok((removed, m.trimmed.max(1)));
        }
        Ok((removed, 0))
    }

    /// Topics were forgotten, the newest of their publications being
    /// `seq`: cursors before it may have lost them, and channels born from
    /// now on get a new base epoch.
    pub(super) fn forgot(&mut self, seq: u64) -> Result<(), HistoryError> {
        let forgotten = self.state_get(STATE_FORGOTTEN)?.max(seq);
        self.state
            .insert(STATE_FORGOTTEN, forgotten)
            .map_err(store)?;
        self.state
            .insert(STATE_EPOCH_BASE, random_base())
            .map_err(store)?;
        Ok(())
    }
}

pub(super) fn decode_meta(bytes: &[u8]) -> Option<Meta> {
    postcard::from_bytes::<Meta>(bytes).ok()
}

pub(super) fn read_meta<T>(meta: &T, channel: &str) -> Result<Option<Meta>, HistoryError>
where
    T: ReadableTable<&'static str, &'static [u8]>,
{
    Ok(meta
        .get(channel)
        .map_err(store)?
        .and_then(|v| decode_meta(v.value())))
}

/// The lowest offset of `channel` whose `seq` is above `after` (offsets
/// `lo..=top` are stored and their seqs ascend: a binary search).
pub(super) fn first_offset_after<T>(
    chan: &T,
    channel: &str,
    top: u64,
    after: u64,
) -> Result<Option<u64>, HistoryError>
where
    T: ReadableTable<(&'static str, u64), (u64, u64)>,
{
    let Some(first) = chan
        .range((channel, 0)..=(channel, top))
        .map_err(store)?
        .next()
        .transpose()
        .map_err(store)?
    else {
        return Ok(None);
    };
    let (mut lo, mut hi) = (first.0.value().1, top + 1);
    let seq_at = |offset: u64| -> Result<u64, HistoryError> {
        Ok(chan
            .get((channel, offset))
            .map_err(store)?
            .map_or(u64::MAX, |v| v.value().0))
    };
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if seq_at(mid)? > after {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok((lo <= top).then_some(lo))
}

pub(super) fn decode(bytes: &[u8]) -> Result<Arc<Publication>, HistoryError> {
    Publication::from_bytes(bytes)
        .map(Arc::new)
        .ok_or_else(|| HistoryError::Store("undecodable publication in the log".into()))
}
