//! Backup manager configuration, with the Python original's options and defaults.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::retention::RetentionPolicy;
use super::triggers::Rule;
use crate::error::{Error, Result};
use crate::format::{Compression, FileFormat, Sealing};
use crate::store::{BackupStore, LocalStore};

/// zstd worker threads by default (see [`BackupConfig::compression_threads`]).
const DEFAULT_ZSTD_THREADS: u32 = 1;

/// The failure callback: `(error, consecutive_failures)`.
pub type FailureCallback = Arc<dyn Fn(&Error, u32) + Send + Sync + 'static>;

#[derive(Clone)]
pub(crate) enum Target {
    Dir(PathBuf),
    Store(Arc<dyn BackupStore>),
}

/// Configuration of a [`crate::BackupManager`] (seed S2).
///
/// Every option has the Python original's default; setters say theirs.
/// Validation happens in [`crate::BackupManager::start`], which returns an
/// error rather than failing later.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dictdb::{BackupConfig, FileFormat};
///
/// let config = BackupConfig::new("./backups")
///     .backup_interval(Duration::from_secs(60))
///     .file_format(FileFormat::MessagePack)
///     .min_backup_interval(Duration::from_secs(10))
///     .incremental(true)
///     .max_deltas_before_full(20)
///     .on_backup_failure(|err, n| eprintln!("backup failed ({n}x): {err}"));
/// ```
#[derive(Clone)]
pub struct BackupConfig {
    pub(crate) target: Target,
    pub(crate) backup_interval: Duration,
    pub(crate) file_format: FileFormat,
    pub(crate) min_backup_interval: Duration,
    pub(crate) on_backup_failure: Option<FailureCallback>,
    pub(crate) incremental: bool,
    pub(crate) max_deltas_before_full: u32,
    pub(crate) retention: Option<RetentionPolicy>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) max_retry_interval: Option<Duration>,
    pub(crate) allow_store_ahead: bool,
    /// Key fields of tables only the Python original's deltas hold, for
    /// the restore on start ([`BackupConfig::restore_key_field`]).
    pub(crate) restore_key_fields: Vec<(String, String)>,
    /// Compression and encryption of the files written.
    pub(crate) sealing: Sealing,
    /// Why the recipients given to `encrypt_to` cannot be used.
    #[cfg(feature = "encryption")]
    pub(crate) recipients_error: Option<String>,
    /// Identities that read the store's encrypted files (restore on start,
    /// the check that the database is not behind the store).
    #[cfg(feature = "encryption")]
    pub(crate) identities: Vec<crate::encryption::Identity>,
}

impl fmt::Debug for BackupConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Dir(d) => d.display().to_string(),
            Target::Store(s) => s.location(),
        };
        f.debug_struct("BackupConfig")
            .field("target", &target)
            .field("backup_interval", &self.backup_interval)
            .field("file_format", &self.file_format)
            .field("min_backup_interval", &self.min_backup_interval)
            .field("on_backup_failure", &self.on_backup_failure.is_some())
            .field("incremental", &self.incremental)
            .field("max_deltas_before_full", &self.max_deltas_before_full)
            .field("retention", &self.retention)
            .field("backup_after", &self.rules)
            .field("max_retry_interval", &self.retry_cap())
            .field("allow_store_ahead", &self.allow_store_ahead)
            .field("restore_key_fields", &self.restore_key_fields)
            .field("compression", &self.sealing.compression)
            .field("encrypted", &self.sealing.layers().age)
            .finish()
    }
}

impl BackupConfig {
    /// Backups in the directory `backup_dir` (created if missing).
    pub fn new(backup_dir: impl Into<PathBuf>) -> Self {
        Self::with_target(Target::Dir(backup_dir.into()))
    }

    /// Backups in any [`BackupStore`] (object storage, a test store, ...).
    pub fn with_store(store: Arc<dyn BackupStore>) -> Self {
        Self::with_target(Target::Store(store))
    }

