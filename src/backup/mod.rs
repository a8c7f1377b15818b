//! The backup manager: an actor that owns the backup schedule.
//!
//! [`BackupManager`] is a cheap handle around an mpsc sender. The actor task
//! it spawns receives `BackupNow`, `Full`, `Delta`, `Stop` and `Shutdown`
//! commands (each with a oneshot reply), change notifications (a
//! [`tokio::sync::Notify`], so they never block and are never lost), and the
//! database's mutation events, which it folds into the pending delta and
//! counts for the change-count triggers. When the next automatic backup is
//! due is a plain state struct (`schedule.rs`: periodic timer, debounce,
//! triggers, backoff) the actor hands the time to; the loop only waits.
//!
//! Files: `actor.rs` (the loop and the writer), `schedule.rs` and the
//! pieces it combines (`debounce.rs`, `triggers.rs`, `backoff.rs`),
//! `pending.rs` (the fold), `head.rs` (the store-ahead guard), `status.rs`,
//! `event.rs`, `retention.rs`, `telemetry.rs` (feature `metrics`).

mod actor;
mod backoff;
mod config;
mod debounce;
mod event;
mod head;
mod pending;
pub mod retention;
mod schedule;
mod status;
mod telemetry;
mod triggers;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

pub use config::{BackupConfig, FailureCallback};
pub use event::{BackupEvent, BackupInfo, BackupOutcome};
pub use retention::{RetentionPlan, RetentionPolicy};
pub use status::{BackupStatus, LastBackup, LastFailure};

use crate::db::DictDB;
use crate::error::{Error, Result};
use crate::restore::Restored;
use crate::store::{BackupStore, WriterLock};

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
    /// A final full backup, then the end.
    Shutdown {
        reply: oneshot::Sender<Result<BackupInfo>>,
    },
}

/// When `shutdown` must be done by, and the timeout it was given (for the
/// error message). Set once by the handle; the writer watches it.
pub(crate) type Deadline = Option<(Instant, Duration)>;

/// State the handle reads without asking the actor.
pub(crate) struct Shared {
    notify: Notify,
    status: status::StatusCell,
    /// The actor holds the only strong sender, so subscribers see the stream
    /// end when the actor ends, even while handles live.
    events: broadcast::WeakSender<BackupEvent>,
    deadline: watch::Sender<Deadline>,
    /// The actor task, so that `stop` can tell a panic from a clean end.
    task: tokio::sync::Mutex<Task>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

enum Task {
    Running(JoinHandle<()>),
    Ended(std::result::Result<(), String>),
}

/// Where a restored chain leaves the manager: deltas continue it.
#[derive(Clone, Debug)]
pub(crate) struct Resume {
    /// The chain's full backup.
    pub(crate) base: String,
    /// Deltas applied after it.
    pub(crate) deltas: u32,
}

/// Keeps a [`DictDB`] backed up (seed S2–S10).
///
/// Created with [`BackupManager::start`] (or [`restore_or_start`](Self::restore_or_start),
/// the recommended start of a service), which spawns the actor on the
/// current Tokio runtime. The handle is cheap to clone; the actor ends on
/// [`stop`](Self::stop), [`shutdown`](Self::shutdown), or when every handle
/// is dropped.
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
/// let backups = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true)).await?;
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
/// backups.shutdown(Duration::from_secs(10)).await?; // a last full backup, then the end
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

/// What [`BackupManager::restore_or_start`] returns: the database, restored
/// from the store's newest chain (or empty), and a running manager whose
/// next backup continues that chain.
#[derive(Debug)]
#[non_exhaustive]
pub struct Resumed {
    /// The database (the restored one, or a new empty one).
    pub db: DictDB,
    /// The running manager.
    pub manager: BackupManager,
    /// What was restored (`None`: the store held no full backup). Its `db`
    /// is the same database as [`Resumed::db`].
    pub restored: Option<Restored>,
}

fn no_runtime() -> Error {
    Error::Config("BackupManager::start must be called within a Tokio runtime".into())
}

impl BackupManager {
    /// Validates `config`, opens the backup store (creating the directory if
    /// missing), takes its single-writer lock, checks that the store holds
    /// no newer backup than `db`, and spawns the actor on the current Tokio
    /// runtime.
    ///
    /// Errors: an invalid configuration (zero interval, zero
    /// `max_deltas_before_full`, a directory path that is a file), an
    /// unusable directory, no Tokio runtime, [`Error::Locked`] when another
    /// manager writes to the same directory, [`Error::StoreAhead`] when the
    /// store holds a newer backup than `db` (restore it first with
    /// [`restore_or_start`](Self::restore_or_start), or opt in with
    /// [`BackupConfig::allow_store_ahead`]), or the error of reading that
    /// store's chain.
    ///
    /// The lock is held until the actor ends: [`stop`](Self::stop) and
    /// [`shutdown`](Self::shutdown) return once it is released; after
    /// dropping every handle instead, the actor ends (and releases it) on
    /// its next turn.
    pub async fn start(db: &DictDB, config: BackupConfig) -> Result<BackupManager> {
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        let store = config.open()?;
        let lock = store.lock_writer().await?;
        if !config.allow_store_ahead {
            head::check_not_behind(db, &store, config.restore_of(Arc::clone(&store))).await?;
        }
        Ok(Self::spawn(db.clone(), store, config, lock, None))
    }

