//! Disk faults injected through the storage seam: every failure is reported,
//! counted, leaves no partial file under a final name, keeps the pending
//! changes for the next backup, and a failed commit (fsync, rename) makes the
//! next backup full.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::fault::FaultyStore;
use dictdb::{restore_dir, BackupConfig, BackupEvent, BackupKind, BackupManager, DictDB, Error};
use serde_json::json;
use tokio::sync::broadcast;

#[derive(Clone, Copy, Debug)]
enum Fault {
    Create,
    MidWrite,
    NoSpaceAfter(u64),
    Fsync,
    Rename,
}

fn arm(store: &FaultyStore, fault: Fault) {
    let f = &store.faults;
    match fault {
        Fault::Create => f.create.store(true, Ordering::SeqCst),
        Fault::MidWrite => f.write_after.store(1, Ordering::SeqCst),
        Fault::NoSpaceAfter(k) => f.write_after.store(k, Ordering::SeqCst),
        Fault::Fsync => f.fsync.store(true, Ordering::SeqCst),
        Fault::Rename => f.rename.store(true, Ordering::SeqCst),
    }
}

fn failed_event(events: &mut broadcast::Receiver<BackupEvent>) -> Option<(BackupKind, Error, u32)> {
    while let Ok(e) = events.try_recv() {
        if let BackupEvent::Failed {
            kind,
            error,
            consecutive_failures,
            ..
        } = e
        {
            return Some((kind, error, consecutive_failures));
        }
    }
    None
}

/// Runs one fault scenario against a delta backup.
async fn scenario(fault: Fault) {
    let tmp = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(tmp.path());
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    for i in 0..3000 {
        t.insert(json!({"i": i, "pad": "p".repeat(64)})).unwrap();
    }
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store.clone()))
            .incremental(true)
            .on_backup_failure(move |_, n| seen.store(n, Ordering::SeqCst)),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    m.backup_full().await.unwrap();
    let before = common::backup_files(tmp.path());

    // Changes that must survive the failure. Enough of them that the delta
    // spans several chunks for the mid-file faults.
    for i in 0..3000 {
        t.update(i + 1, json!({"changed": i})).unwrap();
    }
    arm(&store, fault);
    let err = m.backup_delta().await.expect_err("the fault must surface");
    assert!(!matches!(err, Error::ManagerStopped), "{fault:?}: {err}");
    assert_eq!(m.consecutive_failures(), 1, "{fault:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{fault:?}: callback");
    let (kind, ev_err, n) = failed_event(&mut events).expect("a Failed event");
    assert_eq!((kind, n), (BackupKind::Delta, 1), "{fault:?}");
    assert_eq!(ev_err.to_string(), err.to_string());
    // Nothing new under a final name, no temporary file left behind.
    // The manager's lock file aside (it is no backup, and stays).
    let all: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n != ".dictdb-lock")
        .collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(
        sorted, before,
        "{fault:?}: partial or temporary file left: {all:?}"
    );

    // More changes while broken, then heal.
    t.insert(json!({"after": "fault"})).unwrap();
    store.heal();
    let out = m.backup_delta().await.unwrap();
    let info = out.info().unwrap().clone();
    if matches!(fault, Fault::Fsync | Fault::Rename) {
        // A failed commit may or may not have left the file: never build on it.
        assert_eq!(
            info.kind,
            BackupKind::Full,
            "{fault:?}: after a failed commit the next backup is full"
        );
    } else {
        assert_eq!(info.kind, BackupKind::Delta, "{fault:?}");
        assert_eq!(info.records, 3001, "{fault:?}: the pending delta was kept");
    }
    assert_eq!(m.consecutive_failures(), 0);
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(
        common::table_map(&restored.db),
        common::table_map(&db),
        "{fault:?}"
    );
    m.stop().await.unwrap();
}

#[tokio::test]
async fn error_on_create() {
    scenario(Fault::Create).await;
}

#[tokio::test]
async fn error_mid_write() {
    scenario(Fault::MidWrite).await;
}

#[tokio::test]
async fn no_space_left_after_k_bytes() {
    for k in [0, 100, 70_000] {
        scenario(Fault::NoSpaceAfter(k)).await;
    }
}

#[tokio::test]
async fn fsync_failure_forces_a_full_backup_next() {
    scenario(Fault::Fsync).await;
}

#[tokio::test]
async fn error_on_rename() {
    scenario(Fault::Rename).await;
}

#[tokio::test]
async fn full_backup_failures_keep_the_chain_usable() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(tmp.path());
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store.clone())).incremental(true),
    )
    .await
    .unwrap();
    t.insert(json!({"a": 1})).unwrap();
    m.backup_full().await.unwrap();
    t.insert(json!({"a": 2})).unwrap();
    store.faults.write_after.store(10, Ordering::SeqCst);
    assert!(m.backup_full().await.is_err());
    assert!(m.backup_full().await.is_err());
    assert_eq!(m.consecutive_failures(), 2);
    store.heal();
    // The failed full backups did not cut the chain: a delta still continues it.
    t.insert(json!({"a": 3})).unwrap();
    let out = m.backup_delta().await.unwrap();
    assert_eq!(out.info().unwrap().kind, BackupKind::Delta);
    assert_eq!(out.info().unwrap().records, 2);
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test]
async fn local_directory_replaced_by_a_file_fails_cleanly() {
    // Root ignores permission bits, so the directory itself is swapped out.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let db = DictDB::new();
    db.create_table("t")
        .unwrap()
        .insert(json!({"x": 1}))
        .unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(&dir))
        .await
        .unwrap();
    // (It holds the manager's lock file.)
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"file").unwrap();
    let err = m.backup_full().await.unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(m.consecutive_failures(), 1);
    assert_eq!(std::fs::read(&dir).unwrap(), b"file");
    m.stop().await.unwrap();
}
