//! Verifying a store: every chain restored the way a restore restores it,
//! every file judged the way a restore judges it; and inspecting one file.

use std::path::Path;
use std::sync::Arc;

use super::apply::{self, check_file};
use super::chain::{Catalog, Entry};
use super::Restore;
use crate::error::{Error, Result};
use crate::format::{self, Body, Decoded, Header, Integrity};
use crate::naming::BackupKind;
use crate::store::{BackupStore, LocalStore, StoredFile};

/// One table of a file, as [`FileReport`] counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TableSummary {
    /// The table's name.
    pub name: String,
    /// Records (full backup) or upserts (delta).
    pub records: u64,
    /// Deletes (delta).
    pub deletes: u64,
}

/// The check of one file.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FileReport {
    /// File name.
    pub name: String,
    /// Full or delta (`None`: not a backup file, ignored).
    pub kind: Option<BackupKind>,
    /// Size in bytes.
    pub size: u64,
    /// `Ok` with the checksum status when the file is sound on its own, or
    /// why it is not.
    pub status: std::result::Result<Integrity, Error>,
    /// Sequence range `(from, to]`, when recorded.
    pub seq: Option<(u64, u64)>,
    /// Time the file was written (from its name, else from a delta's
    /// `timestamp`), in seconds since the epoch.
    pub timestamp: Option<f64>,
    /// The file's tables with their counts.
    pub tables: Vec<TableSummary>,
    /// Records (full) or upserts plus deletes (delta) in the file.
    pub records: u64,
}

/// The check of one chain: a full backup and the deltas after it, restored
/// exactly as a restore would.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ChainReport {
    /// The full backup it starts from (`None`: deltas before any full
    /// backup, which no restore can use).
    pub base: Option<String>,
    /// Its files, in order.
    pub files: Vec<String>,
    /// The sequence number it restores to (`None` for the Python
    /// original's files), or the first broken link.
    pub result: std::result::Result<Option<u64>, Error>,
}

/// What [`verify_store`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyReport {
    /// One entry per file: backup files in write order, then foreign files.
    pub files: Vec<FileReport>,
    /// Every chain of the store, oldest first.
    pub chains: Vec<ChainReport>,
}

impl VerifyReport {
    /// Whether every backup file and every chain is sound (and there is at
    /// least one chain).
    pub fn is_ok(&self) -> bool {
        !self.chains.is_empty()
            && self.chains.iter().all(|c| c.result.is_ok())
            && self
                .files
                .iter()
                .all(|f| f.kind.is_none() || f.status.is_ok())
    }

    /// The chain a restore would use: the newest one that starts from a full
    /// backup.
    pub fn newest_chain(&self) -> Option<&ChainReport> {
        self.chains.iter().rev().find(|c| c.base.is_some())
    }
}

fn report(file: &StoredFile, kind: Option<BackupKind>, timestamp: Option<f64>) -> FileReport {
    FileReport {
        name: file.name.clone(),
        kind,
        size: file.size,
        status: Ok(Integrity::Unverified),
        seq: None,
        timestamp,
        tables: Vec::new(),
        records: 0,
    }
}

/// What a report needs of a decoded file.
pub(crate) struct Seen {
    header: Header,
    integrity: Integrity,
    tables: Vec<TableSummary>,
}

impl Seen {
    pub(crate) fn of(d: &Decoded) -> Seen {
        let tables = match &d.body {
            Body::Full(s) => s
                .tables()
                .iter()
                .map(|t| TableSummary {
                    name: t.name().to_string(),
                    records: t.len() as u64,
                    deletes: 0,
                })
                .collect(),
            Body::Delta(c) => c
                .tables()
                .iter()
                .map(|t| TableSummary {
                    name: t.name().to_string(),
                    records: t.upserts().len() as u64,
                    deletes: t.deletes().len() as u64,
                })
                .collect(),
        };
        Seen {
            header: d.header.clone(),
            integrity: d.integrity.clone(),
            tables,
        }
    }
}

/// A report of a file that was read.
fn summarize(file: &StoredFile, timestamp: Option<f64>, checked: Result<Seen>) -> FileReport {
    let seen = match checked {
        Ok(s) => s,
        Err(e) => {
            let mut r = report(file, None, timestamp);
            r.status = Err(e);
            return r;
        }
    };
    FileReport {
        name: file.name.clone(),
        kind: Some(seen.header.kind),
        size: file.size,
        status: Ok(seen.integrity),
        seq: seen
            .header
            .meta
            .as_ref()
            .map(|m| (m.from_seq.unwrap_or(0), m.seq)),
        timestamp: timestamp.or(seen.header.timestamp),
        records: seen.tables.iter().map(|t| t.records + t.deletes).sum(),
        tables: seen.tables,
    }
}

/// Judges one backup file on its own.
async fn check_one(opts: &Restore, catalog: &Catalog, e: &Entry) -> FileReport {
    let checked = check_file(opts, catalog, e).await.map(|d| Seen::of(&d));
    let mut r = summarize(&e.file, Some(e.name.timestamp()), checked);
    r.kind = Some(e.kind());
    r
}

/// Checks every file of a directory and every chain in it.
pub async fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let store: Arc<dyn BackupStore> = Arc::new(LocalStore::existing(dir.as_ref())?);
    verify_store(store).await
}

