//! Read replicas: other processes follow a backup store and serve reads,
//! the way litestream's read replicas follow a SQLite primary.
//!
//! [`Replica::follow`] restores the store's newest chain (the restore code,
//! every link and checksum checked) into a read-only [`DictDB`] and keeps it
//! current by polling the store: one listing per poll; each new delta of the
//! chain is read, checked as a restore checks it and applied atomically; a
//! newer full backup moves the replica to its chain. Readers only ever see
//! backup cuts, whole. A damaged or missing file stops the replica at the
//! last good cut, and says why, until the writer's next full backup repairs
//! the store. [`Replica::promote`] makes a replica the writer when the
//! primary is gone.
//!
//! Layout: `follower.rs` (one poll: what is new, checked, applied),
//! `status.rs` (status, lag, events), this file (the handle and its task).

mod follower;
mod status;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tracing::info;

pub use status::{
    AppliedFile, ChainSwitch, ReplicaCut, ReplicaEvent, ReplicaFailure, ReplicaLag, ReplicaStatus,
};

use crate::backup::{BackupConfig, BackupManager, Resumed};
use crate::db::DictDB;
use crate::error::{Error, Result};
use crate::restore::Restore;
use crate::store::BackupStore;
use follower::{Follower, Position};
use status::StatusCell;

/// Options of a [`Replica`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dictdb::replica::ReplicaOptions;
///
/// let options = ReplicaOptions::default().interval(Duration::from_millis(250));
/// assert_eq!(options.poll_interval(), Duration::from_millis(250));
/// ```
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    interval: Duration,
    allow_unverified: bool,
    spare_copy: bool,
    /// Key fields of tables only the Python original's deltas hold.
    key_fields: Vec<(String, String)>,
    /// Identities that decrypt the store's encrypted files.
    #[cfg(feature = "encryption")]
    identities: Vec<crate::encryption::Identity>,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            interval: Duration::from_secs(1),
            allow_unverified: false,
            spare_copy: true,
            key_fields: Vec::new(),
            #[cfg(feature = "encryption")]
            identities: Vec::new(),
        }
    }
}

impl ReplicaOptions {
    /// Time between the starts of two polls (one listing of the store each).
    /// Default: 1 s. Must not be zero.
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Keeps a spare copy of the replica's table index, so that each file
    /// is applied in place and swapped in (readers wait for one pointer
    /// store either way). Default: true.
    ///
    /// With it, a 1% delta at a million records applies in about half the
    /// time, and the replica holds two copies of its tree nodes (the
    /// records themselves are shared): about 60 more bytes per record, and
    /// a copy of the tables made once when following starts (off the
    /// replica's path, the first file waits for it). Without it, each file
    /// is worked out on a copy of the paths its changes take.
    #[must_use]
    pub fn spare_copy(mut self, spare_copy: bool) -> Self {
        self.spare_copy = spare_copy;
        self
    }

    /// Accepts files without checksum (the Python original's) where files
    /// of this library come before them, as
    /// [`Restore::allow_unverified`] does. Default: false.
    #[must_use]
    pub fn allow_unverified(mut self, allow: bool) -> Self {
        self.allow_unverified = allow;
        self
    }

    /// The key field of a table that deltas of the Python original change
    /// without the chain holding it (a table created after the original's
    /// last full backup: its deltas do not say), as
    /// [`Restore::key_field`] does. Used at the first load and for every
    /// such delta followed later; without it the replica stops before the
    /// delta, naming the table. Default: none.
    #[must_use]
    pub fn key_field(mut self, table: impl Into<String>, field: impl Into<String>) -> Self {
        self.key_fields.push((table.into(), field.into()));
        self
    }

