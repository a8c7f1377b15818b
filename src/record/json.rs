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
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut seen = 0u64;
    let mut i = 0;
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(chunk);
        let w = u64::from_le_bytes(a);
        // A quote, a backslash, or a byte below 0x20 somewhere in the word:
        // the byte loop below finds which.
        if stop_bytes(w) != 0 {
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

/// Writes the string `bytes`, which ends where `r` stands: a string of at
/// most 32 bytes that needs no escaping is checked a word at a time and
/// copied with one fixed-size move from the record (the bytes after it are
/// cut off again); anything else goes through [`write_bytes`].
#[inline]
fn write_read_str(out: &mut Vec<u8>, r: &Reader<'_>, bytes: &[u8]) {
    let len = bytes.len();
    let start = r.pos - len;
    let copied = if len <= 16 {
        match r.window::<16>(start) {
            Some(w) => copy_plain(out, w, len),
            // Near the record's end: the sixteen bytes that end with the
            // string, shifted down to it.
            None => r.window::<16>(r.pos.wrapping_sub(16)).is_some_and(|w| {
                let shifted = u128::from_le_bytes(*w).checked_shr(8 * (16 - len) as u32);
                copy_plain(out, &shifted.unwrap_or(0).to_le_bytes(), len)
            }),
        }
    } else if len <= 32 {
        r.window::<32>(start)
            .is_some_and(|w| copy_plain(out, w, len))
    } else {
        false
    };
    if !copied {
        write_bytes(out, bytes);
    }
}

/// Writes the first `len` bytes of `window` as a string literal if none of
/// them needs escaping; false, writing nothing, otherwise.
#[inline]
fn copy_plain<const N: usize>(out: &mut Vec<u8>, window: &[u8; N], len: usize) -> bool {
    // Only the string's own bytes count. A match can only make false ones
    // at more significant (later) bytes, which the mask drops with the rest.
    let mut stops = 0;
    for (i, word) in window.chunks_exact(8).enumerate() {
        let mask = match len.saturating_sub(8 * i) {
            0 => 0,
            own @ 1..=7 => (1u64 << (8 * own)) - 1,
            _ => u64::MAX,
        };
        let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        stops |= stop_bytes(w) & mask;
    }
    if stops != 0 {
        return false;
    }
    out.reserve(N + 2);
    out.push(b'"');
    let at = out.len();
    out.extend_from_slice(window);
    out.truncate(at + len);
    out.push(b'"');
    true
}

/// The high bit of each byte of `w` that is a quote, a backslash or a
/// control character (and possibly of bytes after such a byte).
#[inline]
fn stop_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    has_zero(w ^ (ONES * u64::from(b'"')))
        | has_zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
}

