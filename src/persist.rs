//! Saving and loading whole databases, and applying one delta (seed S11).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use imbl::OrdMap;
use tracing::warn;

use crate::db::{validate_table_name, Change, DictDB, Snapshot, TableSnapshot, TableState};
use crate::error::{Error, Result};
use crate::format::{
    parse_document, parse_document_with, write_full, ChunkWriter, DocKind, Document, FileFormat,
    Integrity, Meta, RecordSink, SinkMsg,
};
use crate::key::Key;
use crate::record::Record;
use crate::store::local::write_atomic;

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

pub(crate) fn next_keys(snapshot: &Snapshot) -> BTreeMap<String, u64> {
    snapshot
        .tables()
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                u64::try_from(t.next_id).unwrap_or(u64::MAX),
            )
        })
        .collect()
}

pub(crate) fn full_meta(snapshot: &Snapshot) -> Meta {
    Meta {
        version: crate::format::META_VERSION,
        kind: "full".into(),
        seq: snapshot.seq(),
        next_keys: next_keys(snapshot),
        count: snapshot.record_count() as u64,
        ..Meta::default()
    }
}

/// Serialises `snapshot` as a full document, handing chunks to `emit`.
pub(crate) fn serialize_full(
    snapshot: &Snapshot,
    format: FileFormat,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<()>,
) -> Result<(u64, String)> {
    let meta = full_meta(snapshot);
    let mut w = ChunkWriter::new(emit);
    write_full(&mut w, format, snapshot, &meta)?;
    w.finish(format)
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

impl DictDB {
    /// Saves the whole database to `path`, atomically and durably (temporary
    /// file in the same directory, `fsync`, rename, `fsync` of the directory).
    ///
    /// The JSON layout is the Python original's, which loads it with
    /// `DictDB.load(path, "json")`. This call blocks on serialisation and disk
    /// I/O; in async code use [`save_async`](Self::save_async).
    pub fn save(&self, path: impl AsRef<Path>, format: FileFormat) -> Result<SaveInfo> {
        let snapshot = self.snapshot();
        save_snapshot(&snapshot, path.as_ref(), format)
    }

    /// [`save`](Self::save) on tokio's blocking pool: serialisation and I/O
    /// never run on the async worker threads.
    pub async fn save_async(&self, path: impl AsRef<Path>, format: FileFormat) -> Result<SaveInfo> {
        let snapshot = self.snapshot();
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || save_snapshot(&snapshot, &path, format))
            .await
            .map_err(|e| Error::io("save task", std::io::Error::other(e.to_string())))?
    }

    /// Loads a database saved by [`save`](Self::save), by a backup, or by the
    /// Python original (`DictDB.save(path, "json")`).
    ///
    /// Every value is kept exactly (integers stay integers, `-0.0`, 64-bit
    /// edges, unicode). A truncated or malformed file, a record without a
    /// valid key, duplicate keys, or a wrong top-level shape is an error that
    /// names the file. A file with a checksum that does not match is refused.
    pub fn load(path: impl AsRef<Path>, format: FileFormat) -> Result<DictDB> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
        let (snapshot, _) = load_full(&bytes, format, &path_str(path))?;
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

fn save_snapshot(snapshot: &Snapshot, path: &Path, format: FileFormat) -> Result<SaveInfo> {
    let (bytes, checksum) = write_atomic(path, |emit| serialize_full(snapshot, format, emit))?;
    Ok(SaveInfo {
        seq: snapshot.seq(),
        records: snapshot.record_count() as u64,
        bytes,
        checksum,
    })
}

/// Parses a full document into a snapshot.
pub(crate) fn load_full(
    bytes: &[u8],
    format: FileFormat,
    file: &str,
) -> Result<(Snapshot, Document)> {
    // Below this size a second thread costs more than it saves.
    const PIPELINE_BYTES: usize = 4 << 20;
    let (mut doc, mut built) = if format == FileFormat::Json && bytes.len() >= PIPELINE_BYTES {
        parse_pipelined(bytes, format, file)?
    } else {
        (parse_document(bytes, format, file)?, BTreeMap::new())
    };
    if doc.kind != DocKind::Full {
        return Err(Error::corrupt(
            file,
            "this is a delta, not a full backup (apply it with apply_delta)",
        ));
    }
    let snapshot = snapshot_from_document(&mut doc, &mut built, file)?;
    Ok((snapshot, doc))
}

/// A table's records indexed by key, and the next auto key they imply.
type Built = (OrdMap<Key, Record>, i128);

/// Indexes one table's records, in file order; duplicate keys and records
/// without a valid key are errors naming the file.
struct Indexer<'a> {
    file: &'a str,
    table: String,
    pk: String,
    records: OrdMap<Key, Record>,
    next_id: i128,
}

