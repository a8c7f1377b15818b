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
//!   `serde_json::Value` (see [`write_json`]), and JSON loads transcode JSON
//!   text straight to these bytes (see [`Transcode`]).
//!
//! Field order is kept as inserted, like a Python dict, so files written here
//! list fields in the order the Python original would.
//!
//! Every byte string turned into a [`Record`] has been produced by this
//! module's encoder or checked by [`validate`], so the decoders below only meet
//! well-formed input; they still return errors rather than panic.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::key::{json_type_name, Key};

/// Deepest nesting accepted in a record: containers nested this deep below
/// the record's own object. Checked when records are inserted, updated and
/// loaded, in both formats, and low enough that a record inside a document
/// stays within serde_json's recursion limit (128) with room for the four
/// document levels above it: whatever is accepted can be saved and loaded.
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
    /// The record as a JSON object.
    pub fn to_value(&self) -> Value {
        // The bytes were produced by our encoder or validated on the way in.
        decode_value(&mut Reader::new(&self.0), 0).unwrap_or(Value::Null)
    }

    /// One field of the record, if present.
    pub fn get(&self, field: &str) -> Option<Value> {
        let mut r = Reader::new(&self.0);
        let n = r.map_len().ok()?;
        for _ in 0..n {
            let k = r.str().ok()?;
            if k == field {
                return decode_value(&mut r, 1).ok();
            }
            r.skip(1).ok()?;
        }
        None
    }

    /// The record as compact JSON text, fields in stored order.
    pub fn to_json_string(&self) -> String {
        let mut out = Vec::with_capacity(self.0.len() * 2);
        // Cannot fail on stored bytes; an empty string would only hide a bug.
        let _ = write_json(&mut out, &self.0);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The record's MessagePack encoding.
    pub fn as_msgpack(&self) -> &[u8] {
        &self.0
    }

    /// Size of the encoding in bytes.
    pub fn encoded_len(&self) -> usize {
        self.0.len()
    }

    /// Builds a record from MessagePack bytes that [`validate`] accepted.
    pub(crate) fn from_validated(bytes: &[u8]) -> Record {
        Record(Arc::from(bytes))
    }

    /// Reads the primary key field of this record.
    pub(crate) fn key(&self, field: &str) -> Result<Option<Key>, String> {
        extract_key(&self.0, field)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json_string())
    }
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub(crate) fn put_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        put_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= usize::from(u8::MAX) {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// The header of an array (`base` 0x90) or map (`base` 0x80) of `n` items.
fn container_header(base: u8, n: usize) -> ([u8; 5], usize) {
    let mut h = [0u8; 5];
    if n < 16 {
        h[0] = base | n as u8;
        (h, 1)
    } else if n <= usize::from(u16::MAX) {
        h[0] = if base == 0x80 { 0xde } else { 0xdc };
        h[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        (h, 3)
    } else {
        h[0] = if base == 0x80 { 0xdf } else { 0xdd };
        h[1..5].copy_from_slice(&(n as u32).to_be_bytes());
        (h, 5)
    }
}

pub(crate) fn put_map_len(out: &mut Vec<u8>, n: usize) {
    let (h, len) = container_header(0x80, n);
    out.extend_from_slice(&h[..len]);
}

pub(crate) fn put_array_len(out: &mut Vec<u8>, n: usize) {
    let (h, len) = container_header(0x90, n);
    out.extend_from_slice(&h[..len]);
}

pub(crate) fn put_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// Encodes any JSON value.
pub(crate) fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => put_number(out, n),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            put_array_len(out, a.len());
            for x in a {
                encode_value(out, x);
            }
        }
        Value::Object(m) => {
            put_map_len(out, m.len());
            for (k, x) in m {
                put_str(out, k);
                encode_value(out, x);
            }
        }
    }
}

fn put_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        put_uint(out, u);
    } else if let Some(i) = n.as_i64() {
        put_int(out, i);
    } else {
        // serde_json numbers are finite; without arbitrary_precision every
        // other number is an f64.
        put_f64(out, n.as_f64().unwrap_or(0.0));
    }
}

