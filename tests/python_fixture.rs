//! The real backup chain written by the Python original must load and restore exactly.

mod common;

use dictdb::{apply_delta, DictDB, FileFormat};
use serde_json::Value;

#[test]
fn full_backup_loads_with_every_value_exact() {
    let dir = common::python_fixture_dir();
    let db = DictDB::load(
        dir.join("dictdb_backup_1795682694_728491.json"),
        FileFormat::Json,
    )
    .unwrap();
    let users = db.table("users").unwrap();
    let alice = users.get(1).unwrap().unwrap();
    assert_eq!(alice["profile"]["city"], "Zürich");
    let big = users.get(5).unwrap().unwrap();
    assert_eq!(big["age"].as_u64(), Some(9007199254740993));
    assert_eq!(big["profile"]["min_i64"].as_i64(), Some(i64::MIN));
    assert_eq!(big["profile"]["max_i64"].as_i64(), Some(i64::MAX));
    assert_eq!(big["score"].as_f64(), Some(f64::MAX));
    let jose = users.get(2).unwrap().unwrap();
    assert!(jose["score"].as_f64().unwrap().is_sign_negative());
    assert!(jose["score"].is_f64());
    let zoe = users.get(4).unwrap().unwrap();
    assert_eq!(zoe["score"].as_f64(), Some(1e-300));
    let taro = users.get(3).unwrap().unwrap();
    assert_eq!(taro["tags"][1], "🎉");
    // Auto keys continue after the loaded ones.
    let next = users.insert(serde_json::json!({"name": "new"})).unwrap();
    assert_eq!(next, dictdb::Key::Int(7));
    assert_eq!(db.table("events").unwrap().primary_key(), "event_id");
}

#[test]
fn chain_restores_to_expected_final_state() {
    let dir = common::python_fixture_dir();
    let db = DictDB::load(
        dir.join("dictdb_backup_1795682694_728491.json"),
        FileFormat::Json,
    )
    .unwrap();
    let mut affected = Vec::new();
    for delta in [
        "dictdb_delta_1795682694_732481.json",
        "dictdb_delta_1795682694_736609.json",
        "dictdb_delta_1795682694_740524.json",
    ] {
        affected.push(apply_delta(&db, dir.join(delta)).unwrap());
    }
    assert!(affected.iter().all(|&n| n > 0), "{affected:?}");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected_final.json")).unwrap()).unwrap();
    assert_eq!(common::dump(&db), expected);
}

#[tokio::test]
async fn directory_restores_in_one_call_and_is_reported_unverified() {
    let dir = common::python_fixture_dir();
    let restored = dictdb::restore_dir(&dir).await.unwrap();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected_final.json")).unwrap()).unwrap();
    assert_eq!(common::dump(&restored.db), expected);
    assert_eq!(restored.applied.len(), 4);
    assert_eq!(
        restored.applied[0].name,
        "dictdb_backup_1795682694_728491.json"
    );
    assert!(!restored.verified, "the original writes no checksums");
    assert_eq!(restored.seq, None);
}

