//! A backup directory on the local file system.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tempfile::NamedTempFile;

use super::{
    check_name, BackupStore, BackupWriter, FileReader, SkippedEntry, StoreListing, StoredFile,
    WriterLock, LOCK_FILE,
};
use crate::error::{Error, Result};

/// Prefix of temporary files; never one of ours or the original's names.
pub(crate) const TMP_PREFIX: &str = ".dictdb-tmp-";

/// A directory holding backup files.
///
/// Files are written to a hidden temporary name in the same directory,
/// `fsync`ed, renamed to their final name, and the directory is `fsync`ed:
/// a crash leaves either the complete file or no file under the final name.
/// Blocking file-system calls run on tokio's blocking pool, never on the
/// async worker threads.
#[derive(Clone, Debug)]
pub struct LocalStore {
    dir: Arc<PathBuf>,
}

impl LocalStore {
    /// Opens (and creates if missing) a backup directory.
    ///
    /// A path that exists but is not a directory is an error.
    pub fn open(dir: impl Into<PathBuf>) -> Result<LocalStore> {
        let dir = dir.into();
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Config(format!(
                "backup directory {} exists and is not a directory",
                dir.display()
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
        Ok(LocalStore { dir: Arc::new(dir) })
    }

    /// A store over an existing directory, without creating it (for reading).
    pub fn existing(dir: impl Into<PathBuf>) -> Result<LocalStore> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(Error::io(
                dir.display(),
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        Ok(LocalStore { dir: Arc::new(dir) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Store {
            path: "blocking task".into(),
            message: e.to_string(),
        })?
}

/// Whether `name` looks like a backup's (trusted or not): such an entry that
/// is not a regular file is reported rather than silently left out.
fn backup_shaped(name: &str) -> bool {
    !matches!(
        crate::naming::BackupName::classify(name),
        crate::naming::NameCheck::Other
    )
}

/// `fsync` of a directory, so a rename in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).map_err(|e| Error::io(dir.display(), e))?;
    d.sync_all().map_err(|e| Error::Sync {
        path: dir.display().to_string(),
        source: e,
    })
}

/// Writes a file atomically and durably: temporary name, `fsync`, rename,
/// directory `fsync`. Used by [`crate::DictDB::save`], which may replace its
/// target.
pub(crate) fn write_atomic<T>(
    path: &Path,
    produce: impl FnOnce(&mut dyn FnMut(Vec<u8>) -> Result<()>) -> Result<T>,
) -> Result<T> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path.display(), std::io::Error::other("not a file path")))?
        .to_string_lossy()
        .to_string();
    let mut w = TmpFile::create(&dir, &name)?;
    let out = produce(&mut |chunk| w.write(&chunk))?;
    w.commit(true)?;
    Ok(out)
}

/// Whether `name` is a temporary file written by a process that no longer
/// runs (names carry the writer's process id). Only decided on Linux, where
/// `/proc` tells; elsewhere nothing is ever considered left over.
fn leftover_of_dead_process(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    if pid == std::process::id() || !cfg!(target_os = "linux") {
        return false;
    }
    !Path::new("/proc").join(pid.to_string()).exists()
}

/// A temporary file on its way to a final name: a `tempfile` named
/// `.dictdb-tmp-<pid>-<random>-<name>` in the same directory, removed when
/// dropped uncommitted.
struct TmpFile {
    dir: PathBuf,
    dest: PathBuf,
    file: NamedTempFile,
    /// Bytes written so far, and how many of them were handed to the
    /// kernel's writeback.
    written: u64,
    handed: u64,
}

/// How many written bytes are handed to the kernel's writeback at a time.
///
/// A large file's pages would otherwise all wait in memory for the final
/// `fsync`, which then writes the whole file while the backup waits.
/// Starting writeback every few megabytes lets the disk work while the rest
/// of the document is produced, so the `fsync` only finds the tail
/// (RocksDB's `bytes_per_sync`). Durability is unchanged: only the `fsync`
/// vouches for the file.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Asks the kernel to start writing `len` bytes of `file` from `offset`,
/// without waiting. A hint: errors are left to the `fsync` that follows.
#[cfg(target_os = "linux")]
fn start_writeback(file: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor this file owns and keeps
    // open for the call's duration; no memory is passed.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &fs::File, _offset: u64, _len: u64) {}

impl TmpFile {
    fn create(dir: &Path, name: &str) -> Result<TmpFile> {
        let file = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{}-", std::process::id()))
            .suffix(&format!("-{name}"))
            .tempfile_in(dir)
            // Errors name the file being written, not its temporary name.
            .map_err(|e| Error::io(dir.join(name).display(), e))?;
        Ok(TmpFile {
            dir: dir.to_path_buf(),
            dest: dir.join(name),
            file,
            written: 0,
            handed: 0,
        })
    }

    fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file
            .write_all(chunk)
            .map_err(|e| Error::io(self.dest.display(), e))?;
        self.written += chunk.len() as u64;
        if self.written - self.handed >= WRITEBACK_STEP {
            start_writeback(self.file.as_file(), self.handed, self.written - self.handed);
            self.handed = self.written;
        }
        Ok(())
    }

    /// `fsync`, rename, `fsync` the directory. `replace` lets `save`
    /// overwrite its target; backups never replace an existing file: the
    /// rename itself refuses to (`renameat2(RENAME_NOREPLACE)` on Linux), so
    /// no other writer can slip in between a check and the rename.
    fn commit(self, replace: bool) -> Result<()> {
        let TmpFile {
            dir, dest, file, ..
        } = self;
        file.as_file().sync_all().map_err(|e| Error::Sync {
            path: dest.display().to_string(),
            source: e,
        })?;
        let persisted = if replace {
            file.persist(&dest)
        } else {
            file.persist_noclobber(&dest)
        };
        // On error the temporary file comes back inside the error and is
        // removed when it drops.
        persisted.map_err(|e| Error::io(dest.display(), e.error))?;
        if let Err(e) = sync_dir(&dir) {
            // The file is complete but its name may not survive a crash:
            // report the failure and leave nothing we cannot vouch for.
            let _ = fs::remove_file(&dest);
            return Err(e);
        }
        Ok(())
    }
}

struct LocalWriter {
    tmp: Option<TmpFile>,
}

#[async_trait]
impl BackupWriter for LocalWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let mut tmp = self.tmp.take().ok_or_else(|| Error::Store {
            path: "writer".into(),
            message: "write after a failed write".into(),
        })?;
        let tmp = blocking(move || tmp.write(&chunk).map(|()| tmp)).await?;
        self.tmp = Some(tmp);
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let tmp = self.tmp.take().ok_or_else(|| Error::Store {
            path: "writer".into(),
            message: "commit after a failed write".into(),
        })?;
        blocking(move || tmp.commit(false)).await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(tmp) = self.tmp.take() {
            let _ = blocking(move || {
                drop(tmp);
                Ok(())
            })
            .await;
        }
    }
}