    /// An identity that decrypts the store's encrypted (`.age`) files
    /// (feature `encryption`), as [`Restore::identity`] does: a replica of
    /// an encrypted store needs one (without it, following fails with
    /// [`DecryptFailure::MissingIdentity`](crate::DecryptFailure) naming the
    /// file). May be given several times. Compressed files need nothing.
    /// Default: none.
    #[cfg(feature = "encryption")]
    #[must_use]
    pub fn identity(mut self, identity: crate::encryption::Identity) -> Self {
        self.identities.push(identity);
        self
    }

    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        self.interval
    }

    /// The restore options a replica reads its store with.
    fn restore(&self, store: Arc<dyn BackupStore>) -> Restore {
        #[cfg_attr(not(feature = "encryption"), allow(unused_mut))]
        let mut restore = self.key_fields.iter().fold(
            Restore::new(store)
                .stop_at_last_consistent(true)
                .allow_unverified(self.allow_unverified),
            |r, (table, field)| r.key_field(table, field),
        );
        #[cfg(feature = "encryption")]
        {
            restore = restore.identities(self.identities.iter().cloned());
        }
        restore
    }
}

/// What a caller asks of the follower task.
enum Command {
    /// Poll now; answer with the problem that stops the replica, if any.
    Sync {
        reply: oneshot::Sender<Option<ReplicaFailure>>,
    },
    /// Stop following.
    Stop { reply: oneshot::Sender<()> },
    /// Poll a last time and, if the replica is then at the store's head,
    /// hand over its position and end; else answer why not and go on.
    Promote {
        reply: oneshot::Sender<std::result::Result<Option<Position>, Error>>,
    },
}

/// A read replica of a backup store: a read-only [`DictDB`] that follows
/// the store's newest chain.
///
/// A cheap handle (`Clone`); the follower task ends on [`stop`](Self::stop),
/// [`promote`](Self::promote), or when every handle is dropped. The
/// database stays readable (and read-only) after that.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dictdb::replica::{Replica, ReplicaOptions};
/// use dictdb::{BackupConfig, BackupManager, DictDB, LocalStore};
/// use serde_json::json;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dictdb::Result<()> {
/// # let tmp = tempfile::tempdir().unwrap();
/// # let dir = tmp.path().to_path_buf();
/// // The writer.
/// let db = DictDB::new();
/// let users = db.create_table("users")?;
/// let backups = BackupManager::start(&db, BackupConfig::new(&dir).incremental(true)).await?;
/// users.insert(json!({"name": "Ada"}))?;
/// backups.backup_full().await?;
///
/// // A reader, in this process or another.
/// let replica = Replica::follow(
///     std::sync::Arc::new(LocalStore::open(&dir)?),
///     ReplicaOptions::default().interval(Duration::from_millis(100)),
/// ).await?;
/// assert_eq!(replica.db().table("users")?.len()?, 1);
///
/// users.insert(json!({"name": "Grace"}))?;
/// backups.backup_delta().await?;
/// replica.sync().await?;                       // or wait for the next poll
/// assert_eq!(replica.db().table("users")?.len()?, 2);
/// assert_eq!(replica.db().seq(), db.seq());    // the writer's cut
/// assert!(replica.status().lag.is_current());
/// assert!(replica.db().table("users")?.insert(json!({})).is_err()); // read-only
/// # backups.stop().await?;
/// # replica.stop().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

struct Inner {
    db: DictDB,
    store: Arc<dyn BackupStore>,
    tx: mpsc::Sender<Command>,
    status: Arc<StatusCell>,
    /// The follower holds the only strong sender: the stream ends with it.
    events: broadcast::WeakSender<ReplicaEvent>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Replica {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replica")
            .field("store", &self.inner.store.location())
            .field("cut", &self.status().cut)
            .finish()
    }
}

fn no_runtime() -> Error {
    Error::Config("Replica::follow must be called within a Tokio runtime".into())
}

