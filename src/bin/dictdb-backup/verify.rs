//! `verify`: every file read whole and every chain restored the way a
//! restore would, reported file by file and chain by chain. Exit 1 when
//! any backup file or chain is unsound.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use dictdb::restore::{ChainReport, FileReport};
use dictdb::{BackupKind, Error, Integrity};
use serde::Serialize;

use crate::error::{no_backups_noting, CliError, Exit};
use crate::output::{about, columns, plural, size, Output};
use crate::progress::Progress;
use crate::report::{kind, names, SeqRange, TableCount};
use crate::{store, time};

#[derive(Serialize)]
struct VerifyReport {
    store: String,
    ok: bool,
    files: Vec<Checked>,
    chains: Vec<Chain>,
    problems: Vec<Problem>,
    counts: Counts,
}

/// One file, read whole and checked (also what `inspect` reports).
#[derive(Serialize)]
pub(crate) struct Checked {
    pub(crate) name: String,
    pub(crate) kind: Option<&'static str>,
    pub(crate) time: Option<String>,
    pub(crate) timestamp: Option<f64>,
    pub(crate) seq: Option<SeqRange>,
    pub(crate) tables: Option<Vec<TableCount>>,
    /// Records in a full backup.
    pub(crate) records: Option<u64>,
    /// Upserts plus deletes in a delta.
    pub(crate) changes: Option<u64>,
    pub(crate) size: u64,
    /// `verified`, `unverified` (no checksum: the Python original's),
    /// `damaged`, `unsupported`, `unreadable`, `ignored` or `skipped`
    /// (named like a backup but not trusted, or an object key no plain
    /// name addresses: see `note`).
    pub(crate) status: &'static str,
    /// Why an entry is skipped.
    pub(crate) note: Option<String>,
    pub(crate) checksum: Option<String>,
    pub(crate) error: Option<String>,
}

#[derive(Serialize)]
struct Chain {
    /// The full backup it starts from (`None`: deltas before any full backup).
    base: Option<String>,
    files: Vec<String>,
    ok: bool,
    seq: Option<u64>,
    error: Option<String>,
    /// The chain a restore uses (the newest with a full backup).
    restore_uses: bool,
}

#[derive(Serialize)]
struct Problem {
    file: String,
    error: String,
}

#[derive(Serialize, Default)]
struct Counts {
    verified: usize,
    unverified: usize,
    bad: usize,
    ignored: usize,
}

pub(crate) async fn run(
    dir: &Path,
    python: &crate::keys::PythonArgs,
    out: Output,
) -> Result<Exit, CliError> {
    let store = store::open(dir)?;
    let progress = Progress::start("verifying", None);
    let opts = python.apply(crate::keys::restore(progress.meter(Arc::clone(&store))));
    let report = opts.verify().await;
    progress.finish();
    let report = report?;
    if !report.files.iter().any(|f| f.kind.is_some()) {
        let note = report
            .files
            .iter()
            .find_map(|f| Some((f.name.as_str(), f.note.as_deref()?)));
        return Err(no_backups_noting(
            &store.location(),
            report.files.len(),
            note,
        ));
    }
    let ok = report.is_ok();
    // Every problem is a store that did not answer: nothing is known to be
    // damaged, and the answer is to try again, not to repair.
    let errors = report
        .files
        .iter()
        .filter_map(|f| f.status.as_ref().err())
        .chain(report.chains.iter().filter_map(|c| c.result.as_ref().err()));
    let mut unanswered = false;
    let mut damaged = false;
    for e in errors {
        match e {
            Error::StoreUnavailable { .. } => unanswered = true,
            _ => damaged = true,
        }
    }
    let newest = report.newest_chain().and_then(|c| c.base.clone());
    let files: Vec<Checked> = report.files.iter().map(Checked::of).collect();
    let chains: Vec<Chain> = report
        .chains
        .iter()
        .map(|c| Chain::of(c, c.base.is_some() && c.base == newest))
        .collect();
    let mut problems: Vec<Problem> = files
        .iter()
        .filter_map(|f| {
            f.error.as_ref().map(|e| Problem {
                file: f.name.clone(),
                error: e.clone(),
            })
        })
        .collect();
    for (c, r) in chains.iter().zip(&report.chains) {
        if let Err(e) = &r.result {
            let file = chain_file(e).unwrap_or_else(|| c.base.clone().unwrap_or_default());
            if !problems.iter().any(|p| p.file == file) {
                problems.push(Problem {
                    error: about(e, &file),
                    file,
                });
            }
        }
    }
    let mut counts = Counts::default();
    for f in &files {
        match f.status {
            "verified" => counts.verified += 1,
            "unverified" => counts.unverified += 1,
            "ignored" | "skipped" => counts.ignored += 1,
            _ => counts.bad += 1,
        }
    }
    let report = VerifyReport {
        store: dictdb::printable_name(&store.location()),
        ok,
        files,
        chains,
        problems,
        counts,
    };
    out.report(&report)?;
    if ok {
        return Ok(Exit::Ok);
    }
    if unanswered && !damaged {
        out.warn(&format!(
            "verify incomplete: {} did not answer for some files (after its retries); \
             nothing was found damaged: try again, or allow more time with --timeout",
            report.store
        ));
        return Ok(Exit::Unavailable);
    }
    out.warn(&format!(
        "verify failed: {} in {}",
        plural(report.problems.len() as u64, "problem", "problems"),
        report.store
    ));
    Ok(Exit::Damaged)
}

