//! File formats: JSON (the Python original's layout) and MessagePack.
//!
//! # Documents
//!
//! A **full backup** (also what [`crate::DictDB::save`] writes) is
//!
//! ```json
//! {"dictdb": {...}, "tables": {"users": {"primary_key": "id", "schema": null,
//!   "records": [{"id": 1, "name": "Alice"}]}}, "checksum": "xxh3-64:..."}
//! ```
//!
//! and a **delta** is
//!
//! ```json
//! {"type": "delta", "timestamp": 1795682694.732616, "dictdb": {...},
//!  "tables": {"users": {"upserts": [...], "deletes": [2, 3]}}, "checksum": "xxh3-64:..."}
//! ```
//!
//! `dictdb` carries what restore needs to check a chain (sequence numbers,
//! the base backup, tables created and dropped, auto-key counters);
//! `checksum` is an XXH3-64 of every byte before it. The Python original's
//! `DictDB.load` and `apply_delta` ignore both keys, so JSON files written
//! here load there; files written by the original (no `dictdb`, no
//! `checksum`) load here and are reported as unverified.
//!
//! MessagePack files carry the same documents as maps with named fields.

mod checksum;
mod meta;
mod parse;
mod write;

use std::fmt;
use std::str::FromStr;

pub use checksum::Integrity;
pub(crate) use checksum::{verify_checksum, ChunkWriter};
pub(crate) use meta::{Meta, VERSION as META_VERSION};
pub(crate) use parse::{
    parse_document, parse_document_with, DocKind, Document, RecordSink, SinkMsg,
};
pub(crate) use write::{write_delta, write_full, DeltaTable};

use crate::error::Error;

/// The format of a backup or save file.
///
/// Parses from `"json"` and `"msgpack"` (also `"messagepack"`); `"pickle"`,
/// the Python original's binary format, is refused with an error that points
/// to MessagePack.
///
/// # Examples
///
/// ```
/// use dictdb::FileFormat;
///
/// assert_eq!("json".parse::<FileFormat>().unwrap(), FileFormat::Json);
/// assert_eq!("msgpack".parse::<FileFormat>().unwrap().extension(), "msgpack");
/// let err = "pickle".parse::<FileFormat>().unwrap_err();
/// assert!(err.to_string().contains("MessagePack"));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileFormat {
    /// JSON in the Python DictDB layout (the default).
    #[default]
    Json,
    /// MessagePack (rmp-serde compatible maps with named fields).
    MessagePack,
}

impl FileFormat {
    /// The file extension: `json` or `msgpack`.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Json => "json",
            FileFormat::MessagePack => "msgpack",
        }
    }

    /// The format of a file extension, if it is one of ours.
    pub fn from_extension(ext: &str) -> Option<FileFormat> {
        match ext {
            "json" => Some(FileFormat::Json),
            "msgpack" => Some(FileFormat::MessagePack),
            _ => None,
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.extension())
    }
}

impl FromStr for FileFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(FileFormat::Json),
            "msgpack" | "messagepack" => Ok(FileFormat::MessagePack),
            "pickle" | "pkl" => Err(Error::UnsupportedFormat {
                name: s.to_string(),
                hint: "pickle is Python-only; use \"msgpack\" (MessagePack) as the binary format, or \"json\"",
            }),
            _ => Err(Error::UnsupportedFormat {
                name: s.to_string(),
                hint: "use \"json\" or \"msgpack\"",
            }),
        }
    }
}