    /// Restores the store's newest chain if it has one (else starts from an
    /// empty database) and starts a manager that continues that chain: in
    /// incremental mode its next backup is a delta on the restored full
    /// backup (litestream's `restore -if-replica-exists` followed by
    /// `replicate`). The recommended way to start a service.
    ///
    /// On object storage the manager holds a new lease, whose fencing token
    /// differs from the one the restored chain was written under: its first
    /// backup is then a full one that starts a chain of its own (a chain
    /// never carries two writers' tokens; see
    /// [`WriterLock::fencing_token`](crate::store::WriterLock::fencing_token)).
    ///
    /// The lock is taken before the store is read, so no other manager can
    /// write between the restore and the start. A chain that cannot be
    /// restored (a damaged or missing link) is an error: nothing is started
    /// over backups that could not be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use dictdb::{BackupConfig, BackupManager};
    /// use serde_json::json;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> dictdb::Result<()> {
    /// # let tmp = tempfile::tempdir().unwrap();
    /// let config = || BackupConfig::new(tmp.path()).incremental(true);
    /// let first = BackupManager::restore_or_start(config()).await?;
    /// assert!(first.restored.is_none(), "an empty store: an empty database");
    /// first.db.create_table("users")?.insert(json!({"name": "Alice"}))?;
    /// first.manager.shutdown(Duration::from_secs(10)).await?;
    ///
    /// // The next run of the service:
    /// let next = BackupManager::restore_or_start(config()).await?;
    /// let users = next.db.table("users")?;
    /// assert_eq!(users.len()?, 1);
    /// users.insert(json!({"name": "Bob"}))?;
    /// let delta = next.manager.backup_now().await?;
    /// assert_eq!(delta.info().unwrap().kind, dictdb::BackupKind::Delta);
    /// # next.manager.stop().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn restore_or_start(config: BackupConfig) -> Result<Resumed> {
        let (store, lock) = Self::open_for_writing(&config).await?;
        let restored = match config.restore_of(Arc::clone(&store)).run().await {
            Ok(restored) => Some(restored),
            Err(Error::NoBackup(_)) => None,
            Err(e) => return Err(e),
        };
        let db = restored.as_ref().map_or_else(DictDB::new, |r| r.db.clone());
        Ok(Self::continue_chain(db, store, config, lock, restored))
    }

    /// Checks the runtime and the configuration, opens the store and takes
    /// its single-writer lock: the first step of every start that reads the
    /// store before writing to it ([`restore_or_start`](Self::restore_or_start),
    /// a replica's promotion), so no other manager can write in between.
    pub(crate) async fn open_for_writing(
        config: &BackupConfig,
    ) -> Result<(Arc<dyn BackupStore>, Option<WriterLock>)> {
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        let store = config.open()?;
        let lock = store.lock_writer().await?;
        Ok((store, lock))
    }

