//! Reading MessagePack: item headers (shared with the codec's streaming
//! reader) and a cursor over trusted, stored record bytes.

use rmp::Marker;
use serde_json::{Map, Number, Value};

use super::{RecordError, MAX_DEPTH};
use crate::key::Key;

/// One MessagePack item header; a string's bytes follow it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Head {
    Nil,
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    /// A string of this many bytes.
    Str(usize),
    Array(usize),
    Map(usize),
}

impl Head {
    /// What the item is, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Head::Nil => "null",
            Head::Bool(_) => "a boolean",
            Head::Uint(_) | Head::Int(_) => "an integer",
            Head::Float(_) => "a float",
            Head::Str(_) => "a string",
            Head::Array(_) => "an array",
            Head::Map(_) => "a map",
        }
    }
}

/// Where headers are read from: a slice, or the codec's buffered input.
pub(crate) trait Source {
    /// What reading fails with.
    type Error;
    /// Offset of the next byte, for messages.
    fn pos(&self) -> u64;
    /// The next byte.
    fn byte(&mut self) -> Result<u8, Self::Error>;
    /// The next `N` bytes.
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Self::Error>;
    /// The error for a marker that is not a JSON value.
    fn not_json(&self, what: &'static str, at: u64) -> Self::Error;
}

/// Reads one item header. Binary data, extension types and the reserved
/// marker are not JSON values and are refused.
#[inline]
pub(crate) fn read_head<S: Source>(s: &mut S) -> Result<Head, S::Error> {
    let at = s.pos();
    let m = s.byte()?;
    Ok(match Marker::from_u8(m) {
        Marker::FixPos(v) => Head::Uint(u64::from(v)),
        Marker::FixNeg(v) => Head::Int(i64::from(v)),
        Marker::FixMap(n) => Head::Map(usize::from(n)),
        Marker::FixArray(n) => Head::Array(usize::from(n)),
        Marker::FixStr(n) => Head::Str(usize::from(n)),
        Marker::Null => Head::Nil,
        Marker::False => Head::Bool(false),
        Marker::True => Head::Bool(true),
        Marker::F32 => Head::Float(f64::from(f32::from_be_bytes(s.bytes()?))),
        Marker::F64 => Head::Float(f64::from_be_bytes(s.bytes()?)),
        Marker::U8 => Head::Uint(u64::from(s.byte()?)),
        Marker::U16 => Head::Uint(u64::from(u16::from_be_bytes(s.bytes()?))),
        Marker::U32 => Head::Uint(u64::from(u32::from_be_bytes(s.bytes()?))),
        Marker::U64 => Head::Uint(u64::from_be_bytes(s.bytes()?)),
        Marker::I8 => Head::Int(i64::from(s.byte()? as i8)),
        Marker::I16 => Head::Int(i64::from(i16::from_be_bytes(s.bytes()?))),
        Marker::I32 => Head::Int(i64::from(i32::from_be_bytes(s.bytes()?))),
        Marker::I64 => Head::Int(i64::from_be_bytes(s.bytes()?)),
        Marker::Str8 => Head::Str(usize::from(s.byte()?)),
        Marker::Str16 => Head::Str(usize::from(u16::from_be_bytes(s.bytes()?))),
        Marker::Str32 => Head::Str(u32::from_be_bytes(s.bytes()?) as usize),
        Marker::Array16 => Head::Array(usize::from(u16::from_be_bytes(s.bytes()?))),
        Marker::Array32 => Head::Array(u32::from_be_bytes(s.bytes()?) as usize),
        Marker::Map16 => Head::Map(usize::from(u16::from_be_bytes(s.bytes()?))),
        Marker::Map32 => Head::Map(u32::from_be_bytes(s.bytes()?) as usize),
        Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => return Err(s.not_json("binary data", at)),
        Marker::Reserved => return Err(s.not_json("the reserved marker 0xc1", at)),
        _ => return Err(s.not_json("an extension type", at)),
    })
}

/// A cursor over stored record bytes.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pub(crate) pos: usize,
}

/// One item of a stored record, strings borrowed.
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