    fn with_target(target: Target) -> Self {
        BackupConfig {
            target,
            backup_interval: Duration::from_secs(300),
            file_format: FileFormat::Json,
            min_backup_interval: Duration::from_secs(5),
            on_backup_failure: None,
            incremental: false,
            max_deltas_before_full: 10,
            retention: None,
            rules: Vec::new(),
            max_retry_interval: None,
            allow_store_ahead: false,
            restore_key_fields: Vec::new(),
            sealing: Sealing {
                compression: Compression::None,
                threads: DEFAULT_ZSTD_THREADS,
                #[cfg(feature = "encryption")]
                recipients: None,
            },
            #[cfg(feature = "encryption")]
            recipients_error: None,
            #[cfg(feature = "encryption")]
            identities: Vec::new(),
        }
    }

    /// Time between periodic backups. Default: 300 s. Must not be zero.
    #[must_use]
    pub fn backup_interval(mut self, interval: Duration) -> Self {
        self.backup_interval = interval;
        self
    }

    /// Format of full backups and deltas. Default: JSON.
    #[must_use]
    pub fn file_format(mut self, format: FileFormat) -> Self {
        self.file_format = format;
        self
    }

    /// Shortest time between a backup and one triggered by
    /// [`notify_change`](crate::BackupManager::notify_change); notifications
    /// inside the window are deferred to its end, never dropped. Default: 5 s.
    #[must_use]
    pub fn min_backup_interval(mut self, interval: Duration) -> Self {
        self.min_backup_interval = interval;
        self
    }

    /// Called after each failed backup with the error and the number of
    /// consecutive failures. A panicking callback is caught and logged.
    /// Default: none.
    #[must_use]
    pub fn on_backup_failure<F>(mut self, callback: F) -> Self
    where
        F: Fn(&Error, u32) + Send + Sync + 'static,
    {
        self.on_backup_failure = Some(Arc::new(callback));
        self
    }

    /// Write deltas instead of full backups (with a full backup every
    /// `max_deltas_before_full` deltas). Default: false.
    #[must_use]
    pub fn incremental(mut self, incremental: bool) -> Self {
        self.incremental = incremental;
        self
    }

    /// Deltas written before the next backup is a full one. Default: 10.
    /// Must not be zero.
    #[must_use]
    pub fn max_deltas_before_full(mut self, n: u32) -> Self {
        self.max_deltas_before_full = n;
        self
    }

