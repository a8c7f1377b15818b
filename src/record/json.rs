//! Writing stored records as JSON text, without building a `serde_json::Value`.

use super::decode::{Head, Reader};
use super::{RecordError, MAX_DEPTH};
use crate::key::Key;

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

/// Whether `b` cannot stand as itself inside a JSON string: the quote, the
/// backslash and control characters. The JSON reader stops its fast scan
/// on the same bytes (they start an escape, end the string or are refused).
#[inline]
pub(crate) fn needs_escape(b: u8) -> bool {
    ESCAPE[usize::from(b)] != 0
}

/// The length of the run of `bytes` that needs no escaping (up to a quote,
/// a backslash or a control character), and whether that run is ASCII.
/// Eight bytes at a time: most strings are short and plain.
#[inline]
pub(crate) fn scan_plain(bytes: &[u8]) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut seen = 0u64;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let w = u64::from_le_bytes(a);
        // A quote, a backslash, or a byte below 0x20 somewhere in the word:
        // the byte loop below finds which.
        let stop = has_zero(w ^ (ONES * u64::from(b'"')))
            | has_zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if stop != 0 {
            break;
        }
        seen |= w;
        i += 8;
    }
    let mut high = (seen & HIGH) != 0;
    while let Some(&b) = bytes.get(i) {
        if needs_escape(b) {
            break;
        }
        high |= b >= 0x80;
        i += 1;
    }
    (i, !high)
}

/// Writes `s` as a JSON string literal (UTF-8 kept as is, as serde_json does).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    write_bytes(out, s.as_bytes());
}

/// Writes UTF-8 bytes as a JSON string literal.
#[inline]
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    static HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Fast path: most strings need no escaping at all.
    let (plain, _) = scan_plain(bytes);
    if plain == bytes.len() {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(plain) {
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

/// Writes a float as serde_json would (shortest round-trip form); a
/// non-finite float, which no stored record holds, as `null`.
pub(crate) fn write_f64(out: &mut Vec<u8>, f: f64) {
    use serde_json::ser::Formatter;
    if f.is_finite() {
        // Writing to a Vec cannot fail.
        let _ = serde_json::ser::CompactFormatter.write_f64(out, f);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes a signed integer.
pub(crate) fn write_int(out: &mut Vec<u8>, i: i64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(i).as_bytes());
}

/// Writes an unsigned integer.
pub(crate) fn write_uint(out: &mut Vec<u8>, u: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(u).as_bytes());
}

/// Writes a primary key.
pub(crate) fn write_key(out: &mut Vec<u8>, key: &Key) {
    match key {
        Key::Int(i) => write_int(out, *i),
        Key::Str(s) => write_str(out, s),
    }
}

/// Transcodes one MessagePack value (a stored record) to compact JSON text.
pub(crate) fn write_record(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), RecordError> {
    write_value(out, &mut Reader::new(bytes), 0)
}

fn write_value(out: &mut Vec<u8>, r: &mut Reader<'_>, depth: usize) -> Result<(), RecordError> {
    if depth > MAX_DEPTH {
        return Err(RecordError::TooDeep);
    }
    // Strings are copied as raw bytes: every stored record was checked to be
    // UTF-8 when it was created, so checking again would only cost time.
    let (head, bytes) = r.raw()?;
    match head {
        Head::Nil => out.extend_from_slice(b"null"),
        Head::Bool(true) => out.extend_from_slice(b"true"),
        Head::Bool(false) => out.extend_from_slice(b"false"),
        Head::Uint(u) => write_uint(out, u),
        Head::Int(i) => write_int(out, i),
        Head::Float(f) => write_f64(out, f),
        Head::Str(_) => write_bytes(out, bytes),
        Head::Array(n) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, r, depth + 1)?;
            }
            out.push(b']');
        }
        Head::Map(n) => {
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                match r.raw()? {
                    (Head::Str(_), k) => write_bytes(out, k),
                    (other, _) => {
                        return Err(RecordError::Expected {
                            expected: "a field name",
                            found: other.name(),
                        })
                    }
                }
                out.push(b':');
                write_value(out, r, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    proptest::proptest! {
        /// Strings are written exactly as serde_json writes them, whatever
        /// mix of plain runs (scanned eight bytes at a time) and escapes.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(s in "[a-z\"\\\\\u{0}-\u{1f}é\u{7f}]{0,40}") {
            let mut out = Vec::new();
            super::write_str(&mut out, &s);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), serde_json::to_string(&s).unwrap());
        }
    }

    use crate::record::PendingRecord;

    #[test]
    fn json_text_matches_serde_json() {
        let v = json!({"id": 7, "name": "a\"b\\\u{7f}\u{1f}é", "f": [0.1, -0.0, 1e16, 2.5e-7, 100.0],
                       "n": {"x": null, "y": [true, false]}, "i": -9223372036854775808i64,
                       "u": u64::MAX});
        let r = PendingRecord::new(&v, "id").unwrap().finish(None);
        let text = r.to_json_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        // Same bytes as serde_json for the same field order.
        assert_eq!(text, serde_json::to_string(&v).unwrap());
    }
}
