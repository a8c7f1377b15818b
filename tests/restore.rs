//! Restore: chain checks, damage, point in time, dry runs, retention.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::fault::FaultyStore;
use dictdb::restore::Restore;
use dictdb::{
    restore_dir, verify_dir, BackupConfig, BackupEvent, BackupManager, BackupName, DictDB, Error,
};
use proptest::prelude::*;
use serde_json::{json, Value};

type State = BTreeMap<String, BTreeMap<String, Value>>;

/// The time in a backup file's name.
fn name_time(file: &str) -> std::time::SystemTime {
    let n = BackupName::parse(file).unwrap();
    std::time::UNIX_EPOCH + std::time::Duration::new(n.secs, n.micros * 1000)
}

/// A chain of one full backup and three deltas; the state after each file.
async fn chain(dir: &Path) -> (DictDB, Vec<String>, Vec<State>, Vec<u64>) {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(dir).incremental(true))
        .await
        .unwrap();
    let mut files = Vec::new();
    let mut states = Vec::new();
    let mut seqs = Vec::new();
    for round in 0..4 {
        for i in 0..5 {
            users.insert(json!({"round": round, "i": i})).unwrap();
        }
        if round > 0 {
            users.update(1, json!({"round": round})).unwrap();
            users.delete(round * 5).unwrap();
        }
        let info = if round == 0 {
            m.backup_full().await.unwrap()
        } else {
            m.backup_delta().await.unwrap().info().unwrap().clone()
        };
        files.push(info.file);
        seqs.push(info.seq);
        states.push(common::table_map(&db));
    }
    m.stop().await.unwrap();
    (db, files, states, seqs)
}

#[tokio::test]
async fn whole_chain_restores_and_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, files, states, seqs) = chain(tmp.path()).await;
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&r.db), states[3]);
    assert_eq!(common::table_map(&r.db), common::table_map(&db));
    assert_eq!(
        r.applied.iter().map(|f| f.name.clone()).collect::<Vec<_>>(),
        files
    );
    assert_eq!(r.seq, Some(seqs[3]));
    assert_eq!(r.db.seq(), seqs[3]);
    assert!(r.verified);
    assert!(r.stopped.is_none());
    assert_eq!(r.affected.len(), 3);
    let report = verify_dir(tmp.path()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report
        .files
        .iter()
        .all(|f| f.status.as_ref().unwrap().is_verified()));
}

#[tokio::test]
async fn point_in_time_and_sequence_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, states, seqs) = chain(tmp.path()).await;
    let t1 = name_time(&files[1]);
    let r = Restore::from_dir(tmp.path())
        .unwrap()
        .until_time(t1)
        .run()
        .await
        .unwrap();
    assert_eq!(r.applied.len(), 2);
    assert_eq!(common::table_map(&r.db), states[1]);
    let r = Restore::from_dir(tmp.path())
        .unwrap()
        .until_seq(seqs[2])
        .run()
        .await
        .unwrap();
    assert_eq!(common::table_map(&r.db), states[2]);
    assert_eq!(r.seq, Some(seqs[2]));
    // A limit inside a delta's range stops before that delta.
    let r = Restore::from_dir(tmp.path())
        .unwrap()
        .until_seq(seqs[2] + 1)
        .run()
        .await
        .unwrap();
    assert_eq!(r.seq, Some(seqs[2]));
    let before_all = name_time(&files[0]) - std::time::Duration::from_secs(1);
    let err = Restore::from_dir(tmp.path())
        .unwrap()
        .until_time(before_all)
        .run()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoBackup(_)), "{err}");
}

#[tokio::test]
async fn dry_run_returns_the_plan_without_loading() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, _, seqs) = chain(tmp.path()).await;
    let plan = Restore::from_dir(tmp.path()).unwrap().plan().await.unwrap();
    assert_eq!(
        plan.files
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>(),
        files
    );
    assert_eq!(plan.files[1].seq, Some((seqs[0], seqs[1])));
    assert_eq!(plan.seq, Some(seqs[3]));
}

