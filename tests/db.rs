//! Integration tests of the database API: tables, CRUD, auto-assigned keys,
//! all-or-nothing batches, bad input, panicking predicates and concurrency.

mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use dictdb::{BackupConfig, BackupManager, DictDB, Error, FileFormat, Key, Table, Upsert};
use serde_json::{json, Value};

/// The stored JSON text of one record, fields in stored order.
fn stored_text(db: &DictDB, table: &str, key: impl Into<Key>) -> String {
    let snap = db.snapshot();
    let key = key.into();
    snap.table(table)
        .expect("table in snapshot")
        .get(&key)
        .expect("record in snapshot")
        .to_json_string()
}

/// Keys of a table, in key order.
fn keys(t: &Table) -> Vec<Value> {
    t.all()
        .unwrap()
        .iter()
        .map(|r| r[t.primary_key()].clone())
        .collect()
}

// ---------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------

#[test]
fn create_get_list_and_drop_tables() {
    let db = DictDB::new();
    assert!(db.table_names().is_empty());

    let users = db.create_table("users").unwrap();
    assert_eq!(users.name(), "users");
    assert_eq!(users.primary_key(), "id");
    let events = db.create_table_with_key("events", "event_id").unwrap();
    assert_eq!(events.primary_key(), "event_id");

    assert_eq!(db.table_names(), ["events", "users"]);
    assert!(db.has_table("users"));
    assert!(!db.has_table("nope"));

    let again = db.table("events").unwrap();
    assert_eq!(again.name(), "events");
    assert_eq!(again.primary_key(), "event_id");
    // Handles share the table.
    events.insert(json!({"event_id": "ev-1"})).unwrap();
    assert_eq!(again.len().unwrap(), 1);
    // And clones of the database too.
    assert_eq!(db.clone().table("events").unwrap().len().unwrap(), 1);

    db.drop_table("events").unwrap();
    assert_eq!(db.table_names(), ["users"]);
    assert!(matches!(db.table("events"), Err(Error::TableNotFound(n)) if n == "events"));
}

#[test]
fn duplicate_and_missing_tables_are_errors() {
    let db = DictDB::new();
    db.create_table("users").unwrap();
    assert!(matches!(
        db.create_table("users"),
        Err(Error::TableExists(n)) if n == "users"
    ));
    assert!(matches!(
        db.create_table_with_key("users", "other"),
        Err(Error::TableExists(_))
    ));
    // The failed creation did not replace the key field.
    assert_eq!(db.table("users").unwrap().primary_key(), "id");
    assert!(matches!(db.table("nope"), Err(Error::TableNotFound(n)) if n == "nope"));
    assert!(matches!(
        db.drop_table("nope"),
        Err(Error::TableNotFound(_))
    ));
    let err = db.table("nope").unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn handle_of_dropped_table_fails_even_after_recreation() {
    let db = DictDB::new();
    let old = db.create_table("t").unwrap();
    old.insert(json!({"v": 1})).unwrap();
    db.drop_table("t").unwrap();

    let gone =
        |r: dictdb::Result<()>| assert!(matches!(r, Err(Error::TableNotFound(n)) if n == "t"));
    gone(old.insert(json!({"v": 2})).map(drop));
    gone(old.get(1).map(drop));
    gone(old.len().map(drop));

    let new = db.create_table("t").unwrap();
    new.insert(json!({"v": 3})).unwrap();
    gone(old.insert(json!({"v": 4})).map(drop));
    gone(old.get(1).map(drop));
    gone(old.contains(1).map(drop));
    gone(old.update(1, json!({"v": 5})));
    gone(old.update_where(|_| true, json!({"v": 5})).map(drop));
    gone(old.upsert(json!({"id": 1, "v": 5})).map(drop));
    gone(old.delete(1).map(drop));
    gone(old.delete_where(|_| true).map(drop));
    gone(old.select(|_| true).map(drop));
    gone(old.all().map(drop));
    gone(old.len().map(drop));
    gone(old.is_empty().map(drop));
    gone(old.insert_many([json!({"v": 6})]).map(drop));

    // None of that reached the new table.
    assert_eq!(new.all().unwrap(), vec![json!({"v": 3, "id": 1})]);
    // A fresh handle works.
    assert_eq!(db.table("t").unwrap().len().unwrap(), 1);
}

#[test]
fn invalid_table_names_are_refused() {
    let db = DictDB::new();
    let long = "x".repeat(256);
    for name in [
        "",
        "../x",
        "a/b",
        "a\0b",
        ".",
        "..",
        "a\\b",
        "tab\tname",
        long.as_str(),
    ] {
        let err = db.create_table(name).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidTableName { name: n, .. } if n == name),
            "{name:?}: {err}"
        );
        assert!(matches!(
            db.create_table_with_key(name, "k"),
            Err(Error::InvalidTableName { .. })
        ));
    }
    assert!(db.table_names().is_empty());
    assert_eq!(db.seq(), 0, "no change was committed");
    // Names that merely look unusual are fine.
    for name in [
        "with space",
        "dots.in.name",
        "...",
        "Zürich",
        "日本",
        "y".repeat(255).as_str(),
    ] {
        db.create_table(name).unwrap();
    }
}

