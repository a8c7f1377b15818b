//! The chain rules: which files of a store form a chain, what each file must
//! say about itself, and how each link must continue the last.
//!
//! These functions are the only place the rules are written: a restore
//! applies them twice (to headers while planning, to the decoded files while
//! applying), `verify` applies them to every chain, and `inspect` to one file.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::format::transform::{plain_prefix, Prefix};
use crate::format::{decode_header, FileFormat, Header, Integrity, Keys, Layers};
use crate::naming::{BackupKind, BackupName, NameCheck, NameFormat};
use crate::store::{BackupStore, SkippedEntry, StoredFile};

/// First bytes read for a header; doubled until the header fits.
const HEADER_PROBE: u64 = 4096;

/// First bytes read for an encrypted file's header: age's header and its
/// first 64 KiB chunk.
const AGE_HEADER_PROBE: u64 = 72 * 1024;

/// The most read for one header.
const HEADER_MAX: u64 = 64 << 20;

/// A file named like a backup.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) name: BackupName,
    pub(crate) file: StoredFile,
    /// Why the store will not read it, when it listed the entry as one it
    /// skips (a dangling symbolic link, a directory): named like a backup,
    /// it still takes its place in the chains, and every read of it fails.
    pub(crate) unreadable: Option<String>,
}

impl Entry {
    /// Fails for an entry the store does not read: a store failure, never
    /// damage, so lenient mode cannot pass over it either. Its changes may
    /// be sound where it cannot be reached (a disk that did not mount), and
    /// a restore without them would return older data as if it were the
    /// newest.
    pub(crate) fn readable(&self) -> Result<()> {
        match &self.unreadable {
            None => Ok(()),
            Some(reason) => Err(Error::Store {
                path: self.file.name.clone(),
                message: format!(
                    "named like a backup but cannot be read ({reason}); without it a \
                     restore could return older data as the newest: make it readable, \
                     remove it if that backup is gone for good, or restore to the time \
                     of the backup before it (or earlier: a later limit must read this \
                     one to know nothing is missing)"
                ),
            }),
        }
    }

    /// Opens the file for reading (see [`Entry::readable`]).
    pub(crate) async fn open(&self, store: &dyn BackupStore) -> Result<crate::store::FileReader> {
        self.readable()?;
        store.open(self.file_name()).await
    }

    pub(crate) fn kind(&self) -> BackupKind {
        self.name.kind
    }

    pub(crate) fn file_name(&self) -> &str {
        &self.file.name
    }

    /// The transforms its name says it went through.
    pub(crate) fn layers(&self) -> Layers {
        Layers::of_name(&self.name)
    }

    /// The format its extension names.
    pub(crate) fn format(&self) -> Result<FileFormat> {
        match self.name.format {
            NameFormat::Supported(f) => Ok(f),
            NameFormat::Pickle => Err(Error::UnsupportedFormat {
                name: self.file.name.clone(),
                hint: "a pickle backup written by the Python original cannot be read here; \
                       re-save it from Python with file_format=\"json\"",
            }),
        }
    }
}

/// The backup files of a store, in write order, and the others.
#[derive(Debug)]
pub(crate) struct Catalog {
    pub(crate) store: Arc<dyn BackupStore>,
    /// The identities that decrypt encrypted files.
    pub(crate) keys: Keys,
    pub(crate) entries: Vec<Entry>,
    pub(crate) foreign: Vec<StoredFile>,
    /// Entries the store skips whose names are not backup names (object
    /// keys no plain name addresses): reported, never read. Skipped
    /// entries named like backups are in `entries`, unreadable.
    pub(crate) skipped: Vec<SkippedEntry>,
    /// The first file (in write order) that carries dictdb metadata.
    first_ours: OnceCell<Option<BackupName>>,
}

