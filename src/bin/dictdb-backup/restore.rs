//! `restore`: a store (up to a time or a sequence number) into one full
//! backup file, or with `--dry-run` the plan: everything a restore does,
//! nothing written. A `--lenient` restore that left files out says which
//! and exits 5.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dictdb::restore::{Plan, PlannedFile, Restore, Restored, Stopped};
use dictdb::{BackupName, BackupStore, Error, FileFormat};
use jiff::Timestamp;
use serde::Serialize;

use crate::error::{explain, CliError, Exit};
use crate::output::{plural, size, Output};
use crate::progress::Progress;
use crate::report::{Applied, LeftOut, SeqRange};
use crate::{store, time};

/// What `restore` was asked for.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) dir: PathBuf,
    pub(crate) out: Option<PathBuf>,
    pub(crate) until: Option<Timestamp>,
    pub(crate) until_seq: Option<u64>,
    pub(crate) format: Option<FileFormat>,
    pub(crate) lenient: bool,
    pub(crate) dry_run: bool,
    /// `--allow-unverified`, `--key-field`.
    pub(crate) python: crate::keys::PythonArgs,
}

#[derive(Serialize)]
struct RestoreReport {
    store: String,
    until: Option<String>,
    until_seq: Option<u64>,
    lenient: bool,
    dry_run: bool,
    applied: Vec<Applied>,
    seq: Option<u64>,
    /// Whether every applied file carried a matching checksum (`None` in a
    /// dry run, which reports the plan only).
    verified: Option<bool>,
    /// False when a lenient restore left files out.
    complete: bool,
    skipped: Vec<LeftOut>,
    stopped: Option<LeftOut>,
    /// Backup files written after the last applied one (within the limits)
    /// that the restore did not apply.
    left_out: Vec<String>,
    out: Option<Written>,
}

#[derive(Serialize)]
struct Written {
    path: String,
    format: &'static str,
    tables: usize,
    records: u64,
    bytes: u64,
    checksum: String,
}

/// What a restore or a dry run found.
struct Outcome {
    applied: Vec<PlannedFile>,
    affected: Vec<usize>,
    seq: Option<u64>,
    skipped: Vec<Stopped>,
    stopped: Option<Stopped>,
    verified: Option<bool>,
}

impl Outcome {
    fn of_plan(p: Plan) -> Outcome {
        Outcome {
            applied: p.files,
            affected: Vec::new(),
            seq: p.seq,
            skipped: p.skipped,
            stopped: p.stopped,
            verified: p.verified,
        }
    }

    fn of_restored(r: Restored) -> Outcome {
        Outcome {
            applied: r.applied,
            affected: r.affected,
            seq: r.seq,
            skipped: r.skipped,
            stopped: r.stopped,
            verified: Some(r.verified),
        }
    }
}

pub(crate) async fn run(req: Request, out: Output) -> Result<Exit, CliError> {
    let target = match (&req.out, req.dry_run) {
        (_, true) => None,
        (Some(path), false) => {
            let (path, by_name) = check_out(path, &req.dir)?;
            let format = out_format(&path, req.format, by_name)?;
            Some((path, format))
        }
        (None, false) => {
            return Err(CliError::usage(
                "restore needs --out FILE, or --dry-run to see the plan",
            ))
        }
    };
    let store = store::open(&req.dir)?;
    let progress = Progress::start("restoring", None);
    let opts = options(&req, progress.meter(Arc::clone(&store)));
    if progress.visible() {
        if let Ok(plan) = opts.quick_plan().await {
            progress.set_total(plan.files.iter().map(|f| f.size).sum());
        }
    }
    let result = match &target {
        None => opts.plan().await.map(|p| (Outcome::of_plan(p), None)),
        Some((path, format)) => restore_to(&opts, path, *format).await,
    };
    progress.finish();
    let (outcome, written) = match result {
        Ok(done) => done,
        Err(e) => return Err(explain(e, &*store, req.until, req.until_seq).await),
    };
    let report = report(&req, &*store, outcome, written).await;
    out.report(&report)?;
    // What no restore uses although it may look like a backup, on stderr.
    if let Ok(listing) = store.list_all().await {
        for s in listing.refuse_untrusted_names().skipped {
            out.warn(&format!("skipped {}: {}", s.name, s.reason));
        }
    }
    if report.complete {
        return Ok(Exit::Ok);
    }
    out.warn(&format!(
        "restore incomplete: {} left out, listed above",
        plural(report.left_out.len() as u64, "file", "files")
    ));
    Ok(Exit::Incomplete)
}

