//! `inspect`: one file read whole and checked as a restore checks it, with
//! its tables and their counts; a file that is not a backup is said to be
//! what it is.

use std::fmt;
use std::io::Read;
use std::path::Path;

use std::sync::Arc;

use dictdb::{BackupName, FileFormat};
use dictdb::{BackupStore, LocalStore};
use serde::Serialize;

use crate::error::{CliError, Exit};
use crate::output::{columns, plural, size, Output};
use crate::report::SeqRange;
use crate::verify::Checked;

#[derive(Serialize)]
struct InspectReport {
    path: String,
    #[serde(flatten)]
    file: Checked,
    /// Deltas: upserts and deletes over all tables.
    upserts: Option<u64>,
    deletes: Option<u64>,
}

pub(crate) async fn run(
    path: &Path,
    format: Option<FileFormat>,
    out: Output,
) -> Result<Exit, CliError> {
    let shown = path.display().to_string();
    if crate::store::is_url(path) {
        return Err(CliError::usage(format!(
            "{shown}: inspect reads a local file; copy the object here first, or run \
             `dictdb-backup verify` on the store"
        )));
    }
    // A symbolic link is read through; one that leads nowhere readable is
    // said to be a link (a backup whose disk did not mount), not missing.
    let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() && link => {
            return Err(CliError::usage(format!(
                "{shown}: a symbolic link to a directory, not a file"
            ))
            .about(shown))
        }
        Ok(m) if m.is_dir() => {
            return Err(CliError::usage(format!(
                "{shown}: is a directory (to read a backup directory: dictdb-backup list {shown}, \
                 or verify)"
            ))
            .about(shown))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && link => {
            return Err(CliError::not_found(
                &shown,
                format!("{shown}: a symbolic link whose target cannot be read: {e}"),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::not_found(
                &shown,
                format!("{shown}: no such file"),
            ))
        }
        Err(e) => {
            return Err(CliError::new(Exit::Usage, "io", format!("{shown}: {e}")).about(shown))
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let backup_named = BackupName::parse(&name).is_some();
    let known_ext = crate::store::format_by_name(path).is_some();
    if format.is_none() && !backup_named && !known_ext {
        return Err(not_a_backup(
            path,
            "its name is not dictdb_backup_* or dictdb_delta_* and its extension is neither \
             .json nor .msgpack (give --format json or --format msgpack to read it anyway)",
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let store: Arc<dyn BackupStore> = Arc::new(LocalStore::existing(&dir)?);
    let r = crate::keys::restore(store).inspect(&name, format).await?;
    let checked = Checked::of(&r);
    if let (Err(e), false) = (&r.status, backup_named) {
        return Err(not_a_backup(path, &crate::output::about(e, &r.name)));
    }
    let delta = checked.kind == Some("delta");
    let sum = |f: fn(&dictdb::restore::TableSummary) -> u64| {
        delta.then(|| r.tables.iter().map(f).sum::<u64>())
    };
    let report = InspectReport {
        path: dictdb::printable_name(&shown),
        upserts: sum(|t| t.records).filter(|_| r.status.is_ok()),
        deletes: sum(|t| t.deletes).filter(|_| r.status.is_ok()),
        file: checked,
    };
    out.report(&report)?;
    match &report.file.error {
        None => Ok(Exit::Ok),
        Some(e) => {
            out.warn(&format!("{}: {}: {e}", report.path, report.file.status));
            Ok(Exit::Damaged)
        }
    }
}

/// "`path` is not a dictdb backup (it is ...)": what the file looks like,
/// from its first bytes, and why it was not read as a backup.
fn not_a_backup(path: &Path, why: &str) -> CliError {
    let shown = path.display().to_string();
    let what = sniff(path);
    CliError::new(
        Exit::Damaged,
        "not_a_backup",
        format!("{shown}: not a dictdb backup file ({what}): {why}"),
    )
    .about(shown)
}

/// What the first bytes of a file suggest it is.
fn sniff(path: &Path) -> String {
    let mut head = Vec::with_capacity(512);
    let read = std::fs::File::open(path).and_then(|f| f.take(512).read_to_end(&mut head));
    if let Err(e) = read {
        return format!("unreadable: {e}");
    }
    let first = head.iter().copied().find(|b| !b.is_ascii_whitespace());
    match (head.as_slice(), first) {
        ([], _) => "an empty file".into(),
        ([0x80, 2..=5, ..], _) => "a Python pickle, which only Python can read".into(),
        ([0x1f, 0x8b, ..], _) => "gzip-compressed data".into(),
        ([b'P', b'K', 3, 4, ..], _) => "a zip archive".into(),
        ([0x80..=0x8f | 0xde | 0xdf, ..], _) => "MessagePack, or binary data".into(),
        (_, Some(b'{')) => "a JSON object".into(),
        (_, Some(b'[')) => "a JSON array".into(),
        (h, _) if std::str::from_utf8(h).is_ok() || h.len() == 512 && h.is_ascii() => {
            "a text file".into()
        }
        _ => "binary data".into(),
    }
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.file;
        writeln!(f, "file:      {}", self.path)?;
        writeln!(f, "kind:      {}", c.kind.unwrap_or("-"))?;
        writeln!(f, "time:      {}", c.time.as_deref().unwrap_or("-"))?;
        writeln!(f, "sequence:  {}", SeqRange::show(c.seq))?;
        writeln!(f, "size:      {} ({} bytes)", size(c.size), c.size)?;
        match &c.checksum {
            Some(sum) => writeln!(f, "checksum:  verified ({sum})")?,
            None => writeln!(f, "checksum:  {}", c.verdict())?,
        }
        let Some(tables) = &c.tables else {
            return Ok(());
        };
        writeln!(f, "tables:    {}", tables.len())?;
        let delta = self.upserts.is_some();
        let mut rows = vec![if delta {
            vec!["  TABLE".into(), "UPSERTS".into(), "DELETES".into()]
        } else {
            vec!["  TABLE".into(), "RECORDS".into()]
        }];
        for t in tables {
            let mut row = vec![format!("  {}", t.name)];
            if delta {
                row.push(t.upserts.unwrap_or(0).to_string());
                row.push(t.deletes.unwrap_or(0).to_string());
            } else {
                row.push(t.records.unwrap_or(0).to_string());
            }
            rows.push(row);
        }
        if !tables.is_empty() {
            columns(f, &rows)?;
        }
        match (c.records, c.changes, self.upserts, self.deletes) {
            (Some(n), ..) => writeln!(f, "records:   {n}"),
            (_, Some(n), Some(u), Some(d)) => writeln!(
                f,
                "changes:   {n} ({}, {})",
                plural(u, "upsert", "upserts"),
                plural(d, "delete", "deletes")
            ),
            _ => Ok(()),
        }
    }
}
