//! A read replica of the standard workload (WORKLOAD.md) applying 1%
//! deltas (10,000 changes: 5,000 updates, 3,000 inserts, 2,000 deletes):
//!
//! - `apply_1pct`: one poll that finds one delta: listing, header, reading
//!   and checking the file, working out the changes, the swap;
//! - `swap_1pct`: of that, the time the swap held the database lock — what
//!   a reader of the replica can wait for (as the replica measures it and
//!   reports it in `AppliedFile::blocked`).
//!
//! The writer makes each iteration's changes and writes its delta outside
//! the timing. `DICTDB_BENCH_RECORDS` sets N (default 1,000,000). Run with
//! `cargo bench --bench replica`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use dictdb::replica::{Replica, ReplicaEvent, ReplicaOptions};
use dictdb::{BackupConfig, BackupManager, BackupStore, DictDB, LocalStore, Table};
use serde_json::{json, Value};

fn workload_record(i: i64) -> Value {
    json!({"id": i, "name": format!("user_{i}"), "email": format!("user_{i}@example.com"),
           "age": i % 100, "active": i % 2 == 0, "score": i as f64 * 0.5, "tags": ["a", "b"]})
}

/// The writer's side: its table, the keys alive, and the next new key.
struct Writer {
    users: Table,
    live: Vec<i64>,
    next: i64,
    round: usize,
}

impl Writer {
    /// 1% changes on distinct live records (WORKLOAD.md).
    fn change(&mut self) {
        self.round += 1;
        let total = 10_000.min(self.live.len() / 2).max(10);
        let (updates, inserts, deletes) = (total / 2, total * 3 / 10, total / 5);
        let len = self.live.len();
        let stride = (len / (updates + deletes)).max(1);
        let offset = self.round % stride;
        let mut doomed = Vec::with_capacity(deletes + 1);
        for j in 0..updates + deletes {
            let pos = (offset + j * stride) % len;
            let key = self.live[pos];
            if j % 7 < 5 {
                self.users
                    .update(key, json!({"score": self.round as f64, "age": 42}))
                    .expect("update");
            } else {
                self.users.delete(key).expect("delete");
                doomed.push(pos);
            }
        }
        doomed.sort_unstable_by(|a, b| b.cmp(a));
        for pos in doomed {
            self.live.swap_remove(pos);
        }
        for _ in 0..inserts {
            self.next += 1;
            self.users
                .insert(workload_record(self.next))
                .expect("insert");
            self.live.push(self.next);
        }
    }
}

fn bench(c: &mut Criterion) {
    let n: i64 = std::env::var("DICTDB_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("temporary directory");
    let db = DictDB::new();
    let users = db.create_table("users").expect("table");
    let mut start = 1;
    while start <= n {
        let end = (start + 10_000).min(n + 1);
        users
            .insert_many((start..end).map(workload_record))
            .expect("prefill");
        start = end;
    }
    let (manager, replica) = rt.block_on(async {
        let m = BackupManager::start(
            &db,
            BackupConfig::new(tmp.path())
                .incremental(true)
                .max_deltas_before_full(1_000_000)
                .backup_interval(Duration::from_secs(3600)),
        )
        .await
        .expect("manager");
        m.backup_full().await.expect("full backup");
        let store: Arc<dyn BackupStore> = Arc::new(LocalStore::open(tmp.path()).expect("store"));
        let r = Replica::follow(
            store,
            ReplicaOptions::default().interval(Duration::from_secs(3600)),
        )
        .await
        .expect("replica");
        (m, r)
    });
    let mut writer = Writer {
        users,
        live: (1..=n).collect(),
        next: n,
        round: 0,
    };
    let mut events = replica.subscribe();
    // One iteration: the writer's 1% and its delta (untimed), the replica's
    // poll; returns (poll time, lock held).
    let mut step = || {
        writer.change();
        rt.block_on(async {
            manager.backup_delta().await.expect("delta");
            let t = Instant::now();
            replica.sync().await.expect("sync");
            let polled = t.elapsed();
            assert_eq!(replica.db().seq(), db.seq());
            let mut blocked = Duration::ZERO;
            while let Ok(e) = events.try_recv() {
                if let ReplicaEvent::Applied(a) = e {
                    blocked += a.blocked;
                }
            }
            (polled, blocked)
        })
    };

    let mut group = c.benchmark_group(format!("replica_{n}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("apply_1pct", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| step().0).sum())
    });
    group.bench_function("swap_1pct", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| step().1).sum())
    });
    group.finish();
    rt.block_on(async {
        manager.stop().await.expect("stop");
        replica.stop().await.expect("stop");
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
