//! Stream transforms around the codec: zstd compression and age encryption.
//!
//! The codec reads and writes the *plaintext document*, and its checksum
//! covers exactly that document. These transforms sit between the codec and
//! the store, as streams, never holding a file whole:
//!
//! ```text
//! write: codec chunks -> zstd (+ trailer) -> age -> store chunks
//! read:  store reader -> age -> trailer check -> zstd -> codec Input
//! ```
//!
//! A compressed stream is one zstd frame (with zstd's content checksum)
//! followed by a 24-byte zstd *skippable frame* carrying the XXH3-64 of
//! every compressed byte before it. zstd ignores skippable frames (`zstd
//! -d` reads our files), and the trailer makes every change to a compressed
//! file detectable, including those zstd itself cannot see (its frame
//! header has bits a decoder must ignore, and window sizes larger than
//! needed decode the same). The reader checks it as the stream ends.
//!
//! Decompression is bounded: zstd's window is at most 128 MiB, and a
//! stream may expand past 256 MiB only while it stays within
//! [`MAX_EXPANSION`] times the compressed bytes read so far, so a tiny file
//! that decompresses to gigabytes is refused early with a clear error.

use std::io::{self, BufReader, Read, Write};

use xxhash_rust::xxh3::Xxh3;

#[cfg(feature = "encryption")]
use crate::error::DecryptFailure;
use crate::error::{Error, Result};
use crate::naming::BackupName;

/// Size of the chunks handed to the store.
const CHUNK: usize = super::checksum::CHUNK;

/// The magic number of the trailer: a zstd skippable frame.
const TRAILER_MAGIC: u32 = 0x184D_2A5D;

/// The trailer's tag: what the payload is.
const TRAILER_TAG: &[u8; 8] = b"dictdbx3";

/// Magic, frame size, tag, hash.
const TRAILER_LEN: usize = 4 + 4 + 8 + 8;

/// zstd's largest window accepted when reading (2^27 = 128 MiB, zstd's own
/// default limit).
const WINDOW_LOG_MAX: u32 = 27;

/// Decompressed bytes allowed whatever the ratio.
const EXPANSION_FLOOR: u64 = 256 << 20;

/// Past [`EXPANSION_FLOOR`], the largest ratio of decompressed bytes to
/// compressed bytes read so far. The standard workload compresses about
/// 40 times; a stream that expands more than this is refused as a
/// decompression bomb.
pub(crate) const MAX_EXPANSION: u64 = 4096;

/// Compression of backup files.
///
/// Off by default: the Python original reads only plain files.
///
/// # Examples
///
/// ```
/// use dictdb::{BackupConfig, Compression};
///
/// let config = BackupConfig::new("./backups").compression(Compression::zstd());
/// assert_eq!(Compression::zstd(), Compression::Zstd { level: 1 });
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Compression {
    /// Plain files (the default).
    #[default]
    None,
    /// zstd at `level` (1 to 22; negative levels are faster still). Files
    /// get `.zst` after the format's extension.
    Zstd {
        /// The zstd level; [`Compression::DEFAULT_ZSTD_LEVEL`] is a good
        /// default.
        level: i32,
    },
}

impl Compression {
    /// The zstd level of [`Compression::zstd`]: 1. On backup documents it
    /// compresses as well as zstd's own default, 3 (2.7 % against 2.8 % of
    /// a 1M-record JSON backup), in about two thirds of the time, which
    /// keeps a compressed backup within 1.2 × a plain one now that plain
    /// JSON backups use both cores (level 3: 1.4–1.6 ×).
    pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

    /// zstd at the default level.
    pub const fn zstd() -> Compression {
        Compression::Zstd {
            level: Self::DEFAULT_ZSTD_LEVEL,
        }
    }

    /// Checks the level.
    pub(crate) fn check(self) -> Result<()> {
        if let Compression::Zstd { level } = self {
            let range = zstd::compression_level_range();
            if !range.contains(&level) || level == 0 {
                return Err(Error::Config(format!(
                    "zstd level {level} is out of range ({} to {}, not 0)",
                    range.start(),
                    range.end()
                )));
            }
        }
        Ok(())
    }
}

/// Which transforms a file's bytes went through, as its name says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Layers {
    /// Compressed with zstd (`.zst`).
    pub(crate) zstd: bool,
    /// Encrypted with age (`.age`).
    pub(crate) age: bool,
}