impl Catalog {
    /// Lists the store; `keys` decrypt its encrypted files.
    pub(crate) async fn load(store: Arc<dyn BackupStore>, keys: Keys) -> Result<Catalog> {
        let mut entries = Vec::new();
        let mut foreign = Vec::new();
        let listing = store.list_all().await?;
        // An entry the store skips but that is named like a backup keeps
        // its place: leaving it out would make the chain before it look
        // complete.
        let mut skipped = Vec::new();
        for s in listing.skipped {
            match s.backup_name() {
                Some(name) => entries.push(Entry {
                    name,
                    file: s.as_file(),
                    unreadable: Some(s.reason),
                }),
                None => skipped.push(s),
            }
        }
        for file in listing.files {
            match BackupName::parse(&file.name) {
                Some(name) => entries.push(Entry {
                    name,
                    file,
                    unreadable: None,
                }),
                None => foreign.push(file),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        foreign.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Catalog {
            store,
            keys,
            entries,
            foreign,
            skipped,
            first_ours: OnceCell::new(),
        })
    }

    /// Why a file not taken as a backup is skipped, when its name is shaped
    /// like a backup's ([`NameCheck::Refused`]).
    pub(crate) fn note(&self, name: &str) -> Option<String> {
        match BackupName::classify(name) {
            NameCheck::Refused(reason) => Some(reason),
            _ => None,
        }
    }

    /// Reads a file's header from its first bytes (a ranged read): kind,
    /// timestamp and dictdb section. The checksum is not checked. A
    /// compressed or encrypted file's first bytes are decompressed and
    /// decrypted (age decrypts whole 64 KiB chunks: an encrypted file's
    /// first chunk is read).
    pub(crate) async fn header(&self, e: &Entry) -> Result<Header> {
        let format = e.format()?;
        let layers = e.layers();
        let size = e.file.size;
        let probe = if layers.age {
            AGE_HEADER_PROBE
        } else {
            HEADER_PROBE
        };
        e.readable()?;
        let mut len = probe.min(size);
        loop {
            let prefix = if len == 0 {
                Vec::new()
            } else {
                self.store.read_range(e.file_name(), 0..len).await?
            };
            let complete = (prefix.len() as u64) < len || len >= size;
            let name = e.file_name();
            let found = if layers.is_plain() {
                decode_header(&prefix, complete, format, name)?
            } else {
                let keys = self.keys.clone();
                let file = name.to_string();
                let max = HEADER_MAX as usize;
                // Decompressing and decrypting take CPU: off the async threads.
                let plain = tokio::task::spawn_blocking(move || {
                    plain_prefix(prefix, complete, layers, &keys, &file, max)
                })
                .await
                .map_err(|err| Error::corrupt(name, format!("header task failed: {err}")))?;
                match plain {
                    Prefix::NeedMore => None,
                    Prefix::Plain(text, whole) => decode_header(&text, whole, format, name)?,
                    Prefix::Failed(text, err) => match decode_header(&text, false, format, name) {
                        Ok(Some(h)) => Some(h),
                        _ => return Err(err),
                    },
                }
            };
            if let Some(h) = found {
                return Ok(h);
            }
            if complete {
                return Err(Error::corrupt(
                    name,
                    "the file ends before its header does (truncated?)",
                ));
            }
            if len >= HEADER_MAX {
                return Err(Error::corrupt(
                    e.file_name(),
                    format!("no header within the first {HEADER_MAX} bytes"),
                ));
            }
            len = (len * 16).min(size).min(HEADER_MAX);
        }
    }

    /// The first file of ours, in write order (headers are read in order
    /// until one carries dictdb metadata; unreadable ones are passed over).
    async fn first_ours(&self) -> Option<&BackupName> {
        self.first_ours
            .get_or_init(|| async {
                for e in &self.entries {
                    if let Ok(h) = self.header(e).await {
                        if h.meta.is_some() {
                            return Some(e.name.clone());
                        }
                    }
                }
                None
            })
            .await
            .as_ref()
    }

    /// Whether an unverified file (no checksum, no dictdb section) may be
    /// trusted as one of the Python original's: only when no file of ours
    /// comes before it in the store, or when the caller said so. A file of
    /// ours damaged in a single byte never looks unverified (see the codec);
    /// this guards against worse damage in a store this library writes to.
    pub(crate) async fn unverified_allowed(&self, e: &Entry, allow: bool) -> Result<()> {
        if allow {
            return Ok(());
        }
        let Some(first) = self.first_ours().await.filter(|first| **first <= e.name) else {
            return Ok(());
        };
        // Allowing it only helps a file that can be the original's: a full
        // backup, or a delta after one of the original's full backups (a
        // delta of the original never extends a chain of ours).
        let option = "`dictdb-backup restore --allow-unverified`, \
                      `Restore::allow_unverified(true)`";
        let advice = match e.kind() {
            BackupKind::Full => format!("if it is one: {option}"),
            BackupKind::Delta if self.original_full_between(first, &e.name).await => {
                format!("if it is one, after the original's full backup: {option}")
            }
            BackupKind::Delta => "nor a delta of the original: those only follow a full \
                                  backup of the original, and none comes between dictdb's \
                                  files and this one"
                .to_string(),
        };
        Err(Error::corrupt(
            e.file_name(),
            format!(
                "carries no checksum, but {first} and later files of this store were written \
                 by dictdb: a damaged file cannot be told from one written by the Python \
                 original ({advice})"
            ),
        ))
    }

    /// Whether a full backup without dictdb metadata (the original's) lies
    /// between `from` (included) and `to` in write order.
    async fn original_full_between(&self, from: &BackupName, to: &BackupName) -> bool {
        for f in self
            .entries
            .iter()
            .filter(|f| f.kind() == BackupKind::Full && *from <= f.name && f.name < *to)
        {
            if matches!(self.header(f).await, Ok(h) if h.meta.is_none()) {
                return true;
            }
        }
        false
    }

    /// Indices of the full backups, oldest first.
    pub(crate) fn fulls(&self) -> impl DoubleEndedIterator<Item = usize> + '_ {
        (0..self.entries.len()).filter(|&i| self.entries[i].kind() == BackupKind::Full)
    }