    /// Retention: after each successful full backup, delete the old backups
    /// that `policy` does not keep (see [`RetentionPolicy`]). The newest
    /// chain, files that are not backups and pickle files are never deleted;
    /// a failure is reported as [`BackupEvent::PruneFailed`](crate::BackupEvent::PruneFailed),
    /// never fatal. Default: keep everything.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use dictdb::{BackupConfig, RetentionPolicy};
    ///
    /// let config = BackupConfig::new("./backups").retention(
    ///     RetentionPolicy::default()
    ///         .keep_within(Duration::from_secs(2 * 86_400))
    ///         .keep_daily(7)
    ///         .keep_weekly(4),
    /// );
    /// ```
    #[must_use]
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = Some(policy);
        self
    }

    /// Shorthand for `retention(RetentionPolicy::default().keep_last(n))`:
    /// keep the newest `n` full backups and the deltas that build on them.
    /// Zero keeps everything, as `keep_last(0)` does. Default: keep
    /// everything.
    #[must_use]
    pub fn keep_full_backups(self, n: usize) -> Self {
        self.retention(RetentionPolicy::default().keep_last(n))
    }

    /// Change-count trigger, Redis-style (`save <seconds> <changes>`): back
    /// up once at least `changes` changes were made since the last backup
    /// AND at least `within` has passed since that backup started (since
    /// the manager started, before its first backup). Any number of rules
    /// may be given; the first one satisfied fires. A change is one
    /// committed mutation (a record inserted, updated or deleted, a table
    /// created or dropped), counted by the manager from the mutation stream:
    /// no [`notify_change`](crate::BackupManager::notify_change) needed.
    ///
    /// Like notifications, a triggered backup never starts within
    /// `min_backup_interval` of the previous attempt. Redis's defaults read
    /// `.backup_after(1, 3600 s).backup_after(100, 300 s).backup_after(10_000, 60 s)`.
    /// Default: no rule. `changes` must be at least 1.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dictdb::BackupConfig;
    ///
    /// let config = BackupConfig::new("./backups")
    ///     .backup_after(1, Duration::from_secs(900))      // save 900 1
    ///     .backup_after(10_000, Duration::from_secs(60)); // save 60 10000
    /// ```
    #[must_use]
    pub fn backup_after(mut self, changes: u64, within: Duration) -> Self {
        self.rules.push(Rule { changes, within });
        self
    }

    /// The longest wait between automatic attempts after failures. After
    /// the n-th failure in a row, automatic backups (periodic, notified,
    /// triggered, retries) wait `min_backup_interval * 2^(n-1)`, capped at
    /// this; a success resets the wait. Asked-for backups (`backup_now`,
    /// `backup_full`, ...) never wait. Default: `backup_interval`. Must not
    /// be zero.
    #[must_use]
    pub fn max_retry_interval(mut self, interval: Duration) -> Self {
        self.max_retry_interval = Some(interval);
        self
    }

    /// Lets the manager start although its store holds a newer backup than
    /// the database (a higher sequence number, or a full backup while the
    /// database holds no record). Its backups then bury the newer ones:
    /// restore picks the newest full backup, which will be this manager's,
    /// and `keep_full_backups` deletes the older chains. Default: false, and
    /// [`BackupManager::start`](crate::BackupManager::start) fails with
    /// [`Error::StoreAhead`].
    #[must_use]
    pub fn allow_store_ahead(mut self, allow: bool) -> Self {
        self.allow_store_ahead = allow;
        self
    }

    pub(crate) fn retry_cap(&self) -> Duration {
        self.max_retry_interval.unwrap_or(self.backup_interval)
    }

    /// Compress backup files (full backups and deltas). Default:
    /// [`Compression::None`], plain files the Python original reads.
    ///
    /// With [`Compression::zstd()`] files are named `….json.zst` (or
    /// `….msgpack.zst`) and compressed as they are written, on the
    /// serialisation thread, never held whole. Restore, verify, inspect,
    /// list and `dictdb-backup` read them transparently; the embedded
    /// checksum still covers the plaintext document, and the compressed
    /// stream carries zstd's checksum and one of its own (see the README's
    /// "Compression, encryption, retention"). A level outside zstd's range
    /// is refused by [`BackupManager::start`](crate::BackupManager::start).
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::{BackupConfig, Compression};
    ///
    /// let config = BackupConfig::new("./backups")
    ///     .incremental(true)
    ///     .compression(Compression::Zstd { level: 6 });
    /// ```
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        self.sealing.compression = compression;
        self
    }

    /// zstd worker threads used to compress (0: compress on the
    /// serialisation thread itself). Default: 1, which on two cores
    /// compresses alongside serialisation instead of after it (see the
    /// README's "Performance"). The workers run at the serialiser's lower
    /// priority.
    #[must_use]
    pub fn compression_threads(mut self, threads: u32) -> Self {
        self.sealing.threads = threads;
        self
    }

    /// An identity that decrypts the store's encrypted files (feature
    /// `encryption`), for what a manager reads of its store:
    /// [`restore_or_start`](crate::BackupManager::restore_or_start) restores
    /// with it, and [`start`](crate::BackupManager::start) reads the newest
    /// chain's sequence number with it. Without one, a manager that only
    /// holds the recipients' public keys still starts on an encrypted store,
    /// but can only refuse to start over it with an empty database (the
    /// sequence numbers are encrypted). Default: none.
    #[cfg(feature = "encryption")]
    #[must_use]
    pub fn identity(mut self, identity: crate::encryption::Identity) -> Self {
        self.identities.push(identity);
        self
    }

    /// For [`restore_or_start`](crate::BackupManager::restore_or_start) on
    /// a store the Python original wrote: the key field of `table`, a table
    /// the original created after its last full backup (its deltas hold it
    /// without its key field). See
    /// [`Restore::key_field`](crate::restore::Restore::key_field); may be
    /// given for several tables. Default: none (such a store is refused,
    /// naming the table).
    #[must_use]
    pub fn restore_key_field(mut self, table: impl Into<String>, field: impl Into<String>) -> Self {
        self.restore_key_fields.push((table.into(), field.into()));
        self
    }

    /// A restore of `store` with this configuration's identities and
    /// restore key fields.
    pub(crate) fn restore_of(&self, store: Arc<dyn BackupStore>) -> crate::restore::Restore {
        let mut restore = crate::restore::Restore::new(store);
        for (table, field) in &self.restore_key_fields {
            restore = restore.key_field(table, field);
        }
        #[cfg(feature = "encryption")]
        {
            restore = restore.identities(self.identities.iter().cloned());
        }
        restore
    }

    /// Encrypt backup files to `recipients`, age X25519 public keys
    /// (feature `encryption`). Any one of their identities decrypts a file.
    /// Files are named `….json.age` (`….json.zst.age` when compressed too:
    /// compression comes first) and are standard age files; nothing in
    /// plaintext ever reaches the store (encryption runs in the stream
    /// before the store's writer: no plaintext temporary file, no plaintext
    /// upload part). An empty list is refused by
    /// [`BackupManager::start`](crate::BackupManager::start). Default: not
    /// encrypted.
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::encryption::{Identity, Recipient};
    /// use dictdb::{BackupConfig, Compression};
    ///
    /// # let key = Identity::generate().to_public().to_string();
    /// let recipient: Recipient = key.parse()?;   // "age1…"
    /// let config = BackupConfig::new("./backups")
    ///     .compression(Compression::zstd())
    ///     .encrypt_to([recipient]);
    /// # Ok::<(), dictdb::Error>(())
    /// ```
    #[cfg(feature = "encryption")]
    #[must_use]
    pub fn encrypt_to(
        mut self,
        recipients: impl IntoIterator<Item = crate::encryption::Recipient>,
    ) -> Self {
        let list: Vec<_> = recipients.into_iter().collect();
        self.recipients_error = list
            .is_empty()
            .then(|| "encrypt_to was given no recipient".to_string());
        self.sealing.recipients = Some(Arc::new(list));
        self
    }

    /// Checks the options and opens the store.
    pub(crate) fn open(&self) -> Result<Arc<dyn BackupStore>> {
        self.sealing.compression.check()?;
        #[cfg(feature = "encryption")]
        if let Some(e) = &self.recipients_error {
            return Err(Error::Config(e.clone()));
        }
        if self.backup_interval.is_zero() {
            return Err(Error::Config(
                "backup_interval must be greater than zero".into(),
            ));
        }
        if self.max_deltas_before_full == 0 {
            return Err(Error::Config(
                "max_deltas_before_full must be at least 1".into(),
            ));
        }
        if self.rules.iter().any(|r| r.changes == 0) {
            return Err(Error::Config(
                "backup_after needs at least 1 change (use backup_interval for time alone)".into(),
            ));
        }
        if self.max_retry_interval == Some(Duration::ZERO) {
            return Err(Error::Config(
                "max_retry_interval must be greater than zero".into(),
            ));
        }
        Ok(match &self.target {
            Target::Dir(dir) => Arc::new(LocalStore::open(dir)?),
            Target::Store(s) => Arc::clone(s),
        })
    }
}
