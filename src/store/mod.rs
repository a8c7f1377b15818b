//! The storage seam: where backup files live.
//!
//! Every byte a [`crate::BackupManager`] writes and every file restore reads
//! goes through a [`BackupStore`]. [`LocalStore`] is a directory on disk;
//! with the `object-store` feature, `ObjectBackupStore` keeps backups in S3
//! or any other `object_store` backend (`open_url("s3://bucket/prefix")`).
//! Tests plug in stores that fail on demand the same way.

#[cfg(feature = "object-store")]
mod lease;
pub(crate) mod local;
mod lock;
#[cfg(feature = "object-store")]
mod object;
#[cfg(feature = "object-store")]
mod object_errors;
#[cfg(feature = "object-store")]
mod s3_list;

use std::fmt;
use std::io::Read;
use std::ops::Range;

use async_trait::async_trait;

pub use local::LocalStore;
pub use lock::WriterLock;
pub(crate) use lock::LOCK_FILE;
#[cfg(feature = "object-store")]
pub use object::{open_url, open_url_with, ObjectBackupStore, ObjectStoreOptions, MIN_PART_SIZE};

use crate::error::{Error, Result};

/// One file (or object) in a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    /// The file name, without any directory or prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// An entry of a store that cannot be a backup file: an object key that
/// is not a plain name (`svc/..`, `svc//x`, a control character), or a name
/// shaped like a backup that is not trusted (see
/// [`crate::BackupName::classify`]). Never read, restored, ordered or
/// deleted; listings, `verify` and the backup manager report it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SkippedEntry {
    /// The name or key, printable: control characters escaped
    /// ([`crate::printable_name`]).
    pub name: String,
    /// Size in bytes, when the listing says.
    pub size: Option<u64>,
    /// Why it is skipped.
    pub reason: String,
}

impl SkippedEntry {
    /// An entry called `name` (escaped here), skipped for `reason`.
    pub fn new(name: &str, size: Option<u64>, reason: impl Into<String>) -> SkippedEntry {
        SkippedEntry {
            name: crate::naming::printable_name(name),
            size,
            reason: reason.into(),
        }
    }

    /// The backup name it carries, when it is one a writer could make (a
    /// symbolic link to a disk that did not mount, a directory named like a
    /// backup): such an entry cannot be read, but it keeps its place among
    /// the backups, in restore, verify and retention alike.
    pub fn backup_name(&self) -> Option<crate::naming::BackupName> {
        crate::naming::BackupName::parse(&self.name)
    }

    /// The entry as a file of the store (size 0 when the listing did not
    /// say), for what plans by names.
    pub fn as_file(&self) -> StoredFile {
        StoredFile {
            name: self.name.clone(),
            size: self.size.unwrap_or(0),
        }
    }
}

impl fmt::Display for SkippedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// What [`BackupStore::list_all`] found: the files, and what was skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreListing {
    /// Every file, as [`BackupStore::list`] returns them.
    pub files: Vec<StoredFile>,
    /// Entries that are not files of the store (keys object storage holds
    /// but no plain name can address).
    pub skipped: Vec<SkippedEntry>,
}

impl StoreListing {
    /// A listing of `files` and `skipped` entries.
    pub fn new(files: Vec<StoredFile>, skipped: Vec<SkippedEntry>) -> StoreListing {
        StoreListing { files, skipped }
    }

    /// The files, then the skipped entries named like backups
    /// ([`SkippedEntry::backup_name`]): what retention plans on. An
    /// unreadable full backup thereby keeps its deltas in its chain (kept or
    /// deleted whole, as any other) instead of leaving them to pass for
    /// deltas with no full backup.
    pub fn with_unreadable_backups(&self) -> Vec<StoredFile> {
        let mut out = self.files.clone();
        out.extend(
            self.skipped
                .iter()
                .filter(|s| s.backup_name().is_some())
                .map(SkippedEntry::as_file),
        );
        out
    }

    /// Splits off the files named like backups whose names are not trusted
    /// ([`NameCheck::Refused`](crate::NameCheck::Refused)) into
    /// [`skipped`](Self::skipped), with the reason.
    pub fn refuse_untrusted_names(mut self) -> StoreListing {
        let mut files = Vec::with_capacity(self.files.len());
        for f in std::mem::take(&mut self.files) {
            match crate::naming::BackupName::classify(&f.name) {
                crate::naming::NameCheck::Refused(reason) => {
                    self.skipped
                        .push(SkippedEntry::new(&f.name, Some(f.size), reason));
                }
                _ => files.push(f),
            }
        }
        self.files = files;
        self
    }
}

