//! JSON tokens: a streaming reader that transcodes records straight into
//! stored MessagePack, and a writer that transcodes them back to text.
//!
//! The reader is hand-written rather than serde_json's: it streams (a file is
//! never read whole; serde_json's streaming mode costs two to three times its
//! slice mode), it knows where each top-level entry starts (the checksum
//! covers the bytes before its entry), it rejects what JSON cannot hold
//! exactly (integers beyond 64 bits, `NaN`, lone surrogates) and duplicate
//! fields in linear time, and it bounds nesting everywhere, ignored values
//! included.

use std::collections::HashSet;
use std::io::Read;

use serde_json::Value;

use super::input::{Fault, Input, Res};
use super::syntax::{DocReader, DocWriter};
use crate::key::Key;
use crate::record::encode::{
    container_header, put_bool, put_f64, put_int, put_nil, put_str_bytes, put_uint,
};
use crate::record::json::{
    needs_escape, scan_plain, write_f64, write_key, write_record, write_str, write_uint,
};
use crate::record::{Record, MAX_DEPTH};

/// Deepest nesting of a value the reader skips or reads outside records.
const SKIP_DEPTH: usize = 128;

/// Longest number token accepted.
const MAX_NUMBER: usize = 4096;

/// Largest buffer reserved up front for a segment of records (larger ones
/// grow as they are written).
const SEGMENT_BUFFER_MAX: usize = 16 << 20;

/// Powers of ten exact in a `float64`, for the fast decimal path.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Objects with more fields than this check duplicates with a hash set.
const LINEAR_FIELDS: usize = 16;

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Reads JSON tokens from a stream.
pub(crate) struct JsonReader<R> {
    input: Input<R>,
    /// Open containers: whether the next entry or element is the first.
    first: Vec<bool>,
    entry: u64,
    scratch: Vec<u8>,
    /// Byte ranges (in the output) of the field names of each open object,
    /// by nesting depth; reused from record to record.
    names: Vec<Vec<(usize, usize)>>,
}

impl<R: Read> JsonReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        JsonReader {
            input: Input::new(inner),
            first: Vec::new(),
            entry: 0,
            scratch: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The next byte that is not white space, not consumed.
    #[inline]
    fn peek_token(&mut self) -> Res<u8> {
        loop {
            let inp = &mut self.input;
            while inp.pos < inp.end {
                let b = inp.buf[inp.pos];
                if !is_ws(b) {
                    return Ok(b);
                }
                inp.pos += 1;
            }
            if !inp.fill(1)? {
                return Err(Fault::Eof { at: inp.offset() });
            }
        }
    }

    #[inline]
    fn expect(&mut self, want: u8, what: &str) -> Res<()> {
        let b = self.peek_token()?;
        if b != want {
            return self.unexpected(b, what);
        }
        self.input.pos += 1;
        Ok(())
    }

    fn unexpected<T>(&self, b: u8, what: &str) -> Res<T> {
        let found = match b {
            b'N' | b'I' => {
                return self.input.bad(
                    "NaN and Infinity are not JSON: non-finite numbers cannot be stored \
                     (a file written with Python's allow_nan?)",
                )
            }
            0x20..=0x7e => format!("`{}`", b as char),
            _ => format!("byte 0x{b:02x}"),
        };
        self.input.bad(format!("expected {what}, found {found}"))
    }

    /// Consumes the literal `word` (its first byte already checked).
    fn literal(&mut self, word: &'static [u8]) -> Res<()> {
        let at = self.input.offset();
        match self.input.take(word.len()) {
            Ok(s) if s == word => Ok(()),
            Ok(_) => Input::<R>::bad_at(at, "invalid literal"),
            // Cut short: a truncated file, or a prefix read for a header.
            Err(e) => Err(e),
        }
    }

    // -- strings -----------------------------------------------------------

    /// Reads a string (the opening quote already consumed) as UTF-8 bytes
    /// into `self.scratch`, or returns it borrowed from the buffer when it
    /// needs no unescaping (`Ok(Some((start, len)))` in the buffer).
    #[inline]
    fn string_span(&mut self) -> Res<Option<(usize, usize)>> {
        let inp = &mut self.input;
        let start = inp.pos;
        let (len, ascii) = scan_plain(&inp.buf[start..inp.end]);
        let i = start + len;
        if i < inp.end && inp.buf[i] == b'"' {
            // Only strings with a byte above 0x7f need a UTF-8 check.
            if !ascii && std::str::from_utf8(&inp.buf[start..i]).is_err() {
                return Input::<R>::bad_at(inp.offset(), "invalid UTF-8 in a string");
            }
            inp.pos = i + 1;
            return Ok(Some((start, len)));
        }
        self.string_slow()?;
        Ok(None)
    }

