//! Metrics through the `metrics` facade crate (feature `metrics`); without
//! the feature every function here compiles to nothing.
//!
//! - `dictdb_backups_written_total{kind}` and `dictdb_backups_failed_total{kind}`:
//!   counters, `kind` being `full` or `delta`;
//! - `dictdb_backup_duration_seconds{kind}` and `dictdb_backup_bytes{kind}`:
//!   histograms of the files written;
//! - `dictdb_backup_changes_pending`: a gauge of the changes no backup holds yet.
//!
//! The application installs the recorder (Prometheus exporter, ...); the
//! library never does.

use super::BackupInfo;
use crate::naming::BackupKind;

#[cfg(feature = "metrics")]
fn label(kind: BackupKind) -> &'static str {
    match kind {
        BackupKind::Delta => "delta",
        _ => "full",
    }
}

/// A backup was written.
pub(crate) fn written(info: &BackupInfo) {
    #[cfg(feature = "metrics")]
    {
        let kind = label(info.kind);
        metrics::counter!("dictdb_backups_written_total", "kind" => kind).increment(1);
        metrics::histogram!("dictdb_backup_duration_seconds", "kind" => kind)
            .record(info.duration.as_secs_f64());
        metrics::histogram!("dictdb_backup_bytes", "kind" => kind).record(info.bytes as f64);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = info;
}

/// A backup failed.
pub(crate) fn failed(kind: BackupKind) {
    #[cfg(feature = "metrics")]
    metrics::counter!("dictdb_backups_failed_total", "kind" => label(kind)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = kind;
}

/// Changes pending.
pub(crate) fn pending(changes: u64) {
    #[cfg(feature = "metrics")]
    metrics::gauge!("dictdb_backup_changes_pending").set(changes as f64);
    #[cfg(not(feature = "metrics"))]
    let _ = changes;
}