#[tokio::test]
async fn missing_delta_in_the_middle_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, states, _) = chain(tmp.path()).await;
    std::fs::remove_file(tmp.path().join(&files[2])).unwrap();
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(
        matches!(err, Error::Chain { ref file, .. } if file == &files[3]),
        "{err}"
    );
    assert!(err.to_string().contains("missing"), "{err}");
    let r = Restore::from_dir(tmp.path())
        .unwrap()
        .stop_at_last_consistent(true)
        .run()
        .await
        .unwrap();
    assert_eq!(common::table_map(&r.db), states[1]);
    assert_eq!(r.stopped.as_ref().unwrap().file, files[3]);
    assert!(!verify_dir(tmp.path()).await.unwrap().is_ok());
}

#[tokio::test]
async fn truncated_last_file_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, states, _) = chain(tmp.path()).await;
    let last = tmp.path().join(&files[3]);
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(err.to_string().contains(&files[3]), "{err}");
    let r = Restore::from_dir(tmp.path())
        .unwrap()
        .stop_at_last_consistent(true)
        .run()
        .await
        .unwrap();
    assert_eq!(common::table_map(&r.db), states[2]);
}

#[tokio::test]
async fn bit_flip_inside_a_value_is_caught_by_the_checksum() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, _, _) = chain(tmp.path()).await;
    let path = tmp.path().join(&files[2]);
    let text = std::fs::read_to_string(&path).unwrap();
    // `"round":2` -> `"round":3`: still valid JSON, still a valid delta.
    let damaged = text.replacen("\"round\":2", "\"round\":3", 1);
    assert_ne!(text, damaged);
    serde_json::from_str::<Value>(&damaged).unwrap();
    std::fs::write(&path, damaged).unwrap();
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(
        matches!(err, Error::ChecksumMismatch { ref file, .. } if file.contains(&files[2])),
        "{err}"
    );
    let report = verify_dir(tmp.path()).await.unwrap();
    assert!(!report.is_ok());
    let bad: Vec<_> = report
        .files
        .iter()
        .filter(|f| f.status.is_err())
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(bad, vec![files[2].clone()]);
}

#[tokio::test]
async fn duplicated_delta_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, _, _) = chain(tmp.path()).await;
    let mut later = BackupName::parse(&files[3]).unwrap();
    later.secs += 10;
    std::fs::copy(
        tmp.path().join(&files[2]),
        tmp.path().join(later.to_string()),
    )
    .unwrap();
    // The copy names the file it was written as: caught before its sequence
    // range even comes into question.
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(err.to_string().contains("renamed or copied"), "{err}");
    assert!(err.to_string().contains(&later.to_string()), "{err}");
}

#[tokio::test]
async fn foreign_files_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _, _, _) = chain(tmp.path()).await;
    std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
    std::fs::write(tmp.path().join("dictdb_backup_latest.json"), "{}").unwrap();
    std::fs::create_dir(tmp.path().join("dictdb_backup_9999999999_000000.json")).unwrap();
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&r.db), common::table_map(&db));
    let report = verify_dir(tmp.path()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report
        .files
        .iter()
        .any(|f| f.name == "notes.txt" && f.kind.is_none()));
}

#[tokio::test]
async fn empty_directory_and_only_deltas() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        restore_dir(tmp.path()).await,
        Err(Error::NoBackup(_))
    ));
    let (_db, files, _, _) = chain(tmp.path()).await;
    std::fs::remove_file(tmp.path().join(&files[0])).unwrap();
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(
        matches!(err, Error::NoBackup(ref m) if m.contains("only deltas")),
        "{err}"
    );
    assert!(restore_dir(tmp.path().join("nope")).await.is_err());
}