impl<'a> Indexer<'a> {
    fn new(file: &'a str, table: String, pk: String) -> Self {
        Indexer {
            file,
            table,
            pk,
            records: OrdMap::new(),
            next_id: 1,
        }
    }

    fn add(&mut self, rec: Record) -> Result<()> {
        let key = record_key(&rec, &self.pk, &self.table, self.file)?;
        if let Key::Int(i) = key {
            self.next_id = self.next_id.max(i128::from(i) + 1);
        }
        if self.records.insert(key.clone(), rec).is_some() {
            return Err(Error::corrupt(
                self.file,
                format!("duplicate primary key {key} in table `{}`", self.table),
            ));
        }
        Ok(())
    }
}

/// Parses a large JSON full backup on this thread while a second thread
/// indexes the records as they come (two cores: the B-tree is built for
/// free while the text is parsed).
fn parse_pipelined(
    bytes: &[u8],
    format: FileFormat,
    file: &str,
) -> Result<(Document, BTreeMap<String, Built>)> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SinkMsg>(16);
        let indexer = scope.spawn(move || -> Result<BTreeMap<String, Built>> {
            let mut done = BTreeMap::new();
            let mut current: Option<Indexer<'_>> = None;
            let mut failed = None;
            for msg in rx {
                // After an error, keep receiving so the parser never blocks.
                if failed.is_some() {
                    continue;
                }
                match msg {
                    SinkMsg::Start { table, primary_key } => {
                        if let Some(ix) = current.take() {
                            done.insert(ix.table, (ix.records, ix.next_id));
                        }
                        current = Some(Indexer::new(file, table, primary_key));
                    }
                    SinkMsg::Batch(batch) => {
                        let Some(ix) = current.as_mut() else { continue };
                        for rec in batch {
                            if let Err(e) = ix.add(rec) {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some(ix) = current.take() {
                done.insert(ix.table, (ix.records, ix.next_id));
            }
            Ok(done)
        });
        let mut sink = RecordSink { tx };
        let parsed = parse_document_with(bytes, format, file, Some(&mut sink));
        drop(sink);
        let built = indexer
            .join()
            .map_err(|_| Error::corrupt(file, "the indexing thread panicked"))?;
        // A parse error explains more than what the indexer saw of it.
        let doc = parsed?;
        Ok((doc, built?))
    })
}

fn snapshot_from_document(
    doc: &mut Document,
    built: &mut BTreeMap<String, Built>,
    file: &str,
) -> Result<Snapshot> {
    let meta = doc.meta.clone().unwrap_or_default();
    let mut tables = Vec::with_capacity(doc.tables.len());
    for t in std::mem::take(&mut doc.tables) {
        let pk: Arc<str> = Arc::from(t.primary_key.as_deref().unwrap_or("id"));
        let (records, mut next_id) = if t.streamed {
            built.remove(&t.name).ok_or_else(|| {
                Error::corrupt(file, format!("table `{}` was not indexed", t.name))
            })?
        } else {
            let mut ix = Indexer::new(file, t.name.clone(), pk.to_string());
            for rec in t.records {
                ix.add(rec)?;
            }
            (ix.records, ix.next_id)
        };
        if let Some(n) = meta.next_keys.get(&t.name) {
            next_id = next_id.max(i128::from(*n));
        }
        tables.push(TableSnapshot {
            name: Arc::from(t.name),
            primary_key: pk,
            schema: t.schema.map(Arc::new),
            records,
            next_id,
        });
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot {
        seq: meta.seq,
        tables,
    })
}

fn record_key(rec: &Record, pk: &str, table: &str, file: &str) -> Result<Key> {
    match rec.key(pk) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(Error::corrupt(
            file,
            format!("a record of table `{table}` has no primary key `{pk}`"),
        )),
        Err(e) => Err(Error::corrupt(file, format!("table `{table}`: {e}"))),
    }
}

/// Applies one delta file to `db` (seed S11) and returns the number of
/// records affected: each upsert counts, each delete of a present key counts,
/// deletes of absent keys are ignored.
///
/// Upserts replace whole records. Tables the delta created are created and
/// tables it dropped are dropped (the Python original skips both). Each
/// table's next auto-assigned key moves past every key the delta inserts
/// and past the counter the writer recorded, so keys are never reused.
/// Deltas written by the Python original (no `dictdb` section) apply too.
///
/// The delta is applied atomically: on any error nothing changes.
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
    let format = format_of_path(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path.display(), e))?;
    let doc = parse_document(&bytes, format, &path_str(path))?;
    apply_delta_document(db, doc, &path_str(path))
}