    #[cold]
    fn string_slow(&mut self) -> Res<()> {
        let at = self.input.offset();
        self.scratch.clear();
        loop {
            let inp = &mut self.input;
            let s = inp.pos;
            let mut i = s;
            while i < inp.end && !needs_escape(inp.buf[i]) {
                i += 1;
            }
            self.scratch.extend_from_slice(&inp.buf[s..i]);
            inp.pos = i;
            if i == inp.end {
                if !inp.fill(1)? {
                    // Cut short: a truncated file, or a prefix read for a
                    // header (which then reads more).
                    return Err(Fault::Eof { at: inp.offset() });
                }
                continue;
            }
            let b = inp.buf[i];
            inp.pos += 1;
            match b {
                b'"' => break,
                b'\\' => self.escape()?,
                _ => {
                    return self
                        .input
                        .bad("control character in a string (must be escaped)")
                }
            }
        }
        if std::str::from_utf8(&self.scratch).is_err() {
            return Input::<R>::bad_at(at, "invalid UTF-8 in a string");
        }
        Ok(())
    }

    fn escape(&mut self) -> Res<()> {
        let b = self.input.byte()?;
        let c = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let cp = self.unicode_escape()?;
                let mut tmp = [0u8; 4];
                self.scratch
                    .extend_from_slice(cp.encode_utf8(&mut tmp).as_bytes());
                return Ok(());
            }
            _ => return self.input.bad("invalid escape in a string"),
        };
        self.scratch.push(c);
        Ok(())
    }

    fn hex4(&mut self) -> Res<u32> {
        let at = self.input.offset();
        let digits = self.input.take(4)?;
        let mut v = 0u32;
        for &d in digits {
            let x = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Input::<R>::bad_at(at, "invalid \\u escape"),
            };
            v = v * 16 + u32::from(x);
        }
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Res<char> {
        let at = self.input.offset();
        let hi = self.hex4()?;
        let cp = if (0xD800..0xDC00).contains(&hi) {
            // A high surrogate must be followed by an escaped low one.
            if self.input.fill(2)? && self.input.buf[self.input.pos..].starts_with(b"\\u") {
                self.input.pos += 2;
                let lo = self.hex4()?;
                if !(0xDC00..0xE000).contains(&lo) {
                    return Input::<R>::bad_at(at, "lone surrogate in a \\u escape");
                }
                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
            } else {
                return Input::<R>::bad_at(at, "lone surrogate in a \\u escape");
            }
        } else if (0xDC00..0xE000).contains(&hi) {
            return Input::<R>::bad_at(at, "lone surrogate in a \\u escape");
        } else {
            hi
        };
        char::from_u32(cp).map_or_else(|| Input::<R>::bad_at(at, "invalid \\u escape"), Ok)
    }

    /// Reads a string (after the opening quote) into `out`, replacing it.
    fn string_into(&mut self, out: &mut String) -> Res<()> {
        out.clear();
        // Both forms were checked to be UTF-8.
        let bytes = match self.string_span()? {
            Some((s, n)) => &self.input.buf[s..s + n],
            None => &self.scratch[..],
        };
        out.push_str(std::str::from_utf8(bytes).unwrap_or_default());
        Ok(())
    }

    /// Reads a string (after the opening quote) into MessagePack.
    #[inline]
    fn string_to(&mut self, out: &mut Vec<u8>) -> Res<()> {
        // Both forms were checked to be UTF-8.
        match self.string_span()? {
            Some((s, n)) => put_str_bytes(out, &self.input.buf[s..s + n]),
            None => put_str_bytes(out, &self.scratch),
        }
        Ok(())
    }

    // -- numbers -----------------------------------------------------------

    /// Reads a number token: where it starts in the buffer, its length, and
    /// whether it has a fraction or an exponent. Checks JSON's grammar.
    fn number_token(&mut self) -> Res<(usize, usize, bool)> {
        let at = self.input.offset();
        let mut len = 0;
        loop {
            let inp = &self.input;
            let avail = &inp.buf[inp.pos..inp.end];
            while len < avail.len()
                && matches!(avail[len], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                len += 1;
            }
            if len < avail.len() || len > MAX_NUMBER {
                break;
            }
            if !self.input.fill(len + 1)? {
                break;
            }
        }
        if len > MAX_NUMBER {
            return Input::<R>::bad_at(at, "number too long");
        }
        let start = self.input.pos;
        let tok = &self.input.buf[start..start + len];
        let float = match check_number(tok) {
            Some(f) => f,
            None => {
                let text = String::from_utf8_lossy(tok).into_owned();
                return Input::<R>::bad_at(at, format!("invalid number `{text}`"));
            }
        };
        self.input.pos += len;
        Ok((start, len, float))
    }

    fn number_to(&mut self, out: &mut Vec<u8>) -> Res<()> {
        if self.number_fast(out) {
            return Ok(());
        }
        self.number_general(out)
    }

    /// Any number token: checks the grammar, then the range.
    fn number_general(&mut self, out: &mut Vec<u8>) -> Res<()> {
        let at = self.input.offset();
        let (s, n, float) = self.number_token()?;
        let tok = &self.input.buf[s..s + n];
        if float {
            let f = parse_float(tok);
            if !f.is_finite() {
                return Input::<R>::bad_at(at, "number out of the range of a 64-bit float");
            }
            put_f64(out, f);
        } else {
            match parse_int(tok) {
                Some(Int::U(u)) => put_uint(out, u),
                Some(Int::I(i)) => put_int(out, i),
                None => return Input::<R>::bad_at(at, out_of_range(tok)),
            }
        }
        Ok(())
    }

    /// The common cases in one pass: an integer of at most 18 digits, or a
    /// plain decimal (`-12.5`, no exponent) of at most 15 significant
    /// digits, that ends inside the buffer. Anything else (an exponent, a
    /// leading zero, a longer or cut token, a grammar error) is left to the
    /// general path; `false` then, with nothing consumed.
    ///
    /// A decimal of at most 15 digits is `m / 10^k` with `m < 2^53` and
    /// `k <= 15`, both exact in a `float64`, so one division gives the
    /// correctly rounded value (Clinger's fast path), as the general parser
    /// does.
    #[inline]
    fn number_fast(&mut self, out: &mut Vec<u8>) -> bool {
        let inp = &mut self.input;
        let b = &inp.buf[inp.pos..inp.end];
        let neg = b.first() == Some(&b'-');
        let first = usize::from(neg);
        let mut i = first;
        let mut v: u64 = 0;
        // 18 digits stay below 2^63: no overflow, either sign.
        let Some(digits) = take_digits(b, &mut i, &mut v, 18) else {
            return false;
        };
        if digits == 0 || (digits > 1 && b[first] == b'0') {
            return false;
        }
        let mut fraction = 0;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let Some(f) = take_digits(b, &mut i, &mut v, 15usize.saturating_sub(digits)) else {
                return false;
            };
            fraction = f;
            if fraction == 0 {
                return false;
            }
        }
        if matches!(b.get(i), None | Some(b'.' | b'e' | b'E' | b'+' | b'-')) {
            return false;
        }
        inp.pos += i;
        if fraction > 0 {
            // Both operands are exact (v < 10^15 < 2^53): one rounding.
            let f = v as f64 / POW10[fraction];
            put_f64(out, if neg { -f } else { f });
        } else if neg {
            // `-0` is the integer 0, as in the general path.
            put_int(out, 0i64.wrapping_sub_unsigned(v));
        } else {
            put_uint(out, v);
        }
        true
    }

    // -- values ------------------------------------------------------------

    /// Transcodes the value at `depth` (a record's own object is at 0).
    fn value_to(&mut self, out: &mut Vec<u8>, depth: usize, limit: usize) -> Res<()> {
        if depth > limit {
            return self
                .input
                .bad(format!("nested more than {limit} levels deep"));
        }
        let b = self.peek_token()?;
        match b {
            b'"' => {
                self.input.pos += 1;
                self.string_to(out)
            }
            b'{' => self.object_to(out, depth, limit),
            b'[' => self.array_to(out, depth, limit),
            b't' => {
                self.literal(b"true")?;
                put_bool(out, true);
                Ok(())
            }
            b'f' => {
                self.literal(b"false")?;
                put_bool(out, false);
                Ok(())
            }
            b'n' => {
                self.literal(b"null")?;
                put_nil(out);
                Ok(())
            }
            b'-' | b'0'..=b'9' => {
                if b == b'-' && self.input.fill(2)? && self.input.buf[self.input.pos + 1] == b'I' {
                    return self.unexpected(b'I', "a value");
                }
                self.number_to(out)
            }
            _ => self.unexpected(b, "a value"),
        }
    }

    fn object_to(&mut self, out: &mut Vec<u8>, depth: usize, limit: usize) -> Res<()> {
        self.input.pos += 1;
        let start = out.len();
        out.push(0);
        if self.names.len() <= depth {
            self.names.resize_with(depth + 1, Vec::new);
        }
        // The name list of this depth is borrowed for the object's time.
        let mut names = std::mem::take(&mut self.names[depth]);
        names.clear();
        let result = self.object_fields(out, depth, limit, &mut names);
        self.names[depth] = names;
        insert_header(out, start, true, result?);
        Ok(())
    }

    fn object_fields(
        &mut self,
        out: &mut Vec<u8>,
        depth: usize,
        limit: usize,
        names: &mut Vec<(usize, usize)>,
    ) -> Res<usize> {
        if self.peek_token()? == b'}' {
            self.input.pos += 1;
            return Ok(0);
        }
        loop {
            let at = self.input.offset();
            self.expect(b'"', "a field name")?;
            let k0 = out.len();
            self.string_to(out)?;
            let k1 = out.len();
            if names.len() < LINEAR_FIELDS {
                let this = &out[k0..k1];
                if names.iter().any(|&(a, b)| same_name(&out[a..b], this)) {
                    return Input::<R>::bad_at(at, duplicate(this));
                }
            }
            names.push((k0, k1));
            self.expect(b':', "`:`")?;
            self.value_to(out, depth + 1, limit)?;
            match self.peek_token()? {
                b',' => self.input.pos += 1,
                b'}' => {
                    self.input.pos += 1;
                    break;
                }
                b => return self.unexpected(b, "`,` or `}`"),
            }
        }
        if names.len() > LINEAR_FIELDS {
            // Past a handful of fields, one pass with a set keeps the check
            // linear. Name ranges stay valid: a nested container's header
            // only moves bytes after its own start, after every name before.
            let mut set: HashSet<&[u8]> = HashSet::with_capacity(names.len());
            for &(a, b) in names.iter() {
                if !set.insert(&out[a..b]) {
                    return self.input.bad(duplicate(&out[a..b]));
                }
            }
        }
        Ok(names.len())
    }

    fn array_to(&mut self, out: &mut Vec<u8>, depth: usize, limit: usize) -> Res<()> {
        self.input.pos += 1;
        let start = out.len();
        out.push(0);
        let mut n = 0usize;
        if self.peek_token()? == b']' {
            self.input.pos += 1;
        } else {
            loop {
                self.value_to(out, depth + 1, limit)?;
                n += 1;
                match self.peek_token()? {
                    b',' => self.input.pos += 1,
                    b']' => {
                        self.input.pos += 1;
                        break;
                    }
                    b => return self.unexpected(b, "`,` or `]`"),
                }
            }
        }
        insert_header(out, start, false, n);
        Ok(())
    }
}

