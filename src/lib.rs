//! # dictdb
//!
//! An in-memory, dict-style database for Tokio services — named tables of
//! JSON records keyed by a primary key — with a [`BackupManager`] that keeps
//! it safe on disk: periodic full backups, incremental delta backups,
//! debounced change-triggered backups, failure reporting and restore.
//!
//! It re-creates the backup system of the Python project DictDB and stays
//! file-compatible with it: a JSON backup chain written by the original
//! restores here, and one written here restores with the original's
//! `DictDB.load` and `apply_delta`. Where the original loses data (dropped
//! notifications, changes made during a backup, missed events, tables created
//! after the last full backup, reused keys, torn files), dictdb does not.
//!
//! ## Quick start
//!
//! ```
//! use std::time::Duration;
//! use dictdb::{BackupConfig, BackupManager, DictDB, restore_dir};
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> dictdb::Result<()> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("backups");
//! let db = DictDB::new();
//! let users = db.create_table("users")?;
//!
//! let backups = BackupManager::start(
//!     &db,
//!     BackupConfig::new(&dir)
//!         .incremental(true)
//!         .backup_interval(Duration::from_secs(60)),
//! ).await?;
//!
//! users.insert(json!({"name": "Alice"}))?;
//! backups.backup_full().await?;           // a full backup
//! users.insert(json!({"name": "Bob"}))?;
//! backups.notify_change();                 // debounced, never lost
//! backups.backup_delta().await?;           // only what changed
//! backups.stop().await?;
//!
//! let restored = restore_dir(&dir).await?;
//! assert_eq!(restored.db.table("users")?.len()?, 2);
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//!
//! - [`db`](DictDB): the database handle, [`Table`] CRUD, the [`Mutation`]
//!   stream ([`DictDB::subscribe`]) and O(1) [`Snapshot`]s.
//! - [`Record`], [`Key`]: how records and primary keys are stored (compact
//!   MessagePack, field order kept).
//! - [`FileFormat`]: JSON in the Python layout, or MessagePack; with
//!   [`DictDB::save`], [`DictDB::load`] and [`apply_delta`].
//! - [`backup`]: the [`BackupManager`] actor (start, or
//!   [`restore_or_start`](BackupManager::restore_or_start) to continue a
//!   store's chain; [`shutdown`](BackupManager::shutdown) with a deadline),
//!   its [`BackupConfig`] (schedule, change-count triggers, backoff),
//!   [`BackupEvent`]s (also as a `Stream`) and [`BackupStatus`];
//!   [`backup::retention`]: the [`RetentionPolicy`] that prunes old backups,
//!   and its [`RetentionPlan`].
//! - [`store`]: the [`BackupStore`] seam, the [`LocalStore`] directory and,
//!   with the `object-store` feature, `ObjectBackupStore` (S3 and friends)
//!   and `store::open_url`.
//! - [`restore`]: restoring a backup directory (or any store), verifying it.
//! - [`replica`]: a read-only [`DictDB`] that follows a store's backups
//!   ([`replica::Replica::follow`]) and can be promoted to writer.
//! - [`Error`]: the one error type.
//!
//! ## Features
//!
//! - `cli` (default): the `dictdb-backup` command (`list`, `verify`,
//!   `restore`, `inspect`).
//! - `object-store`: backups in object storage through the `object_store`
//!   crate.
//! - `metrics`: counters, histograms and a gauge of the backup manager
//!   through the `metrics` facade crate.
//! - `encryption`: backups encrypted to age X25519 recipients
//!   (`BackupConfig::encrypt_to`, the `dictdb::encryption` keys,
//!   `Restore::identity`). Compression ([`Compression`]) needs no feature.
//!
//! ## Guarantees
//!
//! A backup call returns `Ok` only once its file is durable; a failed backup
//! leaves no file under a final name and keeps its changes for the next one;
//! restore checks every checksum and every link of the chain. A manager is
//! the only writer of its directory (a lock file), never writes a delta on
//! a full backup that is gone from its store, refuses to start behind its
//! store, backs off after failures, and shuts down by a deadline. The README's
//! "Guarantees" section states exactly what is and is not promised.

#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod background;
pub mod backup;
mod db;
#[cfg(feature = "encryption")]
pub mod encryption;
mod error;
mod format;
mod key;
mod naming;
mod record;
pub mod replica;
pub mod restore;
pub mod store;

pub use backup::{
    BackupConfig, BackupEvent, BackupInfo, BackupManager, BackupOutcome, BackupStatus, Resumed,
    RetentionPlan, RetentionPolicy,
};
pub use db::{
    apply_delta, Change, ChangeSet, DictDB, Mutation, PreparedChanges, SaveInfo, Snapshot, Table,
    TableChanges, TableSnapshot, Upsert, DEFAULT_EVENT_CAPACITY,
};
pub use error::{DecryptFailure, Error, Result};
pub use format::{Compression, FileFormat, Integrity};
pub use key::Key;
pub use naming::{printable_name, BackupKind, BackupName, NameCheck, NameFormat, LATEST_SECS};
pub use record::Record;
pub use restore::{restore_dir, verify_dir, Restored};
pub use store::{BackupStore, LocalStore};
