//! Building stored records: JSON values to compact MessagePack.
//!
//! The MessagePack primitives are written here by hand, byte for byte as
//! the specification asks (smallest integer encodings, `float64` for
//! floats): they run once per value on every insert and every load, where
//! a generic `io::Write` writer's marker-then-payload calls showed up in
//! profiles. A property test checks every one against `rmp`.

use std::sync::Arc;

use serde_json::{Map, Number, Value};

use super::decode::{Reader, Tok};
use super::Record;
use crate::key::{json_type_name, Key};

/// Writes an unsigned integer in its smallest encoding.
#[inline]
pub(crate) fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if let Ok(b) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, b]);
    } else if let Ok(h) = u16::try_from(v) {
        let b = h.to_be_bytes();
        out.extend_from_slice(&[0xcd, b[0], b[1]]);
    } else if let Ok(w) = u32::try_from(v) {
        let b = w.to_be_bytes();
        out.extend_from_slice(&[0xce, b[0], b[1], b[2], b[3]]);
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Writes a signed integer in its smallest encoding (non-negative values
/// as unsigned ones, as `rmp::encode::write_sint` does).
#[inline]
pub(crate) fn put_int(out: &mut Vec<u8>, v: i64) {
    if let Ok(u) = u64::try_from(v) {
        put_uint(out, u);
    } else if v >= -32 {
        // Negative fixint: the byte is the value's two's complement.
        out.push(v as u8);
    } else if let Ok(b) = i8::try_from(v) {
        out.extend_from_slice(&[0xd0, b as u8]);
    } else if let Ok(h) = i16::try_from(v) {
        let b = h.to_be_bytes();
        out.extend_from_slice(&[0xd1, b[0], b[1]]);
    } else if let Ok(w) = i32::try_from(v) {
        let b = w.to_be_bytes();
        out.extend_from_slice(&[0xd2, b[0], b[1], b[2], b[3]]);
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// Writes a `float64`.
#[inline]
pub(crate) fn put_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

/// Writes a boolean.
#[inline]
pub(crate) fn put_bool(out: &mut Vec<u8>, v: bool) {
    out.push(if v { 0xc3 } else { 0xc2 });
}

/// Writes nil.
#[inline]
pub(crate) fn put_nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

/// Writes a string. Strings longer than 4 GiB cannot be encoded; no record
/// can hold one (they are refused when read), so this never truncates.
#[inline]
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_str_bytes(out, s.as_bytes());
}

/// Writes a string given as bytes already checked to be UTF-8.
#[inline]
pub(crate) fn put_str_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let n = len32(s.len());
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if let Ok(b) = u8::try_from(n) {
        out.extend_from_slice(&[0xd9, b]);
    } else if let Ok(h) = u16::try_from(n) {
        let b = h.to_be_bytes();
        out.extend_from_slice(&[0xda, b[0], b[1]]);
    } else {
        let b = n.to_be_bytes();
        out.extend_from_slice(&[0xdb, b[0], b[1], b[2], b[3]]);
    }
    out.extend_from_slice(s);
}

/// Writes a map header.
#[inline]
pub(crate) fn put_map_len(out: &mut Vec<u8>, n: usize) {
    let (h, len) = container_header(true, n);
    out.extend_from_slice(&h[..len]);
}

/// Writes an array header.
#[inline]
pub(crate) fn put_array_len(out: &mut Vec<u8>, n: usize) {
    let (h, len) = container_header(false, n);
    out.extend_from_slice(&h[..len]);
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Writes a primary key.
pub(crate) fn put_key(out: &mut Vec<u8>, key: &Key) {
    match key {
        Key::Int(i) => put_int(out, *i),
        Key::Str(s) => put_str(out, s),
    }
}

/// The header of a map (`map`) or array of `n` items, in at most 5 bytes
/// (written in place: this runs once per container on the load path).
#[inline]
pub(crate) fn container_header(map: bool, n: usize) -> ([u8; 5], usize) {
    let n = len32(n);
    let (fix, m16, m32) = if map {
        (0x80, 0xde, 0xdf)
    } else {
        (0x90, 0xdc, 0xdd)
    };
    if n < 16 {
        ([fix | n as u8, 0, 0, 0, 0], 1)
    } else if let Ok(h) = u16::try_from(n) {
        let b = h.to_be_bytes();
        ([m16, b[0], b[1], 0, 0], 3)
    } else {
        let b = n.to_be_bytes();
        ([m32, b[0], b[1], b[2], b[3]], 5)
    }
}

/// Encodes any JSON value.
pub(crate) fn encode_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => put_nil(out),
        Value::Bool(b) => put_bool(out, *b),
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

/// Encodes a value found at `depth` inside a record; `false` (and the
/// output is to be dropped) if it nests deeper than the limit.
fn encode_within(out: &mut Vec<u8>, v: &Value, depth: usize) -> bool {
    if depth > super::MAX_DEPTH {
        return false;
    }
    match v {
        Value::Null => put_nil(out),
        Value::Bool(b) => put_bool(out, *b),
        Value::Number(n) => put_number(out, n),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => {
            put_array_len(out, a.len());
            for x in a {
                if !encode_within(out, x, depth + 1) {
                    return false;
                }
            }
        }
        Value::Object(m) => {
            put_map_len(out, m.len());
            for (k, x) in m {
                put_str(out, k);
                if !encode_within(out, x, depth + 1) {
                    return false;
                }
            }
        }
    }
    true
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
        let mut buf = scratch(HEADER_ROOM + 16 * map.len() + 16);
        buf.resize(HEADER_ROOM, 0);
        // One pass: encoding checks the nesting limit as it goes.
        for (k, x) in map {
            put_str(&mut buf, k);
            if !encode_within(&mut buf, x, 1) {
                return Err(crate::Error::InvalidRecord(format!(
                    "nested more than {} levels deep",
                    super::MAX_DEPTH
                )));
            }
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
        let (h, len) = container_header(true, self.entries);
        let start = HEADER_ROOM - len;
        self.buf[start..HEADER_ROOM].copy_from_slice(&h[..len]);
        seal(self.buf, start)
    }
}

thread_local! {
    /// The buffer records are encoded in before they are sealed: one per
    /// thread, reused, so building a record costs one allocation (its own).
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Buffers larger than this go back to the allocator instead of staying
/// with the thread.
const SCRATCH_KEEP: usize = 64 * 1024;

/// An empty buffer with room for `capacity` bytes: the thread's scratch
/// buffer when it is free (a record being built while another is pending
/// gets a new one).
fn scratch(capacity: usize) -> Vec<u8> {
    let mut buf = SCRATCH.with(std::cell::Cell::take);
    buf.clear();
    buf.reserve(capacity);
    buf
}

/// The record made of `buf[start..]`; the buffer goes back to the thread.
fn seal(buf: Vec<u8>, start: usize) -> Record {
    let record = Record(Arc::from(&buf[start..]));
    if buf.capacity() <= SCRATCH_KEEP {
        SCRATCH.with(|s| s.set(buf));
    }
    record
}

/// Merges `patch` into `old`: fields present in both take the patch's value in
/// place, new fields are appended in the patch's order.
pub(crate) fn merge(old: &Record, patch: &Map<String, Value>) -> Record {
    let bytes = &old.0;
    let mut r = Reader::new(bytes);
    let mut out = scratch(bytes.len() + 32 * patch.len());
    let n = match r.tok() {
        Ok(Tok::Map(n)) => n,
        _ => 0,
    };
    // First pass: the existing fields and where their values lie.
    let mut fields: Vec<(&str, usize, usize)> = Vec::with_capacity(n);
    for _ in 0..n {
        let (Ok(k), start) = (r.str(), r.pos) else {
            break;
        };
        if r.skip().is_err() {
            break;
        }
        fields.push((k, start, r.pos));
    }
    // A patch names a few fields: looking each up in the record's list
    // beats hashing them all, up to a few dozen comparisons.
    let known = Known::new(&fields, patch.len());
    let added = patch.keys().filter(|k| !known.contains(k)).count();
    put_map_len(&mut out, fields.len() + added);
    for (k, start, end) in &fields {
        put_str(&mut out, k);
        match patch.get(*k) {
            Some(v) => encode_value(&mut out, v),
            None => out.extend_from_slice(&bytes[*start..*end]),
        }
    }
    for (k, v) in patch {
        if !known.contains(k) {
            put_str(&mut out, k);
            encode_value(&mut out, v);
        }
    }
    seal(out, 0)
}

/// The field names a record already has, for [`merge`].
enum Known<'f, 'a> {
    /// Few enough lookups to scan the fields for.
    Few(&'f [(&'a str, usize, usize)]),
    Many(std::collections::HashSet<&'a str>),
}

impl<'f, 'a> Known<'f, 'a> {
    fn new(fields: &'f [(&'a str, usize, usize)], lookups: usize) -> Self {
        if fields.len().saturating_mul(lookups) <= 64 {
            Known::Few(fields)
        } else {
            Known::Many(fields.iter().map(|f| f.0).collect())
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Known::Few(fields) => fields.iter().any(|f| f.0 == name),
            Known::Many(names) => names.contains(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(v: Value) -> Record {
        PendingRecord::new(&v, "id").unwrap().finish(None)
    }

    #[test]
    fn smallest_encodings_as_the_spec_asks() {
        let enc = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            v
        };
        assert_eq!(enc(&|o| put_uint(o, 5)), [0x05]);
        assert_eq!(enc(&|o| put_uint(o, 200)), [0xcc, 200]);
        assert_eq!(enc(&|o| put_int(o, -1)), [0xff]);
        assert_eq!(enc(&|o| put_int(o, -33)), [0xd0, 0xdf]);
        assert_eq!(enc(&|o| put_int(o, 70_000)), [0xce, 0, 1, 0x11, 0x70]);
        assert_eq!(enc(&|o| put_str(o, "ab")), [0xa2, b'a', b'b']);
        assert_eq!(container_header(true, 3), ([0x83, 0, 0, 0, 0], 1));
        assert_eq!(container_header(false, 16), ([0xdc, 0, 16, 0, 0], 3));
        assert_eq!(container_header(true, 70_000).1, 5);
    }

    /// The hand-written primitives against `rmp`, the reference encoder,
    /// at every size boundary and on random values.
    fn same_as_rmp(i: i64, u: u64, f: f64, len: usize) {
        use rmp::encode as mp;
        let ours = |w: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            w(&mut v);
            v
        };
        let theirs = |w: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| {
            let mut v = Vec::new();
            w(&mut v).unwrap();
            v
        };
        let n = u32::try_from(len).unwrap();
        assert_eq!(
            ours(&|o| put_int(o, i)),
            theirs(&|o| mp::write_sint(o, i).map(drop).map_err(std::io::Error::from)),
            "int {i}"
        );
        assert_eq!(
            ours(&|o| put_uint(o, u)),
            theirs(&|o| mp::write_uint(o, u).map(drop).map_err(std::io::Error::from)),
            "uint {u}"
        );
        assert_eq!(
            ours(&|o| put_f64(o, f)),
            theirs(&|o| mp::write_f64(o, f).map_err(std::io::Error::from)),
            "f64 {f}"
        );
        assert_eq!(
            ours(&|o| put_map_len(o, len)),
            theirs(&|o| mp::write_map_len(o, n)
                .map(drop)
                .map_err(std::io::Error::from)),
            "map {len}"
        );
        assert_eq!(
            ours(&|o| put_array_len(o, len)),
            theirs(&|o| mp::write_array_len(o, n)
                .map(drop)
                .map_err(std::io::Error::from)),
            "array {len}"
        );
        let body = vec![b'x'; len];
        let mut expected = Vec::new();
        mp::write_str_len(&mut expected, n).unwrap();
        expected.extend_from_slice(&body);
        assert_eq!(ours(&|o| put_str_bytes(o, &body)), expected, "str {len}");
    }

    #[test]
    fn primitives_match_rmp_at_every_boundary() {
        let edges: [i64; 22] = [
            0,
            1,
            31,
            32,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_648,
            i64::MIN,
        ];
        for &e in &edges {
            for d in [-1i64, 0, 1] {
                let i = e.saturating_add(d);
                let u = u64::try_from(i).unwrap_or(u64::MAX - 1);
                let len = usize::try_from(i.clamp(0, 70_000)).unwrap();
                same_as_rmp(i, u, i as f64, len);
            }
        }
        same_as_rmp(-2_147_483_649, 0x1_0000_0000, -0.0, 15);
    }

    proptest::proptest! {
        #[test]
        fn primitives_match_rmp(i in proptest::num::i64::ANY, u in proptest::num::u64::ANY,
                                f in proptest::num::f64::ANY, len in 0usize..70_000) {
            same_as_rmp(i, u, f, len);
        }
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
        // Built from text: `json!` sorts fields, text keeps their order.
        let mut bytes = Vec::new();
        let mut reader = crate::format::json::JsonReader::new(&br#"{"id": 1, "a": 1, "b": 2}"#[..]);
        crate::format::syntax::DocReader::record(&mut reader, &mut bytes).unwrap();
        let r = Record::from_validated(&bytes);
        let m = merge(&r, json!({"b": "x", "c": [1]}).as_object().unwrap());
        assert_eq!(m.to_json_string(), r#"{"id":1,"a":1,"b":"x","c":[1]}"#);
    }

    /// `merge` as a model: the record's fields in order, patched in place,
    /// then the new ones in the patch's order.
    fn merged_model(
        fields: &[(String, Value)],
        patch: &Map<String, Value>,
    ) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = fields
            .iter()
            .map(|(k, v)| (k.clone(), patch.get(k).unwrap_or(v).clone()))
            .collect();
        for (k, v) in patch {
            if !fields.iter().any(|(f, _)| f == k) {
                out.push((k.clone(), v.clone()));
            }
        }
        out
    }

    /// Fields as compact JSON text, in their order.
    fn text_of(fields: &[(String, Value)]) -> String {
        let pairs: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), v))
            .collect();
        format!("{{{}}}", pairs.join(","))
    }

    #[test]
    fn merge_finds_existing_fields_by_scan_and_by_hash() {
        // Few fields and a small patch take the scan; many take the set.
        for (record_fields, patch_fields) in [(3, 1), (3, 4), (8, 8), (9, 8), (100, 1), (100, 40)] {
            let fields: Vec<(String, Value)> = (0..record_fields)
                .map(|i| (format!("f{i}"), json!(i)))
                .collect();
            let mut bytes = Vec::new();
            put_map_len(&mut bytes, fields.len());
            for (k, v) in &fields {
                put_str(&mut bytes, k);
                encode_value(&mut bytes, v);
            }
            let old = Record::from_validated(&bytes);
            // Every other patch field exists already; the rest are new.
            let patch: Map<String, Value> = (0..patch_fields)
                .map(|j| {
                    let name = if j % 2 == 0 {
                        format!("f{}", j * 7 % record_fields)
                    } else {
                        format!("new{j}")
                    };
                    (name, json!(format!("p{j}")))
                })
                .collect();
            let merged = merge(&old, &patch);
            assert_eq!(
                merged.to_json_string(),
                text_of(&merged_model(&fields, &patch)),
                "{record_fields} fields, {patch_fields} patched"
            );
        }
    }

    #[test]
    fn records_built_one_after_another_share_no_bytes() {
        // The scratch buffer is reused: a record sealed from it must not
        // change when the next one is built, large or small.
        let big = "x".repeat(2 * SCRATCH_KEEP);
        let a = rec(json!({"id": 1, "s": "first"}));
        let b = rec(json!({"id": 2, "s": big.clone()}));
        let c = rec(json!({"id": 3}));
        // A buffer that grew past the limit is not kept.
        assert!(SCRATCH.with(|s| {
            let buf = s.take();
            let kept = buf.capacity() <= SCRATCH_KEEP;
            s.set(buf);
            kept
        }));
        let d = merge(&a, json!({"s": "patched"}).as_object().unwrap());
        // Two records pending at once: the second gets a buffer of its own.
        let p1 = PendingRecord::new(&json!({"id": 5, "k": "one"}), "id").unwrap();
        let p2 = PendingRecord::new(&json!({"id": 6, "k": "two"}), "id").unwrap();
        let (r2, r1) = (p2.finish(None), p1.finish(None));
        assert_eq!(a.to_value(), json!({"id": 1, "s": "first"}));
        assert_eq!(b.to_value(), json!({"id": 2, "s": big}));
        assert_eq!(c.to_value(), json!({"id": 3}));
        assert_eq!(d.to_value(), json!({"id": 1, "s": "patched"}));
        assert_eq!(r1.to_value(), json!({"id": 5, "k": "one"}));
        assert_eq!(r2.to_value(), json!({"id": 6, "k": "two"}));
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
}
