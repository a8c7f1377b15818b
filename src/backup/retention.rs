//! Retention: keep the newest N full backups and what their chains need.

use tokio::sync::broadcast;
use tracing::{info, warn};

use super::BackupEvent;
use crate::naming::{BackupKind, BackupName, NameFormat};
use crate::store::{BackupStore, StoredFile};

/// The files retention would delete: every file of ours (a full backup or
/// delta in a format we read) that sorts before the oldest kept full backup.
/// Deltas after it belong to kept chains; files that are not ours are never
/// listed.
pub(crate) fn doomed(files: &[StoredFile], keep: usize) -> Vec<String> {
    let mut ours: Vec<BackupName> = files
        .iter()
        .filter_map(|f| BackupName::parse(&f.name))
        .filter(|n| matches!(n.format, NameFormat::Supported(_)))
        .collect();
    ours.sort();
    let fulls: Vec<&BackupName> = ours.iter().filter(|n| n.kind == BackupKind::Full).collect();
    if fulls.len() <= keep {
        return Vec::new();
    }
    let oldest_kept = fulls[fulls.len() - keep].clone();
    ours.into_iter()
        .filter(|n| *n < oldest_kept)
        .map(|n| n.to_string())
        .collect()
}

/// Deletes what [`doomed`] lists; failures are reported, never fatal.
pub(crate) async fn prune(
    store: &dyn BackupStore,
    keep: usize,
    events: &broadcast::Sender<BackupEvent>,
) {
    let files = match store.list().await {
        Ok(f) => f,
        Err(error) => {
            warn!(cause = %error, "retention could not list the backup store");
            let _ = events.send(BackupEvent::PruneFailed {
                file: store.location(),
                error,
            });
            return;
        }
    };
    let mut deleted = Vec::new();
    for name in doomed(&files, keep) {
        match store.delete(&name).await {
            Ok(()) => deleted.push(name),
            Err(error) => {
                warn!(file = %name, cause = %error, "retention could not delete a file");
                let _ = events.send(BackupEvent::PruneFailed { file: name, error });
            }
        }
    }
    if !deleted.is_empty() {
        info!(files = deleted.len(), "retention deleted old backups");
        let _ = events.send(BackupEvent::Pruned { files: deleted });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> StoredFile {
        StoredFile {
            name: name.into(),
            size: 1,
        }
    }

    #[test]
    fn keeps_newest_chains_and_foreign_files() {
        let files = [
            f("dictdb_backup_100_000000.json"),
            f("dictdb_delta_101_000000.json"),
            f("dictdb_backup_200_000000.msgpack"),
            f("dictdb_delta_201_000000.msgpack"),
            f("dictdb_backup_300_000000.json"),
            f("dictdb_delta_301_000000.json"),
            f("notes.txt"),
            f("dictdb_backup_050_000000.pickle"),
        ];
        assert_eq!(
            doomed(&files, 2),
            vec![
                "dictdb_backup_100_000000.json",
                "dictdb_delta_101_000000.json"
            ]
        );
        assert!(doomed(&files, 3).is_empty());
        assert_eq!(doomed(&files, 1).len(), 4);
    }
}