impl Layers {
    /// The layers a backup name says.
    pub(crate) fn of_name(name: &BackupName) -> Layers {
        Layers {
            zstd: name.compressed,
            age: name.encrypted,
        }
    }

    /// The layers a path's extension says (`x.json.zst` is compressed), and
    /// the path's last extension once they are taken off.
    pub(crate) fn of_path(path: &std::path::Path) -> (Layers, String) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let (rest, age) = match name.strip_suffix(".age") {
            Some(r) => (r, true),
            None => (name.as_str(), false),
        };
        let (rest, zstd) = match rest.strip_suffix(".zst") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let ext = std::path::Path::new(rest)
            .extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default();
        (Layers { zstd, age }, ext)
    }

    pub(crate) fn is_plain(self) -> bool {
        !self.zstd && !self.age
    }
}

/// The identities given for reading encrypted files (none: encrypted files
/// are refused with [`DecryptFailure::MissingIdentity`]).
#[derive(Clone, Default)]
pub(crate) struct Keys {
    #[cfg(feature = "encryption")]
    ids: std::sync::Arc<Vec<crate::encryption::Identity>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} identities)", self.len())
    }
}

impl Keys {
    #[cfg(feature = "encryption")]
    pub(crate) fn new(ids: Vec<crate::encryption::Identity>) -> Keys {
        Keys {
            ids: std::sync::Arc::new(ids),
        }
    }

    /// The identities, to add more.
    #[cfg(feature = "encryption")]
    pub(crate) fn identities(&self) -> Vec<crate::encryption::Identity> {
        self.ids.as_ref().clone()
    }

    fn len(&self) -> usize {
        #[cfg(feature = "encryption")]
        return self.ids.len();
        #[cfg(not(feature = "encryption"))]
        0
    }
}

/// What a writer applies: compression, and encryption to recipients.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sealing {
    pub(crate) compression: Compression,
    /// zstd worker threads (0: compress on the writing thread).
    pub(crate) threads: u32,
    #[cfg(feature = "encryption")]
    pub(crate) recipients: Option<std::sync::Arc<Vec<crate::encryption::Recipient>>>,
}

impl Sealing {
    /// The layers files written this way have.
    pub(crate) fn layers(&self) -> Layers {
        #[cfg(feature = "encryption")]
        let age = self.recipients.is_some();
        #[cfg(not(feature = "encryption"))]
        let age = false;
        Layers {
            zstd: matches!(self.compression, Compression::Zstd { .. }),
            age,
        }
    }
}

/// A crate error carried through `io` interfaces.
fn to_io(e: Error) -> io::Error {
    io::Error::other(e)
}

/// The crate error an `io::Error` carries, else `otherwise(e)`.
fn from_io(e: io::Error, otherwise: impl FnOnce(io::Error) -> Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner() {
            if let Ok(err) = inner.downcast::<Error>() {
                return *err;
            }
        }
        return Error::Store {
            path: "stream".into(),
            message: "lost error".into(),
        };
    }
    otherwise(e)
}

/// Whether an `io::Error` carries a crate error.
fn carries_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Error>())
}

// ---------------------------------------------------------------- writing

/// Collects bytes into store-sized chunks for `emit`.
struct Chunker<F> {
    emit: F,
    buf: Vec<u8>,
    total: u64,
}

impl<F: FnMut(Vec<u8>) -> Result<()>> Chunker<F> {
    fn new(emit: F) -> Self {
        Chunker {
            emit,
            buf: Vec::new(),
            total: 0,
        }
    }

    fn flush_buf(&mut self) -> Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.buf);
        self.total += chunk.len() as u64;
        (self.emit)(chunk)
    }

    /// Hands a whole chunk on as it is (no transform).
    fn pass(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.flush_buf()?;
        self.total += chunk.len() as u64;
        (self.emit)(chunk)
    }
}

impl<F: FnMut(Vec<u8>) -> Result<()>> Write for Chunker<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve(CHUNK + CHUNK / 8);
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_buf().map_err(to_io)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Hashes the compressed bytes on their way, and appends the trailer.
struct Trailed<W> {
    inner: W,
    hasher: Xxh3,
}

