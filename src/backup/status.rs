//! What [`crate::BackupManager::status`] reports, and the state the actor
//! keeps up to date for it.
//!
//! The actor writes this state as things happen (a std mutex, held for a few
//! assignments, never across an `.await`), so a status can be read at any
//! time — also while a backup is being written, when the actor does not
//! answer commands.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::Error;
use crate::naming::BackupKind;
use crate::store::SkippedEntry;

/// The manager's state, as [`crate::BackupManager::status`] returns it.
///
/// # Examples
///
/// ```
/// # use dictdb::{BackupConfig, BackupManager, DictDB};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dictdb::Result<()> {
/// # let tmp = tempfile::tempdir().unwrap();
/// let db = DictDB::new();
/// let backups = BackupManager::start(&db, BackupConfig::new(tmp.path())).await?;
/// db.create_table("users")?;
/// let info = backups.backup_full().await?;
/// let status = backups.status();
/// assert_eq!(status.last_success.unwrap().file, info.file);
/// assert_eq!(status.consecutive_failures, 0);
/// assert!(status.running && !status.in_flight);
/// # backups.stop().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct BackupStatus {
    /// Whether the actor is running (false once stopped or ended).
    pub running: bool,
    /// The last backup that was written.
    pub last_success: Option<LastBackup>,
    /// The last failure, kept after later successes (compare the times).
    pub last_error: Option<LastFailure>,
    /// Failed backups in a row (0 after a success).
    pub consecutive_failures: u32,
    /// Deltas written since the last full backup.
    pub deltas_since_full: u32,
    /// The full backup the next delta builds on (`None`: the next backup is
    /// a full one).
    pub base: Option<String>,
    /// Changes committed after the last backup's cut that no completed file
    /// holds yet (as folded by the actor from the mutation stream).
    pub changes_pending: u64,
    /// Whether a backup is being written right now.
    pub in_flight: bool,
    /// Time until the next automatic backup is due (`Duration::ZERO`: due
    /// now or overdue, waiting for the backup in flight), `None` when the
    /// actor has ended.
    pub next_due_in: Option<Duration>,
    /// Set while automatic backups wait after failures: the time until the
    /// next attempt.
    pub retry_in: Option<Duration>,
    /// Entries of the store skipped when the manager last listed it (see
    /// [`crate::BackupEvent::EntriesSkipped`]); empty when there were none.
    pub skipped: Vec<SkippedEntry>,
}

/// A backup that was written.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastBackup {
    /// When it completed.
    pub at: SystemTime,
    /// Full or delta.
    pub kind: BackupKind,
    /// The file name in the store.
    pub file: String,
    /// Its cut: every change up to this sequence number is in the store.
    pub seq: u64,
}

/// A backup that failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LastFailure {
    /// When it failed.
    pub at: SystemTime,
    /// What was attempted.
    pub kind: BackupKind,
    /// Why it failed.
    pub error: Error,
}

/// The actor's side: written by the actor, read by `status()`.
#[derive(Debug, Default)]
pub(crate) struct StatusCell {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ended: bool,
    last_success: Option<LastBackup>,
    last_error: Option<LastFailure>,
    consecutive_failures: u32,
    deltas_since_full: u32,
    base: Option<String>,
    changes_pending: u64,
    in_flight: bool,
    next_due: Option<Instant>,
    retry_at: Option<Instant>,
    skipped: Vec<SkippedEntry>,
}

impl StatusCell {
    fn with(&self, f: impl FnOnce(&mut Inner)) {
        // A panic while holding this lock cannot leave it half-written in a
        // way that matters (plain fields): take it over.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g);
    }

    pub(crate) fn set_schedule(&self, next_due: Instant, retry_at: Option<Instant>) {
        self.with(|s| {
            s.next_due = Some(next_due);
            s.retry_at = retry_at;
        });
    }

    pub(crate) fn set_pending(&self, changes: u64) {
        self.with(|s| s.changes_pending = changes);
    }

    pub(crate) fn set_skipped(&self, skipped: Vec<SkippedEntry>) {
        self.with(|s| s.skipped = skipped);
    }

    pub(crate) fn set_in_flight(&self, in_flight: bool) {
        self.with(|s| s.in_flight = in_flight);
    }

    pub(crate) fn set_chain(&self, base: Option<String>, deltas_since_full: u32) {
        self.with(|s| {
            s.base = base;
            s.deltas_since_full = deltas_since_full;
        });
    }

    pub(crate) fn succeeded(&self, last: LastBackup) {
        self.with(|s| {
            s.last_success = Some(last);
            s.consecutive_failures = 0;
        });
    }

    pub(crate) fn failed(&self, failure: LastFailure, consecutive: u32) {
        self.with(|s| {
            s.last_error = Some(failure);
            s.consecutive_failures = consecutive;
        });
    }

    pub(crate) fn ended(&self) {
        self.with(|s| {
            s.ended = true;
            s.in_flight = false;
            s.next_due = None;
            s.retry_at = None;
        });
    }

    /// The status as of `now`.
    pub(crate) fn read(&self, now: Instant) -> BackupStatus {
        let g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let until = |t: Instant| t.saturating_duration_since(now);
        BackupStatus {
            running: !g.ended,
            last_success: g.last_success.clone(),
            last_error: g.last_error.clone(),
            consecutive_failures: g.consecutive_failures,
            deltas_since_full: g.deltas_since_full,
            base: g.base.clone(),
            changes_pending: g.changes_pending,
            in_flight: g.in_flight,
            next_due_in: g.next_due.map(until),
            retry_in: g.retry_at.filter(|t| *t > now).map(until),
            skipped: g.skipped.clone(),
        }
    }
}
