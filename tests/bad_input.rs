//! Hostile files: random bytes, truncations, bit flips, deep nesting, wrong
//! types, duplicate keys, names that try to escape. Always an error that
//! names the file; never a panic, never a huge allocation.

mod common;

use std::path::Path;

use dictdb::{apply_delta, DictDB, Error, FileFormat};
use proptest::prelude::*;
use serde_json::json;

fn sample_db() -> DictDB {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 0..20 {
        users
            .insert(json!({"name": format!("u{i}"), "score": i as f64 / 3.0, "tags": ["a", {"b": [i, null]}]}))
            .unwrap();
    }
    db.create_table_with_key("events", "event_id")
        .unwrap()
        .insert(json!({"event_id": "ev-1", "n": -5}))
        .unwrap();
    db
}

fn saved(format: FileFormat) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("f");
    sample_db().save(&path, format).unwrap();
    std::fs::read(path).unwrap()
}

/// Loads `bytes` as a full backup and as a delta; each must be `Ok` or an
/// error naming the file — never a panic.
fn load_both_ways(
    bytes: &[u8],
    format: FileFormat,
) -> (Result<DictDB, Error>, Result<usize, Error>) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp
        .path()
        .join(format!("dictdb_delta_1_000001.{}", format.extension()));
    std::fs::write(&path, bytes).unwrap();
    let full = DictDB::load(&path, format);
    let delta = apply_delta(&sample_db(), &path);
    for e in [full.as_ref().err(), delta.as_ref().err()]
        .into_iter()
        .flatten()
    {
        let text = e.to_string();
        assert!(
            text.contains("dictdb_delta_1_000001"),
            "error does not name the file: {text}"
        );
    }
    (full, delta)
}

fn formats() -> impl Strategy<Value = FileFormat> {
    prop_oneof![Just(FileFormat::Json), Just(FileFormat::MessagePack)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), format in formats()) {
        let (full, _) = load_both_ways(&bytes, format);
        prop_assert!(full.is_err());
    }

    #[test]
    fn truncated_files_are_errors(cut in 0.0f64..1.0, format in formats()) {
        let good = saved(format);
        let at = ((good.len() as f64) * cut) as usize;
        let (full, _) = load_both_ways(&good[..at], format);
        prop_assert!(full.is_err(), "a prefix of {} of {} bytes loaded", at, good.len());
    }

    #[test]
    fn bit_flips_are_caught_or_harmless(pos in any::<prop::sample::Index>(), bit in 0u8..8, format in formats()) {
        let good = saved(format);
        let mut bad = good.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        let (full, _) = load_both_ways(&bad, format);
        // Every byte is covered by the checksum, or is the checksum: a
        // flipped file never loads as if it were sound... unless the flip
        // only touched the trailer so that it no longer reads as one, and the
        // document itself is unchanged.
        if let Ok(db) = full {
            prop_assert_eq!(common::table_map(&db), common::table_map(&sample_db()));
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn hostile_documents_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases = [
        ("deep nesting", format!(r#"{{"tables":{{"t":{{"primary_key":"id","schema":null,"records":[{{"id":1,"x":{deep}}}]}}}}}}"#)),
        ("wrong top level", "[]".to_string()),
        ("no tables", "{}".to_string()),
        ("tables not an object", r#"{"tables": [1]}"#.to_string()),
        ("record not an object", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[1]}}}"#.to_string()),
        ("float key", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":1.5}]}}}"#.to_string()),
        ("bool key", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":true}]}}}"#.to_string()),
        ("missing key", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"x":1}]}}}"#.to_string()),
        ("duplicate keys", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":1},{"id":1}]}}}"#.to_string()),
        ("duplicate field", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":1,"id":2}]}}}"#.to_string()),
        ("duplicate table", r#"{"tables":{"t":{"primary_key":"id","records":[]},"t":{"primary_key":"id","records":[]}}}"#.to_string()),
        ("escaping table name", r#"{"tables":{"../etc":{"primary_key":"id","schema":null,"records":[]}}}"#.to_string()),
        ("absolute table name", r#"{"tables":{"/abs":{"primary_key":"id","schema":null,"records":[]}}}"#.to_string()),
        ("NUL in table name", r#"{"tables":{"a\u0000b":{"primary_key":"id","schema":null,"records":[]}}}"#.to_string()),
        ("NaN", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":1,"x":NaN}]}}}"#.to_string()),
        ("key out of range", r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":18446744073709551615}]}}}"#.to_string()),
    ];
    for (what, text) in cases {
        let p = write(tmp.path(), "hostile.json", &text);
        let err = DictDB::load(&p, FileFormat::Json).expect_err(what);
        assert!(err.to_string().contains("hostile.json"), "{what}: {err}");
    }
    // A delta that creates a table with an escaping name.
    let p = write(
        tmp.path(),
        "dictdb_delta_1_000001.json",
        r#"{"type":"delta","dictdb":{"version":1,"kind":"delta","seq":2,"created":{"../x":"id"}},"tables":{}}"#,
    );
    let err = apply_delta(&sample_db(), &p).unwrap_err();
    assert!(
        err.to_string().contains("dictdb_delta_1_000001.json"),
        "{err}"
    );
}

#[test]
fn huge_claimed_lengths_do_not_allocate() {
    // A MessagePack document claiming 4 billion records in a few bytes.
    let mut doc = vec![0x81, 0xa6];
    doc.extend_from_slice(b"tables");
    doc.push(0x81);
    doc.extend_from_slice(&[0xa1, b't']);
    doc.push(0x82);
    doc.push(0xab);
    doc.extend_from_slice(b"primary_key");
    doc.extend_from_slice(&[0xa2, b'i', b'd']);
    doc.push(0xa7);
    doc.extend_from_slice(b"records");
    doc.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    doc.extend_from_slice(&[0x81, 0xa2, b'i', b'd', 0x01]);
    let (full, delta) = load_both_ways(&doc, FileFormat::MessagePack);
    assert!(full.is_err() && delta.is_err());
}

#[test]
fn delta_into_an_unknown_table_is_an_error_not_a_silent_skip() {
    let tmp = tempfile::tempdir().unwrap();
    let p = write(
        tmp.path(),
        "dictdb_delta_1_000001.json",
        r#"{"type":"delta","timestamp":1.0,"tables":{"ghost":{"upserts":[{"id":1}],"deletes":[]}}}"#,
    );
    let db = sample_db();
    let before = common::table_map(&db);
    let err = apply_delta(&db, &p).unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");
    assert_eq!(common::table_map(&db), before, "nothing applied");
}