impl<W: Write> Trailed<W> {
    fn new(inner: W) -> Self {
        Trailed {
            inner,
            hasher: Xxh3::new(),
        }
    }

    fn finish(mut self) -> io::Result<W> {
        let mut trailer = Vec::with_capacity(TRAILER_LEN);
        trailer.extend_from_slice(&TRAILER_MAGIC.to_le_bytes());
        trailer.extend_from_slice(&((TRAILER_LEN - 8) as u32).to_le_bytes());
        trailer.extend_from_slice(TRAILER_TAG);
        trailer.extend_from_slice(&self.hasher.digest().to_le_bytes());
        self.inner.write_all(&trailer)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Trailed<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Zstd<W> = zstd::stream::write::Encoder<'static, Trailed<W>>;

enum Stack<W: Write> {
    Plain(W),
    Zstd(Box<Zstd<W>>),
    #[cfg(feature = "encryption")]
    Age(age::stream::StreamWriter<W>),
    #[cfg(feature = "encryption")]
    ZstdAge(Box<Zstd<age::stream::StreamWriter<W>>>),
}

fn zstd_encoder<W: Write>(inner: W, level: i32, threads: u32) -> io::Result<Zstd<W>> {
    let mut enc = zstd::stream::write::Encoder::new(Trailed::new(inner), level)?;
    enc.include_checksum(true)?;
    if threads > 0 {
        enc.multithread(threads)?;
    }
    Ok(enc)
}

#[cfg(feature = "encryption")]
fn age_writer<W: Write>(
    recipients: &[crate::encryption::Recipient],
    inner: W,
) -> Result<age::stream::StreamWriter<W>> {
    let listing = crate::encryption::Listing(recipients.iter().map(|r| r.to_string()).collect());
    let all = recipients
        .iter()
        .map(|r| &r.0 as &dyn age::Recipient)
        .chain(std::iter::once(&listing as &dyn age::Recipient));
    let enc = age::Encryptor::with_recipients(all)
        .map_err(|e| Error::Config(format!("cannot encrypt: {e}")))?;
    enc.wrap_output(inner)
        .map_err(|e| from_io(e, |e| Error::io("age header", e)))
}

/// The writing end: takes the codec's chunks, hands the store's chunks to
/// `emit`.
pub(crate) struct Sealer<F: FnMut(Vec<u8>) -> Result<()>> {
    stack: Stack<Chunker<F>>,
    file: String,
}

impl<F: FnMut(Vec<u8>) -> Result<()>> Sealer<F> {
    /// Starts a file named `file` (for errors) written the way `sealing` says.
    pub(crate) fn new(sealing: &Sealing, file: &str, emit: F) -> Result<Self> {
        let io_err = |e: io::Error| from_io(e, |e| Error::io(file, e));
        let sink = Chunker::new(emit);
        let level = match sealing.compression {
            Compression::Zstd { level } => Some(level),
            Compression::None => None,
        };
        #[cfg(feature = "encryption")]
        let stack = match (level, &sealing.recipients) {
            (None, None) => Stack::Plain(sink),
            (Some(l), None) => Stack::Zstd(Box::new(
                zstd_encoder(sink, l, sealing.threads).map_err(io_err)?,
            )),
            (None, Some(r)) => Stack::Age(age_writer(r, sink)?),
            (Some(l), Some(r)) => Stack::ZstdAge(Box::new(
                zstd_encoder(age_writer(r, sink)?, l, sealing.threads).map_err(io_err)?,
            )),
        };
        #[cfg(not(feature = "encryption"))]
        let stack = match level {
            None => Stack::Plain(sink),
            Some(l) => Stack::Zstd(Box::new(
                zstd_encoder(sink, l, sealing.threads).map_err(io_err)?,
            )),
        };
        Ok(Sealer {
            stack,
            file: file.to_string(),
        })
    }

    /// Writes one chunk of the document.
    pub(crate) fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let result = match &mut self.stack {
            Stack::Plain(sink) => return sink.pass(chunk),
            Stack::Zstd(w) => w.write_all(&chunk),
            #[cfg(feature = "encryption")]
            Stack::Age(w) => w.write_all(&chunk),
            #[cfg(feature = "encryption")]
            Stack::ZstdAge(w) => w.write_all(&chunk),
        };
        result.map_err(|e| from_io(e, |e| Error::io(&self.file, e)))
    }

    /// Ends every layer and hands the last chunk on; the stored size.
    pub(crate) fn finish(self) -> Result<u64> {
        let file = self.file;
        let io_err = |e: io::Error| from_io(e, |e| Error::io(&file, e));
        let mut sink = match self.stack {
            Stack::Plain(sink) => sink,
            Stack::Zstd(w) => w.finish().and_then(Trailed::finish).map_err(io_err)?,
            #[cfg(feature = "encryption")]
            Stack::Age(w) => w.finish().map_err(io_err)?,
            #[cfg(feature = "encryption")]
            Stack::ZstdAge(w) => w
                .finish()
                .and_then(Trailed::finish)
                .and_then(|a| a.finish())
                .map_err(io_err)?,
        };
        sink.flush_buf()?;
        Ok(sink.total)
    }
}

// ---------------------------------------------------------------- reading

/// Passes the compressed bytes on, holding back the last [`TRAILER_LEN`],
/// and checks the trailer against the hash of the rest when the input ends.
struct Trailer<R> {
    inner: R,
    pending: Vec<u8>,
    eof: bool,
    done: bool,
    /// Reading a prefix of the file: its end is not the file's end.
    partial: bool,
    hasher: Xxh3,
    /// Bytes read from `inner`.
    consumed: u64,
    /// The last error came from `inner` (the store), not from the data.
    inner_failed: bool,
    file: String,
}

impl<R: Read> Trailer<R> {
    fn new(inner: R, file: &str, partial: bool) -> Self {
        Trailer {
            inner,
            pending: Vec::with_capacity(64 * 1024 + TRAILER_LEN),
            eof: false,
            done: false,
            partial,
            hasher: Xxh3::new(),
            consumed: 0,
            inner_failed: false,
            file: file.to_string(),
        }
    }

