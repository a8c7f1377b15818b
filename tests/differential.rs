//! Verify, inspect and restore agree on every file: a corpus of sound and
//! hostile files (damaged, truncated, crafted with valid checksums, written
//! by the Python original, renamed), each judged three ways.

mod common;

use std::sync::Arc;

use common::craft::{delta_doc, full_doc, rec, sealed, MemStore, M};
use dictdb::restore::{inspect, verify_store, Restore};
use dictdb::store::BackupStore;
use dictdb::{BackupConfig, BackupManager, DictDB, FileFormat};
use serde_json::json;

/// A store and the file in it being judged (always in the newest chain).
struct Case {
    what: String,
    files: Vec<(String, Vec<u8>)>,
    target: String,
}

async fn written_chain(format: FileFormat) -> Vec<(String, Vec<u8>)> {
    let store = Arc::new(MemStore::default());
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    users
        .insert(json!({"name": "Ada", "n": [1, 2.5, null]}))
        .unwrap();
    users.insert(json!({"name": "Bob"})).unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(store.clone())
            .file_format(format)
            .incremental(true),
    )
    .await
    .unwrap();
    m.backup_full().await.unwrap();
    users.update(1, json!({"age": 3})).unwrap();
    users.delete(2).unwrap();
    db.create_table_with_key("events", "k").unwrap();
    m.backup_delta().await.unwrap();
    m.stop().await.unwrap();
    store.snapshot()
}

fn variants(what: &str, files: &[(String, Vec<u8>)], target: &str, out: &mut Vec<Case>) {
    let original = files.iter().find(|(n, _)| n == target).unwrap().1.clone();
    let with = |bytes: Vec<u8>| {
        files
            .iter()
            .map(|(n, b)| {
                (
                    n.clone(),
                    if n == target {
                        bytes.clone()
                    } else {
                        b.clone()
                    },
                )
            })
            .collect::<Vec<_>>()
    };
    out.push(Case {
        what: format!("{what}: sound"),
        files: with(original.clone()),
        target: target.into(),
    });
    for i in (0..original.len()).step_by(5) {
        let mut bad = original.clone();
        bad[i] ^= 1 << (i % 8);
        out.push(Case {
            what: format!("{what}: bit {} of byte {i}", i % 8),
            files: with(bad),
            target: target.into(),
        });
    }
    for cut in [
        0,
        1,
        original.len() / 3,
        original.len() / 2,
        original.len() - 1,
    ] {
        out.push(Case {
            what: format!("{what}: truncated to {cut}"),
            files: with(original[..cut].to_vec()),
            target: target.into(),
        });
    }
    let mut longer = original.clone();
    longer.extend_from_slice(b" ");
    out.push(Case {
        what: format!("{what}: a byte appended"),
        files: with(longer),
        target: target.into(),
    });
}

