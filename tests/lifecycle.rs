//! A service's lifecycle: start (on an empty store, on a store that is
//! ahead, restore-on-start), one writer per store, notifications on a real
//! clock, deltas on a base that disappears, retries that back off, status,
//! events as a stream, shutdown with a deadline, a panicking actor.
//!
//! The five defects of issue 10 each have a test named `defect_*` that
//! fails on the code before the fix. Every time-based behaviour is tested
//! on paused time (exact schedule) and on the real clock (short intervals,
//! generous bounds): paused time freezes `Instant::now()`, which once hid
//! a first notification that never fired.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::fault::{FaultyStore, HangingStore};
use dictdb::{restore_dir, BackupConfig, BackupEvent, BackupKind, BackupManager, DictDB, Error};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::time::{advance, Instant};
use tokio_stream::StreamExt;

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// The next completed or failed backup, or `None` after `within`.
async fn next_backup(
    events: &mut broadcast::Receiver<BackupEvent>,
    within: Duration,
) -> Option<BackupEvent> {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(e @ (BackupEvent::Completed(_) | BackupEvent::Failed { .. })) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

fn completed(e: Option<BackupEvent>) -> dictdb::BackupInfo {
    match e {
        Some(BackupEvent::Completed(info)) => info,
        other => panic!("expected a completed backup, got {other:?}"),
    }
}

/// Waits (a millisecond at a time, at most 5 s of the runtime's clock)
/// until `f` holds.
async fn eventually(f: impl Fn() -> bool) {
    for _ in 0..5000 {
        if f() {
            return;
        }
        tokio::time::sleep(MS).await;
    }
    panic!("condition still false after 5 s");
}

fn db_with_users() -> (DictDB, dictdb::Table) {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    (db, users)
}

// --- defect 1: the first notification -------------------------------------

#[tokio::test]
async fn defect_1_first_notify_fires_on_the_real_clock() {
    // Before the fix the first notification waited for the periodic timer
    // (an hour here): `Debounce::deadline()` read `Instant::now()`, always
    // later than the `now` it was compared with.
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .backup_interval(3600 * S)
            .min_backup_interval(50 * MS),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    users.insert(json!({"name": "a"})).unwrap();
    m.notify_change();
    let info = completed(next_backup(&mut events, 5 * S).await);
    assert_eq!(info.records, 1);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn first_notify_fires_at_once_on_paused_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .backup_interval(3600 * S)
            .min_backup_interval(5 * S),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    advance(10 * S).await; // notified long after the start
    users.insert(json!({"name": "a"})).unwrap();
    let t = Instant::now();
    m.notify_change();
    completed(next_backup(&mut events, 5 * S).await);
    assert!(t.elapsed() < MS, "at once, not {:?} later", t.elapsed());
    m.stop().await.unwrap();
}

#[tokio::test]
async fn notifications_in_the_window_coalesce_on_the_real_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let window = 150 * MS;
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .backup_interval(3600 * S)
            .min_backup_interval(window),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    let t0 = std::time::Instant::now();
    users.insert(json!({"n": 0})).unwrap();
    m.notify_change();
    completed(next_backup(&mut events, 5 * S).await);
    for i in 1..4 {
        users.insert(json!({"n": i})).unwrap();
        m.notify_change();
    }
    // The window started after t0: before t0 + window nothing new may start.
    if t0.elapsed() < window - 30 * MS {
        assert_eq!(common::backup_files(tmp.path()).len(), 1, "deferred");
    }
    let second = completed(next_backup(&mut events, 5 * S).await);
    assert!(t0.elapsed() >= window, "not before the window's end");
    assert_eq!(second.records, 4, "one backup holds every change");
    // Three notifications, one backup.
    assert!(next_backup(&mut events, 2 * window).await.is_none());
    assert_eq!(common::backup_files(tmp.path()).len(), 2);
    m.stop().await.unwrap();
}