// ---------------------------------------------------------------------------
// Auto-assigned keys
// ---------------------------------------------------------------------------

#[test]
fn insert_returns_key_and_auto_keys_are_never_reused() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    assert_eq!(t.insert(json!({"n": "a"})).unwrap(), Key::Int(1));
    assert_eq!(t.insert(json!({"n": "b"})).unwrap(), Key::Int(2));
    assert_eq!(t.insert(json!({"n": "c"})).unwrap(), Key::Int(3));

    // Deleting the highest key does not free it.
    assert!(t.delete(3).unwrap());
    assert_eq!(t.insert(json!({"n": "d"})).unwrap(), Key::Int(4));
    // Deleting everything does not either.
    assert_eq!(t.delete_where(|_| true).unwrap(), 3);
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(5));

    // An explicit larger key moves the counter past it.
    assert_eq!(t.insert(json!({"id": 100})).unwrap(), Key::Int(100));
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(101));
    // A smaller explicit key does not move it back.
    assert_eq!(t.insert(json!({"id": 50})).unwrap(), Key::Int(50));
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(102));
    // Negative and string keys leave it alone.
    assert_eq!(t.insert(json!({"id": -7})).unwrap(), Key::Int(-7));
    assert_eq!(t.insert(json!({"id": "s"})).unwrap(), Key::from("s"));
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(103));
    // Upsert of an explicit key and insert_many move it too.
    assert_eq!(
        t.upsert(json!({"id": 200})).unwrap(),
        Upsert::Inserted(Key::Int(200))
    );
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(201));
    assert_eq!(
        t.insert_many([json!({"id": 300}), json!({})]).unwrap(),
        [Key::Int(300), Key::Int(301)]
    );
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(302));
    // Inserting an explicit key equal to the next auto key skips past it.
    assert_eq!(t.insert(json!({"id": 303})).unwrap(), Key::Int(303));
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(304));

    // The auto key is the record's last field.
    assert_eq!(stored_text(&db, "t", 304), r#"{"id":304}"#);
    assert_eq!(t.insert(json!({"n": "z"})).unwrap(), Key::Int(305));
    assert_eq!(stored_text(&db, "t", 305), r#"{"n":"z","id":305}"#);
}

#[test]
fn auto_key_of_table_with_custom_key_field() {
    let db = DictDB::new();
    let t = db.create_table_with_key("events", "event_id").unwrap();
    assert_eq!(t.insert(json!({"type": "click"})).unwrap(), Key::Int(1));
    assert_eq!(
        t.get(1).unwrap().unwrap(),
        json!({"type": "click", "event_id": 1})
    );
    // "id" is an ordinary field there.
    assert_eq!(t.insert(json!({"id": 99})).unwrap(), Key::Int(2));
}

#[test]
fn auto_keys_exhausted_at_i64_max_is_an_error_not_a_wrap() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    assert_eq!(
        t.insert(json!({"id": i64::MAX})).unwrap(),
        Key::Int(i64::MAX)
    );
    let seq = db.seq();
    assert!(matches!(
        t.insert(json!({"n": 1})),
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(t.len().unwrap(), 1);
    assert_eq!(db.seq(), seq);
    // Explicit keys still work.
    assert_eq!(t.insert(json!({"id": 5})).unwrap(), Key::Int(5));
    assert_eq!(
        db.snapshot().table("t").unwrap().next_auto_key(),
        None,
        "counter reports exhaustion"
    );
}

/// Five auto keys, the highest deleted: the next one must be 6, not 5.
fn db_with_deleted_top_key() -> DictDB {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let ev = db.create_table_with_key("events", "event_id").unwrap();
    for i in 1..=5 {
        assert_eq!(t.insert(json!({"n": i})).unwrap(), Key::Int(i));
        ev.insert(json!({"n": i})).unwrap();
    }
    assert!(t.delete(5).unwrap());
    assert!(t.delete(4).unwrap());
    assert!(ev.delete(5).unwrap());
    db
}

fn check_next_keys_after_reload(db: &DictDB) {
    let t = db.table("t").unwrap();
    assert_eq!(t.len().unwrap(), 3);
    assert_eq!(db.snapshot().table("t").unwrap().next_auto_key(), Some(6));
    assert_eq!(t.insert(json!({"n": "after"})).unwrap(), Key::Int(6));
    let ev = db.table("events").unwrap();
    assert_eq!(ev.primary_key(), "event_id");
    assert_eq!(ev.insert(json!({"n": "after"})).unwrap(), Key::Int(6));
}

#[test]
fn auto_keys_survive_save_and_load() {
    let tmp = tempfile::tempdir().unwrap();
    for format in [FileFormat::Json, FileFormat::MessagePack] {
        let db = db_with_deleted_top_key();
        let path = tmp.path().join(format!("db.{}", format.extension()));
        db.save(&path, format).unwrap();
        let loaded = DictDB::load(&path, format).unwrap();
        check_next_keys_after_reload(&loaded);
    }
}

#[tokio::test]
async fn auto_keys_survive_restore_dir_of_backup_manager_full_backup() {
    let tmp = tempfile::tempdir().unwrap();
    for format in [FileFormat::Json, FileFormat::MessagePack] {
        let dir = tmp.path().join(format.extension());
        let db = db_with_deleted_top_key();
        let m = BackupManager::start(
            &db,
            BackupConfig::new(&dir)
                .file_format(format)
                .backup_interval(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        m.backup_full().await.unwrap();
        m.stop().await.unwrap();
        let restored = dictdb::restore_dir(&dir).await.unwrap();
        assert!(restored.verified);
        check_next_keys_after_reload(&restored.db);
    }
}

#[tokio::test]
async fn auto_keys_survive_restore_dir_of_saved_file() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_with_deleted_top_key();
    db.save(
        tmp.path().join("dictdb_backup_1795682694_728491.json"),
        FileFormat::Json,
    )
    .unwrap();
    let restored = dictdb::restore_dir(tmp.path()).await.unwrap();
    check_next_keys_after_reload(&restored.db);
}

// ---------------------------------------------------------------------------
// insert_many
// ---------------------------------------------------------------------------

#[test]
fn insert_many_returns_keys_in_input_order() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let keys = t
        .insert_many([
            json!({"n": "a"}),
            json!({"id": 10, "n": "b"}),
            json!({"n": "c"}),
            json!({"id": "x", "n": "d"}),
        ])
        .unwrap();
    assert_eq!(
        keys,
        [Key::Int(1), Key::Int(10), Key::Int(11), Key::from("x")]
    );
    assert_eq!(t.len().unwrap(), 4);
    assert_eq!(t.get(11).unwrap().unwrap(), json!({"n": "c", "id": 11}));
    assert_eq!(t.insert_many(Vec::new()).unwrap(), Vec::<Key>::new());
}

#[test]
fn insert_many_is_all_or_nothing() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"id": 1, "n": "existing"})).unwrap();
    let before = common::dump(&db);
    let seq = db.seq();
    let mut rx = db.subscribe();

    type Expected = fn(&Error) -> bool;
    let bad_batches: Vec<(Vec<Value>, Expected)> = vec![
        // Duplicate inside the batch.
        (vec![json!({"id": 2}), json!({}), json!({"id": 2})], |e| {
            matches!(
                e,
                Error::DuplicateKey {
                    key: Key::Int(2),
                    ..
                }
            )
        }),
        // Duplicate of an auto key inside the batch.
        (vec![json!({}), json!({"id": 2})], |e| {
            matches!(
                e,
                Error::DuplicateKey {
                    key: Key::Int(2),
                    ..
                }
            )
        }),
        // Duplicate against the table.
        (vec![json!({"id": 5}), json!({"id": 1})], |e| {
            matches!(
                e,
                Error::DuplicateKey {
                    key: Key::Int(1),
                    ..
                }
            )
        }),
        // One record not an object.
        (vec![json!({"id": 6}), json!([1, 2]), json!({})], |e| {
            matches!(e, Error::NotAnObject(_))
        }),
        // One key of the wrong type.
        (vec![json!({"id": 7}), json!({"id": 1.5})], |e| {
            matches!(e, Error::InvalidKey { .. })
        }),
    ];
    for (batch, expected) in bad_batches {
        let err = t.insert_many(batch.clone()).unwrap_err();
        assert!(expected(&err), "{batch:?}: {err}");
        assert_eq!(common::dump(&db), before, "{batch:?}");
        assert_eq!(db.seq(), seq, "{batch:?}");
    }
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "failed batches publish nothing"
    );
    // Nothing was taken from the auto-key counter either.
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(2));
}

