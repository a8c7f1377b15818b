//! Damage is never accepted: every single-bit flip at every offset of every
//! kind of file this library writes (full backups, deltas and saves, in both
//! formats, plain, compressed and encrypted) is detected by verify, by
//! inspect and by restore (or load).

mod common;

use std::sync::Arc;

use common::craft::MemStore;
use dictdb::restore::Restore;
use dictdb::{BackupConfig, BackupManager, Compression, DictDB, FileFormat};
use serde_json::json;

const FORMATS: [FileFormat; 2] = [FileFormat::Json, FileFormat::MessagePack];

/// A store holding a small full backup and a delta after it, and the
/// database they describe.
async fn small_chain(format: FileFormat) -> (Arc<MemStore>, String, String) {
    small_chain_with(format, |c| c).await
}

/// [`small_chain`] written with the options `config` adds.
async fn small_chain_with(
    format: FileFormat,
    config: impl FnOnce(BackupConfig) -> BackupConfig,
) -> (Arc<MemStore>, String, String) {
    let store = Arc::new(MemStore::default());
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    users
        .insert(json!({"name": "Ada", "tags": ["x", 2], "score": 1.5}))
        .unwrap();
    users.insert(json!({"name": "Bob", "n": null})).unwrap();
    let events = db.create_table_with_key("events", "event_id").unwrap();
    events
        .insert(json!({"event_id": "e1", "ok": true}))
        .unwrap();
    let m = BackupManager::start(
        &db,
        config(
            BackupConfig::with_store(store.clone())
                .file_format(format)
                .incremental(true),
        ),
    )
    .await
    .unwrap();
    let full = m.backup_full().await.unwrap().file;
    users.update(1, json!({"age": 3})).unwrap();
    users.delete(2).unwrap();
    events.insert(json!({"event_id": "e2"})).unwrap();
    db.create_table("fresh").unwrap();
    let delta = m.backup_delta().await.unwrap().info().unwrap().file.clone();
    m.stop().await.unwrap();
    (store, full, delta)
}

/// Flips every bit of `target` in turn and checks that verify, inspect and
/// restore all refuse the store. Returns the number of flips tried.
async fn every_flip_is_caught(store: &MemStore, target: &str) -> usize {
    every_flip_is_caught_by(store, target, |s| Restore::new(s), |_| {}).await
}

/// [`every_flip_is_caught`], reading through the restores `open` makes
/// (with identities, say); `check` sees each restore's error.
async fn every_flip_is_caught_by(
    store: &MemStore,
    target: &str,
    open: impl Fn(Arc<MemStore>) -> Restore,
    check: impl Fn(&dictdb::Error),
) -> usize {
    let files = store.snapshot();
    let original = store.get(target).unwrap();
    let sound = MemStore::with(&files);
    assert!(open(sound.clone()).verify().await.unwrap().is_ok());
    assert!(open(sound).run().await.is_ok());
    let mut tried = 0;
    for i in 0..original.len() {
        for bit in 0..8 {
            let mut bad = original.clone();
            bad[i] ^= 1 << bit;
            let s = MemStore::with(&files);
            s.put(target, bad);
            let report = open(s.clone()).verify().await.unwrap();
            assert!(
                !report.is_ok(),
                "verify accepted bit {bit} of byte {i} of {target} flipped"
            );
            let r = open(s.clone()).inspect(target, None).await.unwrap();
            assert!(
                r.status.is_err(),
                "inspect accepted bit {bit} of byte {i} of {target} flipped"
            );
            match open(s).run().await {
                Ok(_) => panic!("restore accepted bit {bit} of byte {i} of {target} flipped"),
                Err(e) => check(&e),
            }
            tried += 1;
        }
    }
    tried
}

