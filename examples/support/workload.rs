//! The service workload shared by the `service` and `s3_backup` examples.

use std::time::Duration;

use dictdb::{
    BackupConfig, BackupEvent, BackupInfo, BackupKind, BackupManager, DictDB, Error, Table,
};
use serde_json::json;
use tokio::time::{interval, Instant};

/// What the backup manager reported while the service ran.
pub struct Report {
    /// The last full backup, written on shutdown.
    pub last: BackupInfo,
    /// Full backups, deltas and failures seen on the event stream.
    pub full: u32,
    pub delta: u32,
    pub failed: u32,
}

/// Installs a log subscriber (the library never does): `RUST_LOG` or `warn`.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

/// The table `name`, created (with key field `key`) if the store held none.
fn table(db: &DictDB, name: &str, key: &str) -> dictdb::Result<Table> {
    match db.table(name) {
        Err(Error::TableNotFound(_)) => db.create_table_with_key(name, key),
        other => other,
    }
}

/// Runs the service for about five seconds, on the database restored from
/// the store (empty on the first run): batches of 50 inserts (some updated,
/// some deleted) and upserts every 20 ms, `notify_change()` after each
/// batch, an incremental manager writing a delta every 250 ms and a full
/// backup after every three deltas. On shutdown: a last full backup and the
/// end of the manager (`shutdown` with a deadline). Returns the database.
pub async fn run_service(
    config: BackupConfig,
) -> Result<(DictDB, Report), Box<dyn std::error::Error>> {
    let started = BackupManager::restore_or_start(
        config
            .incremental(true)
            .backup_interval(Duration::from_millis(250))
            .min_backup_interval(Duration::from_millis(100))
            .max_deltas_before_full(3)
            .on_backup_failure(|err, n| eprintln!("backup failed ({n} in a row): {err}")),
    )
    .await?;
    let (db, backups) = (started.db, started.manager);
    if let Some(r) = &started.restored {
        println!(
            "restored {} files (sequence {:?}) from an earlier run",
            r.applied.len(),
            r.seq
        );
    }
    let users = table(&db, "users", "id")?;
    let orders = table(&db, "orders", "order_id")?;

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
            if n.is_multiple_of(7) {
                users.update(id.clone(), json!({"vip": true}))?;
            }
            if n.is_multiple_of(11) {
                users.delete(id)?;
            }
            orders.upsert(json!({"order_id": format!("o-{}", n % 500), "last_batch": batch}))?;
        }
        backups.notify_change();
    }

    // Shutdown: a last full backup, then the end of the actor (and of the
    // event stream), within a deadline.
    let last = backups.shutdown(Duration::from_secs(30)).await?;
    let (full, delta, failed) = counter.await?;
    Ok((
        db,
        Report {
            last,
            full,
            delta,
            failed,
        },
    ))
}

/// Whether two databases hold the same tables, key fields and records.
pub fn same_state(live: &DictDB, restored: &DictDB) -> bool {
    let (a, b) = (live.snapshot(), restored.snapshot());
    a.tables().len() == b.tables().len()
        && a.tables().iter().zip(b.tables()).all(|(x, y)| {
            x.name() == y.name()
                && x.primary_key() == y.primary_key()
                && x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|((k1, r1), (k2, r2))| k1 == k2 && r1.to_value() == r2.to_value())
        })
}
