//! Reading documents of either format, ours or the Python original's.
//!
//! JSON records are transcoded straight into stored MessagePack records as
//! they are parsed (no `serde_json::Value` per record); MessagePack records
//! are validated and copied. Every error names the file.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{verify_checksum, FileFormat, Integrity, Meta};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::record::{
    find_out_of_range_integer, tok_name, validate_record, Reader, Record, Tok, Transcode,
    SUSPICIOUS_FLOAT,
};

/// Full backup or delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DocKind {
    Full,
    Delta,
}

/// One table of a parsed document.
#[derive(Debug, Default)]
pub(crate) struct DocTable {
    pub(crate) name: String,
    pub(crate) primary_key: Option<String>,
    pub(crate) schema: Option<Value>,
    /// Full documents: the records. Deltas: the upserts.
    pub(crate) records: Vec<Record>,
    /// The records went to a [`RecordSink`] instead of `records`.
    pub(crate) streamed: bool,
    pub(crate) deletes: Vec<Key>,
}

/// A parsed document.
#[derive(Debug)]
pub(crate) struct Document {
    pub(crate) kind: DocKind,
    pub(crate) meta: Option<Meta>,
    pub(crate) timestamp: Option<f64>,
    pub(crate) tables: Vec<DocTable>,
    pub(crate) integrity: Integrity,
}

/// What a [`RecordSink`] is sent.
pub(crate) enum SinkMsg {
    /// The records of this table (with this key field) follow.
    Start { table: String, primary_key: String },
    /// Records, in file order.
    Batch(Vec<Record>),
}

/// Takes the records of a full document's tables while it is parsed, so
/// that another thread can index them at the same time (restore of a large
/// JSON backup: parsing and building the B-tree overlap on two cores).
/// Only tables whose `primary_key` comes before their `records` are sent;
/// the others stay in the document.
#[derive(Debug)]
pub(crate) struct RecordSink {
    pub(crate) tx: std::sync::mpsc::SyncSender<SinkMsg>,
}

impl RecordSink {
    const BATCH: usize = 4096;

    fn send(&self, msg: SinkMsg) {
        // A receiver that gave up has its own error to report.
        let _ = self.tx.send(msg);
    }
}

/// Parses a whole file: checks the embedded checksum (if any), then the
/// document. `file` names the file in errors.
pub(crate) fn parse_document(bytes: &[u8], format: FileFormat, file: &str) -> Result<Document> {
    parse_document_with(bytes, format, file, None)
}

/// [`parse_document`], sending the records of JSON full documents to `sink`.
pub(crate) fn parse_document_with(
    bytes: &[u8],
    format: FileFormat,
    file: &str,
    sink: Option<&mut RecordSink>,
) -> Result<Document> {
    let integrity = verify_checksum(bytes, format, file)?;
    let mut doc = match format {
        FileFormat::Json => parse_json(bytes, sink).map_err(|e| Error::corrupt(file, e))?,
        FileFormat::MessagePack => parse_msgpack(bytes).map_err(|e| Error::corrupt(file, e))?,
    };
    doc.integrity = integrity;
    if let Some(meta) = &doc.meta {
        let expected = match doc.kind {
            DocKind::Full => "full",
            DocKind::Delta => "delta",
        };
        if meta.kind != expected {
            return Err(Error::corrupt(
                file,
                format!(
                    "document is a {expected} but its metadata says `{}`",
                    meta.kind
                ),
            ));
        }
    }
    let mut names: Vec<&str> = doc.tables.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::corrupt(
            file,
            format!("table `{}` appears twice", w[0]),
        ));
    }
    for t in &doc.tables {
        crate::db::validate_table_name(&t.name).map_err(|e| Error::corrupt(file, e))?;
        if doc.kind == DocKind::Full && t.primary_key.is_none() {
            return Err(Error::corrupt(
                file,
                format!("table `{}` has no primary_key", t.name),
            ));
        }
    }
    Ok(doc)
}

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

fn parse_json(
    bytes: &[u8],
    sink: Option<&mut RecordSink>,
) -> std::result::Result<Document, String> {
    SUSPICIOUS_FLOAT.with(|f| f.set(false));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc = de::Deserializer::deserialize_map(&mut de, DocVisitor { sink })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    // serde_json reads integer literals beyond 64 bits as floats; rather than
    // change a value silently, such a file is refused. The scan only runs
    // when a float that could be one of them was seen.
    if SUSPICIOUS_FLOAT.with(|f| f.replace(false)) {
        if let Some((at, lit)) = find_out_of_range_integer(bytes) {
            return Err(format!(
                "integer {lit} at byte {at} is outside the 64-bit range and cannot be kept exactly"
            ));
        }
    }
    Ok(doc)
}

