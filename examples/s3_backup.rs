//! The `service` example with its backups in S3 (or any S3-compatible
//! server), restored from the bucket at the end.
//!
//! ```text
//! source .ci/s3-server.sh      # a local moto_server, and the AWS_* settings below
//! cargo run --features object-store --example s3_backup -- s3://dictdb-example/backups
//! ```
//!
//! The only argument is the store URL: `s3://BUCKET/PREFIX` (the bucket must
//! exist), or `file:///abs/dir`, `memory://`, or a directory. The endpoint,
//! region and credentials come from the standard environment variables
//! (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, ...).
//!
//! For about five seconds, writers insert, update and delete records while
//! an incremental `BackupManager` writes a delta every 250 ms and a full
//! backup after every three deltas; after each batch the service calls
//! `notify_change()`. It starts from the bucket's newest backup chain
//! (`restore_or_start`, so it can run again on the same prefix). On shutdown
//! it writes a last full backup within a deadline, restores from the bucket
//! with `Restore::new(store).run()` and checks that the restored state
//! equals the live one (exit status 1 if not).

#[path = "support/workload.rs"]
mod workload;

use std::sync::Arc;

use dictdb::restore::Restore;
use dictdb::store::{open_url, BackupStore};
use dictdb::BackupConfig;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    workload::init_logging();
    let mut args = std::env::args().skip(1);
    let (Some(url), None) = (args.next(), args.next()) else {
        eprintln!("usage: s3_backup s3://BUCKET/PREFIX   (endpoint and credentials from AWS_*)");
        std::process::exit(2);
    };
    let store: Arc<dyn BackupStore> = open_url(&url)?;
    let before = store.list().await?.len();

    let (db, report) = workload::run_service(BackupConfig::with_store(Arc::clone(&store))).await?;
    let after = store.list().await?.len();
    println!(
        "wrote {} full backups and {} deltas ({} failures) to {}; \
         {after} objects there now ({before} before); last: {} ({} records, {} bytes)",
        report.full,
        report.delta,
        report.failed,
        store.location(),
        report.last.file,
        report.last.records,
        report.last.bytes
    );

    // Restore from the bucket: newest full backup plus the deltas after it.
    let restored = Restore::new(Arc::clone(&store)).run().await?;
    let same = workload::same_state(&db, &restored.db);
    println!(
        "restored {} objects from {} up to sequence {:?}: restored state {} the live one",
        restored.applied.len(),
        store.location(),
        restored.seq,
        if same { "equals" } else { "DIFFERS FROM" }
    );
    if !same {
        std::process::exit(1);
    }
    Ok(())
}