    /// Starts a manager on the database a restore (or a replica) reached,
    /// continuing its chain: in incremental mode the next backup is a delta
    /// on the chain's full backup, and the delta count goes on from the
    /// deltas applied. `None`: a new chain (`db` holds no backed-up state).
    /// The one way `restore_or_start` and `Replica::promote` seed the actor.
    pub(crate) fn continue_chain(
        db: DictDB,
        store: Arc<dyn BackupStore>,
        config: BackupConfig,
        lock: Option<WriterLock>,
        restored: Option<Restored>,
    ) -> Resumed {
        let token = lock.as_ref().and_then(WriterLock::fencing_token);
        let resume = match &restored {
            // A writer holding a lease continues only a chain written under
            // its own holding (its fencing token): a new holder (another
            // process, a promoted replica, this service restarted) begins
            // with a full backup, so no chain ever carries two tokens.
            Some(r) if token.is_some() && r.applied.iter().any(|f| f.fencing_token != token) => {
                None
            }
            Some(r) => {
                let resume = match (r.seq, r.applied.first()) {
                    // Files without sequence numbers (the Python original's)
                    // cannot be continued exactly: the next backup is full.
                    (Some(_), Some(base)) => Some(Resume {
                        base: base.name.clone(),
                        deltas: u32::try_from(r.applied.len() - 1).unwrap_or(u32::MAX),
                    }),
                    _ => None,
                };
                resume
            }
            None => None,
        };
        let manager = Self::spawn(db.clone(), store, config, lock, resume);
        Resumed {
            db,
            manager,
            restored,
        }
    }

    fn spawn(
        db: DictDB,
        store: Arc<dyn BackupStore>,
        config: BackupConfig,
        lock: Option<WriterLock>,
        resume: Option<Resume>,
    ) -> BackupManager {
        let (tx, rx) = mpsc::channel(32);
        let (events, _) = broadcast::channel(1024);
        let (deadline, deadline_rx) = watch::channel(None);
        let shared = Arc::new(Shared {
            notify: Notify::new(),
            status: status::StatusCell::default(),
            events: events.downgrade(),
            deadline,
            task: tokio::sync::Mutex::new(Task::Ended(Ok(()))),
        });
        let actor = actor::Actor::new(actor::Parts {
            db,
            store: Arc::clone(&store),
            config,
            rx,
            shared: Arc::clone(&shared),
            events,
            deadline: deadline_rx,
            lock,
            resume,
        });
        let handle = tokio::spawn(actor.run());
        // Nobody else can hold the mutex yet.
        if let Ok(mut task) = shared.task.try_lock() {
            *task = Task::Running(handle);
        }
        BackupManager { tx, shared, store }
    }

