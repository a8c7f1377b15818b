//! MessagePack tokens: a streaming reader that validates records and copies
//! their bytes, and a writer that copies stored records as they are.

use std::collections::HashSet;
use std::io::Read;

use serde_json::Value;

use super::input::{Fault, Input, Res};
use super::syntax::{DocReader, DocWriter};
use crate::key::Key;
use crate::record::decode::{read_head, Head, Source};
use crate::record::encode::{
    encode_value, put_array_len, put_f64, put_key, put_map_len, put_nil, put_str, put_uint,
};
use crate::record::{Record, MAX_DEPTH};

/// Deepest nesting of a value the reader skips or reads outside records.
const SKIP_DEPTH: usize = 128;

/// Maps with more entries than this check duplicate keys with a hash set.
const LINEAR_FIELDS: usize = 16;

impl<R: Read> Source for Input<R> {
    type Error = Fault;

    fn pos(&self) -> u64 {
        self.offset()
    }

    #[inline]
    fn byte(&mut self) -> Res<u8> {
        Input::byte(self)
    }

    #[inline]
    fn bytes<const N: usize>(&mut self) -> Res<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn not_json(&self, what: &'static str, at: u64) -> Fault {
        Fault::Bad {
            at,
            reason: format!("{what} is not a JSON value"),
        }
    }
}

/// Reads MessagePack tokens from a stream.
pub(crate) struct MsgpackReader<R> {
    input: Input<R>,
    /// Open containers: items left.
    left: Vec<usize>,
    entry: u64,
    /// Absolute offsets of the keys of each open map, by depth, reused.
    names: Vec<Vec<(u64, u64)>>,
}

impl<R: Read> MsgpackReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        MsgpackReader {
            input: Input::new(inner),
            left: Vec::new(),
            entry: 0,
            names: Vec::new(),
        }
    }

    fn head(&mut self) -> Res<Head> {
        read_head(&mut self.input)
    }

    fn expected<T>(&self, at: u64, what: &str, found: Head) -> Res<T> {
        Input::<R>::bad_at(at, format!("expected {what}, found {}", found.name()))
    }

    /// The bytes of a string whose header was read, checked for UTF-8.
    fn str_bytes(&mut self, n: usize, at: u64) -> Res<&str> {
        let s = self.input.take(n)?;
        std::str::from_utf8(s).or_else(|_| Input::<R>::bad_at(at, "invalid UTF-8 in a string"))
    }

    /// Validates the value at `depth` (a record's own map is at 0), leaving
    /// its bytes consumed. Every byte stays in the buffer while a mark is set.
    fn check_value(&mut self, depth: usize, limit: usize) -> Res<()> {
        if depth > limit {
            return self
                .input
                .bad(format!("nested more than {limit} levels deep"));
        }
        let at = self.input.offset();
        match self.head()? {
            Head::Str(n) => {
                self.str_bytes(n, at)?;
            }
            Head::Float(f) if !f.is_finite() => {
                return Input::<R>::bad_at(at, "NaN and Infinity are not JSON values");
            }
            Head::Array(n) => {
                for _ in 0..n {
                    self.check_value(depth + 1, limit)?;
                }
            }
            Head::Map(n) => self.check_map(n, depth, limit)?,
            _ => {}
        }
        Ok(())
    }

    fn check_map(&mut self, n: usize, depth: usize, limit: usize) -> Res<()> {
        if self.names.len() <= depth {
            self.names.resize_with(depth + 1, Vec::new);
        }
        let mut names = std::mem::take(&mut self.names[depth]);
        names.clear();
        let result = self.check_entries(n, depth, limit, &mut names);
        self.names[depth] = names;
        result
    }

    fn check_entries(
        &mut self,
        n: usize,
        depth: usize,
        limit: usize,
        names: &mut Vec<(u64, u64)>,
    ) -> Res<()> {
        for _ in 0..n {
            let at = self.input.offset();
            let len = match self.head()? {
                Head::Str(len) => len,
                other => {
                    return self.expected(at, "a field name (JSON object keys are strings)", other)
                }
            };
            let k0 = self.input.offset();
            self.str_bytes(len, at)?;
            let k1 = self.input.offset();
            if names.len() < LINEAR_FIELDS {
                let this = self.span(k0, k1);
                if names.iter().any(|&(a, b)| self.span(a, b) == this) {
                    return Input::<R>::bad_at(at, duplicate(this));
                }
            }
            names.push((k0, k1));
            self.check_value(depth + 1, limit)?;
        }
        if names.len() > LINEAR_FIELDS {
            let mut set: HashSet<&[u8]> = HashSet::with_capacity(names.len());
            for &(a, b) in names.iter() {
                let name = self.span(a, b);
                if !set.insert(name) {
                    return self.input.bad(duplicate(name));
                }
            }
        }
        Ok(())
    }

    /// The buffered bytes between two absolute offsets (inside the marked
    /// value being checked, so still in the buffer).
    fn span(&self, a: u64, b: u64) -> &[u8] {
        let base = self.input.offset() - self.input.pos as u64;
        &self.input.buf[(a - base) as usize..(b - base) as usize]
    }

    /// Validates the next value and appends its bytes to `out`.
    fn copy_value(&mut self, out: &mut Vec<u8>, limit: usize) -> Res<()> {
        self.input.set_mark();
        let checked = self.check_value(0, limit);
        let bytes = self.input.take_marked();
        checked?;
        out.extend_from_slice(bytes);
        Ok(())
    }
}