#[tokio::test]
async fn periodic_backups_on_the_real_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let t0 = std::time::Instant::now();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).backup_interval(100 * MS))
        .await
        .unwrap();
    let mut events = m.subscribe();
    users.insert(json!({"n": 1})).unwrap();
    completed(next_backup(&mut events, 5 * S).await);
    assert!(t0.elapsed() >= 100 * MS, "not before the interval");
    completed(next_backup(&mut events, 5 * S).await);
    assert!(t0.elapsed() >= 200 * MS);
    m.stop().await.unwrap();
}

// --- defect 2: deltas on a base that no longer exists ---------------------

#[tokio::test(start_paused = true)]
async fn defect_2_a_missing_base_makes_the_next_backup_full() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    let mut events = m.subscribe();
    users.insert(json!({"n": 1})).unwrap();
    let base = m.backup_full().await.unwrap();
    users.insert(json!({"n": 2})).unwrap();
    assert_eq!(
        m.backup_delta().await.unwrap().info().unwrap().kind,
        BackupKind::Delta
    );
    // The base disappears (by hand, by another manager's retention, ...).
    std::fs::remove_file(tmp.path().join(&base.file)).unwrap();
    users.insert(json!({"n": 3})).unwrap();
    let out = m.backup_delta().await.unwrap();
    assert_eq!(
        out.info().unwrap().kind,
        BackupKind::Full,
        "no delta on a missing base"
    );
    let mut reason = None;
    while let Ok(e) = events.try_recv() {
        if let BackupEvent::FullInsteadOfDelta { reason: r } = e {
            reason = Some(r);
        }
    }
    let reason = reason.expect("an event says why");
    assert!(
        reason.contains(&base.file) && reason.contains("missing"),
        "{reason}"
    );
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_backup_directory_deleted_and_recreated_gets_a_full_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    let (db, users) = db_with_users();
    let m = BackupManager::start(&db, BackupConfig::new(&dir).incremental(true))
        .await
        .unwrap();
    users.insert(json!({"n": 1})).unwrap();
    m.backup_full().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    users.insert(json!({"n": 2})).unwrap();
    let out = m.backup_now().await.unwrap();
    assert_eq!(out.info().unwrap().kind, BackupKind::Full);
    let restored = restore_dir(&dir).await.unwrap();
    assert_eq!(restored.db.table("users").unwrap().len().unwrap(), 2);
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_base_deleted_while_the_delta_is_written_is_caught_before_the_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let (store, gate) = FaultyStore::gated(tmp.path());
    let faults = Arc::clone(&store.faults);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store)).incremental(true),
    )
    .await
    .unwrap();
    gate.add_permits(1);
    users.insert(json!({"n": 1})).unwrap();
    let base = m.backup_full().await.unwrap();
    users.insert(json!({"n": 2})).unwrap();
    let m2 = m.clone();
    let delta = tokio::spawn(async move { m2.backup_delta().await });
    // The first check passed (the base was there), and the delta waits on
    // the store. The base goes between that check and the commit.
    while faults.at_gate.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(MS).await;
    }
    assert_eq!(faults.stats.load(Ordering::SeqCst), 1);
    std::fs::remove_file(tmp.path().join(&base.file)).unwrap();
    gate.add_permits(2);
    let out = delta.await.unwrap().unwrap();
    assert_eq!(out.info().unwrap().kind, BackupKind::Full);
    assert_eq!(faults.stats.load(Ordering::SeqCst), 2, "checked again");
    assert_eq!(
        faults.commits.load(Ordering::SeqCst),
        2,
        "the delta was aborted, never committed"
    );
    let files = common::backup_files(tmp.path());
    assert_eq!(files.len(), 1, "only the new full backup: {files:?}");
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    m.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_stat_fails_the_delta_and_keeps_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let store = FaultyStore::new(tmp.path());
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store.clone())).incremental(true),
    )
    .await
    .unwrap();
    users.insert(json!({"n": 1})).unwrap();
    m.backup_full().await.unwrap();
    users.insert(json!({"n": 2})).unwrap();
    store.faults.stat.store(true, Ordering::SeqCst);
    let err = m.backup_delta().await.unwrap_err();
    assert!(err.to_string().contains("stat"), "{err}");
    assert_eq!(m.consecutive_failures(), 1);
    store.heal();
    // A store that could not answer is not a reason for a full backup.
    let out = m.backup_delta().await.unwrap();
    assert_eq!(out.info().unwrap().kind, BackupKind::Delta);
    m.stop().await.unwrap();
}