// ---------------------------------------------------------------------------
// get / update / upsert / delete / select
// ---------------------------------------------------------------------------

#[test]
fn get_contains_len_all_select() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    assert!(t.is_empty().unwrap());
    assert_eq!(t.get(1).unwrap(), None);
    for i in 1..=10 {
        t.insert(json!({"n": i, "even": i % 2 == 0})).unwrap();
    }
    assert_eq!(t.len().unwrap(), 10);
    assert!(!t.is_empty().unwrap());
    assert_eq!(
        t.get(3).unwrap(),
        Some(json!({"n": 3, "even": false, "id": 3}))
    );
    assert_eq!(t.get(Key::Int(3)).unwrap(), t.get(3i64).unwrap());
    assert_eq!(t.get(11).unwrap(), None);
    assert_eq!(t.get("3").unwrap(), None, "string key is not the integer");
    assert!(t.contains(10).unwrap());
    assert!(!t.contains(0).unwrap());

    let all = t.all().unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(keys(&t), (1..=10).map(|i| json!(i)).collect::<Vec<_>>());
    let even = t.select(|r| r["even"] == true).unwrap();
    assert_eq!(
        even.iter()
            .map(|r| r["n"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [2, 4, 6, 8, 10]
    );
    assert!(t.select(|_| false).unwrap().is_empty());
}

#[test]
fn update_merges_in_place_and_appends_new_fields() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    // serde_json objects iterate in sorted order: b, name.
    let id = t.insert(json!({"b": 1, "name": "x"})).unwrap();
    assert_eq!(
        stored_text(&db, "t", id.clone()),
        r#"{"b":1,"name":"x","id":1}"#
    );
    t.update(id.clone(), json!({"a": [1], "name": "y", "z": null}))
        .unwrap();
    assert_eq!(
        stored_text(&db, "t", id.clone()),
        r#"{"b":1,"name":"y","id":1,"a":[1],"z":null}"#
    );
    // An empty patch changes nothing.
    t.update(id.clone(), json!({})).unwrap();
    assert_eq!(
        t.get(id.clone()).unwrap().unwrap(),
        json!({"b": 1, "name": "y", "id": 1, "a": [1], "z": null})
    );
    // Setting the key field to its own value is allowed.
    t.update(id.clone(), json!({"id": 1, "b": 2})).unwrap();
    assert_eq!(
        stored_text(&db, "t", id),
        r#"{"b":2,"name":"y","id":1,"a":[1],"z":null}"#
    );
}

