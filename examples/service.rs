//! A small async service that keeps its database backed up, then restores it.
//!
//! ```text
//! cargo run --example service [BACKUP_DIR]     # default: ./backups
//! ```
//!
//! For about five seconds, writer tasks insert, update and delete records
//! while an incremental `BackupManager` writes a delta every 250 ms and a full
//! backup after every three deltas; after each batch the service calls
//! `notify_change()`. It starts from the directory's newest backup chain
//! (`restore_or_start`, so it can run again on the same directory). On
//! shutdown it writes a last full backup within a deadline, restores the
//! backup directory and checks that the restored state equals the live one.

#[path = "support/workload.rs"]
mod workload;

use dictdb::{restore_dir, BackupConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    workload::init_logging();
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./backups".into());

    let (db, report) = workload::run_service(BackupConfig::new(&dir)).await?;
    println!(
        "wrote {} full backups and {} deltas ({} failures); last: {} ({} records, {} bytes)",
        report.full,
        report.delta,
        report.failed,
        report.last.file,
        report.last.records,
        report.last.bytes
    );

    // Restore the directory: newest full backup plus the deltas after it.
    let restored = restore_dir(&dir).await?;
    let same = workload::same_state(&db, &restored.db);
    println!(
        "restored {} files from {dir} up to sequence {:?}: restored state {} the live one",
        restored.applied.len(),
        restored.seq,
        if same { "equals" } else { "DIFFERS FROM" }
    );
    if !same {
        std::process::exit(1);
    }
    Ok(())
}
