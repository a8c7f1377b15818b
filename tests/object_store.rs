//! Backups in a real S3-compatible server (moto_server on 127.0.0.1).
//!
//! ```text
//! source .ci/s3-server.sh          # starts moto_server, exports DICTDB_S3_ENDPOINT, AWS_*
//! cargo test --features object-store --test object_store
//! ```
//!
//! Without `DICTDB_S3_ENDPOINT` every test says it is skipped and passes.
//! Each test works in a bucket of its own (created with a plain HTTP `PUT`
//! through `curl`). The server-failure test starts and kills a moto_server
//! of its own on another loopback port (`DICTDB_MOTO_SERVER`, default
//! `moto_server`, is the command).
#![cfg(feature = "object-store")]

mod common;

use common::s3::{create_bucket, endpoint, unique_bucket};
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dictdb::restore::{verify_store, Restore};
use dictdb::store::{
    open_url_with, BackupStore, BackupWriter, ObjectBackupStore, ObjectStoreOptions, StoredFile,
    MIN_PART_SIZE,
};
use dictdb::{BackupConfig, BackupKind, BackupManager, BackupName, DictDB, Error, Result};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};

/// The multipart uploads in progress in a bucket (their upload ids).
fn uploads_in_progress(endpoint: &str, bucket: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10"])
        .arg(format!("{endpoint}/{bucket}?uploads"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "listing uploads failed");
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    body.split("<UploadId>")
        .skip(1)
        .filter_map(|s| s.split("</UploadId>").next())
        .map(str::to_string)
        .collect()
}

/// Short retries: an unreachable server fails a backup within seconds (a
/// refused connection is not waited on). Explicit credentials, so the
/// client never looks for others. The retry timeout is also the longest one
/// request may take: a ranged GET or a part upload of a large backup must
/// fit in it on a loaded machine.
fn options(endpoint: &str) -> ObjectStoreOptions {
    ObjectStoreOptions::default()
        .max_retries(1)
        .retry_timeout(Duration::from_secs(20))
        .backoff(Duration::from_millis(50), Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(30))
        .part_size(MIN_PART_SIZE)
        .s3_config("aws_endpoint", endpoint)
        .s3_config("aws_allow_http", "true")
        .s3_config("aws_access_key_id", "test")
        .s3_config("aws_secret_access_key", "test")
        .s3_config("aws_region", "us-east-1")
}

fn s3_store(endpoint: &str, bucket: &str, prefix: &str) -> Arc<dyn BackupStore> {
    open_url_with(&format!("s3://{bucket}/{prefix}"), &options(endpoint)).unwrap()
}

fn kinds(files: &[StoredFile]) -> (usize, usize) {
    let names: Vec<BackupName> = files
        .iter()
        .filter_map(|f| BackupName::parse(&f.name))
        .collect();
    let full = names.iter().filter(|n| n.kind == BackupKind::Full).count();
    (full, names.len() - full)
}

async fn assert_restores_to(store: &Arc<dyn BackupStore>, db: &DictDB) -> dictdb::Restored {
    let restored = Restore::new(Arc::clone(store)).run().await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(db));
    assert_eq!(common::dump(&restored.db), common::dump(db));
    assert!(restored.verified, "every file carries a matching checksum");
    let report = verify_store(Arc::clone(store)).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    restored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_and_incremental_backups_restore_from_the_bucket() {
    let Some(ep) = endpoint("full_and_incremental_backups_restore_from_the_bucket") else {
        return;
    };
    let bucket = unique_bucket("incr");
    create_bucket(&ep, &bucket);
    let store = s3_store(&ep, &bucket, "svc/backups");
    assert_eq!(store.location(), format!("s3://{bucket}/svc/backups"));
    assert!(store.list().await.unwrap().is_empty());

    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    let events = db.create_table_with_key("events", "event_id").unwrap();
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
            .max_deltas_before_full(10),
    )
    .await
    .unwrap();

    for i in 0..100 {
        users
            .insert(json!({"name": format!("user_{i}"), "n": i}))
            .unwrap();
    }
    events
        .insert(json!({"event_id": "ev-1", "type": "click"}))
        .unwrap();
    let full = backups.backup_full().await.unwrap();
    assert_eq!(full.records, 101);

    for i in 0..50 {
        users.insert(json!({"name": format!("late_{i}")})).unwrap();
    }
    for id in 1..=10i64 {
        users.update(id, json!({"vip": true})).unwrap();
    }
    for id in 20..25i64 {
        assert!(users.delete(id).unwrap());
    }
    let d1 = backups.backup_delta().await.unwrap();
    assert_eq!(d1.info().unwrap().kind, BackupKind::Delta);

    let audit = db.create_table_with_key("audit", "at").unwrap();
    audit
        .insert(json!({"at": "t1", "what": "created"}))
        .unwrap();
    db.drop_table("events").unwrap();
    let d2 = backups.backup_delta().await.unwrap();
    assert_eq!(d2.info().unwrap().kind, BackupKind::Delta);
    assert_eq!(backups.deltas_since_full(), 2);
    // Nothing changed: nothing written.
    assert!(backups.backup_delta().await.unwrap().info().is_none());
    backups.stop().await.unwrap();

    // A fresh client sees what the manager wrote: the server has it.
    let other = s3_store(&ep, &bucket, "svc/backups");
    let files = other.list().await.unwrap();
    assert_eq!(kinds(&files), (1, 2), "{files:?}");
    assert!(files.iter().all(|f| f.size > 0));
    // Objects outside the prefix, or below it, are not backups of this store.
    let root = s3_store(&ep, &bucket, "");
    assert!(root.list().await.unwrap().is_empty());

    let restored = assert_restores_to(&other, &db).await;
    assert_eq!(restored.applied.len(), 3);
    assert_eq!(restored.seq, Some(db.seq()));
    // Auto keys continue after the restore.
    let next = restored
        .db
        .table("users")
        .unwrap()
        .insert(json!({}))
        .unwrap();
    assert_eq!(next, dictdb::Key::from(151i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_full_backups_in_the_bucket() {
    let Some(ep) = endpoint("retention_keeps_the_newest_full_backups_in_the_bucket") else {
        return;
    };
    let bucket = unique_bucket("keep");
    create_bucket(&ep, &bucket);
    let store = s3_store(&ep, &bucket, "backups");
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
            .keep_full_backups(2),
    )
    .await
    .unwrap();
    let mut fulls = Vec::new();
    for round in 0..4 {
        t.insert(json!({"round": round})).unwrap();
        fulls.push(backups.backup_full().await.unwrap().file);
        t.insert(json!({"round": round, "after": true})).unwrap();
        backups.backup_delta().await.unwrap();
    }
    backups.stop().await.unwrap();
    let files = store.list().await.unwrap();
    assert_eq!(kinds(&files), (2, 2), "{files:?}");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert!(!names.contains(&fulls[0].as_str()));
    assert!(!names.contains(&fulls[1].as_str()));
    assert!(names.contains(&fulls[2].as_str()));
    assert!(names.contains(&fulls[3].as_str()));
    let restored = assert_restores_to(&store, &db).await;
    assert_eq!(restored.applied[0].name, fulls[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backup_is_a_multipart_upload_of_several_parts() {
    let Some(ep) = endpoint("a_large_backup_is_a_multipart_upload_of_several_parts") else {
        return;
    };
    let bucket = unique_bucket("large");
    create_bucket(&ep, &bucket);
    let url = format!("s3://{bucket}/big");
    let object_store = ObjectBackupStore::from_url_with(&url, &options(&ep)).unwrap();
    let raw = Arc::clone(object_store.inner());
    let store: Arc<dyn BackupStore> = Arc::new(object_store);

    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    users
        .insert_many((0..200_000).map(common::workload_record))
        .unwrap();
    let backups = BackupManager::start(&db, BackupConfig::with_store(Arc::clone(&store)))
        .await
        .unwrap();
    let started = Instant::now();
    let info = backups.backup_full().await.unwrap();
    eprintln!(
        "200k records: {} bytes in {:?}",
        info.bytes,
        started.elapsed()
    );
    backups.stop().await.unwrap();
    assert!(
        info.bytes > 3 * MIN_PART_SIZE as u64,
        "the backup should span several parts: {} bytes",
        info.bytes
    );
    let files = store.list().await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].size, info.bytes);

    // S3 gives a multipart object an ETag ending in "-<number of parts>".
    let meta = raw
        .head(&Path::from(format!("big/{}", info.file)))
        .await
        .unwrap();
    let etag = meta.e_tag.unwrap_or_default();
    let parts: usize = etag
        .trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(1);
    let expected = (info.bytes as usize).div_ceil(MIN_PART_SIZE);
    assert_eq!(parts, expected, "ETag {etag}");
    assert!(uploads_in_progress(&ep, &bucket).is_empty());

    let restored = assert_restores_to(&store, &db).await;
    assert_eq!(restored.db.table("users").unwrap().len().unwrap(), 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_never_overwrite_and_abort_their_uploads() {
    let Some(ep) = endpoint("writers_never_overwrite_and_abort_their_uploads") else {
        return;
    };
    let bucket = unique_bucket("clobber");
    create_bucket(&ep, &bucket);
    let store = s3_store(&ep, &bucket, "p");
    let big = || (0..12).map(|i| vec![i as u8; 1 << 20]);

    // A small file: a conditional PUT.
    let mut w = store.create("a.json").await.unwrap();
    w.write(b"first".to_vec()).await.unwrap();
    w.commit().await.unwrap();
    let mut w = store.create("a.json").await.unwrap();
    w.write(b"second".to_vec()).await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(
        matches!(&err, Error::Store { path, message }
            if path.ends_with("/p/a.json") && message.contains("already exists")),
        "{err}"
    );
    assert_eq!(store.read("a.json").await.unwrap(), b"first");

    // A multipart file whose name is taken while it uploads.
    let mut w = store.create("b.json").await.unwrap();
    for chunk in big() {
        w.write(chunk).await.unwrap();
    }
    assert_eq!(uploads_in_progress(&ep, &bucket).len(), 1);
    assert!(
        store.read("b.json").await.is_err(),
        "not visible before commit"
    );
    let mut other = store.create("b.json").await.unwrap();
    other.write(b"taken".to_vec()).await.unwrap();
    other.commit().await.unwrap();
    let err = w.commit().await.unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(store.read("b.json").await.unwrap(), b"taken");
    assert!(uploads_in_progress(&ep, &bucket).is_empty());

    // Abort: no object, no upload left behind.
    let mut w = store.create("c.json").await.unwrap();
    for chunk in big() {
        w.write(chunk).await.unwrap();
    }
    assert_eq!(uploads_in_progress(&ep, &bucket).len(), 1);
    w.abort().await;
    assert!(uploads_in_progress(&ep, &bucket).is_empty());

    // Commit of a multipart file: every byte arrives, in order.
    let mut w = store.create("d.json").await.unwrap();
    for chunk in big() {
        w.write(chunk).await.unwrap();
    }
    w.write(b"tail".to_vec()).await.unwrap();
    w.commit().await.unwrap();
    let mut expected: Vec<u8> = big().flatten().collect();
    expected.extend_from_slice(b"tail");
    assert!(store.read("d.json").await.unwrap() == expected);

    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["a.json", "b.json", "d.json"]);
    store.delete("a.json").await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_url_reads_the_endpoint_from_the_environment() {
    let Some(_) = endpoint("open_url_reads_the_endpoint_from_the_environment") else {
        return;
    };
    let Ok(bucket) = std::env::var("DICTDB_S3_BUCKET") else {
        let _ = writeln!(
            std::io::stderr(),
            "open_url_reads_the_endpoint_from_the_environment: skipped: DICTDB_S3_BUCKET not set"
        );
        return;
    };
    if std::env::var("AWS_ENDPOINT").is_err() || std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        let _ = writeln!(
            std::io::stderr(),
            "open_url_reads_the_endpoint_from_the_environment: skipped: AWS_ENDPOINT / AWS_ACCESS_KEY_ID not set"
        );
        return;
    }
    let prefix = unique_bucket("env");
    let store = dictdb::store::open_url(&format!("s3://{bucket}/{prefix}")).unwrap();
    let mut w = store.create("x.json").await.unwrap();
    w.write(b"{}".to_vec()).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 1);
    store.delete("x.json").await.unwrap();
    assert!(store.list().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------
// A server that dies in the middle of an upload.

/// A moto_server of the test's own, killed when dropped.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(port: u16) -> Moto {
        let command =
            std::env::var("DICTDB_MOTO_SERVER").unwrap_or_else(|_| "moto_server".to_string());
        let mut words = command.split_whitespace();
        let program = words.next().expect("DICTDB_MOTO_SERVER is empty");
        let child = Command::new(program)
            .args(words)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {command:?} (pip install 'moto[server]'): {e}")
            });
        let moto = Moto { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(60);
        // A connection only counts if it reached another socket: on
        // loopback, a connect to a port nobody listens on can pick that very
        // port as its source and "succeed" by connecting to itself.
        let answers = || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_ok_and(|s| s.local_addr().is_ok_and(|l| l.port() != port))
        };
        while !answers() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {addr} in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Passes everything to a store, but once armed, holds the writer that has
/// written `after` bytes until the test releases it.
#[derive(Debug)]
struct HoldingStore {
    inner: Arc<dyn BackupStore>,
    armed: AtomicBool,
    after: u64,
    reached: Notify,
    release: Semaphore,
}

struct HoldingWriter {
    store: Arc<HoldingStore>,
    inner: Box<dyn BackupWriter>,
    written: u64,
    held: bool,
}

#[async_trait]
impl BackupWriter for HoldingWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        if !self.held && self.written >= self.store.after {
            self.held = true;
            self.store.reached.notify_one();
            self.store.release.acquire().await.unwrap().forget();
        }
        self.written += chunk.len() as u64;
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.inner.commit().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}

#[derive(Debug)]
struct Holding(Arc<HoldingStore>);

#[async_trait]
impl BackupStore for Holding {
    fn location(&self) -> String {
        self.0.inner.location()
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        self.0.inner.list().await
    }

    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        let inner = self.0.inner.create(name).await?;
        Ok(Box::new(HoldingWriter {
            store: Arc::clone(&self.0),
            inner,
            written: 0,
            held: !self.0.armed.swap(false, Ordering::SeqCst),
        }))
    }

    async fn open(&self, name: &str) -> Result<dictdb::store::FileReader> {
        self.0.inner.open(name).await
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.0.inner.read_range(name, range).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.0.inner.delete(name).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_upload_fails_the_backup_and_a_later_one_succeeds() {
    let Some(_) = endpoint("a_server_killed_mid_upload_fails_the_backup_and_a_later_one_succeeds")
    else {
        return;
    };
    let port = free_port();
    let mut moto = Moto::start(port);
    let ep = moto.endpoint();
    let bucket = "dictdb-killed";
    create_bucket(&ep, bucket);

    let hold = Arc::new(HoldingStore {
        inner: s3_store(&ep, bucket, "backups"),
        armed: AtomicBool::new(false),
        // Two parts handed to the upload before the server dies.
        after: 2 * MIN_PART_SIZE as u64,
        reached: Notify::new(),
        release: Semaphore::new(0),
    });
    let store: Arc<dyn BackupStore> = Arc::new(Holding(Arc::clone(&hold)));
    // Room for every mutation event, so the big backup is a real delta.
    let db = DictDB::with_event_capacity(1 << 18);
    let users = db.create_table("users").unwrap();
    users.insert(json!({"name": "first"})).unwrap();
    let failures = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&failures);
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
            .on_backup_failure(move |_, n| seen.store(u64::from(n), Ordering::SeqCst)),
    )
    .await
    .unwrap();
    backups.backup_full().await.unwrap();

    // A delta of 200k records (about 25 MB) is uploading when the server dies.
    users
        .insert_many((1..=200_000).map(|i| {
            let mut r = common::workload_record(i);
            r.as_object_mut().unwrap().remove("id");
            r
        }))
        .unwrap();
    hold.armed.store(true, Ordering::SeqCst);
    let task = {
        let backups = backups.clone();
        tokio::spawn(async move { backups.backup_delta().await })
    };
    tokio::time::timeout(Duration::from_secs(120), hold.reached.notified())
        .await
        .expect("the backup never got two parts into its upload");
    moto.kill();
    let killed = Instant::now();
    hold.release.add_permits(1);
    let result = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the backup did not fail within a minute of the server's death")
        .unwrap();
    let took = killed.elapsed();
    eprintln!("failure surfaced {took:?} after the kill: {result:?}");
    let err = result.expect_err("a backup to a dead server must fail");
    assert!(
        matches!(&err, Error::StoreUnavailable { path, .. }
            if path.starts_with(&format!("s3://{bucket}/backups/dictdb_delta_"))),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(backups.consecutive_failures(), 1);
    assert_eq!(failures.load(Ordering::SeqCst), 1);

    // A new server on the same port (moto forgets everything: new bucket).
    drop(moto);
    let moto = Moto::start(port);
    create_bucket(&moto.endpoint(), bucket);
    users.insert(json!({"name": "after the outage"})).unwrap();
    let full = backups.backup_full().await.unwrap();
    assert_eq!(full.records, 200_002);
    assert_eq!(backups.consecutive_failures(), 0);
    backups.stop().await.unwrap();
    let files = store.list().await.unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].name, full.file);
    assert!(uploads_in_progress(&moto.endpoint(), bucket).is_empty());
    assert_restores_to(&store, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictdb_backup_lists_verifies_and_restores_a_bucket() {
    let Some(endpoint) = endpoint("dictdb_backup_lists_verifies_and_restores_a_bucket") else {
        return;
    };
    let bucket = unique_bucket("cli");
    create_bucket(&endpoint, &bucket);
    let store = s3_store(&endpoint, &bucket, "svc");
    let db = DictDB::new();
    let t = db.create_table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store)).incremental(true),
    )
    .await
    .unwrap();
    t.insert(json!({"name": "a"})).unwrap();
    m.backup_full().await.unwrap();
    t.insert(json!({"name": "b"})).unwrap();
    m.backup_delta().await.unwrap();
    m.stop().await.unwrap();

    let url = format!("s3://{bucket}/svc");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
            .args(args)
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let list = run(&["list", &url]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("full") && text.contains("delta"), "{text}");
    let verify = run(&["verify", &url]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("restored.json");
    let restore = run(&["restore", &url, "--out", out.to_str().unwrap()]);
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let loaded = DictDB::load(&out, dictdb::FileFormat::Json).unwrap();
    assert_eq!(common::table_map(&loaded), common::table_map(&db));
}

