//! The document grammar, spelled once for both formats and both directions.
//!
//! ```text
//! full:  {"dictdb": META, "tables": {NAME: {"primary_key": PK, "schema": null|{..},
//!                                           "records": [RECORD, ...]}, ...},
//!         "checksum": "xxh3-64:<16 hex>"}
//! delta: {"dictdb": META, "type": "delta", "timestamp": SECONDS,
//!         "tables": {NAME: {"upserts": [RECORD, ...], "deletes": [KEY, ...]}, ...},
//!         "checksum": "xxh3-64:<16 hex>"}
//! ```
//!
//! Files of the Python original have no `dictdb` and no `checksum` (a full
//! backup is `{"tables": ...}`, a delta `{"type": "delta", "timestamp": ..,
//! "tables": ...}`). A file is **ours** when it carries either key; then it
//! must carry both, the checksum must be the last entry, well formed and
//! matching, nothing may follow it, and no unknown key is allowed. The two
//! keys sit at opposite ends of the document: a single damaged byte can
//! remove at most one of them, so a damaged file of ours is never taken for
//! one written by another tool (and the store's rules add a second guard,
//! see `restore`).
//!
//! Inside a table object the grammar is strict for every file, the
//! original's too, since those carry no checksum: `primary_key` and
//! `records` are required in a full backup's table (`schema` may be left
//! out: null), `upserts` and `deletes` in a delta's, a delta needs its
//! `timestamp`, and an unknown key is an error naming it and its table. The
//! original always writes all of them, so this refuses nothing it writes,
//! while a key name damaged in one byte (`recordr`) no longer passes for an
//! extra key with its records taken for none. Only the top level of the
//! original's files may carry extra keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::build::{Built, Inline, Pipeline, RecordSink, BATCH};
use super::checksum::{format_digest, well_formed, ChunkWriter, Integrity};
use super::input::{Fault, Res};
use super::meta::{Meta, TableCounts, VERSION};
use super::parallel::{self, Idle};
use super::syntax::{DocReader, DocWriter};
use crate::db::{
    record_key, validate_table_name, ChangeSet, Snapshot, TableChanges, TableSnapshot,
};
use crate::error::Result;
use crate::key::Key;
use crate::naming::BackupKind;
use crate::record::Record;

/// What a file says about itself: everything before its tables.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Header {
    /// Full backup or delta.
    pub(crate) kind: BackupKind,
    /// A delta's `timestamp` (seconds since the epoch).
    pub(crate) timestamp: Option<f64>,
    /// The `dictdb` section (`None`: written by the Python original).
    pub(crate) meta: Option<Meta>,
}

/// A decoded body.
#[derive(Debug)]
pub(crate) enum Body {
    Full(Snapshot),
    Delta(ChangeSet),
}

/// A decoded file.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) header: Header,
    pub(crate) integrity: Integrity,
    pub(crate) body: Body,
}

/// How much to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Only the header: stop at `tables`.
    Header,
    /// Everything; index a full backup's records on a second thread.
    Body { pipeline: bool },
}

/// Either a header (when only that was wanted) or a whole file.
pub(crate) enum Outcome {
    Header(Header),
    Whole(Decoded),
}

fn bad<T>(r: &impl DocReader, reason: impl Into<String>) -> Res<T> {
    Err(Fault::Bad {
        at: r.offset(),
        reason: reason.into(),
    })
}

/// Receives a delta's changes while the delta is decoded: in file order,
/// in batches of up to [`FEED_BATCH`], before the file is known to be sound
/// (a receiver must be ready to throw away what it did with them). Lets a
/// replica apply a delta while it is still being read.
pub(crate) trait DeltaFeed {
    /// The next upserts of table `table`.
    fn upserts(&mut self, table: &Arc<str>, records: &[Record]);
    /// The next deletes of table `table`: only once all its upserts were
    /// handed over (deletes apply after upserts), so deletes that come
    /// first in a table's object are not fed.
    fn deletes(&mut self, table: &Arc<str>, keys: &[Key]);
}