#[test]
fn update_errors_change_nothing() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"n": 1})).unwrap();
    t.insert(json!({"id": "s", "n": 2})).unwrap();
    let before = common::dump(&db);
    let seq = db.seq();

    let err = t.update(42, json!({"n": 0})).unwrap_err();
    assert!(
        matches!(&err, Error::RecordNotFound { table, key: Key::Int(42) } if table == "t"),
        "{err}"
    );
    for patch in [
        json!({"id": 2}),
        json!({"id": 2, "n": 9}),
        json!({"id": "1"}),
    ] {
        let err = t.update(1, patch.clone()).unwrap_err();
        assert!(
            matches!(&err, Error::PrimaryKeyChange { key: Key::Int(1), field, .. } if field == "id"),
            "{patch}: {err}"
        );
    }
    assert!(matches!(
        t.update("s", json!({"id": "t"})),
        Err(Error::PrimaryKeyChange { .. })
    ));
    for patch in [json!({"id": 1.0}), json!({"id": null}), json!({"id": [1]})] {
        assert!(
            matches!(t.update(1, patch.clone()), Err(Error::InvalidKey { .. })),
            "{patch}"
        );
    }
    for patch in [json!([1]), json!("s"), json!(1), json!(null)] {
        assert!(
            matches!(t.update(1, patch.clone()), Err(Error::NotAnObject(_))),
            "{patch}"
        );
    }
    assert_eq!(common::dump(&db), before);
    assert_eq!(db.seq(), seq);
}

