//! History on local disk, in an embedded redb database (the default).
//!
//! One write transaction per batch of publications (group commit), so a
//! burst of publishes costs one fsync, not one each. The log, the id index,
//! the per-channel index and the channel positions are updated in the same
//! transaction, so they can never disagree after a crash. The choice of
//! redb over fjall and the measurement behind it are in docs/decisions.md.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{new_epoch, History, HistoryError, RetentionPolicy, StreamPosition};
use crate::hub::publication::now_ms;
use crate::hub::{Draft, Publication};

/// seq → encoded publication.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Mercure event id → seq of its earliest publication.
const IDS: TableDefinition<&str, u64> = TableDefinition::new("ids");
/// (channel, offset) → (seq, time_ms).
const CHAN: TableDefinition<(&str, u64), (u64, u64)> = TableDefinition::new("chan");
/// channel → encoded [`Meta`].
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Hub-wide counters.
const STATE: TableDefinition<&str, u64> = TableDefinition::new("state");

#[derive(Serialize, Deserialize)]
struct Meta {
    epoch: String,
    top: u64,
    touched_ms: u64,
}

fn store(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Store(e.to_string())
}

/// Durable history in a redb file.
pub struct DiskHistory {
    db: Arc<Database>,
    retention: Arc<RetentionPolicy>,
}

impl DiskHistory {
    /// Opens (or creates) `dir/history.redb`.
    pub fn open(dir: &Path, retention: RetentionPolicy) -> Result<Self, HistoryError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            HistoryError::Store(format!(
                "cannot create data directory {}: {e}",
                dir.display()
            ))
        })?;
        let db = Database::create(dir.join("history.redb")).map_err(store)?;
        let txn = db.begin_write().map_err(store)?;
        {
            txn.open_table(LOG).map_err(store)?;
            txn.open_table(IDS).map_err(store)?;
            txn.open_table(CHAN).map_err(store)?;
            txn.open_table(META).map_err(store)?;
            txn.open_table(STATE).map_err(store)?;
        }
        txn.commit().map_err(store)?;
        Ok(DiskHistory {
            db: Arc::new(db),
            retention: Arc::new(retention),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &RetentionPolicy) -> Result<T, HistoryError> + Send + 'static,
    ) -> Result<T, HistoryError> {
        let db = self.db.clone();
        let retention = self.retention.clone();
        tokio::task::spawn_blocking(move || f(&db, &retention))
            .await
            .map_err(store)?
    }
}

fn append(
    db: &Database,
    retention: &RetentionPolicy,
    drafts: Vec<Draft>,
) -> Result<Vec<Arc<Publication>>, HistoryError> {
    let now = now_ms();
    let txn = db.begin_write().map_err(store)?;
    let mut out = Vec::with_capacity(drafts.len());
    {
        let mut log = txn.open_table(LOG).map_err(store)?;
        let mut ids = txn.open_table(IDS).map_err(store)?;
        let mut chan = txn.open_table(CHAN).map_err(store)?;
        let mut meta = txn.open_table(META).map_err(store)?;
        let mut state = txn.open_table(STATE).map_err(store)?;
        let mut seq = state
            .get("last_seq")
            .map_err(store)?
            .map(|v| v.value())
            .unwrap_or(0);
        for draft in drafts {
            seq += 1;
            let mut m = meta
                .get(draft.channel.as_str())
                .map_err(store)?
                .and_then(|v| postcard::from_bytes::<Meta>(v.value()).ok())
                .unwrap_or_else(|| Meta {
                    epoch: new_epoch().to_string(),
                    top: 0,
                    touched_ms: now,
                });
            m.top += 1;
            m.touched_ms = now;
            let p = Publication::new(draft, seq, m.top, m.epoch.as_str().into(), now);
            log.insert(seq, p.to_bytes().as_slice()).map_err(store)?;
            if ids.get(p.id()).map_err(store)?.is_none() {
                ids.insert(p.id(), seq).map_err(store)?;
            }
            chan.insert((p.channel(), p.offset), (seq, now))
                .map_err(store)?;
            let meta_bytes = postcard::to_stdvec(&m).map_err(store)?;
            meta.insert(p.channel(), meta_bytes.as_slice())
                .map_err(store)?;
            // Trim the channel to its size: offsets are contiguous, so
            // everything at or below `top - size` goes.
            let size = retention.for_channel(p.channel()).size as u64;
            if m.top > size {
                let cut = m.top - size;
                let old: Vec<(u64, u64)> = chan
                    .range((p.channel(), 0)..=(p.channel(), cut))
                    .map_err(store)?
                    .filter_map(|e| e.ok().map(|(k, v)| (k.value().1, v.value().0)))
                    .collect();
                for (offset, old_seq) in old {
                    chan.remove((p.channel(), offset)).map_err(store)?;
                    forget(&mut log, &mut ids, old_seq)?;
                }
            }
            out.push(Arc::new(p));
        }
        state.insert("last_seq", seq).map_err(store)?;
    }
    txn.commit().map_err(store)?;
    Ok(out)
}

