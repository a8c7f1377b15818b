//! `list`: the files of a store from their headers only (a few kilobytes
//! per file, a ranged read on object storage), with the chain a restore
//! would use. Checksums are not checked: that is `verify`'s job.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use dictdb::restore::{ListedFile, Plan};
use dictdb::{BackupKind, DecryptFailure, Error};
use serde::Serialize;

use crate::error::{no_backups_noting, CliError, Exit};
use crate::output::{about, columns, plural, size, Output};
use crate::report::{kind, names, SeqRange, TableCount};
use crate::{keys, store, time};

#[derive(Serialize)]
struct ListReport {
    store: String,
    files: Vec<Entry>,
    chain: Chain,
    /// Always false: list reads headers only.
    checksums_checked: bool,
}

#[derive(Serialize)]
struct Entry {
    name: String,
    kind: Option<&'static str>,
    time: Option<String>,
    timestamp: Option<f64>,
    seq: Option<SeqRange>,
    /// Per table, when the header records it (files written by dictdb).
    tables: Option<Vec<TableCount>>,
    records: Option<u64>,
    changes: Option<u64>,
    size: u64,
    /// `ok` (dictdb header read), `no_metadata` (the Python original's
    /// file: nothing to check it against), `encrypted` (no identity given
    /// opens it: only its name is known), `damaged`, `ignored`, `skipped`
    /// (named like a backup but not trusted, or an object key no plain
    /// name addresses: see `note`).
    status: &'static str,
    /// Why an entry is skipped.
    note: Option<String>,
    /// Compressed (`.zst`).
    compressed: bool,
    /// Encrypted (`.age`).
    encrypted: bool,
    error: Option<String>,
    /// In the chain a restore would use (`*`).
    in_chain: bool,
    /// In what a `--lenient` restore would use, when the chain is broken (`~`).
    in_lenient_chain: bool,
}

#[derive(Serialize)]
struct Chain {
    ok: bool,
    files: Vec<String>,
    seq: Option<u64>,
    error: Option<String>,
    /// When the chain is broken: what a `--lenient` restore would use.
    lenient: Option<Lenient>,
}

#[derive(Serialize)]
struct Lenient {
    files: Vec<String>,
    seq: Option<u64>,
    stopped: Option<String>,
    error: Option<String>,
}

pub(crate) async fn run(dir: &Path, out: Output) -> Result<Exit, CliError> {
    let store = store::open(dir)?;
    let listing = keys::restore(Arc::clone(&store)).list().await?;
    if !listing.files.iter().any(|f| f.kind.is_some()) {
        let note = listing
            .files
            .iter()
            .find_map(|f| Some((f.name.as_str(), f.note.as_deref()?)));
        return Err(no_backups_noting(
            &store.location(),
            listing.files.len(),
            note,
        ));
    }
    let lenient = match &listing.plan {
        Ok(_) => None,
        Err(_) => Some(
            keys::restore(Arc::clone(&store))
                .stop_at_last_consistent(true)
                .quick_plan()
                .await,
        ),
    };
    let chain = Chain::of(&listing.plan, lenient.as_ref());
    let strict: HashSet<&str> = chain.files.iter().map(String::as_str).collect();
    let loose: HashSet<&str> = chain
        .lenient
        .iter()
        .flat_map(|l| l.files.iter().map(String::as_str))
        .collect();
    let files = listing
        .files
        .iter()
        .map(|f| Entry::of(f, strict.contains(&*f.name), loose.contains(&*f.name)))
        .collect();
    let report = ListReport {
        store: dictdb::printable_name(&store.location()),
        files,
        chain,
        checksums_checked: false,
    };
    out.report(&report)?;
    Ok(Exit::Ok)
}

impl Entry {
    fn of(f: &ListedFile, in_chain: bool, in_lenient_chain: bool) -> Entry {
        let readable = f.kind.is_some() && f.error.is_none();
        let delta = f.kind == Some(BackupKind::Delta);
        let locked = matches!(
            &f.error,
            Some(Error::Decrypt {
                kind: DecryptFailure::MissingIdentity | DecryptFailure::WrongIdentity,
                ..
            })
        );
        let status = match (&f.kind, &f.error) {
            (None, _) if f.note.is_some() => "skipped",
            (None, _) => "ignored",
            (Some(_), Some(_)) if locked => "encrypted",
            (Some(_), Some(_)) => "damaged",
            (Some(_), None) if f.ours => "ok",
            (Some(_), None) => "no_metadata",
        };
        let t = f.kind.and_then(|_| time::of_file(&f.name));
        Entry {
            name: f.name.clone(),
            kind: f.kind.map(|k| kind(Some(k))),
            time: t.map(time::format),
            timestamp: t.map(time::unix),
            seq: SeqRange::of(f.seq),
            tables: (readable && f.ours)
                .then(|| f.tables.iter().map(|t| TableCount::of(f.kind, t)).collect()),
            records: f.records.filter(|_| readable && !delta),
            changes: f.records.filter(|_| readable && delta),
            size: f.size,
            status,
            compressed: f.compressed,
            encrypted: f.encrypted,
            error: f.error.as_ref().map(|e| about(e, &f.name)),
            note: f.note.clone(),
            in_chain,
            in_lenient_chain,
        }
    }

