//! A writer and a read replica in one program, printing the reader's lag.
//!
//! ```text
//! cargo run --example replica [-- DIR]
//! ```
//!
//! The writer inserts and updates records all the time and backs up every
//! 200 ms (a full backup after every four deltas). The reader follows the
//! backup directory (in a real deployment: another process, another
//! machine, an S3 bucket), polling every 100 ms, and prints, about three
//! times a second, the writer's sequence number, the cut the reader serves,
//! how many changes of the writer it does not serve yet (what the writer has
//! not backed up, plus at most one poll), and its lag behind the newest file
//! of the store (files, changes, time). At the end the writer shuts down
//! (writing a final backup) and the reader is promoted to writer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dictdb::replica::{Replica, ReplicaEvent, ReplicaOptions};
use dictdb::{BackupConfig, BackupManager, Error, LocalStore};
use serde_json::json;
use tokio_stream::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| tmp.path().join("backups"), PathBuf::from);
    let config = || {
        BackupConfig::new(&dir)
            .incremental(true)
            .backup_interval(Duration::from_millis(200))
            .max_deltas_before_full(4)
    };

    // The writer: a service that backs itself up.
    let writer = BackupManager::restore_or_start(config()).await?;
    let db = writer.db.clone();
    let users = match db.table("users") {
        Err(Error::TableNotFound(_)) => db.create_table("users")?,
        other => other?,
    };
    writer.manager.backup_full().await?;

    // The reader.
    let reader = Replica::follow(
        Arc::new(LocalStore::open(&dir)?),
        ReplicaOptions::default().interval(Duration::from_millis(100)),
    )
    .await?;
    let mut events = reader.events();
    let switches = tokio::spawn(async move {
        let mut n = 0;
        while let Some(e) = events.next().await {
            match e {
                ReplicaEvent::ChainSwitched(s) => {
                    n += 1;
                    println!("  reader moved to the chain of {}", s.to);
                }
                ReplicaEvent::Failed(f) => println!("  reader stopped: {}", f.error),
                _ => {}
            }
        }
        n
    });

    println!(
        "{:>6}  {:>10}  {:>10}  {:>13}  {:>11}  {:>13}  {:>11}",
        "ms",
        "writer seq",
        "reader seq",
        "behind writer",
        "store files",
        "store changes",
        "store time"
    );
    let start = tokio::time::Instant::now();
    let mut i = 0i64;
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..50 {
            i += 1;
            users.insert(json!({"name": format!("user {i}")}))?;
            if i > 10 {
                users.update(i - 10, json!({"seen": i}))?;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        if i % 1250 == 0 {
            let s = reader.status();
            let (w, r) = (db.seq(), reader.db().seq());
            println!(
                "{:>6}  {:>10}  {:>10}  {:>13}  {:>11}  {:>13}  {:>9.0}ms",
                start.elapsed().as_millis(),
                w,
                r,
                w.saturating_sub(r),
                s.lag.files,
                s.lag.seq.map_or("-".into(), |n| n.to_string()),
                s.lag.behind.as_secs_f64() * 1e3
            );
        }
    }

    // Writes through the reader are refused.
    let refused = reader.db().table("users")?.insert(json!({"name": "x"}));
    println!("a write through the reader: {}", refused.unwrap_err());

    // The writer shuts down (a final backup); the reader catches up and
    // becomes the writer.
    writer.manager.shutdown(Duration::from_secs(10)).await?;
    let promoted = reader.promote(config()).await?;
    println!(
        "promoted the reader at sequence {} (the writer was at {}): {} records",
        promoted.db.seq(),
        db.seq(),
        promoted.db.table("users")?.len()?
    );
    promoted
        .db
        .table("users")?
        .insert(json!({"name": "written by the promoted reader"}))?;
    let next = promoted.manager.backup_now().await?;
    println!(
        "its first backup continues the chain: {:?} {}",
        next.info().map(|i| i.kind),
        next.info().map_or("", |i| i.file.as_str())
    );
    promoted.manager.stop().await?;
    println!("chain switches seen by the reader: {}", switches.await?);
    Ok(())
}
