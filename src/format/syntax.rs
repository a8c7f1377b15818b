//! The two things a format must know how to do: read and write the tokens of
//! a document.
//!
//! The document's grammar (which keys, in which order, what they hold) is
//! spelled once, in [`super::document`], over these traits; JSON and
//! MessagePack differ only in how tokens look. Records are the hot path and
//! have their own methods: a JSON reader transcodes a record object straight
//! into stored MessagePack, a MessagePack reader validates and copies it; a
//! JSON writer transcodes stored bytes to text, a MessagePack writer copies
//! them.

use serde_json::Value;

use super::input::Res;
use crate::key::Key;
use crate::record::Record;

/// Reading the tokens of a document, in order.
pub(crate) trait DocReader {
    /// Offset of the next byte.
    fn offset(&self) -> u64;

    /// Expects a map (object) and enters it.
    fn begin_map(&mut self) -> Res<()>;

    /// The next key of the innermost map, or `false` (and the map is left)
    /// when it has no more entries. Records where the entry began (see
    /// [`entry_start`](Self::entry_start)).
    fn next_key(&mut self, key: &mut String) -> Res<bool>;

    /// Where the entry of the last key read began: its separator in JSON
    /// (the comma), its first byte in MessagePack. The checksum covers every
    /// byte before the checksum entry.
    fn entry_start(&self) -> u64;

    /// Expects an array and enters it.
    fn begin_array(&mut self) -> Res<()>;

    /// Whether the innermost array has another element (`false`: the array
    /// is left).
    fn next_element(&mut self) -> Res<bool>;

    /// A string.
    fn string(&mut self, out: &mut String) -> Res<()>;

    /// A non-negative integer that fits 64 bits.
    fn uint(&mut self) -> Res<u64>;

    /// Any number, as a float.
    fn number(&mut self) -> Res<f64>;

    /// Consumes a null if one comes next.
    fn null(&mut self) -> Res<bool>;

    /// A primary key: an integer within `i64` or a string.
    fn key(&mut self) -> Res<Key>;

    /// A record: an object, checked (valid UTF-8, no duplicate field, finite
    /// numbers, integers within 64 bits, nesting within the limit) and
    /// appended to `out` as stored MessagePack.
    fn record(&mut self, out: &mut Vec<u8>) -> Res<()>;

    /// Any value, checked like a record's fields, appended to `out` as
    /// MessagePack (a table schema).
    fn value(&mut self, out: &mut Vec<u8>) -> Res<()>;

    /// Skips a value (checked the same way, nesting bounded).
    fn skip(&mut self) -> Res<()>;

    /// The hash of every byte before `entry` (see
    /// [`entry_start`](Self::entry_start)).
    fn digest_to(&mut self, entry: u64) -> Res<u64>;

    /// Expects the end of the input. `exact`: nothing may follow (files of
    /// ours end right after the document); otherwise trailing white space is
    /// allowed (JSON files written by other tools).
    fn end(&mut self, exact: bool) -> Res<()>;
}

/// Writing the tokens of a document. Counts are given up front (MessagePack
/// needs them; JSON ignores them).
pub(crate) trait DocWriter {
    /// Starts a map of `n` entries.
    fn begin_map(&mut self, n: usize);
    /// Writes the key of the next entry.
    fn key(&mut self, k: &str);
    /// Ends the innermost map.
    fn end_map(&mut self);
    /// Starts an array of `n` elements.
    fn begin_array(&mut self, n: usize);
    /// Ends the innermost array.
    fn end_array(&mut self);
    /// A string element or value.
    fn string(&mut self, s: &str);
    /// An unsigned integer.
    fn uint(&mut self, v: u64);
    /// A float.
    fn float(&mut self, v: f64);
    /// A null.
    fn null(&mut self);
    /// A primary key.
    fn key_value(&mut self, k: &Key);
    /// A record, as an array element.
    fn record(&mut self, rec: &Record);
    /// Records as consecutive array elements, into a buffer of their own
    /// (`first`: they start the array; `count`: about how many there are,
    /// to size the buffer). Stateless, so segments of one array can be
    /// written on several threads and handed on in order.
    fn segment(
        &self,
        records: &mut dyn Iterator<Item = &Record>,
        count: usize,
        first: bool,
    ) -> Vec<u8>;
    /// Whether writing records costs enough to spread over cores (JSON
    /// transcodes each record; MessagePack copies its bytes).
    fn parallel_pays(&self) -> bool;
    /// Notes that the innermost array got elements through
    /// [`segment`](Self::segment).
    fn elements_written(&mut self);
    /// Any JSON value (a table schema).
    fn json(&mut self, v: &Value);
    /// The bytes written so far, to be handed on and hashed.
    fn buf(&mut self) -> &mut Vec<u8>;
    /// The checksum entry, appended after every other entry of the top-level
    /// map, and the end of the document.
    fn checksum_entry(&mut self, value: &str);
}