    fn damaged(&self, reason: impl std::fmt::Display) -> io::Error {
        to_io(Error::corrupt(&self.file, reason))
    }

    fn check(&self) -> io::Result<()> {
        let t = &self.pending;
        if t.len() < TRAILER_LEN
            || t[..4] != TRAILER_MAGIC.to_le_bytes()
            || t[4..8] != ((TRAILER_LEN - 8) as u32).to_le_bytes()
            || &t[8..16] != TRAILER_TAG
        {
            return Err(self.damaged(
                "the compressed stream does not end with dictdb's checksum frame \
                 (truncated, damaged, or not written by dictdb)",
            ));
        }
        let mut recorded = [0u8; 8];
        recorded.copy_from_slice(&t[16..24]);
        let recorded = u64::from_le_bytes(recorded);
        let computed = self.hasher.digest();
        if recorded != computed {
            return Err(self.damaged(format!(
                "the compressed stream's checksum does not match (recorded \
                 xxh3-64:{recorded:016x}, computed xxh3-64:{computed:016x})"
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for Trailer<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.done || out.is_empty() {
            return Ok(0);
        }
        while self.pending.len() <= TRAILER_LEN && !self.eof {
            let have = self.pending.len();
            self.pending.resize(have + 64 * 1024, 0);
            match self.inner.read(&mut self.pending[have..]) {
                Ok(0) => {
                    self.pending.truncate(have);
                    self.eof = true;
                }
                Ok(n) => {
                    self.pending.truncate(have + n);
                    self.consumed += n as u64;
                }
                Err(e) => {
                    self.pending.truncate(have);
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    self.inner_failed = true;
                    return Err(e);
                }
            }
        }
        if self.pending.len() <= TRAILER_LEN {
            // The input ended: what is left must be the trailer.
            self.done = true;
            if self.partial {
                return Ok(0);
            }
            self.check()?;
            return Ok(0);
        }
        let give = (self.pending.len() - TRAILER_LEN).min(out.len());
        out[..give].copy_from_slice(&self.pending[..give]);
        self.hasher.update(&self.pending[..give]);
        self.pending.drain(..give);
        Ok(give)
    }
}

/// The zstd decoder over a [`Trailer`], bounded, with errors that say what
/// is wrong.
struct Unzstd<R: Read> {
    dec: zstd::stream::read::Decoder<'static, BufReader<Trailer<R>>>,
    produced: u64,
    file: String,
}

impl<R: Read> Unzstd<R> {
    fn new(inner: R, file: &str, partial: bool) -> Result<Self> {
        let trailer = Trailer::new(inner, file, partial);
        let mut dec = zstd::stream::read::Decoder::new(trailer)
            .map_err(|e| Error::corrupt(file, format!("zstd: {e}")))?;
        dec.window_log_max(WINDOW_LOG_MAX)
            .map_err(|e| Error::corrupt(file, format!("zstd: {e}")))?;
        Ok(Unzstd {
            dec,
            produced: 0,
            file: file.to_string(),
        })
    }
}

impl<R: Read> Read for Unzstd<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.dec.read(out) {
            Ok(n) => {
                self.produced += n as u64;
                let consumed = self.dec.get_ref().get_ref().consumed;
                if self.produced > EXPANSION_FLOOR
                    && self.produced > consumed.saturating_mul(MAX_EXPANSION)
                {
                    return Err(to_io(Error::corrupt(
                        &self.file,
                        format!(
                            "decompresses to more than {MAX_EXPANSION} times its size \
                             ({} bytes from {consumed}): refused as a decompression bomb",
                            self.produced
                        ),
                    )));
                }
                Ok(n)
            }
            Err(e) if carries_error(&e) || self.dec.get_ref().get_ref().inner_failed => Err(e),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                Error::corrupt(
                    &self.file,
                    format!("the compressed stream ends inside its zstd frame (truncated?): {e}"),
                ),
            )),
            Err(e) => Err(to_io(Error::corrupt(
                &self.file,
                format!("not a valid zstd stream: {e}"),
            ))),
        }
    }
}

/// Opens the plaintext of a file stored with `layers`.
pub(crate) fn open(
    read: Box<dyn Read + Send>,
    layers: Layers,
    keys: &Keys,
    file: &str,
) -> Result<Box<dyn Read + Send>> {
    open_inner(read, layers, keys, file, false)
}

fn open_inner(
    read: Box<dyn Read + Send>,
    layers: Layers,
    keys: &Keys,
    file: &str,
    partial: bool,
) -> Result<Box<dyn Read + Send>> {
    let mut r = read;
    if layers.age {
        r = decrypting(r, keys, file)?;
    }
    if layers.zstd {
        r = Box::new(Unzstd::new(r, file, partial)?);
        if !partial {
            r = ahead(r);
        }
    }
    Ok(r)
}

/// Plaintext chunks decompressed (and decrypted) ahead of the codec.
const AHEAD_CHUNKS: usize = 4;

/// Runs `read` on a thread of its own, a few chunks ahead of the reader:
/// decompression then overlaps parsing instead of adding to it. Errors
/// arrive in order, after the bytes before them. If no thread can be
/// started, `read` is read in place.
fn ahead(read: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(AHEAD_CHUNKS);
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(read)));
    let theirs = std::sync::Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("dictdb-unzstd".into())
        .spawn(move || {
            let Some(mut read) = theirs.lock().ok().and_then(|mut s| s.take()) else {
                return;
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                let result = loop {
                    match read.read(&mut buf[filled..]) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            filled += n;
                            if filled == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => break Err(e),
                    }
                };
                buf.truncate(filled);
                let end = filled == 0 || result.is_err();
                if filled > 0 && tx.send(Ok(buf)).is_err() {
                    return;
                }
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                    return;
                }
                if end {
                    return;
                }
            }
        });
    if spawned.is_err() {
        if let Some(read) = slot.lock().ok().and_then(|mut s| s.take()) {
            return read;
        }
    }
    Box::new(Ahead {
        rx,
        chunk: Vec::new(),
        pos: 0,
        done: false,
    })
}