#[test]
fn update_where_counts_and_is_all_or_nothing() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    for i in 1..=6 {
        t.insert(json!({"n": i})).unwrap();
    }
    let n = t
        .update_where(|r| r["n"].as_i64().unwrap() > 3, json!({"big": true}))
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(t.select(|r| r["big"] == true).unwrap().len(), 3);
    assert_eq!(
        t.get(4).unwrap().unwrap(),
        json!({"n": 4, "id": 4, "big": true})
    );
    assert_eq!(t.update_where(|_| false, json!({"x": 1})).unwrap(), 0);

    // A patch that would change the key of a matching record: nothing changes.
    let before = common::dump(&db);
    let seq = db.seq();
    assert!(matches!(
        t.update_where(|_| true, json!({"id": 3, "x": 1})),
        Err(Error::PrimaryKeyChange { .. })
    ));
    assert!(matches!(
        t.update_where(|_| true, json!([1])),
        Err(Error::NotAnObject(_))
    ));
    assert_eq!(common::dump(&db), before);
    assert_eq!(db.seq(), seq);
    // The same patch restricted to the one record whose key it keeps is fine.
    assert_eq!(
        t.update_where(|r| r["id"] == 3, json!({"id": 3, "x": 1}))
            .unwrap(),
        1
    );
}

#[test]
fn upsert_reports_inserted_or_updated() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    assert_eq!(
        t.upsert(json!({"id": 1, "a": 1})).unwrap(),
        Upsert::Inserted(Key::Int(1))
    );
    assert_eq!(
        t.upsert(json!({"id": 1, "b": 2})).unwrap(),
        Upsert::Updated(Key::Int(1))
    );
    assert_eq!(t.get(1).unwrap().unwrap(), json!({"id": 1, "a": 1, "b": 2}));
    assert_eq!(stored_text(&db, "t", 1), r#"{"a":1,"id":1,"b":2}"#);
    // Without a key: an insert with the next auto key.
    assert_eq!(
        t.upsert(json!({"c": 3})).unwrap(),
        Upsert::Inserted(Key::Int(2))
    );
    assert_eq!(
        t.upsert(json!({"id": "k", "c": 3})).unwrap(),
        Upsert::Inserted(Key::from("k"))
    );
    assert_eq!(
        t.upsert(json!({"id": "k", "c": 4})).unwrap(),
        Upsert::Updated(Key::from("k"))
    );
    let seq = db.seq();
    assert!(matches!(t.upsert(json!([1])), Err(Error::NotAnObject(_))));
    assert!(matches!(
        t.upsert(json!({"id": 1.5})),
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(db.seq(), seq);
    assert_eq!(t.len().unwrap(), 3);
}

#[test]
fn delete_and_delete_where() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    for i in 1..=10 {
        t.insert(json!({"n": i})).unwrap();
    }
    assert!(t.delete(1).unwrap());
    assert!(!t.delete(1).unwrap());
    assert!(!t.delete("1").unwrap());
    assert!(!t.delete(99).unwrap());
    assert_eq!(
        t.delete_where(|r| r["n"].as_i64().unwrap() % 3 == 0)
            .unwrap(),
        3
    );
    assert_eq!(t.delete_where(|_| false).unwrap(), 0);
    assert_eq!(
        keys(&t),
        [json!(2), json!(4), json!(5), json!(7), json!(8), json!(10)]
    );
    assert_eq!(t.delete_where(|_| true).unwrap(), 6);
    assert!(t.is_empty().unwrap());
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_records_and_keys_change_nothing() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"n": 0})).unwrap();
    let before = common::dump(&db);
    let seq = db.seq();

    for rec in [
        json!([1, 2]),
        json!([]),
        json!("s"),
        json!(1),
        json!(1.5),
        json!(null),
        json!(true),
    ] {
        let err = t.insert(rec.clone()).unwrap_err();
        assert!(matches!(err, Error::NotAnObject(_)), "{rec}: {err}");
        assert!(matches!(t.upsert(rec.clone()), Err(Error::NotAnObject(_))));
        assert!(matches!(
            t.insert_many([rec.clone()]),
            Err(Error::NotAnObject(_))
        ));
    }
    for key in [
        json!(1.0),
        json!(2.5),
        json!(-0.0),
        json!(true),
        json!(null),
        json!([1]),
        json!({"a": 1}),
        json!(i64::MAX as u64 + 1),
        json!(u64::MAX),
    ] {
        let err = t.insert(json!({"id": key.clone()})).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidKey { field, .. } if field == "id"),
            "{key}: {err}"
        );
        assert!(matches!(
            t.upsert(json!({"id": key.clone()})),
            Err(Error::InvalidKey { .. })
        ));
    }
    assert_eq!(common::dump(&db), before);
    assert_eq!(db.seq(), seq);
    // The key counter was not touched by the failures.
    assert_eq!(t.insert(json!({})).unwrap(), Key::Int(2));
}

