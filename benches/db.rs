//! Benchmarks of the database's hot paths on tables of 100k and 1M records
//! of the standard workload (WORKLOAD.md): insert (with the caller's record
//! build, without it, and without it but with a subscriber to the mutation
//! stream, which adds the broadcast send), update (merge of one field),
//! snapshot, and an update right after a snapshot (the copy-on-write
//! cost a writer pays while a backup holds a snapshot).
//!
//! Each table is filled once per size, outside the timing. Inserted records
//! are deleted again after each sample, untimed, so the table stays at its
//! size. Run quickly with
//! `cargo bench --bench db -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dictdb::{DictDB, Table};
use serde_json::{json, Value};

/// A record of the standard workload (the shape of
/// `tests/common/mod.rs::workload_record`, which benches cannot import).
fn workload_record(i: i64) -> Value {
    json!({"id": i, "name": format!("user_{i}"), "email": format!("user_{i}@example.com"),
           "age": i % 100, "active": i % 2 == 0, "score": i as f64 * 0.5, "tags": ["a", "b"]})
}

/// A database with one table of `n` workload records, keys `1..=n`.
fn prefill(n: i64) -> (DictDB, Table) {
    let db = DictDB::new();
    let table = db.create_table("users").expect("create table");
    let mut start = 1;
    while start <= n {
        let end = (start + 10_000).min(n + 1);
        table
            .insert_many((start..end).map(workload_record))
            .expect("prefill");
        start = end;
    }
    assert_eq!(table.len().expect("len"), n as usize);
    (db, table)
}

/// Spreads successive `i` over the keys `1..=n` (Knuth's multiplicative hash).
fn key_of(i: u64, n: i64) -> i64 {
    (i.wrapping_mul(2_654_435_761) % n as u64) as i64 + 1
}

/// Inserts `iters` records built beforehand (in batches, untimed) under new
/// keys from `*next`, returns the time the inserts took, and deletes them
/// again (untimed).
fn insert_prebuilt(table: &Table, next: &mut i64, iters: u64) -> Duration {
    const BATCH: u64 = 4096;
    let first = *next;
    let mut took = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(BATCH);
        let records: Vec<Value> = (0..k as i64).map(|j| workload_record(*next + j)).collect();
        let start = Instant::now();
        for record in records {
            black_box(table.insert(record).expect("insert"));
        }
        took += start.elapsed();
        *next += k as i64;
        left -= k;
    }
    for key in first..*next {
        table.delete(key).expect("delete");
    }
    took
}

fn bench_size(c: &mut Criterion, n: i64, label: &str) {
    let (db, table) = prefill(n);
    let mut group = c.benchmark_group(format!("records_{label}"));
    group.throughput(Throughput::Elements(1));
    if n >= 1_000_000 {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
    }

    // What building the record costs the caller, to read the insert figure against.
    group.bench_function("build_record", |b| {
        let mut i = n;
        b.iter(|| {
            i += 1;
            black_box(workload_record(i))
        });
    });

    // New keys above the prefilled ones; removed again after each sample.
    let mut next = n + 1;
    group.bench_function("insert", |b| {
        b.iter_custom(|iters| {
            let first = next;
            let start = Instant::now();
            for _ in 0..iters {
                black_box(table.insert(workload_record(next)).expect("insert"));
                next += 1;
            }
            let elapsed = start.elapsed();
            for key in first..next {
                table.delete(key).expect("delete");
            }
            elapsed
        });
    });
    assert_eq!(table.len().expect("len"), n as usize);

    // The insert alone: records built beforehand, outside the timing (the
    // encode into stored bytes and the map insert, no subscriber).
    group.bench_function("insert_prebuilt", |b| {
        b.iter_custom(|iters| insert_prebuilt(&table, &mut next, iters))
    });
    assert_eq!(table.len().expect("len"), n as usize);

    // The same with a subscriber to the mutation stream: adds the event's
    // broadcast send (what a running BackupManager costs each write).
    {
        let mut events = db.subscribe();
        group.bench_function("insert_prebuilt_subscribed", |b| {
            b.iter_custom(|iters| {
                let took = insert_prebuilt(&table, &mut next, iters);
                // Drain untimed, so the channel never lags.
                while events.try_recv().is_ok() {}
                took
            })
        });
    }
    assert_eq!(table.len().expect("len"), n as usize);

    let mut i = 0u64;
    group.bench_function("update_one_field", |b| {
        b.iter(|| {
            i += 1;
            table
                .update(key_of(i, n), json!({"score": i as f64}))
                .expect("update");
        });
    });

    group.bench_function("snapshot", |b| b.iter(|| black_box(db.snapshot())));

    // The first write after a snapshot copies the path it touches.
    group.bench_function("update_after_snapshot", |b| {
        b.iter_batched(
            || db.snapshot(),
            |snapshot| {
                i += 1;
                table
                    .update(key_of(i, n), json!({"score": i as f64}))
                    .expect("update");
                snapshot
            },
            BatchSize::PerIteration,
        );
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    bench_size(c, 100_000, "100k");
    bench_size(c, 1_000_000, "1M");
}

criterion_group! {
    name = db;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(db);