/// The reading end of [`ahead`].
struct Ahead {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for Ahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                // The thread ended: every chunk was sent.
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = (self.chunk.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(not(feature = "encryption"))]
fn decrypting(
    _read: Box<dyn Read + Send>,
    _keys: &Keys,
    file: &str,
) -> Result<Box<dyn Read + Send>> {
    Err(Error::UnsupportedFormat {
        name: file.to_string(),
        hint: "an encrypted (.age) file: reading it needs dictdb built with the `encryption` \
               feature, and its identity",
    })
}

/// The longest age header read (recipient stanzas are about 100 bytes).
#[cfg(feature = "encryption")]
const AGE_HEADER_MAX: usize = 64 * 1024;

/// Records the age header while it is read, and bounds it.
#[cfg(feature = "encryption")]
struct HeaderGate<R> {
    inner: R,
    seen: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

#[cfg(feature = "encryption")]
impl<R: Read> Read for HeaderGate<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut guard = self.seen.lock().map_err(|_| io::Error::other("poisoned"))?;
        let Some(seen) = guard.as_mut() else {
            drop(guard);
            return self.inner.read(out);
        };
        let room = AGE_HEADER_MAX.saturating_sub(seen.len());
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the age header is longer than {AGE_HEADER_MAX} bytes"),
            ));
        }
        let n = out.len().min(room);
        let got = self.inner.read(&mut out[..n])?;
        seen.extend_from_slice(&out[..got]);
        Ok(got)
    }
}

