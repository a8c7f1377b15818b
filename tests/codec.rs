//! One codec, one verifier: each defect found when the release was tried
//! from outside, as a test; every judgement checked three ways (verify,
//! inspect, restore), in both formats.

mod common;

use std::sync::Arc;

use common::craft::{delta_doc, full_doc, json_body, rec, seal_json, sealed, MemStore, M};
use dictdb::restore::{inspect, verify_store, Restore};
use dictdb::store::BackupStore;
use dictdb::{BackupConfig, BackupManager, DictDB, Error, FileFormat};
use serde_json::json;

const FORMATS: [FileFormat; 2] = [FileFormat::Json, FileFormat::MessagePack];

fn ext(format: FileFormat) -> &'static str {
    format.extension()
}

fn full_name(format: FileFormat, secs: u64) -> String {
    format!("dictdb_backup_{secs}_000000.{}", ext(format))
}

fn delta_name(format: FileFormat, secs: u64) -> String {
    format!("dictdb_delta_{secs}_000000.{}", ext(format))
}

/// What verify, inspect and restore say of `file` in `store`: whether each
/// accepts it, and restore's error.
struct Verdict {
    verify_file: bool,
    verify_all: bool,
    inspect: bool,
    restore: Result<(), Error>,
}

async fn judge(store: &Arc<MemStore>, file: &str) -> Verdict {
    let s: Arc<dyn BackupStore> = store.clone();
    let report = verify_store(Arc::clone(&s)).await.unwrap();
    let verify_file = report
        .files
        .iter()
        .find(|f| f.name == file)
        .map(|f| f.status.is_ok())
        .unwrap();
    let inspect = inspect(Arc::clone(&s), file, None).await.unwrap();
    Verdict {
        verify_file,
        verify_all: report.is_ok(),
        inspect: inspect.status.is_ok(),
        restore: Restore::new(s).run().await.map(|_| ()),
    }
}

/// The three agree that the store is unusable because of `file`, and the
/// restore error names it and says `why`.
async fn refused(store: &Arc<MemStore>, file: &str, why: &str) {
    let v = judge(store, file).await;
    let err = v.restore.expect_err("restore accepted it");
    let text = err.to_string();
    assert!(text.contains(file) && text.contains(why), "{text}");
    assert!(
        !v.verify_all,
        "verify accepted what restore refused: {text}"
    );
    assert!(!v.verify_file, "verify's file report accepted it: {text}");
    assert!(!v.inspect, "inspect accepted it: {text}");
}

fn users(records: Vec<M>) -> Vec<(&'static str, &'static str, Vec<M>)> {
    vec![("users", "id", records)]
}

// -- defect 1 (the rule behind the bit-flip test) ---------------------------

#[tokio::test]
async fn a_damaged_checksum_never_turns_checking_off() {
    for format in FORMATS {
        let name = full_name(format, 100);
        let good = full_doc(format, &name, 2, &users(vec![rec(M::Int(1), "a")]));
        // Upper-case hex digits: refused, not compared ignoring case.
        let mut upper = good.clone();
        let at = upper.len() - if format == FileFormat::Json { 4 } else { 2 };
        if upper[at].is_ascii_digit() {
            // Make sure the last digits include a letter to change.
            let len = upper.len();
            upper[len - 17..len - if format == FileFormat::Json { 2 } else { 0 }].copy_from_slice(
                &b"aaaaaaaaaaaaaaaa"[..if format == FileFormat::Json { 15 } else { 17 }],
            );
        }
        for b in upper.iter_mut().rev().take(20) {
            b.make_ascii_uppercase();
        }
        let store = MemStore::with(&[(name.clone(), upper)]);
        assert!(Restore::new(store.clone()).run().await.is_err());
        // The checksum key renamed: a dictdb section without checksum.
        let store = MemStore::with(&[(name.clone(), good.clone())]);
        let mut renamed = good.clone();
        let pos = renamed.windows(8).rposition(|w| w == b"checksum").unwrap();
        renamed[pos] = b'C';
        store.put(&name, renamed);
        refused(&store, &name, "no checksum").await;
        // The dictdb key renamed: a checksum without dictdb section.
        let mut renamed = good.clone();
        let pos = renamed.windows(6).position(|w| w == b"dictdb").unwrap();
        renamed[pos] = b'D';
        store.put(&name, renamed);
        refused(&store, &name, "").await;
    }
}

