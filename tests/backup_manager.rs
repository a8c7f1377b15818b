//! The BackupManager: schedule, debounce, incremental chain, failures, lag,
//! stop, and each place where dictdb must beat the Python original.
//! Everything timed runs on paused Tokio time.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fault::FaultyStore;
use dictdb::{
    restore_dir, BackupConfig, BackupEvent, BackupKind, BackupManager, BackupOutcome, DictDB,
    Error, FileFormat,
};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::time::advance;

/// Waits for the next completed or failed backup event.
async fn next_backup(events: &mut broadcast::Receiver<BackupEvent>) -> BackupEvent {
    loop {
        match events.recv().await.expect("event stream ended") {
            e @ (BackupEvent::Completed(_) | BackupEvent::Failed { .. }) => return e,
            _ => continue,
        }
    }
}

fn kind_of(e: &BackupEvent) -> Option<BackupKind> {
    match e {
        BackupEvent::Completed(i) => Some(i.kind),
        _ => None,
    }
}

fn setup() -> (tempfile::TempDir, DictDB) {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    db.create_table("users").unwrap();
    (tmp, db)
}

#[tokio::test(start_paused = true)]
async fn config_defaults_and_invalid_configs_are_errors() {
    let (tmp, db) = setup();
    let zero = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path()).backup_interval(Duration::ZERO),
    )
    .await;
    assert!(matches!(zero, Err(Error::Config(_))));
    let zero =
        BackupManager::start(&db, BackupConfig::new(tmp.path()).max_deltas_before_full(0)).await;
    assert!(matches!(zero, Err(Error::Config(_))));
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        BackupManager::start(&db, BackupConfig::new(&file)).await,
        Err(Error::Config(_))
    ));
    // The directory is created if missing.
    let nested = tmp.path().join("a/b/c");
    let m = BackupManager::start(&db, BackupConfig::new(&nested))
        .await
        .unwrap();
    assert!(nested.is_dir());
    assert_eq!(m.consecutive_failures(), 0);
    assert_eq!(m.deltas_since_full(), 0);
    m.stop().await.unwrap();
    let dbg = format!("{:?}", BackupConfig::new("x"));
    assert!(
        dbg.contains("300s") && dbg.contains("5s") && dbg.contains("max_deltas_before_full: 10"),
        "{dbg}"
    );
}

#[test]
fn start_outside_a_runtime_is_an_error_not_a_panic() {
    // `start` is async: polled once by hand, with no runtime around, it
    // answers at once with an error.
    let (tmp, db) = setup();
    let start = std::pin::pin!(BackupManager::start(&db, BackupConfig::new(tmp.path())));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(matches!(
        start.poll(&mut cx),
        std::task::Poll::Ready(Err(Error::Config(_)))
    ));
}

