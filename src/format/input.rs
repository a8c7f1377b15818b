//! The one way bytes come in: a buffered, hashing reader.
//!
//! Both format readers pull bytes through [`Input`], which reads from any
//! `io::Read` in large chunks (a file, an object-store stream) so a document
//! is never held whole in memory, and hashes every byte it lets go of. The
//! embedded checksum covers every byte before the checksum entry, and the
//! reader only learns where that entry starts once it has read past its
//! separator; so the last [`MARGIN`] consumed bytes are kept unhashed in the
//! buffer until the document tells where the checksummed part ends
//! ([`Input::digest_to`]).

use std::fmt;
use std::io::Read;

use xxhash_rust::xxh3::Xxh3;

/// Bytes read from the source at a time.
pub(crate) const CHUNK: usize = 256 * 1024;

/// Consumed bytes kept unhashed: more than a checksum entry's separator and
/// key (`,"checksum":`) take.
const MARGIN: usize = 64;

/// Why input could not be read.
#[derive(Debug)]
pub(crate) enum Fault {
    /// The source failed (a disk or network error).
    Io(std::io::Error),
    /// The bytes are not a valid document.
    Bad {
        /// Offset of the offending byte.
        at: u64,
        /// What is wrong.
        reason: String,
    },
    /// The input ended where more was needed.
    Eof {
        /// Offset where it ended.
        at: u64,
    },
    /// The embedded checksum does not match the content.
    Checksum {
        /// The checksum the file records.
        recorded: String,
        /// The checksum of the bytes read.
        computed: String,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Io(e) => write!(f, "read error: {e}"),
            Fault::Bad { at, reason } => write!(f, "{reason} (at byte {at})"),
            Fault::Eof { at } => write!(f, "unexpected end of file at byte {at} (truncated?)"),
            Fault::Checksum { recorded, computed } => write!(
                f,
                "checksum mismatch (recorded {recorded}, computed {computed})"
            ),
        }
    }
}

pub(crate) type Res<T> = Result<T, Fault>;

/// A buffered reader that hashes what it consumes.
pub(crate) struct Input<R> {
    inner: R,
    pub(crate) buf: Vec<u8>,
    /// Absolute offset of `buf[0]`.
    start: u64,
    /// Next byte to consume.
    pub(crate) pos: usize,
    /// End of the valid bytes.
    pub(crate) end: usize,
    eof: bool,
    hasher: Xxh3,
    /// Absolute offset up to which bytes were hashed.
    hashed: u64,
    /// Buffer index from which bytes must be kept (a value being copied).
    mark: Option<usize>,
}

impl<R: Read> Input<R> {
    pub(crate) fn new(inner: R) -> Self {
        Input {
            inner,
            buf: vec![0; CHUNK],
            start: 0,
            pos: 0,
            end: 0,
            eof: false,
            hasher: Xxh3::new(),
            hashed: 0,
            mark: None,
        }
    }

    /// Absolute offset of the next byte.
    #[inline]
    pub(crate) fn offset(&self) -> u64 {
        self.start + self.pos as u64
    }

    /// An error at the current offset.
    pub(crate) fn bad<T>(&self, reason: impl Into<String>) -> Res<T> {
        Err(Fault::Bad {
            at: self.offset(),
            reason: reason.into(),
        })
    }

    /// An error at `at`.
    pub(crate) fn bad_at<T>(at: u64, reason: impl Into<String>) -> Res<T> {
        Err(Fault::Bad {
            at,
            reason: reason.into(),
        })
    }

    /// Makes at least `need` unconsumed bytes available; `false` if the
    /// source ends first (what there is stays available).
    #[inline]
    pub(crate) fn fill(&mut self, need: usize) -> Res<bool> {
        if self.end - self.pos >= need {
            return Ok(true);
        }
        self.refill(need)
    }