async fn corpus() -> Vec<Case> {
    let mut out = Vec::new();
    for format in [FileFormat::Json, FileFormat::MessagePack] {
        let chain = written_chain(format).await;
        let (full, delta) = (chain[0].0.clone(), chain[1].0.clone());
        variants(&format!("{format} full"), &chain[..1], &full, &mut out);
        variants(
            &format!("{format} full in a chain"),
            &chain,
            &full,
            &mut out,
        );
        variants(&format!("{format} delta"), &chain, &delta, &mut out);

        let ext = format.extension();
        let b = format!("dictdb_backup_100_000000.{ext}");
        let d = format!("dictdb_delta_101_000000.{ext}");
        let base = full_doc(format, &b, 2, &[("users", "id", vec![rec(M::Int(1), "a")])]);
        let crafted_full: Vec<(&str, Vec<M>)> = vec![
            (
                "duplicate keys",
                vec![rec(M::Int(1), "a"), rec(M::Int(1), "b")],
            ),
            ("float key", vec![rec(M::Float(2.5), "a")]),
            ("bool key", vec![rec(M::Bool(true), "a")]),
            ("missing key", vec![M::map(&[("v", M::s("x"))])]),
            ("key beyond i64", vec![rec(M::Uint(u64::MAX), "a")]),
            ("string key", vec![rec(M::s("k"), "a")]),
            ("negative key", vec![rec(M::Int(-5), "a")]),
        ];
        for (what, records) in crafted_full {
            out.push(Case {
                what: format!("{format} crafted full: {what}"),
                files: vec![(
                    b.clone(),
                    full_doc(format, &b, 2, &[("users", "id", records)]),
                )],
                target: b.clone(),
            });
        }
        let crafted_delta: Vec<(&str, Vec<u8>)> = vec![
            (
                "sound",
                delta_doc(
                    format,
                    &d,
                    &b,
                    2,
                    3,
                    &[("users", "id", vec![rec(M::Int(2), "x")], vec![M::Int(1)])],
                ),
            ),
            (
                "bool key",
                delta_doc(
                    format,
                    &d,
                    &b,
                    2,
                    3,
                    &[("users", "id", vec![rec(M::Bool(false), "x")], vec![])],
                ),
            ),
            (
                "float delete",
                delta_doc(
                    format,
                    &d,
                    &b,
                    2,
                    3,
                    &[("users", "id", vec![], vec![M::Float(1.5)])],
                ),
            ),
            (
                "backwards range",
                delta_doc(
                    format,
                    &d,
                    &b,
                    3,
                    2,
                    &[("users", "id", vec![rec(M::Int(2), "x")], vec![])],
                ),
            ),
            (
                "gap before it",
                delta_doc(
                    format,
                    &d,
                    &b,
                    7,
                    9,
                    &[("users", "id", vec![rec(M::Int(2), "x")], vec![])],
                ),
            ),
            (
                "foreign base",
                delta_doc(
                    format,
                    &d,
                    "dictdb_backup_1_000000.json",
                    2,
                    3,
                    &[("users", "id", vec![], vec![])],
                ),
            ),
            (
                "unknown table",
                delta_doc(
                    format,
                    &d,
                    &b,
                    2,
                    3,
                    &[("nope", "id", vec![rec(M::Int(2), "x")], vec![])],
                ),
            ),
            (
                "other key field",
                delta_doc(
                    format,
                    &d,
                    &b,
                    2,
                    3,
                    &[("users", "uid", vec![M::map(&[("uid", M::Int(2))])], vec![])],
                ),
            ),
            (
                "renamed",
                delta_doc(
                    format,
                    &format!("dictdb_delta_99_000000.{ext}"),
                    &b,
                    2,
                    3,
                    &[("users", "id", vec![], vec![])],
                ),
            ),
            (
                "unknown top-level key",
                sealed(
                    format,
                    &[
                        (
                            "dictdb",
                            M::map(&[
                                ("version", M::Uint(2)),
                                ("kind", M::s("delta")),
                                ("name", M::s(&d)),
                                ("seq", M::Uint(3)),
                                ("from_seq", M::Uint(2)),
                                ("base", M::s(&b)),
                                ("next_keys", M::map(&[])),
                                ("count", M::Uint(0)),
                                ("tables", M::map(&[])),
                            ]),
                        ),
                        ("type", M::s("delta")),
                        ("tables", M::map(&[])),
                        ("extra", M::Int(1)),
                    ],
                ),
            ),
        ];
        for (what, doc) in crafted_delta {
            out.push(Case {
                what: format!("{format} crafted delta: {what}"),
                files: vec![(b.clone(), base.clone()), (d.clone(), doc)],
                target: d.clone(),
            });
        }
    }
    // The Python original's chain, and damage to it.
    let dir = common::python_fixture_dir();
    let mut py: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("dictdb_"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    py.sort();
    let last = py.last().unwrap().0.clone();
    out.push(Case {
        what: "python chain".into(),
        files: py.clone(),
        target: last.clone(),
    });
    let mut damaged = py.clone();
    let l = damaged.len() - 1;
    let mid = damaged[l].1.len() / 2;
    damaged[l].1.truncate(mid);
    out.push(Case {
        what: "python chain, last delta truncated".into(),
        files: damaged,
        target: last,
    });
    // One bit flipped in a key name of the original's files, which carry no
    // checksum: each must be refused, never read as a table without its
    // records or a delta without its changes.
    for (name, bytes) in &py {
        for key in [
            "primary_key",
            "schema",
            "records",
            "upserts",
            "deletes",
            "timestamp",
        ] {
            let quoted = format!("\"{key}\"");
            for (n, at) in String::from_utf8_lossy(bytes)
                .match_indices(&quoted)
                .map(|(at, _)| at)
                .enumerate()
                .filter(|(n, _)| *n < 2)
            {
                // `s` -> `r`, `y` -> `x`, ...: the last letter's low bit.
                let mut flipped = bytes.clone();
                flipped[at + key.len()] ^= 1;
                let files = py
                    .iter()
                    .map(|(m, b)| {
                        (
                            m.clone(),
                            if m == name {
                                flipped.clone()
                            } else {
                                b.clone()
                            },
                        )
                    })
                    .collect();
                out.push(Case {
                    what: format!("{PY_KEY_FLIP}: {name}, `{key}` #{n}"),
                    files,
                    target: name.clone(),
                });
            }
        }
    }
    // ... and a key left out, in a full backup and in a delta.
    let b = "dictdb_backup_100_000000.json";
    let d = "dictdb_delta_101_000000.json";
    let full = br#"{"tables":{"users":{"primary_key":"id","schema":null,"records":[{"id":1}]}}}"#;
    for (what, doc) in [
        (
            "no records",
            &br#"{"tables":{"users":{"primary_key":"id","schema":null}}}"#[..],
        ),
        (
            "an extra table key",
            br#"{"tables":{"users":{"primary_key":"id","schema":null,"records":[],"x":1}}}"#,
        ),
    ] {
        out.push(Case {
            what: format!("{PY_KEY_FLIP}: full, {what}"),
            files: vec![(b.into(), doc.to_vec())],
            target: b.into(),
        });
    }
    for (what, doc) in [
        (
            "no upserts",
            &br#"{"type":"delta","timestamp":101.0,"tables":{"users":{"deletes":[1]}}}"#[..],
        ),
        (
            "no deletes",
            br#"{"type":"delta","timestamp":101.0,"tables":{"users":{"upserts":[{"id":2}]}}}"#,
        ),
        (
            "an empty table",
            br#"{"type":"delta","timestamp":101.0,"tables":{"users":{}}}"#,
        ),
        (
            "no timestamp",
            br#"{"type":"delta","tables":{"users":{"upserts":[],"deletes":[1]}}}"#,
        ),
    ] {
        out.push(Case {
            what: format!("{PY_KEY_FLIP}: delta, {what}"),
            files: vec![(b.into(), full.to_vec()), (d.into(), doc.to_vec())],
            target: d.into(),
        });
    }
    out
}

/// The cases that must be refused by verify, inspect and restore alike.
const PY_KEY_FLIP: &str = "python key damaged";

#[tokio::test]
async fn verify_inspect_and_restore_agree_on_every_file() {
    let corpus = corpus().await;
    let (mut accepted, mut refused) = (0, 0);
    for case in &corpus {
        let store: Arc<dyn BackupStore> = MemStore::with(&case.files);
        let report = verify_store(Arc::clone(&store)).await.unwrap();
        let file_ok = report
            .files
            .iter()
            .find(|f| f.name == case.target)
            .unwrap()
            .status
            .is_ok();
        let inspected = inspect(Arc::clone(&store), &case.target, None)
            .await
            .unwrap()
            .status
            .is_ok();
        let restored = Restore::new(Arc::clone(&store)).run().await;
        let planned = Restore::new(Arc::clone(&store)).plan().await;
        assert_eq!(
            inspected, file_ok,
            "{}: inspect and verify disagree on the file",
            case.what
        );
        assert_eq!(
            restored.is_ok(),
            report.is_ok(),
            "{}: restore and verify disagree ({:?})",
            case.what,
            restored.as_ref().err()
        );
        assert_eq!(
            planned.is_ok(),
            restored.is_ok(),
            "{}: dry run and restore disagree",
            case.what
        );
        if !file_ok {
            assert!(
                restored.is_err(),
                "{}: a damaged file was restored",
                case.what
            );
        }
        if case.what.starts_with(PY_KEY_FLIP) {
            assert!(
                !file_ok && !inspected && restored.is_err(),
                "{}: accepted (verify {file_ok}, inspect {inspected}, restore {:?})",
                case.what,
                restored.as_ref().map(|r| r.seq)
            );
        }
        if restored.is_ok() {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // Both kinds are really in the corpus.
    assert!(
        accepted >= 10 && refused >= 200,
        "{accepted} accepted, {refused} refused"
    );
}

/// Writes the corpus to `$DICTDB_CORPUS_DIR/<n>/` (one store per case, with
/// `case.txt` naming it and its target), to run other builds of the command
/// over it (`cargo test --test differential -- --ignored`).
#[tokio::test]
#[ignore]
async fn dump_corpus() {
    let Ok(out) = std::env::var("DICTDB_CORPUS_DIR") else {
        return;
    };
    for (i, case) in corpus().await.iter().enumerate() {
        let dir = std::path::Path::new(&out).join(format!("{i:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &case.files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        std::fs::write(
            dir.join("case.txt"),
            format!("{}\n{}\n", case.what, case.target),
        )
        .unwrap();
    }
}