/// Maps the payload's errors to [`DecryptFailure::Damaged`].
#[cfg(feature = "encryption")]
struct Opened<R> {
    inner: age::stream::StreamReader<R>,
    file: String,
}

#[cfg(feature = "encryption")]
impl<R: Read> Read for Opened<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.inner.read(out).map_err(|e| {
            if carries_error(&e)
                || !matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                )
            {
                return e;
            }
            io::Error::new(
                e.kind(),
                Error::decrypt(
                    &self.file,
                    DecryptFailure::Damaged,
                    format!(
                        "the encrypted data is damaged, truncated or was tampered with \
                         (age: {e})"
                    ),
                ),
            )
        })
    }
}

#[cfg(feature = "encryption")]
fn decrypting(read: Box<dyn Read + Send>, keys: &Keys, file: &str) -> Result<Box<dyn Read + Send>> {
    use std::sync::{Arc, Mutex};
    let damaged = |reason: String| Error::decrypt(file, DecryptFailure::Damaged, reason);
    let seen = Arc::new(Mutex::new(Some(Vec::new())));
    let gate = HeaderGate {
        inner: read,
        seen: Arc::clone(&seen),
    };
    let decryptor = match age::Decryptor::new(gate) {
        Ok(d) => d,
        Err(age::DecryptError::Io(e)) if e.kind() != io::ErrorKind::UnexpectedEof => {
            return Err(from_io(e, |e| match e.kind() {
                io::ErrorKind::InvalidData => damaged(format!("not a valid age file: {e}")),
                _ => Error::io(file, e),
            }))
        }
        Err(age::DecryptError::Io(_)) => {
            return Err(damaged(
                "the file ends inside its age header (truncated?)".into(),
            ))
        }
        Err(age::DecryptError::UnknownFormat) => {
            return Err(damaged(
                "not an age file (or one of a newer age version): its header is not \
                 `age-encryption.org/v1`"
                    .into(),
            ))
        }
        Err(e) => return Err(damaged(format!("not a valid age file: {e}"))),
    };
    let header = seen
        .lock()
        .ok()
        .and_then(|mut s| s.take())
        .unwrap_or_default();
    let listed = crate::encryption::listed_recipients(&header);
    let listed_text = || match &listed {
        Some(l) if !l.is_empty() => l.join(", "),
        _ => "recipients it does not list".to_string(),
    };
    if keys.ids.is_empty() {
        return Err(Error::decrypt(
            file,
            DecryptFailure::MissingIdentity,
            format!(
                "encrypted (age) to {}, and no identity was given to decrypt it \
                 (Restore::identity, or dictdb-backup --identity FILE)",
                listed_text()
            ),
        ));
    }
    let ids = keys.ids.iter().map(|i| &i.0 as &dyn age::Identity);
    match decryptor.decrypt(ids) {
        Ok(stream) => Ok(Box::new(Opened {
            inner: stream,
            file: file.to_string(),
        })),
        Err(age::DecryptError::NoMatchingKeys) => {
            let ours: Vec<String> = keys.ids.iter().map(|i| i.to_public().to_string()).collect();
            match &listed {
                Some(l) if l.iter().any(|r| ours.contains(r)) => Err(damaged(format!(
                    "its header lists {} among its recipients, but that identity does not \
                     open it: the header is damaged or was tampered with",
                    l.iter()
                        .find(|r| ours.contains(r))
                        .map_or("", String::as_str)
                ))),
                _ => Err(Error::decrypt(
                    file,
                    DecryptFailure::WrongIdentity,
                    format!(
                        "encrypted to {}, and the identities given are for {}: none of them \
                         can decrypt it",
                        listed_text(),
                        ours.join(", ")
                    ),
                )),
            }
        }
        Err(age::DecryptError::InvalidMac) => Err(damaged(
            "its age header's MAC does not match: the header is damaged or was tampered with"
                .into(),
        )),
        Err(e) => Err(damaged(format!("age header: {e}"))),
    }
}

