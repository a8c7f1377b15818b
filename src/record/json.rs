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

/// Text being written into room reserved up front: a byte slice and the
/// position reached. Writing a record's text byte by byte into a `Vec`
/// checks and updates its length at every push; here the room is reserved
/// once per record (see [`room_for_record`] and [`room_counted`]) and the
/// position stays in a register. Every write is still bounds-checked: a
/// bound that was too small would panic (tests attack both bounds), never
/// write out of bounds.
struct Text<'a> {
    buf: &'a mut [u8],
    at: usize,
}

/// The most bytes a string of `len` bytes can take as a literal: six per
/// byte (`\u001f`) and the quotes.
fn room_for_str(len: usize) -> usize {
    len.saturating_mul(6).saturating_add(2)
}

/// The most bytes the text of a stored record of `len` bytes can take.
///
/// Counted per stored item, each with its separator (`,` or `:`) and a
/// container's closing bracket: no item takes more than six bytes of text
/// per stored byte. A string byte takes at most six (`\u001f`); a one-byte
/// item at most six (`,false`); the fixed-width numbers at most 25 for 5
/// or 9 stored bytes (`,-1.7976931348623157e308`), an integer at most 21 for 9
/// (`,-9223372036854775808`) and 11 for 5; longer headers fewer. The
/// constant covers a windowed string copy, which writes up to 32 bytes
/// past where the string ends before the position moves back.
pub(crate) fn room_for_record(len: usize) -> usize {
    len.saturating_mul(6).saturating_add(64)
}

