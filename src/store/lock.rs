//! The single-writer lock of a backup directory.
//!
//! Two managers writing to one directory interleave their chains, and each
//! one's retention deletes the other's files. A manager therefore holds an
//! advisory lock (`flock` on Unix, `LockFileEx` on Windows, through
//! `std::fs::File::try_lock`) on a file in the directory for its whole
//! lifetime. The kernel releases it when the process dies, however it dies,
//! so a crashed writer never leaves a stale lock behind.
//!
//! The lock file is hidden and never looks like a backup: listing, restore,
//! verify and retention never see it, and it is never deleted (deleting a
//! lock file while another process waits on it would let two writers in).

use std::any::Any;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use crate::error::{Error, Result};

/// How a lock that needs a request to be given up is released.
pub(crate) type Release =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The longest [`WriterLock::release`] waits for the store.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Name of the lock file in a backup directory.
pub(crate) const LOCK_FILE: &str = ".dictdb-lock";

/// Proof that this process is the only backup writer of a store, held until
/// dropped. Returned by [`BackupStore::lock_writer`](super::BackupStore::lock_writer).
pub struct WriterLock {
    description: String,
    _guard: Box<dyn Any + Send + Sync>,
    release: Option<Release>,
    token: Option<u64>,
}

impl fmt::Debug for WriterLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriterLock")
            .field("lock", &self.description)
            .field("fencing_token", &self.token)
            .finish()
    }
}

impl WriterLock {
    /// A lock held as long as `guard` lives (for stores of your own):
    /// `description` says what is locked, for messages.
    pub fn new(description: impl Into<String>, guard: impl Any + Send + Sync) -> WriterLock {
        WriterLock {
            description: description.into(),
            _guard: Box::new(guard),
            release: None,
            token: None,
        }
    }

    /// This lock with a fencing token: a number that grows with each
    /// acquisition of the store's lock by any writer. A manager writes it
    /// into every backup file's metadata; restore and verify refuse a chain
    /// whose files carry two different tokens, and a manager whose token
    /// differs from the one of the chain it finds starts a new chain with a
    /// full backup. An object-store lease has one; a directory's lock file
    /// has none (the kernel's lock needs no fencing).
    #[must_use]
    pub fn with_fencing_token(mut self, token: u64) -> WriterLock {
        self.token = Some(token);
        self
    }

    /// The fencing token, if the lock has one (see
    /// [`with_fencing_token`](Self::with_fencing_token)).
    pub fn fencing_token(&self) -> Option<u64> {
        self.token
    }

    /// A lock given up by a request (an object-store lease): `release` runs
    /// on [`release`](Self::release); dropped instead, the guard's own
    /// `Drop` gives it up in the background.
    #[cfg(feature = "object-store")]
    pub(crate) fn with_release(
        description: impl Into<String>,
        guard: impl Any + Send + Sync,
        release: Release,
    ) -> WriterLock {
        let mut lock = WriterLock::new(description, guard);
        lock.release = Some(release);
        lock
    }

    /// Gives the lock up and waits (at most a few seconds) until the store
    /// confirms, so a writer started right after finds it free. Dropping
    /// the lock releases it too, without waiting.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, release()).await;
        }
    }

    /// What is locked.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Takes the lock of the directory `dir`, or fails with
    /// [`Error::Locked`] when another writer (in this process or another)
    /// holds it. Blocking: call it from the blocking pool.
    pub(crate) fn lock_dir(dir: &Path) -> Result<WriterLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(path.display(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    location: dir.display().to_string(),
                    holder: holder(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(path.display(), e)),
        }
        // Who holds it, for the message a second writer gets. Not needed for
        // the lock itself, so a failure here is not an error.
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "pid {}", std::process::id()));
        Ok(WriterLock::new(path.display().to_string(), file))
    }
}

/// What the lock file says about its holder.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.take(64).read_to_string(&mut text);
    match text.trim() {
        "" => "another backup manager".into(),
        who => format!("another backup manager, {who}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_directory_fails_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let first = WriterLock::lock_dir(tmp.path()).unwrap();
        match WriterLock::lock_dir(tmp.path()) {
            Err(Error::Locked { location, holder }) => {
                assert_eq!(location, tmp.path().display().to_string());
                assert!(holder.contains(&std::process::id().to_string()), "{holder}");
            }
            other => panic!("{other:?}"),
        }
        drop(first);
        let again = WriterLock::lock_dir(tmp.path()).unwrap();
        assert!(again.description().ends_with(LOCK_FILE));
        assert!(tmp.path().join(LOCK_FILE).exists(), "never deleted");
    }
}
