//! Restoring a backup store, and verifying one.
//!
//! A restore picks the newest usable full backup, then applies, in order,
//! only the deltas written after it. Files written by this crate carry
//! their own name, sequence numbers, the name of their base, and a
//! checksum: every file and every link is checked, and a missing,
//! duplicated, foreign, renamed, truncated or damaged link is an error
//! naming the file — unless the caller asks to stop at the last consistent
//! point, and then the result says where and why it stopped. Directories
//! written by the Python original (no sequence numbers, no checksums)
//! restore by name order and are reported as unverified.
//!
//! Layout: [`chain`](self) holds the rules (which files form a chain, what a
//! file must say about itself, how links continue), `plan` picks the files
//! from their headers, `apply` decodes and applies them, `verify` runs the
//! same code over every chain of a store.

pub(crate) mod apply;
pub(crate) mod chain;
mod list;
pub(crate) mod plan;
mod verify;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

pub use list::{list_store, ListedFile, Listing};
pub use verify::{
    inspect, inspect_file, verify_dir, verify_store, ChainReport, FileReport, SoundChain,
    TableSummary, VerifyReport,
};

use crate::db::DictDB;
use crate::error::{Error, Result};
use crate::format::{FileFormat, Keys};
use crate::naming::BackupKind;
use crate::store::{BackupStore, LocalStore};
use chain::Catalog;

/// One file of a restore plan.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PlannedFile {
    /// File name.
    pub name: String,
    /// Full or delta.
    pub kind: BackupKind,
    /// Timestamp from the name (seconds since the epoch).
    pub timestamp: f64,
    /// Sequence range `(from, to]` covered, when the file records it (a full
    /// backup covers `(0, to]`).
    pub seq: Option<(u64, u64)>,
    /// Size in bytes.
    pub size: u64,
    /// The fencing token of the single-writer lease its writer held
    /// (object storage), when it records one. All the files of a chain
    /// carry the same token: restore refuses a chain with two.
    pub fencing_token: Option<u64>,
}

/// Why a lenient restore passed over or stopped at a file.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Stopped {
    /// The file that could not be used.
    pub file: String,
    /// What was wrong with it.
    pub error: Error,
}

/// The result of a restore.
#[derive(Debug)]
#[non_exhaustive]
pub struct Restored {
    /// The restored database.
    pub db: DictDB,
    /// The files applied, base first.
    pub applied: Vec<PlannedFile>,
    /// Records affected by each delta, in order.
    pub affected: Vec<usize>,
    /// Sequence number of the restored state, when the chain records one.
    pub seq: Option<u64>,
    /// Whether every applied file carried a checksum that matched.
    pub verified: bool,
    /// Newer full backups that could not be used (lenient mode), with the
    /// reason: the state restored is older than they claim to be.
    pub skipped: Vec<Stopped>,
    /// Set when a lenient restore stopped at the last consistent point.
    pub stopped: Option<Stopped>,
}

/// What a restore would do: the files, from their headers only.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Plan {
    /// The files a restore would apply, base first.
    pub files: Vec<PlannedFile>,
    /// Sequence number the restore would reach, when the chain records one.
    pub seq: Option<u64>,
    /// Newer full backups passed over (lenient mode), with the reason.
    pub skipped: Vec<Stopped>,
    /// Where a lenient restore would stop, and why.
    pub stopped: Option<Stopped>,
    /// Whether every file applied carried a checksum that matched, as
    /// [`Restored::verified`]: known when the plan read every file
    /// ([`Restore::plan`]), `None` when it read headers only.
    pub verified: Option<bool>,
}

/// A restore of a backup store, with options.
///
/// # Examples
///
/// ```no_run
/// use std::time::{Duration, SystemTime};
/// use dictdb::restore::Restore;
///
/// # async fn f() -> dictdb::Result<()> {
/// // Everything up to an hour ago, stopping at a damaged link instead of failing.
/// let restored = Restore::from_dir("./backups")?
///     .until_time(SystemTime::now() - Duration::from_secs(3600))
///     .stop_at_last_consistent(true)
///     .run()
///     .await?;
/// println!("{} files applied, stopped: {:?}", restored.applied.len(), restored.stopped);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Restore {
    store: Arc<dyn BackupStore>,
    keys: Keys,
    until_time: Option<SystemTime>,
    until_seq: Option<u64>,
    lenient: bool,
    allow_unverified: bool,
    /// Key fields of tables that deltas of the Python original change
    /// without the chain holding them (see [`Restore::key_field`]).
    key_fields: BTreeMap<String, String>,
}

