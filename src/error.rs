//! The crate's one error type.

use std::io;

use crate::key::Key;

/// Every fallible public function returns this error.
///
/// Messages are lower-case and name what they are about (the table, the key,
/// the file), so they can be logged as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `create_table` was called with a name that is already taken.
    #[error("table `{0}` already exists")]
    TableExists(String),

    /// The named table does not exist (or was dropped since the handle was taken).
    #[error("table `{0}` does not exist")]
    TableNotFound(String),

    /// A table name that could not be used safely (empty, too long, a path
    /// separator, `..`, NUL or another control character).
    #[error(
        "invalid table name `{}`: {reason}",
        crate::naming::printable_name(name)
    )]
    InvalidTableName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A record that is not a JSON object.
    #[error("a record must be a JSON object, got {0}")]
    NotAnObject(&'static str),

    /// A record that cannot be stored (nested too deep to be saved and
    /// loaded again, for instance).
    #[error("invalid record: {0}")]
    InvalidRecord(String),

    /// A primary key of a type other than integer or string, or out of range.
    #[error("invalid primary key for field `{field}`: {reason}")]
    InvalidKey {
        /// The primary-key field.
        field: String,
        /// What was wrong with it.
        reason: String,
    },

    /// An insert whose key is already present (or appears twice in one batch).
    #[error("duplicate primary key {key} in table `{table}`")]
    DuplicateKey {
        /// The table.
        table: String,
        /// The key that is already taken.
        key: Key,
    },

    /// An update of a key that is not in the table.
    #[error("no record with key {key} in table `{table}`")]
    RecordNotFound {
        /// The table.
        table: String,
        /// The missing key.
        key: Key,
    },

    /// An update that would change a record's primary key.
    #[error("cannot change primary key `{field}` of record {key} in table `{table}`")]
    PrimaryKeyChange {
        /// The table.
        table: String,
        /// The primary-key field.
        field: String,
        /// The record's key.
        key: Key,
    },

    /// A file format name that is not supported (`"pickle"` among them).
    #[error("unsupported file format `{name}`: {hint}")]
    UnsupportedFormat {
        /// The name that was given.
        name: String,
        /// What to use instead.
        hint: &'static str,
    },

    /// An I/O error, with the file or directory it happened on.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// `fsync` failed: the data may not be on stable storage, and retrying the
    /// same `fsync` would not prove otherwise (the PostgreSQL lesson). The
    /// backup manager answers with a full backup next time.
    #[error("fsync failed on {path}, the data may not be on disk: {source}")]
    Sync {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The last step of writing a backup file (fsync and rename, or completing
    /// an upload) failed: the file may or may not exist. The backup manager
    /// answers with a full backup next time.
    #[error("{0}")]
    CommitUncertain(#[source] Box<Error>),

    /// A file that cannot be read as a dictdb/DictDB document: truncated,
    /// malformed, of the wrong shape, or holding bad records.
    #[error("{file}: {reason}")]
    Corrupt {
        /// The file (name or path).
        file: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A file whose recorded checksum does not match its content.
    #[error("{file}: checksum mismatch (recorded {recorded}, computed {computed})")]
    ChecksumMismatch {
        /// The file.
        file: String,
        /// The checksum stored in the file.
        recorded: String,
        /// The checksum of the bytes actually read.
        computed: String,
    },

    /// The backup chain is broken (a missing, duplicated or foreign link).
    #[error("broken backup chain at {file}: {reason}")]
    Chain {
        /// The file where the chain breaks.
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// Nothing to restore from.
    #[error("no usable full backup in {0}")]
    NoBackup(String),

    /// An invalid `BackupConfig` (zero interval, zero max deltas, a directory
    /// path that is a file, ...).
    #[error("invalid backup configuration: {0}")]
    Config(String),

    /// The backup manager's actor has ended; the handle can no longer be used.
    #[error("the backup manager has stopped")]
    ManagerStopped,

    /// An encrypted (`.age`) file that could not be decrypted: no identity
    /// was given, none of those given is a recipient of the file, or the
    /// encrypted bytes are damaged. `kind` tells which; the message names
    /// the file and what to do.
    #[error("{file}: {reason}")]
    Decrypt {
        /// The file.
        file: String,
        /// Which of the three failures it is.
        kind: DecryptFailure,
        /// What happened, in a sentence.
        reason: String,
    },

    /// A backup store operation failed (object storage, an injected fault, ...).
    #[error("backup store error on {path}: {message}")]
    Store {
        /// The object or file.
        path: String,
        /// What the store reported.
        message: String,
    },

    /// A request to the backup store got no usable answer after its retries:
    /// a network error, a timeout, or a server error (5xx). This says
    /// nothing about the data: the file may be sound. A lenient restore
    /// ([`Restore::stop_at_last_consistent`](crate::restore::Restore::stop_at_last_consistent))
    /// fails on it rather than passing the file over as damaged. The message
    /// names the setting that cut the request short, when one did.
    #[error("backup store did not answer on {path}: {message}")]
    StoreUnavailable {
        /// The object or file.
        path: String,
        /// What happened, and the retry and timeout settings that applied.
        message: String,
    },
    /// A backup manager was started on a store that holds a newer backup
    /// than its database (a higher sequence number, or any full backup while
    /// the database holds no record): its backups would bury the newer ones
    /// (and retention would delete them). Restore first
    /// (`BackupManager::restore_or_start`), or opt in with
    /// `BackupConfig::allow_store_ahead(true)`.
    #[error(
        "backup store {store} is ahead of the database: its newest backup {newest} is at sequence {}, the database at {db_seq}; \
         restore it first (BackupManager::restore_or_start) or opt in with BackupConfig::allow_store_ahead(true)",
        store_seq.map_or_else(|| "unknown (written by the Python original)".to_string(), |s| s.to_string())
    )]
    StoreAhead {
        /// The store.
        store: String,
        /// The newest backup file of the store's newest chain.
        newest: String,
        /// Its sequence number, when it records one.
        store_seq: Option<u64>,
        /// The database's sequence number.
        db_seq: u64,
    },

    /// Another backup manager (in this process or another) holds the
    /// store's single-writer lock.
    #[error("backup store {location} is locked by {holder}: only one backup manager may write to a store")]
    Locked {
        /// The store (a directory).
        location: String,
        /// Who holds the lock, as far as the lock file tells.
        holder: String,
    },

    /// `BackupManager::shutdown` ran out of time: the backup in flight was
    /// aborted, and the final full backup was not written (or not confirmed).
    #[error("shutdown deadline of {timeout:?} passed: {detail}")]
    ShutdownDeadline {
        /// The timeout given to `shutdown`.
        timeout: std::time::Duration,
        /// What was cut short.
        detail: String,
    },

    /// The backup manager's actor panicked (a bug, or a panicking
    /// `BackupStore`); it is no longer running.
    #[error("the backup manager's actor panicked: {0}")]
    ManagerPanicked(String),

    /// A write to a read-only database: a [`crate::replica::Replica`]'s
    /// database changes only by the backups it follows, until it is
    /// promoted. The message says whose database it is.
    #[error("the database is read-only: {0}")]
    ReadOnly(String),

    /// The replica has stopped following its store (stopped, promoted, or
    /// its task ended); its database stays as it was, read-only.
    #[error("the replica has stopped following its store")]
    ReplicaStopped,

    /// [`crate::PreparedChanges::commit`] found that the tables it changes
    /// (or the database's sequence number) moved since the change set was
    /// prepared: nothing was changed; prepare it again.
    #[error("the database changed since the change set was prepared; nothing was applied (prepare it again)")]
    Conflict,

    /// A record that cannot be converted to or from the requested Rust type
    /// (`Table::insert_as`, `Table::get_as`).
    #[error("record {key} of table `{table}` does not convert to the requested type: {message}")]
    RecordType {
        /// The table.
        table: String,
        /// The record's key (`?` when the record had none yet).
        key: String,
        /// What serde reported.
        message: String,
    },
}

/// Why an encrypted file could not be decrypted (see [`Error::Decrypt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecryptFailure {
    /// The file is encrypted and no identity was given.
    MissingIdentity,
    /// Identities were given, but the file is encrypted to other recipients.
    WrongIdentity,
    /// The encrypted bytes are damaged or were tampered with (or truncated):
    /// the file is refused, never read as anything else.
    Damaged,
}

impl std::fmt::Display for DecryptFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecryptFailure::MissingIdentity => "no identity",
            DecryptFailure::WrongIdentity => "wrong identity",
            DecryptFailure::Damaged => "damaged",
        })
    }
}