/// Where backup files are kept.
///
/// Implementations must make a file visible under its final name only once
/// it is complete and durable ([`BackupWriter::commit`]); a failed or
/// abandoned write must leave nothing under the final name, unless commit
/// fails with [`Error::CommitUncertain`] (the store did not answer the
/// request that makes the file visible).
#[async_trait]
pub trait BackupStore: Send + Sync + fmt::Debug + 'static {
    /// Where the store points (a directory path or a URL), for messages.
    fn location(&self) -> String;

    /// Every file in the store (temporary files excluded).
    async fn list(&self) -> Result<Vec<StoredFile>>;

    /// Every file in the store, and the entries that cannot be files of it
    /// ([`SkippedEntry`]: object keys no plain name addresses), so that
    /// listings can report them. One stray entry never fails the listing.
    ///
    /// The default is [`list`](Self::list) with nothing skipped; object
    /// storage overrides it.
    async fn list_all(&self) -> Result<StoreListing> {
        Ok(StoreListing::new(self.list().await?, Vec::new()))
    }

    /// Starts writing the file `name`. Nothing is visible under `name` until
    /// the writer commits.
    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>>;

    /// Opens a file to be read as a stream.
    ///
    /// The reader is a blocking [`std::io::Read`], meant for a blocking
    /// thread (restore and verify decode on tokio's blocking pool): reading
    /// it on an async worker thread would block that thread, and an object
    /// store's reader panics there.
    async fn open(&self, name: &str) -> Result<FileReader>;

    /// Reads the bytes of `range` of a file (fewer when the file ends
    /// first): what listing needs of a file is its first few kilobytes.
    async fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>>;

    /// Reads a whole file into memory. Restore and verify never do (they
    /// stream with [`open`](Self::open)); this is for small files and tests.
    async fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut reader = self.open(name).await?;
        let path = name.to_string();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            reader
                .read_to_end(&mut out)
                .map_err(|e| Error::io(&path, e))?;
            Ok(out)
        })
        .await
        .map_err(|e| Error::Store {
            path: name.to_string(),
            message: e.to_string(),
        })?
    }

    /// The file `name` if it exists (`None` if it does not), without reading
    /// it: a metadata call on a directory, a `HEAD` request on object
    /// storage. A backup manager calls it before writing a delta and again
    /// before committing it, to make sure the full backup the delta builds
    /// on is still there.
    ///
    /// The default lists the whole store; implementations should override it.
    async fn stat(&self, name: &str) -> Result<Option<StoredFile>> {
        check_name(name)?;
        Ok(self.list().await?.into_iter().find(|f| f.name == name))
    }

    /// Takes the store's single-writer lock, held until the returned guard
    /// is dropped: a backup manager holds it for its lifetime, so a second
    /// manager on the same store fails to start ([`Error::Locked`]).
    ///
    /// `Ok(None)` means the store cannot detect a second writer (the
    /// default); a store that can but finds the lock taken returns
    /// [`Error::Locked`]. A [`LocalStore`] locks a file in its directory;
    /// an `ObjectBackupStore` holds a lease object renewed with conditional
    /// `PUT`s (see its documentation).
    async fn lock_writer(&self) -> Result<Option<WriterLock>> {
        Ok(None)
    }

    /// Deletes a file. Deleting a file that does not exist is not an error.
    async fn delete(&self, name: &str) -> Result<()>;

    /// Removes what writers that died left behind (temporary files of
    /// processes that no longer exist), and returns what it removed. Called
    /// when a backup manager starts; stores with nothing to clean keep the
    /// default, which does nothing.
    async fn remove_leftovers(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// A file opened for reading by [`BackupStore::open`]: a blocking reader.
pub type FileReader = Box<dyn Read + Send>;

/// A file being written to a [`BackupStore`].
#[async_trait]
pub trait BackupWriter: Send {
    /// Appends a chunk.
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()>;

    /// Makes the file durable and visible under its final name. On error,
    /// nothing is left under the final name, except after
    /// [`Error::CommitUncertain`]: then the file may be there, complete.
    async fn commit(self: Box<Self>) -> Result<()>;

    /// Discards everything written so far.
    async fn abort(self: Box<Self>);
}

/// Checks a file name handed to a store: a plain name, never a path.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
        || name.len() > 255;
    if bad {
        return Err(Error::Store {
            path: format!("{name:?}"),
            message: "not a plain file name (path separators, `..`, control characters and empty names are refused)".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_escape_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "a\0b",
            "a\nb",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("dictdb_backup_1_000001.json").is_ok());
    }

    /// Only a plain backup name makes a skipped entry an unreadable backup:
    /// object keys no plain name addresses stay skipped, whatever they end in.
    #[test]
    fn only_a_plain_backup_name_makes_a_skipped_entry_a_backup() {
        let name = "dictdb_backup_1795682694_728491.json";
        let entry = |n: &str| SkippedEntry::new(n, Some(7), "unreadable");
        let plain = entry(name);
        assert_eq!(
            plain.backup_name().map(|b| b.to_string()).as_deref(),
            Some(name)
        );
        assert_eq!(
            plain.as_file(),
            StoredFile {
                name: name.into(),
                size: 7
            }
        );
        for key in [
            format!("svc//{name}"),
            format!("{name}/.."),
            format!("../{name}"),
            format!("{name}\n"),
            "dictdb_backup_9999999999_000000.json".to_string(),
        ] {
            assert!(entry(&key).backup_name().is_none(), "{key:?}");
        }
        let listing = StoreListing::new(
            vec![StoredFile {
                name: "a".into(),
                size: 1,
            }],
            vec![entry(name), entry(&format!("svc//{name}"))],
        );
        let planned: Vec<String> = listing
            .with_unreadable_backups()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(planned, ["a", name]);
    }
}