/// Reads the decimal digits of `b` from `*i` on into `v` (`v * 10 + d` for
/// each), moving `*i` past them: how many there were, or `None` if there
/// are more than `max` (then `v` and `*i` are not to be used).
#[inline]
fn take_digits(b: &[u8], i: &mut usize, v: &mut u64, max: usize) -> Option<usize> {
    let start = *i;
    while let Some(&c) = b.get(*i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        if *i - start == max {
            return None;
        }
        *v = *v * 10 + u64::from(d);
        *i += 1;
    }
    Some(*i - start)
}

/// Whether two encoded field names are equal; most differ in length, and
/// the rest are short enough for a byte loop to beat a `memcmp` call.
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        false
    } else if a.len() <= 24 {
        a.iter().zip(b).all(|(x, y)| x == y)
    } else {
        a == b
    }
}

fn duplicate(encoded_name: &[u8]) -> String {
    let mut r = crate::record::decode::Reader::new(encoded_name);
    let name = r.str().unwrap_or("?");
    format!("duplicate field {name:?}")
}

fn out_of_range(tok: &[u8]) -> String {
    format!(
        "integer {} is outside the 64-bit range and cannot be kept exactly",
        String::from_utf8_lossy(tok)
    )
}

/// Writes the header of a container of `n` items at `start`, before them.
///
/// One byte was reserved at `start` when the container began: most
/// containers hold fewer than 16 items and take a one-byte header, written
/// in place; only longer ones move their items to make room.
fn insert_header(out: &mut Vec<u8>, start: usize, map: bool, n: usize) {
    let (h, len) = container_header(map, n);
    out[start] = h[0];
    if len > 1 {
        out.splice(start + 1..start + 1, h[1..len].iter().copied());
    }
}

