//! The codec: bytes to and from the two neutral types, a [`Snapshot`] (full
//! backups, saves) and a [`crate::ChangeSet`] (deltas), each with the
//! metadata its file carries. One reader serves load, `apply_delta`,
//! restore, verify, inspect and list, for both formats; one writer hashes as
//! it writes.
//!
//! Layers, each using only the ones below it:
//!
//! - [`input`]: buffered, hashing byte input from any `io::Read` (files are
//!   streamed, never read whole);
//! - [`syntax`]: what a format must do (read and write tokens), with the two
//!   implementations [`json`] and [`msgpack`];
//! - [`meta`]: the `dictdb` section;
//! - [`document`]: the grammar of a document, once for both formats and
//!   both directions, and the checksum rules;
//! - [`build`]: indexing decoded records into the neutral types;
//! - [`transform`]: zstd compression and age encryption, as streams between
//!   the codec and the store (the checksum covers the plaintext document).
//!
//! The document layout and its rules are in [`document`]'s documentation and
//! in the README's "Files" section.

pub(crate) mod build;
mod checksum;
pub(crate) mod document;
pub(crate) mod input;
pub(crate) mod json;
pub(crate) mod meta;
pub(crate) mod msgpack;
mod parallel;
pub(crate) mod syntax;
pub(crate) mod transform;

use std::fmt;
use std::io::Read;
use std::str::FromStr;

pub(crate) use checksum::ChunkWriter;
pub use checksum::Integrity;
pub(crate) use document::{Body, Decoded, DeltaFeed, Doc, Header, Link, Outcome, Want, Written};
pub use transform::Compression;
pub(crate) use transform::{Keys, Layers, Sealing};

use crate::db::Snapshot;
use crate::error::{Error, Result};
use input::Fault;
use json::{JsonReader, JsonWriter};
use msgpack::{MsgpackReader, MsgpackWriter};

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

/// Turns a reader's fault into the crate's error, naming `file`.
fn error(fault: Fault, file: &str) -> Error {
    match fault {
        Fault::Io(e) => {
            // A store's own error travels inside the io::Error unchanged.
            if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                if let Some(inner) = e.into_inner() {
                    if let Ok(err) = inner.downcast::<Error>() {
                        return *err;
                    }
                }
                return Error::corrupt(file, "read error");
            }
            Error::io(file, e)
        }
        Fault::Checksum { recorded, computed } => Error::ChecksumMismatch {
            file: file.to_string(),
            recorded,
            computed,
        },
        f @ (Fault::Bad { .. } | Fault::Eof { .. }) => Error::corrupt(file, f),
    }
}

/// The kind `file`'s name (its last path segment) says, if it is named
/// like a backup.
fn named_kind(file: &str) -> Option<crate::naming::BackupKind> {
    let name = file.rsplit(['/', '\\']).next().unwrap_or(file);
    crate::naming::BackupName::parse(name).map(|n| n.kind)
}

/// Decodes a whole file (streamed from `read`): checks its checksum and
/// every rule of the document, and builds its body. `file` names it in
/// errors. A large full backup is indexed on a second thread when
/// `pipeline` is set.
pub(crate) fn decode<R: Read>(
    read: R,
    format: FileFormat,
    file: &str,
    pipeline: bool,
) -> Result<Decoded> {
    decode_fed(read, format, file, pipeline, None)
}

/// [`decode`], handing a delta's upserts to `feed` as they are read.
pub(crate) fn decode_fed<R: Read>(
    read: R,
    format: FileFormat,
    file: &str,
    pipeline: bool,
    feed: Option<&mut dyn DeltaFeed>,
) -> Result<Decoded> {
    let want = Want::Body { pipeline };
    let named = named_kind(file);
    let outcome = match format {
        FileFormat::Json => document::decode(&mut JsonReader::new(read), want, feed, named),
        FileFormat::MessagePack => {
            document::decode(&mut MsgpackReader::new(read), want, feed, named)
        }
    };
    match outcome.map_err(|f| error(f, file))? {
        Outcome::Whole(d) => Ok(d),
        Outcome::Header(_) => Err(Error::corrupt(file, "the document ends after its header")),
    }
}

/// Decodes a full backup (or a save) into a snapshot.
pub(crate) fn decode_full<R: Read>(
    read: R,
    format: FileFormat,
    file: &str,
    pipeline: bool,
) -> Result<(Header, Integrity, Snapshot)> {
    let d = decode(read, format, file, pipeline)?;
    match d.body {
        Body::Full(s) => Ok((d.header, d.integrity, s)),
        Body::Delta(_) => Err(Error::corrupt(
            file,
            "this is a delta, not a full backup (apply it with apply_delta)",
        )),
    }
}

/// Reads only the header of a file from its first bytes (`prefix`; the
/// whole file when `complete`): `Ok(None)` when the prefix ends before the
/// header does and more of the file exists. The checksum is not checked.
pub(crate) fn decode_header(
    prefix: &[u8],
    complete: bool,
    format: FileFormat,
    file: &str,
) -> Result<Option<Header>> {
    let named = named_kind(file);
    let outcome = match format {
        FileFormat::Json => {
            document::decode(&mut JsonReader::new(prefix), Want::Header, None, named)
        }
        FileFormat::MessagePack => {
            document::decode(&mut MsgpackReader::new(prefix), Want::Header, None, named)
        }
    };
    match outcome {
        Ok(Outcome::Header(h)) => Ok(Some(h)),
        Ok(Outcome::Whole(d)) => Ok(Some(d.header)),
        Err(Fault::Eof { .. }) if !complete => Ok(None),
        Err(f) => Err(error(f, file)),
    }
}

/// Writes `doc` in `format`, handing chunks to `emit` as they fill. A JSON
/// full backup's records are written on two cores while `idle()` says the
/// other core is free (see [`parallel`]); `None`: one core.
pub(crate) fn encode(
    format: FileFormat,
    doc: &Doc<'_>,
    emit: &mut dyn FnMut(Vec<u8>) -> Result<()>,
    idle: Option<&(dyn Fn() -> bool + Sync)>,
) -> Result<Written> {
    let mut out = ChunkWriter::new(emit);
    let buf = ChunkWriter::<&mut dyn FnMut(Vec<u8>) -> Result<()>>::buffer();
    match format {
        FileFormat::Json => document::encode(JsonWriter::new(buf), &mut out, doc, idle),
        FileFormat::MessagePack => document::encode(MsgpackWriter::new(buf), &mut out, doc, idle),
    }
}

/// The format of a file from its extension (under any `.zst` and `.age`).
pub(crate) fn format_of_path(path: &std::path::Path) -> Result<FileFormat> {
    let (_, ext) = Layers::of_path(path);
    let ext = ext.as_str();
    match FileFormat::from_extension(ext) {
        Some(f) => Ok(f),
        None => Err(match ext.parse::<FileFormat>() {
            Err(e) => Error::corrupt(path.display(), e),
            Ok(_) => Error::corrupt(path.display(), "unknown file extension"),
        }),
    }
}
