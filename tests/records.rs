//! Records beyond `serde_json::Value`: typed insert and get, whole-record
//! replace (so a field can be removed), atomic read-modify-write; and that
//! each survives a backup and restore.

mod common;

use std::sync::Arc;

use dictdb::{restore_dir, BackupConfig, BackupManager, DictDB, Error, Key};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct User {
    id: u64,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nickname: Option<String>,
}

#[derive(Deserialize, Debug)]
#[allow(dead_code)]
struct Strict {
    id: u64,
    required: String,
}

#[test]
fn insert_as_and_get_as_round_trip_a_struct() {
    let users = DictDB::new().create_table("users").unwrap();
    let alice = User {
        id: 7,
        name: "Alice".into(),
        nickname: Some("Al".into()),
    };
    assert_eq!(users.insert_as(&alice).unwrap(), Key::Int(7));
    assert_eq!(users.get_as::<User>(7).unwrap(), Some(alice));
    assert_eq!(users.get_as::<User>(8).unwrap(), None);
    // A map works too; a key the record lacks is auto-assigned.
    let mut m = std::collections::BTreeMap::new();
    m.insert("name", "Bob");
    assert_eq!(users.insert_as(&m).unwrap(), Key::Int(8));
}

#[test]
fn insert_as_and_get_as_errors_name_the_problem() {
    let users = DictDB::new().create_table("users").unwrap();
    // Not an object.
    assert!(matches!(
        users.insert_as(&[1, 2, 3]),
        Err(Error::NotAnObject(_))
    ));
    // Does not serialise to JSON (a map with non-string keys).
    let mut bad = std::collections::HashMap::new();
    bad.insert(vec![1u8], 1);
    match users.insert_as(&bad) {
        Err(Error::RecordType { table, .. }) => assert_eq!(table, "users"),
        other => panic!("{other:?}"),
    }
    // A record that does not fit the type.
    users.insert(json!({"id": 1, "name": "x"})).unwrap();
    match users.get_as::<Strict>(1) {
        Err(e @ Error::RecordType { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("record 1") && msg.contains("`users`") && msg.contains("required"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A dropped table.
    let db = users.db().clone();
    db.drop_table("users").unwrap();
    assert!(matches!(
        users.get_as::<User>(1),
        Err(Error::TableNotFound(_))
    ));
    assert!(matches!(
        users.insert_as(&json!({"id": 2})),
        Err(Error::TableNotFound(_))
    ));
}

#[test]
fn replace_removes_fields_that_update_and_upsert_keep() {
    let users = DictDB::new().create_table("users").unwrap();
    let id = users
        .insert(json!({"name": "Alice", "nickname": "Al", "age": 30}))
        .unwrap();
    users.update(id.clone(), json!({"age": 31})).unwrap();
    users.upsert(json!({"id": 1, "name": "Alice"})).unwrap();
    assert!(users
        .get(id.clone())
        .unwrap()
        .unwrap()
        .get("nickname")
        .is_some());
    users
        .replace(id.clone(), json!({"name": "Alice", "age": 31}))
        .unwrap();
    assert_eq!(
        users.get(id.clone()).unwrap().unwrap(),
        json!({"name": "Alice", "age": 31, "id": 1}),
        "the key field is added; the nickname is gone"
    );
    // With the key field, in its place.
    users.replace(1, json!({"id": 1, "name": "A."})).unwrap();
    assert_eq!(
        users.get(1).unwrap().unwrap(),
        json!({"id": 1, "name": "A."})
    );
}

#[test]
fn replace_errors() {
    let users = DictDB::new().create_table_with_key("users", "uid").unwrap();
    users.insert(json!({"uid": "u1", "n": 1})).unwrap();
    assert!(matches!(
        users.replace("u2", json!({"n": 2})),
        Err(Error::RecordNotFound { .. })
    ));
    assert!(matches!(
        users.replace("u1", json!({"uid": "u9"})),
        Err(Error::PrimaryKeyChange { .. })
    ));
    assert!(matches!(
        users.replace("u1", json!([1])),
        Err(Error::NotAnObject(_))
    ));
    assert!(matches!(
        users.replace("u1", json!({"uid": 1.5})),
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(
        users.get("u1").unwrap().unwrap(),
        json!({"uid": "u1", "n": 1})
    );
}

#[test]
fn update_with_is_a_read_modify_write() {
    let counters = DictDB::new()
        .create_table_with_key("counters", "name")
        .unwrap();
    counters
        .insert(json!({"name": "hits", "n": 0, "note": "drop me"}))
        .unwrap();
    let new = counters
        .update_with("hits", |rec| {
            let n = rec["n"].as_i64().unwrap();
            rec.insert("n".into(), json!(n + 1));
            rec.remove("note");
        })
        .unwrap();
    assert_eq!(new, json!({"name": "hits", "n": 1}));
    assert_eq!(counters.get("hits").unwrap().unwrap(), new);
    // Removing the key field keeps the key.
    counters
        .update_with("hits", |rec| {
            rec.remove("name");
        })
        .unwrap();
    assert_eq!(counters.get("hits").unwrap().unwrap()["name"], "hits");
}

#[test]
fn update_with_errors_change_nothing() {
    let t = DictDB::new().create_table("t").unwrap();
    t.insert(json!({"id": 1, "v": 1})).unwrap();
    assert!(matches!(
        t.update_with(2, |_| {}),
        Err(Error::RecordNotFound { .. })
    ));
    assert!(matches!(
        t.update_with(1, |rec| {
            rec.insert("id".into(), json!(5));
        }),
        Err(Error::PrimaryKeyChange { .. })
    ));
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    assert!(matches!(
        t.update_with(1, |rec| {
            rec.insert("deep".into(), deep.clone());
        }),
        Err(Error::InvalidRecord(_))
    ));
    assert_eq!(t.get(1).unwrap().unwrap(), json!({"id": 1, "v": 1}));
}

#[test]
fn concurrent_update_with_loses_no_increment() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"id": 1, "n": 0})).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    t.update_with(1, |rec| {
                        let n = rec["n"].as_i64().unwrap();
                        rec.insert("n".into(), json!(n + 1));
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    assert_eq!(t.get(1).unwrap().unwrap()["n"], 2000);
}

#[test]
fn update_with_under_constant_contention_still_applies() {
    // Another writer changes the record while `f` runs, eight times in a
    // row: each time `f` runs again on the new version, never under the
    // lock (it writes to the database itself here).
    let t = DictDB::new().create_table("t").unwrap();
    t.insert(json!({"id": 1, "n": 0, "other": 0})).unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let other = t.clone();
    let seen = Arc::clone(&calls);
    let out = t
        .update_with(1, move |rec| {
            let k = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if k < 8 {
                // Outside the lock: a concurrent writer gets in.
                other.update(1, json!({"other": k + 1})).unwrap();
            }
            rec.insert("n".into(), json!(1));
        })
        .unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 9);
    assert_eq!(out["n"], 1);
    assert_eq!(out["other"], 8, "built on the latest version");
    assert_eq!(t.get(1).unwrap().unwrap(), out);
}

#[tokio::test(start_paused = true)]
async fn replaced_records_and_typed_inserts_survive_backup_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    users
        .insert_as(&User {
            id: 1,
            name: "Alice".into(),
            nickname: Some("Al".into()),
        })
        .unwrap();
    m.backup_full().await.unwrap();
    users.replace(1, json!({"name": "Alice"})).unwrap();
    users
        .update_with(1, |rec| {
            rec.insert("age".into(), json!(31));
        })
        .unwrap();
    m.backup_delta().await.unwrap();
    m.stop().await.unwrap();
    let restored = restore_dir(tmp.path()).await.unwrap();
    let back = restored.db.table("users").unwrap();
    assert_eq!(
        back.get(1).unwrap().unwrap(),
        json!({"name": "Alice", "id": 1, "age": 31}),
        "the removed field stays removed after restore"
    );
    assert_eq!(back.get_as::<User>(1).unwrap().unwrap().nickname, None);
}
