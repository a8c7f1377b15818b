//! Object storage when the network misbehaves: through a fault-injecting
//! proxy (tests/common/fault_proxy.rs) in front of the loopback S3 server
//! (`source .ci/s3-server.sh`). Without `DICTDB_S3_ENDPOINT` every test says
//! it is skipped and passes.
//!
//! - a server error is not damage: a lenient restore fails on it;
//! - a server that never answers costs one retry timeout, not several, and
//!   never holds up `stop`;
//! - a large file reads in ranges, each within the request timeout;
//! - `list` reads only the files' first bytes;
//! - a `PUT` whose answer is lost is recognised as this writer's.
#![cfg(feature = "object-store")]

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use common::s3::{create_bucket, endpoint, unique_bucket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dictdb::restore::{list_store, Restore};
use dictdb::store::{open_url_with, BackupStore, ObjectStoreOptions, MIN_PART_SIZE};
use dictdb::{BackupConfig, BackupManager, DictDB};
use fault_proxy::{Fault, FaultProxy};

/// Options for `endpoint`, with explicit credentials and the given retry
/// timeout (the longest a request may take, retries included) and
/// request timeout (one attempt).
fn options(
    endpoint: &str,
    retry_timeout: Duration,
    request_timeout: Duration,
) -> ObjectStoreOptions {
    ObjectStoreOptions::default()
        .max_retries(3)
        .retry_timeout(retry_timeout)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(request_timeout)
        .part_size(MIN_PART_SIZE)
        .s3_config("aws_endpoint", endpoint)
        .s3_config("aws_allow_http", "true")
        .s3_config("aws_access_key_id", "test")
        .s3_config("aws_secret_access_key", "test")
        .s3_config("aws_region", "us-east-1")
}

fn store_at(bucket: &str, opts: &ObjectStoreOptions) -> Arc<dyn BackupStore> {
    open_url_with(&format!("s3://{bucket}/backups"), opts).unwrap()
}

/// A store on the server itself (no proxy), with short settings.
fn direct(ep: &str, bucket: &str) -> Arc<dyn BackupStore> {
    store_at(
        bucket,
        &options(ep, Duration::from_secs(20), Duration::from_secs(10)),
    )
}

fn users(db: &DictDB, from: i64, to: i64) {
    let t = db.table("users").unwrap();
    for i in from..to {
        t.insert(common::workload_record(i)).unwrap();
    }
}

/// full A, delta, full B, delta, delta: written straight to the server.
async fn two_chains(ep: &str, bucket: &str) -> (DictDB, Vec<String>) {
    let store = direct(ep, bucket);
    let db = DictDB::new();
    db.create_table_with_key("users", "id").unwrap();
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    let mut names = Vec::new();
    users(&db, 0, 50);
    names.push(backups.backup_full().await.unwrap().file);
    users(&db, 50, 60);
    names.push(
        backups
            .backup_delta()
            .await
            .unwrap()
            .info()
            .unwrap()
            .file
            .clone(),
    );
    users(&db, 60, 70);
    names.push(backups.backup_full().await.unwrap().file);
    users(&db, 70, 80);
    names.push(
        backups
            .backup_delta()
            .await
            .unwrap()
            .info()
            .unwrap()
            .file
            .clone(),
    );
    users(&db, 80, 90);
    names.push(
        backups
            .backup_delta()
            .await
            .unwrap()
            .info()
            .unwrap()
            .file
            .clone(),
    );
    backups.stop().await.unwrap();
    (db, names)
}

// ------------------------------------------------------------ defect 2

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_error_is_not_damage_even_for_a_lenient_restore() {
    let Some(ep) = endpoint("a_server_error_is_not_damage_even_for_a_lenient_restore") else {
        return;
    };
    let bucket = unique_bucket("lenient");
    create_bucket(&ep, &bucket);
    let (db, names) = two_chains(&ep, &bucket).await;
    let proxy = FaultProxy::start(&ep);
    let opts = options(
        &proxy.endpoint(),
        Duration::from_secs(3),
        Duration::from_secs(2),
    );
    let store = store_at(&bucket, &opts);
    // Through the proxy, with no fault: everything.
    let all = Restore::new(Arc::clone(&store)).run().await.unwrap();
    assert_eq!(common::dump(&all.db), common::dump(&db));

    // 500 on every GET of the newest full backup.
    proxy.rule(Some("GET"), &names[2], Fault::Status(500), None);
    let result = Restore::new(Arc::clone(&store))
        .stop_at_last_consistent(true)
        .run()
        .await;
    let err = match result {
        Ok(r) => panic!(
            "a lenient restore passed over a file the server failed to send: skipped {:?}, {} files applied",
            r.skipped,
            r.applied.len()
        ),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(text.contains("did not answer"), "{text}");
    assert!(text.contains(&names[2]) && text.contains("500"), "{text}");
    assert!(proxy.hits(0) >= 2, "the request was retried");

    // 503 on one delta: no early stop either.
    proxy.clear();
    proxy.rule(Some("GET"), &names[3], Fault::Status(503), None);
    let result = Restore::new(Arc::clone(&store))
        .stop_at_last_consistent(true)
        .run()
        .await;
    let err = match result {
        Ok(r) => panic!(
            "a lenient restore stopped early on a server error: {:?}",
            r.stopped
        ),
        Err(e) => e,
    };
    assert!(err.to_string().contains("did not answer"), "{err}");

    // The header read while planning goes through; the 503 comes while the
    // delta's body streams to the decoder (the store's error travels
    // through the reader): no early stop either.
    proxy.clear();
    proxy.rule(Some("GET"), &names[3], Fault::Throttle(u64::MAX), Some(1));
    proxy.rule(Some("GET"), &names[3], Fault::Status(503), None);
    let result = Restore::new(Arc::clone(&store))
        .stop_at_last_consistent(true)
        .run()
        .await;
    assert_eq!(proxy.hits(0), 1, "the header was read first");
    let err = match result {
        Ok(r) => panic!(
            "a lenient restore stopped early on a server error while reading: {:?}",
            r.stopped
        ),
        Err(e) => e,
    };
    assert!(err.to_string().contains("did not answer"), "{err}");
    proxy.clear();
    proxy.rule(Some("GET"), &names[3], Fault::Status(503), None);

    // The command: exit 6, and a message that says what to do.
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT", proxy.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .args(["--timeout", "3s", "restore", "--lenient"])
        .arg(format!("s3://{bucket}/backups"))
        .arg("--out")
        .arg(tmp.path().join("out.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("did not answer"), "{stderr}");
    assert!(stderr.contains("retry_timeout 3s"), "{stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");
    assert!(!tmp.path().join("out.json").exists());

    // verify: nothing damaged, a file the store did not send: exit 6 too.
    let out = Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT", proxy.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .args(["--timeout", "3s", "verify"])
        .arg(format!("s3://{bucket}/backups"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("nothing was found damaged"), "{stderr}");
}

// ------------------------------------------------------------ defect 5

/// A manager on a server that accepts connections and never answers, with
/// the default retry settings, in paused time (every request waits on a
/// timer: the clock jumps from one to the next).
async fn hung_manager(proxy: &FaultProxy, bucket: &str) -> (DictDB, BackupManager) {
    let opts = ObjectStoreOptions::default()
        .s3_config("aws_endpoint", proxy.endpoint())
        .s3_config("aws_allow_http", "true")
        .s3_config("aws_access_key_id", "test")
        .s3_config("aws_secret_access_key", "test")
        .s3_config("aws_region", "us-east-1");
    let store = open_url_with(&format!("s3://{bucket}/backups"), &opts).unwrap();
    let db = DictDB::new();
    db.create_table_with_key("users", "id").unwrap();
    users(&db, 0, 10);
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(store)
            .backup_interval(Duration::from_secs(24 * 3600))
            .allow_store_ahead(true),
    )
    .await
    .unwrap();
    (db, backups)
}

#[tokio::test(flavor = "current_thread")]
async fn a_silent_server_costs_one_retry_timeout_per_backup() {
    let Some(ep) = endpoint("a_silent_server_costs_one_retry_timeout_per_backup") else {
        return;
    };
    let bucket = unique_bucket("silent");
    create_bucket(&ep, &bucket);
    let proxy = FaultProxy::start(&ep);
    // The manager takes the prefix's lease while the server answers (a
    // writer cannot start without it), then the server falls silent.
    let (_db, backups) = hung_manager(&proxy, &bucket).await;
    proxy.hang_all();
    // From here every request waits on a timer: paused time jumps from one
    // to the next.
    tokio::time::pause();
    let t = tokio::time::Instant::now();
    let err = backups.backup_full().await.unwrap_err();
    let first = t.elapsed();
    let t = tokio::time::Instant::now();
    let again = backups.backup_full().await.unwrap_err();
    let second = t.elapsed();
    let t = tokio::time::Instant::now();
    backups.stop().await.unwrap();
    let stop = t.elapsed();
    eprintln!("first {first:?} ({err}), second {second:?} ({again}), stop {stop:?}");
    // The README's budget: 60 s per request, retries included.
    assert!(
        first <= Duration::from_secs(61),
        "first backup took {first:?}: {err}"
    );
    assert!(
        second <= Duration::from_secs(61),
        "second backup took {second:?}: {again}"
    );
    // stop() gives the lease back, waiting 5 s at most for the store.
    assert!(stop <= Duration::from_secs(6), "stop took {stop:?}");
    assert!(err.to_string().contains("retry_timeout"), "{err}");
    assert_eq!(
        backups.consecutive_failures(),
        2,
        "both failures are counted"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn stop_does_not_wait_for_the_first_listing() {
    let Some(ep) = endpoint("stop_does_not_wait_for_the_first_listing") else {
        return;
    };
    let (a, b) = (unique_bucket("unlisted"), unique_bucket("unlisted2"));
    create_bucket(&ep, &a);
    create_bucket(&ep, &b);
    let proxy = FaultProxy::start(&ep);
    // Listings never get an answer; the lease requests do.
    proxy.rule(Some("GET"), "list-type=", Fault::Hang, None);
    let (_db, backups) = hung_manager(&proxy, &a).await;
    let (_db2, second) = hung_manager(&proxy, &b).await;
    // Then nothing gets an answer, and every wait is on a timer.
    proxy.hang_all();
    tokio::time::pause();
    tokio::task::yield_now().await;
    let t = tokio::time::Instant::now();
    backups.stop().await.unwrap();
    // Not the listing's 60 s: only the lease's release, which waits 5 s at
    // most for the store.
    assert!(
        t.elapsed() <= Duration::from_secs(6),
        "stop took {:?}",
        t.elapsed()
    );
    // shutdown bounds everything too.
    let t = tokio::time::Instant::now();
    let r = second.shutdown(Duration::from_secs(10)).await;
    assert!(r.is_err());
    assert!(
        t.elapsed() <= Duration::from_secs(11),
        "shutdown took {:?}",
        t.elapsed()
    );
}

/// The one real-time test: `stop` during a multipart upload whose parts
/// (and abort) never get an answer returns within one retry timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_a_stalled_multipart_upload_takes_one_retry_timeout() {
    let Some(ep) = endpoint("stop_during_a_stalled_multipart_upload_takes_one_retry_timeout")
    else {
        return;
    };
    let bucket = unique_bucket("stall");
    create_bucket(&ep, &bucket);
    let proxy = FaultProxy::start(&ep);
    let opts = options(
        &proxy.endpoint(),
        Duration::from_secs(4),
        Duration::from_secs(2),
    );
    let store = store_at(&bucket, &opts);
    let db = DictDB::new();
    db.create_table_with_key("users", "id").unwrap();
    users(&db, 0, 60_000); // about 9 MB: more than one 5 MiB part
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(store).backup_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    // Parts and aborts (DELETE ?uploadId=) never get an answer.
    proxy.rule(Some("PUT"), "partNumber=", Fault::Hang, None);
    proxy.rule(Some("DELETE"), "uploadId=", Fault::Hang, None);
    let task = {
        let backups = backups.clone();
        tokio::spawn(async move { backups.backup_full().await })
    };
    let waited = std::time::Instant::now();
    while !proxy
        .seen()
        .iter()
        .any(|s| s.target.contains("partNumber="))
    {
        assert!(
            waited.elapsed() < Duration::from_secs(60),
            "no part upload started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = std::time::Instant::now();
    backups.stop().await.unwrap();
    let took = t.elapsed();
    let result = task.await.unwrap();
    eprintln!("stop took {took:?}; the backup: {result:?}");
    assert!(result.is_err());
    // One retry timeout (4 s) and a generous margin; waiting for the abort
    // as well would take another 4 s.
    assert!(took < Duration::from_millis(6500), "stop took {took:?}");
}

// ------------------------------------------------------------ defect 6

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_file_reads_in_ranges_within_the_request_timeout() {
    let Some(ep) = endpoint("a_large_file_reads_in_ranges_within_the_request_timeout") else {
        return;
    };
    let bucket = unique_bucket("slow");
    create_bucket(&ep, &bucket);
    let size = 36 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = direct(&ep, &bucket).create("big.bin").await.unwrap();
    for chunk in data.chunks(1 << 20) {
        w.write(chunk.to_vec()).await.unwrap();
    }
    w.commit().await.unwrap();

    let proxy = FaultProxy::start(&ep);
    // 6 MiB/s per connection: one GET of the whole file takes 6 s, twice
    // the longest a request may take (object_store resumes a GET cut by
    // the request timeout, but not past the retry timeout); a 4 MiB range
    // takes 0.7 s.
    proxy.rule(Some("GET"), "big.bin", Fault::Throttle(6 << 20), None);
    let opts = options(
        &proxy.endpoint(),
        Duration::from_secs(3),
        Duration::from_secs(2),
    );
    let store = store_at(&bucket, &opts);
    let read = store.read("big.bin").await.unwrap();
    assert!(read == data, "the file read back differs");
    let gets = proxy.seen().iter().filter(|s| s.method == "GET").count();
    assert!(gets >= 6, "{gets} GETs: not ranged");

    // A range that cannot arrive within the request timeout: the error
    // names the settings.
    proxy.clear();
    proxy.rule(Some("GET"), "big.bin", Fault::Throttle(64 << 10), None);
    let opts = options(
        &proxy.endpoint(),
        Duration::from_secs(3),
        Duration::from_secs(1),
    );
    let store = store_at(&bucket, &opts);
    let err = store.read("big.bin").await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("did not answer"), "{text}");
    assert!(
        text.contains("request_timeout 1s") && text.contains("retry_timeout 3s"),
        "{text}"
    );
}

// ------------------------------------------------------------ defect 7

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_only_the_first_bytes_of_large_files() {
    let Some(ep) = endpoint("list_reads_only_the_first_bytes_of_large_files") else {
        return;
    };
    let bucket = unique_bucket("listbytes");
    create_bucket(&ep, &bucket);
    let store = direct(&ep, &bucket);
    let db = DictDB::new();
    db.create_table_with_key("users", "id").unwrap();
    users(&db, 0, 50_000);
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store)).backup_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        backups.backup_full().await.unwrap();
    }
    backups.stop().await.unwrap();
    let files = store.list().await.unwrap();
    let total: u64 = files.iter().map(|f| f.size).sum();
    assert!(total > 15 << 20, "{files:?}");

    let proxy = FaultProxy::start(&ep);
    let opts = options(
        &proxy.endpoint(),
        Duration::from_secs(20),
        Duration::from_secs(10),
    );
    let through = store_at(&bucket, &opts);
    let listing = list_store(through).await.unwrap();
    assert_eq!(listing.files.len(), 3);
    assert!(listing.files.iter().all(|f| f.error.is_none()));
    let bytes = proxy.bytes_out();
    eprintln!(
        "list of {} files, {total} bytes: {bytes} bytes transferred",
        files.len()
    );
    assert!(bytes < 256 << 10, "list transferred {bytes} bytes");

    // The command too.
    proxy.reset_counts();
    let out = Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
        .env_clear()
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ENDPOINT", proxy.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .arg("list")
        .arg(format!("s3://{bucket}/backups"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = proxy.bytes_out();
    eprintln!("dictdb-backup list: {bytes} bytes transferred");
    assert!(
        bytes < 256 << 10,
        "the command's list transferred {bytes} bytes"
    );
}

// ------------------------------------------------------------ defect 8

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_answer_is_lost_is_recognised_as_ours() {
    let Some(ep) = endpoint("a_put_whose_answer_is_lost_is_recognised_as_ours") else {
        return;
    };
    let bucket = unique_bucket("lostput");
    create_bucket(&ep, &bucket);
    let proxy = FaultProxy::start(&ep);
    let opts = options(
        &proxy.endpoint(),
        Duration::from_secs(10),
        Duration::from_secs(5),
    );
    let store = store_at(&bucket, &opts);
    let db = DictDB::new();
    db.create_table_with_key("users", "id").unwrap();
    users(&db, 0, 100);
    let backups = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();

    // The first PUT of the backup reaches the server; its answer does not.
    proxy.rule(Some("PUT"), "dictdb_backup_", Fault::DropReply, Some(1));
    let info = backups
        .backup_full()
        .await
        .expect("the object under the name is exactly what was sent: the backup is committed");
    assert_eq!(proxy.hits(0), 1);
    let puts = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "PUT" && s.target.contains(&info.file))
        .count();
    assert_eq!(puts, 2, "the PUT was retried after its answer was lost");
    users(&db, 100, 110);
    let delta = backups.backup_delta().await.unwrap();
    assert!(delta.info().is_some());

    // Answer lost, and the object cannot be read back to compare: the
    // commit is uncertain, and the next backup is a full one.
    proxy.clear();
    proxy.rule(Some("PUT"), "dictdb_delta_", Fault::DropReply, Some(1));
    proxy.rule(Some("GET"), "dictdb_delta_", Fault::Status(500), None);
    proxy.rule(Some("HEAD"), "dictdb_delta_", Fault::Status(500), None);
    users(&db, 110, 120);
    let err = backups.backup_delta().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("may be this file") && !text.contains("it was not overwritten"),
        "{text}"
    );
    proxy.clear();
    users(&db, 120, 130);
    let next = backups.backup_now().await.unwrap();
    assert_eq!(
        next.info().unwrap().kind,
        dictdb::BackupKind::Full,
        "after an uncertain commit the next backup is full"
    );
    backups.stop().await.unwrap();
    let restored = Restore::new(Arc::clone(&store)).run().await.unwrap();
    assert_eq!(common::dump(&restored.db), common::dump(&db));
}