/// Removes one publication from the log and, if it owns it, the id index.
fn forget(
    log: &mut redb::Table<u64, &[u8]>,
    ids: &mut redb::Table<&str, u64>,
    seq: u64,
) -> Result<(), HistoryError> {
    let removed = log
        .remove(seq)
        .map_err(store)?
        .and_then(|v| Publication::from_bytes(v.value()));
    if let Some(p) = removed {
        let owns = ids.get(p.id()).map_err(store)?.map(|v| v.value()) == Some(seq);
        if owns {
            ids.remove(p.id()).map_err(store)?;
        }
    }
    Ok(())
}

fn decode(bytes: &[u8]) -> Result<Arc<Publication>, HistoryError> {
    Publication::from_bytes(bytes)
        .map(Arc::new)
        .ok_or_else(|| HistoryError::Store("undecodable publication in the log".into()))
}

#[async_trait]
impl History for DiskHistory {
    async fn append(&self, drafts: Vec<Draft>) -> Result<Vec<Arc<Publication>>, HistoryError> {
        self.blocking(move |db, r| append(db, r, drafts)).await
    }

    async fn seq_of(&self, id: &str) -> Result<Option<u64>, HistoryError> {
        let id = id.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(store)?;
            let ids = txn.open_table(IDS).map_err(store)?;
            Ok(ids.get(id.as_str()).map_err(store)?.map(|v| v.value()))
        })
        .await
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
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(store)?;
            let log = txn.open_table(LOG).map_err(store)?;
            let mut out = Vec::new();
            for entry in log.range(after + 1..=upto).map_err(store)?.take(limit) {
                let (_, v) = entry.map_err(store)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn last(&self) -> Result<Option<(u64, String)>, HistoryError> {
        self.blocking(|db, _| {
            let txn = db.begin_read().map_err(store)?;
            let log = txn.open_table(LOG).map_err(store)?;
            let last = match log.last().map_err(store)? {
                Some((k, v)) => Some((k.value(), decode(v.value())?.id().to_owned())),
                None => None,
            };
            Ok(last)
        })
        .await
    }

    async fn read_channel(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), HistoryError> {
        let channel = channel.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_read().map_err(store)?;
            let meta = txn.open_table(META).map_err(store)?;
            let position = meta
                .get(channel.as_str())
                .map_err(store)?
                .and_then(|v| postcard::from_bytes::<Meta>(v.value()).ok())
                .map(|m| StreamPosition {
                    offset: m.top,
                    epoch: m.epoch,
                })
                .unwrap_or(StreamPosition {
                    offset: 0,
                    epoch: String::new(),
                });
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
        let channel = channel.to_owned();
        self.blocking(move |db, _| {
            let existing = {
                let txn = db.begin_read().map_err(store)?;
                let meta = txn.open_table(META).map_err(store)?;
                let m = meta.get(channel.as_str()).map_err(store)?;
                m.and_then(|v| postcard::from_bytes::<Meta>(v.value()).ok())
            };
            if let Some(m) = existing {
                return Ok(StreamPosition {
                    offset: m.top,
                    epoch: m.epoch,
                });
            }
            let txn = db.begin_write().map_err(store)?;
            let m = {
                let mut meta = txn.open_table(META).map_err(store)?;
                // Another writer may have created it meanwhile.
                let current = meta
                    .get(channel.as_str())
                    .map_err(store)?
                    .and_then(|v| postcard::from_bytes::<Meta>(v.value()).ok());
                match current {
                    Some(m) => m,
                    None => {
                        let m = Meta {
                            epoch: new_epoch().to_string(),
                            top: 0,
                            touched_ms: now_ms(),
                        };
                        let bytes = postcard::to_stdvec(&m).map_err(store)?;
                        meta.insert(channel.as_str(), bytes.as_slice())
                            .map_err(store)?;
                        m
                    }
                }
            };
            txn.commit().map_err(store)?;
            Ok(StreamPosition {
                offset: m.top,
                epoch: m.epoch,
            })
        })
        .await
    }

    async fn remove_channel(&self, channel: &str) -> Result<(), HistoryError> {
        let channel = channel.to_owned();
        self.blocking(move |db, _| {
            let txn = db.begin_write().map_err(store)?;
            {
                let mut log = txn.open_table(LOG).map_err(store)?;
                let mut ids = txn.open_table(IDS).map_err(store)?;
                let mut chan = txn.open_table(CHAN).map_err(store)?;
                let entries: Vec<(u64, u64)> = chan
                    .range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX))
                    .map_err(store)?
                    .filter_map(|e| e.ok().map(|(k, v)| (k.value().1, v.value().0)))
                    .collect();
                for (offset, seq) in entries {
                    chan.remove((channel.as_str(), offset)).map_err(store)?;
                    forget(&mut log, &mut ids, seq)?;
                }
            }
            txn.commit().map_err(store)
        })
        .await
    }

    async fn sweep(&self) -> Result<usize, HistoryError> {
        self.blocking(|db, retention| {
            let now = now_ms();
            let txn = db.begin_write().map_err(store)?;
            let mut removed = 0;
            {
                let mut log = txn.open_table(LOG).map_err(store)?;
                let mut ids = txn.open_table(IDS).map_err(store)?;
                let mut chan = txn.open_table(CHAN).map_err(store)?;
                let mut meta = txn.open_table(META).map_err(store)?;
                let channels: Vec<(String, u64)> = meta
                    .iter()
                    .map_err(store)?
                    .filter_map(|e| e.ok())
                    .filter_map(|(k, v)| {
                        let m = postcard::from_bytes::<Meta>(v.value()).ok()?;
                        Some((k.value().to_owned(), m.touched_ms))
                    })
                    .collect();
                for (name, touched_ms) in channels {
                    let r = retention.for_channel(&name);
                    let (ttl, meta_ttl) = (r.ttl.as_millis() as u64, r.meta_ttl.as_millis() as u64);
                    let range = (name.as_str(), 0)..=(name.as_str(), u64::MAX);
                    let mut expired = Vec::new();
                    let mut remaining = false;
                    for entry in chan.range(range).map_err(store)? {
                        let (k, v) = entry.map_err(store)?;
                        let (seq, time) = v.value();
                        if now.saturating_sub(time) < ttl {
                            remaining = true;
                            break;
                        }
                        expired.push((k.value().1, seq));
                    }
                    for (offset, seq) in &expired {
                        chan.remove((name.as_str(), *offset)).map_err(store)?;
                        forget(&mut log, &mut ids, *seq)?;
                    }
                    removed += expired.len();
                    if !remaining && now.saturating_sub(touched_ms) >= meta_ttl {
                        meta.remove(name.as_str()).map_err(store)?;
                    }
                }
            }
            txn.commit().map_err(store)?;
            Ok(removed)
        })
        .await
    }

    async fn close(&self) -> Result<(), HistoryError> {
        // Every append committed durably; a final empty transaction makes
        // sure the file is consistent before the process exits.
        self.blocking(|db, _| db.begin_write().map_err(store)?.commit().map_err(store))
            .await
    }
}