    /// The deltas of the chain that starts at the full backup `base`: every
    /// delta after it, up to the next full backup of a later time. Full
    /// backups with the same time in their names are *twins* (`x.json`
    /// beside a `x.json.zst` made by running `zstd` on it, or a `.msgpack`
    /// copy): the deltas after them belong to all of them, and each delta
    /// names the one it builds on (see [`fulls_to_try`](Self::fulls_to_try)).
    pub(crate) fn chain_deltas(&self, base: usize) -> std::ops::Range<usize> {
        let stamp = self.entries[base].name.stamp();
        let start = (base + 1..self.entries.len())
            .find(|&i| {
                self.entries[i].kind() != BackupKind::Full || self.entries[i].name.stamp() != stamp
            })
            .unwrap_or(self.entries.len());
        let end = (start..self.entries.len())
            .find(|&i| self.entries[i].kind() == BackupKind::Full)
            .unwrap_or(self.entries.len());
        start..end
    }

    /// The full backups, newest first, in the order a restore tries them:
    /// of twins (full backups with the same time in their names), the one the first delta after
    /// them names as its base comes first (its header is read, only when
    /// there are twins), then the others newest name first.
    pub(crate) async fn fulls_to_try(&self) -> Vec<usize> {
        let fulls: Vec<usize> = self.fulls().rev().collect();
        let mut out = Vec::with_capacity(fulls.len());
        let mut k = 0;
        while k < fulls.len() {
            let stamp = self.entries[fulls[k]].name.stamp();
            let mut group = vec![fulls[k]];
            while k + group.len() < fulls.len()
                && self.entries[fulls[k + group.len()]].name.stamp() == stamp
            {
                group.push(fulls[k + group.len()]);
            }
            k += group.len();
            if group.len() > 1 {
                if let Some(first) = self.chain_deltas(group[0]).next() {
                    if let Ok(h) = self.header(&self.entries[first]).await {
                        let named = h.meta.as_ref().and_then(|m| m.base.clone());
                        if let Some(pos) = group
                            .iter()
                            .position(|&i| Some(self.entries[i].file_name()) == named.as_deref())
                        {
                            let chosen = group.remove(pos);
                            group.insert(0, chosen);
                        }
                    }
                }
            }
            out.extend(group);
        }
        out
    }

    /// Deltas before the first full backup: they belong to no chain.
    pub(crate) fn orphans(&self) -> std::ops::Range<usize> {
        let end = self.fulls().next().unwrap_or(self.entries.len());
        0..end
    }
}

/// A file's content must name it: version 2 files carry the name they were
/// written under, so a copy or rename is never taken for what its name says.
pub(crate) fn check_identity(e: &Entry, header: &Header) -> Result<()> {
    if header.kind != e.kind() {
        return Err(Error::corrupt(
            e.file_name(),
            format!("named as a {} but holds a {}", e.kind(), header.kind),
        ));
    }
    let Some(meta) = &header.meta else {
        return Ok(());
    };
    if meta.version < 2 {
        return Ok(());
    }
    match &meta.name {
        Some(n) if n == e.file_name() => Ok(()),
        Some(n) => Err(Error::corrupt(
            e.file_name(),
            format!("written as {n}: a renamed or copied file is not what its name says"),
        )),
        None => Err(Error::corrupt(
            e.file_name(),
            "carries no name: it cannot be told from a renamed or copied file",
        )),
    }
}

