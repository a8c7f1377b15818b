//! The backup manager: an actor that owns the backup schedule.
//!
//! [`BackupManager`] is a cheap handle around an mpsc sender. The actor task
//! it spawns receives `BackupNow`, `Full`, `Delta` and `Stop` commands (each
//! with a oneshot reply), change notifications (a [`tokio::sync::Notify`],
//! so they never block and are never lost), and the database's mutation
//! events, which it folds into the pending delta. Timers (the periodic
//! schedule and the debounce window) are deadlines recomputed on each turn.

mod actor;
mod config;
mod debounce;
mod event;
mod pending;
pub mod retention;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot, Notify};

pub use config::{BackupConfig, FailureCallback};
pub use event::{BackupEvent, BackupInfo, BackupOutcome};
pub use retention::{RetentionPlan, RetentionPolicy};

use crate::db::DictDB;
use crate::error::{Error, Result};
use crate::store::BackupStore;

/// What a command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// Whatever the mode calls for (seed `backup_now`).
    Now,
    /// A full backup.
    Full,
    /// A delta (or a full backup when a delta cannot be exact).
    Delta,
}

pub(crate) enum Command {
    Backup {
        request: Request,
        reply: oneshot::Sender<Result<BackupOutcome>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// State the handle reads without asking the actor.
#[derive(Debug)]
pub(crate) struct Shared {
    notify: Notify,
    consecutive_failures: AtomicU32,
    deltas_since_full: AtomicU32,
    events: broadcast::Sender<BackupEvent>,
}

/// Keeps a [`DictDB`] backed up (seed S2–S10).
///
/// Created with [`BackupManager::start`], which spawns the actor on the
/// current Tokio runtime. The handle is cheap to clone; the actor ends on
/// [`stop`](Self::stop) or when every handle is dropped.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dictdb::{BackupConfig, BackupManager, DictDB};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dictdb::Result<()> {
/// # let tmp = tempfile::tempdir().unwrap();
/// let db = DictDB::new();
/// let events = db.create_table_with_key("events", "event_id")?;
/// let backups = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))?;
///
/// events.insert(json!({"event_id": "ev-1", "type": "click"}))?;
/// let full = backups.backup_full().await?;
/// assert_eq!(full.records, 1);
///
/// events.insert(json!({"event_id": "ev-2", "type": "view"}))?;
/// let delta = backups.backup_delta().await?;
/// assert_eq!(delta.info().unwrap().records, 1);
/// assert_eq!(backups.deltas_since_full(), 1);
///
/// backups.stop().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct BackupManager {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    store: Arc<dyn BackupStore>,
}

impl fmt::Debug for BackupManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackupManager")
            .field("store", &self.store.location())
            .field("consecutive_failures", &self.consecutive_failures())
            .field("deltas_since_full", &self.deltas_since_full())
            .finish()
    }
}

impl BackupManager {
    /// Validates `config`, opens the backup store (creating the directory if
    /// missing) and spawns the actor on the current Tokio runtime.
    ///
    /// Errors: an invalid configuration (zero interval, zero
    /// `max_deltas_before_full`, a directory path that is a file), an
    /// unusable directory, or no Tokio runtime.
    pub fn start(db: &DictDB, config: BackupConfig) -> Result<BackupManager> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::Config("BackupManager::start must be called within a Tokio runtime".into())
        })?;
        let store = config.open()?;
        let (tx, rx) = mpsc::channel(32);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            notify: Notify::new(),
            consecutive_failures: AtomicU32::new(0),
            deltas_since_full: AtomicU32::new(0),
            events,
        });
        let actor = actor::Actor::new(
            db.clone(),
            Arc::clone(&store),
            config,
            rx,
            Arc::clone(&shared),
        );
        runtime.spawn(actor.run());
        Ok(BackupManager { tx, shared, store })
    }

    async fn request(&self, request: Request) -> Result<BackupOutcome> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Command::Backup { request, reply })
            .await
            .map_err(|_| Error::ManagerStopped)?;
        answer.await.map_err(|_| Error::ManagerStopped)?
    }

    /// Backs up now: in incremental mode a delta (a full backup every
    /// `max_deltas_before_full` deltas, and first), otherwise a full backup.
    pub async fn backup_now(&self) -> Result<BackupOutcome> {
        self.request(Request::Now).await
    }

    /// Writes a full backup and resets the delta count.
    pub async fn backup_full(&self) -> Result<BackupInfo> {
        match self.request(Request::Full).await? {
            BackupOutcome::Written(info) => Ok(info),
            // A full backup is never skipped.
            BackupOutcome::Skipped => Err(Error::ManagerStopped),
        }
    }

    /// Writes a delta of the changes since the last backup, or reports that
    /// nothing changed. When a delta cannot be exact (no full backup yet,
    /// missed events, unknown durability of the last file) a full backup is
    /// written instead and the outcome says so.
    pub async fn backup_delta(&self) -> Result<BackupOutcome> {
        self.request(Request::Delta).await
    }

    /// Signals a significant change (seed S5). Never blocks, callable from
    /// sync code. Outside `min_backup_interval` of the last backup it
    /// triggers one at once; inside, it is deferred to the end of the window,
    /// and every notification in the window coalesces into that one backup.
    pub fn notify_change(&self) {
        self.shared.notify.notify_one();
    }

    /// Failed backups in a row (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.shared.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Deltas written since the last full backup.
    pub fn deltas_since_full(&self) -> u32 {
        self.shared.deltas_since_full.load(Ordering::Relaxed)
    }

    /// Subscribes to backup events: completions, failures, warnings.
    pub fn subscribe(&self) -> broadcast::Receiver<BackupEvent> {
        self.shared.events.subscribe()
    }

    /// The store backups go to.
    pub fn store(&self) -> &Arc<dyn BackupStore> {
        &self.store
    }

    /// Stops the actor: a backup in flight is finished, nothing new is
    /// written, and this returns once the actor has ended. Stopping a
    /// stopped manager is not an error.
    pub async fn stop(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Stop { reply }).await.is_err() {
            return Ok(());
        }
        let _ = done.await;
        Ok(())
    }
}