#[tokio::test]
async fn damaged_newest_full_fails_or_falls_back_when_lenient() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _files, _, _) = chain(tmp.path()).await;
    let older = common::table_map(&db);
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()))
        .await
        .unwrap();
    db.table("users")
        .unwrap()
        .insert(json!({"late": true}))
        .unwrap();
    let newest = m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    std::fs::write(tmp.path().join(&newest.file), b"{\"tables\": {").unwrap();
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(err.to_string().contains(&newest.file), "{err}");
    let r = Restore::from_dir(tmp.path())
        .unwrap()
        .stop_at_last_consistent(true)
        .run()
        .await
        .unwrap();
    assert_eq!(common::table_map(&r.db), older);
    assert_eq!(r.skipped[0].file, newest.file);
}

/// A backup reached through a symbolic link whose target is gone (the
/// other disk did not mount) keeps its place in the chain: restore, lenient
/// or not, refuses to return the older state as if it were the newest, and
/// verify fails, both naming the entry; a restore to the time of the backup
/// before it works, and one to a time between the two fails (it would have
/// to read the entry to know nothing is missing).
#[cfg(unix)]
#[tokio::test]
async fn a_backup_behind_a_dangling_link_stops_restore_and_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    std::fs::create_dir(&dir).unwrap();
    let (_db, files, states, _) = chain(&dir).await;
    let unmounted = tmp.path().join("other-disk-not-mounted");

    // The newest delta, then (separately) a newer full backup.
    let newer_full = {
        let mut n = BackupName::parse(&files[3]).unwrap();
        n.secs += 1;
        n.to_string().replace("dictdb_delta_", "dictdb_backup_")
    };
    for gone in [files[3].clone(), newer_full] {
        let _ = std::fs::remove_file(dir.join(&files[3]));
        std::os::unix::fs::symlink(unmounted.join(&gone), dir.join(&gone)).unwrap();
        for lenient in [false, true] {
            let err = Restore::from_dir(&dir)
                .unwrap()
                .stop_at_last_consistent(lenient)
                .run()
                .await
                .unwrap_err();
            assert!(err.is_store_failure(), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(&gone) && text.contains("cannot be read"),
                "{text}"
            );
        }
        let report = verify_dir(&dir).await.unwrap();
        assert!(!report.is_ok(), "{report:?}");
        let entry = report.files.iter().find(|f| f.name == gone).unwrap();
        assert!(entry.status.is_err(), "{entry:?}");
        let listed =
            dictdb::restore::list_store(Arc::new(dictdb::LocalStore::existing(&dir).unwrap()))
                .await
                .unwrap();
        let entry = listed.files.iter().find(|f| f.name == gone).unwrap();
        assert!(entry.error.is_some(), "{entry:?}");
        // The state of the file before it is still there to take.
        let r = Restore::from_dir(&dir)
            .unwrap()
            .until_time(name_time(&files[2]))
            .run()
            .await
            .unwrap();
        assert_eq!(common::table_map(&r.db), states[2]);
        // A limit between the two must read the delta to know nothing
        // before the limit is missing (a full backup after the limit is
        // not needed for that).
        let between = name_time(&files[2]) + std::time::Duration::from_micros(1);
        let limited = Restore::from_dir(&dir)
            .unwrap()
            .until_time(between)
            .run()
            .await;
        if gone == files[3] {
            let err = limited.unwrap_err();
            assert!(
                err.to_string().contains("the time of the backup before it"),
                "{err}"
            );
        } else {
            assert_eq!(common::table_map(&limited.unwrap().db), states[2]);
        }
        std::fs::remove_file(dir.join(&gone)).unwrap();
    }
}

#[tokio::test]
async fn pickle_base_is_reported_as_unsupported() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, _, _) = chain(tmp.path()).await;
    let mut p = BackupName::parse(&files[3]).unwrap();
    p.secs += 5;
    let name = p.to_string().replace(".json", ".pickle");
    std::fs::write(tmp.path().join(&name), b"\x80\x04").unwrap();
    let err = restore_dir(tmp.path()).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("pickle"), "{err}");
}