/// The format of a file from its extension.
pub(crate) fn format_of_path(path: &Path) -> Result<FileFormat> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match FileFormat::from_extension(ext) {
        Some(f) => Ok(f),
        None => Err(match ext.parse::<FileFormat>() {
            Err(e) => Error::corrupt(path.display(), e),
            Ok(_) => Error::corrupt(path.display(), "unknown file extension"),
        }),
    }
}

/// Applies a parsed delta document; see [`apply_delta`].
pub(crate) fn apply_delta_document(db: &DictDB, doc: Document, file: &str) -> Result<usize> {
    if doc.kind != DocKind::Delta {
        return Err(Error::corrupt(
            file,
            "this is a full backup, not a delta (load it instead)",
        ));
    }
    if doc.integrity == Integrity::Unverified && doc.meta.is_some() {
        warn!(file, "delta written by dictdb has no checksum");
    }
    let meta = doc.meta.unwrap_or_default();
    for name in meta.dropped.iter().chain(meta.created.keys()) {
        validate_table_name(name).map_err(|e| Error::corrupt(file, e))?;
    }

    let mut guard = db.lock();
    let st = &mut *guard;

    // Phase 1: work out every change without touching the database.
    let mut staged: BTreeMap<Arc<str>, Option<TableState>> = BTreeMap::new();
    for name in &meta.dropped {
        if st.tables.contains_key(name.as_str()) {
            staged.insert(Arc::from(name.as_str()), None);
        }
    }
    for (name, pk) in &meta.created {
        let t = TableState::new(0, Arc::from(pk.as_str()));
        staged.insert(Arc::from(name.as_str()), Some(t));
    }
    let mut affected = 0usize;
    let mut changes: Vec<(Arc<str>, Change)> = Vec::new();
    for t in doc.tables {
        let name: Arc<str> = Arc::from(t.name.as_str());
        let current = match staged.get(&name) {
            Some(Some(s)) => s.clone(),
            Some(None) => {
                return Err(Error::corrupt(
                    file,
                    format!("delta changes table `{name}`, which it also drops"),
                ))
            }
            None => match st.tables.get(&name) {
                Some(s) => s.clone(),
                None => {
                    return Err(Error::corrupt(
                        file,
                        format!(
                            "delta changes table `{name}`, which does not exist and which the delta does not create \
                             (is a delta missing from the chain?)"
                        ),
                    ))
                }
            },
        };
        let mut table = current;
        let pk = Arc::clone(&table.primary_key);
        for rec in t.records {
            let key = record_key(&rec, &pk, &name, file)?;
            table.bump(&key);
            let existed = table.records.insert(key.clone(), rec.clone()).is_some();
            affected += 1;
            let change = if existed {
                Change::Update { key, record: rec }
            } else {
                Change::Insert { key, record: rec }
            };
            changes.push((Arc::clone(&name), change));
        }
        for key in t.deletes {
            if table.records.remove(&key).is_some() {
                affected += 1;
                changes.push((Arc::clone(&name), Change::Delete { key }));
            }
        }
        staged.insert(name, Some(table));
    }
    for (name, n) in &meta.next_keys {
        if let Some(Some(t)) = staged.get_mut(name.as_str()) {
            t.next_id = t.next_id.max(i128::from(*n));
        } else if let Some(t) = st.tables.get(name.as_str()) {
            if t.next_id < i128::from(*n) {
                let mut t = t.clone();
                t.next_id = i128::from(*n);
                staged.insert(Arc::from(name.as_str()), Some(t));
            }
        }
    }

    // Phase 2: apply, publishing one event per change.
    for name in &meta.dropped {
        if let Some((name, _)) = st.tables.remove_entry(name.as_str()) {
            db.commit(&mut st.seq, &name, || Change::TableDropped);
        }
    }
    for (name, pk) in &meta.created {
        if let Some((name, _)) = st.tables.remove_entry(name.as_str()) {
            db.commit(&mut st.seq, &name, || Change::TableDropped);
        }
        let name: Arc<str> = Arc::from(name.as_str());
        let pk: Arc<str> = Arc::from(pk.as_str());
        db.commit(&mut st.seq, &name, || Change::TableCreated {
            primary_key: pk,
        });
    }
    for (name, table) in staged {
        if let Some(mut table) = table {
            table.incarnation = match st.tables.get(&name) {
                Some(t) => t.incarnation,
                None => st.new_incarnation(),
            };
            st.tables.insert(name, table);
        }
    }
    for (name, change) in changes {
        db.commit(&mut st.seq, &name, || change);
    }
    Ok(affected)
}
