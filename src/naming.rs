//! Backup file names: `dictdb_backup_<secs>_<micros>.<ext>` and
//! `dictdb_delta_<secs>_<micros>.<ext>`, as the Python original names them;
//! `<ext>` is the format (`json`, `msgpack`), then `.zst` when compressed,
//! then `.age` when encrypted (compression comes before encryption).

use std::cmp::Ordering;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::format::FileFormat;

/// Full backup or delta: the one spelling of a file's kind, in names,
/// documents and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BackupKind {
    /// A full backup: every table and record.
    #[default]
    Full,
    /// A delta: the changes since the previous backup.
    Delta,
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupKind::Full => "full",
            BackupKind::Delta => "delta",
        })
    }
}

/// The extension of a backup file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameFormat {
    /// A format this crate reads and writes.
    Supported(FileFormat),
    /// `.pickle`, written by the Python original: recognised, not readable.
    Pickle,
}

/// A parsed backup file name.
///
/// Names order by their timestamp, which is also the order they were written
/// in (the writer never reuses or goes back on a timestamp).
///
/// The extension chain is the format, then `.zst` for a compressed file,
/// then `.age` for an encrypted one, in that order only (the file is
/// compressed, then the compressed stream encrypted): `.json`,
/// `.msgpack.zst`, `.json.age`, `.json.zst.age`. Pickle files are only ever
/// plain.
///
/// # Examples
///
/// ```
/// use dictdb::{BackupKind, BackupName, FileFormat, NameFormat};
///
/// let n = BackupName::parse("dictdb_delta_1795682694_732481.json").unwrap();
/// assert_eq!(n.kind, BackupKind::Delta);
/// assert_eq!((n.secs, n.micros), (1795682694, 732481));
/// assert_eq!(n.to_string(), "dictdb_delta_1795682694_732481.json");
/// assert!(BackupName::parse("notes.txt").is_none());
///
/// let z = BackupName::parse("dictdb_backup_1795682694_732481.msgpack.zst.age").unwrap();
/// assert_eq!(z.format, NameFormat::Supported(FileFormat::MessagePack));
/// assert!(z.compressed && z.encrypted);
/// assert_eq!(z.to_string(), "dictdb_backup_1795682694_732481.msgpack.zst.age");
/// // Encryption before compression is not a name this library writes.
/// assert!(BackupName::parse("dictdb_backup_1795682694_732481.json.age.zst").is_none());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackupName {
    /// Full or delta.
    pub kind: BackupKind,
    /// Seconds since the Unix epoch.
    pub secs: u64,
    /// Microseconds within the second (0..=999_999).
    pub micros: u32,
    /// The format the extension names.
    pub format: NameFormat,
    /// Whether the name ends in `.zst` (before any `.age`): the document is
    /// compressed with zstd.
    pub compressed: bool,
    /// Whether the name ends in `.age`: the (possibly compressed) document
    /// is encrypted with age.
    pub encrypted: bool,
}

impl BackupName {
    /// Parses a file name; `None` if it is not a backup file name.
    pub fn parse(name: &str) -> Option<BackupName> {
        let (kind, rest) = if let Some(r) = name.strip_prefix("dictdb_backup_") {
            (BackupKind::Full, r)
        } else if let Some(r) = name.strip_prefix("dictdb_delta_") {
            (BackupKind::Delta, r)
        } else {
            return None;
        };
        let (stamp, ext) = rest.split_once('.')?;
        let (secs, micros) = stamp.split_once('_')?;
        if secs.is_empty()
            || micros.len() != 6
            || !secs
                .bytes()
                .chain(micros.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let (ext, encrypted) = match ext.strip_suffix(".age") {
            Some(inner) => (inner, true),
            None => (ext, false),
        };
        let (ext, compressed) = match ext.strip_suffix(".zst") {
            Some(inner) => (inner, true),
            None => (ext, false),
        };
        let format = match ext {
            "pickle" | "pkl" if !compressed && !encrypted => NameFormat::Pickle,
            other => NameFormat::Supported(FileFormat::from_extension(other)?),
        };
        Some(BackupName {
            kind,
            secs: secs.parse().ok()?,
            micros: micros.parse().ok()?,
            format,
            compressed,
            encrypted,
        })
    }

    /// The timestamp as fractional seconds since the epoch.
    pub fn timestamp(&self) -> f64 {
        self.secs as f64 + f64::from(self.micros) / 1e6
    }

    /// `(secs, micros)`, the sort key.
    pub fn stamp(&self) -> (u64, u32) {
        (self.secs, self.micros)
    }
}

impl PartialOrd for BackupName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BackupName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.stamp()
            .cmp(&other.stamp())
            .then(self.kind.cmp(&other.kind))
            .then_with(|| self.to_string().cmp(&other.to_string()))
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BackupKind::Full => "backup",
            BackupKind::Delta => "delta",
        };
        let ext = match self.format {
            NameFormat::Supported(ff) => ff.extension(),
            NameFormat::Pickle => "pickle",
        };
        write!(f, "dictdb_{kind}_{}_{:06}.{ext}", self.secs, self.micros)?;
        if self.compressed {
            f.write_str(".zst")?;
        }
        if self.encrypted {
            f.write_str(".age")?;
        }
        Ok(())
    }
}