/// Compressed and encrypted backups in a bucket: a multipart upload whose
/// parts hold only ciphertext, restored and verified with the identity.
#[cfg(feature = "encryption")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_backups_round_trip_through_the_bucket() {
    use dictdb::encryption::Identity;
    use dictdb::{Compression, DecryptFailure};
    let Some(ep) = endpoint("encrypted_backups_round_trip_through_the_bucket") else {
        return;
    };
    let bucket = unique_bucket("age");
    create_bucket(&ep, &bucket);
    let store = s3_store(&ep, &bucket, "enc");
    let id = Identity::generate();
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    users
        .insert_many((0..60_000).map(common::workload_record))
        .unwrap();
    // Not compressed: large enough for a multipart upload of several parts.
    let plain = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .encrypt_to([id.to_public()]),
    )
    .await
    .unwrap();
    let full = plain.backup_full().await.unwrap();
    assert!(full.file.ends_with(".json.age"), "{}", full.file);
    assert!(full.bytes > MIN_PART_SIZE as u64, "{}", full.bytes);
    users.update(7, json!({"age": 1})).unwrap();
    plain.backup_delta().await.unwrap();
    plain.stop().await.unwrap();
    // Then a compressed, encrypted chain.
    let zstd = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .compression(Compression::zstd())
            .encrypt_to([id.to_public()]),
    )
    .await
    .unwrap();
    users.delete(8).unwrap();
    let z = zstd.backup_now().await.unwrap();
    assert!(z.info().unwrap().file.ends_with(".json.zst.age"));
    users.insert(json!({"name": "late"})).unwrap();
    zstd.backup_now().await.unwrap();
    zstd.stop().await.unwrap();

    for f in store.list().await.unwrap() {
        let bytes = store.read(&f.name).await.unwrap();
        assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{}", f.name);
        assert!(!bytes.windows(9).any(|w| w == b"user_1234"), "{}", f.name);
    }
    assert!(uploads_in_progress(&ep, &bucket).is_empty());

    let restore = Restore::new(Arc::clone(&store)).identity(id);
    let restored = restore.run().await.unwrap();
    assert_eq!(common::table_map(&restored.db), common::table_map(&db));
    assert!(restore.verify().await.unwrap().is_ok());
    let listing = restore.list().await.unwrap();
    assert!(listing
        .files
        .iter()
        .all(|f| f.encrypted && f.error.is_none()));
    match Restore::new(store).run().await {
        Err(Error::Decrypt { kind, .. }) => assert_eq!(kind, DecryptFailure::MissingIdentity),
        other => panic!("{other:?}"),
    }
}