/// Changes handed to a [`DeltaFeed`] at a time.
pub(crate) const FEED_BATCH: usize = 512;

/// Decodes a document; a delta's upserts also go to `feed` as they are
/// read.
///
/// `named` is the kind the file's name says, if it is named like a backup.
/// It is consulted only for a document without a dictdb section whose
/// `tables` come before any `type` (the original writes `type` first, but a
/// JSON tool that sorts keys puts it last): its header is then read to the
/// end to find the `type`, and its body is read as the name says and
/// checked against that `type` at the end.
pub(crate) fn decode<R: DocReader>(
    r: &mut R,
    want: Want,
    mut feed: Option<&mut dyn DeltaFeed>,
    named: Option<BackupKind>,
) -> Res<Outcome> {
    let mut seen: Vec<String> = Vec::new();
    let mut key = String::new();
    let mut meta: Option<Meta> = None;
    let mut doc_type: Option<BackupKind> = None;
    let mut timestamp = None;
    let mut body: Option<Body> = None;
    let mut checksum: Option<Integrity> = None;
    let mut unknown: Option<String> = None;
    // A header whose kind is decided only at the end skips the tables.
    let mut tables_skipped = false;
    r.begin_map()?;
    while r.next_key(&mut key)? {
        if seen.contains(&key) {
            return bad(r, format!("top-level key `{key}` appears twice"));
        }
        let first = seen.is_empty();
        seen.push(key.clone());
        match key.as_str() {
            "dictdb" => {
                let m = Meta::read(r)?;
                if m.version >= 2 && !first {
                    return bad(r, "the dictdb section must come first");
                }
                meta = Some(m);
            }
            "type" => {
                let mut t = String::new();
                r.string(&mut t)?;
                doc_type = Some(match t.as_str() {
                    "delta" => BackupKind::Delta,
                    "full" => BackupKind::Full,
                    other => return bad(r, format!("unknown document type `{other}`")),
                });
            }
            "timestamp" => timestamp = Some(r.number()?),
            "tables" => {
                // Without a dictdb section or a `type` so far, the kind is
                // only known at the end: the `type` may follow.
                let undecided = meta.is_none() && doc_type.is_none();
                let kind = match (undecided, named) {
                    (true, Some(named)) => named,
                    _ => kind_of(r, meta.as_ref(), doc_type)?,
                };
                let Want::Body { pipeline } = want else {
                    if undecided {
                        r.skip()?;
                        tables_skipped = true;
                        continue;
                    }
                    return Ok(Outcome::Header(Header {
                        kind,
                        timestamp,
                        meta: meta.clone(),
                    }));
                };
                body = Some(match kind {
                    BackupKind::Full => Body::Full(full_tables(r, meta.as_ref(), pipeline)?),
                    BackupKind::Delta => Body::Delta(delta_tables(r, meta.as_ref(), feed.take())?),
                });
            }
            "checksum" => {
                let entry = r.entry_start();
                let digest = r.digest_to(entry)?;
                let mut recorded = String::new();
                r.string(&mut recorded)?;
                if !well_formed(&recorded) {
                    return bad(r, format!("malformed checksum `{recorded}`"));
                }
                let computed = format_digest(digest);
                if recorded != computed {
                    return Err(Fault::Checksum { recorded, computed });
                }
                if r.next_key(&mut key)? {
                    return bad(r, "the checksum must be the last entry");
                }
                checksum = Some(Integrity::Verified(computed));
                break;
            }
            _ => {
                r.skip()?;
                unknown.get_or_insert_with(|| key.clone());
            }
        }
    }
    let ours = meta.is_some() || checksum.is_some();
    r.end(ours)?;
    if ours {
        if meta.is_none() {
            return bad(r, "a checksum but no dictdb section: the file is damaged");
        }
        if checksum.is_none() {
            return bad(r, "a dictdb section but no checksum: the file is damaged");
        }
        if let Some(k) = unknown {
            return bad(r, format!("unknown top-level key `{k}`"));
        }
    }
    let kind = kind_of(r, meta.as_ref(), doc_type)?;
    if tables_skipped {
        return Ok(Outcome::Header(Header {
            kind,
            timestamp,
            meta,
        }));
    }
    let Some(body) = body else {
        return bad(r, "no \"tables\"");
    };
    // Every writer, the original included, gives a delta its time: a
    // missing one is a damaged key name (extra top-level keys are allowed).
    if kind == BackupKind::Delta && timestamp.is_none() {
        return bad(r, "a delta with no `timestamp`");
    }
    if let Want::Header = want {
        // Unreachable in practice: the header is returned at `tables`.
        return Ok(Outcome::Header(Header {
            kind,
            timestamp,
            meta,
        }));
    }
    let read_as = match body {
        Body::Full(_) => BackupKind::Full,
        Body::Delta(_) => BackupKind::Delta,
    };
    if read_as != kind {
        return bad(
            r,
            format!(
                "its tables were read as a {read_as}'s ({}), but the document {}",
                match named {
                    Some(_) => "as the file's name says",
                    None => "no `type` came before them",
                },
                match doc_type {
                    Some(t) => format!("says it is a {t} after them"),
                    None => "has no `type`".into(),
                }
            ),
        );
    }
    Ok(Outcome::Whole(Decoded {
        header: Header {
            kind,
            timestamp,
            meta,
        },
        integrity: checksum.unwrap_or(Integrity::Unverified),
        body,
    }))
}

