//! Records as they are stored: one immutable MessagePack map per record.
//!
//! A record is kept as the MessagePack encoding of its JSON object (maps with
//! string keys, the smallest integer encodings, `float64` for floats), behind
//! an `Arc`. That choice serves the three hot paths at once:
//!
//! - memory: about 95 bytes for the standard workload's record instead of the
//!   ~1 KB of a `serde_json::Map` (WORKLOAD.md);
//! - MessagePack backups copy the bytes as they are;
//! - JSON backups transcode the bytes straight to JSON text without building a
//!   `serde_json::Value` ([`json`]), and JSON loads transcode JSON text
//!   straight to these bytes (the codec's JSON reader).
//!
//! Field order is kept as inserted, like a Python dict, so files written here
//! list fields in the order the Python original would.
//!
//! One concept per file: [`encode`] builds records from JSON values, [`decode`]
//! reads stored bytes back (values, fields, keys), [`json`] writes them as
//! JSON text. Every byte string turned into a [`Record`] was produced by
//! [`encode`] or checked by the codec's validating reader, so the decoders
//! here only meet well-formed input; they still return errors, never panic.

pub(crate) mod decode;
pub(crate) mod encode;
mod error;
pub(crate) mod json;

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

pub(crate) use encode::{merge, PendingRecord};
pub(crate) use error::RecordError;

use crate::key::Key;

/// Deepest nesting accepted in a record: containers nested this deep below
/// the record's own object. Checked when records are inserted, updated and
/// loaded, in both formats, and low enough that a record inside a document
/// stays within common JSON parsers' recursion limits (128) with room for the
/// four document levels above it: whatever is accepted can be saved and
/// loaded, here and by the Python original.
pub(crate) const MAX_DEPTH: usize = 100;

/// Whether `v`, found at `depth` inside a record, nests within [`MAX_DEPTH`].
pub(crate) fn depth_ok(v: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match v {
        Value::Array(a) => a.iter().all(|x| depth_ok(x, depth + 1)),
        Value::Object(m) => m.values().all(|x| depth_ok(x, depth + 1)),
        _ => true,
    }
}

/// Checks the fields of a record (or of a patch) before they are stored.
pub(crate) fn check_fields(map: &Map<String, Value>) -> crate::Result<()> {
    if map.values().all(|v| depth_ok(v, 1)) {
        Ok(())
    } else {
        Err(crate::Error::InvalidRecord(format!(
            "nested more than {MAX_DEPTH} levels deep"
        )))
    }
}

/// One stored record: an immutable JSON object, cheap to clone.
///
/// Records reach users through [`crate::Mutation`] events and snapshots;
/// [`Record::to_value`] turns one into a `serde_json::Value::Object`.
///
/// # Examples
///
/// ```
/// use dictdb::DictDB;
/// use serde_json::json;
///
/// let db = DictDB::new();
/// let users = db.create_table("users").unwrap();
/// users.insert(json!({"name": "Ada"})).unwrap();
/// let snap = db.snapshot();
/// let (key, record) = snap.table("users").unwrap().iter().next().unwrap();
/// assert_eq!(key, &dictdb::Key::Int(1));
/// assert_eq!(record.to_value(), json!({"name": "Ada", "id": 1}));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Record(Arc<[u8]>);

impl Record {
    /// How many owners share these bytes (tests check what releases them).
    #[cfg(test)]
    pub(crate) fn owners(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The record as a JSON object.
    pub fn to_value(&self) -> Value {
        // The bytes were produced by our encoder or validated on the way in.
        decode::to_value(&self.0).unwrap_or(Value::Null)
    }

    /// One field of the record, if present.
    pub fn get(&self, field: &str) -> Option<Value> {
        decode::field(&self.0, field)
    }

    /// The record as compact JSON text, fields in stored order.
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::with_capacity(self.0.len() * 2);
        // Cannot fail on stored bytes; an empty string would only hide a bug.
        let _ = json::write_record(&mut out, &self.0);
        String::from_utf8(out).unwrap_or_default()
    }

    /// Asks the processor to start loading the record's bytes, which a
    /// loop over many records will read soon. A backup reads records in key
    /// order, scattered over the heap, and a loop that does little with
    /// each record waits on memory for each one: measured on MessagePack
    /// full backups (a copy per record), a median save of 110 ms without
    /// it, 88 ms with it. JSON, which does more per record, measured no
    /// difference. A record of more than one cache line has its last byte
    /// asked for too.
    #[inline(always)]
    pub(crate) fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let first = self.0.as_ptr();
            let last = first.wrapping_add(self.0.len().saturating_sub(1));
            // SAFETY: a prefetch is only a hint to the cache: it reads
            // nothing into the program and never faults, whatever the
            // address. Both addresses are inside this record's bytes.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(first.cast());
                _mm_prefetch::<_MM_HINT_T0>(last.cast());
            }
        }
    }

    /// The record's MessagePack encoding.
    pub fn as_msgpack(&self) -> &[u8] {
        &self.0
    }

    /// Size of the encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    /// Builds a record from MessagePack bytes that the codec's validating
    /// reader accepted (or that [`encode`] produced).
    /// Whether both are the very same record (one allocation), not just
    /// equal ones.
    pub(crate) fn same(&self, other: &Record) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn from_validated(bytes: &[u8]) -> Record {
        Record(Arc::from(bytes))
    }

    /// Reads the primary key field of this record.
    pub(crate) fn key(&self, field: &str) -> Result<Option<Key>, RecordError> {
        decode::extract_key(&self.0, field)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

/// How many records ahead [`prefetched`] asks for a record's bytes: enough
/// to cover a memory load while the records in between are written.
const PREFETCH_AHEAD: usize = 8;

/// `records`, each one's bytes asked of memory ([`Record::prefetch`])
/// [`PREFETCH_AHEAD`] records before it comes: for loops that read every
/// record of a table, such as a full backup.
pub(crate) fn prefetched<'a, I>(records: I) -> impl Iterator<Item = &'a Record>
where
    I: Iterator<Item = &'a Record> + Clone,
{
    let mut lead = records.clone();
    lead.by_ref()
        .take(PREFETCH_AHEAD)
        .for_each(Record::prefetch);
    records.inspect(move |_| {
        if let Some(r) = lead.next() {
            r.prefetch();
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{prefetched, PendingRecord, Record, PREFETCH_AHEAD};

    /// The look-ahead changes nothing a loop sees: every record once, in
    /// order, for tables shorter, as long as and longer than its distance.
    #[test]
    fn prefetched_records_come_once_each_in_order() {
        for n in [
            0,
            1,
            PREFETCH_AHEAD - 1,
            PREFETCH_AHEAD,
            PREFETCH_AHEAD + 1,
            100,
        ] {
            let records: Vec<Record> = (0..n)
                .map(|i| {
                    PendingRecord::new(&json!({"id": i}), "id")
                        .unwrap()
                        .finish(None)
                })
                .collect();
            let seen: Vec<&Record> = prefetched(records.iter()).collect();
            assert_eq!(seen.len(), n);
            assert!(seen.iter().zip(&records).all(|(a, b)| std::ptr::eq(*a, b)));
        }
    }
}
