//! Exit codes and the errors that end a command.

use std::process::ExitCode;

use dictdb::{BackupKind, BackupName, BackupStore, DecryptFailure, Error};
use jiff::Timestamp;
use serde::Serialize;

use crate::time;

/// The exit codes, stable: scripts rely on them. `--help` lists them
/// ([`EXIT_CODES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Done, and everything was sound.
    Ok = 0,
    /// Backup data is damaged: a file, a broken chain, a failed verify.
    Damaged = 1,
    /// Usage, configuration or I/O error (including missing credentials).
    Usage = 2,
    /// No such directory, file or bucket.
    NotFound = 3,
    /// No backups: none in the store, or none within `--until`/`--until-seq`.
    NoBackups = 4,
    /// A `--lenient` restore that left files out (it says which).
    Incomplete = 5,
    /// The store did not answer (network error, timeout, server error)
    /// after the retries: nothing is known about the backups.
    Unavailable = 6,
}

/// The exit codes as `--help` shows them.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0  done, and everything was sound
  1  backup data is damaged: a damaged file, a broken chain (also: only
     deltas, or no full backup that is not damaged), verify failed
  2  usage, configuration or I/O error (also: missing object-store credentials)
  3  not found: no such directory, file or bucket
  4  no backups: none in the store, or none at or before --until / --until-seq
  5  a --lenient restore left files out (it prints which and why)
  6  the store did not answer (network error, timeout, server error) after
     its retries: the backups may be sound; try again (see --timeout)";

impl Exit {
    pub(crate) fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// An error that ends a command: what to print and how to exit.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CliError {
    /// A stable machine name: `usage`, `not_found`, `no_backups`,
    /// `damaged`, `checksum_mismatch`, `broken_chain`, `unsupported`,
    /// `not_a_backup`, `credentials`, `store`, `store_unavailable`, `io`,
    /// `config`.
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    /// The file (or directory, or object) it is about, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) file: Option<String>,
    #[serde(skip)]
    pub(crate) exit: Exit,
}

