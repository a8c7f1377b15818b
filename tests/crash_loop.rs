//! Crash loop: a child process writes and backs up continuously and is killed
//! with SIGKILL at random moments; after every kill the directory must
//! restore, hold every change the child reported as backed up, and hold only
//! changes the child actually made.
//!
//! The child's workload is a pure function of the sequence number each change
//! gets, so the state at any sequence number can be rebuilt independently and
//! compared with what was restored. The child continues from the restored
//! state after every restart, so the chain also crosses process lifetimes.
//!
//! `DICTDB_CRASH_KILLS` sets the number of kills (default 50).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use dictdb::{restore_dir, BackupConfig, BackupEvent, BackupManager, DictDB, Error};
use serde_json::{json, Value};

const CHILD_ENV: &str = "DICTDB_CRASH_CHILD_DIR";

/// The change that gets sequence number `k` (k >= 2; 1 creates the table).
fn op(k: u64) -> (&'static str, i64, Option<Value>) {
    let key = k as i64;
    match k % 8 {
        0 => ("delete", key - 2, None),
        4 => ("upsert", key - 1, Some(json!({"u": key}))),
        _ => (
            "insert",
            key,
            Some(json!({"v": key, "s": "x".repeat((k % 13) as usize)})),
        ),
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
            ("upsert", key, Some(patch)) => {
                let rec: &mut Value = m.get_mut(&key).expect("upsert target exists");
                for (f, v) in patch.as_object().unwrap() {
                    rec[f] = v.clone();
                }
            }
            (_, key, Some(mut rec)) => {
                rec["id"] = json!(key);
                m.insert(key, rec);
            }
            _ => unreachable!(),
        }
    }
    m
}

fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

/// The child: restore (or start), then write and back up until killed.
async fn child(dir: PathBuf) {
    let restored = if dir.is_dir() {
        restore_dir(&dir).await
    } else {
        Err(Error::NoBackup(String::new()))
    };
    let db = match restored {
        Ok(r) => r.db,
        Err(Error::NoBackup(_)) => {
            let db = DictDB::new();
            db.create_table("t").unwrap();
            db
        }
        Err(e) => panic!("child could not restore: {e}"),
    };
    let t = db.table("t").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(&dir)
            .incremental(true)
            .backup_interval(Duration::from_millis(15))
            .min_backup_interval(Duration::from_millis(5))
            .max_deltas_before_full(4),
    )
    .await
    .unwrap();
    // Every completed backup is logged, durably, once it is durable itself.
    let mut events = m.subscribe();
    let log = log_path(&dir);
    tokio::spawn(async move {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        while let Ok(e) = events.recv().await {
            if let BackupEvent::Completed(info) = e {
                // One write() per line, so a kill never tears a line in two.
                f.write_all(format!("{}\n", info.seq).as_bytes()).unwrap();
                f.sync_all().unwrap();
            }
        }
    });
    loop {
        for _ in 0..20 {
            let k = db.seq() + 1;
            match op(k) {
                ("delete", key, _) => assert!(t.delete(key).unwrap()),
                ("upsert", _key, Some(patch)) => {
                    let mut rec = patch;
                    rec["id"] = json!(k as i64 - 1);
                    t.upsert(rec).unwrap();
                }
                (_, key, Some(mut rec)) => {
                    rec["id"] = json!(key);
                    t.insert(rec).unwrap();
                }
                _ => unreachable!(),
            }
            assert_eq!(db.seq(), k, "one change, one sequence number");
        }
        m.notify_change();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn crash_child() {
    // Only does something when started by `sigkill_at_random_moments`.
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(child(PathBuf::from(dir)));
}

fn last_logged(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log_path(dir)).ok()?;
    // Only whole lines: a line without its newline was cut by the kill.
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    whole.lines().filter_map(|l| l.trim().parse().ok()).max()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments() {
    let kills: u32 = std::env::var("DICTDB_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let exe = std::env::current_exe().unwrap();
    // A small deterministic generator for the kill moments.
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut restored_seqs = Vec::new();
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = 20 + rng % 180;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("round {round}: the child died by itself ({status}): {err}");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let logged = last_logged(&dir);
        if !dir.is_dir() {
            assert!(
                logged.is_none(),
                "round {round}: backups reported but no directory"
            );
            continue;
        }
        match restore_dir(&dir).await {
            Ok(r) => {
                let seq = r.seq.expect("our chains record sequence numbers");
                assert!(r.verified, "round {round}");
                if let Some(l) = logged {
                    assert!(
                        seq >= l,
                        "round {round}: restored {seq} but {l} was reported backed up"
                    );
                }
                let got: BTreeMap<i64, Value> =
                    r.db.table("t")
                        .unwrap()
                        .all()
                        .unwrap()
                        .into_iter()
                        .map(|v| (v["id"].as_i64().unwrap(), v))
                        .collect();
                assert_eq!(
                    got,
                    replay(seq),
                    "round {round}: state at {seq} differs from what was made"
                );
                restored_seqs.push(seq);
            }
            Err(Error::NoBackup(_)) => {
                assert!(logged.is_none(), "round {round}: backups were reported")
            }
            Err(e) => panic!("round {round}: restore failed: {e}"),
        }
    }
    assert!(
        restored_seqs.len() as u32 > kills / 2,
        "too few rounds got a backup: {restored_seqs:?}"
    );
    assert!(
        restored_seqs.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {restored_seqs:?}"
    );
    println!(
        "crash loop: {kills} kills, final sequence {:?}",
        restored_seqs.last()
    );
}
