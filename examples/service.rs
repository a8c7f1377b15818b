//! A small async service that keeps its database backed up, then restores it.
//!
//! ```text
//! cargo run --example service [BACKUP_DIR]     # default: ./backups
//! ```
//!
//! For about five seconds, writer tasks insert, update and delete records
//! while an incremental `BackupManager` writes a delta every 250 ms and a full
//! backup after every three deltas; after each batch the service calls
//! `notify_change()`. On shutdown it writes a last full backup, stops the
//! manager, restores the backup directory and checks that the restored state
//! equals the live one.

use std::time::Duration;

use dictdb::{restore_dir, BackupConfig, BackupEvent, BackupKind, BackupManager, DictDB};
use serde_json::json;
use tokio::time::{interval, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./backups".into());

    let db = DictDB::new();
    let users = db.create_table("users")?;
    let orders = db.create_table_with_key("orders", "order_id")?;

    let backups = BackupManager::start(
        &db,
        BackupConfig::new(&dir)
            .incremental(true)
            .backup_interval(Duration::from_millis(250))
            .min_backup_interval(Duration::from_millis(100))
            .max_deltas_before_full(3)
            .on_backup_failure(|err, n| eprintln!("backup failed ({n} in a row): {err}")),
    )?;

    // Count what the manager reports.
    let mut events = backups.subscribe();
    let counter = tokio::spawn(async move {
        let (mut full, mut delta, mut failed) = (0u32, 0u32, 0u32);
        loop {
            match events.recv().await {
                Ok(BackupEvent::Completed(info)) if info.kind == BackupKind::Full => full += 1,
                Ok(BackupEvent::Completed(_)) => delta += 1,
                Ok(BackupEvent::Failed { .. }) => failed += 1,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        (full, delta, failed)
    });

    // Five seconds of steady writes, in batches of 50 every 20 ms.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut tick = interval(Duration::from_millis(20));
    let mut batch = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        batch += 1;
        for i in 0..50u64 {
            let n = batch * 50 + i;
            let id = users.insert(
                json!({"name": format!("user_{n}"), "batch": batch, "score": n as f64 * 0.5}),
            )?;
            if n % 7 == 0 {
                users.update(id.clone(), json!({"vip": true}))?;
            }
            if n % 11 == 0 {
                users.delete(id)?;
            }
            orders.upsert(json!({"order_id": format!("o-{}", n % 500), "last_batch": batch}))?;
        }
        backups.notify_change();
    }

    // Shutdown: a last full backup, then stop the actor.
    let last = backups.backup_full().await?;
    backups.stop().await?;
    // The event stream ends when the last handle is gone.
    drop(backups);
    let (full, delta, failed) = counter.await?;
    println!(
        "wrote {full} full backups and {delta} deltas ({failed} failures); last: {} ({} records, {} bytes)",
        last.file, last.records, last.bytes
    );

    // Restore the directory: newest full backup plus the deltas after it.
    let restored = restore_dir(&dir).await?;
    let live = db.snapshot();
    let same = live.tables().len() == restored.db.snapshot().tables().len()
        && live.tables().iter().all(|t| {
            let r = restored
                .db
                .table(t.name())
                .and_then(|rt| rt.all())
                .unwrap_or_default();
            let l: Vec<_> = t.iter().map(|(_, rec)| rec.to_value()).collect();
            r == l
        });
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
