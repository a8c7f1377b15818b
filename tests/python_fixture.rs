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
