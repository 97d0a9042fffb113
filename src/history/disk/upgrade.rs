//! Upgrades of the disk store's format, run once when an older file is
//! opened: positions without the trimmed horizon (before 2), an id index
//! that kept only an id's first publication (before 3).

use redb::{ReadableTable, WriteTransaction};
use serde::Deserialize;

use super::store;
use super::tables::*;
use crate::history::HistoryError;

/// [`Meta`] as versions before 2 wrote it.
#[derive(Deserialize)]
struct MetaV1 {
    epoch: String,
    top: u64,
    touched_ms: u64,
}

/// Rewrites positions of the format before 2 (without `trimmed`). What
/// was trimmed then is not known exactly: everything before the oldest
/// publication kept counts as trimmed, and a channel with none kept as
/// trimmed up to the newest `seq`.
pub(super) fn upgrade_meta(txn: &WriteTransaction, last_seq: u64) -> Result<(), HistoryError> {
    let mut meta = txn.open_table(META).map_err(store)?;
    let chan = txn.open_table(CHAN).map_err(store)?;
    let old: Vec<(String, Vec<u8>)> = meta
        .iter()
        .map_err(store)?
        .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
        .collect::<Result<_, _>>()
        .map_err(store)?;
    for (name, bytes) in old {
        let Ok(v1) = postcard::from_bytes::<MetaV1>(&bytes) else {
            continue;
        };
        let oldest = chan
            .range((name.as_str(), 0)..=(name.as_str(), u64::MAX))
            .map_err(store)?
            .next()
            .transpose()
            .map_err(store)?
            .map(|(k, v)| (k.value().1, v.value().0));
        let trimmed = match oldest {
            Some((1, _)) => 0,
            Some((_, seq)) => seq - 1,
            None if v1.top == 0 => 0,
            None => last_seq,
        };
        let m = Meta {
            epoch: v1.epoch,
            top: v1.top,
            touched_ms: v1.touched_ms,
            trimmed,
        };
        let bytes = postcard::to_stdvec(&m).map_err(store)?;
        meta.insert(name.as_str(), bytes.as_slice())
            .map_err(store)?;
    }
    Ok(())
}

/// Moves the id index of versions before 3 (first publication only) to
/// the one that keeps every publication of an id.
pub(super) fn upgrade_ids(txn: &WriteTransaction) -> Result<(), HistoryError> {
    let old: Vec<(String, u64)> = {
        let ids = txn.open_table(IDS_V2).map_err(store)?;
        let entries = ids
            .iter()
            .map_err(store)?
            .map(|e| e.map(|(k, v)| (k.value().to_owned(), v.value())))
            .collect::<Result<_, _>>()
            .map_err(store)?;
        entries
    };
    let mut ids = txn.open_table(IDS).map_err(store)?;
    for (id, seq) in old {
        ids.insert((id.as_str(), seq), ()).map_err(store)?;
    }
    drop(ids);
    txn.delete_table(IDS_V2).map_err(store)?;
    Ok(())
}