/// Restores the newest chain into a read-only database and makes its
/// follower, polled once: everything [`Replica::follow`] does before it
/// hands the follower to its task. Returns the follower and when it polls
/// next.
async fn start(
    store: Arc<dyn BackupStore>,
    options: &ReplicaOptions,
) -> Result<(Follower, Instant)> {
    if options.interval.is_zero() {
        return Err(Error::Config(
            "the replica poll interval must be greater than zero".into(),
        ));
    }
    let opts = options.restore(Arc::clone(&store));
    let (db, pos) = match opts.run().await {
        Ok(restored) => (restored.db.clone(), Position::of(&restored)),
        Err(Error::NoBackup(_)) => (DictDB::new(), None),
        Err(e) => return Err(e),
    };
    db.set_read_only(Some(&format!(
        "it is a replica following {} (promote it to write)",
        store.location()
    )));
    let status = Arc::new(StatusCell::new(store.location()));
    let (events, _) = broadcast::channel(1024);
    let mut follower = Follower::new(
        db.clone(),
        Arc::clone(&store),
        opts,
        pos,
        Arc::clone(&status),
        events,
    );
    if let Some(p) = &follower.pos {
        status.set_cut(p.cut());
    }
    if options.spare_copy {
        follower.prepare_spare();
    }
    // A first poll right away: the lag, why a lenient restore stopped
    // (found again, and remembered), anything written meanwhile.
    let next = Instant::now() + options.interval;
    follower.poll(next).await;
    follower.background();
    Ok((follower, next))
}

impl Replica {
    /// Restores the newest chain of `store` into a read-only database and
    /// starts following the store on the current Tokio runtime.
    ///
    /// The first load is a restore that stops at the last consistent point:
    /// a damaged or missing file leaves the replica at the cut before it,
    /// with [`ReplicaStatus::problem`] saying why (and it keeps polling for
    /// a repair). A store with no full backup yet gives an empty database
    /// that fills in once one appears. Errors: an invalid interval, no Tokio
    /// runtime, a store that cannot be listed or read.
    pub async fn follow(store: Arc<dyn BackupStore>, options: ReplicaOptions) -> Result<Replica> {
        tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        let (follower, next) = start(Arc::clone(&store), &options).await?;
        let db = follower.db.clone();
        let status = Arc::clone(&follower.status);
        let weak = follower.events.downgrade();
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(run(follower, rx, options.interval, next));
        info!(store = %store.location(), seq = ?db.seq(), "replica following");
        Ok(Replica {
            inner: Arc::new(Inner {
                db,
                store,
                tx,
                status,
                events: weak,
                task: tokio::sync::Mutex::new(Some(task)),
            }),
        })
    }

    /// The replica's database: read it like any other (every write fails
    /// with [`Error::ReadOnly`]). A [`Snapshot`](crate::Snapshot) or a scan
    /// taken from it keeps its cut while the replica moves on.
    pub fn db(&self) -> &DictDB {
        &self.inner.db
    }

    /// The store it follows.
    pub fn store(&self) -> &Arc<dyn BackupStore> {
        &self.inner.store
    }

    /// The cut it serves, how far behind the store it is, and why it is
    /// stuck if it is. Never waits for a poll.
    pub fn status(&self) -> ReplicaStatus {
        self.inner.status.read(Instant::now())
    }