    fn row(&self) -> Vec<String> {
        let mark = if self.in_chain {
            "*"
        } else if self.in_lenient_chain {
            "~"
        } else {
            ""
        };
        let content = match (self.records, self.changes) {
            (Some(n), _) => plural(n, "record", "records"),
            (_, Some(n)) => plural(n, "change", "changes"),
            _ => "-".into(),
        };
        let header = match (self.status, &self.error) {
            ("ok", _) => "header ok".to_string(),
            ("no_metadata", _) => "no checksum (Python original)".to_string(),
            ("ignored", _) => "ignored (not a backup)".to_string(),
            ("skipped", _) => format!("SKIPPED: {}", self.note.as_deref().unwrap_or_default()),
            ("encrypted", Some(e)) => format!("encrypted: {e}"),
            (_, Some(e)) => format!("DAMAGED: {e}"),
            (other, None) => other.to_string(),
        };
        vec![
            mark.into(),
            dictdb::printable_name(&self.name),
            self.kind.unwrap_or("-").into(),
            self.time.clone().unwrap_or_else(|| "-".into()),
            SeqRange::show(self.seq),
            self.tables
                .as_deref()
                .map_or_else(|| "-".into(), |t| names(t, 3)),
            content,
            size(self.size),
            header,
        ]
    }
}

impl Chain {
    fn of(plan: &Result<Plan, Error>, lenient: Option<&Result<Plan, Error>>) -> Chain {
        let lenient = lenient.map(|l| match l {
            Ok(p) => Lenient {
                files: p.files.iter().map(|f| f.name.clone()).collect(),
                seq: p.seq,
                stopped: p.stopped.as_ref().map(|s| s.file.clone()),
                error: None,
            },
            Err(e) => Lenient {
                files: Vec::new(),
                seq: None,
                stopped: None,
                error: Some(e.to_string()),
            },
        });
        match plan {
            Ok(p) => Chain {
                ok: true,
                files: p.files.iter().map(|f| f.name.clone()).collect(),
                seq: p.seq,
                error: None,
                lenient,
            },
            Err(e) => Chain {
                ok: false,
                files: Vec::new(),
                seq: None,
                error: Some(e.to_string()),
                lenient,
            },
        }
    }
}

impl fmt::Display for ListReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = [
            "",
            "FILE",
            "KIND",
            "TIME (UTC)",
            "SEQ",
            "TABLES",
            "CONTENT",
            "SIZE",
            "HEADER",
        ];
        let mut rows = vec![header.map(String::from).to_vec()];
        rows.extend(self.files.iter().map(Entry::row));
        columns(f, &rows)?;
        let c = &self.chain;
        match (&c.error, c.files.first()) {
            (None, Some(base)) => {
                let deltas = c.files.len() - 1;
                let seq = c.seq.map_or_else(
                    || "no sequence numbers (written by the Python original)".into(),
                    |s| format!("restores to sequence {s}"),
                );
                writeln!(
                    f,
                    "chain (*): {base} + {}, {seq}",
                    plural(deltas as u64, "delta", "deltas")
                )?;
            }
            (e, _) => {
                writeln!(f, "chain: BROKEN: {}", e.as_deref().unwrap_or("no chain"))?;
                match &c.lenient {
                    Some(l) if l.error.is_none() => writeln!(
                        f,
                        "a --lenient restore would apply the {} marked ~{}",
                        plural(l.files.len() as u64, "file", "files"),
                        l.stopped
                            .as_ref()
                            .map(|s| format!(" and stop at {s}"))
                            .unwrap_or_default()
                    )?,
                    Some(l) => writeln!(
                        f,
                        "a --lenient restore fails too: {}",
                        l.error.as_deref().unwrap_or("")
                    )?,
                    None => {}
                }
            }
        }
        writeln!(
            f,
            "headers only: checksums were not checked (run `dictdb-backup verify {}`)",
            self.store
        )
    }
}