impl Error {
    #[cfg(feature = "encryption")]
    pub(crate) fn decrypt(
        file: impl std::fmt::Display,
        kind: DecryptFailure,
        reason: impl std::fmt::Display,
    ) -> Self {
        Error::Decrypt {
            file: file.to_string(),
            kind,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn corrupt(file: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn chain(file: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Chain {
            file: file.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Whether this error is the store's rather than the data's: a store
    /// that did not answer ([`Error::StoreUnavailable`]) or refused a request
    /// ([`Error::Store`]). A lenient restore skips damaged files, never
    /// these: the file may be sound.
    pub fn is_store_failure(&self) -> bool {
        match self {
            Error::Store { .. } | Error::StoreUnavailable { .. } => true,
            Error::CommitUncertain(e) => e.is_store_failure(),
            _ => false,
        }
    }

    /// Whether this error means the data may not have reached stable storage
    /// (a failed `fsync`): after such an error the next backup must be full.
    pub(crate) fn is_durability_unknown(&self) -> bool {
        matches!(self, Error::Sync { .. } | Error::CommitUncertain(_))
    }
}

impl Clone for Error {
    /// Errors are cloned to reach a caller, the event stream and the failure
    /// callback at once. `io::Error` is not `Clone`: its kind and message are
    /// kept.
    fn clone(&self) -> Self {
        fn io_clone(e: &io::Error) -> io::Error {
            io::Error::new(e.kind(), e.to_string())
        }
        match self {
            Error::TableExists(s) => Error::TableExists(s.clone()),
            Error::TableNotFound(s) => Error::TableNotFound(s.clone()),
            Error::InvalidTableName { name, reason } => Error::InvalidTableName {
                name: name.clone(),
                reason,
            },
            Error::NotAnObject(s) => Error::NotAnObject(s),
            Error::InvalidRecord(s) => Error::InvalidRecord(s.clone()),
            Error::InvalidKey { field, reason } => Error::InvalidKey {
                field: field.clone(),
                reason: reason.clone(),
            },
            Error::DuplicateKey { table, key } => Error::DuplicateKey {
                table: table.clone(),
                key: key.clone(),
            },
            Error::RecordNotFound { table, key } => Error::RecordNotFound {
                table: table.clone(),
                key: key.clone(),
            },
            Error::PrimaryKeyChange { table, field, key } => Error::PrimaryKeyChange {
                table: table.clone(),
                field: field.clone(),
                key: key.clone(),
            },
            Error::UnsupportedFormat { name, hint } => Error::UnsupportedFormat {
                name: name.clone(),
                hint,
            },
            Error::Io { path, source } => Error::Io {
                path: path.clone(),
                source: io_clone(source),
            },
            Error::Sync { path, source } => Error::Sync {
                path: path.clone(),
                source: io_clone(source),
            },
            Error::CommitUncertain(e) => Error::CommitUncertain(e.clone()),
            Error::Corrupt { file, reason } => Error::Corrupt {
                file: file.clone(),
                reason: reason.clone(),
            },
            Error::ChecksumMismatch {
                file,
                recorded,
                computed,
            } => Error::ChecksumMismatch {
                file: file.clone(),
                recorded: recorded.clone(),
                computed: computed.clone(),
            },
            Error::Chain { file, reason } => Error::Chain {
                file: file.clone(),
                reason: reason.clone(),
            },
            Error::NoBackup(s) => Error::NoBackup(s.clone()),
            Error::Config(s) => Error::Config(s.clone()),
            Error::ManagerStopped => Error::ManagerStopped,
            Error::Decrypt { file, kind, reason } => Error::Decrypt {
                file: file.clone(),
                kind: *kind,
                reason: reason.clone(),
            },
            Error::Store { path, message } => Error::Store {
                path: path.clone(),
                message: message.clone(),
            },
            Error::StoreUnavailable { path, message } => Error::StoreUnavailable {
                path: path.clone(),
                message: message.clone(),
            },
            Error::StoreAhead {
                store,
                newest,
                store_seq,
                db_seq,
            } => Error::StoreAhead {
                store: store.clone(),
                newest: newest.clone(),
                store_seq: *store_seq,
                db_seq: *db_seq,
            },
            Error::Locked { location, holder } => Error::Locked {
                location: location.clone(),
                holder: holder.clone(),
            },
            Error::ShutdownDeadline { timeout, detail } => Error::ShutdownDeadline {
                timeout: *timeout,
                detail: detail.clone(),
            },
            Error::ManagerPanicked(s) => Error::ManagerPanicked(s.clone()),
            Error::ReadOnly(s) => Error::ReadOnly(s.clone()),
            Error::Conflict => Error::Conflict,
            Error::ReplicaStopped => Error::ReplicaStopped,
            Error::RecordType {
                table,
                key,
                message,
            } => Error::RecordType {
                table: table.clone(),
                key: key.clone(),
                message: message.clone(),
            },
        }
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