#[tokio::test]
async fn every_bit_flip_of_a_full_backup_and_a_delta_is_detected() {
    let mut tried = 0;
    for format in FORMATS {
        let (store, full, delta) = small_chain(format).await;
        tried += every_flip_is_caught(&store, &full).await;
        tried += every_flip_is_caught(&store, &delta).await;
    }
    // Four files of a few hundred bytes each: thousands of flips.
    assert!(tried > 8_000, "{tried}");
}

#[tokio::test]
async fn every_bit_flip_of_a_compressed_full_backup_and_delta_is_detected() {
    let mut tried = 0;
    for format in FORMATS {
        let (store, full, delta) =
            small_chain_with(format, |c| c.compression(Compression::zstd())).await;
        assert!(full.ends_with(&format!(".{format}.zst")), "{full}");
        assert!(delta.ends_with(&format!(".{format}.zst")), "{delta}");
        tried += every_flip_is_caught(&store, &full).await;
        tried += every_flip_is_caught(&store, &delta).await;
    }
    assert!(tried > 4_000, "{tried}");
}

/// Encrypted files: every flip is refused, and always as damage (never as
/// a wrong key, never read as anything else).
#[cfg(feature = "encryption")]
#[tokio::test]
async fn every_bit_flip_of_an_encrypted_file_is_detected_as_damage() {
    use dictdb::encryption::Identity;
    use dictdb::{DecryptFailure, Error};
    let id = Identity::generate();
    let mut tried = 0;
    for (format, compression) in [
        (FileFormat::Json, Compression::zstd()),
        (FileFormat::MessagePack, Compression::None),
    ] {
        let recipient = id.to_public();
        let (store, full, delta) = small_chain_with(format, |c| {
            c.compression(compression).encrypt_to([recipient])
        })
        .await;
        assert!(full.ends_with(".age") && delta.ends_with(".age"));
        for target in [&full, &delta] {
            tried += every_flip_is_caught_by(
                &store,
                target,
                |s| Restore::new(s).identity(id.clone()),
                |e| match e {
                    Error::Decrypt {
                        kind: DecryptFailure::Damaged,
                        file,
                        ..
                    } => assert_eq!(file, target),
                    other => panic!("{target}: a flip was not reported as damage: {other}"),
                },
            )
            .await;
        }
    }
    assert!(tried > 8_000, "{tried}");
}

#[test]
fn every_bit_flip_of_a_compressed_save_is_refused_by_load() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"v": [1, 2.5, "x", null]})).unwrap();
    let path = tmp.path().join("db.json.zst");
    db.save(&path, FileFormat::Json).unwrap();
    let original = std::fs::read(&path).unwrap();
    assert_eq!(&original[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
    assert_eq!(
        DictDB::load(&path, FileFormat::Json)
            .unwrap()
            .table("t")
            .unwrap()
            .len()
            .unwrap(),
        1
    );
    for i in 0..original.len() {
        for bit in 0..8 {
            let mut bad = original.clone();
            bad[i] ^= 1 << bit;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                DictDB::load(&path, FileFormat::Json).is_err(),
                "bit {bit} of byte {i} flipped and the compressed save still loaded"
            );
        }
    }
}

#[test]
fn every_bit_flip_of_a_save_is_refused_by_load() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let t = db.create_table_with_key("t", "k").unwrap();
    t.insert(json!({"k": "a", "v": [1, 2.5, "x", null, {"y": false}]}))
        .unwrap();
    t.insert(json!({"k": 7, "big": 18446744073709551615u64}))
        .unwrap();
    for format in FORMATS {
        let path = tmp.path().join(format!("db.{}", format.extension()));
        db.save(&path, format).unwrap();
        let original = std::fs::read(&path).unwrap();
        assert!(DictDB::load(&path, format).is_ok());
        for i in 0..original.len() {
            for bit in 0..8 {
                let mut bad = original.clone();
                bad[i] ^= 1 << bit;
                std::fs::write(&path, &bad).unwrap();
                assert!(
                    DictDB::load(&path, format).is_err(),
                    "{format}: bit {bit} of byte {i} flipped and the file still loaded"
                );
            }
        }
    }
}
