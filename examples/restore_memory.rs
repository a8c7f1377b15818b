//! Restore memory: a full backup and a dozen deltas as large as it, restored
//! in a fresh process that reports its peak resident memory.
//!
//! ```text
//! cargo run --release --example restore_memory -- [--mb 82] [--deltas 12] [--dir DIR]
//! ```
//!
//! The parent writes the chain (a full JSON backup of about `--mb` MB, then
//! `--deltas` deltas that each rewrite every record), then runs itself twice
//! as a child: once loading only the full backup (a database of the same
//! size as the restored one), once restoring the whole chain. Each child
//! reports its peak resident memory (`VmHWM`); the difference is what the
//! deltas cost. Restore reads deltas ahead one at a time, so it stays within
//! a few deltas' worth however long the chain: the example exits with an
//! error past four deltas' worth (the previous reader held up to 32 decoded
//! deltas at once: 1.9 GB for 82 MB × 12).

use std::path::{Path, PathBuf};
use std::process::Command;

use dictdb::{BackupConfig, BackupManager, DictDB};
use serde_json::json;

fn status_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn write_chain(dir: &Path, records: i64, deltas: usize) -> u64 {
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 0..records {
        users
            .insert(json!({"id": i, "name": format!("user_{i}"), "email": format!("user_{i}@example.com"),
                           "age": i % 100, "active": i % 2 == 0, "score": i as f64 * 0.5, "tags": ["a", "b"]}))
            .unwrap();
    }
    let m = BackupManager::start(
        &db,
        BackupConfig::new(dir)
            .incremental(true)
            .max_deltas_before_full(u32::MAX),
    )
    .await
    .unwrap();
    let full = m.backup_full().await.unwrap();
    let mut largest = 0;
    for round in 0..deltas {
        for i in 0..records {
            users
                .update(i, json!({"score": (i + round as i64) as f64 * 0.25}))
                .unwrap();
        }
        let d = m.backup_delta().await.unwrap();
        largest = largest.max(d.info().map_or(0, |i| i.bytes));
    }
    m.stop().await.unwrap();
    println!(
        "wrote a full backup of {} MB and {deltas} deltas of up to {} MB in {}",
        full.bytes >> 20,
        largest >> 20,
        dir.display()
    );
    largest
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(dir) = arg(&args, "--restore") {
        let restored = dictdb::restore_dir(&dir).await.unwrap();
        let records = restored.db.table("users").unwrap().len().unwrap();
        println!(
            "{records} {} {}",
            restored.applied.len(),
            status_kb("VmHWM:")
        );
        return;
    }
    if let Some(file) = arg(&args, "--load") {
        let db = DictDB::load(&file, dictdb::FileFormat::Json).unwrap();
        let records = db.table("users").unwrap().len().unwrap();
        println!("{records} 1 {}", status_kb("VmHWM:"));
        return;
    }
    let mb: u64 = arg(&args, "--mb").map_or(82, |v| v.parse().unwrap());
    let deltas: usize = arg(&args, "--deltas").map_or(12, |v| v.parse().unwrap());
    let tmp;
    let dir: PathBuf = match arg(&args, "--dir") {
        Some(d) => PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    // About 127 bytes per record of the standard workload in JSON.
    let records = (mb << 20) as i64 / 127;
    let largest = write_chain(&dir, records, deltas).await;
    let full = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dictdb_backup_"))
        })
        .unwrap();
    let child = |mode: &str, what: &Path| {
        let out = Command::new(std::env::current_exe().unwrap())
            .arg(mode)
            .arg(what)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v[0], records as u64);
        (v[1], v[2])
    };
    let (_, load_kb) = child("--load", &full);
    let (files, peak_kb) = child("--restore", &dir);
    assert_eq!(files, deltas as u64 + 1);
    let window_mb = peak_kb.saturating_sub(load_kb) >> 10;
    // A decoded delta takes about as much memory as its JSON text.
    let bound_mb = 4 * (largest >> 20) + 64;
    println!(
        "peak memory: loading the full backup alone {} MB, restoring all {files} files {} MB: \
         the deltas cost {window_mb} MB (bound {bound_mb} MB: four deltas)",
        load_kb >> 10,
        peak_kb >> 10
    );
    if window_mb > bound_mb {
        eprintln!("restore held more than a bounded window of deltas in memory");
        std::process::exit(1);
    }
}