#[test]
fn string_and_negative_keys_work() {
    let db = DictDB::new();
    let t = db.create_table_with_key("events", "event_id").unwrap();
    assert_eq!(
        t.insert(json!({"event_id": "ev-1", "v": 1})).unwrap(),
        Key::from("ev-1")
    );
    assert_eq!(
        t.insert(json!({"event_id": "", "v": 2})).unwrap(),
        Key::from("")
    );
    assert_eq!(
        t.insert(json!({"event_id": "Zürich 🎉", "v": 3})).unwrap(),
        Key::from("Zürich 🎉")
    );
    assert!(matches!(
        t.insert(json!({"event_id": "ev-1"})),
        Err(Error::DuplicateKey { key, .. }) if key == Key::from("ev-1")
    ));
    assert_eq!(t.get("ev-1").unwrap().unwrap()["v"], 1);
    assert_eq!(t.get("Zürich 🎉").unwrap().unwrap()["v"], 3);
    t.update("ev-1", json!({"v": 10})).unwrap();
    assert_eq!(t.get(String::from("ev-1")).unwrap().unwrap()["v"], 10);

    let n = db.create_table("n").unwrap();
    assert_eq!(n.insert(json!({"id": -5})).unwrap(), Key::Int(-5));
    assert_eq!(
        n.insert(json!({"id": i64::MIN})).unwrap(),
        Key::Int(i64::MIN)
    );
    assert_eq!(n.insert(json!({"id": 0})).unwrap(), Key::Int(0));
    assert_eq!(n.get(-5).unwrap().unwrap(), json!({"id": -5}));
    assert_eq!(n.insert(json!({})).unwrap(), Key::Int(1));
    // Integers sort before strings, numerically.
    n.insert(json!({"id": "a"})).unwrap();
    assert_eq!(
        keys(&n),
        [json!(i64::MIN), json!(-5), json!(0), json!(1), json!("a")]
    );
    assert!(n.delete(-5).unwrap());
}