// --- defect 3: a database behind its store --------------------------------

async fn store_with_100_records(dir: &std::path::Path) -> String {
    let (db, users) = db_with_users();
    for i in 0..100 {
        users.insert(json!({"i": i})).unwrap();
    }
    let m = BackupManager::start(&db, BackupConfig::new(dir).incremental(true))
        .await
        .unwrap();
    let full = m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    full.file
}

#[tokio::test(start_paused = true)]
async fn defect_3_an_empty_database_does_not_bury_a_store_ahead_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let newest = store_with_100_records(tmp.path()).await;
    // A service restarted without restoring: empty, with its tables.
    let (db, _users) = db_with_users();
    let started =
        BackupManager::start(&db, BackupConfig::new(tmp.path()).keep_full_backups(1)).await;
    match started {
        Err(Error::StoreAhead {
            newest: n,
            store_seq,
            db_seq,
            ..
        }) => {
            assert_eq!(n, newest);
            assert_eq!((store_seq, db_seq), (Some(101), 1));
        }
        Ok(m) => {
            // What used to happen: the empty backup buries the 100 records
            // and retention deletes them.
            m.backup_full().await.unwrap();
            m.stop().await.unwrap();
            let restored = restore_dir(tmp.path()).await.unwrap();
            panic!(
                "started behind the store; a restore now finds {} records",
                restored.db.table("users").unwrap().len().unwrap()
            );
        }
        Err(other) => panic!("{other}"),
    }
    let msg = started_error_message(&db, tmp.path()).await;
    assert!(
        msg.contains(&newest) && msg.contains("allow_store_ahead"),
        "{msg}"
    );
    assert_eq!(
        restore_dir(tmp.path())
            .await
            .unwrap()
            .db
            .table("users")
            .unwrap()
            .len()
            .unwrap(),
        100
    );
}