/// Hands out names whose timestamps strictly increase, even for two backups
/// in the same microsecond or a wall clock that steps back.
#[derive(Debug, Default)]
pub(crate) struct Namer {
    last: Option<(u64, u32)>,
}

impl Namer {
    /// Makes every later name sort after `stamp` (an existing file's).
    pub(crate) fn observe(&mut self, stamp: (u64, u32)) {
        if self.last.is_none_or(|l| stamp > l) {
            self.last = Some(stamp);
        }
    }

    /// The next name, for a file of `format` wrapped in `layers`.
    pub(crate) fn next(
        &mut self,
        kind: BackupKind,
        format: FileFormat,
        layers: crate::format::Layers,
    ) -> BackupName {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut stamp = (now.as_secs(), now.subsec_micros());
        if let Some(last) = self.last {
            if stamp <= last {
                stamp = if last.1 >= 999_999 {
                    (last.0 + 1, 0)
                } else {
                    (last.0, last.1 + 1)
                };
            }
        }
        self.last = Some(stamp);
        BackupName {
            kind,
            secs: stamp.0,
            micros: stamp.1,
            format: NameFormat::Supported(format),
            compressed: layers.zstd,
            encrypted: layers.age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_microsecond_still_distinct_and_ordered() {
        let mut n = Namer::default();
        let names: Vec<_> = (0..1000)
            .map(|i| {
                n.next(
                    if i % 3 == 0 {
                        BackupKind::Full
                    } else {
                        BackupKind::Delta
                    },
                    FileFormat::Json,
                    crate::format::Layers::default(),
                )
            })
            .collect();
        for w in names.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
            assert!(w[0].stamp() < w[1].stamp());
        }
        // A clock behind existing files never produces an older name.
        let mut n = Namer::default();
        n.observe((u64::MAX / 2, 999_999));
        let x = n.next(
            BackupKind::Full,
            FileFormat::MessagePack,
            crate::format::Layers::default(),
        );
        assert_eq!(x.stamp(), (u64::MAX / 2 + 1, 0));
        assert_eq!(BackupName::parse(&x.to_string()), Some(x));
    }

    #[test]
    fn parses_python_names_and_rejects_others() {
        let p = BackupName::parse("dictdb_backup_1795682694_728491.pickle").unwrap();
        assert_eq!(p.format, NameFormat::Pickle);
        for bad in [
            "dictdb_backup_1_2.json",
            "dictdb_backup_x_000001.json",
            "dictdb_backup_1_000001.txt",
            "dictdb_backup_1_000001",
            ".dictdb-tmp-1-dictdb_backup_1_000001.json",
            "dictdb_backup_1_000001.json.age.zst",
            "dictdb_backup_1_000001.json.zst.zst",
            "dictdb_backup_1_000001.zst",
            "dictdb_backup_1_000001.json.gz",
            "dictdb_backup_1_000001.pickle.zst",
            "dictdb_backup_1_000001.age",
        ] {
            assert!(BackupName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn extension_chains_round_trip() {
        for ext in [
            "json",
            "msgpack",
            "json.zst",
            "msgpack.zst",
            "json.age",
            "msgpack.age",
            "json.zst.age",
            "msgpack.zst.age",
        ] {
            let text = format!("dictdb_delta_1795682694_000007.{ext}");
            let n = BackupName::parse(&text).unwrap();
            assert_eq!(n.compressed, ext.contains(".zst"), "{ext}");
            assert_eq!(n.encrypted, ext.ends_with(".age"), "{ext}");
            assert_eq!(n.to_string(), text);
        }
        let mut namer = Namer::default();
        let layers = crate::format::Layers {
            zstd: true,
            age: true,
        };
        let n = namer.next(BackupKind::Full, FileFormat::Json, layers);
        assert!(n.to_string().ends_with(".json.zst.age"));
    }
}