/// The plaintext at the start of a file, from its first bytes: what a
/// header read needs.
pub(crate) enum Prefix {
    /// Plaintext, and whether it is the whole document.
    Plain(Vec<u8>, bool),
    /// Not enough of the file to produce any plaintext yet.
    NeedMore,
    /// The file is unreadable from its start (what plaintext came first,
    /// and why).
    Failed(Vec<u8>, Error),
}

/// Produces the plaintext of `prefix` (the whole file when `complete`), at
/// most `max` bytes of it.
pub(crate) fn plain_prefix(
    prefix: Vec<u8>,
    complete: bool,
    layers: Layers,
    keys: &Keys,
    file: &str,
    max: usize,
) -> Prefix {
    if layers.age && !complete && !holds_first_age_chunk(&prefix) {
        return Prefix::NeedMore;
    }
    let mut r = match open_inner(
        Box::new(io::Cursor::new(prefix)),
        layers,
        keys,
        file,
        !complete,
    ) {
        Ok(r) => r,
        Err(e) => return Prefix::Failed(Vec::new(), e),
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if out.len() >= max {
            return Prefix::Plain(out, false);
        }
        match r.read(&mut buf) {
            Ok(0) => return Prefix::Plain(out, complete),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if !complete && !out.is_empty() {
                    // The prefix ends: what came is all there is so far.
                    return Prefix::Plain(out, false);
                }
                if !complete && e.kind() == io::ErrorKind::UnexpectedEof {
                    return Prefix::NeedMore;
                }
                return Prefix::Failed(out, from_io(e, |e| Error::corrupt(file, e)));
            }
        }
    }
}