    #[cold]
    fn refill(&mut self, need: usize) -> Res<bool> {
        // Drop what is consumed, keeping the margin and any marked value.
        let keep = self
            .mark
            .unwrap_or(self.pos)
            .min(self.pos.saturating_sub(MARGIN));
        if keep > 0 {
            let from = (self.hashed - self.start) as usize;
            if from < keep {
                self.hasher.update(&self.buf[from..keep]);
                self.hashed = self.start + keep as u64;
            }
            self.buf.copy_within(keep..self.end, 0);
            self.start += keep as u64;
            self.pos -= keep;
            self.end -= keep;
            if let Some(m) = &mut self.mark {
                *m -= keep;
            }
        }
        while self.end - self.pos < need && !self.eof {
            // Grow only when what was read fills the buffer: a length a
            // file claims is never trusted for allocation, memory follows
            // the bytes that really arrive.
            if self.end == self.buf.len() {
                let grown = (self.buf.len() * 2).max(CHUNK);
                self.buf.resize(grown, 0);
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Fault::Io(e)),
            }
        }
        Ok(self.end - self.pos >= need)
    }

    /// The next byte, without consuming it (`None` at the end).
    #[inline]
    pub(crate) fn peek(&mut self) -> Res<Option<u8>> {
        if self.pos < self.end || self.fill(1)? {
            Ok(Some(self.buf[self.pos]))
        } else {
            Ok(None)
        }
    }

    /// The next byte, consumed.
    #[inline]
    pub(crate) fn byte(&mut self) -> Res<u8> {
        if self.pos < self.end || self.fill(1)? {
            let b = self.buf[self.pos];
            self.pos += 1;
            Ok(b)
        } else {
            Err(Fault::Eof { at: self.offset() })
        }
    }

    /// The next `n` bytes, consumed.
    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Res<&[u8]> {
        if !self.fill(n)? {
            return Err(Fault::Eof {
                at: self.start + self.end as u64,
            });
        }
        let s = self.pos;
        self.pos += n;
        Ok(&self.buf[s..s + n])
    }

    /// Whether the source is exhausted (nothing left unconsumed).
    pub(crate) fn at_end(&mut self) -> Res<bool> {
        Ok(self.peek()?.is_none())
    }

    /// Keeps every byte from the current position in the buffer until
    /// [`take_marked`](Self::take_marked).
    #[inline]
    pub(crate) fn set_mark(&mut self) {
        self.mark = Some(self.pos);
    }

    /// The bytes consumed since [`set_mark`](Self::set_mark).
    #[inline]
    pub(crate) fn take_marked(&mut self) -> &[u8] {
        let m = self.mark.take().unwrap_or(self.pos);
        &self.buf[m..self.pos]
    }

    /// The hash of every byte before absolute offset `at`, which must lie
    /// within the last [`MARGIN`] bytes consumed. Later bytes are never
    /// hashed: call once, at the checksum entry.
    pub(crate) fn digest_to(&mut self, at: u64) -> Res<u64> {
        if at < self.hashed || at > self.offset() {
            return Self::bad_at(at, "the checksum entry is not where this library writes it");
        }
        let from = (self.hashed - self.start) as usize;
        let to = (at - self.start) as usize;
        self.hasher.update(&self.buf[from..to]);
        self.hashed = at;
        Ok(self.hasher.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out one byte at a time, to cross every boundary.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            match (self.0.split_first(), out.first_mut()) {
                (Some((b, rest)), Some(o)) => {
                    *o = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn hashes_exactly_the_bytes_before_the_entry() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let cut = data.len() - 40;
        let mut input = Input::new(Trickle(&data));
        let mut seen = Vec::new();
        while let Some(b) = input.peek().unwrap() {
            seen.push(b);
            input.byte().unwrap();
            if seen.len() == cut + 20 {
                break;
            }
        }
        let digest = input.digest_to(cut as u64).unwrap();
        assert_eq!(digest, xxhash_rust::xxh3::xxh3_64(&data[..cut]));
        // Too far back: refused, never a wrong digest.
        let mut input = Input::new(&data[..]);
        input.take(CHUNK + 200).unwrap();
        input.fill(CHUNK).unwrap();
        assert!(input.digest_to(10).is_err());
    }

    #[test]
    fn marked_values_survive_refills() {
        let data: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 7) as u8).collect();
        let mut input = Input::new(Trickle(&data));
        input.take(10).unwrap();
        input.set_mark();
        input.take(CHUNK + 5).unwrap();
        assert_eq!(input.take_marked(), &data[10..CHUNK + 15]);
        assert!(matches!(input.take(CHUNK), Err(Fault::Eof { .. })));
    }
}