impl Text<'_> {
    #[inline(always)]
    fn put(&mut self, b: u8) {
        self.buf[self.at] = b;
        self.at += 1;
    }

    #[inline(always)]
    fn put_all(&mut self, s: &[u8]) {
        let end = self.at + s.len();
        self.buf[self.at..end].copy_from_slice(s);
        self.at = end;
    }

    /// A string literal from the first `len` bytes of `window` (known to
    /// need no escaping), written with one fixed-size move.
    #[inline(always)]
    fn put_window<const N: usize>(&mut self, window: &[u8; N], len: usize) {
        let at = self.at;
        self.buf[at] = b'"';
        self.buf[at + 1..at + 1 + N].copy_from_slice(window);
        self.buf[at + 1 + len] = b'"';
        self.at = at + len + 2;
    }

    /// Writes UTF-8 bytes as a JSON string literal.
    fn string(&mut self, bytes: &[u8]) {
        static HEX: &[u8; 16] = b"0123456789abcdef";
        self.put(b'"');
        // Fast path: most strings need no escaping at all.
        let (plain, _) = scan_plain(bytes);
        self.put_all(&bytes[..plain]);
        let mut start = plain;
        for (i, &b) in bytes.iter().enumerate().skip(plain) {
            let esc = ESCAPE[usize::from(b)];
            if esc == 0 {
                continue;
            }
            self.put_all(&bytes[start..i]);
            match esc {
                UU => self.put_all(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]),
                c => self.put_all(&[b'\\', c]),
            }
            start = i + 1;
        }
        self.put_all(&bytes[start..]);
        self.put(b'"');
    }

    /// Writes the string `bytes`, which ends where `r` stands: a string of
    /// at most 32 bytes that needs no escaping is checked a word at a time
    /// and copied with one fixed-size move from the record (the bytes after
    /// it are overwritten next); anything else goes through
    /// [`string`](Self::string).
    #[inline(always)]
    fn read_str(&mut self, r: &Reader<'_>, bytes: &[u8]) {
        let len = bytes.len();
        let start = r.pos - len;
        if len <= 16 {
            if let Some(w) = r.window::<16>(start) {
                if plain_window(w, len) {
                    return self.put_window(w, len);
                }
            } else if let Some(w) = r.window::<16>(r.pos.wrapping_sub(16)) {
                // Near the record's end: the sixteen bytes that end with
                // the string, shifted down to it.
                let shifted = u128::from_le_bytes(*w)
                    .checked_shr(8 * (16 - len) as u32)
                    .unwrap_or(0)
                    .to_le_bytes();
                if plain_window(&shifted, len) {
                    return self.put_window(&shifted, len);
                }
            }
        } else if len <= 32 {
            if let Some(w) = r.window::<32>(start) {
                if plain_window(w, len) {
                    return self.put_window(w, len);
                }
            }
        }
        self.string(bytes)
    }

    #[inline(always)]
    fn uint(&mut self, u: u64) {
        if u < 10 {
            self.put(b'0' + u as u8);
        } else {
            let mut b = itoa::Buffer::new();
            self.put_all(b.format(u).as_bytes());
        }
    }

    #[inline(always)]
    fn int(&mut self, i: i64) {
        let mut b = itoa::Buffer::new();
        self.put_all(b.format(i).as_bytes());
    }

    #[inline(always)]
    fn float(&mut self, f: f64) {
        let mut tmp = [0u8; FLOAT_ROOM];
        let n = f64_text(&mut tmp, f);
        self.put_all(&tmp[..n]);
    }

    /// Writes the item just read (`head`, and a string's `bytes`). Scalars
    /// are written here, inlined into each container's loop; only a nested
    /// container costs a call.
    #[inline(always)]
    fn item(
        &mut self,
        r: &mut Reader<'_>,
        head: Head,
        bytes: &[u8],
        depth: usize,
    ) -> Result<(), RecordError> {
        if depth > MAX_DEPTH {
            return Err(RecordError::TooDeep);
        }
        // Strings are copied as raw bytes: every stored record was checked
        // to be UTF-8 when it was created, so checking again would only
        // cost time.
        match head {
            Head::Nil => self.put_all(b"null"),
            Head::Bool(true) => self.put_all(b"true"),
            Head::Bool(false) => self.put_all(b"false"),
            Head::Uint(u) => self.uint(u),
            Head::Int(i) => self.int(i),
            Head::Float(f) => self.float(f),
            Head::Str(_) => self.read_str(r, bytes),
            Head::Array(_) | Head::Map(_) => self.container(r, head, depth)?,
        }
        Ok(())
    }

    /// Reads and writes the next item. The forms that make up most records
    /// (short strings, small integers, booleans) are written straight from
    /// their marker byte; any other goes through [`Reader::raw`] and
    /// [`item`](Self::item), which give the same text.
    #[inline(always)]
    fn next_item(&mut self, r: &mut Reader<'_>, depth: usize) -> Result<(), RecordError> {
        if depth <= MAX_DEPTH {
            if let Some(bytes) = r.fixstr() {
                self.read_str(r, bytes);
                return Ok(());
            }
            match r.peek() {
                Some(m @ 0x00..=0x7f) => {
                    r.pos += 1;
                    self.uint(u64::from(m));
                    return Ok(());
                }
                Some(0xc2) => {
                    r.pos += 1;
                    self.put_all(b"false");
                    return Ok(());
                }
                Some(0xc3) => {
                    r.pos += 1;
                    self.put_all(b"true");
                    return Ok(());
                }
                _ => {}
            }
        }
        let (head, bytes) = r.raw()?;
        self.item(r, head, bytes, depth)
    }

    /// Reads and writes a map's field name.
    #[inline(always)]
    fn field_name(&mut self, r: &mut Reader<'_>) -> Result<(), RecordError> {
        if let Some(bytes) = r.fixstr() {
            self.read_str(r, bytes);
            return Ok(());
        }
        match r.raw()? {
            (Head::Str(_), k) => {
                self.read_str(r, k);
                Ok(())
            }
            (other, _) => Err(RecordError::Expected {
                expected: "a field name",
                found: other.name(),
            }),
        }
    }

    /// Writes an array or a map whose head was just read.
    fn container(
        &mut self,
        r: &mut Reader<'_>,
        head: Head,
        depth: usize,
    ) -> Result<(), RecordError> {
        match head {
            Head::Array(n) => {
                self.put(b'[');
                for i in 0..n {
                    if i > 0 {
                        self.put(b',');
                    }
                    self.next_item(r, depth + 1)?;
                }
                self.put(b']');
            }
            Head::Map(n) => {
                self.put(b'{');
                for i in 0..n {
                    if i > 0 {
                        self.put(b',');
                    }
                    self.field_name(r)?;
                    self.put(b':');
                    self.next_item(r, depth + 1)?;
                }
                self.put(b'}');
            }
            _ => {}
        }
        Ok(())
    }
}