/// The kind of a document: its metadata's, which must agree with its
/// `type`; else its `type`; else a full backup (the original's `save`).
fn kind_of(
    r: &impl DocReader,
    meta: Option<&Meta>,
    doc_type: Option<BackupKind>,
) -> Res<BackupKind> {
    match (meta, doc_type) {
        (Some(m), Some(t)) if m.kind != t => bad(
            r,
            format!(
                "the document is a {t} but its dictdb section says {}",
                m.kind
            ),
        ),
        (Some(m), None) if m.kind == BackupKind::Delta => {
            bad(r, "a delta without `\"type\": \"delta\"`")
        }
        (Some(m), _) => Ok(m.kind),
        (None, t) => Ok(t.unwrap_or(BackupKind::Full)),
    }
}

/// Checks a table name and that it is new.
fn table_name(r: &impl DocReader, name: &str, seen: &[String]) -> Res<()> {
    if let Err(e) = validate_table_name(name) {
        return bad(r, e.to_string());
    }
    if seen.iter().any(|s| s == name) {
        return bad(r, format!("table `{name}` appears twice"));
    }
    Ok(())
}

/// The error for a key no table object holds, naming it and its table.
/// Unknown keys are refused in every file, the original's included: its
/// `load` reads `records` and ignores the rest, so a key damaged in one
/// byte would pass for an extra one and its records for none.
fn unknown_key(key: &str, table: &str) -> String {
    format!(
        "unknown key `{}` in table `{table}`",
        crate::naming::printable_name(key)
    )
}

