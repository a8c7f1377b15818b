//! Soak: several writers at full speed with a short backup interval for a
//! bounded time; the figures are printed (`cargo test --test soak -- --nocapture`)
//! and the final restore must equal the live state.
//!
//! `DICTDB_SOAK_SECS` sets the duration (default 2 s).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dictdb::{restore_dir, BackupConfig, BackupEvent, BackupKind, BackupManager, DictDB};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_at_full_speed_with_frequent_backups() {
    let secs: u64 = std::env::var("DICTDB_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    for t in ["a", "b", "c"] {
        db.create_table(t).unwrap();
    }
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .backup_interval(Duration::from_millis(50))
            .min_backup_interval(Duration::from_millis(10))
            .max_deltas_before_full(8)
            .keep_full_backups(3),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    let stats = tokio::spawn(async move {
        let (mut full, mut delta, mut failed, mut lagged, mut bytes) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        loop {
            match events.recv().await {
                Ok(BackupEvent::Completed(i)) => {
                    bytes += i.bytes;
                    if i.kind == BackupKind::Full {
                        full += 1
                    } else {
                        delta += 1
                    }
                }
                Ok(BackupEvent::Failed { .. }) => failed += 1,
                Ok(BackupEvent::Lagged { missed }) => lagged += missed,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
        (full, delta, failed, lagged, bytes)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for (w, name) in ["a", "b", "c"].into_iter().enumerate() {
        let t = db.table(name).unwrap();
        let stop = Arc::clone(&stop);
        let ops = Arc::clone(&ops);
        let m = m.clone();
        writers.push(std::thread::spawn(move || {
            let mut i: i64 = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = t
                    .insert(json!({"w": w, "i": i, "s": "x".repeat((i % 40) as usize)}))
                    .unwrap();
                if i % 2 == 0 {
                    t.update(key.clone(), json!({"u": i})).unwrap();
                }
                if i % 3 == 0 {
                    t.delete(key).unwrap();
                }
                if i % 500 == 0 {
                    m.notify_change();
                }
                ops.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let elapsed = started.elapsed();
    let last = m.backup_now().await.unwrap();
    m.stop().await.unwrap();
    drop(m);
    let (full, delta, failed, lagged, bytes) = stats.await.unwrap();
    let restored = restore_dir(tmp.path()).await.unwrap();
    let records: usize = db
        .table_names()
        .iter()
        .map(|t| db.table(t).unwrap().len().unwrap())
        .sum();
    println!(
        "soak: {:.1} s, {} writer operations ({:.0}/s), {} full backups, {} deltas, {} failed, \
         {} mutation events missed, {:.1} MB written, {} records live, last backup {:?}",
        elapsed.as_secs_f64(),
        ops.load(Ordering::Relaxed),
        ops.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
        full,
        delta,
        failed,
        lagged,
        bytes as f64 / 1e6,
        records,
        last.info().map(|i| i.kind)
    );
    assert_eq!(failed, 0);
    assert!(
        full >= 1 && full + delta >= 3,
        "too few backups: {full} full, {delta} deltas"
    );
    assert_eq!(restored.seq, Some(db.seq()));
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
}