/// Without the key field the table cannot be made: the delta is refused,
/// naming the table and the option (a lenient restore stops before it, at
/// the fixture's final state); with it, the table is created and both
/// deltas apply; verify agrees with restore either way.
#[tokio::test]
async fn a_table_created_after_the_original_full_backup_restores_given_its_key_field() {
    let tmp = common::chain_with_a_table_created_after_the_full_backup();
    let restore = || dictdb::restore::Restore::from_dir(tmp.path()).unwrap();
    let err = restore().run().await.unwrap_err().to_string();
    assert!(
        err.contains("dictdb_delta_1795682695_000000.json")
            && err.contains("`audit`")
            && err.contains("--key-field audit=FIELD"),
        "{err}"
    );
    let lenient = restore().stop_at_last_consistent(true).run().await.unwrap();
    let expected: Value = serde_json::from_slice(
        &std::fs::read(common::python_fixture_dir().join("expected_final.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(common::dump(&lenient.db), expected, "stops at the last cut");
    assert!(lenient.stopped.is_some());
    assert!(!restore().verify().await.unwrap().is_ok());

    // A key field for a table the chain holds is not consulted.
    let given = || {
        restore()
            .key_field("audit", "audit_id")
            .key_field("users", "name")
    };
    let restored = given().run().await.unwrap();
    assert_eq!(restored.applied.len(), 6);
    let audit = restored.db.table("audit").unwrap();
    assert_eq!(audit.primary_key(), "audit_id");
    let keys: Vec<String> = restored
        .db
        .snapshot()
        .table("audit")
        .unwrap()
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(keys, [r#""a-2""#, r#""a-3""#], "keys shown as JSON");
    let users = restored.db.table("users").unwrap();
    assert_eq!(users.primary_key(), "id");
    assert_eq!(users.get(1).unwrap().unwrap()["note"], "audited");
    assert!(given().verify().await.unwrap().is_ok());
}

/// A service taking over the original's store restores it on start with
/// the key field given in its configuration, and its own backups then
/// carry the table: a plain restore afterwards needs no option.
#[tokio::test]
async fn restore_or_start_takes_the_key_field_from_its_configuration() {
    let tmp = common::chain_with_a_table_created_after_the_full_backup();
    let config = || dictdb::BackupConfig::new(tmp.path()).incremental(true);
    let err = match dictdb::BackupManager::restore_or_start(config()).await {
        Ok(_) => panic!("started without the key field"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("`audit`"), "{err}");
    let started =
        dictdb::BackupManager::restore_or_start(config().restore_key_field("audit", "audit_id"))
            .await
            .unwrap();
    let audit = started.db.table("audit").unwrap();
    assert_eq!(audit.primary_key(), "audit_id");
    assert_eq!(audit.len().unwrap(), 2);
    started.manager.backup_full().await.unwrap();
    started.manager.stop().await.unwrap();
    let again = dictdb::restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::dump(&again.db), common::dump(&started.db));
}

/// The fixture's files rewritten by a tool that sorts keys (`jq -S`,
/// Python's `sort_keys=True`): each delta's `tables` now come before its
/// `timestamp` and `type`. The original reads them as before (a dict has no
/// order); so must every reader here: `restore_dir`, `verify_dir`,
/// `apply_delta`. The header of such a delta is read to its end (past the
/// first bytes a listing reads) to find the `type`.
#[tokio::test]
async fn a_chain_whose_keys_were_sorted_restores_to_the_expected_state() {
    let tmp = common::python_fixture_copy();
    let mut deltas = Vec::new();
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        let value: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let sorted = sort_keys(value);
        let text = serde_json::to_string_pretty(&sorted).unwrap();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("dictdb_delta_")
        {
            // The precondition: `tables` first, `type` last, and the file
            // longer than a listing's first read.
            let (t, y) = (
                text.find("\"tables\"").unwrap(),
                text.find("\"type\"").unwrap(),
            );
            assert!(t < y, "{text}");
            deltas.push((path.clone(), text.len()));
        }
        std::fs::write(&path, text).unwrap();
    }
    deltas.sort();
    assert!(deltas.iter().any(|(_, len)| *len > 4096), "{deltas:?}");
    let expected: Value = serde_json::from_slice(
        &std::fs::read(common::python_fixture_dir().join("expected_final.json")).unwrap(),
    )
    .unwrap();

    let restored = dictdb::restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::dump(&restored.db), expected);
    assert_eq!(restored.applied.len(), 4);
    let report = dictdb::verify_dir(tmp.path()).await.unwrap();
    assert!(report.is_ok(), "{report:?}");

    let db = DictDB::load(
        tmp.path().join("dictdb_backup_1795682694_728491.json"),
        FileFormat::Json,
    )
    .unwrap();
    for (delta, _) in &deltas {
        apply_delta(&db, delta).unwrap();
    }
    assert_eq!(common::dump(&db), expected);

    // A delta whose `type` is gone is still refused, wherever its tables
    // are, and so is a full backup under a delta's name.
    let (first, _) = &deltas[0];
    let text = std::fs::read_to_string(first).unwrap();
    let untyped = text.replace("\"type\": \"delta\"", "\"kind\": \"delta\"");
    assert_ne!(untyped, text);
    std::fs::write(first, &untyped).unwrap();
    assert!(dictdb::restore_dir(tmp.path()).await.is_err());
    let err = apply_delta(&db, first).unwrap_err().to_string();
    assert!(err.contains("no `type`"), "{err}");
    std::fs::copy(
        tmp.path().join("dictdb_backup_1795682694_728491.json"),
        first,
    )
    .unwrap();
    assert!(dictdb::restore_dir(tmp.path()).await.is_err());
    assert!(!dictdb::verify_dir(tmp.path()).await.unwrap().is_ok());
}

/// `value` with every object's keys in sorted order.
fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

/// A replica of the original's store follows a table created after its
/// last full backup once given the key field: whether the deltas that
/// change it are in the store when following starts or come later.
/// Without it the replica serves the cut before them and says why.
#[tokio::test]
async fn a_replica_follows_a_table_created_after_the_original_full_backup_given_its_key_field() {
    use dictdb::replica::{Replica, ReplicaOptions};
    use dictdb::store::{BackupStore, LocalStore};
    use std::sync::Arc;
    use std::time::Duration;

    let local = |dir: &std::path::Path| -> Arc<dyn BackupStore> {
        Arc::new(LocalStore::open(dir).unwrap())
    };
    let options = || ReplicaOptions::default().interval(Duration::from_secs(3600));
    let tmp = common::chain_with_a_table_created_after_the_full_backup();
    let expected = dictdb::restore::Restore::from_dir(tmp.path())
        .unwrap()
        .key_field("audit", "audit_id")
        .run()
        .await
        .unwrap();
    let fixture_final: Value = serde_json::from_slice(
        &std::fs::read(common::python_fixture_dir().join("expected_final.json")).unwrap(),
    )
    .unwrap();

    // Without the key field: the cut before the delta, and the reason.
    let r = Replica::follow(local(tmp.path()), options()).await.unwrap();
    assert_eq!(common::dump(r.db()), fixture_final);
    let problem = r.status().problem.expect("stopped before the delta");
    assert!(problem.error.to_string().contains("`audit`"), "{problem:?}");
    r.stop().await.unwrap();

    // Given it, with the deltas there from the start.
    let r = Replica::follow(local(tmp.path()), options().key_field("audit", "audit_id"))
        .await
        .unwrap();
    assert!(r.status().problem.is_none(), "{:?}", r.status().problem);
    assert_eq!(common::dump(r.db()), common::dump(&expected.db));
    r.stop().await.unwrap();

    // Given it, with the deltas coming while it follows.
    let later = common::python_fixture_copy();
    let r = Replica::follow(
        local(later.path()),
        options().key_field("audit", "audit_id"),
    )
    .await
    .unwrap();
    assert_eq!(common::dump(r.db()), fixture_final);
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if !later.path().join(&name).exists() {
            std::fs::copy(&path, later.path().join(name)).unwrap();
        }
    }
    r.sync().await.unwrap();
    assert_eq!(common::dump(r.db()), common::dump(&expected.db));
    assert_eq!(r.db().table("audit").unwrap().primary_key(), "audit_id");
    r.stop().await.unwrap();
}
