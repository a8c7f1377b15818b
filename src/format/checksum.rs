//! Embedded checksums: the hashing output, and what checking found.
//!
//! The checksum is the last entry of the top-level map and covers every byte
//! before that entry, so a file carries its own integrity proof (no sidecar
//! to lose or to fall out of step, on disk or in a bucket) and stays a plain
//! document for the Python original. XXH3-64 runs at memory speed, so it
//! adds next to nothing to a backup of hundreds of megabytes.

use xxhash_rust::xxh3::Xxh3;

use crate::error::Result;

/// The algorithm prefix of the checksum value.
pub(crate) const ALGO: &str = "xxh3-64:";

/// Size of the chunks handed on while a document is written.
pub(crate) const CHUNK: usize = 1 << 18;

/// What checking a file's embedded checksum found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Integrity {
    /// The file carries a checksum and its content matches it.
    Verified(String),
    /// The file carries no checksum and no dictdb metadata: written by the
    /// Python original. It was parsed, but its bytes cannot be vouched for.
    Unverified,
}

impl Integrity {
    /// Whether the checksum was present and matched.
    pub fn is_verified(&self) -> bool {
        matches!(self, Integrity::Verified(_))
    }
}

/// The checksum value for a digest: `xxh3-64:` and 16 lower-case hex digits.
pub(crate) fn format_digest(digest: u64) -> String {
    format!("{ALGO}{digest:016x}")
}

/// Whether `value` is a checksum value exactly as this library writes it.
pub(crate) fn well_formed(value: &str) -> bool {
    value.len() == ALGO.len() + 16
        && value.starts_with(ALGO)
        && value[ALGO.len()..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Hands a document on in chunks, hashing every byte: the one hashing
/// writer. `emit` receives each chunk (a file, or a channel to an async
/// store, or a compressor).
pub(crate) struct ChunkWriter<F: FnMut(Vec<u8>) -> Result<()>> {
    hasher: Xxh3,
    emit: F,
    written: u64,
}

impl<F: FnMut(Vec<u8>) -> Result<()>> ChunkWriter<F> {
    pub(crate) fn new(emit: F) -> Self {
        ChunkWriter {
            hasher: Xxh3::new(),
            emit,
            written: 0,
        }
    }

    /// A fresh buffer of the chunk size.
    pub(crate) fn buffer() -> Vec<u8> {
        Vec::with_capacity(CHUNK + CHUNK / 8)
    }

    /// Hands `buf` on once it has grown past a chunk.
    #[inline]
    pub(crate) fn maybe_flush(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.len() >= CHUNK {
            self.flush(buf)?;
        }
        Ok(())
    }

    /// Hands on what `buf` holds, now.
    pub(crate) fn flush(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(buf, Self::buffer());
        self.emit(chunk)
    }

    /// Hands on a chunk made elsewhere (a segment written on another core).
    pub(crate) fn emit(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.hasher.update(&chunk);
        self.written += chunk.len() as u64;
        (self.emit)(chunk)
    }

    /// Hashes what `buf` holds: everything written so far is covered. The
    /// checksum value to append.
    pub(crate) fn checksum(&mut self, buf: &[u8]) -> String {
        let mut h = self.hasher.clone();
        h.update(buf);
        format_digest(h.digest())
    }

    /// Hands the last bytes on; the total size.
    pub(crate) fn finish(&mut self, last: Vec<u8>) -> Result<u64> {
        let total = self.written + last.len() as u64;
        (self.emit)(last)?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_form_is_well_formed() {
        let good = format_digest(0xab);
        assert_eq!(good, "xxh3-64:00000000000000ab");
        assert!(well_formed(&good));
        for bad in [
            "xxh3-64:00000000000000AB",
            "xxh3-64:00000000000000a",
            "xxh3-64:00000000000000abc",
            "xxh3-63:00000000000000ab",
            "xxh3-64:00000000000000ag",
            "",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
