//! The `dictdb` section of a document: what a file says about itself.

use std::collections::BTreeMap;

use super::input::{Fault, Res};
use super::syntax::{DocReader, DocWriter};
use crate::naming::BackupKind;

/// Document version written by this crate.
pub(crate) const VERSION: u32 = 2;

/// The oldest version still read: version 1 was written before files named
/// themselves and counted their tables.
const OLDEST: u32 = 1;

/// The counts of one table in a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TableCounts {
    /// The table's key field (full backups; deltas: when known).
    pub(crate) primary_key: Option<String>,
    /// Records (full backups) or upserts (deltas).
    pub(crate) records: u64,
    /// Deletes (deltas).
    pub(crate) deletes: u64,
}

/// What a file of ours says about itself, ahead of its records.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Meta {
    /// Document version.
    pub(crate) version: u32,
    /// Full backup or delta.
    pub(crate) kind: BackupKind,
    /// Version 2: the name the file was written under (a backup's name, or
    /// the file name a save was written to).
    pub(crate) name: Option<String>,
    /// Sequence number of the cut this file reflects: every change at or
    /// below it, none above.
    pub(crate) seq: u64,
    /// Deltas: the cut they start from (exclusive); equals the previous
    /// file's `seq` in a sound chain.
    pub(crate) from_seq: Option<u64>,
    /// Deltas: file name of the full backup the chain starts from.
    pub(crate) base: Option<String>,
    /// Next auto-assigned key of each table at the cut.
    pub(crate) next_keys: BTreeMap<String, u64>,
    /// Deltas: tables dropped since `from_seq` (applied first).
    pub(crate) dropped: Vec<String>,
    /// Deltas: tables created since `from_seq`, with their key field
    /// (applied after the drops, before the records).
    pub(crate) created: BTreeMap<String, String>,
    /// Number of records (full) or of changes (delta) in the file.
    pub(crate) count: u64,
    /// Version 2: per-table counts, checked against the content.
    pub(crate) tables: Option<BTreeMap<String, TableCounts>>,
    /// The fencing token of the writer's single-writer lease (object
    /// storage), when it held one: every file of a chain carries the same
    /// token, and restore refuses a chain whose files carry two. Optional:
    /// absent from files written without a lease (local directories), by
    /// older versions and by the Python original.
    pub(crate) fencing_token: Option<u64>,
}

fn bad<T>(r: &impl DocReader, reason: impl Into<String>) -> Res<T> {
    Err(Fault::Bad {
        at: r.offset(),
        reason: format!("dictdb section: {}", reason.into()),
    })
}

/// Reads a string map, refusing duplicate keys.
fn string_map<R: DocReader, V>(
    r: &mut R,
    what: &str,
    mut value: impl FnMut(&mut R) -> Res<V>,
) -> Res<BTreeMap<String, V>> {
    let mut out = BTreeMap::new();
    let mut k = String::new();
    r.begin_map()?;
    while r.next_key(&mut k)? {
        let v = value(r)?;
        if out.insert(std::mem::take(&mut k), v).is_some() {
            return bad(r, format!("`{what}` names a table twice"));
        }
    }
    Ok(out)
}

fn string_of<R: DocReader>(r: &mut R) -> Res<String> {
    let mut s = String::new();
    r.string(&mut s)?;
    Ok(s)
}

impl Meta {
    /// Reads the section (the reader is at its value). Strict: every key is
    /// known, none repeats, and what the kind requires is there.
    pub(crate) fn read<R: DocReader>(r: &mut R) -> Res<Meta> {
        let mut m = Meta::default();
        let mut seen: Vec<String> = Vec::new();
        let mut key = String::new();
        let mut kind = None;
        let mut seq = None;
        r.begin_map()?;
        while r.next_key(&mut key)? {
            if seen.contains(&key) {
                return bad(r, format!("`{key}` appears twice"));
            }
            seen.push(key.clone());
            match key.as_str() {
                "version" => {
                    let v = r.uint()?;
                    m.version = u32::try_from(v).unwrap_or(u32::MAX);
                    if m.version > VERSION {
                        return bad(
                            r,
                            format!(
                                "document version {v} was written by a newer dictdb \
                                 (this build reads versions {OLDEST} to {VERSION})"
                            ),
                        );
                    }
                    if m.version < OLDEST {
                        return bad(r, format!("unknown document version {v}"));
                    }
                }
                "kind" => {
                    kind = Some(match string_of(r)?.as_str() {
                        "full" => BackupKind::Full,
                        "delta" => BackupKind::Delta,
                        other => return bad(r, format!("unknown kind `{other}`")),
                    })
                }
                "name" => m.name = Some(string_of(r)?),
                "seq" => seq = Some(r.uint()?),
                "from_seq" => m.from_seq = Some(r.uint()?),
                "base" => m.base = Some(string_of(r)?),
                "next_keys" => m.next_keys = string_map(r, "next_keys", |r| r.uint())?,
                "dropped" => {
                    r.begin_array()?;
                    while r.next_element()? {
                        let t = string_of(r)?;
                        if m.dropped.contains(&t) {
                            return bad(r, format!("`dropped` names table `{t}` twice"));
                        }
                        m.dropped.push(t);
                    }
                }
                "created" => m.created = string_map(r, "created", string_of)?,
                "count" => m.count = r.uint()?,
                "tables" => m.tables = Some(string_map(r, "tables", read_counts)?),
                "fencing_token" => m.fencing_token = Some(r.uint()?),
                other => return bad(r, format!("unknown key `{other}`")),
            }
        }
        if m.version == 0 {
            return bad(r, "no `version`");
        }
        m.kind = match kind {
            Some(k) => k,
            None => return bad(r, "no `kind`"),
        };
        m.seq = match seq {
            Some(s) => s,
            None => return bad(r, "no `seq`"),
        };
        m.check(r)?;
        Ok(m)
    }