async fn started_error_message(db: &DictDB, dir: &std::path::Path) -> String {
    BackupManager::start(db, BackupConfig::new(dir))
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn starting_behind_the_store_is_allowed_when_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    store_with_100_records(tmp.path()).await;
    let (db, users) = db_with_users();
    users.insert(json!({"fresh": true})).unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).allow_store_ahead(true))
        .await
        .unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    let restored = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(restored.db.table("users").unwrap().len().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_database_at_or_past_the_store_starts() {
    let tmp = tempfile::tempdir().unwrap();
    store_with_100_records(tmp.path()).await;
    // The restored database is exactly at the store's head.
    let restored = restore_dir(tmp.path()).await.unwrap();
    let m = BackupManager::start(&restored.db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    m.stop().await.unwrap();
    // Python original's files carry no sequence: an empty database is
    // behind them, a loaded one is not.
    let py = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(common::python_fixture_dir()).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().starts_with("dictdb_") {
            std::fs::copy(f.path(), py.path().join(f.file_name())).unwrap();
        }
    }
    let empty = DictDB::new();
    assert!(matches!(
        BackupManager::start(&empty, BackupConfig::new(py.path())).await,
        Err(Error::StoreAhead {
            store_seq: None,
            ..
        })
    ));
    let loaded = restore_dir(py.path()).await.unwrap().db;
    let m = BackupManager::start(&loaded, BackupConfig::new(py.path()))
        .await
        .unwrap();
    m.stop().await.unwrap();
}

// --- restore on start -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn restore_or_start_continues_the_chain_with_a_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || BackupConfig::new(tmp.path()).incremental(true);

    // First run: an empty store gives an empty database.
    let first = BackupManager::restore_or_start(config()).await.unwrap();
    assert!(first.restored.is_none());
    assert!(first.db.table_names().is_empty());
    let users = first.db.create_table("users").unwrap();
    users.insert(json!({"name": "a"})).unwrap();
    let base = first.manager.backup_full().await.unwrap();
    users.insert(json!({"name": "b"})).unwrap();
    first.manager.backup_now().await.unwrap();
    users.update(1, json!({"seen": 1})).unwrap();
    first.manager.shutdown(10 * S).await.unwrap(); // a last full backup
    let last_full = common::backup_files(tmp.path())
        .into_iter()
        .rfind(|f| f.starts_with("dictdb_backup_"))
        .unwrap();
    assert_ne!(last_full, base.file);

    // Second run: a delta first, then more deltas on it.
    let second = BackupManager::restore_or_start(config()).await.unwrap();
    let restored = second.restored.as_ref().unwrap();
    assert_eq!(restored.applied[0].name, last_full);
    assert_eq!(restored.seq, Some(second.db.seq()));
    let users = second.db.table("users").unwrap();
    users.insert(json!({"name": "c"})).unwrap();
    users.delete(2).unwrap();
    let out = second.manager.backup_now().await.unwrap();
    let d1 = out.info().unwrap().clone();
    assert_eq!(d1.kind, BackupKind::Delta, "the next backup is a delta");
    assert_eq!(d1.from_seq, restored.seq, "continuing at the restored cut");
    assert_eq!(second.manager.status().base.as_deref(), Some(&*last_full));
    second.manager.stop().await.unwrap();

    // Third run: restores the full backup and the delta, writes another.
    let third = BackupManager::restore_or_start(config()).await.unwrap();
    assert_eq!(third.restored.as_ref().unwrap().applied.len(), 2);
    assert_eq!(third.manager.deltas_since_full(), 1);
    third
        .db
        .table("users")
        .unwrap()
        .insert(json!({"name": "d"}))
        .unwrap();
    let d2 = third.manager.backup_now().await.unwrap();
    assert_eq!(d2.info().unwrap().kind, BackupKind::Delta);
    third.manager.stop().await.unwrap();

    // Every write is there, through a chain restore accepts.
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(r.applied.len(), 3);
    assert!(r.verified);
    assert_eq!(common::table_map(&r.db), common::table_map(&third.db));
    let names: Vec<_> = r.db.table("users").unwrap().all().unwrap();
    assert_eq!(names.len(), 3, "{names:?}"); // a, c, d (b deleted)
}

