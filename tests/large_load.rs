//! Loading large JSON backups, where parsing and indexing run on two threads:
//! the result and every error must be the same as on the one-thread path.

mod common;

use dictdb::{DictDB, Error, FileFormat};
use serde_json::json;

/// A JSON document of more than 4 MiB (the size where the two-thread path
/// starts) with two tables, as text, so tests can damage it.
fn big_document() -> (DictDB, String) {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 0..40_000 {
        users.insert(common::workload_record(i + 1)).unwrap();
    }
    let events = db.create_table_with_key("events", "event_id").unwrap();
    for i in 0..5_000 {
        events
            .insert(json!({"event_id": format!("ev-{i:05}"), "pad": "x".repeat(20)}))
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.json");
    db.save(&path, FileFormat::Json).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.len() > 4 << 20,
        "the document must take the two-thread path"
    );
    (db, text)
}

fn load(text: &str) -> Result<DictDB, Error> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big.json");
    std::fs::write(&path, text).unwrap();
    DictDB::load(&path, FileFormat::Json)
}

/// Drops the checksum and the dictdb section, so that damage reaches the
/// parser: a file of ours without its checksum is refused as damaged, one
/// without either is read as the Python original's.
fn unsummed(text: &str) -> String {
    let at = text.rfind(",\"checksum\"").unwrap();
    let tables = text
        .find(",\"tables\":{\"events\":{\"primary_key\":\"event_id\",\"schema\"")
        .unwrap();
    format!("{{{}}}", &text[tables + 1..at])
}

#[test]
fn large_backup_loads_exactly() {
    let (db, text) = big_document();
    let loaded = load(&text).unwrap();
    assert_eq!(common::table_map(&loaded), common::table_map(&db));
    let next = loaded
        .table("users")
        .unwrap()
        .insert(json!({"n": 1}))
        .unwrap();
    assert_eq!(next, dictdb::Key::Int(40_001));
}

#[test]
fn large_backup_errors_name_the_file() {
    let (_db, text) = big_document();
    let plain = unsummed(&text);
    // A duplicate key deep inside the first table.
    let dup = plain.replacen("\"id\":30000,", "\"id\":29999,", 1);
    assert_ne!(dup, plain);
    let err = load(&dup).unwrap_err();
    assert!(
        err.to_string().contains("big.json") && err.to_string().contains("duplicate"),
        "{err}"
    );
    // A record without its key field.
    let missing = plain.replacen("\"id\":12345,", "\"idx\":12345,", 1);
    let err = load(&missing).unwrap_err();
    assert!(
        err.to_string().contains("big.json") && err.to_string().contains("no primary key"),
        "{err}"
    );
    // A truncated file.
    let err = load(&plain[..plain.len() / 2]).unwrap_err();
    assert!(err.to_string().contains("big.json"), "{err}");
    // The checksum still guards the whole file.
    let flipped = text.replacen("user_777@", "user_778@", 1);
    assert!(matches!(
        load(&flipped),
        Err(Error::ChecksumMismatch { .. })
    ));
}

#[test]
fn key_field_after_the_records_still_loads() {
    // The Python original writes primary_key first, but JSON objects are
    // unordered: a table whose key field comes last is indexed afterwards.
    let (db, text) = big_document();
    let plain = unsummed(&text);
    let users_at = plain.find("\"users\":{").unwrap();
    let body_start = users_at + "\"users\":{".len();
    let header = "\"primary_key\":\"id\",\"schema\":null,";
    assert_eq!(&plain[body_start..body_start + header.len()], header);
    // `users` sorts last: its records end at the document's last `]}`.
    let records_end = plain.rfind("]}").unwrap() + 1;
    let moved = format!(
        "{}{},{}{}",
        &plain[..body_start],
        &plain[body_start + header.len()..records_end],
        &header[..header.len() - 1],
        &plain[records_end..]
    );
    serde_json::from_str::<serde_json::Value>(&moved).unwrap();
    let loaded = load(&moved).unwrap();
    assert_eq!(common::table_map(&loaded), common::table_map(&db));
}