    /// Polls the store now (without waiting for the next tick) and returns
    /// the status after it, or the error that stops the replica (a damaged
    /// or missing file, an unreachable store: it keeps serving its last good
    /// cut and keeps polling).
    pub async fn sync(&self) -> Result<ReplicaStatus> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Sync { reply })
            .await
            .map_err(|_| Error::ReplicaStopped)?;
        match answer.await.map_err(|_| Error::ReplicaStopped)? {
            Some(problem) => Err(problem.error),
            None => Ok(self.status()),
        }
    }

    /// Subscribes to the replica's events: files applied, chain switches,
    /// failures, lag. The channel closes when the follower ends.
    ///
    /// (The mutations it applies are on the database's own stream,
    /// [`DictDB::subscribe`]: one [`Mutation`](crate::Mutation) per record
    /// changed, the last of each file at the file's cut.)
    pub fn subscribe(&self) -> broadcast::Receiver<ReplicaEvent> {
        match self.inner.events.upgrade() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// The events as a [`Stream`] that ends when the follower ends. A
    /// subscriber more than 1,024 events behind gets
    /// [`ReplicaEvent::SubscriberLagged`] and goes on.
    pub fn events(&self) -> impl Stream<Item = ReplicaEvent> + Send + Unpin + 'static {
        BroadcastStream::new(self.subscribe()).map(|item| match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                ReplicaEvent::SubscriberLagged { missed }
            }
        })
    }

    /// Stops following: a poll in progress finishes, then the task ends.
    /// The database stays as it is, read-only. Stopping twice is no error.
    pub async fn stop(&self) -> Result<()> {
        let (reply, done) = oneshot::channel();
        if self.inner.tx.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
        self.join().await;
        Ok(())
    }

    async fn join(&self) {
        if let Some(task) = self.inner.task.lock().await.take() {
            let _ = task.await;
        }
    }

    /// Makes this replica the writer of its store: stops following and
    /// starts a [`BackupManager`] on the replica's database that continues
    /// the chain from the replica's cut, through the same code as
    /// [`BackupManager::restore_or_start`] (in incremental mode, on a
    /// directory, its next backup is a delta on the chain's full backup,
    /// which restore accepts; on object storage a full backup, see step 3).
    /// The database becomes writable.
    ///
    /// `config` must write to the store the replica follows. In order:
    ///
    /// 1. the store's single-writer lock is taken first (the lock file of a
    ///    directory, the lease of an object-store prefix): while the old
    ///    writer holds it, this fails with [`Error::Locked`] and the replica
    ///    goes on following — after a crash, a lease expires 1.5 × its time
    ///    to live after its last renewal, so try again;
    /// 2. a last poll brings the replica to the store's head; if it cannot
    ///    (a damaged or missing file: promoting would lose the changes after
    ///    it and fork the chain), this fails with that error, the lock is
    ///    released and the replica goes on following;
    /// 3. the manager starts, exactly as `restore_or_start` would have after
    ///    restoring the same chain (on object storage, under a new lease
    ///    fencing token, so its first backup is full).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use dictdb::replica::{Replica, ReplicaOptions};
    /// # use dictdb::{BackupConfig, BackupKind, BackupManager, DictDB, LocalStore};
    /// # use serde_json::json;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> dictdb::Result<()> {
    /// # let tmp = tempfile::tempdir().unwrap();
    /// # let dir = tmp.path().to_path_buf();
    /// # let config = || BackupConfig::new(&dir).incremental(true);
    /// # let primary = BackupManager::restore_or_start(config()).await?;
    /// # primary.db.create_table("users")?.insert(json!({"name": "Ada"}))?;
    /// # primary.manager.backup_full().await?;
    /// let replica = Replica::follow(Arc::new(LocalStore::open(&dir)?), ReplicaOptions::default()).await?;
    /// // ... the primary is gone ...
    /// # primary.manager.stop().await?;
    /// let promoted = replica.promote(config()).await?;
    /// promoted.db.table("users")?.insert(json!({"name": "Grace"}))?;
    /// let next = promoted.manager.backup_now().await?;
    /// assert_eq!(next.info().unwrap().kind, BackupKind::Delta);
    /// # promoted.manager.stop().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn promote(&self, config: BackupConfig) -> Result<Resumed> {
        let (store, lock) = BackupManager::open_for_writing(&config).await?;
        if store.location() != self.inner.store.location() {
            return Err(Error::Config(format!(
                "a replica of {} can only be promoted to write to the store it follows, not to {}",
                self.inner.store.location(),
                store.location()
            )));
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Command::Promote { reply })
            .await
            .map_err(|_| Error::ReplicaStopped)?;
        let pos = match answer.await.map_err(|_| Error::ReplicaStopped)? {
            Ok(pos) => pos,
            Err(e) => {
                // Given back now, so the next attempt (or the old writer
                // coming back) finds the store free.
                if let Some(lock) = lock {
                    lock.release().await;
                }
                return Err(e);
            }
        };
        self.join().await;
        let db = self.inner.db.clone();
        if let Some(seq) = pos.as_ref().and_then(|p| p.cursor.seq) {
            // The same number already, unless the writer started over from
            // another database (a history break): the chain's is what the
            // next delta continues.
            if db.seq() != seq {
                db.set_seq(seq);
            }
        }
        db.set_read_only(None);
        let restored = pos.map(|p| p.restored(db.clone()));
        info!(store = %store.location(), seq = ?db.seq(), "replica promoted to writer");
        Ok(BackupManager::continue_chain(
            db, store, config, lock, restored,
        ))
    }
}

