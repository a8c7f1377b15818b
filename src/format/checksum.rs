//! Embedded checksums and the chunked, hashing writer.
//!
//! The checksum is the last entry of the top-level object and covers every
//! byte before it, so a file carries its own integrity proof (no sidecar to
//! lose or to fall out of step, on disk or in a bucket) and stays a plain
//! document for the Python original. XXH3-64 runs at memory speed, so it
//! adds next to nothing to a backup of hundreds of megabytes.

use xxhash_rust::xxh3::Xxh3;

use super::FileFormat;
use crate::error::{Error, Result};

const ALGO: &str = "xxh3-64:";
/// `,"checksum":"xxh3-64:` + 16 hex digits + `"}`
const JSON_PREFIX: &[u8] = b",\"checksum\":\"xxh3-64:";
const JSON_TRAILER_LEN: usize = JSON_PREFIX.len() + 16 + 2;
/// fixstr(8) "checksum", fixstr(24) "xxh3-64:" + 16 hex digits.
const MSGPACK_TRAILER_LEN: usize = 1 + 8 + 1 + 24;

/// Size of the chunks handed to the store while a document is written.
pub(crate) const CHUNK: usize = 1 << 18;

/// What checking a file's embedded checksum found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Integrity {
    /// The file carries a checksum and its content matches it.
    Verified(String),
    /// The file carries no checksum (written by the Python original, or
    /// reformatted): it was parsed, but its bytes cannot be vouched for.
    Unverified,
}

impl Integrity {
    /// Whether the checksum was present and matched.
    pub fn is_verified(&self) -> bool {
        matches!(self, Integrity::Verified(_))
    }
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Checks the embedded checksum of a whole file.
///
/// Returns `Unverified` when the file has no trailer, and an error when the
/// trailer is there but the content does not match it.
pub(crate) fn verify_checksum(bytes: &[u8], format: FileFormat, file: &str) -> Result<Integrity> {
    let (body, recorded) = match format {
        FileFormat::Json => {
            let trimmed = bytes.trim_ascii_end();
            if trimmed.len() < JSON_TRAILER_LEN {
                return Ok(Integrity::Unverified);
            }
            let at = trimmed.len() - JSON_TRAILER_LEN;
            let trailer = &trimmed[at..];
            if !trailer.starts_with(JSON_PREFIX) || !trailer.ends_with(b"\"}") {
                return Ok(Integrity::Unverified);
            }
            (
                &trimmed[..at],
                &trailer[JSON_PREFIX.len()..JSON_PREFIX.len() + 16],
            )
        }
        FileFormat::MessagePack => {
            if bytes.len() < MSGPACK_TRAILER_LEN {
                return Ok(Integrity::Unverified);
            }
            let at = bytes.len() - MSGPACK_TRAILER_LEN;
            let t = &bytes[at..];
            if t[0] != 0xa8
                || &t[1..9] != b"checksum"
                || t[9] != 0xb8
                || &t[10..18] != ALGO.as_bytes()
            {
                return Ok(Integrity::Unverified);
            }
            (&bytes[..at], &t[18..34])
        }
    };
    let recorded = std::str::from_utf8(recorded).unwrap_or("?").to_string();
    let computed = hex(xxhash_rust::xxh3::xxh3_64(body));
    if recorded.eq_ignore_ascii_case(&computed) {
        Ok(Integrity::Verified(format!("{ALGO}{computed}")))
    } else {
        Err(Error::ChecksumMismatch {
            file: file.to_string(),
            recorded: format!("{ALGO}{recorded}"),
            computed: format!("{ALGO}{computed}"),
        })
    }
}

/// Collects a document in chunks, hashing every byte, and hands each full
/// chunk to `emit` (a file, or a channel to an async store).
pub(crate) struct ChunkWriter<F: FnMut(Vec<u8>) -> Result<()>> {
    pub(crate) buf: Vec<u8>,
    hasher: Xxh3,
    emit: F,
    written: u64,
}

impl<F: FnMut(Vec<u8>) -> Result<()>> ChunkWriter<F> {
    pub(crate) fn new(emit: F) -> Self {
        ChunkWriter {
            buf: Vec::with_capacity(CHUNK + CHUNK / 8),
            hasher: Xxh3::new(),
            emit,
            written: 0,
        }
    }

    /// Hands the buffer over once it has grown past a chunk.
    #[inline]
    pub(crate) fn maybe_flush(&mut self) -> Result<()> {
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.hasher.update(&self.buf);
        self.written += self.buf.len() as u64;
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + CHUNK / 8));
        (self.emit)(chunk)
    }

    /// Appends the checksum entry and the closing of the top-level object;
    /// returns the total size and the checksum.
    pub(crate) fn finish(mut self, format: FileFormat) -> Result<(u64, String)> {
        self.hasher.update(&self.buf);
        let digest = hex(self.hasher.digest());
        match format {
            FileFormat::Json => {
                self.buf.extend_from_slice(JSON_PREFIX);
                self.buf.extend_from_slice(digest.as_bytes());
                self.buf.extend_from_slice(b"\"}");
            }
            FileFormat::MessagePack => {
                self.buf.push(0xa8);
                self.buf.extend_from_slice(b"checksum");
                self.buf.push(0xb8);
                self.buf.extend_from_slice(ALGO.as_bytes());
                self.buf.extend_from_slice(digest.as_bytes());
            }
        }
        let total = self.written + self.buf.len() as u64;
        let last = std::mem::take(&mut self.buf);
        (self.emit)(last)?;
        Ok((total, format!("{ALGO}{digest}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(format: FileFormat) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = ChunkWriter::new(|c: Vec<u8>| {
            out.extend_from_slice(&c);
            Ok(())
        });
        match format {
            FileFormat::Json => w.buf.extend_from_slice(br#"{"tables":{}"#),
            FileFormat::MessagePack => w
                .buf
                .extend_from_slice(&[0x82, 0xa6, b't', b'a', b'b', b'l', b'e', b's', 0x80]),
        }
        w.finish(format).unwrap();
        out
    }

    #[test]
    fn roundtrip_and_bit_flips() {
        for format in [FileFormat::Json, FileFormat::MessagePack] {
            let good = doc(format);
            assert!(verify_checksum(&good, format, "f").unwrap().is_verified());
            for i in 0..good.len() {
                let mut bad = good.clone();
                bad[i] ^= 0x01;
                // Either the trailer no longer looks like one (unverified, and
                // then parsing catches the damage) or the sum no longer matches.
                assert_ne!(
                    verify_checksum(&bad, format, "f").ok(),
                    Some(verify_checksum(&good, format, "f").unwrap()),
                    "flip at byte {i} went unnoticed"
                );
            }
        }
        let json = doc(FileFormat::Json);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v["checksum"].as_str().unwrap().starts_with("xxh3-64:"));
        assert_eq!(
            verify_checksum(b"{\"tables\":{}}", FileFormat::Json, "f").unwrap(),
            Integrity::Unverified
        );
    }
}
