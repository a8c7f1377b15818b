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
//! `notify_change()`. On shutdown it writes a last full backup, stops the
//! manager, restores from the bucket with `Restore::new(store).run()` and
//! checks that the restored state equals the live one (exit status 1 if not).

use std::sync::Arc;
use std::time::Duration;

use dictdb::restore::Restore;
use dictdb::store::{open_url, BackupStore};
use dictdb::{BackupConfig, BackupEvent, BackupKind, BackupManager, DictDB};
use serde_json::json;
use tokio::time::{interval, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(url), None) = (args.next(), args.next()) else {
        eprintln!("usage: s3_backup s3://BUCKET/PREFIX   (endpoint and credentials from AWS_*)");
        std::process::exit(2);
    };
    let store: Arc<dyn BackupStore> = open_url(&url)?;
    let before = store.list().await?.len();

    let db = DictDB::new();
    let users = db.create_table("users")?;
    let orders = db.create_table_with_key("orders", "order_id")?;

    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
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
    drop(backups);
    let (full, delta, failed) = counter.await?;
    let after = store.list().await?.len();
    println!(
        "wrote {full} full backups and {delta} deltas ({failed} failures) to {}; \
         {after} objects there now ({before} before); last: {} ({} records, {} bytes)",
        store.location(),
        last.file,
        last.records,
        last.bytes
    );

    // Restore from the bucket: newest full backup plus the deltas after it.
    let restored = Restore::new(Arc::clone(&store)).run().await?;
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