// -- defect 2 ---------------------------------------------------------------

#[tokio::test]
async fn a_full_backup_copied_under_a_newer_name_is_detected() {
    for format in FORMATS {
        let store = Arc::new(MemStore::default());
        let db = DictDB::new();
        let t = db.create_table("users").unwrap();
        t.insert(json!({"v": 1})).unwrap();
        let m = BackupManager::start(
            &db,
            BackupConfig::with_store(store.clone())
                .file_format(format)
                .incremental(true),
        )
        .await
        .unwrap();
        let full = m.backup_full().await.unwrap().file;
        t.insert(json!({"v": 2})).unwrap();
        m.backup_delta().await.unwrap();
        m.stop().await.unwrap();
        let copy = full_name(format, 4_000_000_000);
        store.put(&copy, store.get(&full).unwrap());
        // Strict: refused, naming the copy and what it was written as.
        refused(&store, &copy, "renamed or copied").await;
        // Lenient: the copy is passed over and the restore says so; the
        // state is the chain's last one, not the copy's older one.
        let r = Restore::new(store.clone())
            .stop_at_last_consistent(true)
            .run()
            .await
            .unwrap();
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].file, copy);
        assert_eq!(r.db.table("users").unwrap().len().unwrap(), 2);
    }
}

// -- defect 3 ---------------------------------------------------------------

#[tokio::test]
async fn verify_refuses_what_restore_refuses() {
    for format in FORMATS {
        let name = full_name(format, 100);
        let cases: Vec<(Vec<M>, &str)> = vec![
            (
                vec![rec(M::Int(1), "a"), rec(M::Int(1), "b")],
                "duplicate primary key",
            ),
            (vec![rec(M::Float(1.5), "a")], "cannot be a key"),
            (vec![rec(M::Bool(true), "a")], "cannot be a key"),
            (vec![M::map(&[("v", M::s("no key"))])], "no primary key"),
            (
                vec![rec(M::Uint(9_223_372_036_854_775_808), "a")],
                "does not fit a signed 64-bit key",
            ),
        ];
        for (records, why) in cases {
            let store =
                MemStore::with(&[(name.clone(), full_doc(format, &name, 2, &users(records)))]);
            refused(&store, &name, why).await;
        }
        // In a delta whose writer recorded the key field: judged alone too.
        let base = full_name(format, 100);
        let delta = delta_name(format, 101);
        let store = MemStore::with(&[
            (
                base.clone(),
                full_doc(format, &base, 2, &users(vec![rec(M::Int(1), "a")])),
            ),
            (
                delta.clone(),
                delta_doc(
                    format,
                    &delta,
                    &base,
                    2,
                    3,
                    &[("users", "id", vec![rec(M::Bool(false), "x")], vec![])],
                ),
            ),
        ]);
        refused(&store, &delta, "cannot be a key").await;
    }
    // JSON: an integer key beyond 64 bits is refused, never rounded.
    let name = full_name(FileFormat::Json, 100);
    let doc = full_doc(
        FileFormat::Json,
        &name,
        2,
        &users(vec![rec(M::Raw(b"18446744073709551616".to_vec()), "a")]),
    );
    let store = MemStore::with(&[(name.clone(), doc)]);
    refused(&store, &name, "64-bit range").await;
}