#[tokio::test]
async fn restored_database_continues_the_chain_with_a_new_manager() {
    let tmp = tempfile::tempdir().unwrap();
    let (db, _, _, _) = chain(tmp.path()).await;
    let r = restore_dir(tmp.path()).await.unwrap();
    let restored = r.db;
    let m = BackupManager::start(&restored, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    let users = restored.table("users").unwrap();
    let k = users.insert(json!({"after": "restore"})).unwrap();
    assert_eq!(
        k,
        dictdb::Key::Int(21),
        "keys continue past every key ever handed out"
    );
    let first = m.backup_now().await.unwrap();
    assert_eq!(first.info().unwrap().kind, dictdb::BackupKind::Full);
    users.update(k, json!({"more": 1})).unwrap();
    let d = m.backup_now().await.unwrap();
    assert_eq!(d.info().unwrap().kind, dictdb::BackupKind::Delta);
    assert!(d.info().unwrap().seq > r.seq.unwrap());
    m.stop().await.unwrap();
    let again = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&again.db), common::table_map(&restored));
    assert_ne!(common::table_map(&again.db), common::table_map(&db));
}

#[tokio::test]
async fn retention_keeps_every_needed_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .max_deltas_before_full(2)
            .keep_full_backups(2),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    for i in 0..12 {
        t.insert(json!({"i": i})).unwrap();
        m.backup_now().await.unwrap();
    }
    let files = common::backup_files(tmp.path());
    let fulls: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with("dictdb_backup_"))
        .collect();
    assert_eq!(fulls.len(), 2, "{files:?}");
    // Every delta left builds on a kept full backup.
    assert!(files[0].starts_with("dictdb_backup_"), "{files:?}");
    assert!(tmp.path().join("notes.txt").exists());
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&r.db), common::table_map(&db));
    let mut pruned = 0;
    while let Ok(e) = events.try_recv() {
        if let BackupEvent::Pruned { files } = e {
            pruned += files.len();
        }
    }
    assert!(pruned > 0);
    m.stop().await.unwrap();
}

#[tokio::test]
async fn retention_failure_is_reported_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(tmp.path());
    store.faults.delete.store(true, Ordering::SeqCst);
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::new(store)).keep_full_backups(1),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    for i in 0..3 {
        t.insert(json!({"i": i})).unwrap();
        m.backup_full().await.unwrap();
    }
    assert_eq!(m.consecutive_failures(), 0);
    let mut failed = 0;
    while let Ok(e) = events.try_recv() {
        failed += usize::from(matches!(e, BackupEvent::PruneFailed { .. }));
    }
    assert!(failed >= 2);
    assert_eq!(common::backup_files(tmp.path()).len(), 3);
    m.stop().await.unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8),
    Update(u8, u8),
    Upsert(u8, u8),
    Delete(u8),
    Create(u8),
    Drop(u8),
    Full,
    Delta,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u8>().prop_map(Op::Insert),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Update(a, b)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Upsert(a, b)),
        2 => any::<u8>().prop_map(Op::Delete),
        1 => any::<u8>().prop_map(Op::Create),
        1 => any::<u8>().prop_map(Op::Drop),
        1 => Just(Op::Full),
        2 => Just(Op::Delta),
    ]
}