/// The file an error is about.
fn chain_file(e: &Error) -> Option<String> {
    match e {
        Error::Chain { file, .. }
        | Error::Corrupt { file, .. }
        | Error::ChecksumMismatch { file, .. } => Some(file.clone()),
        _ => None,
    }
}

impl Checked {
    pub(crate) fn of(r: &FileReport) -> Checked {
        let (status, checksum, error) = match (&r.kind, &r.status) {
            (None, Ok(_)) if r.note.is_some() => ("skipped", None, None),
            (None, Ok(_)) => ("ignored", None, None),
            (_, Ok(Integrity::Verified(sum))) => ("verified", Some(sum.clone()), None),
            (_, Ok(_)) => ("unverified", None, None),
            (_, Err(e)) => {
                let status = match e {
                    Error::UnsupportedFormat { .. } => "unsupported",
                    Error::Io { .. } | Error::Store { .. } | Error::StoreUnavailable { .. } => {
                        "unreadable"
                    }
                    _ => "damaged",
                };
                (status, None, Some(about(e, &r.name)))
            }
        };
        let readable = r.kind.is_some() && r.status.is_ok();
        let delta = r.kind == Some(BackupKind::Delta);
        let t = time::of_file(&r.name).or_else(|| {
            r.timestamp
                .and_then(|s| jiff::Timestamp::from_microsecond((s * 1e6).round() as i64).ok())
        });
        Checked {
            name: r.name.clone(),
            kind: r.kind.map(|k| kind(Some(k))),
            time: t.map(time::format),
            timestamp: t.map(time::unix),
            seq: SeqRange::of(r.seq),
            tables: readable.then(|| r.tables.iter().map(|t| TableCount::of(r.kind, t)).collect()),
            records: (readable && !delta).then_some(r.records),
            changes: (readable && delta).then_some(r.records),
            size: r.size,
            status,
            checksum,
            error,
            note: r.note.clone(),
        }
    }

    /// The checksum column: `verified`, `unverified`, `DAMAGED: why`, ...
    pub(crate) fn verdict(&self) -> String {
        match (self.status, &self.error) {
            ("ignored", _) => "ignored (not a backup)".into(),
            ("skipped", _) => format!("SKIPPED: {}", self.note.as_deref().unwrap_or_default()),
            ("unverified", _) => "unverified (no checksum: Python original)".into(),
            (s, Some(e)) => format!("{}: {e}", s.to_uppercase()),
            (s, None) => s.into(),
        }
    }

    fn row(&self) -> Vec<String> {
        let content = match (self.records, self.changes) {
            (Some(n), _) => plural(n, "record", "records"),
            (_, Some(n)) => plural(n, "change", "changes"),
            _ => "-".into(),
        };
        vec![
            dictdb::printable_name(&self.name),
            self.kind.unwrap_or("-").into(),
            self.time.clone().unwrap_or_else(|| "-".into()),
            SeqRange::show(self.seq),
            self.tables
                .as_deref()
                .map_or_else(|| "-".into(), |t| names(t, 3)),
            content,
            size(self.size),
            self.verdict(),
        ]
    }
}

impl Chain {
    fn of(c: &ChainReport, restore_uses: bool) -> Chain {
        Chain {
            base: c.base.clone(),
            files: c.files.clone(),
            ok: c.result.is_ok(),
            seq: c.result.as_ref().ok().copied().flatten(),
            error: c.result.as_ref().err().map(Error::to_string),
            restore_uses,
        }
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "FILE",
            "KIND",
            "TIME (UTC)",
            "SEQ",
            "TABLES",
            "CONTENT",
            "SIZE",
            "CHECKSUM",
        ];
        let mut rows = vec![header.map(String::from).to_vec()];
        rows.extend(self.files.iter().map(Checked::row));
        columns(f, &rows)?;
        for (i, c) in self.chains.iter().enumerate() {
            let deltas = c.files.len().saturating_sub(usize::from(c.base.is_some()));
            let what = match &c.base {
                Some(base) => format!("{base} + {}", plural(deltas as u64, "delta", "deltas")),
                None => format!(
                    "{} before any full backup",
                    plural(deltas as u64, "delta", "deltas")
                ),
            };
            let verdict = match (&c.error, c.seq) {
                (Some(e), _) => format!("BROKEN: {e}"),
                (None, Some(seq)) => format!("OK, restores to sequence {seq}"),
                (None, None) => "OK (no sequence numbers: Python original)".into(),
            };
            let used = if c.restore_uses {
                " [restore uses this chain]"
            } else {
                ""
            };
            writeln!(f, "chain {}: {what}: {verdict}{used}", i + 1)?;
        }
        let n = &self.counts;
        writeln!(
            f,
            "files: {} verified, {} unverified, {} unusable, {} ignored",
            n.verified, n.unverified, n.bad, n.ignored
        )?;
        if n.unverified > 0 {
            writeln!(
                f,
                "note: unverified files carry no checksum (the Python original writes none): \
                 they parse, but their bytes cannot be vouched for"
            )?;
        }
        if self.ok {
            return writeln!(f, "OK");
        }
        writeln!(
            f,
            "FAILED: {}:",
            plural(self.problems.len() as u64, "problem", "problems")
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {}", p.file, p.error)?;
        }
        Ok(())
    }
}
