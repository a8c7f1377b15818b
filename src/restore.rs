//! Restoring a backup directory, and verifying one.
//!
//! A restore picks the newest usable full backup, then applies, in order,
//! only the deltas written after it. Files written by this crate carry
//! sequence numbers, the name of their base, and a checksum: every link is
//! checked, and a missing, duplicated, foreign, truncated or damaged link is
//! an error naming the file — unless the caller asks to stop at the last
//! consistent point, and then the result says where and why it stopped.
//! Directories written by the Python original (no sequence numbers, no
//! checksums) restore by name order and are reported as unverified.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use crate::db::DictDB;
use crate::error::{Error, Result};
use crate::format::{
    parse_document, verify_checksum, DocKind, Document, FileFormat, Integrity, Meta,
};
use crate::naming::{BackupKind, BackupName, NameFormat};
use crate::persist::{apply_delta_document, load_full};
use crate::record::Reader;
use crate::store::{BackupStore, LocalStore, StoredFile};

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
}

/// Why a lenient restore stopped before the end of the directory.
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
    /// The restored database (for a dry run: empty).
    pub db: DictDB,
    /// The files applied (for a dry run: to be applied), base first.
    pub applied: Vec<PlannedFile>,
    /// Records affected by each delta, in order.
    pub affected: Vec<usize>,
    /// Sequence number of the restored state, when the chain records one.
    pub seq: Option<u64>,
    /// Whether every applied file carried a checksum that matched.
    pub verified: bool,
    /// Files that were passed over (newer full backups that could not be
    /// used, in lenient mode), with the reason.
    pub skipped: Vec<Stopped>,
    /// Set when a lenient restore stopped at the last consistent point.
    pub stopped: Option<Stopped>,
}

/// A restore of a backup store, with options.
///
/// # Examples
///
/// ```no_run
/// use dictdb::restore::Restore;
///
/// # async fn f() -> dictdb::Result<()> {
/// // Everything up to a point in time, stopping at a damaged link instead of failing.
/// let restored = Restore::from_dir("./backups")?
///     .until_time(1795682694.74)
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
    until_time: Option<f64>,
    until_seq: Option<u64>,
    lenient: bool,
}

/// Restores the directory `dir`: newest full backup plus the deltas after it,
/// every link checked. Shorthand for `Restore::from_dir(dir)?.run().await`.
pub async fn restore_dir(dir: impl AsRef<Path>) -> Result<Restored> {
    Restore::from_dir(dir)?.run().await
}

/// A file's name, kind and format, once recognised as a backup file.
#[derive(Clone, Debug)]
struct Candidate {
    name: BackupName,
    file: StoredFile,
}

impl Candidate {
    fn format(&self) -> Result<FileFormat> {
        match self.name.format {
            NameFormat::Supported(f) => Ok(f),
            NameFormat::Pickle => Err(Error::UnsupportedFormat {
                name: self.file.name.clone(),
                hint: "a pickle backup written by the Python original cannot be read here; \
                       re-save it from Python with file_format=\"json\"",
            }),
        }
    }

    fn planned(&self, meta: Option<&Meta>) -> PlannedFile {
        PlannedFile {
            name: self.file.name.clone(),
            kind: self.name.kind,
            timestamp: self.name.timestamp(),
            seq: meta.map(|m| (m.from_seq.unwrap_or(0), m.seq)),
            size: self.file.size,
        }
    }
}

impl Restore {
    /// A restore from any store.
    pub fn new(store: Arc<dyn BackupStore>) -> Restore {
        Restore {
            store,
            until_time: None,
            until_seq: None,
            lenient: false,
        }
    }

