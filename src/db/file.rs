//! Saving and loading whole databases, and applying one delta file (seed S11).

use std::fs::File;
use std::path::Path;

use super::DictDB;
use crate::error::{Error, Result};
use crate::format::transform::{self, Sealer};
use crate::format::{self, Body, Doc, FileFormat, Keys, Layers, Sealing};
use crate::store::local::write_atomic;

/// Files at least this large are indexed on a second thread while parsed.
const PIPELINE_BYTES: u64 = 4 << 20;

/// What [`DictDB::save`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SaveInfo {
    /// Sequence number of the snapshot that was saved.
    pub seq: u64,
    /// Number of records written.
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// The embedded checksum (`xxh3-64:…`).
    pub checksum: String,
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Opens a file for decoding (decompressing it when its name ends in
/// `.zst`); whether it is large enough to pipeline.
fn open(path: &Path) -> Result<(Box<dyn std::io::Read + Send>, bool)> {
    let f = File::open(path).map_err(|e| Error::io(path.display(), e))?;
    let (layers, _) = Layers::of_path(path);
    // A compressed file holds many times its size.
    let scale = if layers.zstd { 16 } else { 1 };
    let large = f
        .metadata()
        .map(|m| m.len().saturating_mul(scale) >= PIPELINE_BYTES)
        .unwrap_or(false);
    let read = transform::open(Box::new(f), layers, &Keys::default(), &path_str(path))?;
    Ok((read, large))
}

impl DictDB {
    /// Saves the whole database to `path`, atomically and durably (temporary
    /// file in the same directory, `fsync`, rename, `fsync` of the directory).
    ///
    /// The JSON layout is the Python original's, which loads it with
    /// `DictDB.load(path, "json")`. The file records its own name, so a
    /// copy under another name in a backup directory is recognised as one.
    /// A path ending in `.zst` (`db.json.zst`) is compressed with zstd at
    /// the default level, as compressed backups are; a path ending in `.age`
    /// is refused (encrypted files are written by a
    /// [`BackupManager`](crate::BackupManager), which knows the recipients).
    /// This call blocks on serialisation and disk I/O; in async code use
    /// [`save_async`](Self::save_async).
    pub fn save(&self, path: impl AsRef<Path>, format: FileFormat) -> Result<SaveInfo> {
        let path = path.as_ref();
        let (layers, _) = Layers::of_path(path);
        if layers.age {
            return Err(Error::Config(format!(
                "{}: save does not encrypt; a BackupManager with \
                 BackupConfig::encrypt_to writes encrypted backups",
                path.display()
            )));
        }
        let sealing = Sealing {
            compression: if layers.zstd {
                format::Compression::zstd()
            } else {
                format::Compression::None
            },
            ..Sealing::default()
        };
        let snapshot = self.snapshot();
        // Like every file of ours, a save names itself: copied elsewhere
        // under another name, it is not taken for what that name says.
        let name = path.file_name().map(|n| n.to_string_lossy().to_string());
        // Both cores while nobody writes (a save runs on the caller's
        // thread, not the backup manager's paced one).
        let start = self.activity();
        let idle = || self.activity() == start;
        let (written, bytes) = write_atomic(path, |emit| {
            let mut sealer = Sealer::new(&sealing, &path_str(path), emit)?;
            let written = format::encode(
                format,
                &Doc::Full {
                    snapshot: &snapshot,
                    name: name.as_deref(),
                    token: None,
                },
                &mut |chunk| sealer.write(chunk),
                Some(&idle),
            )?;
            let bytes = sealer.finish()?;
            Ok((written, bytes))
        })?;
        Ok(SaveInfo {
            seq: snapshot.seq(),
            records: written.records,
            bytes,
            checksum: written.checksum,
        })
    }

    /// [`save`](Self::save) on tokio's blocking pool: serialisation and I/O
    /// never run on the async worker threads.
    pub async fn save_async(&self, path: impl AsRef<Path>, format: FileFormat) -> Result<SaveInfo> {
        let db = self.clone();
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || db.save(&path, format))
            .await
            .map_err(|e| Error::io("save task", std::io::Error::other(e.to_string())))?
    }

    /// Loads a database saved by [`save`](Self::save), by a backup, or by the
    /// Python original (`DictDB.save(path, "json")`).
    ///
    /// Every value is kept exactly (integers stay integers, `-0.0`, 64-bit
    /// edges, unicode). A truncated or malformed file, a record without a
    /// valid key, duplicate keys, or a wrong top-level shape is an error that
    /// names the file. A file of ours whose checksum does not match is
    /// refused. The file is read as a stream, never whole; a path ending in
    /// `.zst` is decompressed as it is read.
    pub fn load(path: impl AsRef<Path>, format: FileFormat) -> Result<DictDB> {
        let path = path.as_ref();
        let (f, large) = open(path)?;
        let (_, _, snapshot) = format::decode_full(f, format, &path_str(path), large)?;
        Ok(DictDB::from_snapshot(snapshot))
    }

    /// [`load`](Self::load) on tokio's blocking pool.
    pub async fn load_async(path: impl AsRef<Path>, format: FileFormat) -> Result<DictDB> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || DictDB::load(&path, format))
            .await
            .map_err(|e| Error::io("load task", std::io::Error::other(e.to_string())))?
    }
}

/// Applies one delta file to `db` (seed S11) and returns the number of
/// records affected: each upsert counts, each delete of a present key counts,
/// deletes of absent keys are ignored.
///
/// The file's format comes from its extension. Upserts replace whole
/// records. Tables the delta created are created and tables it dropped are
/// dropped (the Python original skips both). Each table's next
/// auto-assigned key moves past every key the delta inserts and past the
/// counter the writer recorded, so keys are never reused. Deltas written by
/// the Python original (no `dictdb` section) apply too.
///
/// The delta is applied atomically ([`DictDB::apply`]): on any error nothing
/// changes.
///
/// # Examples
///
/// ```no_run
/// let db = dictdb::DictDB::load("backups/dictdb_backup_1795682694_728491.json", dictdb::FileFormat::Json)?;
/// let n = dictdb::apply_delta(&db, "backups/dictdb_delta_1795682694_732481.json")?;
/// println!("{n} records affected");
/// # Ok::<(), dictdb::Error>(())
/// ```
pub fn apply_delta(db: &DictDB, path: impl AsRef<Path>) -> Result<usize> {
    let path = path.as_ref();
    let name = path_str(path);
    let format = format::format_of_path(path)?;
    let (f, _) = open(path)?;
    let decoded = format::decode(f, format, &name, false)?;
    match decoded.body {
        Body::Delta(changes) => db.apply_named(&changes, &name),
        Body::Full(_) => Err(Error::corrupt(
            &name,
            "this is a full backup, not a delta (load it instead)",
        )),
    }
}