/// Where a chain stands: the base it started from and the cut reached.
#[derive(Clone, Debug)]
pub(crate) struct Cursor {
    /// File name of the full backup the chain starts from.
    pub(crate) base: String,
    /// Whether that backup records sequence numbers (written by dictdb).
    pub(crate) has_seq: bool,
    /// The cut reached so far.
    pub(crate) seq: Option<u64>,
    /// Whether every file so far carried a matching checksum.
    pub(crate) verified: bool,
    /// The first lease fencing token the chain's files carry, and the file
    /// that carries it: every later token must equal it.
    pub(crate) token: Option<(u64, String)>,
}

impl Cursor {
    pub(crate) fn start(base: &Entry, header: &Header) -> Cursor {
        Cursor {
            base: base.file_name().to_string(),
            has_seq: header.meta.is_some(),
            seq: header.meta.as_ref().map(|m| m.seq),
            verified: true,
            token: header
                .meta
                .as_ref()
                .and_then(|m| m.fencing_token)
                .map(|t| (t, base.file_name().to_string())),
        }
    }

    /// Checks that `e` was written under the lease holding that wrote the
    /// chain so far: two fencing tokens in one chain are two writers.
    fn check_token(&self, e: &Entry, header: &Header) -> Result<()> {
        let token = header.meta.as_ref().and_then(|m| m.fencing_token);
        match (token, &self.token) {
            (Some(t), Some((first, file))) if t != *first => Err(Error::chain(
                e.file_name(),
                format!(
                    "was written under lease fencing token {t} but {file} of the same chain under \
                     token {first}: two writers wrote to this chain (restore up to the file \
                     before it, or from another chain)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Records the token of a delta that continues the chain.
    pub(crate) fn note_token(&mut self, e: &Entry, header: &Header) {
        if self.token.is_none() {
            self.token = header
                .meta
                .as_ref()
                .and_then(|m| m.fencing_token)
                .map(|t| (t, e.file_name().to_string()));
        }
    }

    /// Checks that the delta `e` continues the chain.
    pub(crate) fn check_link(&self, e: &Entry, header: &Header) -> Result<()> {
        self.check_token(e, header)?;
        let name = e.file_name();
        match (&header.meta, self.has_seq) {
            (Some(m), true) => {
                if m.base.as_deref() != Some(self.base.as_str()) {
                    return Err(Error::chain(
                        name,
                        format!(
                            "builds on {} but the chain starts at {} (a full backup is missing, \
                             or the file belongs to another chain)",
                            m.base.as_deref().unwrap_or("nothing"),
                            self.base
                        ),
                    ));
                }
                let current = self.seq.unwrap_or(0);
                let from = m.from_seq.unwrap_or(0);
                if from > current {
                    return Err(Error::chain(
                        name,
                        format!(
                            "starts after sequence {from} but the chain is at {current}: \
                             a delta is missing (changes {}..={from} are lost)",
                            current + 1
                        ),
                    ));
                }
                if from < current {
                    return Err(Error::chain(
                        name,
                        format!(
                            "starts after sequence {from} but the chain is already at {current}: \
                             duplicated or overlapping delta"
                        ),
                    ));
                }
                Ok(())
            }
            (Some(_), false) => Err(Error::chain(
                name,
                "a dictdb delta after a full backup without sequence numbers: the chain is mixed",
            )),
            (None, true) => Err(Error::chain(
                name,
                "a delta without sequence numbers in a dictdb chain: the chain is mixed",
            )),
            (None, false) => Ok(()),
        }
    }

    /// Moves past a delta that was checked and applied.
    pub(crate) fn advance(&mut self, e: &Entry, header: &Header, integrity: &Integrity) {
        self.note_token(e, header);
        if let Some(m) = &header.meta {
            self.seq = Some(m.seq);
        }
        self.verified &= integrity.is_verified();
    }
}

/// A name's time as a `SystemTime`.
pub(crate) fn name_time(n: &BackupName) -> SystemTime {
    UNIX_EPOCH + std::time::Duration::new(n.secs, n.micros.saturating_mul(1000))
}