pub(crate) fn put_key(out: &mut Vec<u8>, key: &Key) {
    match key {
        Key::Int(i) => put_int(out, *i),
        Key::Str(s) => put_str(out, s),
    }
}

/// A record encoded outside the database lock, waiting for its key.
///
/// The map header is written last, right-aligned in 5 reserved bytes, so an
/// auto-assigned key can be appended under the lock without re-encoding.
#[derive(Debug)]
pub(crate) struct PendingRecord {
    buf: Vec<u8>,
    entries: usize,
    /// The key found in the record, if it had one.
    pub(crate) key: Option<Key>,
}

const HEADER_ROOM: usize = 5;

impl PendingRecord {
    /// Encodes `value`, which must be an object; reads its key field `pk`.
    pub(crate) fn new(value: &Value, pk: &str) -> crate::Result<PendingRecord> {
        let map = match value {
            Value::Object(m) => m,
            other => return Err(crate::Error::NotAnObject(json_type_name(other))),
        };
        let key = match map.get(pk) {
            Some(v) => Some(Key::from_json(v, pk)?),
            None => None,
        };
        check_fields(map)?;
        let mut buf = Vec::with_capacity(HEADER_ROOM + 16 * map.len() + 16);
        buf.resize(HEADER_ROOM, 0);
        for (k, x) in map {
            put_str(&mut buf, k);
            encode_value(&mut buf, x);
        }
        Ok(PendingRecord {
            buf,
            entries: map.len(),
            key,
        })
    }

    /// Seals the record; `auto` appends an auto-assigned integer key field.
    pub(crate) fn finish(mut self, auto: Option<(&str, i64)>) -> Record {
        if let Some((pk, id)) = auto {
            put_str(&mut self.buf, pk);
            put_int(&mut self.buf, id);
            self.entries += 1;
        }
        let (h, len) = container_header(0x80, self.entries);
        let start = HEADER_ROOM - len;
        self.buf[start..HEADER_ROOM].copy_from_slice(&h[..len]);
        Record(Arc::from(&self.buf[start..]))
    }
}

/// Merges `patch` into `old`: fields present in both take the patch's value in
/// place, new fields are appended in the patch's order.
pub(crate) fn merge(old: &Record, patch: &Map<String, Value>) -> Record {
    let bytes = &old.0;
    let mut r = Reader::new(bytes);
    let mut out = Vec::with_capacity(bytes.len() + 32 * patch.len());
    let n = r.map_len().unwrap_or(0);
    // First pass: which patch keys already exist.
    let mut fields: Vec<(&str, usize, usize)> = Vec::with_capacity(n);
    for _ in 0..n {
        let (Ok(k), start) = (r.str(), r.pos) else {
            break;
        };
        if r.skip(1).is_err() {
            break;
        }
        fields.push((k, start, r.pos));
    }
    let added = patch
        .keys()
        .filter(|k| !fields.iter().any(|(f, _, _)| f == k))
        .count();
    put_map_len(&mut out, fields.len() + added);
    for (k, start, end) in &fields {
        put_str(&mut out, k);
        match patch.get(*k) {
            Some(v) => encode_value(&mut out, v),
            None => out.extend_from_slice(&bytes[*start..*end]),
        }
    }
    for (k, v) in patch {
        if !fields.iter().any(|(f, _, _)| f == k) {
            put_str(&mut out, k);
            encode_value(&mut out, v);
        }
    }
    Record(Arc::from(out))
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// A cursor over MessagePack bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
}

/// One MessagePack item header, strings unchecked.
#[derive(Debug, Clone, Copy)]
enum RawTok<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a [u8]),
    Array(usize),
    Map(usize),
}