impl CliError {
    pub(crate) fn new(exit: Exit, kind: &'static str, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            file: None,
            exit,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> CliError {
        CliError::new(Exit::Usage, "usage", message)
    }

    pub(crate) fn not_found(file: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError::new(Exit::NotFound, "not_found", message).about(file)
    }

    pub(crate) fn about(mut self, file: impl Into<String>) -> CliError {
        self.file = Some(file.into());
        self
    }

    /// Adds advice after the message.
    pub(crate) fn hint(mut self, hint: &str) -> CliError {
        self.message = format!("{}; {hint}", self.message);
        self
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        let message = e.to_string();
        let (exit, kind, file) = match &e {
            Error::Chain { file, .. } => (Exit::Damaged, "broken_chain", Some(file.clone())),
            Error::Corrupt { file, .. } => (Exit::Damaged, "damaged", Some(file.clone())),
            Error::ChecksumMismatch { file, .. } => {
                (Exit::Damaged, "checksum_mismatch", Some(file.clone()))
            }
            Error::UnsupportedFormat { name, .. } => {
                (Exit::Damaged, "unsupported", Some(name.clone()))
            }
            Error::NoBackup(_) => (Exit::NoBackups, "no_backups", None),
            Error::Io { path, .. } | Error::Sync { path, .. } => {
                (Exit::Usage, "io", Some(path.clone()))
            }
            Error::Store { path, message } if no_such_bucket(message) => {
                (Exit::NotFound, "not_found", Some(path.clone()))
            }
            Error::Store { path, .. } => (Exit::Usage, "store", Some(path.clone())),
            Error::StoreUnavailable { path, .. } => {
                (Exit::Unavailable, "store_unavailable", Some(path.clone()))
            }
            Error::Config(_) => (Exit::Usage, "config", None),
            Error::Decrypt { file, kind, .. } => match kind {
                DecryptFailure::MissingIdentity => (Exit::Usage, "no_identity", Some(file.clone())),
                DecryptFailure::WrongIdentity => {
                    (Exit::Usage, "wrong_identity", Some(file.clone()))
                }
                _ => (Exit::Damaged, "damaged", Some(file.clone())),
            },
            _ => (Exit::Usage, "error", None),
        };
        let message = if kind == "not_found" && matches!(e, Error::Store { .. }) {
            format!("no such bucket: {message}")
        } else if kind == "store_unavailable" {
            format!(
                "{message}; the backups may be sound: nothing was skipped, even with --lenient; \
                 try again, or allow more time with --timeout"
            )
        } else {
            message
        };
        CliError {
            kind,
            message,
            file,
            exit,
        }
    }
}

/// Whether an object store's message says the bucket does not exist.
fn no_such_bucket(message: &str) -> bool {
    message.contains("NoSuchBucket") || message.contains("bucket does not exist")
}

impl From<std::fmt::Error> for CliError {
    fn from(_: std::fmt::Error) -> CliError {
        CliError::new(Exit::Usage, "io", "formatting the output failed")
    }
}

/// "no backups here": a store with no backup file (`others` other files).
pub(crate) fn no_backups(location: &str, others: usize) -> CliError {
    no_backups_noting(location, others, None)
}

/// [`no_backups`], naming one skipped entry and why (a name shaped like a
/// backup's that is not trusted, a key no plain name addresses).
pub(crate) fn no_backups_noting(
    location: &str,
    others: usize,
    skipped: Option<(&str, &str)>,
) -> CliError {
    const RULE: &str = "(backups are named dictdb_backup_* or dictdb_delta_* with a time \
                        before 2200 and no leading zeros)";
    let what = match others {
        0 => "it is empty".to_string(),
        1 => format!("its one file is not a backup {RULE}"),
        n => format!("none of its {n} files is a backup {RULE}"),
    };
    let note = skipped
        .map(|(name, why)| format!("; skipped {}: {why}", dictdb::printable_name(name)))
        .unwrap_or_default();
    CliError::new(
        Exit::NoBackups,
        "no_backups",
        format!("{location}: no backups here: {what}{note}"),
    )
    .about(location)
}

/// Turns a failed restore into what an operator needs: "nothing was
/// backed up before T (first backup at ...)", or the damaged file and
/// what to do about it.
pub(crate) async fn explain(
    e: Error,
    store: &dyn BackupStore,
    until: Option<Timestamp>,
    until_seq: Option<u64>,
) -> CliError {
    let location = store.location();
    match &e {
        Error::NoBackup(_) => {}
        Error::Chain { file, reason }
            if until_seq.is_some() && reason.contains("sequence numbers") =>
        {
            return CliError::usage(format!(
                "{file} records no sequence numbers (written by the Python original?): \
                 give a time (--until) instead of a sequence number"
            ))
            .about(file.clone())
        }
        // Nothing to stop before: no full backup can be used.
        Error::Chain { reason, .. } | Error::Corrupt { reason, .. }
            if reason.contains("no full backup") || reason.contains("no usable full backup") =>
        {
            return CliError::from(e).hint("`verify` lists every problem")
        }
        Error::Chain { .. } | Error::Corrupt { .. } | Error::ChecksumMismatch { .. } => {
            return CliError::from(e).hint(
                "`restore --lenient` stops at the last consistent point before it; \
                 `verify` lists every problem",
            )
        }
        _ => return CliError::from(e),
    }
    // The names restore chose among: an unreadable entry named like a
    // backup keeps its place, so a full backup behind a dead link is still
    // the first backup, not the delta after it.
    let Ok(listing) = store.list_all().await else {
        return CliError::from(e);
    };
    let files = listing.with_unreadable_backups();
    let mut names: Vec<BackupName> = files
        .iter()
        .filter_map(|f| BackupName::parse(&f.name))
        .collect();
    names.sort();
    let Some(first) = names.first() else {
        let refused = files
            .iter()
            .find_map(|f| match BackupName::classify(&f.name) {
                dictdb::NameCheck::Refused(why) => Some((f.name.as_str(), why)),
                _ => None,
            });
        return no_backups_noting(
            &location,
            files.len(),
            refused.as_ref().map(|(n, why)| (*n, why.as_str())),
        );
    };
    let first_full = names.iter().find(|n| n.kind == BackupKind::Full);
    let at = |n: &BackupName| time::of_name(n).map_or_else(|| "-".to_string(), time::format);
    let message = match (until, first_full) {
        (Some(t), _) if time::of_name(first).is_some_and(|f| f > t) => format!(
            "{location}: nothing was backed up before {} (first backup at {}: {first})",
            time::format(t),
            at(first)
        ),
        (Some(t), Some(full)) if time::of_name(full).is_some_and(|f| f > t) => format!(
            "{location}: no full backup before {} (first full backup at {}: {full}); \
             the deltas before it have nothing to apply to",
            time::format(t),
            at(full)
        ),
        // Deltas whose full backup is gone: a broken chain, as verify
        // says (exit 1), not an empty store.
        (_, None) => {
            let base = e
                .to_string()
                .split_once(", which builds on ")
                .and_then(|(_, b)| b.split_once(", not in the store"))
                .map(|(b, _)| b.to_string());
            let builds_on = base.map_or_else(String::new, |b| {
                format!(", which builds on {b}: not in the store")
            });
            return CliError::new(
                Exit::Damaged,
                "broken_chain",
                format!(
                    "{location}: only deltas, no full backup to apply them to (the first, \
                     at {}: {first}{builds_on}); `verify` lists every problem",
                    at(first)
                ),
            )
            .about(first.to_string());
        }
        _ => match until_seq {
            Some(seq) => format!(
                "{location}: no full backup at or before sequence {seq} \
                 (run `dictdb-backup list` for the sequence ranges)"
            ),
            None => e.to_string(),
        },
    };
    CliError::new(Exit::NoBackups, "no_backups", message).about(location)
}
