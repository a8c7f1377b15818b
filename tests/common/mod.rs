//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod craft;
pub mod fault;
pub mod s3;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dictdb::DictDB;
use serde_json::{json, Value};

/// The directory of the real backup chain written by the Python original.
pub fn python_fixture_dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for candidate in [
        here.join("../shared/fixtures/python-dictdb"),
        here.join("tests/fixtures/python-dictdb"),
    ] {
        if candidate.is_dir() {
            return candidate;
        }
    }
    panic!(
        "python fixture directory not found next to {}",
        here.display()
    );
}

/// A temporary directory holding the backup files of the Python fixture,
/// to add files to.
pub fn python_fixture_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(python_fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("dictdb_") {
            std::fs::copy(&path, tmp.path().join(name)).unwrap();
        }
    }
    tmp
}

/// The fixture's chain plus two deltas of the original that change a table
/// created after its last full backup (`audit`, key field `audit_id`): the
/// original's deltas carry neither the creation nor the key field.
pub fn chain_with_a_table_created_after_the_full_backup() -> tempfile::TempDir {
    let tmp = python_fixture_copy();
    std::fs::write(
        tmp.path().join("dictdb_delta_1795682695_000000.json"),
        r#"{"type": "delta", "timestamp": 1795682695.0, "tables": {
             "users": {"upserts": [{"id": 1, "name": "Alice", "note": "audited"}], "deletes": []},
             "audit": {"upserts": [{"audit_id": "a-1", "id": 1, "what": "login"},
                                   {"audit_id": "a-2", "id": 1, "what": "logout"}],
                       "deletes": []}}}"#,
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("dictdb_delta_1795682696_000000.json"),
        r#"{"type": "delta", "timestamp": 1795682696.0, "tables": {
             "audit": {"upserts": [{"audit_id": "a-3", "id": 2, "what": "login"}],
                       "deletes": ["a-1"]}}}"#,
    )
    .unwrap();
    tmp
}

/// The whole state of a database as plain JSON: `{table: {"primary_key", "records": [...]}}`
/// with records in key order, the shape of the fixture's `expected_final.json`.
pub fn dump(db: &DictDB) -> Value {
    let snap = db.snapshot();
    let mut out = serde_json::Map::new();
    for t in snap.tables() {
        let records: Vec<Value> = t.iter().map(|(_, r)| r.to_value()).collect();
        out.insert(
            t.name().to_string(),
            json!({"primary_key": t.primary_key(), "records": records}),
        );
    }
    Value::Object(out)
}

/// Records of every table keyed by their JSON key text, for order-free comparison.
pub fn table_map(db: &DictDB) -> BTreeMap<String, BTreeMap<String, Value>> {
    snapshot_map(&db.snapshot())
}

/// [`table_map`] of a snapshot (one a reader holds, say).
pub fn snapshot_map(snap: &dictdb::Snapshot) -> BTreeMap<String, BTreeMap<String, Value>> {
    snap.tables()
        .iter()
        .map(|t| {
            (
                t.name().to_string(),
                t.iter()
                    .map(|(k, r)| (k.to_string(), r.to_value()))
                    .collect(),
            )
        })
        .collect()
}

/// A record of the standard workload (WORKLOAD.md).
pub fn workload_record(i: i64) -> Value {
    json!({"id": i, "name": format!("user_{i}"), "email": format!("user_{i}@example.com"),
           "age": i % 100, "active": i % 2 == 0, "score": i as f64 * 0.5, "tags": ["a", "b"]})
}

/// Names of the backup files in `dir`, sorted, as (kind, name).
pub fn backup_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("dictdb_"))
        .collect();
    v.sort();
    v
}

/// Lets the actor run: a few scheduler turns without moving paused time.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}