fn duplicate(name: &[u8]) -> String {
    format!("duplicate field {:?}", String::from_utf8_lossy(name))
}

impl<R: Read> DocReader for MsgpackReader<R> {
    fn offset(&self) -> u64 {
        self.input.offset()
    }

    fn begin_map(&mut self) -> Res<()> {
        let at = self.input.offset();
        match self.head()? {
            Head::Map(n) => {
                self.left.push(n);
                Ok(())
            }
            other => self.expected(at, "a map", other),
        }
    }

    fn next_key(&mut self, key: &mut String) -> Res<bool> {
        match self.left.last_mut() {
            Some(0) | None => {
                self.left.pop();
                return Ok(false);
            }
            Some(n) => *n -= 1,
        }
        self.entry = self.input.offset();
        self.string(key)?;
        Ok(true)
    }

    fn entry_start(&self) -> u64 {
        self.entry
    }

    fn begin_array(&mut self) -> Res<()> {
        let at = self.input.offset();
        match self.head()? {
            Head::Array(n) => {
                self.left.push(n);
                Ok(())
            }
            other => self.expected(at, "an array", other),
        }
    }

    fn next_element(&mut self) -> Res<bool> {
        match self.left.last_mut() {
            Some(0) | None => {
                self.left.pop();
                Ok(false)
            }
            Some(n) => {
                *n -= 1;
                Ok(true)
            }
        }
    }

    fn string(&mut self, out: &mut String) -> Res<()> {
        let at = self.input.offset();
        match self.head()? {
            Head::Str(n) => {
                let s = self.str_bytes(n, at)?;
                out.clear();
                out.push_str(s);
                Ok(())
            }
            other => self.expected(at, "a string", other),
        }
    }

    fn uint(&mut self) -> Res<u64> {
        let at = self.input.offset();
        match self.head()? {
            Head::Uint(u) => Ok(u),
            other => self.expected(at, "a non-negative integer", other),
        }
    }

    fn number(&mut self) -> Res<f64> {
        let at = self.input.offset();
        match self.head()? {
            Head::Float(f) if f.is_finite() => Ok(f),
            Head::Uint(u) => Ok(u as f64),
            Head::Int(i) => Ok(i as f64),
            other => self.expected(at, "a number", other),
        }
    }