/// The follower task: polls every `interval`, answers commands.
async fn run(
    mut follower: Follower,
    mut rx: mpsc::Receiver<Command>,
    interval: Duration,
    mut next: Instant,
) {
    let mut ending = None;
    loop {
        tokio::select! {
            biased;
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Command::Stop { reply }) => {
                    ending = Some(reply);
                    break;
                }
                Some(Command::Sync { reply }) => {
                    next = Instant::now() + interval;
                    let problem = follower.poll(next).await;
                    let _ = reply.send(problem);
                    follower.background();
                }
                Some(Command::Promote { reply }) => {
                    next = Instant::now() + interval;
                    match follower.poll(next).await {
                        None => {
                            let _ = reply.send(Ok(follower.pos.clone()));
                            break;
                        }
                        Some(problem) => {
                            let _ = reply.send(Err(problem.error));
                        }
                    }
                }
            },
            () = sleep_until(next) => {
                next = Instant::now() + interval;
                follower.poll(next).await;
                follower.background();
            }
        }
    }
    let status = Arc::clone(&follower.status);
    info!(store = %follower.store.location(), "replica stopped following");
    // Closes the event stream before anyone is told.
    drop(follower);
    status.ended();
    if let Some(reply) = ending {
        let _ = reply.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BackupConfig, BackupManager, LocalStore};
    use serde_json::json;

    /// `spare_copy(false)` never makes a copy of the index (the two modes
    /// differ only in memory and speed, so this is where it shows), and
    /// the default keeps one through every apply.
    #[tokio::test]
    async fn a_spare_copy_exists_exactly_when_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let db = DictDB::new();
        let users = db.create_table("users").unwrap();
        for i in 1..=200 {
            users.insert(json!({"id": i})).unwrap();
        }
        let manager = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
            .await
            .unwrap();
        manager.backup_full().await.unwrap();
        let store = || -> Arc<dyn BackupStore> { Arc::new(LocalStore::open(tmp.path()).unwrap()) };
        let quiet = ReplicaOptions::default().interval(Duration::from_secs(3600));
        let (mut without, _) = start(store(), &quiet.clone().spare_copy(false))
            .await
            .unwrap();
        let (mut with, _) = start(store(), &quiet).await.unwrap();
        assert!(!without.has_spare());
        assert!(with.has_spare());
        for round in 0..3 {
            users.update(round + 1, json!({"round": round})).unwrap();
            users.delete(100 + round).unwrap();
            manager.backup_delta().await.unwrap();
            for f in [&mut without, &mut with] {
                assert!(f.poll(Instant::now()).await.is_none());
                f.background();
                assert_eq!(f.db.seq(), db.seq(), "round {round}");
            }
            assert!(!without.has_spare(), "round {round}");
            assert!(with.has_spare(), "round {round}");
        }
        manager.stop().await.unwrap();
    }
}