/// Checks every chain of a store the way a restore of that chain would (the
/// same code, every byte read, the database built and dropped), and every
/// file the chains did not reach on its own. Memory stays within one
/// chain's database.
///
/// Encrypted files need identities: see [`Restore::verify`].
pub async fn verify_store(store: Arc<dyn BackupStore>) -> Result<VerifyReport> {
    Restore::new(store).verify().await
}

/// [`verify_store`] with the identities of `opts`.
pub(crate) async fn verify_with(opts: &Restore) -> Result<VerifyReport> {
    let opts = opts.clone();
    let catalog = opts.catalog().await?;
    let mut files: Vec<Option<FileReport>> = vec![None; catalog.entries.len()];
    let mut chains = Vec::new();

    let orphans = catalog.orphans();
    if !orphans.is_empty() {
        chains.push(ChainReport {
            base: None,
            files: orphans
                .clone()
                .map(|i| catalog.entries[i].file_name().to_string())
                .collect(),
            result: Err(Error::chain(
                catalog.entries[orphans.start].file_name(),
                "a delta with no full backup before it: no restore can use it",
            )),
        });
    }
    for base in catalog.fulls() {
        let members: Vec<usize> = std::iter::once(base)
            .chain(catalog.chain_deltas(base))
            .collect();
        let result = verify_chain(&opts, &catalog, base, &mut files).await;
        chains.push(ChainReport {
            base: Some(catalog.entries[base].file_name().to_string()),
            files: members
                .iter()
                .map(|&i| catalog.entries[i].file_name().to_string())
                .collect(),
            result,
        });
    }
    let mut out = Vec::with_capacity(files.len() + catalog.foreign.len());
    for (i, r) in files.into_iter().enumerate() {
        out.push(match r {
            Some(r) => r,
            None => check_one(&opts, &catalog, &catalog.entries[i]).await,
        });
    }
    out.extend(catalog.foreign.iter().map(|f| report(f, None, None)));
    Ok(VerifyReport { files: out, chains })
}

/// Restores one chain strictly, recording a report for each file it used.
async fn verify_chain(
    opts: &Restore,
    catalog: &Catalog,
    base: usize,
    files: &mut [Option<FileReport>],
) -> std::result::Result<Option<u64>, Error> {
    let chosen = super::plan::choose_chain(opts, catalog, base).await?;
    // Every file the chain applied was read whole and found sound.
    let mut observe = |i: usize, seen: Seen| {
        let e = &catalog.entries[i];
        let mut r = summarize(&e.file, Some(e.name.timestamp()), Ok(seen));
        r.kind = Some(e.kind());
        files[i] = Some(r);
    };
    let restored = apply::load(opts, catalog, &chosen, Some(&mut observe)).await;
    match restored {
        Ok(r) => Ok(r.seq),
        Err(apply::Failed::Base(e) | apply::Failed::Other(e)) => Err(e),
    }
}

/// Checks one file on its own: reads it whole, checks its checksum, its
/// document and records, and (for a file named like a backup) that its
/// content names it and that it may be trusted in its directory — the
/// checks a restore makes of each file. A file named otherwise is read in
/// the format `format` says, else the one its extension names.
pub async fn inspect_file(
    path: impl AsRef<Path>,
    format: Option<format::FileFormat>,
) -> Result<FileReport> {
    let path = path.as_ref();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::io(path.display(), std::io::Error::other("not a file")))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !path.is_file() {
        return Err(Error::io(
            path.display(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    inspect(Arc::new(LocalStore::existing(&dir)?), &name, format).await
}

/// [`inspect_file`] for a file of any store. Encrypted files need
/// identities: see [`Restore::inspect`].
pub async fn inspect(
    store: Arc<dyn BackupStore>,
    name: &str,
    format: Option<format::FileFormat>,
) -> Result<FileReport> {
    Restore::new(store).inspect(name, format).await
}

/// [`inspect`] with the identities of `opts`.
pub(crate) async fn inspect_with(
    opts: &Restore,
    name: &str,
    format: Option<format::FileFormat>,
) -> Result<FileReport> {
    let catalog = opts.catalog().await?;
    let store = Arc::clone(&catalog.store);
    if let Some(e) = catalog.entries.iter().find(|e| e.file_name() == name) {
        if format.is_none_or(|f| e.format().ok() == Some(f)) {
            return Ok(check_one(opts, &catalog, e).await);
        }
    }
    let file = catalog
        .foreign
        .iter()
        .chain(catalog.entries.iter().map(|e| &e.file))
        .find(|f| f.name == name)
        .cloned()
        .ok_or_else(|| {
            Error::io(
                name,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file in the store"),
            )
        })?;
    let format = match format {
        Some(f) => f,
        None => format::format_of_path(Path::new(name))?,
    };
    // A file not named like a backup: its extension says what it went
    // through (`db.json.zst` is compressed).
    let (layers, _) = format::Layers::of_path(Path::new(name));
    let reader = store.open(&file.name).await?;
    let n = file.name.clone();
    let keys = catalog.keys.clone();
    let decoded = tokio::task::spawn_blocking(move || {
        let plain = format::transform::open(reader, layers, &keys, &n)?;
        format::decode(plain, format, &n, false)
    })
    .await
    .map_err(|e| Error::corrupt(&file.name, e))?;
    Ok(summarize(&file, None, decoded.map(|d| Seen::of(&d))))
}
