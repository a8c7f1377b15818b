//! Report pieces shared by the subcommands: the command's own
//! `Serialize` types, mapped from the library's (which stay serde-free).

use dictdb::restore::{PlannedFile, Stopped, TableSummary};
use dictdb::BackupKind;
use serde::Serialize;

use crate::output::about;
use crate::time;

/// A sequence range `(from, to]`.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct SeqRange {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

impl SeqRange {
    pub(crate) fn of(seq: Option<(u64, u64)>) -> Option<SeqRange> {
        seq.map(|(from, to)| SeqRange { from, to })
    }

    /// `from..to`, or `-`.
    pub(crate) fn show(seq: Option<SeqRange>) -> String {
        seq.map_or_else(|| "-".into(), |s| format!("{}..{}", s.from, s.to))
    }
}

/// One table of a file: records (full backup) or upserts and deletes.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TableCount {
    pub(crate) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upserts: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deletes: Option<u64>,
}

impl TableCount {
    pub(crate) fn of(kind: Option<BackupKind>, t: &TableSummary) -> TableCount {
        let delta = kind == Some(BackupKind::Delta);
        TableCount {
            name: t.name.clone(),
            records: (!delta).then_some(t.records),
            upserts: delta.then_some(t.records),
            deletes: delta.then_some(t.deletes),
        }
    }
}

/// `full`, `delta`, or `-` for a file that is not a backup.
pub(crate) fn kind(kind: Option<BackupKind>) -> &'static str {
    match kind {
        Some(BackupKind::Full) => "full",
        Some(BackupKind::Delta) => "delta",
        _ => "-",
    }
}

/// `users, events` (at most `max` names, then `+N`).
pub(crate) fn names(tables: &[TableCount], max: usize) -> String {
    if tables.is_empty() {
        return "-".into();
    }
    let mut s: Vec<&str> = tables.iter().take(max).map(|t| t.name.as_str()).collect();
    let more = tables.len().saturating_sub(max);
    let tail = format!("+{more}");
    if more > 0 {
        s.push(&tail);
    }
    s.join(",")
}

/// A file a restore applies (or would apply).
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Applied {
    pub(crate) name: String,
    pub(crate) kind: &'static str,
    pub(crate) time: Option<String>,
    pub(crate) seq: Option<SeqRange>,
    pub(crate) size: u64,
    /// Records the delta affected (`None` for the base, and in a dry run).
    pub(crate) affected: Option<usize>,
}

impl Applied {
    pub(crate) fn of(p: &PlannedFile, affected: Option<usize>) -> Applied {
        Applied {
            name: p.name.clone(),
            kind: kind(Some(p.kind)),
            time: time::of_file(&p.name).map(time::format),
            seq: SeqRange::of(p.seq),
            size: p.size,
            affected,
        }
    }
}

/// A file a lenient restore passed over or stopped at, and why.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LeftOut {
    pub(crate) file: String,
    pub(crate) error: String,
}

impl LeftOut {
    pub(crate) fn of(s: &Stopped) -> LeftOut {
        LeftOut {
            file: s.file.clone(),
            error: about(&s.error, &s.file),
        }
    }
}