impl Source for Reader<'_> {
    type Error = RecordError;

    fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn not_json(&self, what: &'static str, at: u64) -> RecordError {
        RecordError::NotJson { what, at }
    }

    #[inline]
    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self.buf.get(self.pos).ok_or(RecordError::Truncated {
            at: self.pos as u64,
        })?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(RecordError::Truncated {
                at: self.pos as u64,
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next item; a string's raw bytes (not checked for UTF-8: stored
    /// records were checked when they were made).
    ///
    /// The one-byte forms that make up most of a record (short strings,
    /// small integers, small containers, `nil` and booleans) are read here
    /// directly; every other marker, and anything cut short, goes through
    /// [`read_head`], which gives the same answer (a property test holds
    /// the two together).
    #[inline(always)]
    pub(crate) fn raw(&mut self) -> Result<(Head, &'a [u8]), RecordError> {
        if let Some(&m) = self.buf.get(self.pos) {
            let head = match m {
                0x00..=0x7f => Head::Uint(u64::from(m)),
                0x80..=0x8f => Head::Map(usize::from(m & 0x0f)),
                0x90..=0x9f => Head::Array(usize::from(m & 0x0f)),
                0xa0..=0xbf => {
                    return match self.fixstr() {
                        Some(bytes) => Ok((Head::Str(bytes.len()), bytes)),
                        None => self.raw_general(),
                    };
                }
                0xc0 => Head::Nil,
                0xc2 => Head::Bool(false),
                0xc3 => Head::Bool(true),
                0xe0..=0xff => Head::Int(i64::from(m as i8)),
                // Fixed-width numbers: ids past 127 and every float.
                0xcb => return self.fixed(|b| Head::Float(f64::from_be_bytes(b))),
                0xcc => return self.fixed(|[b]: [u8; 1]| Head::Uint(u64::from(b))),
                0xcd => return self.fixed(|b| Head::Uint(u64::from(u16::from_be_bytes(b)))),
                0xce => return self.fixed(|b| Head::Uint(u64::from(u32::from_be_bytes(b)))),
                _ => return self.raw_general(),
            };
            self.pos += 1;
            return Ok((head, &[]));
        }
        self.raw_general()
    }

    /// The next marker byte, not consumed.
    #[inline(always)]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// The bytes of the next item if it is a string of at most 31 bytes
    /// (one marker byte), consumed; `None`, consuming nothing, otherwise.
    #[inline(always)]
    pub(crate) fn fixstr(&mut self) -> Option<&'a [u8]> {
        let m = *self.buf.get(self.pos)?;
        if !(0xa0..=0xbf).contains(&m) {
            return None;
        }
        let start = self.pos + 1;
        let end = start + usize::from(m & 0x1f);
        let bytes = self.buf.get(start..end)?;
        self.pos = end;
        Some(bytes)
    }

    /// The `N` bytes of the record from `start`, if it holds that many: a
    /// short string copied in one fixed-size move (the bytes past its end
    /// are dropped again).
    #[inline]
    pub(crate) fn window<const N: usize>(&self, start: usize) -> Option<&'a [u8; N]> {
        self.buf.get(start..start.checked_add(N)?)?.try_into().ok()
    }

    /// The item at `pos` whose marker is followed by `N` bytes of payload,
    /// made by `head`; through [`read_head`] if the buffer ends first.
    #[inline]
    fn fixed<const N: usize>(
        &mut self,
        head: impl FnOnce([u8; N]) -> Head,
    ) -> Result<(Head, &'a [u8]), RecordError> {
        let start = self.pos + 1;
        match self
            .buf
            .get(start..start + N)
            .and_then(|b| b.try_into().ok())
        {
            Some(payload) => {
                self.pos = start + N;
                Ok((head(payload), &[]))
            }
            None => self.raw_general(),
        }
    }

    /// [`raw`](Self::raw) for any marker, through [`read_head`].
    fn raw_general(&mut self) -> Result<(Head, &'a [u8]), RecordError> {
        let head = read_head(self)?;
        let bytes = match head {
            Head::Str(n) => self.take(n)?,
            _ => &[],
        };
        Ok((head, bytes))
    }

    /// The next item, strings checked for UTF-8.
    pub(crate) fn tok(&mut self) -> Result<Tok<'a>, RecordError> {
        let at = self.pos;
        let (head, bytes) = self.raw()?;
        Ok(match head {
            Head::Nil => Tok::Nil,
            Head::Bool(b) => Tok::Bool(b),
            Head::Uint(u) => Tok::Uint(u),
            Head::Int(i) => Tok::Int(i),
            Head::Float(f) => Tok::Float(f),
            Head::Str(_) => Tok::Str(
                std::str::from_utf8(bytes)
                    .map_err(|_| RecordError::InvalidUtf8 { at: at as u64 })?,
            ),
            Head::Array(n) => Tok::Array(n),
            Head::Map(n) => Tok::Map(n),
        })
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, RecordError> {
        match self.tok()? {
            Tok::Str(s) => Ok(s),
            other => Err(RecordError::Expected {
                expected: "a string",
                found: tok_name(&other),
            }),
        }
    }

    /// Skips one complete value.
    pub(crate) fn skip(&mut self) -> Result<(), RecordError> {
        // Containers left to skip; iterative, so depth costs no stack.
        let mut left: usize = 1;
        while left > 0 {
            left -= 1;
            match self.raw()?.0 {
                Head::Array(n) => left = left.saturating_add(n),
                Head::Map(n) => left = left.saturating_add(n.saturating_mul(2)),
                _ => {}
            }
        }
        Ok(())
    }
}