#[tokio::test]
async fn verify_checks_every_chain_not_only_the_newest() {
    for format in FORMATS {
        let (b1, d1, d2, b2) = (
            full_name(format, 100),
            delta_name(format, 101),
            delta_name(format, 102),
            full_name(format, 200),
        );
        let store = MemStore::with(&[
            (
                b1.clone(),
                full_doc(format, &b1, 2, &users(vec![rec(M::Int(1), "a")])),
            ),
            (d1.clone(), delta_doc(format, &d1, &b1, 2, 3, &[upsert(2)])),
            (d2.clone(), delta_doc(format, &d2, &b1, 3, 4, &[upsert(3)])),
            (
                b2.clone(),
                full_doc(format, &b2, 9, &users(vec![rec(M::Int(1), "a")])),
            ),
        ]);
        assert!(verify_store(store.clone()).await.unwrap().is_ok());
        // The older chain loses its middle delta: the newest chain still
        // restores, but verify fails, naming the chain, and a restore into
        // that chain fails.
        store.remove(&d1);
        let report = verify_store(store.clone()).await.unwrap();
        assert!(!report.is_ok());
        let old = report
            .chains
            .iter()
            .find(|c| c.base.as_deref() == Some(b1.as_str()))
            .unwrap();
        let err = old.result.as_ref().unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(report.newest_chain().unwrap().result.is_ok());
        assert!(Restore::new(store.clone()).run().await.is_ok());
        let err = Restore::new(store.clone())
            .until_seq(5)
            .run()
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&d2), "{err}");
    }
}

// -- defect 4 ---------------------------------------------------------------

/// Names at 100 (full, sequence 2), 110, 120 and 130 (deltas); puts the full
/// backup and the first delta (2..3) in `store`.
fn chain_start(store: &MemStore, format: FileFormat) -> [String; 4] {
    let names = [
        full_name(format, 100),
        delta_name(format, 110),
        delta_name(format, 120),
        delta_name(format, 130),
    ];
    store.put(
        &names[0],
        full_doc(format, &names[0], 2, &users(vec![rec(M::Int(1), "a")])),
    );
    store.put(
        &names[1],
        delta_doc(format, &names[1], &names[0], 2, 3, &[upsert(2)]),
    );
    names
}

/// A delta's upsert of record `id` in `users`.
fn upsert(id: i64) -> (&'static str, &'static str, Vec<M>, Vec<M>) {
    ("users", "id", vec![rec(M::Int(id), "x")], vec![])
}

#[tokio::test]
async fn point_in_time_across_a_gap_fails_or_says_what_is_missing() {
    for format in FORMATS {
        let store = Arc::new(MemStore::default());
        let names = chain_start(&store, format);
        store.put(
            &names[2],
            delta_doc(format, &names[2], &names[0], 3, 4, &[upsert(3)]),
        );
        store.put(
            &names[3],
            delta_doc(format, &names[3], &names[0], 4, 5, &[upsert(4)]),
        );
        store.remove(&names[2]);
        // A time after the missing delta, before the next one: the next one
        // proves the gap.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(125);
        let err = Restore::new(store.clone())
            .until_time(t)
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Chain { ref file, .. } if file == &names[3]),
            "{err}"
        );
        assert!(err.to_string().contains("missing"), "{err}");
        let r = Restore::new(store.clone())
            .until_time(t)
            .stop_at_last_consistent(true)
            .run()
            .await
            .unwrap();
        let stopped = r.stopped.unwrap();
        assert_eq!(stopped.file, names[3]);
        assert!(
            stopped.error.to_string().contains("changes 4..=4 are lost"),
            "{}",
            stopped.error
        );
        assert_eq!(r.applied.len(), 2);
        // Between the last delta there and the next: the missing file was
        // written at some time in between, maybe before the limit, so a
        // strict restore cannot vouch for the state at that time.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(115);
        assert!(Restore::new(store.clone())
            .until_time(t)
            .run()
            .await
            .is_err());
        // Before the last delta that is there: the next file continues it.
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(105);
        let r = Restore::new(store.clone())
            .until_time(t)
            .run()
            .await
            .unwrap();
        assert_eq!(r.seq, Some(2));
        // By sequence, the same.
        assert!(Restore::new(store.clone())
            .until_seq(4)
            .run()
            .await
            .is_err());
    }
}