#[tokio::test(start_paused = true)]
async fn restore_or_start_refuses_a_broken_chain() {
    let tmp = tempfile::tempdir().unwrap();
    store_with_100_records(tmp.path()).await;
    let full = common::backup_files(tmp.path()).pop().unwrap();
    let path = tmp.path().join(full);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let err = BackupManager::restore_or_start(BackupConfig::new(tmp.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    // And the lock was released with the failed start.
    let m = BackupManager::start(
        &DictDB::new(),
        BackupConfig::new(tmp.path()).allow_store_ahead(true),
    )
    .await
    .unwrap();
    m.stop().await.unwrap();
}

// --- one writer per store -------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_second_manager_on_the_same_directory_fails_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _) = db_with_users();
    let first = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    let other = DictDB::new();
    match BackupManager::start(&other, BackupConfig::new(tmp.path())).await {
        Err(Error::Locked { location, holder }) => {
            assert_eq!(location, tmp.path().display().to_string());
            assert!(holder.contains(&std::process::id().to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        BackupManager::restore_or_start(BackupConfig::new(tmp.path())).await,
        Err(Error::Locked { .. })
    ));
    // The lock file is not a backup: list, verify and restore ignore it.
    first.backup_full().await.unwrap();
    assert!(tmp.path().join(".dictdb-lock").is_file());
    let report = dictdb::verify_dir(tmp.path()).await.unwrap();
    assert!(report.is_ok());
    assert_eq!(report.files.len(), 1, "{:?}", report.files);
    first.stop().await.unwrap();
    // Released when the actor ends.
    let second = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    second.stop().await.unwrap();
    assert!(
        tmp.path().join(".dictdb-lock").is_file(),
        "never deleted, so no writer can slip in between"
    );
}

#[tokio::test(start_paused = true)]
async fn the_lock_is_released_when_every_handle_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    let mut events = m.subscribe();
    drop(m);
    // The actor ends (its event stream closes), and with it the lock.
    while events.recv().await.is_ok() {}
    let again = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    again.stop().await.unwrap();
}

/// Run by [`a_second_process_cannot_write_to_a_locked_directory`] in a
/// child process (ignored in normal runs): tries to start a manager on the
/// directory in `DICTDB_LOCK_PROBE_DIR` and prints what happened.
#[tokio::test]
#[ignore = "helper run in a child process by another test"]
async fn lock_probe_child() {
    let Ok(dir) = std::env::var("DICTDB_LOCK_PROBE_DIR") else {
        return;
    };
    let outcome = match BackupManager::start(&DictDB::new(), BackupConfig::new(&dir)).await {
        Ok(m) => {
            m.stop().await.unwrap();
            "started".to_string()
        }
        Err(e @ Error::Locked { .. }) => format!("locked: {e}"),
        Err(e) => format!("error: {e}"),
    };
    println!("LOCK_PROBE {outcome}");
}

fn probe(dir: &std::path::Path) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["lock_probe_child", "--exact", "--ignored", "--nocapture"])
        .env("DICTDB_LOCK_PROBE_DIR", dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOCK_PROBE ").map(str::to_string))
        .unwrap_or_else(|| {
            panic!(
                "no answer from the child: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

#[tokio::test]
async fn a_second_process_cannot_write_to_a_locked_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let answer = tokio::task::spawn_blocking(move || probe(&dir))
        .await
        .unwrap();
    assert!(answer.starts_with("locked: "), "{answer}");
    assert!(
        answer.contains(&format!("pid {}", std::process::id())),
        "{answer}"
    );
    m.stop().await.unwrap();
    let dir = tmp.path().to_path_buf();
    let answer = tokio::task::spawn_blocking(move || probe(&dir))
        .await
        .unwrap();
    assert_eq!(answer, "started");
}

// --- defect 4: retries back off -------------------------------------------

#[tokio::test(start_paused = true)]
async fn defect_4_failed_backups_back_off_instead_of_retrying_every_window() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let store = FaultyStore::new(tmp.path());
    store.faults.create.store(true, Ordering::SeqCst);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store.clone()))
            .backup_interval(3600 * S)
            .min_backup_interval(5 * S)
            .max_retry_interval(60 * S),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    users.insert(json!({"n": 1})).unwrap();
    let t0 = Instant::now();
    m.notify_change();
    let mut attempts = Vec::new();
    let mut retry = Vec::new();
    for _ in 0..7 {
        match next_backup(&mut events, 300 * S).await {
            Some(BackupEvent::Failed { retry_in, .. }) => {
                attempts.push(t0.elapsed().as_secs());
                retry.push(retry_in.map(|d| d.as_secs()));
            }
            other => panic!("{other:?}"),
        }
    }
    // Before the fix: every 5 s, forever (40 attempts in 200 s, not 7).
    assert_eq!(attempts, [0, 5, 15, 35, 75, 135, 195]);
    assert_eq!(
        retry,
        [5, 10, 20, 40, 60, 60, 60].map(Some),
        "each failure says when the next try is"
    );
    let status = m.status();
    assert_eq!(status.consecutive_failures, 7);
    assert_eq!(status.retry_in, Some(60 * S));
    assert!(status.last_error.is_some());
    // Healed: the next retry succeeds and resets the backoff.
    store.heal();
    completed(next_backup(&mut events, 300 * S).await);
    assert_eq!(t0.elapsed().as_secs(), 255);
    let status = m.status();
    assert_eq!((status.consecutive_failures, status.retry_in), (0, None));
    store.faults.create.store(true, Ordering::SeqCst);
    users.insert(json!({"n": 2})).unwrap();
    m.notify_change();
    match next_backup(&mut events, 300 * S).await {
        Some(BackupEvent::Failed { retry_in, .. }) => assert_eq!(retry_in, Some(5 * S)),
        other => panic!("{other:?}"),
    }
    m.stop().await.unwrap();
}

#[tokio::test]
async fn retries_back_off_on_the_real_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let store = FaultyStore::new(tmp.path());
    store.faults.create.store(true, Ordering::SeqCst);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store.clone()))
            .backup_interval(3600 * S)
            .min_backup_interval(20 * MS)
            .max_retry_interval(S),
    )
    .await
    .unwrap();
    users.insert(json!({"n": 1})).unwrap();
    m.notify_change();
    tokio::time::sleep(600 * MS).await;
    // Attempts at 0, 20, 60, 140, 300 ms, then 620: about five. Without
    // backoff, thirty.
    let attempts = store.faults.creates.load(Ordering::SeqCst);
    assert!((3..=7).contains(&attempts), "{attempts} attempts in 600 ms");
    store.heal();
    let mut events = m.subscribe();
    completed(next_backup(&mut events, 5 * S).await);
    m.stop().await.unwrap();
}