fn next_keys(db: &DictDB) -> BTreeMap<String, Option<i64>> {
    db.snapshot()
        .tables()
        .iter()
        .map(|t| (t.name().to_string(), t.next_auto_key()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// After any workload, restoring the directory gives exactly the live
    /// state at the last backup.
    #[test]
    fn restore_equals_state_at_last_backup(ops in proptest::collection::vec(op(), 1..60), msgpack in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tmp = tempfile::tempdir().unwrap();
            let db = DictDB::new();
            let format = if msgpack { dictdb::FileFormat::MessagePack } else { dictdb::FileFormat::Json };
            let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true).file_format(format)).await.unwrap();
            let tables = ["a", "b", "c"];
            db.create_table("a").unwrap();
            let mut at_last_backup = None;
            for op in ops {
                match op {
                    Op::Insert(v) | Op::Update(_, v) | Op::Upsert(_, v) | Op::Delete(v) | Op::Create(v) | Op::Drop(v)
                        if db.table_names().is_empty() && !matches!(op, Op::Create(_)) => { let _ = v; }
                    Op::Insert(v) => {
                        let name = db.table_names()[usize::from(v) % db.table_names().len()].clone();
                        db.table(&name).unwrap().insert(json!({"v": v, "f": f64::from(v) / 3.0})).unwrap();
                    }
                    Op::Update(k, v) => {
                        let name = db.table_names()[usize::from(v) % db.table_names().len()].clone();
                        let _ = db.table(&name).unwrap().update(i64::from(k % 16), json!({"u": v}));
                    }
                    Op::Upsert(k, v) => {
                        let name = db.table_names()[usize::from(k) % db.table_names().len()].clone();
                        let t = db.table(&name).unwrap();
                        let pk = t.primary_key().to_string();
                        t.upsert(json!({pk: i64::from(k % 16), "w": v})).unwrap();
                    }
                    Op::Delete(k) => {
                        let name = db.table_names()[usize::from(k) % db.table_names().len()].clone();
                        db.table(&name).unwrap().delete(i64::from(k % 16)).unwrap();
                    }
                    Op::Create(v) => {
                        let name = tables[usize::from(v) % 3];
                        if !db.has_table(name) {
                            if v % 2 == 0 {
                                db.create_table(name).unwrap();
                            } else {
                                db.create_table_with_key(name, "k").unwrap();
                            }
                        }
                    }
                    Op::Drop(v) => {
                        let _ = db.drop_table(tables[usize::from(v) % 3]);
                    }
                    Op::Full => {
                        m.backup_full().await.unwrap();
                        at_last_backup = Some((common::table_map(&db), next_keys(&db)));
                    }
                    Op::Delta => {
                        m.backup_delta().await.unwrap();
                        at_last_backup = Some((common::table_map(&db), next_keys(&db)));
                    }
                }
            }
            m.stop().await.unwrap();
            match at_last_backup {
                None => assert!(matches!(restore_dir(tmp.path()).await, Err(Error::NoBackup(_)))),
                Some((expected, keys)) => {
                    let r = restore_dir(tmp.path()).await.unwrap();
                    assert_eq!(common::table_map(&r.db), expected);
                    assert!(r.verified);
                    // Key counters survive too: no key is ever handed out twice.
                    assert_eq!(next_keys(&r.db), keys);
                }
            }
        });
    }
}

#[tokio::test]
async fn a_twin_of_the_full_backup_is_not_taken_for_the_base_its_deltas_name() {
    // Two full backups of one time (a copy in another format, or a `zstd`
    // run that kept the original): the deltas name the one they build on,
    // and restore uses that one, whichever sorts last.
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, states, seqs) = chain(tmp.path()).await;
    let stem = files[0].strip_suffix(".json").unwrap();
    for twin in [format!("{stem}.msgpack"), format!("{stem}.json.zst")] {
        std::fs::write(tmp.path().join(&twin), b"not a backup").unwrap();
        let r = restore_dir(tmp.path()).await.unwrap();
        assert_eq!(r.applied.len(), 4, "{twin}");
        assert_eq!(r.applied[0].name, files[0]);
        assert_eq!(r.seq, Some(seqs[3]));
        assert_eq!(common::table_map(&r.db), states[3]);
        // Verify reports the twin, and names the chain restore uses last.
        let report = verify_dir(tmp.path()).await.unwrap();
        assert!(!report.is_ok(), "{twin}");
        assert_eq!(
            report.newest_chain().unwrap().base.as_deref(),
            Some(files[0].as_str())
        );
        let sound = Restore::from_dir(tmp.path())
            .unwrap()
            .newest_sound_chain()
            .await
            .unwrap();
        assert_eq!(sound.base.as_deref(), Some(files[0].as_str()));
        std::fs::remove_file(tmp.path().join(&twin)).unwrap();
    }
}