    /// A restore from a local directory (which must exist).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Restore> {
        Ok(Restore::new(Arc::new(LocalStore::existing(dir.as_ref())?)))
    }

    /// Only files written at or before `timestamp` (seconds since the epoch,
    /// as in the file names) are used.
    #[must_use]
    pub fn until_time(mut self, timestamp: f64) -> Restore {
        self.until_time = Some(timestamp);
        self
    }

    /// Stop at the last file whose cut is at or below `seq`.
    #[must_use]
    pub fn until_seq(mut self, seq: u64) -> Restore {
        self.until_seq = Some(seq);
        self
    }

    /// Instead of failing on a broken or damaged link, stop at the last
    /// consistent point and say why in [`Restored::stopped`] (default: fail).
    #[must_use]
    pub fn stop_at_last_consistent(mut self, lenient: bool) -> Restore {
        self.lenient = lenient;
        self
    }

    async fn candidates(&self) -> Result<Vec<Candidate>> {
        let mut out: Vec<Candidate> = self
            .store
            .list()
            .await?
            .into_iter()
            .filter_map(|file| BackupName::parse(&file.name).map(|name| Candidate { name, file }))
            .filter(|c| {
                self.until_time
                    .is_none_or(|t| c.name.timestamp() <= t + 1e-7)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn read(&self, c: &Candidate) -> Result<(FileFormat, Vec<u8>)> {
        let format = c.format()?;
        let bytes = self.store.read(&c.file.name).await?;
        Ok((format, bytes))
    }

    /// The files a restore would apply, in order, without loading records.
    /// Reads each file's metadata (and checks its checksum) to check the
    /// chain the same way [`run`](Self::run) does.
    pub async fn plan(&self) -> Result<Restored> {
        self.execute(false).await
    }

    /// Restores.
    pub async fn run(&self) -> Result<Restored> {
        self.execute(true).await
    }

    async fn execute(&self, load: bool) -> Result<Restored> {
        let all = self.candidates().await?;
        let mut skipped = Vec::new();
        // The deltas of the newest chain are read and parsed while its full
        // backup loads (two cores: parsing the deltas costs no wall time).
        let mut prefetched = if load {
            self.prefetch(&all)
        } else {
            HashMap::new()
        };
        // Newest usable full backup first.
        let mut base = None;
        for c in all.iter().rev().filter(|c| c.name.kind == BackupKind::Full) {
            match self.open_full(c, load).await {
                Ok(Some(found)) => {
                    base = Some((c.clone(), found));
                    break;
                }
                Ok(None) => continue, // beyond until_seq
                Err(error) if self.lenient => skipped.push(Stopped {
                    file: c.file.name.clone(),
                    error,
                }),
                Err(error) => return Err(error),
            }
        }
        let Some((base_c, (db, base_meta, mut verified))) = base else {
            let what = if all.iter().any(|c| c.name.kind == BackupKind::Delta) {
                format!(
                    "{} (only deltas, no full backup to apply them to)",
                    self.store.location()
                )
            } else {
                self.store.location()
            };
            return Err(Error::NoBackup(what));
        };
        let mut seq = base_meta.as_ref().map(|m| m.seq);
        let mut applied = vec![base_c.planned(base_meta.as_ref())];
        let mut affected = Vec::new();
        let mut stopped = None;
        let base_name = base_c.file.name.clone();
        // The chain of a full backup ends where the next full backup begins:
        // later deltas build on that one (or on one after it).
        let chain_end = all
            .iter()
            .find(|c| c.name.kind == BackupKind::Full && c.name > base_c.name)
            .map(|c| c.name.clone());
        for c in all
            .iter()
            .filter(|c| c.name.kind == BackupKind::Delta && c.name > base_c.name)
            .filter(|c| chain_end.as_ref().is_none_or(|end| c.name < *end))
        {
            let prefetch = prefetched.remove(&c.file.name);
            let step = self
                .delta_step(
                    c,
                    Link {
                        base: &base_name,
                        has_seq: base_meta.is_some(),
                        seq,
                    },
                    load,
                    &db,
                    prefetch,
                )
                .await;
            match step {
                Ok(Step::Applied {
                    meta,
                    count,
                    integrity,
                }) => {
                    verified &= integrity.is_verified();
                    if let Some(m) = &meta {
                        seq = Some(m.seq);
                    }
                    applied.push(c.planned(meta.as_ref()));
                    affected.push(count);
                }
                Ok(Step::Beyond) => break,
                Err(error) if self.lenient => {
                    stopped = Some(Stopped {
                        file: c.file.name.clone(),
                        error,
                    });
                    break;
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(s) = seq {
            db.lock().seq = s;
        }
        Ok(Restored {
            db,
            applied,
            affected,
            seq,
            verified,
            skipped,
            stopped,
        })
    }

    /// Starts reading and parsing the deltas that follow the newest full
    /// backup (up to a bounded number), in the background.
    fn prefetch(
        &self,
        all: &[Candidate],
    ) -> HashMap<String, tokio::task::JoinHandle<Result<Document>>> {
        const AHEAD: usize = 32;
        let Some(newest) = all.iter().rev().find(|c| c.name.kind == BackupKind::Full) else {
            return HashMap::new();
        };
        all.iter()
            .filter(|c| c.name.kind == BackupKind::Delta && c.name > newest.name)
            .take(AHEAD)
            .map(|c| {
                let task = tokio::spawn(read_and_parse(Arc::clone(&self.store), c.clone()));
                (c.file.name.clone(), task)
            })
            .collect()
    }

    /// Opens a full backup: `None` if it lies beyond `until_seq`.
    async fn open_full(
        &self,
        c: &Candidate,
        load: bool,
    ) -> Result<Option<(DictDB, Option<Meta>, bool)>> {
        let (format, bytes) = self.read(c).await?;
        let name = c.file.name.clone();
        if !load {
            let (meta, integrity) = read_meta(&bytes, format, &name)?;
            if self.beyond(meta.as_ref(), &name)? {
                return Ok(None);
            }
            return Ok(Some((DictDB::new(), meta, integrity.is_verified())));
        }
        let (snapshot, doc) = tokio::task::spawn_blocking(move || load_full(&bytes, format, &name))
            .await
            .map_err(|e| Error::corrupt(&c.file.name, e))??;
        if self.beyond(doc.meta.as_ref(), &c.file.name)? {
            return Ok(None);
        }
        Ok(Some((
            DictDB::from_snapshot(snapshot),
            doc.meta,
            doc.integrity.is_verified(),
        )))
    }

    fn beyond(&self, meta: Option<&Meta>, file: &str) -> Result<bool> {
        match (self.until_seq, meta) {
            (None, _) => Ok(false),
            (Some(limit), Some(m)) => Ok(m.seq > limit),
            (Some(_), None) => Err(Error::chain(
                file,
                "written without sequence numbers (by the Python original?): restore by time instead",
            )),
        }
    }

    async fn delta_step(
        &self,
        c: &Candidate,
        link: Link<'_>,
        load: bool,
        db: &DictDB,
        prefetched: Option<tokio::task::JoinHandle<Result<Document>>>,
    ) -> Result<Step> {
        let (meta, doc, integrity) = if load {
            let doc = match prefetched {
                Some(task) => task.await.map_err(|e| Error::corrupt(&c.file.name, e))??,
                None => read_and_parse(Arc::clone(&self.store), c.clone()).await?,
            };
            let integrity = doc.integrity.clone();
            (doc.meta.clone(), Some(doc), integrity)
        } else {
            let (format, bytes) = self.read(c).await?;
            let (meta, integrity) = read_meta(&bytes, format, &c.file.name)?;
            (meta, None, integrity)
        };
        let name = &c.file.name;
        if let Some(d) = &doc {
            if d.kind != DocKind::Delta {
                return Err(Error::corrupt(
                    name,
                    "named as a delta but holds a full backup",
                ));
            }
        }
        let Link {
            base,
            has_seq: chain_has_seq,
            seq,
        } = link;
        match (&meta, chain_has_seq) {
            (Some(m), true) => {
                if m.base.as_deref() != Some(base) {
                    return Err(Error::chain(
                        name,
                        format!(
                            "builds on {} but the chain starts at {base} (a full backup is missing, \
                             or the file belongs to another chain)",
                            m.base.as_deref().unwrap_or("nothing")
                        ),
                    ));
                }
                let current = seq.unwrap_or(0);
                let from = m.from_seq.unwrap_or(0);
                if from != current {
                    let why = if from > current {
                        format!("starts after sequence {from} but the chain is at {current}: a delta is missing")
                    } else {
                        format!("starts after sequence {from} but the chain is already at {current}: duplicated or overlapping delta")
                    };
                    return Err(Error::chain(name, why));
                }
                if self.until_seq.is_some_and(|limit| m.seq > limit) {
                    return Ok(Step::Beyond);
                }
            }
            (Some(_), false) => return Err(Error::chain(
                name,
                "a dictdb delta after a full backup without sequence numbers: the chain is mixed",
            )),
            (None, true) => {
                return Err(Error::chain(
                    name,
                    "a delta without sequence numbers in a dictdb chain: the chain is mixed",
                ))
            }
            (None, false) => {
                if self.until_seq.is_some() {
                    return Err(Error::chain(
                        name,
                        "written without sequence numbers: restore by time instead",
                    ));
                }
            }
        }
        let count = match doc {
            Some(doc) => apply_delta_document(db, doc, name)?,
            None => 0,
        };
        Ok(Step::Applied {
            meta,
            count,
            integrity,
        })
    }
}

/// Where the chain stands when the next delta is checked.
#[derive(Clone, Copy)]
struct Link<'a> {
    /// The full backup the chain starts from.
    base: &'a str,
    /// Whether that full backup records sequence numbers.
    has_seq: bool,
    /// The sequence number reached so far.
    seq: Option<u64>,
}

/// Reads and parses one file on the blocking pool.
async fn read_and_parse(store: Arc<dyn BackupStore>, c: Candidate) -> Result<Document> {
    let format = c.format()?;
    let bytes = store.read(&c.file.name).await?;
    let name = c.file.name.clone();
    tokio::task::spawn_blocking(move || parse_document(&bytes, format, &name))
        .await
        .map_err(|e| Error::corrupt(&c.file.name, e))?
}

enum Step {
    Applied {
        meta: Option<Meta>,
        count: usize,
        integrity: Integrity,
    },
    Beyond,
}

/// Reads only a document's kind and `dictdb` section (records are skipped
/// without being stored), after checking its checksum.
pub(crate) fn read_meta(
    bytes: &[u8],
    format: FileFormat,
    file: &str,
) -> Result<(Option<Meta>, Integrity)> {
    let integrity = verify_checksum(bytes, format, file)?;
    let meta = match format {
        FileFormat::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let meta = de::Deserializer::deserialize_map(&mut de, MetaOnly)
                .map_err(|e| Error::corrupt(file, e))?;
            de.end().map_err(|e| Error::corrupt(file, e))?;
            meta
        }
        FileFormat::MessagePack => {
            let mut r = Reader::new(bytes);
            let mut meta = None;
            let n = r.map_len().map_err(|e| Error::corrupt(file, e))?;
            for _ in 0..n {
                let k = r.str().map_err(|e| Error::corrupt(file, e))?;
                let raw = r.raw_value().map_err(|e| Error::corrupt(file, e))?;
                if k == "dictdb" {
                    meta = Some(
                        rmp_serde::from_slice::<Meta>(raw).map_err(|e| Error::corrupt(file, e))?,
                    );
                }
            }
            if !r.at_end() {
                return Err(Error::corrupt(file, "trailing bytes after the document"));
            }
            meta
        }
    };
    Ok((meta, integrity))
}

struct MetaOnly;

impl<'de> Visitor<'de> for MetaOnly {
    type Value = Option<Meta>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a DictDB document")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Option<Meta>, A::Error> {
        let mut meta = None;
        let mut tables = false;
        while let Some(k) = map.next_key::<String>()? {
            if k == "dictdb" {
                meta = Some(map.next_value::<Meta>()?);
            } else {
                tables |= k == "tables";
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !tables {
            return Err(de::Error::custom("missing \"tables\""));
        }
        Ok(meta)
    }
}

/// The check of one file by [`verify_dir`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FileReport {
    /// File name.
    pub name: String,
    /// Full or delta (`None`: not a backup file, ignored).
    pub kind: Option<BackupKind>,
    /// Size in bytes.
    pub size: u64,
    /// `Ok` with the checksum status when the file parses, or the error.
    pub status: std::result::Result<Integrity, Error>,
    /// Sequence range, when recorded.
    pub seq: Option<(u64, u64)>,
    /// Time the file was written (from its name, else from a delta's
    /// `timestamp`), in seconds since the epoch.
    pub timestamp: Option<f64>,
    /// Number of tables in the file.
    pub tables: usize,
    /// Records (full) or changes (delta) in the file.
    pub records: usize,
}

/// What [`verify_dir`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct VerifyReport {
    /// One entry per file: backup files in write order, then foreign files.
    pub files: Vec<FileReport>,
    /// The result of a full (non-lenient) restore dry run over the store:
    /// `Ok` with the chain that would be restored, or the first broken link.
    pub chain: std::result::Result<Vec<PlannedFile>, Error>,
}

impl VerifyReport {
    /// Whether every backup file and the chain are sound.
    pub fn is_ok(&self) -> bool {
        self.chain.is_ok()
            && self
                .files
                .iter()
                .all(|f| f.kind.is_none() || f.status.is_ok())
    }
}

/// Checks every file of a directory (fully parsed, checksums checked) and the
/// chain a restore would follow.
pub async fn verify_dir(dir: impl AsRef<Path>) -> Result<VerifyReport> {
    let store: Arc<dyn BackupStore> = Arc::new(LocalStore::existing(dir.as_ref())?);
    verify_store(store).await
}

/// [`verify_dir`] for any store.
pub async fn verify_store(store: Arc<dyn BackupStore>) -> Result<VerifyReport> {
    let mut files = Vec::new();
    let mut listed = store.list().await?;
    // Backup files in write order, foreign files after them by name.
    listed.sort_by(
        |a, b| match (BackupName::parse(&a.name), BackupName::parse(&b.name)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.name.cmp(&b.name),
        },
    );
    for f in listed {
        let bytes = match BackupName::parse(&f.name) {
            Some(_) => Some(store.read(&f.name).await),
            None => None,
        };
        files.push(report(f, bytes).await);
    }
    let chain = Restore::new(store).plan().await.map(|r| r.applied);
    Ok(VerifyReport { files, chain })
}

/// Checks one file on its own: parses it fully and checks its checksum.
/// A file named outside the backup naming scheme is read in the format its
/// extension names and reported with the kind its content has; an unknown
/// extension is an error.
pub async fn inspect_file(path: impl AsRef<Path>) -> Result<FileReport> {
    let path = path.as_ref();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .ok_or_else(|| Error::io(path.display(), std::io::Error::other("not a file")))?;
    let p = path.to_path_buf();
    let bytes = tokio::task::spawn_blocking(move || std::fs::read(&p))
        .await
        .map_err(|e| Error::io(path.display(), std::io::Error::other(e.to_string())))?
        .map_err(|e| Error::io(path.display(), e))?;
    let file = StoredFile {
        name,
        size: bytes.len() as u64,
    };
    // Outside the naming scheme, the extension still tells the format.
    if BackupName::parse(&file.name).is_none() {
        let format = crate::persist::format_of_path(path)?;
        let n = file.name.clone();
        let doc = tokio::task::spawn_blocking(move || parse_document(&bytes, format, &n))
            .await
            .map_err(|e| Error::corrupt(&file.name, e))??;
        return Ok(summarize(file, None, Ok(doc)));
    }
    Ok(report(file, Some(Ok(bytes))).await)
}

async fn report(f: StoredFile, bytes: Option<Result<Vec<u8>>>) -> FileReport {
    let (Some(name), Some(bytes)) = (BackupName::parse(&f.name), bytes) else {
        return FileReport {
            name: f.name,
            kind: None,
            size: f.size,
            status: Ok(Integrity::Unverified),
            seq: None,
            timestamp: None,
            tables: 0,
            records: 0,
        };
    };
    let c = Candidate { name, file: f };
    let parsed: Result<Document> = match (c.format(), bytes) {
        (Err(e), _) | (_, Err(e)) => Err(e),
        (Ok(format), Ok(bytes)) => {
            let n = c.file.name.clone();
            tokio::task::spawn_blocking(move || parse_document(&bytes, format, &n))
                .await
                .map_err(|e| Error::corrupt(&c.file.name, e))
                .and_then(|r| r)
        }
    };
    summarize(c.file, Some(c.name.kind), parsed)
}

fn summarize(file: StoredFile, kind: Option<BackupKind>, parsed: Result<Document>) -> FileReport {
    let mut timestamp = BackupName::parse(&file.name).map(|n| n.timestamp());
    let mut kind = kind;
    let (status, seq, tables, records) = match parsed {
        Ok(doc) => {
            let actual = match doc.kind {
                DocKind::Full => BackupKind::Full,
                DocKind::Delta => BackupKind::Delta,
            };
            let records = doc
                .tables
                .iter()
                .map(|t| t.records.len() + t.deletes.len())
                .sum();
            let seq = doc.meta.as_ref().map(|m| (m.from_seq.unwrap_or(0), m.seq));
            let status = if kind.is_none_or(|k| k == actual) {
                Ok(doc.integrity.clone())
            } else {
                Err(Error::corrupt(
                    &file.name,
                    "the name and the content disagree on the kind",
                ))
            };
            kind = kind.or(Some(actual));
            timestamp = timestamp.or(doc.timestamp);
            (status, seq, doc.tables.len(), records)
        }
        Err(e) => (Err(e), None, 0, 0),
    };
    FileReport {
        name: file.name,
        kind,
        size: file.size,
        status,
        seq,
        timestamp,
        tables,
        records,
    }
}