/// Writes into room reserved at the end of `out`: `room` bytes at most,
/// through `f`; `out` ends where the text does.
#[inline(always)]
fn write_into<T>(out: &mut Vec<u8>, room: usize, f: impl FnOnce(&mut Text<'_>) -> T) -> T {
    let start = out.len();
    out.resize(start + room, 0);
    let mut text = Text {
        buf: out.as_mut_slice(),
        at: start,
    };
    let result = f(&mut text);
    let end = text.at;
    out.truncate(end);
    result
}

/// Writes `s` as a JSON string literal (UTF-8 kept as is, as serde_json does).
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    write_into(out, room_for_str(s.len()), |t| t.string(s.as_bytes()));
}

/// Whether none of the first `len` bytes of `window` needs escaping.
#[inline(always)]
fn plain_window<const N: usize>(window: &[u8; N], len: usize) -> bool {
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
    stops == 0
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

/// Room for any float's text (serde_json's longest is 24 bytes).
const FLOAT_ROOM: usize = 32;

/// Writes a float as serde_json would (shortest round-trip form); a
/// non-finite float, which no stored record holds, as `null`.
pub(crate) fn write_f64(out: &mut Vec<u8>, f: f64) {
    let mut tmp = [0u8; FLOAT_ROOM];
    let n = f64_text(&mut tmp, f);
    out.extend_from_slice(&tmp[..n]);
}

/// [`write_f64`] into `tmp`; the length written.
#[inline]
fn f64_text(tmp: &mut [u8; FLOAT_ROOM], f: f64) -> usize {
    use serde_json::ser::Formatter;
    if let Some(n) = short_decimal(tmp, f) {
        return n;
    }
    if f.is_finite() {
        let mut rest: &mut [u8] = &mut tmp[..];
        // At most 24 bytes: writing to the slice cannot fail.
        let _ = serde_json::ser::CompactFormatter.write_f64(&mut rest, f);
        FLOAT_ROOM - rest.len()
    } else {
        tmp[..4].copy_from_slice(b"null");
        4
    }
}

/// Powers of ten tried by [`short_decimal`] (all exact in a double).
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
fn short_decimal(tmp: &mut [u8; FLOAT_ROOM], f: f64) -> Option<usize> {
    const LIMIT: f64 = (1u64 << 50) as f64;
    let a = f.abs();
    if !(1e-3..LIMIT).contains(&a) {
        return None;
    }
    for (k, &unit) in TENS.iter().enumerate() {
        let ten = unit as f64;
        let scaled = a * ten;
        if scaled >= LIMIT {
            return None;
        }
        // Truncation of a value below 2^50: exact for integers.
        let m = scaled as u64;
        if m as f64 != scaled {
            continue;
        }
        if m as f64 / ten != a || (k > 0 && m.is_multiple_of(10)) {
            return None;
        }
        // The integer part without dividing by a variable: truncation is
        // exact below 2^50, and the fraction's digits are what remains.
        let whole = a as u64;
        let mut frac = m.checked_sub(whole * unit).filter(|&frac| frac < unit)?;
        // At most 22 bytes: a sign, 16 digits below 2^50, a point, four.
        let mut n = 0;
        if f < 0.0 {
            tmp[0] = b'-';
            n = 1;
        }
        let mut b = itoa::Buffer::new();
        let digits = b.format(whole).as_bytes();
        tmp[n..n + digits.len()].copy_from_slice(digits);
        n += digits.len();
        tmp[n] = b'.';
        n += 1;
        if k == 0 {
            tmp[n] = b'0';
            return Some(n + 1);
        }
        for at in (n..n + k).rev() {
            tmp[at] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        return Some(n + k);
    }
    None
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

/// Stored size above which a record's room is counted item by item
/// ([`room_counted`]) rather than taken as six bytes per stored byte: for a
/// record of megabytes (a long text, a large array), six times its size
/// would be memory reserved and zeroed for nothing.
const LARGE_RECORD: usize = 64 << 10;

/// The room a record's text can take, counted item by item: a string its
/// bytes, quotes, and five more for each byte that needs escaping; any
/// other item the longest text of its kind; each item a separator. Only
/// large records pay for the walk. A record that does not read to its end
/// gets the general bound.
fn room_counted(bytes: &[u8]) -> usize {
    let mut r = Reader::new(bytes);
    let mut room: usize = 64;
    while r.pos < bytes.len() {
        let item = match r.raw() {
            Ok((Head::Str(_), s)) => {
                2 + s.len() + 5 * s.iter().filter(|&&b| needs_escape(b)).count()
            }
            Ok((Head::Nil | Head::Bool(_), _)) => 5,
            Ok((Head::Uint(_) | Head::Int(_), _)) => 20,
            Ok((Head::Float(_), _)) => FLOAT_ROOM,
            Ok((Head::Array(_) | Head::Map(_), _)) => 2,
            Err(_) => return room_for_record(bytes.len()),
        };
        room = room.saturating_add(item + 1);
    }
    room
}

/// Transcodes one MessagePack value (a stored record) to compact JSON text.
pub(crate) fn write_record(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), RecordError> {
    let room = if bytes.len() <= LARGE_RECORD {
        room_for_record(bytes.len())
    } else {
        room_counted(bytes)
    };
    write_into(out, room, |t| {
        let mut r = Reader::new(bytes);
        let (head, s) = r.raw()?;
        t.item(&mut r, head, s, 0)
    })
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

    /// A large record's room is counted item by item: about its text's
    /// size for a long plain string, not six times it, and still enough
    /// for the shapes that take the most text per stored byte (each made
    /// larger than the limit, so counted).
    #[test]
    fn a_large_record_gets_the_room_its_items_need() {
        let plain = json!({"text": "a".repeat(1 << 20)});
        let r = PendingRecord::new(&plain, "\n").unwrap().finish(None);
        let room = super::room_counted(r.as_msgpack());
        assert!(
            room < r.encoded_len() + 100,
            "{room} for {}",
            r.encoded_len()
        );

        let control: String = (0u8..0x20).map(char::from).collect();
        let shapes = [
            json!({"a": vec![false; 100_000]}),
            json!({"a": vec![Value::Null; 100_000], "b": vec![-32; 100_000]}),
            json!({"a": vec![i64::MIN; 10_000], "b": vec![u64::MAX; 10_000]}),
            json!({"a": vec![-1.797_693_134_862_315_7e308; 10_000]}),
            json!({"a": vec![-2.225_073_858_507_201_4e-308; 10_000]}),
            json!({"s": control.repeat(4_000), "x": vec![control.clone(); 3_000]}),
            json!({"a": vec![json!([]); 70_000], "b": vec![json!({}); 70_000]}),
            json!({"a": vec![json!({"\"": "\\", "k": "x"}); 10_000], "e": ""}),
        ];
        for v in shapes {
            let r = PendingRecord::new(&v, "\n").unwrap().finish(None);
            assert!(r.encoded_len() > super::LARGE_RECORD);
            let text = r.to_json_string();
            let room = super::room_counted(r.as_msgpack());
            assert!(
                text.len() <= room,
                "{} bytes of text, room {room}",
                text.len()
            );
            assert_eq!(text, serde_json::to_string(&v).unwrap());
        }
    }

    /// The room reserved for a record holds the text of the records that
    /// take the most text per stored byte: one-byte items at their longest
    /// (`,false`, `,null`, `,-32`, `,127`), strings of control characters
    /// (`\u001f`, six bytes for one), the longest integers and floats,
    /// empty containers, and short strings ending the record (copied with a
    /// window). Writing past the room panics, so a bound of one byte less
    /// per stored byte fails this.
    #[test]
    fn the_room_reserved_for_a_record_holds_its_longest_texts() {
        let control: String = (0u8..0x20).map(char::from).collect();
        let shapes = [
            json!({"a": vec![false; 500]}),
            json!({"a": vec![Value::Null; 500]}),
            json!({"a": vec![-32; 500], "b": vec![127; 500]}),
            json!({"a": vec![i64::MIN; 100], "b": vec![u64::MAX; 100]}),
            json!({"a": vec![-1.797_693_134_862_315_7e308; 100],
                   "b": vec![-2.225_073_858_507_201_4e-308; 100]}),
            json!({control.clone(): control.repeat(20), "x": [control.clone(), control.clone()]}),
            json!({"a": vec![json!([]); 300], "b": vec![json!({}); 300]}),
            json!({"\u{1}": "\u{1}", "\"": "\\"}),
            json!({"e": ""}),
        ];
        for v in shapes {
            let r = PendingRecord::new(&v, "\n").unwrap().finish(None);
            assert!(r.encoded_len() <= super::LARGE_RECORD);
            let text = r.to_json_string();
            assert!(
                text.len() <= super::room_for_record(r.encoded_len()),
                "{} bytes of text for {} stored",
                text.len(),
                r.encoded_len()
            );
            assert_eq!(text, serde_json::to_string(&v).unwrap());
        }
    }

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