    fn null(&mut self) -> Res<bool> {
        if self.input.peek()? == Some(0xc0) {
            self.input.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn key(&mut self) -> Res<Key> {
        let at = self.input.offset();
        match self.head()? {
            Head::Uint(u) => i64::try_from(u).map(Key::Int).or_else(|_| {
                Input::<R>::bad_at(at, format!("key {u} does not fit a signed 64-bit key"))
            }),
            Head::Int(i) => Ok(Key::Int(i)),
            Head::Str(n) => Ok(Key::from(self.str_bytes(n, at)?)),
            other => Input::<R>::bad_at(
                at,
                format!(
                    "{} cannot be a primary key; keys are integers or strings",
                    other.name()
                ),
            ),
        }
    }

    fn record(&mut self, out: &mut Vec<u8>) -> Res<()> {
        let at = self.input.offset();
        match self.input.peek()? {
            Some(0x80..=0x8f | 0xde | 0xdf) => self.copy_value(out, MAX_DEPTH),
            _ => {
                let found = self.head()?;
                self.expected(at, "a record (a map)", found)
            }
        }
    }

    fn value(&mut self, out: &mut Vec<u8>) -> Res<()> {
        self.copy_value(out, MAX_DEPTH)
    }

    fn skip(&mut self) -> Res<()> {
        self.input.set_mark();
        let r = self.check_value(0, SKIP_DEPTH);
        self.input.take_marked();
        r
    }

    fn digest_to(&mut self, entry: u64) -> Res<u64> {
        self.input.digest_to(entry)
    }

    fn end(&mut self, _exact: bool) -> Res<()> {
        if self.input.at_end()? {
            Ok(())
        } else {
            self.input
                .bad("trailing data after the end of the document")
        }
    }
}

/// Writes MessagePack tokens into a buffer.
pub(crate) struct MsgpackWriter {
    buf: Vec<u8>,
}

impl MsgpackWriter {
    pub(crate) fn new(buf: Vec<u8>) -> Self {
        MsgpackWriter { buf }
    }
}

impl DocWriter for MsgpackWriter {
    fn begin_map(&mut self, n: usize) {
        put_map_len(&mut self.buf, n);
    }

    fn key(&mut self, k: &str) {
        put_str(&mut self.buf, k);
    }

    fn end_map(&mut self) {}

    fn begin_array(&mut self, n: usize) {
        put_array_len(&mut self.buf, n);
    }

    fn end_array(&mut self) {}

    fn string(&mut self, s: &str) {
        put_str(&mut self.buf, s);
    }

    fn uint(&mut self, v: u64) {
        put_uint(&mut self.buf, v);
    }

    fn float(&mut self, v: f64) {
        put_f64(&mut self.buf, v);
    }

    fn null(&mut self) {
        put_nil(&mut self.buf);
    }

    fn key_value(&mut self, k: &Key) {
        put_key(&mut self.buf, k);
    }

    fn record(&mut self, rec: &Record) {
        self.buf.extend_from_slice(rec.as_msgpack());
    }

    fn segment(
        &self,
        records: &mut dyn Iterator<Item = &Record>,
        count: usize,
        _first: bool,
    ) -> Vec<u8> {
        let mut records = records.peekable();
        let per = records.peek().map_or(0, |r| r.encoded_len());
        let mut out = Vec::with_capacity(count.saturating_mul(per).min(16 << 20));
        for rec in records {
            out.extend_from_slice(rec.as_msgpack());
        }
        out
    }

    fn parallel_pays(&self) -> bool {
        false
    }

    fn elements_written(&mut self) {}

    fn json(&mut self, v: &Value) {
        encode_value(&mut self.buf, v);
    }

    fn buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn checksum_entry(&mut self, value: &str) {
        put_str(&mut self.buf, "checksum");
        put_str(&mut self.buf, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8]) -> Result<Vec<u8>, String> {
        let mut r = MsgpackReader::new(bytes);
        let mut out = Vec::new();
        r.record(&mut out).map_err(|e| e.to_string())?;
        r.end(true).map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn validation_rejects_what_json_cannot_hold() {
        for (bad, why) in [
            (vec![0x81, 0x01, 0x02], "field name"), // integer map key
            (vec![0x81, 0xa1, b'a', 0xc4, 0x00], "binary"), // binary value
            (
                vec![0x81, 0xa1, b'a', 0xcb, 0x7f, 0xf0, 0, 0, 0, 0, 0, 0],
                "NaN",
            ), // +inf
            (vec![0x82, 0xa1, b'a', 0x01, 0xa1, b'a', 0x02], "duplicate"), // duplicate field
            (vec![0x81, 0xa1, 0xff, 0x01], "UTF-8"), // bad UTF-8
            (vec![0x85, 0xa1, b'a'], "end of file"), // truncated
            (vec![0x91, 0x01], "record"),           // not an object
        ] {
            let err = check(&bad).unwrap_err();
            assert!(err.contains(why), "{bad:x?}: {err}");
        }
        let mut deep = vec![0x81, 0xa1, b'a'];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        deep.push(0x01);
        assert!(check(&deep).unwrap_err().contains("nested"));
        // 99 levels below the record, as insert accepts.
        let mut ok = vec![0x81, 0xa1, b'a'];
        ok.extend(std::iter::repeat_n(0x91, 99));
        ok.push(0x01);
        assert_eq!(check(&ok).unwrap(), ok);
    }

    #[test]
    fn many_keys_check_duplicates_with_a_set() {
        let mut rec = vec![0xde, 0x00, 40];
        for i in 0..40 {
            let k = format!("k{}", if i == 39 { 3 } else { i });
            put_str(&mut rec, &k);
            rec.push(0x01);
        }
        assert!(check(&rec).unwrap_err().contains("duplicate field \"k3\""));
    }
}
