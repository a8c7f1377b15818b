//! Two processes on a real S3-compatible server (moto on 127.0.0.1): a
//! writer process (this test binary run again) runs a service workload with
//! an incremental manager backing up every 100 ms; this process follows the
//! bucket with a replica. At each checkpoint the replica must reach the
//! newest cut the writer acknowledged within two poll intervals, holding
//! exactly the writer's state at its cut. Then the writer is killed with
//! SIGKILL, the replica is promoted (its lease refused while the dead
//! writer's is live), writes more, and a restore of the bucket holds
//! everything the writer acknowledged and everything written since.
//!
//! ```text
//! source .ci/s3-server.sh
//! cargo test --all-features --test replica_s3
//! ```
//!
//! Without `DICTDB_S3_ENDPOINT` the test says it is skipped and passes.
#![cfg(feature = "object-store")]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dictdb::replica::{Replica, ReplicaOptions};
use dictdb::restore::Restore;
use dictdb::store::{open_url_with, BackupStore, ObjectStoreOptions};
use dictdb::{BackupConfig, BackupEvent, BackupManager, DictDB, Error, Table};
use serde_json::{json, Value};

const CHILD_ENV: &str = "DICTDB_REPLICA_WRITER_URL";

/// The follower's poll interval.
const POLL: Duration = Duration::from_millis(250);

/// The lease time to live of both writers: a killed writer's lease can be
/// taken over 1.5 s after its last renewal.
const LEASE: Duration = Duration::from_secs(1);

fn options(endpoint: &str) -> ObjectStoreOptions {
    ObjectStoreOptions::default()
        .max_retries(2)
        .retry_timeout(Duration::from_secs(3))
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(10))
        .lease_ttl(LEASE)
        .s3_config("aws_endpoint", endpoint)
        .s3_config("aws_allow_http", "true")
        .s3_config("aws_access_key_id", "test")
        .s3_config("aws_secret_access_key", "test")
        .s3_config("aws_region", "us-east-1")
}

fn endpoint() -> Option<String> {
    match std::env::var("DICTDB_S3_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => Some(e.trim().trim_end_matches('/').to_string()),
        _ => None,
    }
}

fn store(url: &str) -> Arc<dyn BackupStore> {
    let ep = endpoint().expect("DICTDB_S3_ENDPOINT");
    open_url_with(url, &options(&ep)).unwrap()
}

/// The change that gets sequence number `k` (k >= 2; 1 creates the table):
/// the workload is a pure function of the sequence number, so the state at
/// any cut can be rebuilt here.
fn op(k: u64) -> (&'static str, i64, Value) {
    let key = k as i64;
    match k % 8 {
        0 => ("delete", key - 2, Value::Null),
        4 => ("upsert", key - 1, json!({"u": key})),
        _ => (
            "insert",
            key,
            json!({"v": key, "s": "x".repeat((k % 13) as usize)}),
        ),
    }
}

/// Makes the change `k` on `t`.
fn apply(t: &Table, k: u64) {
    match op(k) {
        ("delete", key, _) => assert!(t.delete(key).unwrap()),
        ("upsert", key, mut patch) => {
            patch["id"] = json!(key);
            t.upsert(patch).unwrap();
        }
        (_, key, mut rec) => {
            rec["id"] = json!(key);
            t.insert(rec).unwrap();
        }
    }
}

/// The table after every change up to and including `seq`.
fn replay(seq: u64) -> BTreeMap<i64, Value> {
    let mut m = BTreeMap::new();
    for k in 2..=seq {
        match op(k) {
            ("delete", key, _) => {
                m.remove(&key);
            }
            ("upsert", key, patch) => {
                let rec: &mut Value = m.get_mut(&key).expect("upsert target exists");
                for (f, v) in patch.as_object().unwrap() {
                    rec[f] = v.clone();
                }
            }
            (_, key, mut rec) => {
                rec["id"] = json!(key);
                m.insert(key, rec);
            }
        }
    }
    m
}