// --- change-count triggers ------------------------------------------------

#[tokio::test(start_paused = true)]
async fn change_count_rules_fire_like_redis_save() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .backup_interval(36_000 * S)
            .min_backup_interval(S)
            .backup_after(10, 60 * S)
            .backup_after(1, 900 * S),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    let t0 = Instant::now();
    for i in 0..9 {
        users.insert(json!({"i": i})).unwrap();
    }
    // 9 changes: the 10-change rule waits, the 1-change rule waits 900 s.
    advance(30 * S).await;
    users.insert(json!({"i": 9})).unwrap();
    // 10 changes: due 60 s after the start.
    let info = completed(next_backup(&mut events, 100 * S).await);
    assert_eq!(info.records, 10);
    assert_eq!(t0.elapsed(), 60 * S);
    // Ten more changes right away: not before 60 s after that backup.
    let t1 = Instant::now();
    for i in 0..10 {
        users.insert(json!({"j": i})).unwrap();
    }
    completed(next_backup(&mut events, 100 * S).await);
    assert_eq!(t1.elapsed(), 60 * S);
    // One change: the 900 s rule.
    let t2 = Instant::now();
    users.insert(json!({"k": 1})).unwrap();
    completed(next_backup(&mut events, 1000 * S).await);
    assert_eq!(t2.elapsed(), 900 * S);
    // No change, no backup (until the periodic timer).
    assert!(next_backup(&mut events, 3000 * S).await.is_none());
    m.stop().await.unwrap();
}

#[tokio::test]
async fn change_count_rules_on_the_real_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .backup_interval(3600 * S)
            .min_backup_interval(20 * MS)
            .backup_after(5, 50 * MS),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    let t0 = std::time::Instant::now();
    for i in 0..5 {
        users.insert(json!({"i": i})).unwrap();
    }
    // 5 changes: no notify_change() needed.
    let info = completed(next_backup(&mut events, 5 * S).await);
    assert!(t0.elapsed() >= 50 * MS);
    assert_eq!(info.records, 5);
    for i in 0..3 {
        users.insert(json!({"j": i})).unwrap();
    }
    // 3 changes: below the rule's count.
    assert!(next_backup(&mut events, 300 * MS).await.is_none());
    users.insert(json!({"j": 3})).unwrap();
    users.insert(json!({"j": 4})).unwrap();
    let info = completed(next_backup(&mut events, 5 * S).await);
    assert_eq!((info.kind, info.records), (BackupKind::Delta, 5));
    m.stop().await.unwrap();
}