/// The first file after a time limit shows that no delta before the limit
/// is missing; a damaged one shows nothing, even when its header would
/// link: restore reads it whole before believing it.
#[tokio::test]
async fn a_damaged_file_after_the_limit_is_not_believed() {
    for format in FORMATS {
        let store = Arc::new(MemStore::default());
        let names = chain_start(&store, format);
        // The delta 3..4 at 120 is missing, and the file after it claims
        // to start at 3 (its header would link) but is damaged.
        let mut witness = delta_doc(format, &names[3], &names[0], 3, 5, &[upsert(4)]);
        let at = witness.iter().rposition(|&b| b == b'x').unwrap();
        witness[at] = b'y';
        store.put(&names[3], witness);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(125);
        let err = Restore::new(store.clone())
            .until_time(t)
            .run()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Chain { ref file, .. } if file == &names[3]),
            "{err}"
        );
        // Lenient: the state before it, and says where it stopped.
        let r = Restore::new(store.clone())
            .until_time(t)
            .stop_at_last_consistent(true)
            .run()
            .await
            .unwrap();
        assert_eq!(r.seq, Some(3));
        assert_eq!(r.stopped.unwrap().file, names[3]);
    }
}

/// Sequence numbers are exact: a restore to a sequence the chain reaches
/// does not depend on the files after it.
#[tokio::test]
async fn until_seq_at_an_exact_cut_ignores_what_follows() {
    for format in FORMATS {
        let store = Arc::new(MemStore::default());
        let names = chain_start(&store, format);
        store.put(
            &names[3],
            delta_doc(format, &names[3], &names[0], 4, 5, &[upsert(4)]),
        );
        // 3..4 is missing: sequence 3 is exact, 4 is not there.
        let r = Restore::new(store.clone())
            .until_seq(3)
            .run()
            .await
            .unwrap();
        assert_eq!(r.seq, Some(3));
        assert!(r.stopped.is_none());
        let r = Restore::new(store.clone())
            .until_seq(2)
            .run()
            .await
            .unwrap();
        assert_eq!(r.seq, Some(2));
        assert!(Restore::new(store.clone())
            .until_seq(4)
            .run()
            .await
            .is_err());
    }
}

// -- defect 5 ---------------------------------------------------------------