#[tokio::test]
async fn the_newest_sound_chain_passes_over_newer_chains_that_do_not_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let (_db, files, _, _) = chain(tmp.path()).await;
    let r = Restore::from_dir(tmp.path()).unwrap();
    let sound = r.newest_sound_chain().await.unwrap();
    assert_eq!(sound.base.as_deref(), Some(files[0].as_str()));
    assert!(sound.newer_unsound.is_empty());
    // Garbage under a newer name: not taken for the newest chain.
    let fake = "dictdb_backup_4102444799_000000.json";
    std::fs::write(tmp.path().join(fake), r#"{"tables":{}}"#).unwrap();
    let sound = r.newest_sound_chain().await.unwrap();
    assert_eq!(sound.base.as_deref(), Some(files[0].as_str()));
    assert_eq!(sound.newer_unsound.len(), 1);
    assert_eq!(sound.newer_unsound[0].file, fake);
    // A damaged last delta: the chain does not restore strictly.
    let last = tmp.path().join(&files[3]);
    let mut bytes = std::fs::read(&last).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 1;
    std::fs::write(&last, bytes).unwrap();
    let sound = r.newest_sound_chain().await.unwrap();
    assert_eq!(sound.base, None);
    assert_eq!(sound.newer_unsound.len(), 2);
}

/// A backup moved to another disk and linked back under its name is read
/// through the link (it used to be left out silently: verify said OK and
/// restore returned an older state); deleting it removes the link only.
/// Any other entry named like a backup that is not a regular file is
/// reported as skipped, never read.
#[cfg(unix)]
#[tokio::test]
async fn symlinked_backups_are_read_and_other_entries_reported() {
    use dictdb::store::BackupStore;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    std::fs::create_dir(&dir).unwrap();
    let elsewhere = tmp.path().join("other-disk");
    std::fs::create_dir(&elsewhere).unwrap();
    let (db, files, _, seqs) = chain(&dir).await;
    // The newest delta, and the full backup, behind links.
    for f in [&files[3], &files[0]] {
        std::fs::rename(dir.join(f), elsewhere.join(f)).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(f), dir.join(f)).unwrap();
    }
    let r = restore_dir(&dir).await.unwrap();
    assert_eq!(r.seq, Some(seqs[3]));
    assert_eq!(common::table_map(&r.db), common::table_map(&db));
    let report = verify_dir(&dir).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report
        .files
        .iter()
        .filter(|f| files.contains(&f.name))
        .all(|f| f.status.as_ref().unwrap().is_verified()));

    // Not regular files: a dangling link, links to a directory and a device.
    let dangling = "dictdb_delta_9999999990_000000.json";
    std::os::unix::fs::symlink(tmp.path().join("gone"), dir.join(dangling)).unwrap();
    let to_dir = "dictdb_delta_9999999991_000000.json";
    std::os::unix::fs::symlink(&elsewhere, dir.join(to_dir)).unwrap();
    let to_dev = "dictdb_delta_9999999992_000000.json";
    std::os::unix::fs::symlink("/dev/zero", dir.join(to_dev)).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("gone"), dir.join("notes.link")).unwrap();
    let store = dictdb::LocalStore::existing(&dir).unwrap();
    let listing = store.list_all().await.unwrap();
    let skipped: Vec<&str> = listing.skipped.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(skipped, [dangling, to_dir, to_dev], "{listing:?}");
    assert!(
        listing.skipped[0].reason.contains("symbolic link"),
        "{listing:?}"
    );
    assert!(listing
        .files
        .iter()
        .all(|f| !f.name.starts_with("dictdb_delta_99")));
    let report = verify_dir(&dir).await.unwrap();
    assert!(
        report
            .files
            .iter()
            .any(|f| f.name == dangling && f.note.is_some()),
        "{report:?}"
    );
    assert_eq!(restore_dir(&dir).await.unwrap().seq, Some(seqs[3]));

    // Deleting a linked backup removes the link, never its target.
    store.delete(&files[3]).await.unwrap();
    assert!(std::fs::symlink_metadata(dir.join(&files[3])).is_err());
    assert!(elsewhere.join(&files[3]).is_file());
}