// --- defect 5: shutdown with a deadline, a panicking actor ----------------

#[tokio::test(start_paused = true)]
async fn defect_5_shutdown_returns_by_its_deadline_on_a_store_that_never_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    users.insert(json!({"n": 1})).unwrap();
    let store = HangingStore::new(tmp.path(), false);
    let aborts = Arc::clone(&store.aborts);
    let m = BackupManager::start(&db, BackupConfig::with_store(Arc::new(store)))
        .await
        .unwrap();
    let t0 = Instant::now();
    let err = m.shutdown(5 * S).await.unwrap_err();
    assert!(
        t0.elapsed() <= 5 * S + 10 * MS,
        "returned after {:?}",
        t0.elapsed()
    );
    match &err {
        Error::ShutdownDeadline { timeout, .. } => assert_eq!(*timeout, 5 * S),
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("deadline"), "{err}");
    // The abort runs in the background, and the actor ends after it.
    eventually(|| aborts.load(Ordering::SeqCst) == 1 && !m.status().running).await;
    assert!(matches!(m.backup_full().await, Err(Error::ManagerStopped)));
}

#[tokio::test]
async fn shutdown_deadline_on_the_real_clock_with_a_backup_in_flight() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    users.insert(json!({"n": 1})).unwrap();
    let store = HangingStore::new(tmp.path(), true);
    let m = BackupManager::start(&db, BackupConfig::with_store(Arc::new(store)))
        .await
        .unwrap();
    // A backup in flight that never ends (what `stop()` used to wait on
    // forever), then a shutdown with 200 ms to go.
    let m2 = m.clone();
    let in_flight = tokio::spawn(async move { m2.backup_full().await });
    tokio::time::sleep(20 * MS).await;
    assert!(m.status().in_flight);
    let t0 = std::time::Instant::now();
    let err = m.shutdown(200 * MS).await.unwrap_err();
    let took = t0.elapsed();
    assert!(took >= 190 * MS && took < 2 * S, "returned after {took:?}");
    assert!(matches!(err, Error::ShutdownDeadline { .. }), "{err}");
    // The backup in flight was aborted too, and the actor ended.
    let aborted = tokio::time::timeout(2 * S, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(aborted, Err(Error::ShutdownDeadline { .. })),
        "{aborted:?}"
    );
    let ended = tokio::time::timeout(2 * S, async {
        while m.status().running {
            tokio::time::sleep(5 * MS).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the actor ended");
}

#[tokio::test(start_paused = true)]
async fn shutdown_writes_a_final_full_backup_and_releases_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    users.insert(json!({"n": 1})).unwrap();
    m.backup_now().await.unwrap();
    users.insert(json!({"n": 2})).unwrap();
    let info = m.shutdown(10 * S).await.unwrap();
    assert_eq!((info.kind, info.records), (BackupKind::Full, 2));
    assert!(!m.status().running);
    m.stop().await.unwrap(); // stopping a stopped manager is fine
    let again = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    again.stop().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn defect_5_stop_reports_an_actor_that_panicked() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _) = db_with_users();
    let store = FaultyStore::new(tmp.path());
    store.faults.panic.store(true, Ordering::SeqCst);
    let m = BackupManager::start(&db, BackupConfig::with_store(Arc::new(store)))
        .await
        .unwrap();
    let backup = m.backup_full().await;
    assert!(
        matches!(&backup, Err(Error::ManagerPanicked(msg)) if msg.contains("injected panic")),
        "{backup:?}"
    );
    let stopped = m.stop().await;
    assert!(
        matches!(&stopped, Err(Error::ManagerPanicked(_))),
        "{stopped:?}"
    );
    assert!(matches!(m.stop().await, Err(Error::ManagerPanicked(_))));
    assert!(!m.status().running);
}

