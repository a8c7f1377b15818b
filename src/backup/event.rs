//! What the backup manager reports: outcomes and the event stream.

use std::time::Duration;

use crate::error::Error;
use crate::naming::BackupKind;

/// A backup file that was written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupInfo {
    /// Full backup or delta.
    pub kind: BackupKind,
    /// The file name in the store.
    pub file: String,
    /// The cut: every change up to this sequence number is covered.
    pub seq: u64,
    /// Deltas: the cut they start from (the previous backup's `seq`).
    pub from_seq: Option<u64>,
    /// Records written (full) or changes written (delta).
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Wall time from the cut to the durable file.
    pub duration: Duration,
    /// The embedded checksum.
    pub checksum: String,
}

/// What a backup request did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupOutcome {
    /// A file was written.
    Written(BackupInfo),
    /// A delta was due but nothing had changed since the last backup.
    Skipped,
}

impl BackupOutcome {
    /// The written file, if any.
    pub fn info(&self) -> Option<&BackupInfo> {
        match self {
            BackupOutcome::Written(i) => Some(i),
            BackupOutcome::Skipped => None,
        }
    }
}

/// An event on [`crate::BackupManager::subscribe`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum BackupEvent {
    /// A backup was written.
    Completed(BackupInfo),
    /// A backup failed. Its pending changes are kept for the next try.
    Failed {
        /// What was attempted.
        kind: BackupKind,
        /// Why it failed.
        error: Error,
        /// Failures in a row, this one included.
        consecutive_failures: u32,
        /// When the manager tries again on its own (the backoff: the
        /// minimum backup interval, doubled after each failure in a row, up
        /// to `max_retry_interval`); `None` when nothing is scheduled until
        /// the next periodic backup or request.
        retry_in: Option<Duration>,
    },
    /// The manager missed mutation events (the database's broadcast channel
    /// overflowed). No delta with a hole in it is ever written: the next
    /// delta compares the last backup's cut with the new one (a structural
    /// diff of the two snapshots), or, when that cut is not known, the next
    /// backup is a full one.
    Lagged {
        /// Events missed.
        missed: u64,
    },
    /// A delta was requested but a full backup is written instead (no full
    /// backup yet, missed events, an uncertain commit, or the full backup
    /// the deltas build on is gone from the store).
    FullInsteadOfDelta {
        /// Why.
        reason: String,
    },
    /// Retention deleted files of older chains.
    Pruned {
        /// Deleted file names.
        files: Vec<String>,
    },
    /// This subscriber of [`crate::BackupManager::events`] fell behind and
    /// missed the `missed` oldest events (the manager itself missed
    /// nothing).
    SubscriberLagged {
        /// Events this subscriber missed.
        missed: u64,
    },
    /// Retention could not delete a file (not fatal: it is tried again
    /// after the next full backup).
    PruneFailed {
        /// The file.
        file: String,
        /// Why.
        error: Error,
    },
}