#[test]
fn panicking_predicate_leaves_table_unchanged_and_db_usable() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    for i in 1..=5 {
        t.insert(json!({"n": i})).unwrap();
    }
    let before = common::dump(&db);
    let seq = db.seq();
    let mut rx = db.subscribe();

    let r = catch_unwind(AssertUnwindSafe(|| {
        t.update_where(
            |r| {
                assert!(r["n"] != 4, "predicate panics on purpose");
                true
            },
            json!({"touched": true}),
        )
    }));
    assert!(r.is_err());
    assert_eq!(common::dump(&db), before);
    assert_eq!(db.seq(), seq);

    let r = catch_unwind(AssertUnwindSafe(|| {
        t.delete_where(|r| {
            assert!(r["n"] != 4, "predicate panics on purpose");
            true
        })
    }));
    assert!(r.is_err());
    assert_eq!(common::dump(&db), before);
    assert_eq!(db.seq(), seq);

    let r = catch_unwind(AssertUnwindSafe(|| {
        t.select(|r| {
            assert!(r["n"] != 4, "predicate panics on purpose");
            true
        })
    }));
    assert!(r.is_err());
    assert!(matches!(
        rx.try_recv(),
        Err(tokio::sync::broadcast::error::TryRecvError::Empty)
    ));

    // Everything still works, from this thread and from another.
    assert_eq!(t.insert(json!({"n": 6})).unwrap(), Key::Int(6));
    assert_eq!(t.update_where(|_| true, json!({"ok": 1})).unwrap(), 6);
    let t2 = t.clone();
    std::thread::spawn(move || t2.delete(6).unwrap())
        .join()
        .unwrap();
    assert_eq!(t.len().unwrap(), 5);
    db.create_table("other").unwrap();
    assert_eq!(db.snapshot().record_count(), 5);
}

/// A predicate may look at the database: `select` runs it without the lock,
/// and so must `update_where` and `delete_where`, or a predicate that reads
/// another table (or this one) deadlocks the caller.
#[test]
fn predicate_may_read_the_database() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let other = db.create_table("other").unwrap();
    for i in 1..=3 {
        t.insert(json!({"n": i})).unwrap();
    }
    other.insert(json!({"id": 2})).unwrap();

    // select: fine.
    let hits = t
        .select(|r| other.contains(r["id"].as_i64().unwrap()).unwrap())
        .unwrap();
    assert_eq!(hits.len(), 1);

    // update_where / delete_where, on another thread with a deadline so a
    // deadlock fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    let (t2, other2) = (t.clone(), other.clone());
    std::thread::spawn(move || {
        let updated = t2.update_where(
            |r| other2.contains(r["id"].as_i64().unwrap()).unwrap(),
            json!({"hit": true}),
        );
        let deleted = t2.delete_where(|r| other2.contains(r["id"].as_i64().unwrap()).unwrap());
        let _ = tx.send((
            updated.map_err(|e| e.to_string()),
            deleted.map_err(|e| e.to_string()),
        ));
    });
    let (updated, deleted) = rx.recv_timeout(Duration::from_secs(5)).expect(
        "update_where/delete_where deadlocked: a predicate that reads the database must not block",
    );
    assert_eq!(updated.unwrap(), 1);
    assert_eq!(deleted.unwrap(), 1);
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

const fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
const _: () = assert_send_sync_clone::<DictDB>();
const _: () = assert_send_sync_clone::<Table>();
const _: () = assert_send_sync_clone::<dictdb::Snapshot>();

#[test]
fn concurrent_inserts_get_unique_keys() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 1_000;
    let db = DictDB::new();
    db.create_table("t").unwrap();
    let handles: Vec<_> = (0..THREADS)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let t = db.table("t").unwrap();
                (0..PER_THREAD)
                    .map(|i| t.insert(json!({"w": w, "i": i})).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for h in handles {
        let keys = h.join().unwrap();
        // Each thread sees its own keys increase.
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for k in keys {
            assert!(all.insert(k), "key handed out twice");
        }
    }
    let n = THREADS * PER_THREAD;
    assert_eq!(all.len(), n);
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        (1..=n as i64).map(Key::Int).collect::<Vec<_>>()
    );
    assert_eq!(db.table("t").unwrap().len().unwrap(), n);
    assert_eq!(db.seq(), 1 + n as u64);
}

#[test]
fn concurrent_mixed_writers_on_separate_tables() {
    let db = DictDB::new();
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let t = db.create_table(&format!("t{w}")).unwrap();
                for i in 0..500 {
                    let k = t.insert(json!({"i": i})).unwrap();
                    t.update(k.clone(), json!({"u": true})).unwrap();
                    if i % 2 == 0 {
                        assert!(t.delete(k).unwrap());
                    }
                }
                t.len().unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 250);
    }
    assert_eq!(db.table_names(), ["t0", "t1", "t2", "t3"]);
    // 4 creates + 4 * (500 inserts + 500 updates + 250 deletes).
    assert_eq!(db.seq(), 4 + 4 * 1_250);
}