/// Restores the directory `dir`: newest full backup plus the deltas after it,
/// every link checked. Shorthand for `Restore::from_dir(dir)?.run().await`.
pub async fn restore_dir(dir: impl AsRef<Path>) -> Result<Restored> {
    Restore::from_dir(dir)?.run().await
}

impl Restore {
    /// A restore from any store.
    pub fn new(store: Arc<dyn BackupStore>) -> Restore {
        Restore {
            store,
            keys: Keys::default(),
            until_time: None,
            until_seq: None,
            lenient: false,
            allow_unverified: false,
            key_fields: BTreeMap::new(),
        }
    }

    /// A restore from a local directory (which must exist).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Restore> {
        Ok(Restore::new(Arc::new(LocalStore::existing(dir.as_ref())?)))
    }

    /// Only files written at or before `time` (the time in their names) are
    /// used. The first delta after the limit must still continue the chain:
    /// if it proves that a file before the limit is missing, the restore
    /// fails (lenient: stops and says so).
    #[must_use]
    pub fn until_time(mut self, time: SystemTime) -> Restore {
        self.until_time = Some(time);
        self
    }

    /// Stop at the last file whose cut is at or below `seq` (checked the
    /// same way as [`until_time`](Self::until_time)).
    #[must_use]
    pub fn until_seq(mut self, seq: u64) -> Restore {
        self.until_seq = Some(seq);
        self
    }

    /// Instead of failing on a broken or damaged link, stop at the last
    /// consistent point and say why in [`Restored::stopped`]; a damaged
    /// newest full backup is passed over for an older one and listed in
    /// [`Restored::skipped`] (default: fail). Only damage is passed over: a
    /// store that does not answer ([`Error::StoreUnavailable`], after its
    /// retries) or refuses a read ([`Error::Store`]) fails the restore even
    /// in lenient mode, since the file may be sound.
    #[must_use]
    pub fn stop_at_last_consistent(mut self, lenient: bool) -> Restore {
        self.lenient = lenient;
        self
    }

    /// Accepts files without checksum or dictdb metadata (as the Python
    /// original writes them) even where files of this library come before
    /// them in the store. By default such files are accepted only when no
    /// file of this library comes before them: in a store this library
    /// writes to, a file without a checksum is more likely damaged than the
    /// original's.
    #[must_use]
    pub fn allow_unverified(mut self, allow: bool) -> Restore {
        self.allow_unverified = allow;
        self
    }

    /// The key field of `table`, for deltas of the Python original that
    /// change a table the chain does not hold; may be given for several
    /// tables.
    ///
    /// The original writes a table created after its last full backup only
    /// into its deltas, as upserts and deletes, without the table's key
    /// field (and its own restore skips such tables, losing them). Here a
    /// checksum-less delta that changes a table the restored database does
    /// not hold creates it with the key field given here; without one, the
    /// delta is refused as damaged, naming the table and this option (a
    /// lenient restore stops before it). The option is never consulted for
    /// files of this library (their deltas record the tables they create)
    /// nor for tables the database already holds.
    ///
    /// ```no_run
    /// # async fn f() -> dictdb::Result<()> {
    /// let restored = dictdb::restore::Restore::from_dir("./python-backups")?
    ///     .key_field("events", "event_id")
    ///     .run()
    ///     .await?;
    /// assert!(restored.db.has_table("events"));
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn key_field(mut self, table: impl Into<String>, field: impl Into<String>) -> Restore {
        self.key_fields.insert(table.into(), field.into());
        self
    }

    /// Decrypt encrypted (`.age`) files with `identity` (feature
    /// `encryption`); may be given several times, and any identity that
    /// opens a file is used. Without one, an encrypted file is refused with
    /// [`DecryptFailure::MissingIdentity`](crate::DecryptFailure); with only
    /// identities of other recipients, with
    /// [`DecryptFailure::WrongIdentity`](crate::DecryptFailure). Verify,
    /// inspect and list through this `Restore` use the identities too.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use dictdb::encryption::Identity;
    /// use dictdb::restore::Restore;
    ///
    /// # async fn f() -> dictdb::Result<()> {
    /// let mut restore = Restore::from_dir("./backups")?;
    /// for id in Identity::from_file("backup-key.txt")? {
    ///     restore = restore.identity(id);
    /// }
    /// let restored = restore.run().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "encryption")]
    #[must_use]
    pub fn identity(self, identity: crate::encryption::Identity) -> Restore {
        self.identities([identity])
    }

    /// [`identity`](Self::identity) for each of `identities` (what
    /// [`Identity::from_file`](crate::encryption::Identity::from_file)
    /// returns).
    #[cfg(feature = "encryption")]
    #[must_use]
    pub fn identities(
        mut self,
        identities: impl IntoIterator<Item = crate::encryption::Identity>,
    ) -> Restore {
        let mut all = self.keys.identities();
        all.extend(identities);
        self.keys = Keys::new(all);
        self
    }

    /// [`verify_store`] with this restore's identities: checks every chain
    /// and every file of the store.
    pub async fn verify(&self) -> Result<VerifyReport> {
        verify::verify_with(self).await
    }

    /// The newest chain of the store that restores soundly: full backups
    /// are tried newest first (of full backups with the same time, the one
    /// the next delta names as its base first), each chain restored
    /// strictly and without limits as [`run`](Self::run) would (every byte
    /// read and checked, the database built and dropped), until one
    /// restores. What `dictdb-backup prune` keeps, with every newer chain,
    /// before it deletes anything. Reads every file of the chains it
    /// tries, and nothing older.
    ///
    /// A store that does not send a file, or an encrypted file no identity
    /// of this `Restore` opens, is an error: nothing can be said of that
    /// chain.
    pub async fn newest_sound_chain(&self) -> Result<SoundChain> {
        verify::newest_sound(self).await
    }

    /// [`inspect`] with this restore's identities: checks one file.
    pub async fn inspect(&self, name: &str, format: Option<FileFormat>) -> Result<FileReport> {
        verify::inspect_with(self, name, format).await
    }

    /// [`list_store`] with this restore's identities: lists the store from
    /// the files' headers (an encrypted file's first chunk is decrypted;
    /// without an identity it is listed as encrypted).
    pub async fn list(&self) -> Result<Listing> {
        list::list_with(self).await
    }

    /// A dry run: what [`run`](Self::run) would apply and reach, found by
    /// doing everything a restore does (every byte read, every check made,
    /// the database built) and then dropping the database. It fails exactly
    /// when a restore would.
    pub async fn plan(&self) -> Result<Plan> {
        let r = self.run().await?;
        Ok(Plan {
            files: r.applied,
            seq: r.seq,
            skipped: r.skipped,
            stopped: r.stopped,
            verified: Some(r.verified),
        })
    }

    /// The files a restore would apply, from each file's header only (a few
    /// kilobytes read per file): names, kinds and links are checked as
    /// [`run`](Self::run) checks them, but checksums and records are not
    /// read, so a file damaged past its header shows only in
    /// [`plan`](Self::plan), [`run`](Self::run) and verify. What `list`
    /// shows.
    pub async fn quick_plan(&self) -> Result<Plan> {
        let catalog = self.catalog().await?;
        let mut skipped = Vec::new();
        let chosen = plan::choose(self, &catalog, &[], &mut skipped).await?;
        Ok(chosen.into_plan(&catalog, skipped))
    }

    /// The store's files, with this restore's identities.
    pub(crate) async fn catalog(&self) -> Result<Catalog> {
        Catalog::load(Arc::clone(&self.store), self.keys.clone()).await
    }

    /// Restores.
    pub async fn run(&self) -> Result<Restored> {
        let catalog = self.catalog().await?;
        let mut skipped = Vec::new();
        let mut excluded = Vec::new();
        loop {
            let chosen = plan::choose(self, &catalog, &excluded, &mut skipped).await?;
            match apply::load(self, &catalog, &chosen, None).await {
                Ok(mut restored) => {
                    restored.skipped = skipped;
                    return Ok(restored);
                }
                Err(apply::Failed::Base(error)) if self.lenient && !error.is_store_failure() => {
                    skipped.push(Stopped {
                        file: catalog.entries[chosen.base].file_name().to_string(),
                        error,
                    });
                    excluded.push(chosen.base);
                }
                Err(apply::Failed::Base(e) | apply::Failed::Other(e)) => return Err(e),
            }
        }
    }
}