// --- status and events ----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn status_reports_successes_failures_pending_changes_and_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let (store, gate) = FaultyStore::gated(tmp.path());
    let faults = Arc::clone(&store.faults);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store))
            .incremental(true)
            .backup_interval(300 * S),
    )
    .await
    .unwrap();
    common::settle().await;
    let s = m.status();
    assert!(s.running && !s.in_flight);
    assert!(s.last_success.is_none() && s.last_error.is_none());
    assert_eq!(s.next_due_in, Some(300 * S));
    for i in 0..3 {
        users.insert(json!({"i": i})).unwrap();
    }
    // Folded once the actor runs (after its start-up look at the store).
    eventually(|| m.status().changes_pending == 3).await;

    let m2 = m.clone();
    let full = tokio::spawn(async move { m2.backup_full().await });
    eventually(|| faults.at_gate.load(Ordering::SeqCst) == 1).await;
    let s = m.status();
    assert!(s.in_flight, "answered while a backup is being written");
    assert_eq!(s.changes_pending, 3);
    gate.add_permits(1);
    let info = full.await.unwrap().unwrap();
    let s = m.status();
    assert!(!s.in_flight);
    let last = s.last_success.unwrap();
    assert_eq!(
        (last.file.as_str(), last.seq, last.kind),
        (info.file.as_str(), 4, BackupKind::Full)
    );
    assert!(last.at <= std::time::SystemTime::now());
    assert_eq!(s.changes_pending, 0);
    assert_eq!(s.base.as_deref(), Some(info.file.as_str()));

    faults.create.store(true, Ordering::SeqCst);
    users.insert(json!({"i": 9})).unwrap();
    gate.add_permits(1);
    let err = m.backup_delta().await.unwrap_err();
    let s = m.status();
    assert_eq!(s.consecutive_failures, 1);
    let failure = s.last_error.unwrap();
    assert_eq!(failure.kind, BackupKind::Delta);
    assert_eq!(failure.error.to_string(), err.to_string());
    assert_eq!(s.changes_pending, 1, "kept for the next try");
    m.stop().await.unwrap();
    let s = m.status();
    assert!(!s.running && s.next_due_in.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_ends_when_the_actor_ends_while_handles_live() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, users) = db_with_users();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    let mut stream = m.events();
    let mut receiver = m.subscribe();
    users.insert(json!({"n": 1})).unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    // `m` is alive: the stream still ends.
    let seen: Vec<BackupEvent> = tokio::time::timeout(5 * S, (&mut stream).collect())
        .await
        .expect("the stream ended");
    assert!(
        matches!(seen.as_slice(), [BackupEvent::Completed(_)]),
        "{seen:?}"
    );
    assert!(matches!(
        receiver.recv().await,
        Ok(BackupEvent::Completed(_))
    ));
    assert!(matches!(
        receiver.recv().await,
        Err(broadcast::error::RecvError::Closed)
    ));
    // Subscribing after the end gives an ended stream.
    assert!(m.events().next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_slow_event_subscriber_is_told_what_it_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _) = db_with_users();
    let store = FaultyStore::new(tmp.path());
    store.faults.create.store(true, Ordering::SeqCst);
    let m = BackupManager::start(&db, BackupConfig::with_store(Arc::new(store)))
        .await
        .unwrap();
    let mut stream = m.events();
    // 1,100 events (failures: nothing written), the channel holds 1,024.
    for _ in 0..1100 {
        assert!(m.backup_full().await.is_err());
    }
    m.stop().await.unwrap();
    match stream.next().await.unwrap() {
        BackupEvent::SubscriberLagged { missed } => assert_eq!(missed, 1100 - 1024),
        other => panic!("{other:?}"),
    }
    let mut rest = 0;
    while stream.next().await.is_some() {
        rest += 1;
    }
    assert_eq!(rest, 1024);
}