/// Tracks the keys of one table object.
struct Fields(Vec<&'static str>);

impl Fields {
    fn once(&mut self, r: &impl DocReader, key: &'static str) -> Res<()> {
        if self.0.contains(&key) {
            return bad(r, format!("`{key}` appears twice in a table"));
        }
        self.0.push(key);
        Ok(())
    }
}

/// The per-table counts a version 2 file records, checked against what was
/// read.
fn check_counts(
    r: &impl DocReader,
    meta: Option<&Meta>,
    found: &BTreeMap<String, TableCounts>,
    total: u64,
) -> Res<()> {
    let Some(m) = meta else { return Ok(()) };
    if let Some(counts) = &m.tables {
        if counts != found {
            return bad(
                r,
                "the tables and record counts differ from the dictdb section's",
            );
        }
        if m.count != total {
            return bad(
                r,
                format!(
                    "{total} records or changes but the dictdb section says {}",
                    m.count
                ),
            );
        }
    }
    Ok(())
}

struct FullTable {
    name: String,
    pk: String,
    schema: Option<Value>,
}

fn full_tables<R: DocReader>(r: &mut R, meta: Option<&Meta>, pipeline: bool) -> Res<Snapshot> {
    let mut sink: Box<dyn RecordSink> = if pipeline {
        match Pipeline::start() {
            Ok(p) => Box::new(p),
            Err(_) => Box::<Inline>::default(),
        }
    } else {
        Box::<Inline>::default()
    };
    let mut tables: Vec<FullTable> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let mut counts = BTreeMap::new();
    let mut total = 0u64;
    let mut name = String::new();
    let mut key = String::new();
    let mut scratch = Vec::with_capacity(256);
    let sunk = |r: &R, e: String| -> Fault {
        Fault::Bad {
            at: r.offset(),
            reason: e,
        }
    };
    r.begin_map()?;
    while r.next_key(&mut name)? {
        table_name(r, &name, &names)?;
        names.push(name.clone());
        let mut pk: Option<String> = None;
        let mut schema = None;
        let mut held: Vec<Record> = Vec::new();
        let mut started = false;
        let mut count = 0u64;
        let mut fields = Fields(Vec::new());
        r.begin_map()?;
        while r.next_key(&mut key)? {
            match key.as_str() {
                "primary_key" => {
                    fields.once(r, "primary_key")?;
                    let mut s = String::new();
                    r.string(&mut s)?;
                    pk = Some(s);
                }
                "schema" => {
                    fields.once(r, "schema")?;
                    if !r.null()? {
                        scratch.clear();
                        r.value(&mut scratch)?;
                        match Record::from_validated(&scratch).to_value() {
                            v @ Value::Object(_) => schema = Some(v),
                            _ => return bad(r, "a table schema must be an object or null"),
                        }
                    }
                }
                "records" => {
                    fields.once(r, "records")?;
                    if let Some(pk) = &pk {
                        sink.start(&name, pk).map_err(|e| sunk(r, e))?;
                        started = true;
                    }
                    let mut batch = Vec::with_capacity(BATCH);
                    r.begin_array()?;
                    while r.next_element()? {
                        scratch.clear();
                        r.record(&mut scratch)?;
                        batch.push(Record::from_validated(&scratch));
                        count += 1;
                        if batch.len() == BATCH {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                            if started {
                                sink.batch(full).map_err(|e| sunk(r, e))?;
                            } else {
                                held.extend(full);
                            }
                        }
                    }
                    if started {
                        sink.batch(batch).map_err(|e| sunk(r, e))?;
                    } else {
                        held.extend(batch);
                    }
                }
                "upserts" | "deletes" => {
                    return bad(r, format!("a full backup's table holds `{key}`"));
                }
                // Also in the original's files, which carry no checksum:
                // one damaged byte in a key name must not drop a table's
                // records.
                other => return bad(r, unknown_key(other, &name)),
            }
        }
        let Some(pk) = pk else {
            return bad(r, format!("table `{name}` has no `primary_key`"));
        };
        if !fields.0.contains(&"records") {
            return bad(r, format!("table `{name}` has no `records`"));
        }
        if !started {
            sink.start(&name, &pk).map_err(|e| sunk(r, e))?;
            sink.batch(held).map_err(|e| sunk(r, e))?;
        }
        total += count;
        counts.insert(
            name.clone(),
            TableCounts {
                primary_key: Some(pk.clone()),
                records: count,
                deletes: 0,
            },
        );
        tables.push(FullTable {
            name: name.clone(),
            pk,
            schema,
        });
    }
    let mut built = sink.finish().map_err(|e| sunk(r, e))?;
    check_counts(r, meta, &counts, total)?;
    let next_keys = meta.map(|m| &m.next_keys);
    if let Some(nk) = next_keys {
        if let Some(t) = nk.keys().find(|t| !counts.contains_key(*t)) {
            return bad(
                r,
                format!("next_keys names table `{t}`, which the file does not hold"),
            );
        }
    }
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let (records, mut next_id): Built = built
            .remove(&t.name)
            .unwrap_or_else(|| (imbl::OrdMap::new(), 1));
        if let Some(n) = next_keys.and_then(|nk| nk.get(&t.name)) {
            next_id = next_id.max(i128::from(*n));
        }
        out.push(TableSnapshot {
            name: Arc::from(t.name),
            primary_key: Arc::from(t.pk),
            schema: t.schema.map(Arc::new),
            records,
            next_id,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Snapshot {
        seq: meta.map_or(0, |m| m.seq),
        tables: out,
    })
}

fn delta_tables<R: DocReader>(
    r: &mut R,
    meta: Option<&Meta>,
    mut feed: Option<&mut dyn DeltaFeed>,
) -> Res<ChangeSet> {
    let mut set = ChangeSet::default();
    let mut names: Vec<String> = Vec::new();
    let mut counts = BTreeMap::new();
    let mut total = 0u64;
    let mut name = String::new();
    let mut key = String::new();
    let mut scratch = Vec::with_capacity(256);
    let recorded = meta.and_then(|m| m.tables.as_ref());
    r.begin_map()?;
    while r.next_key(&mut name)? {
        table_name(r, &name, &names)?;
        names.push(name.clone());
        let pk = recorded
            .and_then(|c| c.get(&name))
            .and_then(|c| c.primary_key.clone());
        let mut t = TableChanges {
            name: Arc::from(name.as_str()),
            primary_key: pk.as_deref().map(Arc::from),
            ..TableChanges::default()
        };
        let mut fields = Fields(Vec::new());
        // Upserts of this table handed to `feed` so far.
        let mut fed = 0;
        r.begin_map()?;
        while r.next_key(&mut key)? {
            match key.as_str() {
                "upserts" => {
                    fields.once(r, "upserts")?;
                    r.begin_array()?;
                    while r.next_element()? {
                        scratch.clear();
                        r.record(&mut scratch)?;
                        let rec = Record::from_validated(&scratch);
                        if let Some(pk) = &pk {
                            // The key field is known: check the key now, so
                            // a file is judged the same on its own as in a
                            // chain.
                            if let Err(e) = record_key(&rec, pk, &name) {
                                return bad(r, e);
                            }
                        }
                        t.upserts.push(rec);
                        if let Some(f) = feed.as_mut() {
                            if t.upserts.len() - fed >= FEED_BATCH {
                                f.upserts(&t.name, &t.upserts[fed..]);
                                fed = t.upserts.len();
                            }
                        }
                    }
                    if let Some(f) = feed.as_mut() {
                        if t.upserts.len() > fed {
                            f.upserts(&t.name, &t.upserts[fed..]);
                            fed = t.upserts.len();
                        }
                    }
                }
                "deletes" => {
                    fields.once(r, "deletes")?;
                    // Fed only after the table's upserts.
                    let mut feed = feed.as_mut().filter(|_| fields.0.contains(&"upserts"));
                    let mut fed = 0;
                    r.begin_array()?;
                    while r.next_element()? {
                        t.deletes.push(r.key()?);
                        if let Some(f) = feed.as_mut() {
                            if t.deletes.len() - fed >= FEED_BATCH {
                                f.deletes(&t.name, &t.deletes[fed..]);
                                fed = t.deletes.len();
                            }
                        }
                    }
                    if let Some(f) = feed.as_mut() {
                        if t.deletes.len() > fed {
                            f.deletes(&t.name, &t.deletes[fed..]);
                        }
                    }
                }
                "records" | "primary_key" | "schema" => {
                    return bad(r, format!("a delta's table holds `{key}`"));
                }
                other => return bad(r, unknown_key(other, &name)),
            }
        }
        // The original writes both for every table of a delta; without one,
        // a damaged key name would silently drop changes.
        for required in ["upserts", "deletes"] {
            if !fields.0.contains(&required) {
                return bad(r, format!("table `{name}` of a delta has no `{required}`"));
            }
        }
        total += (t.upserts.len() + t.deletes.len()) as u64;
        counts.insert(
            name.clone(),
            TableCounts {
                primary_key: pk,
                records: t.upserts.len() as u64,
                deletes: t.deletes.len() as u64,
            },
        );
        set.tables.push(t);
    }
    check_counts(r, meta, &counts, total)?;
    set.tables.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(m) = meta {
        set.dropped = m.dropped.iter().map(|t| Arc::from(t.as_str())).collect();
        set.created = m
            .created
            .iter()
            .map(|(t, pk)| (Arc::from(t.as_str()), Arc::from(pk.as_str())))
            .collect();
        set.next_keys = m
            .next_keys
            .iter()
            .map(|(t, n)| (Arc::from(t.as_str()), *n))
            .collect();
    }
    Ok(set)
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Where a delta sits in its chain.
#[derive(Clone, Debug)]
pub(crate) struct Link {
    /// The cut it starts after.
    pub(crate) from_seq: u64,
    /// The cut it ends at.
    pub(crate) seq: u64,
    /// The full backup the chain starts from.
    pub(crate) base: String,
    /// When it was written (seconds since the epoch; the name's stamp).
    pub(crate) timestamp: f64,
}

/// What to write.
pub(crate) enum Doc<'a> {
    /// A full backup (`name`: `None` for a save).
    Full {
        snapshot: &'a Snapshot,
        name: Option<&'a str>,
        /// The writer's lease fencing token, if it holds one.
        token: Option<u64>,
    },
    /// A delta named `name`.
    Delta {
        changes: &'a ChangeSet,
        link: &'a Link,
        name: &'a str,
        /// The writer's lease fencing token, if it holds one.
        token: Option<u64>,
    },
}

/// What was written.
#[derive(Clone, Debug)]
pub(crate) struct Written {
    /// Records (full) or upserts plus deletes (delta).
    pub(crate) records: u64,
    /// File size.
    pub(crate) bytes: u64,
    /// The embedded checksum.
    pub(crate) checksum: String,
}

impl Doc<'_> {
    fn meta(&self) -> Meta {
        match self {
            Doc::Full {
                snapshot,
                name,
                token,
            } => Meta {
                version: VERSION,
                kind: BackupKind::Full,
                name: name.map(str::to_string),
                seq: snapshot.seq(),
                next_keys: snapshot
                    .next_keys()
                    .into_iter()
                    .map(|(t, n)| (t.to_string(), n))
                    .collect(),
                count: snapshot.record_count() as u64,
                tables: Some(
                    snapshot
                        .tables()
                        .iter()
                        .map(|t| {
                            (
                                t.name().to_string(),
                                TableCounts {
                                    primary_key: Some(t.primary_key().to_string()),
                                    records: t.len() as u64,
                                    deletes: 0,
                                },
                            )
                        })
                        .collect(),
                ),
                fencing_token: *token,
                ..Meta::default()
            },
            Doc::Delta {
                changes,
                link,
                name,
                token,
            } => Meta {
                version: VERSION,
                kind: BackupKind::Delta,
                name: Some(name.to_string()),
                seq: link.seq,
                from_seq: Some(link.from_seq),
                base: Some(link.base.clone()),
                next_keys: changes
                    .next_keys
                    .iter()
                    .map(|(t, n)| (t.to_string(), *n))
                    .collect(),
                dropped: changes.dropped.iter().map(|t| t.to_string()).collect(),
                created: changes
                    .created
                    .iter()
                    .map(|(t, pk)| (t.to_string(), pk.to_string()))
                    .collect(),
                count: changes.len() as u64,
                tables: Some(
                    changes
                        .tables
                        .iter()
                        .map(|t| {
                            (
                                t.name.to_string(),
                                TableCounts {
                                    primary_key: t.primary_key.as_deref().map(str::to_string),
                                    records: t.upserts.len() as u64,
                                    deletes: t.deletes.len() as u64,
                                },
                            )
                        })
                        .collect(),
                ),
                fencing_token: *token,
            },
        }
    }
}

/// Writes a document through `w`, handing chunks to `out` as they fill. A
/// full backup's records go on two cores while `idle` says so.
pub(crate) fn encode<W, F>(
    mut w: W,
    out: &mut ChunkWriter<F>,
    doc: &Doc<'_>,
    idle: Option<Idle<'_>>,
) -> Result<Written>
where
    W: DocWriter + Sync,
    F: FnMut(Vec<u8>) -> Result<()>,
{
    let meta = doc.meta();
    let records = meta.count;
    match doc {
        Doc::Full { snapshot, .. } => {
            w.begin_map(3);
            w.key("dictdb");
            meta.write(&mut w);
            w.key("tables");
            w.begin_map(snapshot.tables().len());
            for t in snapshot.tables() {
                w.key(t.name());
                w.begin_map(3);
                w.key("primary_key");
                w.string(t.primary_key());
                w.key("schema");
                match t.schema() {
                    Some(s) => w.json(s),
                    None => w.null(),
                }
                w.key("records");
                w.begin_array(t.len());
                // Key order: also roughly allocation order, the cache
                // friendly way to visit them (see WORKLOAD.md).
                parallel::write_records(&mut w, out, t, idle)?;
                w.end_array();
                w.end_map();
            }
            w.end_map();
        }
        Doc::Delta { changes, link, .. } => {
            w.begin_map(5);
            w.key("dictdb");
            meta.write(&mut w);
            w.key("type");
            w.string("delta");
            w.key("timestamp");
            w.float(link.timestamp);
            w.key("tables");
            w.begin_map(changes.tables.len());
            for t in &changes.tables {
                w.key(&t.name);
                w.begin_map(2);
                w.key("upserts");
                w.begin_array(t.upserts.len());
                for rec in &t.upserts {
                    w.record(rec);
                    out.maybe_flush(w.buf())?;
                }
                w.end_array();
                w.key("deletes");
                w.begin_array(t.deletes.len());
                for key in &t.deletes {
                    w.key_value(key);
                }
                w.end_array();
                w.end_map();
                out.maybe_flush(w.buf())?;
            }
            w.end_map();
        }
    }
    let checksum = out.checksum(w.buf());
    w.checksum_entry(&checksum);
    let last = std::mem::take(w.buf());
    let bytes = out.finish(last)?;
    Ok(Written {
        records,
        bytes,
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_fed, FileFormat};

    /// Remembers what a decoder handed over, in order.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    impl DeltaFeed for Recorder {
        fn upserts(&mut self, table: &Arc<str>, records: &[Record]) {
            for r in records {
                self.0
                    .push(format!("{table} upsert {}", r.to_json_string()));
            }
        }
        fn deletes(&mut self, table: &Arc<str>, keys: &[Key]) {
            for k in keys {
                self.0.push(format!("{table} delete {k}"));
            }
        }
    }

    fn fed(doc: &str) -> Vec<String> {
        let mut feed = Recorder::default();
        decode_fed(
            doc.as_bytes(),
            FileFormat::Json,
            "t.json",
            false,
            Some(&mut feed),
        )
        .unwrap();
        feed.0
    }

    #[test]
    fn a_feed_gets_upserts_then_deletes_in_file_order_in_batches() {
        let upserts: Vec<String> = (0..FEED_BATCH + 3)
            .map(|i| format!("{{\"id\":{i}}}"))
            .collect();
        let doc = format!(
            r#"{{"type":"delta","timestamp":1,"tables":{{"a":{{"upserts":[{}],"deletes":[7,8]}}}}}}"#,
            upserts.join(",")
        );
        let got = fed(&doc);
        assert_eq!(got.len(), FEED_BATCH + 5);
        assert_eq!(got[0], "a upsert {\"id\":0}");
        assert_eq!(
            got[FEED_BATCH + 2],
            format!("a upsert {{\"id\":{}}}", FEED_BATCH + 2)
        );
        assert_eq!(got[FEED_BATCH + 3..], ["a delete 7", "a delete 8"]);
    }

    #[test]
    fn deletes_before_a_tables_upserts_are_not_fed() {
        // Applied ahead of the upserts they would undo the wrong way round:
        // left to the apply once the file is read.
        let got = fed(
            r#"{"type":"delta","timestamp":1,"tables":{"a":{"deletes":[1],"upserts":[{"id":1}]}}}"#,
        );
        assert_eq!(got, ["a upsert {\"id\":1}"]);
    }
}
