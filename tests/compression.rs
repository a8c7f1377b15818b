//! Compressed backups (`.zst`): written by the manager, read back by
//! restore, verify, inspect, list and load; and hostile compressed files
//! (not compressed at all, truncated, a decompression bomb) refused with
//! clear errors.

mod common;

use std::io::Write as _;
use std::sync::Arc;

use common::{craft::MemStore, table_map, workload_record};
use dictdb::restore::{list_store, verify_store, Restore};
use dictdb::{
    apply_delta, BackupConfig, BackupManager, BackupStore, Compression, DictDB, Error, FileFormat,
    LocalStore,
};
use serde_json::json;

const FORMATS: [FileFormat; 2] = [FileFormat::Json, FileFormat::MessagePack];

/// A database of `n` workload records.
fn db_of(n: i64) -> DictDB {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 1..=n {
        users.insert(workload_record(i)).unwrap();
    }
    db
}

#[tokio::test]
async fn a_compressed_chain_restores_verifies_and_lists_in_both_formats() {
    for format in FORMATS {
        let tmp = tempfile::tempdir().unwrap();
        // Large enough that a header read needs more than the first probe.
        let db = db_of(20_000);
        let users = db.table("users").unwrap();
        let m = BackupManager::start(
            &db,
            BackupConfig::new(tmp.path())
                .file_format(format)
                .incremental(true)
                .compression(Compression::zstd()),
        )
        .await
        .unwrap();
        let full = m.backup_full().await.unwrap();
        assert!(
            full.file.ends_with(&format!(".{format}.zst")),
            "{}",
            full.file
        );
        let on_disk = std::fs::metadata(tmp.path().join(&full.file))
            .unwrap()
            .len();
        assert_eq!(full.bytes, on_disk, "BackupInfo::bytes is the stored size");
        let plain_size = db.save(
            tmp.path().join("plain").with_extension(format.extension()),
            format,
        );
        assert!(
            on_disk * 5 < plain_size.unwrap().bytes,
            "compressed {on_disk}"
        );
        std::fs::remove_file(tmp.path().join("plain").with_extension(format.extension())).unwrap();
        for round in 0..3 {
            users.update(round + 1, json!({"age": 7})).unwrap();
            users
                .insert(json!({"name": format!("new {round}")}))
                .unwrap();
            users.delete(100 + round).unwrap();
            let d = m.backup_delta().await.unwrap();
            assert!(d.info().unwrap().file.ends_with(".zst"));
        }
        m.stop().await.unwrap();

        let restored = dictdb::restore_dir(tmp.path()).await.unwrap();
        assert_eq!(table_map(&restored.db), table_map(&db), "{format}");
        assert!(restored.verified);
        assert_eq!(restored.applied.len(), 4);

        let report = dictdb::verify_dir(tmp.path()).await.unwrap();
        assert!(report.is_ok(), "{format}: {report:?}");

        let store: Arc<dyn BackupStore> = Arc::new(LocalStore::existing(tmp.path()).unwrap());
        let listing = list_store(store).await.unwrap();
        assert_eq!(listing.files.len(), 4);
        for f in &listing.files {
            assert!(f.error.is_none(), "{}: {:?}", f.name, f.error);
            assert!(f.compressed && !f.encrypted && f.ours && f.seq.is_some());
        }
        assert_eq!(listing.files[0].records, Some(20_000));
        assert_eq!(listing.plan.unwrap().files.len(), 4);

        let r = dictdb::restore::inspect_file(tmp.path().join(&full.file), None)
            .await
            .unwrap();
        assert!(r.status.unwrap().is_verified());
        assert_eq!(r.records, 20_000);
    }
}

#[tokio::test]
async fn a_chain_may_change_compression_midway() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_of(10);
    let t = db.table("users").unwrap();
    let plain = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
        .await
        .unwrap();
    plain.backup_full().await.unwrap();
    t.insert(json!({"n": 1})).unwrap();
    plain.backup_delta().await.unwrap();
    plain.stop().await.unwrap();
    // A new manager starts a new chain, compressed; the old chain stays readable.
    let zstd = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .compression(Compression::Zstd { level: 19 }),
    )
    .await
    .unwrap();
    t.insert(json!({"n": 2})).unwrap();
    zstd.backup_now().await.unwrap();
    t.insert(json!({"n": 3})).unwrap();
    zstd.backup_now().await.unwrap();
    zstd.stop().await.unwrap();
    let names = common::backup_files(tmp.path());
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".zst")).count(),
        2,
        "{names:?}"
    );
    let restored = dictdb::restore_dir(tmp.path()).await.unwrap();
    assert_eq!(table_map(&restored.db), table_map(&db));
    assert!(dictdb::verify_dir(tmp.path()).await.unwrap().is_ok());
}