/// Writes a float as serde_json would (shortest round-trip form); a
/// non-finite float, which no stored record holds, as `null`.
pub(crate) fn write_f64(out: &mut Vec<u8>, f: f64) {
    use serde_json::ser::Formatter;
    if write_short_decimal(out, f) {
        return;
    }
    if f.is_finite() {
        // Writing to a Vec cannot fail.
        let _ = serde_json::ser::CompactFormatter.write_f64(out, f);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Powers of ten tried by [`write_short_decimal`] (all exact in a double).
const TENS: [u64; 5] = [1, 10, 100, 1_000, 10_000];

/// Writes `f` if it is a decimal of at most four fractional digits, in the
/// form the general path would give (`1.0`, `-0.25`, `123456.5`); returns
/// false, writing nothing, for anything else.
///
/// For the smallest `k` at which `|f| * 10^k` is an integer `m`, the
/// decimal `m / 10^k` reads back as `f` when dividing the two (both exact in
/// a double, so the one rounding is the correct one) gives `f` again. With
/// `m` below 2^50 the double's rounding interval is narrower than `10^-k`,
/// so no other decimal of `k` digits reads back as `f`, and a trailing zero
/// (a shorter form the product missed by a rounding) is left to the general
/// path. Magnitudes from 0.001 (below, the general path may choose an
/// exponent) keep the plain form the general path also uses.
fn write_short_decimal(out: &mut Vec<u8>, f: f64) -> bool {
    const LIMIT: f64 = (1u64 << 50) as f64;
    let a = f.abs();
    if !(1e-3..LIMIT).contains(&a) {
        return false;
    }
    for (k, &unit) in TENS.iter().enumerate() {
        let ten = unit as f64;
        let scaled = a * ten;
        if scaled >= LIMIT {
            return false;
        }
        // Truncation of a value below 2^50: exact for integers.
        let m = scaled as u64;
        if m as f64 != scaled {
            continue;
        }
        if m as f64 / ten != a || (k > 0 && m.is_multiple_of(10)) {
            return false;
        }
        // The integer part without dividing by a variable: truncation is
        // exact below 2^50, and the fraction's digits are what remains.
        let whole = a as u64;
        let Some(mut frac) = m.checked_sub(whole * unit).filter(|&frac| frac < unit) else {
            return false;
        };
        if f < 0.0 {
            out.push(b'-');
        }
        let mut b = itoa::Buffer::new();
        out.extend_from_slice(b.format(whole).as_bytes());
        out.push(b'.');
        if k == 0 {
            out.push(b'0');
        } else {
            let start = out.len();
            out.resize(start + k, b'0');
            for at in (start..start + k).rev() {
                out[at] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
        }
        return true;
    }
    false
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
    let mut r = Reader::new(bytes);
    let (head, bytes) = r.raw()?;
    write_item(out, &mut r, head, bytes, 0)
}

/// Writes the item just read (`head`, and a string's `bytes`). Scalars are
/// written here, inlined into each container's loop; only a nested
/// container costs a call.
#[inline(always)]
fn write_item(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    head: Head,
    bytes: &[u8],
    depth: usize,
) -> Result<(), RecordError> {
    if depth > MAX_DEPTH {
        return Err(RecordError::TooDeep);
    }
    // Strings are copied as raw bytes: every stored record was checked to be
    // UTF-8 when it was created, so checking again would only cost time.
    match head {
        Head::Nil => out.extend_from_slice(b"null"),
        Head::Bool(true) => out.extend_from_slice(b"true"),
        Head::Bool(false) => out.extend_from_slice(b"false"),
        Head::Uint(u) => write_uint(out, u),
        Head::Int(i) => write_int(out, i),
        Head::Float(f) => write_f64(out, f),
        Head::Str(_) => write_read_str(out, r, bytes),
        Head::Array(_) | Head::Map(_) => write_container(out, r, head, depth)?,
    }
    Ok(())
}

/// Writes an array or a map whose head was just read.
fn write_container(
    out: &mut Vec<u8>,
    r: &mut Reader<'_>,
    head: Head,
    depth: usize,
) -> Result<(), RecordError> {
    match head {
        Head::Array(n) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                let (head, bytes) = r.raw()?;
                write_item(out, r, head, bytes, depth + 1)?;
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
                    (Head::Str(_), k) => write_read_str(out, r, k),
                    (other, _) => {
                        return Err(RecordError::Expected {
                            expected: "a field name",
                            found: other.name(),
                        })
                    }
                }
                out.push(b':');
                let (head, bytes) = r.raw()?;
                write_item(out, r, head, bytes, depth + 1)?;
            }
            out.push(b'}');
        }
        _ => {}
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
        /// Whole records of strings of every length around the 16-byte
        /// copy, with escapes anywhere (in the string or right after it),
        /// at the record's end or not: the text is serde_json's.
        #[test]
        fn records_of_strings_are_written_as_serde_json_writes_them(
            fields in proptest::collection::vec(
                (
                    proptest::prop_oneof!["[a-zé]{0,20}", "[a-z\"\\\u{0}-\u{1f}é]{0,20}"],
                    proptest::prop_oneof![
                        "[a-z0-9é\u{7f}]{0,24}",
                        "[a-z]{0,18}[\"\\\u{0}-\u{1f}][a-z]{0,18}",
                        "[a-z\"\\\u{0}-\u{1f}é\u{7f}]{0,40}",
                    ],
                ),
                0..6,
            ),
            tail in "[a-z\"\\\u{0}-\u{1f}]{0,3}",
        ) {
            let mut map = serde_json::Map::new();
            for (k, v) in fields {
                map.insert(k, Value::String(v));
            }
            // A last short field: its string ends the record, with fewer
            // than 16 bytes after it.
            map.insert("~".repeat(3), Value::String(tail));
            let v = Value::Object(map);
            let r = PendingRecord::new(&v, "id").unwrap().finish(None);
            proptest::prop_assert_eq!(r.to_json_string(), serde_json::to_string(&v).unwrap());
        }
    }

    /// Any JSON value: every scalar form, strings of any characters (the
    /// escapes, multi-byte and plain runs of every length), floats of a
    /// few decimals and of any bits, nesting.
    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let float = prop_oneof![
            any::<u64>().prop_filter_map("finite", |b| {
                serde_json::Number::from_f64(f64::from_bits(b)).map(Value::Number)
            }),
            (any::<i32>(), 0u32..6).prop_map(|(m, k)| json!(f64::from(m) / 10f64.powi(k as i32))),
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            (-200i64..200).prop_map(|i| json!(i)),
            float,
            ".{0,40}".prop_map(Value::String),
            "[a-z@._0-9]{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,12}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]
        /// Any record: its JSON text is serde_json's for the same value,
        /// and reads back as that value.
        #[test]
        fn any_record_is_written_as_serde_json_writes_it(
            fields in proptest::collection::btree_map(".{0,12}", any_value(), 0..8),
        ) {
            let v = Value::Object(fields.into_iter().collect());
            // No key field (`.` never makes a line break).
            let r = PendingRecord::new(&v, "\n").unwrap().finish(None);
            let text = r.to_json_string();
            proptest::prop_assert_eq!(&text, &serde_json::to_string(&v).unwrap());
            proptest::prop_assert_eq!(r.to_value(), v);
        }
    }

    /// serde_json's text for a float, the form every float must match.
    fn serde_text(f: f64) -> String {
        serde_json::to_string(&f).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        /// Decimals of a few digits at every magnitude the short path takes
        /// (and beyond it), and arbitrary doubles: the text is serde_json's.
        #[test]
        fn floats_are_written_as_serde_json_writes_them(
            m in 0u64..(1u64 << 53),
            k in 0u32..7,
            shift in 0u32..60,
            bits in proptest::prelude::any::<u64>(),
            negative in proptest::prelude::any::<bool>(),
        ) {
            let sign = if negative { -1.0 } else { 1.0 };
            let decimal = sign * (m >> shift) as f64 / 10f64.powi(k as i32);
            let halves = sign * (m >> shift) as f64 * 0.5;
            for f in [decimal, halves, f64::from_bits(bits)] {
                let mut out = Vec::new();
                super::write_f64(&mut out, f);
                let expected = if f.is_finite() { serde_text(f) } else { "null".to_string() };
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), expected, "{:e}", f);
            }
        }
    }

    #[test]
    fn floats_at_the_short_path_edges_are_written_as_serde_json_writes_them() {
        let edges = [
            0.0,
            -0.0,
            0.001,
            0.000999,
            0.0011,
            0.1,
            0.2,
            0.3,
            1.0,
            -1.5,
            2.25,
            0.0001,
            1e-4,
            123456.5,
            999999999999999.9,
            1e15,
            1e16,
            1125899906842623.5,
            1125899906842624.0,
            562949953421311.75,
            0.1 + 0.2,
            1.0 / 3.0,
            100.0,
            12.3400,
            5e-324,
            f64::MAX,
        ];
        for f in edges.into_iter().chain(edges.map(|f| -f)) {
            let mut out = Vec::new();
            super::write_f64(&mut out, f);
            assert_eq!(String::from_utf8(out).unwrap(), serde_text(f), "{f:e}");
        }
        // Every decimal of up to four digits in [0, 10).
        for m in 0..100_000u32 {
            for f in [f64::from(m) / 10_000.0, f64::from(m) / 1_000.0 + 1e6] {
                let mut out = Vec::new();
                super::write_f64(&mut out, f);
                assert_eq!(String::from_utf8(out).unwrap(), serde_text(f), "{f:e}");
            }
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