    async fn request(&self, request: Request) -> Result<BackupOutcome> {
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Command::Backup { request, reply })
            .await
            .is_err()
        {
            return Err(self.ended_error().await);
        }
        match answer.await {
            Ok(r) => r,
            Err(_) => Err(self.ended_error().await),
        }
    }

    /// Why the actor is gone: a panic, or a normal end.
    async fn ended_error(&self) -> Error {
        match self.join().await {
            Err(e) => e,
            Ok(()) => Error::ManagerStopped,
        }
    }

    /// Waits for the actor task to end and says how it ended.
    async fn join(&self) -> Result<()> {
        let mut task = self.shared.task.lock().await;
        if let Task::Running(handle) = &mut *task {
            let end = match handle.await {
                Ok(()) => Ok(()),
                Err(e) if e.is_panic() => Err(panic_message(e.into_panic())),
                Err(e) => Err(e.to_string()),
            };
            *task = Task::Ended(end);
        }
        match &*task {
            Task::Ended(Err(message)) => Err(Error::ManagerPanicked(message.clone())),
            _ => Ok(()),
        }
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
    /// missed events, unknown durability of the last file, the base full
    /// backup gone from the store) a full backup is written instead and the
    /// outcome says so.
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
        self.status().consecutive_failures
    }

    /// Deltas written since the last full backup.
    pub fn deltas_since_full(&self) -> u32 {
        self.status().deltas_since_full
    }

    /// The manager's state: last success and failure, failures in a row,
    /// changes pending, whether a backup is in flight, when the next one is
    /// due. Never waits for the actor (it answers during a backup too).
    pub fn status(&self) -> BackupStatus {
        self.shared.status.read(Instant::now())
    }

    /// Subscribes to backup events: completions, failures, warnings. The
    /// channel closes when the actor ends (after `stop`, `shutdown`, or a
    /// panic), even while handles live.
    pub fn subscribe(&self) -> broadcast::Receiver<BackupEvent> {
        match self.shared.events.upgrade() {
            Some(sender) => sender.subscribe(),
            // The actor has ended: a receiver that says so at once.
            None => broadcast::channel(1).1,
        }
    }

    /// The backup events as a [`Stream`] that ends when the actor ends
    /// (after `stop`, `shutdown`, or a panic), even while handles live.
    ///
    /// A subscriber that falls more than 1,024 events behind misses the
    /// oldest ones; the stream then yields
    /// [`BackupEvent::SubscriberLagged`] with the number missed, and goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_stream::StreamExt;
    /// # use dictdb::{BackupConfig, BackupEvent, BackupManager, DictDB};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> dictdb::Result<()> {
    /// # let tmp = tempfile::tempdir().unwrap();
    /// # let db = DictDB::new();
    /// let backups = BackupManager::start(&db, BackupConfig::new(tmp.path())).await?;
    /// let mut events = backups.events();
    /// backups.backup_full().await?;
    /// backups.stop().await?;
    /// let mut completed = 0;
    /// while let Some(event) = events.next().await {   // ends with the actor
    ///     if let BackupEvent::Completed(_) = event {
    ///         completed += 1;
    ///     }
    /// }
    /// assert_eq!(completed, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn events(&self) -> impl Stream<Item = BackupEvent> + Send + Unpin + 'static {
        BroadcastStream::new(self.subscribe()).map(|item| match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                BackupEvent::SubscriberLagged { missed }
            }
        })
    }

    /// The store backups go to.
    pub fn store(&self) -> &Arc<dyn BackupStore> {
        &self.store
    }

    /// Stops the actor: a backup in flight is finished, nothing new is
    /// written, and this returns once the actor has ended (its store lock is
    /// then released). Stopping a stopped manager is not an error; an actor
    /// that panicked is reported as [`Error::ManagerPanicked`].
    ///
    /// `stop` waits as long as the backup in flight takes; a service that
    /// must be gone by a deadline uses [`shutdown`](Self::shutdown).
    pub async fn stop(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
        self.join().await
    }

    /// Writes a final full backup and stops, within `timeout`.
    ///
    /// Returns the final backup once it is durable and the actor has ended.
    /// When the time runs out — a backup in flight that does not finish, a
    /// store that does not answer — the write in flight is aborted (the
    /// store writer's `abort`, run in the background so as not to wait on
    /// it), the actor ends, and this returns [`Error::ShutdownDeadline`] at
    /// the deadline. (A deadline that passes during the commit step cannot
    /// take the commit back: the file may still appear.)
    pub async fn shutdown(&self, timeout: Duration) -> Result<BackupInfo> {
        let deadline = Instant::now() + timeout;
        // Seen by a write already in flight, which the command waits for.
        self.shared.deadline.send_if_modified(|d| match d {
            Some((earlier, _)) if *earlier <= deadline => false,
            _ => {
                *d = Some((deadline, timeout));
                true
            }
        });
        let (reply, answer) = oneshot::channel();
        let asked = tokio::time::timeout_at(deadline, async {
            if self.tx.send(Command::Shutdown { reply }).await.is_err() {
                return Err(self.ended_error().await);
            }
            match answer.await {
                Ok(result) => result,
                Err(_) => Err(self.ended_error().await),
            }
        })
        .await;
        match asked {
            Ok(Ok(info)) => {
                // The actor replies just before it returns.
                self.join().await?;
                Ok(info)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::ShutdownDeadline {
                timeout,
                detail: "the actor did not finish in time; the write in flight is being aborted"
                    .into(),
            }),
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".into()
    }
}