/// Checks a number token against JSON's grammar; `Some(true)` if it has a
/// fraction or exponent, `Some(false)` for an integer.
fn check_number(t: &[u8]) -> Option<bool> {
    let mut i = 0;
    if t.first() == Some(&b'-') {
        i += 1;
    }
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while matches!(t.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
        }
        _ => return None,
    }
    let mut float = false;
    if t.get(i) == Some(&b'.') {
        float = true;
        i += 1;
        let s = i;
        while matches!(t.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == s {
            return None;
        }
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        float = true;
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let s = i;
        while matches!(t.get(i), Some(b'0'..=b'9')) {
            i += 1;
        }
        if i == s {
            return None;
        }
    }
    (i == t.len()).then_some(float)
}

enum Int {
    U(u64),
    I(i64),
}

/// Parses a checked integer token; `None` beyond 64 bits.
fn parse_int(t: &[u8]) -> Option<Int> {
    let (neg, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, t),
    };
    let mut v: u64 = 0;
    for &d in digits {
        // Callers may pass a float token (`1.5`): `None`, never an
        // arithmetic overflow.
        let d = d.checked_sub(b'0').filter(|d| *d <= 9)?;
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    if !neg {
        Some(Int::U(v))
    } else if v <= 1 << 63 {
        // `-0` is the integer 0, as in Python.
        Some(Int::I(0i64.wrapping_sub_unsigned(v)))
    } else {
        None
    }
}