/// One MessagePack item header.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tok<'a> {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Array(usize),
    Map(usize),
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("unexpected end of data at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Reads the next item header; strings come back as raw bytes.
    #[inline]
    fn raw_tok(&mut self) -> Result<RawTok<'a>, String> {
        let at = self.pos;
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => RawTok::Uint(u64::from(m)),
            0x80..=0x8f => RawTok::Map(usize::from(m & 0x0f)),
            0x90..=0x9f => RawTok::Array(usize::from(m & 0x0f)),
            0xa0..=0xbf => RawTok::Str(self.take(usize::from(m & 0x1f))?),
            0xc0 => RawTok::Nil,
            0xc2 => RawTok::Bool(false),
            0xc3 => RawTok::Bool(true),
            0xca => RawTok::Float(f64::from(f32::from_be_bytes(self.be()?))),
            0xcb => RawTok::Float(f64::from_be_bytes(self.be()?)),
            0xcc => RawTok::Uint(u64::from(self.byte()?)),
            0xcd => RawTok::Uint(u64::from(u16::from_be_bytes(self.be()?))),
            0xce => RawTok::Uint(u64::from(u32::from_be_bytes(self.be()?))),
            0xcf => RawTok::Uint(u64::from_be_bytes(self.be()?)),
            0xd0 => RawTok::Int(i64::from(self.byte()? as i8)),
            0xd1 => RawTok::Int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => RawTok::Int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => RawTok::Int(i64::from_be_bytes(self.be()?)),
            0xd9 => {
                let n = usize::from(self.byte()?);
                RawTok::Str(self.take(n)?)
            }
            0xda => {
                let n = usize::from(u16::from_be_bytes(self.be()?));
                RawTok::Str(self.take(n)?)
            }
            0xdb => {
                let n = u32::from_be_bytes(self.be()?) as usize;
                RawTok::Str(self.take(n)?)
            }
            0xdc => RawTok::Array(usize::from(u16::from_be_bytes(self.be()?))),
            0xdd => RawTok::Array(u32::from_be_bytes(self.be()?) as usize),
            0xde => RawTok::Map(usize::from(u16::from_be_bytes(self.be()?))),
            0xdf => RawTok::Map(u32::from_be_bytes(self.be()?) as usize),
            0xe0..=0xff => RawTok::Int(i64::from(m as i8)),
            0xc4..=0xc6 => return Err(format!("binary data at byte {at} is not a JSON value")),
            0xc7..=0xc9 | 0xd4..=0xd8 => {
                return Err(format!("extension type at byte {at} is not a JSON value"))
            }
            _ => return Err(format!("invalid MessagePack marker 0x{m:02x} at byte {at}")),
        })
    }

    /// Reads the next item header, checking that strings are UTF-8.
    pub(crate) fn tok(&mut self) -> Result<Tok<'a>, String> {
        let at = self.pos;
        Ok(match self.raw_tok()? {
            RawTok::Nil => Tok::Nil,
            RawTok::Bool(b) => Tok::Bool(b),
            RawTok::Uint(u) => Tok::Uint(u),
            RawTok::Int(i) => Tok::Int(i),
            RawTok::Float(f) => Tok::Float(f),
            RawTok::Str(s) => Tok::Str(
                std::str::from_utf8(s)
                    .map_err(|_| format!("invalid UTF-8 in string at byte {at}"))?,
            ),
            RawTok::Array(n) => Tok::Array(n),
            RawTok::Map(n) => Tok::Map(n),
        })
    }

    pub(crate) fn map_len(&mut self) -> Result<usize, String> {
        match self.tok()? {
            Tok::Map(n) => Ok(n),
            other => Err(format!("expected a map, found {}", tok_name(&other))),
        }
    }

    pub(crate) fn array_len(&mut self) -> Result<usize, String> {
        match self.tok()? {
            Tok::Array(n) => Ok(n),
            other => Err(format!("expected an array, found {}", tok_name(&other))),
        }
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, String> {
        match self.tok()? {
            Tok::Str(s) => Ok(s),
            other => Err(format!("expected a string, found {}", tok_name(&other))),
        }
    }

    /// Skips one complete value.
    pub(crate) fn skip(&mut self, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err("nesting too deep".into());
        }
        match self.tok()? {
            Tok::Array(n) => {
                for _ in 0..n {
                    self.skip(depth + 1)?;
                }
            }
            Tok::Map(n) => {
                for _ in 0..n {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The raw bytes of the next complete value.
    pub(crate) fn raw_value(&mut self) -> Result<&'a [u8], String> {
        let start = self.pos;
        self.skip(0)?;
        Ok(&self.buf[start..self.pos])
    }
}

pub(crate) fn tok_name(t: &Tok<'_>) -> &'static str {
    match t {
        Tok::Nil => "nil",
        Tok::Bool(_) => "a boolean",
        Tok::Uint(_) | Tok::Int(_) => "an integer",
        Tok::Float(_) => "a float",
        Tok::Str(_) => "a string",
        Tok::Array(_) => "an array",
        Tok::Map(_) => "a map",
    }
}

fn decode_value(r: &mut Reader<'_>, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("nesting too deep".into());
    }
    Ok(match r.tok()? {
        Tok::Nil => Value::Null,
        Tok::Bool(b) => Value::Bool(b),
        Tok::Uint(u) => Value::from(u),
        Tok::Int(i) => Value::from(i),
        Tok::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Tok::Str(s) => Value::String(s.to_owned()),
        Tok::Array(n) => {
            let mut a = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                a.push(decode_value(r, depth + 1)?);
            }
            Value::Array(a)
        }
        Tok::Map(n) => {
            let mut m = Map::new();
            for _ in 0..n {
                let k = r.str()?.to_owned();
                let v = decode_value(r, depth + 1)?;
                m.insert(k, v);
            }
            Value::Object(m)
        }
    })
}

/// Checks that the next value in `r` is a well-formed JSON value: string map
/// keys with no duplicates, finite floats, valid UTF-8, bounded nesting.
fn validate_value(r: &mut Reader<'_>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nesting too deep".into());
    }
    match r.tok()? {
        Tok::Float(f) if !f.is_finite() => Err(format!("non-finite float {f} is not valid JSON")),
        Tok::Array(n) => {
            for _ in 0..n {
                validate_value(r, depth + 1)?;
            }
            Ok(())
        }
        Tok::Map(n) => {
            // A linear scan for the usual handful of fields, a set beyond.
            let mut keys: Vec<&str> = Vec::with_capacity(n.min(16));
            let mut many: std::collections::HashSet<&str> = std::collections::HashSet::new();
            for _ in 0..n {
                let k = r
                    .str()
                    .map_err(|e| format!("map key: {e} (JSON object keys are strings)"))?;
                let dup = if keys.len() < 16 {
                    let d = keys.contains(&k);
                    keys.push(k);
                    d
                } else {
                    if many.is_empty() {
                        many.extend(keys.iter().copied());
                    }
                    !many.insert(k)
                };
                if dup {
                    return Err(format!("duplicate field {k:?}"));
                }
                validate_value(r, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Validates one record at the reader's position and returns its bytes.
pub(crate) fn validate_record<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], String> {
    let start = r.pos;
    let mut probe = Reader {
        buf: r.buf,
        pos: r.pos,
    };
    match probe.tok()? {
        Tok::Map(_) => {}
        other => {
            return Err(format!(
                "a record must be an object, found {}",
                tok_name(&other)
            ))
        }
    }
    validate_value(r, 0)?;
    Ok(&r.buf[start..r.pos])
}

/// Reads the key field `field` of an encoded record.
pub(crate) fn extract_key(rec: &[u8], field: &str) -> Result<Option<Key>, String> {
    let mut r = Reader::new(rec);
    let n = r.map_len()?;
    for _ in 0..n {
        // Field names are compared as bytes: stored records are UTF-8.
        let k = match r.raw_tok()? {
            RawTok::Str(k) => k,
            _ => return Err("a field name is not a string".into()),
        };
        if k == field.as_bytes() {
            return match r.tok()? {
                Tok::Uint(u) => i64::try_from(u).map(|i| Some(Key::Int(i))).map_err(|_| {
                    format!("key {u} of field `{field}` does not fit a signed 64-bit key")
                }),
                Tok::Int(i) => Ok(Some(Key::Int(i))),
                Tok::Str(s) => Ok(Some(Key::from(s))),
                other => Err(format!(
                    "primary key `{field}` is {}; keys are integers or strings",
                    tok_name(&other)
                )),
            };
        }
        r.skip(1)?;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// MessagePack -> JSON text
// ---------------------------------------------------------------------------

const QU: u8 = b'"';
const BS: u8 = b'\\';
const BB: u8 = b'b';
const TT: u8 = b't';
const NN: u8 = b'n';
const FF: u8 = b'f';
const RR: u8 = b'r';
const UU: u8 = b'u';
const __: u8 = 0;

/// What each byte needs when written inside a JSON string (0: nothing).
static ESCAPE: [u8; 256] = [
    UU, UU, UU, UU, UU, UU, UU, UU, BB, TT, NN, UU, FF, RR, UU, UU, // 0x00
    UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, UU, // 0x10
    __, __, QU, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x20
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x30
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x40
    __, __, __, __, __, __, __, __, __, __, __, __, BS, __, __, __, // 0x50
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x60
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x70
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x80
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0x90
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0xA0
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0xB0
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0xC0
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0xD0
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0xE0
    __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, __, // 0xF0
];

/// Writes `s` as a JSON string literal (UTF-8 kept as is, as serde_json does).
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &str) {
    write_json_bytes(out, s.as_bytes());
}

/// Writes UTF-8 bytes as a JSON string literal.
#[inline]
fn write_json_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    static HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Fast path: most strings need no escaping at all.
    if bytes.iter().all(|&b| ESCAPE[usize::from(b)] == 0) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            UU => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            c => out.extend_from_slice(&[b'\\', c]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub(crate) fn write_json_f64(out: &mut Vec<u8>, f: f64) {
    use serde_json::ser::Formatter;
    if f.is_finite() {
        // serde_json's own float formatting, so files match what serde_json
        // (and so most Rust tools) would write. Writing to a Vec cannot fail.
        let _ = serde_json::ser::CompactFormatter.write_f64(out, f);
    } else {
        out.extend_from_slice(b"null");
    }
}

pub(crate) fn write_json_int(out: &mut Vec<u8>, i: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(i).as_bytes());
}

pub(crate) fn write_json_key(out: &mut Vec<u8>, key: &Key) {
    match key {
        Key::Int(i) => write_json_int(out, *i),
        Key::Str(s) => write_json_str(out, s),
    }
}

/// Transcodes one MessagePack value (a stored record) to compact JSON text.
pub(crate) fn write_json(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), String> {
    write_json_value(out, &mut Reader::new(bytes), 0)
}

fn write_json_value(out: &mut Vec<u8>, r: &mut Reader<'_>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("nesting too deep".into());
    }
    // Strings are copied as raw bytes: every stored record was checked to be
    // UTF-8 when it was created, so checking again would only cost time.
    match r.raw_tok()? {
        RawTok::Nil => out.extend_from_slice(b"null"),
        RawTok::Bool(true) => out.extend_from_slice(b"true"),
        RawTok::Bool(false) => out.extend_from_slice(b"false"),
        RawTok::Uint(u) => {
            let mut b = itoa::Buffer::new();
            out.extend_from_slice(b.format(u).as_bytes());
        }
        RawTok::Int(i) => write_json_int(out, i),
        RawTok::Float(f) => write_json_f64(out, f),
        RawTok::Str(s) => write_json_bytes(out, s),
        RawTok::Array(n) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                write_json_value(out, r, depth + 1)?;
            }
            out.push(b']');
        }
        RawTok::Map(n) => {
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                match r.raw_tok()? {
                    RawTok::Str(k) => write_json_bytes(out, k),
                    _ => return Err("map key is not a string".into()),
                }
                out.push(b':');
                write_json_value(out, r, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// JSON text -> MessagePack, without building a serde_json::Value
// ---------------------------------------------------------------------------

/// A serde seed that transcodes the next JSON value into MessagePack bytes
/// appended to `out`. Object fields keep their order; a field name repeated
/// in one object is an error (serde_json would silently keep the last one).
pub(crate) struct Transcode<'o> {
    pub(crate) out: &'o mut Vec<u8>,
    /// Nesting depth of the value about to be read (0: the record itself).
    pub(crate) depth: usize,
}

thread_local! {
    /// Set when a float that may be an integer literal beyond the 64-bit
    /// range was read: serde_json hands those over as floats, so the text
    /// is checked afterwards (see [`find_out_of_range_integer`]).
    pub(crate) static SUSPICIOUS_FLOAT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The first integer literal in JSON `text` that fits neither `i64` nor
/// `u64` (serde_json would read it as a float), as (byte offset, literal).
pub(crate) fn find_out_of_range_integer(text: &[u8]) -> Option<(usize, String)> {
    let n = text.len();
    let mut i = 0;
    while i < n {
        match text[i] {
            b'"' => {
                i += 1;
                while i < n {
                    match text[i] {
                        b'\\' => i += 2,
                        b'"' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < n && matches!(text[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                    i += 1;
                }
                let tok = &text[start..i];
                if !tok.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
                    let lit = String::from_utf8_lossy(tok).to_string();
                    if lit.parse::<i64>().is_err() && lit.parse::<u64>().is_err() {
                        return Some((start, lit));
                    }
                }
            }
            _ => i += 1,
        }
    }
    None
}

impl<'de> DeserializeSeed<'de> for Transcode<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(de::Error::custom(format_args!(
                "record nested more than {MAX_DEPTH} levels deep"
            )));
        }
        d.deserialize_any(self)
    }
}

/// Writes the header of a container of `n` items at `start`, before them.
///
/// One byte was reserved at `start` when the container began: most
/// containers hold fewer than 16 items and take a one-byte header, written
/// in place; only longer ones move their items to make room.
fn insert_header(out: &mut Vec<u8>, start: usize, base: u8, n: usize) {
    let (h, len) = container_header(base, n);
    out[start] = h[0];
    if len > 1 {
        out.splice(start + 1..start + 1, h[1..len].iter().copied());
    }
}

impl<'de> Visitor<'de> for Transcode<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.out.push(if v { 0xc3 } else { 0xc2 });
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        put_int(self.out, v);
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        put_uint(self.out, v);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        if !v.is_finite() {
            return Err(E::custom("non-finite number"));
        }
        if v.fract() == 0.0 && v.abs() >= 9.2e18 {
            SUSPICIOUS_FLOAT.with(|f| f.set(true));
        }
        put_f64(self.out, v);
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        put_str(self.out, v);
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.out.push(0xc0);
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        self.out.push(0xc0);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let start = self.out.len();
        self.out.push(0);
        let mut n = 0usize;
        while seq
            .next_element_seed(Transcode {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            n += 1;
        }
        insert_header(self.out, start, 0x90, n);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.out.len();
        self.out.push(0);
        let mut n = 0usize;
        // Byte ranges of this object's field names, to reject duplicates.
        let mut names: Vec<(usize, usize)> = Vec::new();
        loop {
            let begin = self.out.len();
            if map
                .next_key_seed(FieldName {
                    out: &mut *self.out,
                })?
                .is_none()
            {
                break;
            }
            let end = self.out.len();
            let this = &self.out[begin..end];
            if names.iter().any(|&(b, e)| &self.out[b..e] == this) {
                let name = Reader::new(this).str().unwrap_or("?").to_owned();
                return Err(de::Error::custom(format_args!("duplicate field {name:?}")));
            }
            names.push((begin, end));
            map.next_value_seed(Transcode {
                out: &mut *self.out,
                depth: self.depth + 1,
            })?;
            n += 1;
        }
        insert_header(self.out, start, 0x80, n);
        Ok(())
    }
}

/// Writes an object's field name, without allocating.
struct FieldName<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for FieldName<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldName<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        put_str(self.out, v);
        Ok(())
    }
}

/// Parses one JSON object (a record) from `text` into a stored record.
#[cfg(test)]
pub(crate) fn record_from_json(text: &str) -> Result<Record, String> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    Transcode {
        out: &mut out,
        depth: 0,
    }
    .deserialize(&mut de)
    .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    let mut r = Reader::new(&out);
    validate_record(&mut r)?;
    Ok(Record::from_validated(&out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Record {
        PendingRecord::new(&v, "id").unwrap().finish(None)
    }

    #[test]
    fn roundtrip_keeps_every_value_exactly() {
        let v = json!({
            "id": 1, "neg": -1, "small": -33, "big": 9007199254740993u64,
            "min": i64::MIN, "max": i64::MAX, "umax": u64::MAX,
            "f": 1.0, "z": -0.0, "tiny": 1e-300, "huge": 1.7976931348623157e308,
            "s": "Zürich 東京 🎉", "esc": "a\"b\\c\nd\u{1}", "n": null, "t": true,
            "arr": [1, [2, [3]], {"k": []}], "o": {}
        });
        let r = rec(v.clone());
        assert_eq!(r.to_value(), v);
        // 1 and 1.0 stay different values.
        assert_ne!(
            rec(json!({"a": 1})).to_value(),
            rec(json!({"a": 1.0})).to_value()
        );
    }

    #[test]
    fn json_text_matches_serde_json() {
        let v = json!({"id": 7, "name": "a\"b\\\u{7f}\u{1f}é", "f": [0.1, -0.0, 1e16, 2.5e-7, 100.0],
                       "n": {"x": null, "y": [true, false]}, "i": -9223372036854775808i64});
        let r = rec(v.clone());
        let text = r.to_json_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        // Same bytes as serde_json for the same field order.
        assert_eq!(text, serde_json::to_string(&v).unwrap());
    }

    #[test]
    fn transcode_keeps_field_order_and_rejects_duplicates() {
        let r = record_from_json(r#"{"name": "x", "id": 3, "a": [1, 2.5, "s", null]}"#).unwrap();
        assert_eq!(
            r.to_json_string(),
            r#"{"name":"x","id":3,"a":[1,2.5,"s",null]}"#
        );
        assert_eq!(r.key("id").unwrap(), Some(Key::Int(3)));
        let err = record_from_json(r#"{"id": 1, "id": 2}"#).unwrap_err();
        assert!(err.contains("duplicate field"), "{err}");
        assert!(record_from_json("[1]")
            .unwrap_err()
            .contains("must be an object"));
        // Long containers take the 16-bit headers.
        let many: String = (0..40)
            .map(|i| format!("\"f{i}\": {i}"))
            .collect::<Vec<_>>()
            .join(",");
        let r = record_from_json(&format!("{{{many}}}")).unwrap();
        assert_eq!(r.get("f39"), Some(json!(39)));
    }

    #[test]
    fn auto_key_is_appended_last() {
        let p = PendingRecord::new(&json!({"name": "a"}), "id").unwrap();
        assert!(p.key.is_none());
        let r = p.finish(Some(("id", 42)));
        assert_eq!(r.to_json_string(), r#"{"name":"a","id":42}"#);
        // Crossing the fixmap limit while appending.
        let fields: Map<String, Value> = (0..15).map(|i| (format!("f{i}"), json!(i))).collect();
        let r = PendingRecord::new(&Value::Object(fields), "id")
            .unwrap()
            .finish(Some(("id", 1)));
        assert_eq!(r.get("id"), Some(json!(1)));
        assert_eq!(r.to_value().as_object().unwrap().len(), 16);
    }

    #[test]
    fn merge_replaces_in_place_and_appends() {
        let r = record_from_json(r#"{"id": 1, "a": 1, "b": 2}"#).unwrap();
        let m = merge(&r, json!({"b": "x", "c": [1]}).as_object().unwrap());
        assert_eq!(m.to_json_string(), r#"{"id":1,"a":1,"b":"x","c":[1]}"#);
    }

    #[test]
    fn validation_rejects_what_json_cannot_hold() {
        for bad in [
            vec![0x81, 0x01, 0x02],                                     // integer map key
            vec![0x81, 0xa1, b'a', 0xc4, 0x00],                         // binary value
            vec![0x81, 0xa1, b'a', 0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0], // +inf
            vec![0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02],             // duplicate field
            vec![0x81, 0xa1, 0xff, 0x01],                               // bad UTF-8
            vec![0x85, 0xa1, b'a'],                                     // truncated
            vec![0x91, 0x01],                                           // not an object
        ] {
            assert!(validate_record(&mut Reader::new(&bad)).is_err(), "{bad:x?}");
        }
        let mut deep = vec![0x81, 0xa1, b'a'];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        deep.push(0x01);
        assert!(validate_record(&mut Reader::new(&deep)).is_err());
    }
}