fn options(req: &Request, store: Arc<dyn BackupStore>) -> Restore {
    let mut r = req
        .python
        .apply(crate::keys::restore(store))
        .stop_at_last_consistent(req.lenient);
    if let Some(t) = req.until {
        r = r.until_time(time::system(t));
    }
    if let Some(seq) = req.until_seq {
        r = r.until_seq(seq);
    }
    r
}

async fn restore_to(
    opts: &Restore,
    path: &Path,
    format: FileFormat,
) -> Result<(Outcome, Option<Written>), Error> {
    let r = opts.run().await?;
    let saved = r.db.save_async(path, format).await?;
    let written = Written {
        path: dictdb::printable_name(&path.display().to_string()),
        format: format.extension(),
        tables: r.db.snapshot().tables().len(),
        records: saved.records,
        bytes: saved.bytes,
        checksum: saved.checksum,
    };
    Ok((Outcome::of_restored(r), Some(written)))
}

async fn report(
    req: &Request,
    store: &dyn BackupStore,
    o: Outcome,
    out: Option<Written>,
) -> RestoreReport {
    let complete = o.stopped.is_none() && o.skipped.is_empty();
    let left_out = if complete {
        Vec::new()
    } else {
        left_out(store, &o, req.until).await
    };
    let applied = o
        .applied
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let affected = i.checked_sub(1).and_then(|d| o.affected.get(d).copied());
            Applied::of(p, affected)
        })
        .collect();
    RestoreReport {
        store: dictdb::printable_name(&store.location()),
        until: req.until.map(time::format),
        until_seq: req.until_seq,
        lenient: req.lenient,
        dry_run: req.dry_run,
        applied,
        seq: o.seq,
        verified: o.verified,
        complete,
        skipped: o.skipped.iter().map(LeftOut::of).collect(),
        stopped: o.stopped.as_ref().map(LeftOut::of),
        left_out,
        out,
    }
}

/// Backup files written after the last applied one, within `--until`,
/// that were not applied: what a lenient restore left out.
async fn left_out(store: &dyn BackupStore, o: &Outcome, until: Option<Timestamp>) -> Vec<String> {
    let after = o.applied.last().and_then(|p| BackupName::parse(&p.name));
    let Ok(files) = store.list().await else {
        let mut named: Vec<String> = o.skipped.iter().map(|s| s.file.clone()).collect();
        named.extend(o.stopped.iter().map(|s| s.file.clone()));
        return named;
    };
    let mut names: Vec<BackupName> = files
        .iter()
        .filter_map(|f| BackupName::parse(&f.name))
        .filter(|n| after.as_ref().is_none_or(|a| n.stamp() > a.stamp()))
        .filter(|n| until.is_none_or(|u| time::of_name(n).is_some_and(|t| t <= u)))
        .collect();
    names.sort();
    names.iter().map(BackupName::to_string).collect()
}