/// Whether an age file's first bytes hold its header, nonce and first
/// payload chunk (age decrypts whole chunks of 64 KiB).
fn holds_first_age_chunk(prefix: &[u8]) -> bool {
    let Some(mac_line) = prefix.windows(4).position(|w| w == b"\n---") else {
        return false;
    };
    let Some(eol) = prefix[mac_line + 1..].iter().position(|&b| b == b'\n') else {
        return false;
    };
    let header_end = mac_line + 1 + eol + 1;
    prefix.len() >= header_end + 16 + 64 * 1024 + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(e: io::Error, file: &str) -> Error {
        from_io(e, |e| Error::io(file, e))
    }

    fn seal(sealing: &Sealing, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut s = Sealer::new(sealing, "f", |c: Vec<u8>| {
            out.extend_from_slice(&c);
            Ok(())
        })
        .unwrap();
        for piece in data.chunks(100_000) {
            s.write(piece.to_vec()).unwrap();
        }
        let n = s.finish().unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    fn unseal(layers: Layers, keys: &Keys, data: Vec<u8>) -> Result<Vec<u8>> {
        let mut r = open(Box::new(io::Cursor::new(data)), layers, keys, "f")?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| error_of(e, "f"))?;
        Ok(out)
    }

    fn zstd_sealing() -> Sealing {
        Sealing {
            compression: Compression::zstd(),
            ..Sealing::default()
        }
    }

    #[test]
    fn zstd_round_trip_and_the_trailer_is_a_skippable_frame() {
        let data: Vec<u8> = (0..1_000_000u32)
            .flat_map(|i| format!("{{\"id\":{i}}},").into_bytes())
            .collect();
        let sealed = seal(&zstd_sealing(), &data);
        assert!(sealed.len() < data.len() / 5);
        let layers = Layers {
            zstd: true,
            age: false,
        };
        assert_eq!(
            unseal(layers, &Keys::default(), sealed.clone()).unwrap(),
            data
        );
        // zstd itself reads the file, trailer included.
        assert_eq!(zstd::decode_all(&sealed[..]).unwrap(), data);
        // Truncated anywhere, or extended: refused.
        for cut in [1, 10, TRAILER_LEN, TRAILER_LEN + 1, sealed.len() / 2] {
            let short = sealed[..sealed.len() - cut].to_vec();
            assert!(unseal(layers, &Keys::default(), short).is_err(), "{cut}");
        }
        let mut long = sealed.clone();
        long.push(0);
        assert!(unseal(layers, &Keys::default(), long).is_err());
    }

    #[test]
    fn a_bomb_is_refused_with_bounded_memory() {
        // 512 MiB of spaces compress to a few kilobytes.
        let mut sealed = Vec::new();
        {
            let mut s = Sealer::new(&zstd_sealing(), "bomb", |c: Vec<u8>| {
                sealed.extend_from_slice(&c);
                Ok(())
            })
            .unwrap();
            let block = vec![b' '; 1 << 20];
            for _ in 0..512 {
                s.write(block.clone()).unwrap();
            }
            s.finish().unwrap();
        }
        assert!(sealed.len() < 1 << 20, "{}", sealed.len());
        let layers = Layers {
            zstd: true,
            age: false,
        };
        let mut r = open(
            Box::new(io::Cursor::new(sealed)),
            layers,
            &Keys::default(),
            "bomb",
        )
        .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        let err = loop {
            match r.read(&mut buf) {
                Ok(0) => panic!("the bomb was read whole"),
                Ok(n) => total += n as u64,
                Err(e) => break error_of(e, "bomb"),
            }
        };
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(total <= EXPANSION_FLOOR + (1 << 20), "{total}");
    }

    #[test]
    fn not_zstd_is_said_to_be_so() {
        let layers = Layers {
            zstd: true,
            age: false,
        };
        let e = unseal(layers, &Keys::default(), b"{\"tables\": {}}".repeat(10)).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }

    #[test]
    fn prefixes_give_what_they_can() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"id\":{i}}},").into_bytes())
            .collect();
        let sealed = seal(&zstd_sealing(), &data);
        let layers = Layers {
            zstd: true,
            age: false,
        };
        match plain_prefix(
            sealed[..20].to_vec(),
            false,
            layers,
            &Keys::default(),
            "f",
            1 << 20,
        ) {
            Prefix::NeedMore => {}
            _ => panic!("20 bytes cannot hold a block"),
        }
        match plain_prefix(
            sealed[..sealed.len() / 2].to_vec(),
            false,
            layers,
            &Keys::default(),
            "f",
            1 << 20,
        ) {
            Prefix::Plain(out, false) => assert!(data.starts_with(&out) && !out.is_empty()),
            _ => panic!("half the file gives plaintext"),
        }
        match plain_prefix(
            b"garbage, not zstd".repeat(100),
            false,
            layers,
            &Keys::default(),
            "f",
            1 << 20,
        ) {
            Prefix::Failed(_, e) => assert!(e.to_string().contains("zstd"), "{e}"),
            _ => panic!("garbage is a failure"),
        }
    }

    #[cfg(feature = "encryption")]
    #[test]
    fn age_round_trip_and_the_three_failures() {
        use crate::encryption::Identity;
        let id = Identity::generate();
        let other = Identity::generate();
        let sealing = Sealing {
            compression: Compression::zstd(),
            recipients: Some(std::sync::Arc::new(vec![id.to_public()])),
            ..Sealing::default()
        };
        let data = b"{\"hello\": \"world\"}".repeat(10_000);
        let sealed = seal(&sealing, &data);
        let layers = Layers {
            zstd: true,
            age: true,
        };
        let keys = Keys::new(vec![other.clone(), id.clone()]);
        assert_eq!(unseal(layers, &keys, sealed.clone()).unwrap(), data);
        let kind = |r: Result<Vec<u8>>| match r {
            Err(Error::Decrypt { kind, .. }) => kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(unseal(layers, &Keys::default(), sealed.clone())),
            DecryptFailure::MissingIdentity
        );
        let e = unseal(layers, &Keys::new(vec![other.clone()]), sealed.clone()).unwrap_err();
        assert!(e.to_string().contains(&id.to_public().to_string()), "{e}");
        assert_eq!(kind(Err(e)), DecryptFailure::WrongIdentity);
        let mut bad = sealed.clone();
        let at = bad.len() - 40;
        bad[at] ^= 1;
        assert_eq!(kind(unseal(layers, &keys, bad)), DecryptFailure::Damaged);
    }
}