    /// What each kind and version require.
    fn check(&self, r: &impl DocReader) -> Res<()> {
        match self.kind {
            BackupKind::Full => {
                if self.from_seq.is_some() || self.base.is_some() {
                    return bad(r, "a full backup cannot have `from_seq` or `base`");
                }
                if !self.dropped.is_empty() || !self.created.is_empty() {
                    return bad(r, "a full backup cannot drop or create tables");
                }
            }
            BackupKind::Delta => {
                let Some(from) = self.from_seq else {
                    return bad(r, "a delta needs `from_seq`");
                };
                if self.base.is_none() {
                    return bad(r, "a delta needs `base`");
                }
                if from >= self.seq {
                    return bad(
                        r,
                        format!(
                            "the sequence range goes backwards (from {from} to {})",
                            self.seq
                        ),
                    );
                }
            }
        }
        if self.version >= 2 {
            if self.tables.is_none() {
                return bad(r, "no `tables` counts");
            }
            if self.kind == BackupKind::Delta && self.name.is_none() {
                return bad(r, "a delta needs `name`");
            }
        } else if self.name.is_some() || self.tables.is_some() {
            return bad(r, "`name` and `tables` need version 2");
        }
        Ok(())
    }

    /// Writes the section (the writer is at its value).
    pub(crate) fn write(&self, w: &mut impl DocWriter) {
        let opt = |b: bool| usize::from(b);
        let n = 5
            + opt(self.name.is_some())
            + opt(self.from_seq.is_some())
            + opt(self.base.is_some())
            + opt(!self.dropped.is_empty())
            + opt(!self.created.is_empty())
            + opt(self.tables.is_some())
            + opt(self.fencing_token.is_some());
        w.begin_map(n);
        w.key("version");
        w.uint(u64::from(self.version));
        w.key("kind");
        w.string(&self.kind.to_string());
        if let Some(name) = &self.name {
            w.key("name");
            w.string(name);
        }
        w.key("seq");
        w.uint(self.seq);
        if let Some(f) = self.from_seq {
            w.key("from_seq");
            w.uint(f);
        }
        if let Some(b) = &self.base {
            w.key("base");
            w.string(b);
        }
        w.key("next_keys");
        w.begin_map(self.next_keys.len());
        for (t, k) in &self.next_keys {
            w.key(t);
            w.uint(*k);
        }
        w.end_map();
        if !self.dropped.is_empty() {
            w.key("dropped");
            w.begin_array(self.dropped.len());
            for t in &self.dropped {
                w.string(t);
            }
            w.end_array();
        }
        if !self.created.is_empty() {
            w.key("created");
            w.begin_map(self.created.len());
            for (t, pk) in &self.created {
                w.key(t);
                w.string(pk);
            }
            w.end_map();
        }
        w.key("count");
        w.uint(self.count);
        if let Some(tables) = &self.tables {
            w.key("tables");
            w.begin_map(tables.len());
            for (t, c) in tables {
                w.key(t);
                write_counts(w, self.kind, c);
            }
            w.end_map();
        }
        if let Some(token) = self.fencing_token {
            w.key("fencing_token");
            w.uint(token);
        }
        w.end_map();
    }
}

fn read_counts<R: DocReader>(r: &mut R) -> Res<TableCounts> {
    let mut c = TableCounts::default();
    let mut seen: Vec<String> = Vec::new();
    let mut key = String::new();
    r.begin_map()?;
    while r.next_key(&mut key)? {
        if seen.contains(&key) {
            return bad(r, format!("`{key}` appears twice in table counts"));
        }
        seen.push(key.clone());
        match key.as_str() {
            "primary_key" => c.primary_key = Some(string_of(r)?),
            "records" | "upserts" => c.records = r.uint()?,
            "deletes" => c.deletes = r.uint()?,
            other => return bad(r, format!("unknown key `{other}` in table counts")),
        }
    }
    Ok(c)
}

fn write_counts(w: &mut impl DocWriter, kind: BackupKind, c: &TableCounts) {
    let delta = kind == BackupKind::Delta;
    w.begin_map(usize::from(c.primary_key.is_some()) + 1 + usize::from(delta));
    if let Some(pk) = &c.primary_key {
        w.key("primary_key");
        w.string(pk);
    }
    w.key(if delta { "upserts" } else { "records" });
    w.uint(c.records);
    if delta {
        w.key("deletes");
        w.uint(c.deletes);
    }
    w.end_map();
}