struct DocVisitor<'s> {
    sink: Option<&'s mut RecordSink>,
}

impl<'de> Visitor<'de> for DocVisitor<'_> {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a DictDB document (an object with \"tables\")")
    }

    fn visit_map<A: MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> std::result::Result<Document, A::Error> {
        let mut kind = DocKind::Full;
        let mut meta = None;
        let mut timestamp = None;
        let mut tables = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => {
                    let t: String = map.next_value()?;
                    kind = match t.as_str() {
                        "delta" => DocKind::Delta,
                        "full" => DocKind::Full,
                        other => {
                            return Err(de::Error::custom(format_args!(
                                "unknown document type `{other}`"
                            )))
                        }
                    };
                }
                "timestamp" => timestamp = Some(map.next_value::<f64>()?),
                "dictdb" => meta = Some(map.next_value::<Meta>()?),
                "tables" => {
                    if tables.is_some() {
                        return Err(de::Error::custom("\"tables\" appears twice"));
                    }
                    // Deltas hold upserts, never streamed.
                    let sink = if kind == DocKind::Full {
                        self.sink.as_deref_mut()
                    } else {
                        None
                    };
                    tables = Some(map.next_value_seed(TablesSeed { sink })?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let tables = tables.ok_or_else(|| de::Error::custom("missing \"tables\""))?;
        Ok(Document {
            kind,
            meta,
            timestamp,
            tables,
            integrity: Integrity::Unverified,
        })
    }
}

struct TablesSeed<'s> {
    sink: Option<&'s mut RecordSink>,
}

impl<'de> DeserializeSeed<'de> for TablesSeed<'_> {
    type Value = Vec<DocTable>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TablesSeed<'_> {
    type Value = Vec<DocTable>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of tables")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        let mut sink = self.sink;
        while let Some(name) = map.next_key::<String>()? {
            let t = map.next_value_seed(TableSeed {
                name,
                sink: sink.as_deref_mut(),
            })?;
            out.push(t);
        }
        Ok(out)
    }
}

struct TableSeed<'s> {
    name: String,
    sink: Option<&'s mut RecordSink>,
}