#[async_trait]
impl BackupStore for LocalStore {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        Ok(self.list_all().await?.files)
    }

    /// Regular files, and symbolic links to regular files (a backup moved
    /// to another disk and linked back under its name is read through the
    /// link; deleting it removes the link only). Any other entry named like
    /// a backup (a dangling link, a link to a directory or a device, a
    /// directory, a FIFO) is reported as skipped, never read.
    async fn list_all(&self) -> Result<StoreListing> {
        let dir = Arc::clone(&self.dir);
        blocking(move || {
            let mut out = Vec::new();
            let mut skipped = Vec::new();
            for entry in fs::read_dir(&*dir).map_err(|e| Error::io(dir.display(), e))? {
                let entry = entry.map_err(|e| Error::io(dir.display(), e))?;
                let name = entry.file_name().to_string_lossy().to_string();
                if name.starts_with(TMP_PREFIX) || name == LOCK_FILE {
                    continue;
                }
                let io = |e| Error::io(entry.path().display(), e);
                let kind = entry.file_type().map_err(io)?;
                let (meta, link) = if kind.is_symlink() {
                    match fs::metadata(entry.path()) {
                        Ok(m) => (m, true),
                        Err(e) => {
                            if backup_shaped(&name) {
                                skipped.push(SkippedEntry::new(
                                    &name,
                                    None,
                                    format!("a symbolic link whose target cannot be read: {e}"),
                                ));
                            }
                            continue;
                        }
                    }
                } else {
                    (entry.metadata().map_err(io)?, false)
                };
                if meta.is_file() {
                    out.push(StoredFile {
                        name,
                        size: meta.len(),
                    });
                } else if backup_shaped(&name) {
                    let what = if meta.is_dir() {
                        "a directory"
                    } else {
                        "a FIFO, socket or device"
                    };
                    let reason = if link {
                        format!("a symbolic link to {what}, not a regular file")
                    } else {
                        format!("{what}, not a regular file")
                    };
                    skipped.push(SkippedEntry::new(&name, None, reason));
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            skipped.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(StoreListing::new(out, skipped))
        })
        .await
    }

    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        self.path(name)?;
        let dir = Arc::clone(&self.dir);
        let name = name.to_string();
        let tmp = blocking(move || TmpFile::create(&dir, &name)).await?;
        Ok(Box::new(LocalWriter { tmp: Some(tmp) }))
    }

    async fn open(&self, name: &str) -> Result<FileReader> {
        let path = self.path(name)?;
        blocking(move || {
            let f = File::open(&path).map_err(|e| Error::io(path.display(), e))?;
            Ok(Box::new(f) as FileReader)
        })
        .await
    }

    async fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        blocking(move || {
            let io = |e| Error::io(path.display(), e);
            let mut f = File::open(&path).map_err(io)?;
            f.seek(SeekFrom::Start(range.start)).map_err(io)?;
            let mut out = Vec::new();
            f.take(range.end.saturating_sub(range.start))
                .read_to_end(&mut out)
                .map_err(io)?;
            Ok(out)
        })
        .await
    }

    async fn stat(&self, name: &str) -> Result<Option<StoredFile>> {
        let path = self.path(name)?;
        let name = name.to_string();
        blocking(move || match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(StoredFile {
                name,
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path.display(), e)),
        })
        .await
    }

    async fn lock_writer(&self) -> Result<Option<WriterLock>> {
        let dir = Arc::clone(&self.dir);
        blocking(move || WriterLock::lock_dir(&dir).map(Some)).await
    }

    async fn remove_leftovers(&self) -> Result<Vec<String>> {
        let dir = Arc::clone(&self.dir);
        blocking(move || {
            let mut removed = Vec::new();
            for entry in fs::read_dir(&*dir).map_err(|e| Error::io(dir.display(), e))? {
                let Ok(entry) = entry else { continue };
                let name = entry.file_name().to_string_lossy().to_string();
                if leftover_of_dead_process(&name) && fs::remove_file(entry.path()).is_ok() {
                    removed.push(name);
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        let dir = Arc::clone(&self.dir);
        blocking(move || {
            match fs::remove_file(&path) {
                Ok(()) => {}
                // Deleting is idempotent, as on object stores.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(Error::io(path.display(), e)),
            }
            sync_dir(&dir)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file larger than several writeback steps, written in uneven
    /// chunks: the kernel was asked to start writing it along the way, and
    /// what lands under the final name is exactly what was written.
    #[test]
    fn a_large_file_is_handed_to_writeback_along_the_way_and_lands_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut tmp = TmpFile::create(dir.path(), "big.json").unwrap();
        let mut expected = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut handed = Vec::new();
        while expected.len() < 3 * WRITEBACK_STEP as usize + 12_345 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 1 + (state % 700_000) as usize;
            let chunk: Vec<u8> = (0..len).map(|i| (state as usize + i) as u8).collect();
            tmp.write(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
            handed.push(tmp.handed);
        }
        // Handed on in at least two steps, in order, and never more than a
        // step behind what was written.
        let steps = handed.windows(2).filter(|w| w[0] < w[1]).count();
        assert!(steps >= 2, "{steps} steps");
        assert!(handed.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(tmp.written, expected.len() as u64);
        assert!(tmp.written - tmp.handed < WRITEBACK_STEP);
        tmp.commit(false).unwrap();
        assert_eq!(fs::read(dir.path().join("big.json")).unwrap(), expected);
    }
}