#[tokio::test]
async fn crafted_documents_are_errors_naming_the_file() {
    for format in FORMATS {
        let base = full_name(format, 100);
        let d1 = delta_name(format, 101);
        let d2 = delta_name(format, 102);
        let base_doc = full_doc(format, &base, 5, &users(vec![rec(M::Int(1), "a")]));
        // A delta whose range goes backwards, then one that continues it.
        let store = MemStore::with(&[
            (base.clone(), base_doc.clone()),
            (
                d1.clone(),
                delta_doc(format, &d1, &base, 5, 3, &[upsert(2)]),
            ),
            (
                d2.clone(),
                delta_doc(format, &d2, &base, 3, 6, &[upsert(3)]),
            ),
        ]);
        refused(&store, &d1, "goes backwards").await;

        let meta = |extra: Vec<(&str, M)>| {
            let mut e = vec![
                ("version", M::Uint(2)),
                ("kind", M::s("full")),
                ("name", M::s(&base)),
                ("seq", M::Uint(1)),
                ("next_keys", M::map(&[])),
                ("count", M::Uint(0)),
                ("tables", M::map(&[])),
            ];
            e.extend(extra);
            M::Map(e.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        let one = |doc: Vec<u8>| MemStore::with(&[(base.clone(), doc)]);
        // A second dictdb section (the last one would have won).
        let doc = sealed(
            format,
            &[
                ("dictdb", meta(vec![])),
                ("dictdb", meta(vec![])),
                ("tables", M::map(&[])),
            ],
        );
        refused(&one(doc), &base, "appears twice").await;
        // next_keys naming a table twice.
        let nk = M::Map(vec![("t".into(), M::Uint(1)), ("t".into(), M::Uint(9))]);
        let mut m = meta(vec![]);
        if let M::Map(e) = &mut m {
            e.retain(|(k, _)| k != "next_keys");
            e.push(("next_keys".into(), nk));
        }
        let doc = sealed(format, &[("dictdb", m), ("tables", M::map(&[]))]);
        refused(&one(doc), &base, "twice").await;
        // A version from the future.
        let mut m = meta(vec![]);
        if let M::Map(e) = &mut m {
            e[0].1 = M::Uint(99);
        }
        let doc = sealed(format, &[("dictdb", m), ("tables", M::map(&[]))]);
        refused(&one(doc), &base, "newer dictdb").await;
        // Deep nesting under a key nobody reads.
        let deep = if format == FileFormat::Json {
            M::Raw(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes())
        } else {
            let mut raw = vec![0x91; 100_000];
            raw.push(0xc0);
            M::Raw(raw)
        };
        let doc = sealed(
            format,
            &[
                ("dictdb", meta(vec![])),
                ("tables", M::map(&[])),
                ("x", deep),
            ],
        );
        refused(&one(doc), &base, "nested").await;
        // An integer beyond 64 bits inside a schema (JSON): never a float.
        if format == FileFormat::Json {
            let t = M::map(&[
                ("primary_key", M::s("id")),
                (
                    "schema",
                    M::Raw(b"{\"max\": 99999999999999999999}".to_vec()),
                ),
                ("records", M::Arr(vec![])),
            ]);
            let mut m = meta(vec![]);
            if let M::Map(e) = &mut m {
                e.retain(|(k, _)| k != "tables" && k != "next_keys");
                e.push(("next_keys".into(), M::map(&[("t", M::Uint(1))])));
                e.push((
                    "tables".into(),
                    M::map(&[(
                        "t",
                        M::map(&[("primary_key", M::s("id")), ("records", M::Uint(0))]),
                    )]),
                ));
            }
            let doc = sealed(format, &[("dictdb", m), ("tables", M::map(&[("t", t)]))]);
            refused(&one(doc), &base, "64-bit range").await;
        }
    }
    // The same deep nesting in a file of the Python original's shape.
    let deep = format!(
        "{{\"x\": {}1{}, \"tables\": {{}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let name = full_name(FileFormat::Json, 100);
    let store = MemStore::with(&[(name.clone(), deep.into_bytes())]);
    refused(&store, &name, "nested").await;
}

// -- defect 6 ---------------------------------------------------------------

#[tokio::test]
async fn hostile_sizes_cost_time_and_memory_in_proportion_to_the_input() {
    // One record with 100,000 fields: duplicate field checks stay linear
    // (the quadratic check took 46 s here).
    for format in FORMATS {
        let fields: Vec<(String, M)> = (0..100_000)
            .map(|i| (format!("f{i}"), M::Uint(i)))
            .chain(std::iter::once(("id".to_string(), M::Int(1))))
            .collect();
        let name = full_name(format, 100);
        let doc = full_doc(format, &name, 2, &users(vec![M::Map(fields)]));
        let store = MemStore::with(&[(name.clone(), doc)]);
        let v = judge(&store, &name).await;
        assert!(v.verify_all && v.inspect && v.restore.is_ok());
    }
    // A claimed string length of 4 GiB in a tiny MessagePack file: an error,
    // not an allocation.
    let name = full_name(FileFormat::MessagePack, 100);
    let mut doc = vec![0x81, 0xa6];
    doc.extend_from_slice(b"tables");
    doc.extend_from_slice(&[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x']);
    let store = MemStore::with(&[(name.clone(), doc)]);
    refused(&store, &name, "end of file").await;
    // A 2 GiB sparse file named like a backup: refused after reading its
    // first bytes.
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("dictdb_backup_100_000000.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let report = dictdb::verify_dir(tmp.path()).await.unwrap();
    assert!(!report.is_ok());
    assert!(dictdb::restore_dir(tmp.path()).await.is_err());
}

// -- defect 7 ---------------------------------------------------------------

#[tokio::test]
async fn records_as_deep_as_insert_accepts_verify_plan_and_restore_alike() {
    for format in FORMATS {
        let store = Arc::new(MemStore::default());
        let db = DictDB::new();
        let t = db.create_table("t").unwrap();
        let mut v = json!(1);
        for _ in 0..98 {
            v = json!([v]);
        }
        t.insert(json!({"deep": v})).unwrap();
        let m = BackupManager::start(
            &db,
            BackupConfig::with_store(store.clone()).file_format(format),
        )
        .await
        .unwrap();
        let file = m.backup_full().await.unwrap().file;
        m.stop().await.unwrap();
        let v = judge(&store, &file).await;
        assert!(v.verify_all && v.verify_file && v.inspect && v.restore.is_ok());
        assert!(Restore::new(store.clone()).plan().await.is_ok());
        assert!(Restore::new(store.clone()).quick_plan().await.is_ok());
    }
}

#[tokio::test]
async fn nan_written_by_python_says_what_is_wrong() {
    let name = full_name(FileFormat::Json, 100);
    let doc = br#"{"tables": {"t": {"primary_key": "id", "schema": null, "records": [{"id": 1, "x": NaN}]}}}"#;
    let store = MemStore::with(&[(name.clone(), doc.to_vec())]);
    refused(&store, &name, "NaN and Infinity are not JSON").await;
}

// -- files of the previous release ------------------------------------------

#[tokio::test]
async fn json_body_helpers_round_trip() {
    // The crafting helpers themselves: a real file re-sealed unchanged is
    // still accepted, so tests built on them test the library.
    let store = Arc::new(MemStore::default());
    let db = DictDB::new();
    db.create_table("t")
        .unwrap()
        .insert(json!({"a": 1}))
        .unwrap();
    let m = BackupManager::start(&db, BackupConfig::with_store(store.clone()))
        .await
        .unwrap();
    let file = m.backup_full().await.unwrap().file;
    m.stop().await.unwrap();
    let original = store.get(&file).unwrap();
    assert_eq!(seal_json(&json_body(&original)), original);
}

#[tokio::test]
async fn files_of_the_previous_release_still_restore_and_verify() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dictdb-v1");
    for sub in ["json", "msgpack"] {
        // Copied, so the fixture stays untouched.
        let tmp = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(here.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
        }
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("expected_state.json")).unwrap())
                .unwrap();
        let r = dictdb::restore_dir(tmp.path()).await.unwrap();
        assert!(r.verified, "{sub}");
        assert_eq!(r.applied.len(), 3, "{sub}");
        let snap = r.db.snapshot();
        assert_eq!(
            snap.tables().len(),
            expected.as_object().unwrap().len(),
            "{sub}"
        );
        for t in snap.tables() {
            let want = &expected[t.name()];
            let records: Vec<serde_json::Value> = t.iter().map(|(_, rec)| rec.to_value()).collect();
            assert_eq!(
                serde_json::Value::from(records),
                want["records"],
                "{sub} {}",
                t.name()
            );
            assert_eq!(t.primary_key(), want["primary_key"], "{sub}");
            assert_eq!(json!(t.next_auto_key()), want["next_auto_key"], "{sub}");
            assert_eq!(json!(snap.seq()), want["seq"], "{sub}");
        }
        let report = dictdb::verify_dir(tmp.path()).await.unwrap();
        assert!(report.is_ok(), "{sub}: {report:?}");
        // A manager started on it continues with files of the new version,
        // and the mixed directory restores.
        let db = r.db;
        let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
            .await
            .unwrap();
        db.table("users")
            .unwrap()
            .insert(json!({"new": true}))
            .unwrap();
        m.backup_full().await.unwrap();
        m.stop().await.unwrap();
        let again = dictdb::restore_dir(tmp.path()).await.unwrap();
        assert_eq!(common::table_map(&again.db), common::table_map(&db));
        assert!(dictdb::verify_dir(tmp.path()).await.unwrap().is_ok());
    }
}
