//! Benchmarks of the backup path at 100k records of the standard workload
//! (WORKLOAD.md): full backups in JSON and MessagePack, a delta after 1%
//! changes, and a restore of a full JSON backup plus deltas. The 1M figures
//! and the in-run limits come from `examples/bench_report.rs`; these are
//! quick enough to run while developing:
//! `cargo bench --bench backup -- --warm-up-time 1 --measurement-time 3`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dictdb::{restore_dir, BackupConfig, BackupManager, DictDB, FileFormat, Table};
use serde_json::{json, Value};

const N: i64 = 100_000;

fn workload_record(i: i64) -> Value {
    json!({"id": i, "name": format!("user_{i}"), "email": format!("user_{i}@example.com"),
           "age": i % 100, "active": i % 2 == 0, "score": i as f64 * 0.5, "tags": ["a", "b"]})
}

fn prefill() -> (DictDB, Table) {
    let db = DictDB::new();
    let t = db.create_table("users").expect("table");
    for i in 1..=N {
        t.insert(workload_record(i)).expect("insert");
    }
    (db, t)
}

/// 1% of the table: 50% updates, 30% inserts, 20% deletes.
fn one_percent(t: &Table, round: i64, next: &mut i64) {
    let changes = N / 100;
    for j in 0..changes / 2 {
        let _ = t.update((round * 31 + j * 197) % N + 1, json!({"score": round}));
    }
    for _ in 0..changes * 3 / 10 {
        *next += 1;
        t.insert(workload_record(*next)).expect("insert");
    }
    for j in 0..changes / 5 {
        let _ = t.delete((round * 17 + j * 389) % N + 1);
    }
}

/// An incremental manager on `rt` that writes a full backup after
/// `max_deltas` deltas.
fn incremental_manager(
    rt: &tokio::runtime::Runtime,
    db: &DictDB,
    dir: &std::path::Path,
    max_deltas: u32,
) -> BackupManager {
    rt.block_on(async {
        BackupManager::start(
            db,
            BackupConfig::new(dir)
                .incremental(true)
                .max_deltas_before_full(max_deltas),
        )
        .await
    })
    .expect("manager")
}

fn backups(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (db, users) = prefill();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("backup_100k");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));

    for (format, label) in [
        (FileFormat::Json, "full_json"),
        (FileFormat::MessagePack, "full_msgpack"),
    ] {
        let dir = tmp.path().join(label);
        let m = rt
            .block_on(async {
                BackupManager::start(&db, BackupConfig::new(&dir).file_format(format)).await
            })
            .expect("manager");
        group.bench_function(label, |b| {
            b.iter(|| {
                let info = rt.block_on(m.backup_full()).expect("backup");
                std::fs::remove_file(dir.join(&info.file)).expect("remove");
            })
        });
        rt.block_on(m.stop()).expect("stop");
    }

    let dir = tmp.path().join("delta");
    let m = incremental_manager(&rt, &db, &dir, u32::MAX);
    rt.block_on(m.backup_full()).expect("base");
    // Each iteration adds 1% of changes (the table grows by 0.1% of N per
    // iteration; the delta's cost follows the changes, not the table size).
    let mut next = N;
    let mut round = 0;
    group.bench_function("delta_1pct", |b| {
        b.iter_batched(
            || {
                round += 1;
                one_percent(&users, round, &mut next);
            },
            |()| rt.block_on(m.backup_delta()).expect("delta"),
            BatchSize::PerIteration,
        )
    });
    rt.block_on(m.stop()).expect("stop");

    // A directory with one full JSON backup and ten deltas of 1%, from a
    // fresh table (the delta benchmark above grew the first one).
    let (db, users) = prefill();
    let mut next = N;
    let dir = tmp.path().join("restore");
    let m = incremental_manager(&rt, &db, &dir, 100);
    rt.block_on(m.backup_full()).expect("base");
    for r in 0..10 {
        one_percent(&users, 1000 + r, &mut next);
        rt.block_on(m.backup_delta()).expect("delta");
    }
    rt.block_on(m.stop()).expect("stop");
    group.bench_function("restore_json_full_plus_10_deltas", |b| {
        b.iter(|| rt.block_on(restore_dir(&dir)).expect("restore"))
    });
    group.finish();
}

criterion_group!(benches, backups);
criterion_main!(benches);