#[tokio::test(start_paused = true)]
async fn periodic_backups_every_interval() {
    let (tmp, db) = setup();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path()).backup_interval(Duration::from_secs(300)),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    db.table("users")
        .unwrap()
        .insert(json!({"name": "a"}))
        .unwrap();
    advance(Duration::from_secs(299)).await;
    common::settle().await;
    assert!(
        common::backup_files(tmp.path()).is_empty(),
        "no backup before the interval"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        kind_of(&next_backup(&mut events).await),
        Some(BackupKind::Full)
    );
    advance(Duration::from_secs(300)).await;
    assert_eq!(
        kind_of(&next_backup(&mut events).await),
        Some(BackupKind::Full)
    );
    assert_eq!(common::backup_files(tmp.path()).len(), 2);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn notify_inside_window_is_deferred_not_dropped() {
    // The original drops a notify_change() that comes within
    // min_backup_interval of the last backup; here every notification in the
    // window coalesces into one backup at the window's end.
    let (tmp, db) = setup();
    let users = db.table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .backup_interval(Duration::from_secs(3600))
            .min_backup_interval(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    users.insert(json!({"n": 1})).unwrap();
    m.notify_change(); // outside any window: at once
    assert!(matches!(
        next_backup(&mut events).await,
        BackupEvent::Completed(_)
    ));
    assert_eq!(common::backup_files(tmp.path()).len(), 1);

    for i in 0..3 {
        advance(Duration::from_secs(1)).await;
        users.insert(json!({"n": 10 + i})).unwrap();
        m.notify_change();
    }
    common::settle().await;
    assert_eq!(
        common::backup_files(tmp.path()).len(),
        1,
        "deferred, not immediate"
    );
    advance(Duration::from_secs(2)).await; // the window ends 5 s after the first backup
    let e = next_backup(&mut events).await;
    let BackupEvent::Completed(info) = e else {
        panic!("{e:?}")
    };
    assert_eq!(info.records, 4, "the trailing backup holds every change");
    common::settle().await;
    advance(Duration::from_secs(60)).await;
    common::settle().await;
    assert_eq!(
        common::backup_files(tmp.path()).len(),
        2,
        "three notifications, one backup"
    );
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn incremental_chain_first_full_then_deltas_then_compaction() {
    let (tmp, db) = setup();
    let users = db.table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .max_deltas_before_full(2),
    )
    .await
    .unwrap();
    let mut kinds = Vec::new();
    for i in 0..7 {
        users.insert(json!({"i": i})).unwrap();
        let out = m.backup_now().await.unwrap();
        kinds.push(out.info().unwrap().kind);
    }
    use BackupKind::{Delta as D, Full as F};
    // The original writes a delta with no base first; here the first is full.
    assert_eq!(kinds, vec![F, D, D, F, D, D, F]);
    assert_eq!(m.deltas_since_full(), 0);
    users.insert(json!({"i": 99})).unwrap();
    m.backup_now().await.unwrap();
    assert_eq!(m.deltas_since_full(), 1);
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    assert!(restored.verified);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn empty_delta_is_skipped() {
    let (tmp, db) = setup();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    m.backup_full().await.unwrap();
    assert_eq!(m.backup_delta().await.unwrap(), BackupOutcome::Skipped);
    assert_eq!(m.backup_now().await.unwrap(), BackupOutcome::Skipped);
    assert_eq!(common::backup_files(tmp.path()).len(), 1);
    db.table("users").unwrap().insert(json!({"x": 1})).unwrap();
    let out = m.backup_delta().await.unwrap();
    let info = out.info().unwrap();
    assert_eq!((info.kind, info.records), (BackupKind::Delta, 1));
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn backup_results_say_what_was_written() {
    let (tmp, db) = setup();
    let users = db.table("users").unwrap();
    for i in 0..5 {
        users.insert(json!({"i": i})).unwrap();
    }
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    let full = m.backup_full().await.unwrap();
    assert_eq!(full.kind, BackupKind::Full);
    assert_eq!(full.records, 5);
    assert_eq!(full.seq, db.seq());
    let on_disk = std::fs::metadata(tmp.path().join(&full.file))
        .unwrap()
        .len();
    assert_eq!(full.bytes, on_disk);
    assert!(full.checksum.starts_with("xxh3-64:"));
    users.delete(1).unwrap();
    users.update(2, json!({"x": 1})).unwrap();
    let delta = m.backup_delta().await.unwrap();
    let d = delta.info().unwrap();
    assert_eq!(
        (d.kind, d.records, d.from_seq),
        (BackupKind::Delta, 2, Some(full.seq))
    );
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failure_reporting_keeps_pending_changes_and_resets_after_success() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&calls);
    let m = BackupManager::start(
        &db,
        BackupConfig::new(&dir)
            .incremental(true)
            .on_backup_failure(move |_err, n| {
                seen.store(n, Ordering::SeqCst);
            }),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    users.insert(json!({"name": "before"})).unwrap();
    m.backup_full().await.unwrap();
    next_backup(&mut events).await;
    users.insert(json!({"name": "pending-1"})).unwrap();

    // The directory becomes a plain file: nothing can be written (root or not).
    std::fs::rename(&dir, tmp.path().join("moved")).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    for expected in 1..=2u32 {
        let err = m.backup_delta().await.unwrap_err();
        assert!(!matches!(err, Error::ManagerStopped), "{err}");
        assert_eq!(m.consecutive_failures(), expected);
        assert_eq!(calls.load(Ordering::SeqCst), expected);
        match next_backup(&mut events).await {
            BackupEvent::Failed {
                consecutive_failures,
                kind,
                ..
            } => assert_eq!((consecutive_failures, kind), (expected, BackupKind::Delta)),
            other => panic!("{other:?}"),
        }
    }
    users.insert(json!({"name": "pending-2"})).unwrap();

    // Heal: the same directory comes back.
    std::fs::remove_file(&dir).unwrap();
    std::fs::rename(tmp.path().join("moved"), &dir).unwrap();
    let out = m.backup_delta().await.unwrap();
    let info = out.info().unwrap();
    assert_eq!(info.kind, BackupKind::Delta);
    assert_eq!(info.records, 2, "changes from before the failures are kept");
    assert_eq!(m.consecutive_failures(), 0);
    let restored = restore_dir(&dir).await.unwrap();
    assert_eq!(restored.db.table("users").unwrap().len().unwrap(), 3);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_failure_callback_does_not_kill_the_actor() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    db.create_table("t").unwrap();
    let store = FaultyStore::new(tmp.path());
    store.faults.create.store(true, Ordering::SeqCst);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store.clone()))
            .on_backup_failure(|_, _| panic!("callback bug")),
    )
    .await
    .unwrap();
    assert!(m.backup_full().await.is_err());
    store.heal();
    assert!(
        m.backup_full().await.is_ok(),
        "the actor survived the panicking callback"
    );
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lagged_mutation_stream_gives_an_exact_delta_by_comparing_cuts() {
    // The original would write a delta missing the events it never saw; the
    // previous release wrote a full backup instead. The delta now compares
    // the last backup's cut with the new one: exact, and as small as the
    // changes.
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::with_event_capacity(8);
    let users = db.create_table("users").unwrap();
    for i in 0..50 {
        users.insert(json!({"i": i})).unwrap();
    }
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    let mut events = m.subscribe();
    m.backup_full().await.unwrap();
    // The actor cannot run while this loop holds the (single) thread.
    for i in 0..100 {
        users.insert(json!({"i": i})).unwrap();
    }
    users.update(3, json!({"changed": true})).unwrap();
    users.delete(4).unwrap();
    db.create_table("late")
        .unwrap()
        .insert(json!({"x": 1}))
        .unwrap();
    db.drop_table("late").unwrap();
    db.create_table_with_key("late", "k").unwrap();
    let out = m.backup_delta().await.unwrap();
    let info = out.info().unwrap();
    assert_eq!(
        info.kind,
        BackupKind::Delta,
        "an exact delta, not a full backup"
    );
    // 100 inserts, an update, a delete: what changed, not the table.
    assert_eq!(info.records, 102);
    let mut saw_lag = false;
    let mut saw_full = false;
    while let Ok(e) = events.try_recv() {
        saw_lag |= matches!(e, BackupEvent::Lagged { .. });
        saw_full |= matches!(e, BackupEvent::FullInsteadOfDelta { .. });
    }
    assert!(saw_lag && !saw_full);
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    assert_eq!(restored.seq, Some(db.seq()));
    assert_eq!(
        restored.db.table("late").unwrap().primary_key(),
        "k",
        "a table dropped and created again with another key field"
    );
    // And again, with the event stream whole.
    users.insert(json!({"i": 1000})).unwrap();
    assert_eq!(
        m.backup_delta().await.unwrap().info().unwrap().kind,
        BackupKind::Delta
    );
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test]
async fn lag_before_any_backup_of_this_manager_still_means_a_full_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::with_event_capacity(4);
    let users = db.create_table("users").unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    for i in 0..50 {
        users.insert(json!({"i": i})).unwrap();
    }
    let out = m.backup_delta().await.unwrap();
    assert_eq!(out.info().unwrap().kind, BackupKind::Full);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn changes_made_during_a_backup_belong_to_the_next_delta() {
    // The original clears its dirty set after writing, losing these changes.
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    let (store, gate) = FaultyStore::gated(tmp.path());
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store)).incremental(true),
    )
    .await
    .unwrap();
    gate.add_permits(1);
    users.insert(json!({"name": "a"})).unwrap();
    m.backup_full().await.unwrap();

    users.insert(json!({"name": "in-first-delta"})).unwrap();
    let m2 = m.clone();
    let in_flight = tokio::spawn(async move { m2.backup_delta().await });
    common::settle().await; // the delta is cut and waits on the store
    users.insert(json!({"name": "during-the-write"})).unwrap();
    users.update(1, json!({"touched": true})).unwrap();
    gate.add_permits(1);
    let first = in_flight.await.unwrap().unwrap();
    assert_eq!(first.info().unwrap().records, 1);
    gate.add_permits(1);
    let second = m.backup_delta().await.unwrap();
    assert_eq!(
        second.info().unwrap().records,
        2,
        "the changes made during the write"
    );
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn tables_created_and_dropped_after_the_full_backup_survive_restore() {
    // The original skips tables it does not know when applying a delta.
    let (tmp, db) = setup();
    db.create_table("doomed")
        .unwrap()
        .insert(json!({"x": 1}))
        .unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    m.backup_full().await.unwrap();
    let events = db.create_table_with_key("events", "event_id").unwrap();
    events.insert(json!({"event_id": "ev-1"})).unwrap();
    db.drop_table("doomed").unwrap();
    m.backup_delta().await.unwrap();
    // Dropped and re-created with another key field in one window.
    db.drop_table("users").unwrap();
    db.create_table_with_key("users", "uid")
        .unwrap()
        .insert(json!({"uid": "u1"}))
        .unwrap();
    m.backup_delta().await.unwrap();
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(restored.db.table_names(), vec!["events", "users"]);
    assert_eq!(restored.db.table("users").unwrap().primary_key(), "uid");
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn auto_keys_stay_unique_after_restore() {
    // The original can hand out a key again after apply_delta.
    let (tmp, db) = setup();
    let users = db.table("users").unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    m.backup_full().await.unwrap();
    for _ in 0..3 {
        users.insert(json!({"n": 1})).unwrap(); // keys 1, 2, 3
    }
    users.delete(3).unwrap();
    m.backup_delta().await.unwrap();
    let restored = restore_dir(tmp.path()).await.unwrap();
    let key = restored
        .db
        .table("users")
        .unwrap()
        .insert(json!({"n": 2}))
        .unwrap();
    assert_eq!(
        key,
        dictdb::Key::Int(4),
        "3 was handed out before the delete"
    );
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn same_microsecond_backups_get_distinct_ordered_names() {
    let (tmp, db) = setup();
    let users = db.table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .max_deltas_before_full(1000),
    )
    .await
    .unwrap();
    let mut written = Vec::new();
    for i in 0..40 {
        users.insert(json!({"i": i})).unwrap();
        written.push(m.backup_now().await.unwrap().info().unwrap().file.clone());
    }
    let mut sorted = written.clone();
    sorted.sort_by_key(|n| dictdb::BackupName::parse(n).unwrap());
    assert_eq!(written, sorted, "names sort in write order");
    sorted.dedup();
    assert_eq!(sorted.len(), 40);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn deltas_use_the_configured_format() {
    // The original always writes deltas as JSON.
    let (tmp, db) = setup();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .file_format(FileFormat::MessagePack),
    )
    .await
    .unwrap();
    m.backup_full().await.unwrap();
    db.table("users")
        .unwrap()
        .insert(json!({"x": 1.5}))
        .unwrap();
    let d = m.backup_delta().await.unwrap();
    let name = &d.info().unwrap().file;
    assert!(
        name.starts_with("dictdb_delta_") && name.ends_with(".msgpack"),
        "{name}"
    );
    for f in common::backup_files(tmp.path()) {
        assert!(f.ends_with(".msgpack"), "{f}");
    }
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn failed_write_leaves_no_file_under_a_final_name() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    for i in 0..2000 {
        t.insert(json!({"i": i, "pad": "x".repeat(100)})).unwrap();
    }
    let store = FaultyStore::new(tmp.path());
    store.faults.write_after.store(10_000, Ordering::SeqCst);
    let m = BackupManager::start(&db, BackupConfig::with_store(Arc::new(store.clone())))
        .await
        .unwrap();
    assert!(m.backup_full().await.is_err());
    store.heal();
    store.faults.rename.store(true, Ordering::SeqCst);
    assert!(m.backup_full().await.is_err());
    // The manager's lock file aside (it is no backup, and stays).
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".dictdb-lock")
        .collect();
    assert!(
        left.is_empty(),
        "no partial or temporary file left: {left:?}"
    );
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn stop_finishes_the_backup_in_flight_then_refuses_work() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    db.create_table("t")
        .unwrap()
        .insert(json!({"a": 1}))
        .unwrap();
    let (store, gate) = FaultyStore::gated(tmp.path());
    let m = BackupManager::start(&db, BackupConfig::with_store(Arc::new(store)))
        .await
        .unwrap();
    let m2 = m.clone();
    let in_flight = tokio::spawn(async move { m2.backup_full().await });
    common::settle().await;
    let m3 = m.clone();
    let stopping = tokio::spawn(async move { m3.stop().await });
    common::settle().await;
    assert!(
        !stopping.is_finished(),
        "stop waits for the backup in flight"
    );
    gate.add_permits(1);
    let info = in_flight.await.unwrap().unwrap();
    stopping.await.unwrap().unwrap();
    assert!(
        tmp.path().join(&info.file).exists(),
        "the backup in flight completed"
    );
    assert!(matches!(m.backup_full().await, Err(Error::ManagerStopped)));
    m.notify_change(); // harmless after stop
    m.stop().await.unwrap(); // idempotent
    assert_eq!(
        common::backup_files(tmp.path()).len(),
        1,
        "nothing new after stop"
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_the_actor() {
    let (tmp, db) = setup();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    let mut events = m.subscribe();
    let clone = m.clone();
    drop(m);
    drop(clone);
    // The actor held the last sender of the event stream.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(broadcast::error::RecvError::Closed) = events.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the actor is still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_during_backups_restore_to_the_live_state() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .max_deltas_before_full(3),
    )
    .await
    .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let users = users.clone();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut i: i64 = 0;
            // Bounded: an unbounded writer on a loaded 2-core machine grows
            // the table faster than full backups of it finish (each one
            // longer than the last), and the test never ended, before
            // issue 10's changes as after.
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                i += 1;
                let key = users.insert(json!({"i": i})).unwrap();
                if i % 3 == 0 {
                    users.update(key.clone(), json!({"u": i})).unwrap();
                }
                if i % 5 == 0 {
                    users.delete(key).unwrap();
                }
                if i % 1000 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            i
        })
    };
    for _ in 0..12 {
        m.backup_now().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let ops = writer.join().unwrap();
    assert!(ops > 100);
    m.backup_delta().await.unwrap();
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(restored.seq, Some(db.seq()));
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}
