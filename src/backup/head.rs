//! The newest backup in a store, and whether a database is behind it.
//!
//! It reads only the files' headers (`Restore::quick_plan`: a few kilobytes
//! per file of the newest chain, a ranged read on object storage), so
//! starting a manager costs the same whatever the size of its store.

use std::sync::Arc;

use crate::db::DictDB;
use crate::error::{DecryptFailure, Error, Result};
use crate::naming::{BackupKind, BackupName};
use crate::restore::Restore;
use crate::store::BackupStore;

/// The newest file of the chain a restore of the store would use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreHead {
    /// Its file name.
    pub(crate) file: String,
    /// The sequence number the chain reaches, when its files record one
    /// (files written by the Python original do not).
    pub(crate) seq: Option<u64>,
}

/// The newest backup in `store` and its sequence number (`None`: no full
/// backup to restore from). A chain that cannot be read is an error.
pub(crate) async fn store_head(
    store: &Arc<dyn BackupStore>,
    restore: Restore,
) -> Result<Option<StoreHead>> {
    match restore.quick_plan().await {
        Ok(plan) => Ok(plan.files.last().map(|f| StoreHead {
            file: f.name.clone(),
            seq: plan.seq,
        })),
        Err(Error::NoBackup(_)) => Ok(None),
        // Encrypted, and this manager only holds the recipients' public
        // keys: the sequence numbers cannot be read, only the names.
        Err(Error::Decrypt {
            kind: DecryptFailure::MissingIdentity,
            ..
        }) => newest_full_by_name(store).await,
        Err(e) => Err(e),
    }
}

/// The newest full backup by name alone (its sequence number unknown).
async fn newest_full_by_name(store: &Arc<dyn BackupStore>) -> Result<Option<StoreHead>> {
    Ok(store
        .list()
        .await?
        .into_iter()
        .filter_map(|f| BackupName::parse(&f.name).map(|n| (n, f.name)))
        .filter(|(n, _)| n.kind == BackupKind::Full)
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, file)| StoreHead { file, seq: None }))
}

/// Refuses a database that is behind the newest backup of `store`: a lower
/// sequence number, or (for files without sequence numbers) no record at all.
pub(crate) async fn check_not_behind(
    db: &DictDB,
    store: &Arc<dyn BackupStore>,
    restore: Restore,
) -> Result<()> {
    let Some(head) = store_head(store, restore).await? else {
        return Ok(());
    };
    let db_seq = db.seq();
    let behind = match head.seq {
        Some(seq) => db_seq < seq,
        None => db.snapshot().record_count() == 0,
    };
    if behind {
        return Err(Error::StoreAhead {
            store: store.location(),
            newest: head.file,
            store_seq: head.seq,
            db_seq,
        });
    }
    Ok(())
}