/// The bucket's writer runs `dictdb-backup` with the server's settings.
fn cli(endpoint: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
        .args(args)
        .env("AWS_ENDPOINT", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap()
}

/// The fencing tokens of the files a restore applied.
fn tokens(r: &dictdb::Restored) -> Vec<Option<u64>> {
    r.applied.iter().map(|f| f.fencing_token).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_fails_to_start_and_the_next_holder_begins_a_chain_of_its_own() {
    let Some(ep) = endpoint("a_second_writer_fails_to_start") else {
        return;
    };
    let bucket = unique_bucket("lease");
    create_bucket(&ep, &bucket);
    let config = || {
        BackupConfig::with_store(s3_store(&ep, &bucket, "svc"))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
    };
    let first = BackupManager::restore_or_start(config()).await.unwrap();
    let t = first.db.create_table("users").unwrap();
    t.insert(json!({"name": "a"})).unwrap();
    let full = first.manager.backup_full().await.unwrap();
    t.insert(json!({"name": "b"})).unwrap();
    first.manager.backup_delta().await.unwrap();

    // A second writer on the prefix, in either way of starting, fails.
    let other = DictDB::new();
    for second in [
        BackupManager::start(&other, config()).await.err(),
        BackupManager::restore_or_start(config()).await.err(),
    ] {
        match second {
            Some(Error::Locked { location, holder }) => {
                assert!(location.contains(&bucket), "{location}");
                assert!(holder.contains("pid"), "{holder}");
                assert!(holder.contains("expires"), "{holder}");
            }
            other => panic!("a second writer started: {other:?}"),
        }
    }
    // Nor does `dictdb-backup prune` delete under the live writer (a dry
    // run only reads, and runs).
    let url = format!("s3://{bucket}/svc");
    let prune = cli(&ep, &["prune", &url, "--keep-last", "1"]);
    let said = String::from_utf8_lossy(&prune.stderr).to_string();
    assert!(!prune.status.success(), "prune ran under a live writer");
    assert!(said.contains("pid") && said.contains("prune"), "{said}");
    let dry = cli(&ep, &["prune", &url, "--keep-last", "1", "--dry-run"]);
    assert!(dry.status.success());
    first.manager.stop().await.unwrap();

    // The next holder restores, and writes a full backup first: a new token.
    let next = BackupManager::restore_or_start(config()).await.unwrap();
    let restored = next.restored.as_ref().unwrap();
    let old = tokens(restored);
    assert_eq!(old.len(), 2);
    assert!(old[0].is_some() && old[0] == old[1], "{old:?}");
    next.db
        .table("users")
        .unwrap()
        .insert(json!({"name": "c"}))
        .unwrap();
    let info = next.manager.backup_now().await.unwrap();
    let info = info.info().unwrap().clone();
    assert_eq!(info.kind, BackupKind::Full, "a new holder begins a chain");
    next.db
        .table("users")
        .unwrap()
        .insert(json!({"name": "d"}))
        .unwrap();
    next.manager.backup_now().await.unwrap();
    next.manager.stop().await.unwrap();
    let store = s3_store(&ep, &bucket, "svc");
    let r = assert_restores_to(&store, &next.db).await;
    let new = tokens(&r);
    assert_eq!(r.applied[0].name, info.file);
    assert!(new[0].is_some() && new[0] == new[1], "{new:?}");
    assert!(new[0] > old[0], "tokens grow: {old:?} then {new:?}");
    assert_ne!(r.applied[0].name, full.file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_carrying_two_fencing_tokens_is_refused_by_restore_verify_and_the_command() {
    let Some(ep) = endpoint("a_chain_carrying_two_fencing_tokens_is_refused") else {
        return;
    };
    let bucket = unique_bucket("fence");
    create_bucket(&ep, &bucket);
    let store = s3_store(&ep, &bucket, "svc");
    let db = DictDB::new();
    let t = db.create_table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store)).incremental(true),
    )
    .await
    .unwrap();
    t.insert(json!({"name": "a"})).unwrap();
    m.backup_full().await.unwrap();
    t.insert(json!({"name": "b"})).unwrap();
    let d1 = m.backup_delta().await.unwrap().info().unwrap().clone();
    t.insert(json!({"name": "c"})).unwrap();
    let d2 = m.backup_delta().await.unwrap().info().unwrap().clone();
    m.stop().await.unwrap();
    assert!(Restore::new(Arc::clone(&store)).run().await.is_ok());

    // By hand: the second delta as another lease holder would have written
    // it (a different token, a valid checksum).
    let bytes = store.read(&d2.file).await.unwrap();
    let body = common::craft::json_body(&bytes);
    let key = "\"fencing_token\":";
    let at = body.find(key).expect("the writer recorded its token") + key.len();
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let token: u64 = digits.parse().unwrap();
    let forged = format!("{}{}{}", &body[..at], token + 1, &body[at + digits.len()..]);
    store.delete(&d2.file).await.unwrap();
    let mut w = store.create(&d2.file).await.unwrap();
    w.write(common::craft::seal_json(&forged)).await.unwrap();
    w.commit().await.unwrap();

    let e = Restore::new(Arc::clone(&store)).run().await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains(&d2.file), "{text}");
    assert!(text.contains("two writers"), "{text}");
    assert!(text.contains(&(token + 1).to_string()), "{text}");
    // Lenient: the cut before it, and why.
    let lenient = Restore::new(Arc::clone(&store))
        .stop_at_last_consistent(true)
        .run()
        .await
        .unwrap();
    assert_eq!(lenient.seq, Some(d1.seq));
    assert_eq!(lenient.stopped.unwrap().file, d2.file);
    let report = verify_store(Arc::clone(&store)).await.unwrap();
    assert!(!report.is_ok(), "{report:?}");
    assert!(format!("{report:?}").contains("two writers"), "{report:?}");

    let url = format!("s3://{bucket}/svc");
    for args in [
        vec!["verify", url.as_str()],
        vec!["restore", url.as_str(), "--out"],
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.json");
        let mut args = args.clone();
        if args[0] == "restore" {
            args.push(out.to_str().unwrap());
        }
        let run = cli(&ep, &args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!run.status.success(), "{args:?} succeeded: {all}");
        assert!(all.contains(&d2.file), "{args:?}: {all}");
        assert!(!out.exists(), "nothing restored");
    }
}