pub(crate) fn tok_name(t: &Tok<'_>) -> &'static str {
    match t {
        Tok::Nil => "null",
        Tok::Bool(_) => "a boolean",
        Tok::Uint(_) | Tok::Int(_) => "an integer",
        Tok::Float(_) => "a float",
        Tok::Str(_) => "a string",
        Tok::Array(_) => "an array",
        Tok::Map(_) => "a map",
    }
}

/// Decodes stored bytes into a JSON value.
pub(crate) fn to_value(bytes: &[u8]) -> Result<Value, RecordError> {
    decode_value(&mut Reader::new(bytes), 0)
}

fn decode_value(r: &mut Reader<'_>, depth: usize) -> Result<Value, RecordError> {
    if depth > MAX_DEPTH {
        return Err(RecordError::TooDeep);
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

/// One field of stored record bytes, decoded.
pub(crate) fn field(bytes: &[u8], name: &str) -> Option<Value> {
    let mut r = Reader::new(bytes);
    let Ok(Tok::Map(n)) = r.tok() else {
        return None;
    };
    for _ in 0..n {
        let k = r.str().ok()?;
        if k == name {
            return decode_value(&mut r, 1).ok();
        }
        r.skip().ok()?;
    }
    None
}

/// Reads the key field `field` of an encoded record: `None` when absent.
pub(crate) fn extract_key(rec: &[u8], field: &str) -> Result<Option<Key>, RecordError> {
    let mut r = Reader::new(rec);
    let n = match r.tok()? {
        Tok::Map(n) => n,
        other => {
            return Err(RecordError::Expected {
                expected: "an object",
                found: tok_name(&other),
            })
        }
    };
    let bad = |reason: String| RecordError::BadKey {
        field: field.to_string(),
        reason,
    };
    for _ in 0..n {
        // Field names are compared as bytes: stored records are UTF-8.
        let (head, k) = r.raw()?;
        if !matches!(head, Head::Str(_)) {
            return Err(RecordError::Expected {
                expected: "a field name",
                found: head.name(),
            });
        }
        if k == field.as_bytes() {
            return match r.tok()? {
                Tok::Uint(u) => i64::try_from(u)
                    .map(|i| Some(Key::Int(i)))
                    .map_err(|_| bad(format!("{u} does not fit a signed 64-bit key"))),
                Tok::Int(i) => Ok(Some(Key::Int(i))),
                Tok::Str(s) => Ok(Some(Key::from(s))),
                other => Err(bad(format!(
                    "{} cannot be a key; keys are integers or strings",
                    tok_name(&other)
                ))),
            };
        }
        r.skip()?;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// The one-byte fast path of `raw` and the general reader agree on
        /// any bytes: same item, same string bytes, same position, or the
        /// same error.
        #[test]
        fn raw_fast_path_agrees_with_read_head(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..48)) {
            let mut fast = super::Reader::new(&bytes);
            let mut general = super::Reader::new(&bytes);
            for _ in 0..12 {
                let a = fast.raw();
                let b = general.raw_general();
                proptest::prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
                proptest::prop_assert_eq!(fast.pos, general.pos);
                if a.is_err() {
                    break;
                }
            }
        }
    }

    use super::*;

    #[test]
    fn keys_are_integers_or_strings() {
        let rec = |v: &[u8]| {
            let mut b = vec![0x81, 0xa2, b'i', b'd'];
            b.extend_from_slice(v);
            b
        };
        assert_eq!(extract_key(&rec(&[0x05]), "id"), Ok(Some(Key::Int(5))));
        assert_eq!(
            extract_key(&rec(&[0xa1, b'x']), "id"),
            Ok(Some(Key::from("x")))
        );
        assert_eq!(extract_key(&rec(&[0x05]), "other"), Ok(None));
        for bad in [
            &[0xc3][..],                                                 // true
            &[0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0][..],                   // 1.0
            &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], // u64::MAX
            &[0xc0][..],                                                 // nil
        ] {
            assert!(
                matches!(
                    extract_key(&rec(bad), "id"),
                    Err(RecordError::BadKey { .. })
                ),
                "{bad:x?}"
            );
        }
    }

    #[test]
    fn non_json_markers_are_refused() {
        for bad in [&[0xc4, 0x00][..], &[0xc1][..], &[0xd4, 0, 0][..]] {
            assert!(matches!(
                read_head(&mut Reader::new(bad)),
                Err(RecordError::NotJson { .. })
            ));
        }
        assert!(matches!(
            Reader::new(&[0xa5, b'a']).raw(),
            Err(RecordError::Truncated { .. })
        ));
    }
}
