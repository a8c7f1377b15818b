//! Backup file names: `dictdb_backup_<secs>_<micros>.<ext>` and
//! `dictdb_delta_<secs>_<micros>.<ext>`, as the Python original names them;
//! `<ext>` is the format (`json`, `msgpack`), then `.zst` when compressed,
//! then `.age` when encrypted (compression comes before encryption).

use std::cmp::Ordering;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::format::FileFormat;

/// The end of the times a backup name may carry: 2200-01-01T00:00:00Z, in
/// seconds since the Unix epoch. Names at or after it are refused (see
/// [`BackupName::classify`]): no clock wrote them, and one would sort after
/// every real backup. The range is 1970-01-01 (0) up to this; an early
/// time pushes nothing (it sorts first), a late one would push every later
/// name, and this bound keeps the writer's arithmetic on names far from
/// overflow.
pub const LATEST_SECS: u64 = 7_258_118_400;

/// What [`BackupName::classify`] makes of a file name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NameCheck {
    /// A backup file name.
    Backup(BackupName),
    /// Not named like a backup file (notes, other tools' files): ignored.
    Other,
    /// Named like a backup file, but not trusted: never ordered, restored
    /// or deleted, and reported with this reason.
    Refused(String),
}

/// A name as it may be printed: control characters (a newline, an escape
/// sequence) escaped the way Rust escapes them (`\n`, `\u{1b}`), the rest
/// unchanged, so a hostile file name cannot forge or hide output lines.
/// Escaping an escaped name changes nothing.
///
/// ```
/// assert_eq!(dictdb::printable_name("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
/// let once = dictdb::printable_name("a\u{1}b");
/// assert_eq!(dictdb::printable_name(&once), once);
/// assert_eq!(dictdb::printable_name("dictdb_backup_1_000001.json"), "dictdb_backup_1_000001.json");
/// ```
pub fn printable_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

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
    /// Parses a file name; `None` if it is not a backup file name, or one
    /// [`classify`](Self::classify) refuses (a timestamp outside
    /// 0..[`LATEST_SECS`] or with leading zeros).
    pub fn parse(name: &str) -> Option<BackupName> {
        match BackupName::classify(name) {
            NameCheck::Backup(n) => Some(n),
            NameCheck::Other | NameCheck::Refused(_) => None,
        }
    }

    /// Parses a file name and says why one shaped like a backup name is not
    /// trusted: its seconds have leading zeros (the name this library would
    /// write for that time is another one, so deleting "it" would delete
    /// nothing, and two names would claim one time), or they lie outside
    /// 0..[`LATEST_SECS`] (no clock wrote them; a name far
    /// in the future would sort after every real backup, pass for the
    /// newest one and push the writer's next names past it).
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::{BackupName, NameCheck};
    ///
    /// assert!(matches!(
    ///     BackupName::classify("dictdb_backup_1795682694_732481.json"),
    ///     NameCheck::Backup(_)
    /// ));
    /// assert!(matches!(BackupName::classify("notes.txt"), NameCheck::Other));
    /// for refused in [
    ///     "dictdb_backup_18446744073709551615_999999.json",
    ///     "dictdb_backup_99999999999999999999999_000000.json",
    ///     "dictdb_backup_7258118400_000000.json",
    ///     "dictdb_backup_01795682694_732481.json",
    /// ] {
    ///     assert!(matches!(BackupName::classify(refused), NameCheck::Refused(_)), "{refused}");
    /// }
    /// ```
    pub fn classify(name: &str) -> NameCheck {
        let (kind, rest) = if let Some(r) = name.strip_prefix("dictdb_backup_") {
            (BackupKind::Full, r)
        } else if let Some(r) = name.strip_prefix("dictdb_delta_") {
            (BackupKind::Delta, r)
        } else {
            return NameCheck::Other;
        };
        let Some((stamp, ext)) = rest.split_once('.') else {
            return NameCheck::Other;
        };
        let Some((secs, micros)) = stamp.split_once('_') else {
            return NameCheck::Other;
        };
        if secs.is_empty()
            || micros.len() != 6
            || !secs
                .bytes()
                .chain(micros.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return NameCheck::Other;
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
            other => match FileFormat::from_extension(other) {
                Some(f) => NameFormat::Supported(f),
                None => return NameCheck::Other,
            },
        };
        if secs.len() > 1 && secs.starts_with('0') {
            return NameCheck::Refused(format!(
                "named like a backup, but its seconds have leading zeros ({secs}): \
                 not a name dictdb writes, so it is neither ordered nor deleted"
            ));
        }
        let secs = match secs.parse::<u64>() {
            Ok(s) if s < LATEST_SECS => s,
            _ => {
                return NameCheck::Refused(format!(
                    "named like a backup, but its time ({secs} s since 1970) is outside \
                     1970-01-01..2200-01-01: no clock wrote it, so it is neither ordered nor deleted"
                ))
            }
        };
        let Ok(micros) = micros.parse() else {
            return NameCheck::Other;
        };
        NameCheck::Backup(BackupName {
            kind,
            secs,
            micros,
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
        // Only names `classify` accepts come here; anything else could push
        // every later name towards overflow.
        if stamp.0 >= LATEST_SECS {
            return;
        }
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
                // Saturating: `observe` keeps `last` far below u64::MAX,
                // but arithmetic on names must not be able to overflow.
                stamp = if last.1 >= 999_999 {
                    (last.0.saturating_add(1), 0)
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
        n.observe((4_000_000_000, 999_999));
        let x = n.next(
            BackupKind::Full,
            FileFormat::MessagePack,
            crate::format::Layers::default(),
        );
        assert_eq!(x.stamp(), (4_000_000_001, 0));
        assert_eq!(BackupName::parse(&x.to_string()), Some(x));
        // Stamps no accepted name carries are not observed: the largest one
        // neither overflows nor wraps the next name to 0.
        let mut n = Namer::default();
        n.observe((u64::MAX, 999_999));
        let y = n.next(
            BackupKind::Full,
            FileFormat::Json,
            crate::format::Layers::default(),
        );
        assert!(y.secs < LATEST_SECS && y.secs > 1_700_000_000, "{y}");
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