/// A manager started on a store whose newest backup-named entry cannot be
/// read refuses to start rather than build its chain on an older head (its
/// next delta would skip the unreadable file's changes).
#[cfg(unix)]
#[tokio::test]
async fn a_manager_does_not_start_on_a_store_whose_newest_entry_cannot_be_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    std::fs::create_dir(&dir).unwrap();
    let (db, files, _, _) = chain(&dir).await;
    let gone = files[3].clone();
    std::fs::remove_file(dir.join(&gone)).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("not-mounted").join(&gone), dir.join(&gone))
        .unwrap();
    let config = || BackupConfig::new(&dir).incremental(true);
    let err = BackupManager::start(&db, config()).await.unwrap_err();
    assert!(err.to_string().contains(&gone), "{err}");
    let err = BackupManager::restore_or_start(config()).await.unwrap_err();
    assert!(err.to_string().contains(&gone), "{err}");
    // Once the entry is dealt with, the service starts again.
    std::fs::remove_file(dir.join(&gone)).unwrap();
    let resumed = BackupManager::restore_or_start(config()).await.unwrap();
    assert_eq!(resumed.restored.unwrap().applied.len(), 3);
    resumed.manager.stop().await.unwrap();
}

/// Retention plans on a full backup it cannot read as on any other: the
/// deltas after it are its chain's, not deltas without a base to delete;
/// when the rules let that chain go, it goes whole, the link with it (never
/// the link's target).
#[cfg(unix)]
#[tokio::test]
async fn retention_keeps_the_deltas_of_a_full_backup_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    std::fs::create_dir(&dir).unwrap();
    let (db, files, states, _) = chain(&dir).await;
    let config = || BackupConfig::new(&dir).incremental(true);
    let m = BackupManager::start(&db, config()).await.unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    // The old chain's full backup lives on a disk that did not mount.
    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let f1 = &files[0];
    std::fs::rename(dir.join(f1), disk.join(f1)).unwrap();
    let unmount = || {
        let _ = std::fs::remove_file(dir.join(f1));
        std::os::unix::fs::symlink(tmp.path().join("not-mounted").join(f1), dir.join(f1)).unwrap();
    };
    unmount();

    let m = BackupManager::start(&db, config().keep_full_backups(5))
        .await
        .unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    for f in &files[1..] {
        assert!(dir.join(f).is_file(), "{f} was deleted");
    }
    // The disk is back: the old chain restores whole.
    std::fs::remove_file(dir.join(f1)).unwrap();
    std::os::unix::fs::symlink(disk.join(f1), dir.join(f1)).unwrap();
    let r = Restore::from_dir(&dir)
        .unwrap()
        .until_time(name_time(&files[3]))
        .run()
        .await
        .unwrap();
    assert_eq!(common::table_map(&r.db), states[3]);

    // Rules that let the old chain go delete it whole, link included.
    unmount();
    let m = BackupManager::start(&db, config().keep_full_backups(1))
        .await
        .unwrap();
    m.backup_full().await.unwrap();
    m.stop().await.unwrap();
    for f in &files {
        assert!(std::fs::symlink_metadata(dir.join(f)).is_err(), "{f} kept");
    }
    assert!(
        disk.join(f1).is_file(),
        "the link's target is never deleted"
    );
    assert!(verify_dir(&dir).await.unwrap().is_ok());
}