fn state(db: &DictDB) -> (u64, BTreeMap<i64, Value>) {
    // One snapshot: its sequence number and its records are one cut.
    let snap = db.snapshot();
    let records = snap
        .table("t")
        .map(|t| {
            t.iter()
                .map(|(_, r)| {
                    let v = r.to_value();
                    (v["id"].as_i64().unwrap(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    (snap.seq(), records)
}

/// The writer process: restore (or start), then the workload, printing the
/// sequence number of every backup once it is durable, until killed.
async fn writer(url: String) {
    let started = BackupManager::restore_or_start(
        BackupConfig::with_store(store(&url))
            .incremental(true)
            .backup_interval(Duration::from_millis(100))
            .min_backup_interval(Duration::from_millis(50))
            .max_deltas_before_full(5),
    )
    .await
    .unwrap();
    let (db, m) = (started.db, started.manager);
    let t = match db.table("t") {
        Ok(t) => t,
        Err(_) => db.create_table("t").unwrap(),
    };
    let mut events = m.subscribe();
    tokio::spawn(async move {
        while let Ok(e) = events.recv().await {
            if let BackupEvent::Completed(info) = e {
                // One write per line: a kill never tears one.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "backup {} {}", info.seq, info.file);
                let _ = out.flush();
            }
        }
    });
    m.backup_full().await.unwrap();
    println!("ready");
    loop {
        for _ in 0..20 {
            let k = db.seq() + 1;
            apply(&t, k);
            assert_eq!(db.seq(), k, "one change, one sequence number");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn replica_writer_child() {
    // Only does something when started by the test below.
    let Ok(url) = std::env::var(CHILD_ENV) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(writer(url));
}

fn unique_bucket() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("dictdb-replica-{}-{nanos}", std::process::id())
}

/// The writer process, killed (SIGKILL) if the test fails before it does.
struct Writer(std::process::Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The backups the writer acknowledged: (when this process read the line,
/// sequence number).
type Acks = Arc<Mutex<Vec<(Instant, u64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_follows_a_writer_process_and_takes_over_after_sigkill() {
    let Some(ep) = endpoint() else {
        let _ = writeln!(
            std::io::stderr(),
            "a_replica_follows_a_writer_process_and_takes_over_after_sigkill: skipped: \
             DICTDB_S3_ENDPOINT not set (source .ci/s3-server.sh)"
        );
        return;
    };
    let test_started = Instant::now();
    let bucket = unique_bucket();
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10", "-X", "PUT"])
        .arg(format!("{ep}/{bucket}"))
        .output()
        .expect("curl creates the test bucket");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = format!("s3://{bucket}/service");

    let mut child = Writer(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "replica_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let acks: Acks = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let reader = {
        let acks = Arc::clone(&acks);
        let stdout = child.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // (The harness prints the test's name before its first line.)
                if line.ends_with("ready") {
                    let _ = ready_tx.send(());
                } else if let Some(rest) = line.split_once("backup ").map(|(_, r)| r) {
                    if let Some(seq) = rest.split(' ').next().and_then(|s| s.parse().ok()) {
                        acks.lock().unwrap().push((Instant::now(), seq));
                    }
                }
            }
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the writer process started and wrote its first full backup");

    let replica = Replica::follow(store(&url), ReplicaOptions::default().interval(POLL))
        .await
        .unwrap();

    // Checkpoints: the newest cut acknowledged now is reached within two
    // poll intervals, and the replica holds exactly the writer's state at
    // the cut it serves.
    let mut switched = 0;
    let mut events = replica.subscribe();
    for checkpoint in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (seen_at, cut) = *acks.lock().unwrap().last().expect("acknowledged backups");
        let deadline = seen_at + 2 * POLL;
        let (seq, records) = loop {
            let (seq, records) = state(replica.db());
            if seq >= cut {
                break (seq, records);
            }
            assert!(
                Instant::now() < deadline,
                "checkpoint {checkpoint}: the replica is at {seq}, two poll intervals after the \
                 writer acknowledged {cut} ({:?})",
                replica.status()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(
            records,
            replay(seq),
            "checkpoint {checkpoint}: state at {seq}"
        );
        assert!(replica.db().is_read_only());
        while let Ok(e) = events.try_recv() {
            if matches!(e, dictdb::replica::ReplicaEvent::ChainSwitched(_)) {
                switched += 1;
            }
        }
        eprintln!("checkpoint {checkpoint}: writer at {cut}, replica at {seq}");
    }
    assert!(
        switched >= 1,
        "the writer's full backups moved the replica to new chains"
    );
    assert!(replica.status().problem.is_none(), "{:?}", replica.status());

    // The writer dies.
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    reader.join().unwrap();
    let acknowledged = acks.lock().unwrap().iter().map(|(_, s)| *s).max().unwrap();

    let config = || {
        BackupConfig::with_store(store(&url))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
    };
    // Its lease is still live: promotion is refused, the replica follows on.
    match replica.promote(config()).await {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains("expires"), "{holder}");
        }
        other => panic!("promotion while the dead writer's lease is live: {other:?}"),
    }
    assert!(replica.status().running);
    let give_up = Instant::now() + Duration::from_secs(15);
    let promoted = loop {
        match replica.promote(config()).await {
            Ok(p) => break p,
            Err(Error::Locked { .. }) if Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("promotion failed: {e}"),
        }
    };
    let (seq, records) = state(&promoted.db);
    assert!(
        seq >= acknowledged,
        "promoted at {seq}, but the writer acknowledged {acknowledged}"
    );
    assert_eq!(records, replay(seq));

    // The new writer goes on with the same workload.
    let t = promoted.db.table("t").unwrap();
    for k in seq + 1..=seq + 500 {
        apply(&t, k);
    }
    // A new lease holding (a new fencing token): its first backup is a full
    // one, starting a chain of its own, so no chain carries two tokens.
    let first = promoted.manager.backup_now().await.unwrap();
    let first = first.info().unwrap().clone();
    assert_eq!(
        (first.kind, first.seq),
        (dictdb::BackupKind::Full, seq + 500),
        "a new writer begins with a full backup"
    );
    for k in seq + 501..=seq + 600 {
        apply(&t, k);
    }
    let last = promoted
        .manager
        .shutdown(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(last.seq, seq + 600);

    // The dead writer's chain still restores up to its last cut, and the
    // promoted writer's full backup holds everything before it.
    let old = Restore::new(store(&url))
        .until_seq(seq)
        .run()
        .await
        .unwrap();
    assert_eq!(state(&old.db), (seq, replay(seq)));
    let until_first = Restore::new(store(&url))
        .until_seq(first.seq)
        .run()
        .await
        .unwrap();
    assert_eq!(until_first.applied[0].name, first.file);
    assert_eq!(state(&until_first.db), (first.seq, replay(first.seq)));
    let tokens: Vec<Option<u64>> = old
        .applied
        .iter()
        .chain(&until_first.applied)
        .map(|f| f.fencing_token)
        .collect();
    assert!(tokens.iter().all(Option::is_some), "{tokens:?}");
    assert!(
        tokens.first() < tokens.last(),
        "the new holder's token is larger: {tokens:?}"
    );

    // Nothing acknowledged is lost, by either writer.
    let restored = Restore::new(store(&url)).run().await.unwrap();
    let (rseq, rrecords) = state(&restored.db);
    assert_eq!(rseq, seq + 600);
    assert_eq!(rrecords, replay(rseq));
    assert!(restored.verified);
    eprintln!(
        "writer acknowledged {acknowledged}, promoted at {seq}, restored {rseq}, in {:?}",
        test_started.elapsed()
    );
    assert!(test_started.elapsed() < Duration::from_secs(50));
}

/// A damaged delta in the bucket stops the follower at the cut before it,
/// with an error naming the file; the writer's next full backup repairs
/// the store and the follower moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_delta_in_the_bucket_stops_the_replica_until_the_next_full_backup() {
    let Some(ep) = endpoint() else {
        let _ = writeln!(
            std::io::stderr(),
            "a_damaged_delta_in_the_bucket_stops_the_replica: skipped: \
             DICTDB_S3_ENDPOINT not set (source .ci/s3-server.sh)"
        );
        return;
    };
    let bucket = format!("{}-damaged", unique_bucket());
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10", "-X", "PUT"])
        .arg(format!("{ep}/{bucket}"))
        .output()
        .expect("curl creates the test bucket");
    assert!(out.status.success());
    let url = format!("s3://{bucket}/service");
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(store(&url))
            .incremental(true)
            .backup_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    t.insert(json!({"v": 1})).unwrap();
    m.backup_full().await.unwrap();
    let replica = Replica::follow(
        store(&url),
        ReplicaOptions::default().interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap();
    t.insert(json!({"v": 2})).unwrap();
    let d1 = m.backup_delta().await.unwrap().info().unwrap().clone();
    t.insert(json!({"v": 3})).unwrap();
    let d2 = m.backup_delta().await.unwrap().info().unwrap().clone();

    // Damage the second delta in the bucket: one byte flipped mid-file.
    let s = store(&url);
    let mut bytes = s.read(&d2.file).await.unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    s.delete(&d2.file).await.unwrap();
    let mut w = s.create(&d2.file).await.unwrap();
    w.write(bytes).await.unwrap();
    w.commit().await.unwrap();

    let err = replica.sync().await.unwrap_err();
    assert!(err.to_string().contains(&d2.file), "{err}");
    assert_eq!(replica.db().seq(), d1.seq, "stopped at the cut before it");
    assert_eq!(replica.db().table("t").unwrap().len().unwrap(), 2);
    let problem = replica.status().problem.expect("a problem");
    assert_eq!(problem.file.as_deref(), Some(d2.file.as_str()));

    // The writer's next full backup repairs the store.
    t.insert(json!({"v": 4})).unwrap();
    let full = m.backup_full().await.unwrap();
    let status = replica.sync().await.unwrap();
    assert!(status.problem.is_none());
    assert_eq!(status.cut.unwrap().file, full.file);
    assert_eq!(replica.db().seq(), db.seq());
    assert_eq!(replica.db().table("t").unwrap().len().unwrap(), 4);
    m.stop().await.unwrap();
    replica.stop().await.unwrap();
}