#[test]
fn save_load_and_apply_delta_follow_the_zst_extension() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_of(1000);
    for format in FORMATS {
        let path = tmp.path().join(format!("db.{format}.zst"));
        let info = db.save(&path, format).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(info.bytes, bytes.len() as u64);
        assert_eq!(&bytes[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        // zstd itself reads it (the trailer is a skippable frame).
        let plain = zstd::decode_all(&bytes[..]).unwrap();
        assert!(plain.len() > 4 * bytes.len());
        let back = DictDB::load(&path, format).unwrap();
        assert_eq!(table_map(&back), table_map(&db));
    }
    let e = db
        .save(tmp.path().join("db.json.age"), FileFormat::Json)
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(!tmp.path().join("db.json.age").exists());

    // apply_delta reads a compressed delta by its name.
    let src = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let live = db_of(3);
    let delta = rt.block_on(async {
        let m = BackupManager::start(
            &live,
            BackupConfig::new(src.path())
                .incremental(true)
                .compression(Compression::zstd()),
        )
        .await
        .unwrap();
        m.backup_full().await.unwrap();
        live.table("users").unwrap().delete(2).unwrap();
        let d = m.backup_delta().await.unwrap().info().unwrap().file.clone();
        m.stop().await.unwrap();
        d
    });
    let copy = db_of(3);
    assert_eq!(apply_delta(&copy, src.path().join(&delta)).unwrap(), 1);
    assert_eq!(table_map(&copy), table_map(&live));
}

/// A store with one sound compressed full backup, and its bytes.
async fn one_compressed(format: FileFormat) -> (Arc<MemStore>, String, Vec<u8>) {
    let store = Arc::new(MemStore::default());
    let db = db_of(50);
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(store.clone())
            .file_format(format)
            .compression(Compression::zstd()),
    )
    .await
    .unwrap();
    let name = m.backup_full().await.unwrap().file;
    m.stop().await.unwrap();
    let bytes = store.get(&name).unwrap();
    (store, name, bytes)
}

/// Restore, verify, inspect and list all refuse `store`'s file `name` with
/// an error naming it that mentions `needle`.
async fn all_refuse(store: Arc<MemStore>, name: &str, needle: &str) {
    let e = Restore::new(store.clone()).run().await.unwrap_err();
    assert!(
        e.to_string().contains(name) && e.to_string().contains(needle),
        "restore: {e}"
    );
    assert!(matches!(e, Error::Corrupt { .. }), "{e:?}");
    let report = verify_store(store.clone()).await.unwrap();
    assert!(!report.is_ok());
    let r = dictdb::restore::inspect(store.clone(), name, None)
        .await
        .unwrap();
    let e = r.status.unwrap_err();
    assert!(e.to_string().contains(needle), "inspect: {e}");
    let listing = list_store(store).await.unwrap();
    assert!(listing.plan.is_err());
}

#[tokio::test]
async fn a_zst_name_on_a_plain_file_is_refused_as_not_zstd() {
    let store = Arc::new(MemStore::default());
    let db = db_of(5);
    let m = BackupManager::start(&db, BackupConfig::with_store(store.clone()))
        .await
        .unwrap();
    let plain = m.backup_full().await.unwrap().file;
    m.stop().await.unwrap();
    let bytes = store.get(&plain).unwrap();
    store.remove(&plain);
    let fake = format!("{plain}.zst");
    store.put(&fake, bytes);
    all_refuse(store, &fake, "zstd").await;
}

#[tokio::test]
async fn truncated_and_extended_compressed_files_are_refused() {
    for format in FORMATS {
        let (store, name, bytes) = one_compressed(format).await;
        for keep in [
            0,
            3,
            10,
            bytes.len() / 2,
            bytes.len() - 25,
            bytes.len() - 24,
            bytes.len() - 1,
        ] {
            let s = MemStore::with(&store.snapshot());
            s.put(&name, bytes[..keep].to_vec());
            let e = Restore::new(s.clone()).run().await.unwrap_err();
            assert!(e.to_string().contains(&name), "{keep}: {e}");
            assert!(!verify_store(s).await.unwrap().is_ok(), "{keep}");
        }
        // A second frame appended after the trailer.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&bytes);
        let s = MemStore::with(&store.snapshot());
        s.put(&name, longer);
        assert!(Restore::new(s).run().await.is_err());
    }
}

/// A compressed document of `claimed` bytes whose last record holds a
/// string of `bomb` bytes: a few kilobytes on disk.
fn bomb_file(name: &str, bomb: usize) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    write!(
        enc,
        "{{\"dictdb\": {{\"version\": 2, \"kind\": \"full\", \"name\": \"{name}\", \"seq\": 1, \
         \"next_keys\": {{}}, \"count\": 1, \"tables\": {{\"t\": {{\"primary_key\": \"id\", \
         \"records\": 1}}}}}}, \"tables\": {{\"t\": {{\"primary_key\": \"id\", \"schema\": null, \
         \"records\": [{{\"id\": 1, \"x\": \""
    )
    .unwrap();
    let block = vec![b'a'; 1 << 20];
    for _ in 0..bomb >> 20 {
        enc.write_all(&block).unwrap();
    }
    enc.write_all(b"\"}]}}, \"checksum\": \"xxh3-64:0000000000000000\"}")
        .unwrap();
    enc.finish().unwrap()
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_before_it_fills_memory() {
    let name = "dictdb_backup_1700000000_000000.json.zst";
    // 1 GiB of one string value, in a file of a few tens of kilobytes.
    let file = bomb_file(name, 1 << 30);
    assert!(file.len() < 256 << 10, "{}", file.len());
    let store = MemStore::with(&[(name.to_string(), file)]);
    let e = Restore::new(store.clone()).run().await.unwrap_err();
    assert!(e.to_string().contains("decompression bomb"), "{e}");
    assert!(e.to_string().contains(name), "{e}");
    let r = dictdb::restore::inspect(store, name, None).await.unwrap();
    assert!(r
        .status
        .unwrap_err()
        .to_string()
        .contains("decompression bomb"));
}