/// Parses a checked float token, correctly rounded.
fn parse_float(t: &[u8]) -> f64 {
    // A checked token is ASCII.
    std::str::from_utf8(t)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

impl<R: Read> DocReader for JsonReader<R> {
    fn offset(&self) -> u64 {
        self.input.offset()
    }

    fn begin_map(&mut self) -> Res<()> {
        self.expect(b'{', "an object")?;
        self.first.push(true);
        Ok(())
    }

    fn next_key(&mut self, key: &mut String) -> Res<bool> {
        let b = self.peek_token()?;
        let first = self.first.last().copied().unwrap_or(true);
        if b == b'}' {
            self.input.pos += 1;
            self.first.pop();
            return Ok(false);
        }
        self.entry = self.input.offset();
        if !first {
            if b != b',' {
                return self.unexpected(b, "`,` or `}`");
            }
            self.input.pos += 1;
        }
        if let Some(f) = self.first.last_mut() {
            *f = false;
        }
        self.expect(b'"', "a key")?;
        self.string_into(key)?;
        self.expect(b':', "`:`")?;
        Ok(true)
    }

    fn entry_start(&self) -> u64 {
        self.entry
    }

    fn begin_array(&mut self) -> Res<()> {
        self.expect(b'[', "an array")?;
        self.first.push(true);
        Ok(())
    }

    fn next_element(&mut self) -> Res<bool> {
        let b = self.peek_token()?;
        if b == b']' {
            self.input.pos += 1;
            self.first.pop();
            return Ok(false);
        }
        if let Some(f) = self.first.last_mut() {
            if !*f {
                if b != b',' {
                    return self.unexpected(b, "`,` or `]`");
                }
                self.input.pos += 1;
            }
            *f = false;
        }
        Ok(true)
    }

    fn string(&mut self, out: &mut String) -> Res<()> {
        self.expect(b'"', "a string")?;
        self.string_into(out)
    }

    fn uint(&mut self) -> Res<u64> {
        let at = self.input.offset();
        let b = self.peek_token()?;
        if !matches!(b, b'-' | b'0'..=b'9') {
            return self.unexpected(b, "a non-negative integer");
        }
        let (s, n, float) = self.number_token()?;
        match (float, parse_int(&self.input.buf[s..s + n])) {
            (false, Some(Int::U(u))) => Ok(u),
            (false, Some(Int::I(0))) => Ok(0),
            _ => Input::<R>::bad_at(at, "expected a non-negative 64-bit integer"),
        }
    }

    fn number(&mut self) -> Res<f64> {
        let at = self.input.offset();
        let b = self.peek_token()?;
        if !matches!(b, b'-' | b'0'..=b'9') {
            return self.unexpected(b, "a number");
        }
        let (s, n, _) = self.number_token()?;
        let f = parse_float(&self.input.buf[s..s + n]);
        if f.is_finite() {
            Ok(f)
        } else {
            Input::<R>::bad_at(at, "number out of range")
        }
    }

    fn null(&mut self) -> Res<bool> {
        if self.peek_token()? == b'n' {
            self.literal(b"null")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn key(&mut self) -> Res<Key> {
        let at = self.input.offset();
        match self.peek_token()? {
            b'"' => {
                let mut s = String::new();
                self.string(&mut s)?;
                Ok(Key::from(s))
            }
            b'-' | b'0'..=b'9' => {
                let (s, n, float) = self.number_token()?;
                let tok = &self.input.buf[s..s + n];
                match (float, parse_int(tok)) {
                    (true, _) => Input::<R>::bad_at(
                        at,
                        "a float cannot be a primary key; keys are integers or strings",
                    ),
                    (false, Some(Int::I(i))) => Ok(Key::Int(i)),
                    (false, Some(Int::U(u))) => match i64::try_from(u) {
                        Ok(i) => Ok(Key::Int(i)),
                        Err(_) => Input::<R>::bad_at(
                            at,
                            format!("key {u} does not fit a signed 64-bit key"),
                        ),
                    },
                    (false, None) => Input::<R>::bad_at(at, out_of_range(tok)),
                }
            }
            b => {
                let what = match b {
                    b't' | b'f' => "a boolean",
                    b'n' => "null",
                    b'[' => "an array",
                    b'{' => "an object",
                    _ => return self.unexpected(b, "a primary key"),
                };
                Input::<R>::bad_at(
                    at,
                    format!("{what} cannot be a primary key; keys are integers or strings"),
                )
            }
        }
    }

    fn record(&mut self, out: &mut Vec<u8>) -> Res<()> {
        let b = self.peek_token()?;
        if b != b'{' {
            return self.unexpected(b, "a record (an object)");
        }
        self.object_to(out, 0, MAX_DEPTH)
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Res<()> {
        self.value_to(out, 0, MAX_DEPTH)
    }

    fn skip(&mut self) -> Res<()> {
        let mut sink = std::mem::take(&mut self.scratch);
        sink.clear();
        let r = self.value_to(&mut sink, 0, SKIP_DEPTH);
        sink.clear();
        self.scratch = sink;
        r
    }

    fn digest_to(&mut self, entry: u64) -> Res<u64> {
        self.input.digest_to(entry)
    }

    fn end(&mut self, exact: bool) -> Res<()> {
        if !exact {
            while let Some(b) = self.input.peek()? {
                if !is_ws(b) {
                    break;
                }
                self.input.pos += 1;
            }
        }
        match self.input.peek()? {
            None => Ok(()),
            Some(_) => self
                .input
                .bad("trailing data after the end of the document"),
        }
    }
}

/// Writes JSON tokens into a buffer.
pub(crate) struct JsonWriter {
    buf: Vec<u8>,
    /// Open containers: (is an array, next item is the first).
    stack: Vec<(bool, bool)>,
}

impl JsonWriter {
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        JsonWriter {
            buf,
            stack: Vec::new(),
        }
    }

    /// A comma before every array element but the first.
    #[inline]
    fn element(&mut self) {
        if let Some((true, first)) = self.stack.last_mut() {
            if !*first {
                self.buf.push(b',');
            }
            *first = false;
        }
    }
}

impl DocWriter for JsonWriter {
    fn begin_map(&mut self, _n: usize) {
        self.element();
        self.buf.push(b'{');
        self.stack.push((false, true));
    }

    fn key(&mut self, k: &str) {
        if let Some((_, first)) = self.stack.last_mut() {
            if !*first {
                self.buf.push(b',');
            }
            *first = false;
        }
        write_str(&mut self.buf, k);
        self.buf.push(b':');
    }

    fn end_map(&mut self) {
        self.stack.pop();
        self.buf.push(b'}');
    }

    fn begin_array(&mut self, _n: usize) {
        self.element();
        self.buf.push(b'[');
        self.stack.push((true, true));
    }

    fn end_array(&mut self) {
        self.stack.pop();
        self.buf.push(b']');
    }

    fn string(&mut self, s: &str) {
        self.element();
        write_str(&mut self.buf, s);
    }

    fn uint(&mut self, v: u64) {
        self.element();
        write_uint(&mut self.buf, v);
    }

    fn float(&mut self, v: f64) {
        self.element();
        write_f64(&mut self.buf, v);
    }

    fn null(&mut self) {
        self.element();
        self.buf.extend_from_slice(b"null");
    }

    fn key_value(&mut self, k: &Key) {
        self.element();
        write_key(&mut self.buf, k);
    }

    fn record(&mut self, rec: &Record) {
        // One record per line, as the original's readers and line tools like.
        if let Some((true, first)) = self.stack.last_mut() {
            self.buf
                .extend_from_slice(if *first { b"\n" } else { b",\n" });
            *first = false;
        }
        // Stored records always transcode; a failure would be a bug, and
        // the checksum of the result would still describe what was written.
        let _ = write_record(&mut self.buf, rec.as_msgpack());
    }

    fn segment(
        &self,
        records: &mut dyn Iterator<Item = &Record>,
        count: usize,
        first: bool,
    ) -> Vec<u8> {
        // Sized from the first record (its text is about 1.4 times its
        // stored bytes), so the buffer is not grown and copied three or
        // four times on the way to a segment's few megabytes.
        let mut records = records.peekable();
        let per = records.peek().map_or(0, |r| r.encoded_len() * 3 / 2 + 2);
        let mut out = Vec::with_capacity(
            count
                .saturating_mul(per)
                .clamp(super::checksum::CHUNK, SEGMENT_BUFFER_MAX),
        );
        let mut first = first;
        for rec in records {
            out.extend_from_slice(if first { b"\n" } else { b",\n" });
            first = false;
            let _ = write_record(&mut out, rec.as_msgpack());
        }
        out
    }

    fn parallel_pays(&self) -> bool {
        true
    }

    fn elements_written(&mut self) {
        if let Some((true, first)) = self.stack.last_mut() {
            *first = false;
        }
    }

    fn json(&mut self, v: &Value) {
        self.element();
        // Serialising a `Value` into a vector cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn checksum_entry(&mut self, value: &str) {
        self.key("checksum");
        write_str(&mut self.buf, value);
        self.end_map();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A float where a key or a count is expected is an error, never an
    /// arithmetic overflow (a debug build panicked on `1.5` as a delete).
    #[test]
    fn parse_int_refuses_float_tokens() {
        for t in ["1.5", "-2.5e3", "1e5", "0.0"] {
            assert!(parse_int(t.as_bytes()).is_none(), "{t}");
        }
        assert!(matches!(parse_int(b"-7"), Some(Int::I(-7))));
        let mut r = JsonReader::new(&b"1.5"[..]);
        assert!(r.key().is_err());
        let mut r = JsonReader::new(&b"2.5"[..]);
        assert!(r.uint().is_err());
    }

    fn transcode(text: &str) -> Result<Vec<u8>, String> {
        let mut r = JsonReader::new(text.as_bytes());
        let mut out = Vec::new();
        r.record(&mut out).map_err(|e| e.to_string())?;
        r.end(false).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn text(text: &str) -> String {
        Record::from_validated(&transcode(text).unwrap()).to_json_string()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// The one-pass number path and the general number path agree on
        /// every token: same bytes, or the fast path declines.
        #[test]
        fn fast_integers_agree_with_the_general_path(
            tok in "-?[0-9]{0,22}[.eE+-]?[0-9]{0,17}[eE]?[0-9]{0,2}",
            end in proptest::sample::select(vec![",", "}", " ", "]", ""]),
        ) {
            let text = format!("{tok}{end}");
            let mut fast = JsonReader::new(text.as_bytes());
            fast.input.fill(text.len()).unwrap();
            let mut fast_out = Vec::new();
            let took = fast.number_fast(&mut fast_out);
            let mut general = JsonReader::new(text.as_bytes());
            let mut general_out = Vec::new();
            let general_result = general.number_general(&mut general_out);
            if took {
                proptest::prop_assert!(general_result.is_ok(), "{text}");
                proptest::prop_assert_eq!(&fast_out, &general_out, "{}", text);
                proptest::prop_assert_eq!(fast.input.pos, general.input.pos, "{}", text);
            } else {
                proptest::prop_assert!(fast_out.is_empty());
                proptest::prop_assert_eq!(fast.input.pos, 0);
            }
        }
    }

    #[test]
    fn transcodes_exactly() {
        assert_eq!(
            text(
                r#" {"b": 1, "a": [1, -2, 2.5, "s", null, true, false, {}], "c": -0.0, "d": 1e300} "#
            ),
            r#"{"b":1,"a":[1,-2,2.5,"s",null,true,false,{}],"c":-0.0,"d":1e+300}"#
        );
        assert_eq!(
            text(r#"{"u": 18446744073709551615, "i": -9223372036854775808, "z": -0}"#),
            r#"{"u":18446744073709551615,"i":-9223372036854775808,"z":0}"#
        );
        assert_eq!(
            text(r#"{"e": "\u00e9\ud83c\udf89\n\"\\\/\t"}"#),
            "{\"e\":\"é🎉\\n\\\"\\\\/\\t\"}"
        );
        let many: String = (0..40)
            .map(|i| format!("\"f{i}\": [{i}]"))
            .collect::<Vec<_>>()
            .join(",");
        let r = Record::from_validated(&transcode(&format!("{{{many}}}")).unwrap());
        assert_eq!(r.get("f39"), Some(serde_json::json!([39])));
    }

    #[test]
    fn refuses_what_cannot_be_kept() {
        for (bad, why) in [
            (r#"{"a": 1, "a": 2}"#, "duplicate field"),
            (r#"{"a": 18446744073709551616}"#, "64-bit range"),
            (r#"{"a": -9223372036854775809}"#, "64-bit range"),
            (r#"{"a": NaN}"#, "NaN"),
            (r#"{"a": -Infinity}"#, "NaN and Infinity"),
            (r#"{"a": 1e400}"#, "range"),
            (r#"{"a": "\ud800"}"#, "lone surrogate"),
            (r#"{"a": "\udc00x"}"#, "lone surrogate"),
            ("{\"a\": \"x\ny\"}", "control character"),
            (r#"{"a": 01}"#, "invalid number"),
            (r#"{"a": 1.}"#, "invalid number"),
            (r#"{"a": tru}"#, "invalid literal"),
            (r#"{"a": [1, 2}"#, "expected"),
            (r#"{"a": 1"#, "end of file"),
            (r#"[1]"#, "record"),
            (r#"{"a": 1} x"#, "trailing"),
        ] {
            let err = transcode(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let many: String = (0..100)
            .map(|i| format!("\"f{i}\": {i}"))
            .collect::<Vec<_>>()
            .join(",");
        let err = transcode(&format!("{{{many}, \"f7\": 0}}")).unwrap_err();
        assert!(err.contains("duplicate field \"f7\""), "{err}");
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(transcode(&deep).unwrap_err().contains("nested"));
        let ok = format!("{{\"a\": {}1{}}}", "[".repeat(99), "]".repeat(99));
        assert!(transcode(&ok).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn scan_plain_finds_what_a_byte_loop_finds(bytes in proptest::collection::vec(
            proptest::prop_oneof![proptest::num::u8::ANY, proptest::strategy::Just(b'"'),
                proptest::strategy::Just(b'\\'), 0x20u8..0x7f], 0..40)) {
            let naive = bytes.iter().position(|&b| needs_escape(b)).unwrap_or(bytes.len());
            let (len, ascii) = scan_plain(&bytes);
            proptest::prop_assert_eq!(len, naive);
            proptest::prop_assert_eq!(ascii, bytes[..naive].iter().all(|&b| b < 0x80));
        }
    }

    #[test]
    fn bad_utf8_is_refused() {
        let mut r = JsonReader::new(&b"{\"a\": \"\xff\"}"[..]);
        assert!(r
            .record(&mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("UTF-8"));
    }

    #[test]
    fn many_fields_check_duplicates_in_linear_time() {
        // 100k distinct fields: a quadratic check would take minutes.
        let many: String = (0..100_000)
            .map(|i| format!("\"f{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let out = transcode(&format!("{{{many}}}")).unwrap();
        assert!(out.len() > 100_000);
    }
}