impl<'de> DeserializeSeed<'de> for TableSeed<'_> {
    type Value = DocTable;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<DocTable, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TableSeed<'_> {
    type Value = DocTable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<DocTable, A::Error> {
        let mut t = DocTable {
            name: self.name,
            ..DocTable::default()
        };
        let mut sink = self.sink;
        let mut seen: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format_args!(
                    "\"{key}\" appears twice in a table"
                )));
            }
            seen.push(key.clone());
            match key.as_str() {
                "primary_key" => t.primary_key = Some(map.next_value::<String>()?),
                "schema" => {
                    t.schema = map.next_value::<Option<Value>>()?;
                    if t.schema.as_ref().is_some_and(|s| !s.is_object()) {
                        return Err(de::Error::custom(
                            "a table schema must be an object or null",
                        ));
                    }
                }
                "records" | "upserts" => {
                    if !t.records.is_empty() {
                        return Err(de::Error::custom(
                            "a table has both \"records\" and \"upserts\"",
                        ));
                    }
                    let stream = match (&mut sink, &t.primary_key) {
                        (Some(sink), Some(pk)) if key == "records" => {
                            sink.send(SinkMsg::Start {
                                table: t.name.clone(),
                                primary_key: pk.clone(),
                            });
                            Some(&mut **sink)
                        }
                        _ => None,
                    };
                    t.streamed = stream.is_some();
                    t.records = map.next_value_seed(RecordsSeed { sink: stream })?;
                }
                "deletes" => {
                    let keys: Vec<Value> = map.next_value()?;
                    for k in &keys {
                        t.deletes
                            .push(Key::from_json(k, "deletes").map_err(de::Error::custom)?);
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(t)
    }
}

struct RecordsSeed<'s> {
    /// Where to send the records instead of returning them.
    sink: Option<&'s mut RecordSink>,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Vec<Record>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = Vec<Record>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Vec<Record>, A::Error> {
        let mut out = Vec::new();
        let mut sent = 0usize;
        let mut scratch = Vec::with_capacity(256);
        loop {
            scratch.clear();
            if seq
                .next_element_seed(Transcode {
                    out: &mut scratch,
                    depth: 0,
                })?
                .is_none()
            {
                break;
            }
            if !matches!(scratch.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
                return Err(de::Error::custom(format_args!(
                    "record #{} is not an object",
                    sent + out.len() + 1
                )));
            }
            out.push(Record::from_validated(&scratch));
            if let Some(sink) = &self.sink {
                if out.len() >= RecordSink::BATCH {
                    sent += out.len();
                    sink.send(SinkMsg::Batch(std::mem::take(&mut out)));
                }
            }
        }
        if let Some(sink) = &self.sink {
            if !out.is_empty() {
                sink.send(SinkMsg::Batch(std::mem::take(&mut out)));
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// MessagePack
// ---------------------------------------------------------------------------

fn parse_msgpack(bytes: &[u8]) -> std::result::Result<Document, String> {
    let mut r = Reader::new(bytes);
    let n = r.map_len().map_err(|e| format!("top level: {e}"))?;
    let mut kind = DocKind::Full;
    let mut meta = None;
    let mut timestamp = None;
    let mut tables = None;
    for _ in 0..n {
        let key = r.str()?;
        match key {
            "type" => {
                kind = match r.str()? {
                    "delta" => DocKind::Delta,
                    "full" => DocKind::Full,
                    other => return Err(format!("unknown document type `{other}`")),
                }
            }
            "timestamp" => {
                timestamp = Some(match r.tok()? {
                    Tok::Float(f) => f,
                    Tok::Uint(u) => u as f64,
                    Tok::Int(i) => i as f64,
                    other => return Err(format!("timestamp is {}", tok_name(&other))),
                })
            }
            "dictdb" => {
                let raw = r.raw_value()?;
                meta = Some(
                    rmp_serde::from_slice::<Meta>(raw)
                        .map_err(|e| format!("dictdb metadata: {e}"))?,
                );
            }
            "tables" => {
                if tables.is_some() {
                    return Err("\"tables\" appears twice".into());
                }
                tables = Some(msgpack_tables(&mut r)?);
            }
            _ => r.skip(0)?,
        }
    }
    if !r.at_end() {
        return Err(format!(
            "trailing bytes after the document at byte {}",
            r.pos
        ));
    }
    Ok(Document {
        kind,
        meta,
        timestamp,
        tables: tables.ok_or("missing \"tables\"")?,
        integrity: Integrity::Unverified,
    })
}

fn msgpack_tables(r: &mut Reader<'_>) -> std::result::Result<Vec<DocTable>, String> {
    let n = r.map_len().map_err(|e| format!("tables: {e}"))?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let mut t = DocTable {
            name: r.str()?.to_string(),
            ..DocTable::default()
        };
        let fields = r
            .map_len()
            .map_err(|e| format!("table `{}`: {e}", t.name))?;
        for _ in 0..fields {
            match r.str()? {
                "primary_key" => t.primary_key = Some(r.str()?.to_string()),
                "schema" => {
                    let raw = r.raw_value()?;
                    if raw != [0xc0] {
                        let mut probe = Reader::new(raw);
                        validate_record(&mut probe)
                            .map_err(|e| format!("schema of `{}`: {e}", t.name))?;
                        t.schema = Some(Record::from_validated(raw).to_value());
                    }
                }
                "records" | "upserts" => {
                    let count = r
                        .array_len()
                        .map_err(|e| format!("records of `{}`: {e}", t.name))?;
                    // A claimed length is never trusted for allocation
                    // beyond what the input could hold.
                    t.records.reserve(count.min(r.remaining()));
                    for i in 0..count {
                        let rec = validate_record(r)
                            .map_err(|e| format!("table `{}`, record #{}: {e}", t.name, i + 1))?;
                        t.records.push(Record::from_validated(rec));
                    }
                }
                "deletes" => {
                    let count = r.array_len()?;
                    for _ in 0..count {
                        let k = match r.tok()? {
                            Tok::Uint(u) => Key::Int(
                                i64::try_from(u)
                                    .map_err(|_| format!("delete key {u} out of range"))?,
                            ),
                            Tok::Int(i) => Key::Int(i),
                            Tok::Str(s) => Key::from(s),
                            other => return Err(format!("delete key is {}", tok_name(&other))),
                        };
                        t.deletes.push(k);
                    }
                }
                _ => r.skip(0)?,
            }
        }
        out.push(t);
    }
    Ok(out)
}