/// Checks `--out` before any work and picks the format: `--format`, else
/// the extension, else JSON. Refuses a backup-named file in the store's
/// own directory (later restores would pick it up).
fn check_out(out: &Path, dir: &Path) -> Result<(PathBuf, FileFormat), CliError> {
    let shown = out.display().to_string();
    let Some(name) = out.file_name() else {
        return Err(CliError::usage(format!("--out {shown}: not a file path")));
    };
    if out.is_dir() {
        return Err(CliError::usage(format!("--out {shown}: is a directory")));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(CliError::usage(format!(
            "--out {shown}: directory {} does not exist",
            parent.display()
        )));
    }
    // Fail now rather than after a long restore.
    if let Err(e) = tempfile::Builder::new()
        .prefix(".dictdb-backup-check-")
        .tempfile_in(&parent)
    {
        return Err(CliError::new(
            Exit::Usage,
            "io",
            format!("--out {shown}: cannot write in {}: {e}", parent.display()),
        )
        .about(shown));
    }
    // Also a name shaped like a backup's that is not trusted: it would sit
    // in the store as a skipped entry.
    let backup_named = name
        .to_str()
        .is_some_and(|n| !matches!(BackupName::classify(n), dictdb::NameCheck::Other));
    // The store's own directory however it is spelled: a path, through a
    // symlink, or a `file://` URL.
    let same_dir = store::local_dir(dir).is_some_and(
        |d| matches!((parent.canonicalize(), d.canonicalize()), (Ok(a), Ok(b)) if a == b),
    );
    if backup_named && same_dir {
        return Err(CliError::usage(format!(
            "--out {shown}: refusing to write a backup-named file into the directory being restored"
        )));
    }
    // Another store's backup (or a link to one) is never replaced either.
    if backup_named && out.symlink_metadata().is_ok() {
        return Err(CliError::usage(format!(
            "--out {shown}: refusing to replace an existing backup-named file (another \
             store's backup?); write to another name"
        )));
    }
    let format = store::format_by_name(out).unwrap_or(FileFormat::Json);
    Ok((out.to_path_buf(), format))
}

/// The output's format: `--format`, which must agree with the extension
/// when the name has one (a `.json` file holding MessagePack would be read
/// as neither by the Python original nor by `inspect`), else the name's.
fn out_format(
    out: &Path,
    asked: Option<FileFormat>,
    by_name: FileFormat,
) -> Result<FileFormat, CliError> {
    match (asked, store::format_by_name(out)) {
        (Some(a), Some(n)) if a != n => Err(CliError::usage(format!(
            "--out {}: the name says {} but --format says {}; name the file .{} or leave out --format",
            dictdb::printable_name(&out.display().to_string()),
            n.extension(),
            a.extension(),
            a.extension()
        ))),
        (Some(a), _) => Ok(a),
        (None, _) => Ok(by_name),
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "dry run: nothing written; restoring"
        } else {
            "restored"
        };
        write!(f, "{verb} {}", self.store)?;
        if let Some(t) = &self.until {
            write!(f, " until {t}")?;
        }
        if let Some(s) = self.until_seq {
            write!(f, " until sequence {s}")?;
        }
        let how = if self.lenient { " (lenient)" } else { "" };
        writeln!(f, "{how}{}", if self.dry_run { ":" } else { "" })?;
        let rows: Vec<Vec<String>> = self
            .applied
            .iter()
            .map(|a| {
                vec![
                    if self.dry_run {
                        "  would apply"
                    } else {
                        "  applied"
                    }
                    .into(),
                    a.kind.into(),
                    a.name.clone(),
                    a.time.clone().unwrap_or_else(|| "-".into()),
                    SeqRange::show(a.seq),
                    size(a.size),
                    match a.affected {
                        Some(n) => format!("{} affected", plural(n as u64, "record", "records")),
                        None if a.kind == "full" => "base".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        crate::output::columns(f, &rows)?;
        match self.seq {
            Some(seq) => writeln!(f, "sequence: {seq}")?,
            None => writeln!(
                f,
                "sequence: none recorded (a chain written by the Python original)"
            )?,
        }
        match self.verified {
            Some(true) => writeln!(f, "verified: yes, every applied file's checksum matched")?,
            Some(false) => writeln!(
                f,
                "verified: no, some applied files carry no checksum (written by the Python original)"
            )?,
            None => writeln!(f, "checked: every file read and checked, as a restore would")?,
        }
        for s in &self.skipped {
            writeln!(f, "skipped {}: {}", s.file, s.error)?;
        }
        if let Some(s) = &self.stopped {
            writeln!(f, "stopped at {}: {}", s.file, s.error)?;
        }
        if !self.complete {
            writeln!(
                f,
                "INCOMPLETE: left out {} written after the last applied file:",
                plural(self.left_out.len() as u64, "file", "files")
            )?;
            for name in &self.left_out {
                writeln!(f, "  {name}")?;
            }
        }
        if let Some(w) = &self.out {
            writeln!(
                f,
                "wrote {} ({}, {}, {}, {}, {})",
                w.path,
                w.format,
                plural(w.tables as u64, "table", "tables"),
                plural(w.records, "record", "records"),
                size(w.bytes),
                w.checksum
            )?;
        }
        Ok(())
    }
}
