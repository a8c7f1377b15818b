//! Adversarial tests of read replicas (written black-box against the
//! public API): a default replica, a
//! `spare_copy(false)` replica and the writer's own cuts compared at every
//! step.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{snapshot_map, table_map};
use dictdb::replica::{Replica, ReplicaOptions};
use dictdb::restore::Restore;
use dictdb::store::{BackupStore, LocalStore};
use dictdb::{restore_dir, BackupConfig, BackupInfo, BackupKind, BackupManager, DictDB, Mutation};
use serde_json::{json, Value};
use tokio::sync::broadcast;

type State = BTreeMap<String, BTreeMap<String, Value>>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Writer {
    db: DictDB,
    manager: BackupManager,
    cuts: BTreeMap<u64, State>,
}

impl Writer {
    async fn start(dir: &Path) -> Writer {
        let db = DictDB::new();
        let manager = BackupManager::start(
            &db,
            BackupConfig::new(dir)
                .incremental(true)
                .max_deltas_before_full(100_000)
                .backup_interval(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
        Writer {
            db,
            manager,
            cuts: BTreeMap::new(),
        }
    }
    fn record(&mut self, info: &BackupInfo) {
        assert_eq!(info.seq, self.db.seq());
        self.cuts.insert(info.seq, table_map(&self.db));
    }
    async fn full(&mut self) -> BackupInfo {
        let info = self.manager.backup_full().await.unwrap();
        self.record(&info);
        info
    }
    async fn delta(&mut self) -> Option<BackupInfo> {
        let out = self.manager.backup_delta().await.unwrap();
        let info = out.info()?.clone();
        assert_eq!(info.kind, BackupKind::Delta);
        self.record(&info);
        Some(info)
    }
}

fn local(dir: &Path) -> Arc<dyn BackupStore> {
    Arc::new(LocalStore::open(dir).unwrap())
}

fn quiet() -> ReplicaOptions {
    ReplicaOptions::default().interval(Duration::from_secs(3600))
}

fn muts(rx: &mut broadcast::Receiver<Mutation>) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(m) => out.push(format!("{m:?}")),
            Err(broadcast::error::TryRecvError::Lagged(n)) => panic!("lagged {n}"),
            Err(_) => return out,
        }
    }
}

/// Two replicas of one store: with and without the spare copy.
struct Pair {
    /// Compare the replicas' seq with the writer's cut (else only with
    /// each other).
    strict_seq: bool,
    spare: Replica,
    plain: Replica,
    rx_s: broadcast::Receiver<Mutation>,
    rx_p: broadcast::Receiver<Mutation>,
}

impl Pair {
    async fn follow(store: Arc<dyn BackupStore>) -> Pair {
        let spare = Replica::follow(store.clone(), quiet()).await.unwrap();
        let plain = Replica::follow(store, quiet().spare_copy(false))
            .await
            .unwrap();
        let (rx_s, rx_p) = (spare.db().subscribe(), plain.db().subscribe());
        Pair {
            strict_seq: true,
            spare,
            plain,
            rx_s,
            rx_p,
        }
    }
    /// Syncs both; both must agree on success/failure; returns ok.
    async fn sync(&self, ctx: &str) -> bool {
        let a = self.spare.sync().await;
        let b = self.plain.sync().await;
        assert_eq!(
            a.is_ok(),
            b.is_ok(),
            "{ctx}: spare {:?} vs plain {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        );
        a.is_ok()
    }
    /// Both serve `expect` at `seq` and published the same mutations.
    fn check(&mut self, expect: &State, seq: u64, ctx: &str) -> (Vec<String>, Vec<String>) {
        assert_eq!(&table_map(self.plain.db()), expect, "{ctx}: plain replica");
        assert_eq!(&table_map(self.spare.db()), expect, "{ctx}: spare replica");
        assert_eq!(
            self.plain.db().seq(),
            self.spare.db().seq(),
            "{ctx}: seq spare vs plain"
        );
        if !self.strict_seq {
            let (a, b) = (muts(&mut self.rx_s), muts(&mut self.rx_p));
            assert_eq!(a, b, "{ctx}: mutation events differ");
            return (a, b);
        }
        if self.plain.db().seq() != seq || self.spare.db().seq() != seq {
            let (a, b) = (muts(&mut self.rx_s), muts(&mut self.rx_p));
            eprintln!(
                "{ctx}: spare seq {} plain seq {} expected {seq}; {} / {} events; same events: {}",
                self.spare.db().seq(),
                self.plain.db().seq(),
                a.len(),
                b.len(),
                a == b
            );
            for e in a.iter().take(60) {
                eprintln!("  {}", &e[..e.len().min(250)]);
            }
        }
        assert_eq!(self.plain.db().seq(), seq, "{ctx}: plain seq");
        assert_eq!(self.spare.db().seq(), seq, "{ctx}: spare seq");
        let (a, b) = (muts(&mut self.rx_s), muts(&mut self.rx_p));
        assert_eq!(a, b, "{ctx}: mutation events differ");
        if let Some(last) = a.last() {
            assert!(
                last.contains(&format!("seq: {seq},")),
                "{ctx}: last event {last} not at cut {seq}"
            );
        }
        (a, b)
    }
    async fn stop(&self) {
        self.spare.stop().await.unwrap();
        self.plain.stop().await.unwrap();
    }
}

fn flip_at(path: &Path, frac_num: usize, frac_den: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() * frac_num / frac_den;
    bytes[i] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// A random round of writes on tables a (auto int keys), b (explicit int
/// keys), s (string keys), and tmp (dropped / re-created with another key
/// field).
fn random_round(db: &DictDB, g: &mut Rng, round: u64) {
    let a = db.table("a").unwrap();
    let b = db.table("b").unwrap();
    let s = db.table("s").unwrap();
    let big = g.below(4) == 0;
    let n = 1 + g.below(if big { 1500 } else { 60 });
    for _ in 0..n {
        match g.below(10) {
            0 | 1 => {
                a.insert(json!({"v": round, "r": g.below(1000)})).unwrap();
            }
            2 => {
                let _ = a.update(g.below(400) as i64 + 1, json!({"u": round}));
            }
            3 => {
                let _ = a.delete(g.below(400) as i64 + 1);
            }
            4 => {
                // Re-inserts deleted keys, or replaces.
                b.upsert(json!({"id": g.below(300) as i64, "v": round, "r": g.below(9)}))
                    .unwrap();
            }
            5 => {
                let _ = b.delete(g.below(300) as i64);
            }
            6 => {
                s.upsert(json!({"name": format!("k{}", g.below(300)), "v": round}))
                    .unwrap();
            }
            7 => {
                let _ = s.delete(format!("k{}", g.below(300)));
            }
            8 => {
                if let Ok(t) = db.table("tmp") {
                    let pk = t.primary_key().to_string();
                    let key = g.below(50) as i64;
                    let kv = if pk == "id" {
                        json!(key)
                    } else {
                        json!(format!("x{key}"))
                    };
                    let _ = t.upsert(json!({pk.clone(): kv, "v": round}));
                }
            }
            _ => {
                let _ = b.update(
                    g.below(300) as i64,
                    json!({"w": round, "nested": {"r": round}}),
                );
            }
        }
    }
    match g.below(8) {
        0 => {
            let _ = db.drop_table("tmp");
        }
        1 => {
            // Drop and re-create in the same round, maybe with another key.
            let _ = db.drop_table("tmp");
            let t = if g.below(2) == 0 {
                db.create_table("tmp").unwrap()
            } else {
                db.create_table_with_key("tmp", "code").unwrap()
            };
            let pk = t.primary_key().to_string();
            for i in 0..g.below(20) {
                let kv = if pk == "id" {
                    json!(i as i64)
                } else {
                    json!(format!("x{i}"))
                };
                t.upsert(json!({pk.clone(): kv, "v": round})).unwrap();
            }
        }
        2 if !db.has_table("tmp") => {
            let t = db.create_table_with_key("tmp", "code").unwrap();
            t.upsert(json!({"code": "x1", "v": round})).unwrap();
        }
        _ => {}
    }
}

async fn random_workload(seed: u64, rounds: u64) {
    random_workload_with(seed, rounds, false).await
}

async fn random_workload_with(seed: u64, rounds: u64, strict_seq: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.db.create_table("a").unwrap();
    w.db.create_table("b").unwrap();
    w.db.create_table_with_key("s", "name").unwrap();
    let mut g = Rng(seed);
    for i in 0..300 {
        w.db.table("a").unwrap().insert(json!({"i": i})).unwrap();
    }
    let full = w.full().await;
    let mut pair = Pair::follow(local(tmp.path())).await;
    pair.strict_seq = strict_seq;
    pair.check(&w.cuts[&full.seq], full.seq, "start");
    let mut last = full.seq;
    for round in 0..rounds {
        // 1 to 3 backups per sync; sometimes a full one among them.
        let k = 1 + g.below(3);
        for _ in 0..k {
            random_round(&w.db, &mut g, round);
            if g.below(10) == 0 {
                last = w.full().await.seq;
                if std::env::var("ADV_DEBUG").is_ok() {
                    eprintln!("round {round}: full {last}");
                }
            } else if let Some(d) = w.delta().await {
                last = d.seq;
                if std::env::var("ADV_DEBUG").is_ok() {
                    eprintln!(
                        "round {round}: delta {} -> {}",
                        d.from_seq.unwrap_or(0),
                        last
                    );
                }
            } else if std::env::var("ADV_DEBUG").is_ok() {
                eprintln!("round {round}: skipped");
            }
        }
        assert!(pair.sync(&format!("seed {seed} round {round}")).await);
        pair.check(&w.cuts[&last], last, &format!("seed {seed} round {round}"));
    }
    w.manager.stop().await.unwrap();
    pair.stop().await;
}

#[tokio::test]
async fn random_workloads_three_way_seed_1() {
    random_workload(0x9E37_79B9_7F4A_7C15, 40).await;
}

#[tokio::test]
async fn random_workloads_three_way_seed_2() {
    random_workload(12345, 40).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_workloads_three_way_multi_thread() {
    random_workload(777, 30).await;
}

/// Strict: the replicas' seq must be the writer's cut seq.
#[tokio::test]
async fn random_workload_seed_777_strict_seq() {
    random_workload_with(777, 30, true).await;
}

/// Minimal: a chain switch across a table dropped and re-created with the
/// same key field. The writer's seq moves by 3 (drop, create, insert); the
/// switch's diff deletes every old record one by one and the replicas' seq
/// runs past the writer's cut.
#[tokio::test]
async fn chain_switch_over_a_recreated_table_serves_the_writers_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table("tmp").unwrap();
    for i in 0..50 {
        t.insert(json!({"i": i})).unwrap();
    }
    w.full().await;
    let mut pair = Pair::follow(local(tmp.path())).await;
    w.db.drop_table("tmp").unwrap();
    w.db.create_table("tmp")
        .unwrap()
        .insert(json!({"id": 1, "new": true}))
        .unwrap();
    let f = w.full().await;
    assert!(pair.sync("switch").await);
    pair.check(&w.cuts[&f.seq], f.seq, "switch");
    // The next delta's cut.
    w.db.table("tmp").unwrap().insert(json!({"id": 2})).unwrap();
    let d = w.delta().await.unwrap();
    assert!(pair.sync("next").await);
    pair.check(&w.cuts[&d.seq], d.seq, "next");
    w.manager.stop().await.unwrap();
    pair.stop().await;
}

#[tokio::test]
async fn random_workloads_many_seeds() {
    let n: u64 = std::env::var("ADV_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    for seed in 1..n {
        random_workload(seed * 7919, 15).await;
    }
}

/// A damaged delta (damage after its upserts were fed), more deltas behind
/// it, then a full backup; then more deltas.
#[tokio::test]
async fn damaged_delta_then_more_then_full() {
    for frac in [(1usize, 2usize), (9, 10), (99, 100)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Writer::start(tmp.path()).await;
        let t = w.db.create_table("t").unwrap();
        for i in 0..2000 {
            t.insert(json!({"i": i})).unwrap();
        }
        w.full().await;
        let mut pair = Pair::follow(local(tmp.path())).await;
        for k in 1..=1500i64 {
            t.update(k, json!({"ok": 1})).unwrap();
        }
        let d1 = w.delta().await.unwrap();
        assert!(pair.sync("d1").await);
        pair.check(&w.cuts[&d1.seq], d1.seq, "d1");
        // The bad one: 1500 updates then deletes.
        for k in 1..=1500i64 {
            t.update(k, json!({"bad": 1})).unwrap();
        }
        for k in 1900..2000i64 {
            t.delete(k).unwrap();
        }
        let d2 = w.delta().await.unwrap();
        for k in 1..=10i64 {
            t.update(k, json!({"after": 1})).unwrap();
        }
        let _d3 = w.delta().await.unwrap();
        flip_at(&tmp.path().join(&d2.file), frac.0, frac.1);
        let ctx = format!("damaged at {frac:?}");
        assert!(!pair.sync(&ctx).await, "{ctx}: a damaged delta must fail");
        pair.check(&w.cuts[&d1.seq], d1.seq, &ctx);
        assert!(!pair.sync(&ctx).await);
        pair.check(&w.cuts[&d1.seq], d1.seq, &ctx);
        t.delete(5).unwrap();
        let f = w.full().await;
        assert!(pair.sync("repair").await);
        pair.check(&w.cuts[&f.seq], f.seq, "repair");
        for round in 0..4i64 {
            for k in (1 + round..1800).step_by(7) {
                let _ = t.update(k, json!({"r": round}));
            }
            let _ = t.delete(100 + round);
            t.upsert(json!({"id": 1950 + round, "back": true})).unwrap();
            let d = w.delta().await.unwrap();
            assert!(pair.sync("after repair").await);
            pair.check(
                &w.cuts[&d.seq],
                d.seq,
                &format!("{ctx} after repair {round}"),
            );
        }
        w.manager.stop().await.unwrap();
        pair.stop().await;
    }
}

/// A deleted delta is a gap; the file comes back or a full backup repairs.
#[tokio::test]
async fn deleted_delta_file_then_chain_switch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table_with_key("t", "k").unwrap();
    for i in 0..800 {
        t.insert(json!({"k": format!("key{i}")})).unwrap();
    }
    let f = w.full().await;
    let mut pair = Pair::follow(local(tmp.path())).await;
    pair.check(&w.cuts[&f.seq], f.seq, "start");
    for i in 0..700 {
        t.update(format!("key{i}"), json!({"x": 1})).unwrap();
    }
    let d1 = w.delta().await.unwrap();
    for i in 0..700 {
        t.update(format!("key{i}"), json!({"x": 2})).unwrap();
    }
    let d2 = w.delta().await.unwrap();
    let saved = std::fs::read(tmp.path().join(&d2.file)).unwrap();
    std::fs::remove_file(tmp.path().join(&d2.file)).unwrap();
    for i in 0..700 {
        t.update(format!("key{i}"), json!({"x": 3})).unwrap();
    }
    let d3 = w.delta().await.unwrap();
    assert!(!pair.sync("gap").await);
    pair.check(&w.cuts[&d1.seq], d1.seq, "gap");
    std::fs::write(tmp.path().join(&d2.file), saved).unwrap();
    assert!(pair.sync("back").await);
    pair.check(&w.cuts[&d3.seq], d3.seq, "back");
    // Now remove the newest and switch chains.
    t.delete("key1").unwrap();
    let d4 = w.delta().await.unwrap();
    std::fs::remove_file(tmp.path().join(&d4.file)).unwrap();
    t.delete("key2").unwrap();
    let _d5 = w.delta().await.unwrap();
    assert!(!pair.sync("gap2").await);
    pair.check(&w.cuts[&d3.seq], d3.seq, "gap2");
    t.insert(json!({"k": "key1"})).unwrap();
    let f2 = w.full().await;
    assert!(pair.sync("switch").await);
    pair.check(&w.cuts[&f2.seq], f2.seq, "switch");
    for r in 0..3 {
        for i in 0..600 {
            let _ = t.update(format!("key{i}"), json!({"r": r}));
        }
        let d = w.delta().await.unwrap();
        assert!(pair.sync("after switch").await);
        pair.check(&w.cuts[&d.seq], d.seq, "after switch");
    }
    w.manager.stop().await.unwrap();
    pair.stop().await;
}

/// Readers on other threads check an invariant of every cut (tables l and
/// r hold the same keys; sum of l's "n" equals r's count * 1) while the
/// replicas sync; a snapshot held from the start never changes; a table
/// handle taken at the start follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_see_whole_cuts_and_held_snapshots_do_not_move() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let l = w.db.create_table("l").unwrap();
    let r = w.db.create_table("r").unwrap();
    for i in 0..1000i64 {
        l.upsert(json!({"id": i, "n": 0})).unwrap();
        r.upsert(json!({"id": i, "n": 0})).unwrap();
    }
    let f = w.full().await;
    let mut pair = Pair::follow(local(tmp.path())).await;
    let held_s = pair.spare.db().snapshot();
    let held_p = pair.plain.db().snapshot();
    let handle_s = pair.spare.db().table("l").unwrap();
    let initial = w.cuts[&f.seq].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for db in [pair.spare.db().clone(), pair.plain.db().clone()] {
        let (stop, bad, reads) = (stop.clone(), bad.clone(), reads.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let snap = db.snapshot();
                let (Some(l), Some(r)) = (snap.table("l"), snap.table("r")) else {
                    bad.lock()
                        .unwrap()
                        .push(format!("missing table at {}", snap.seq()));
                    continue;
                };
                let lk: Vec<String> = l.iter().map(|(k, _)| k.to_string()).collect();
                let rk: Vec<String> = r.iter().map(|(k, _)| k.to_string()).collect();
                let ln: Vec<Value> = l.iter().map(|(_, v)| v.to_value()["n"].clone()).collect();
                let rn: Vec<Value> = r.iter().map(|(_, v)| v.to_value()["n"].clone()).collect();
                if lk != rk || ln != rn {
                    bad.lock().unwrap().push(format!(
                        "torn cut at seq {}: {} vs {} keys",
                        snap.seq(),
                        lk.len(),
                        rk.len()
                    ));
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut g = Rng(4242);
    for round in 0..25u64 {
        let k = 1 + g.below(3);
        let mut last = 0;
        for _ in 0..k {
            // Same change on both tables: keys and "n" always match.
            for _ in 0..(1 + g.below(700)) {
                let key = g.below(1500) as i64;
                match g.below(3) {
                    0 => {
                        let _ = l.delete(key);
                        let _ = r.delete(key);
                    }
                    _ => {
                        l.upsert(json!({"id": key, "n": round})).unwrap();
                        r.upsert(json!({"id": key, "n": round})).unwrap();
                    }
                }
            }
            last = if g.below(8) == 0 {
                w.full().await.seq
            } else {
                w.delta().await.unwrap().seq
            };
        }
        assert!(pair.sync("readers").await);
        pair.check(&w.cuts[&last], last, &format!("readers round {round}"));
        assert_eq!(handle_s.len().unwrap(), w.cuts[&last]["l"].len());
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    assert!(bad.is_empty(), "{bad:?}");
    assert!(reads.load(Ordering::Relaxed) > 10);
    assert_eq!(
        snapshot_map(&held_s),
        initial,
        "spare replica's held snapshot moved"
    );
    assert_eq!(
        snapshot_map(&held_p),
        initial,
        "plain replica's held snapshot moved"
    );
    w.manager.stop().await.unwrap();
    pair.stop().await;
}

/// Snapshots held while a sync happens, and dropped at different times, so
/// that catch-up sees the old copy shared or not.
#[tokio::test]
async fn snapshots_held_and_dropped_between_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table("t").unwrap();
    for i in 0..1200 {
        t.insert(json!({"i": i})).unwrap();
    }
    let f = w.full().await;
    let mut pair = Pair::follow(local(tmp.path())).await;
    let mut held: Vec<(dictdb::Snapshot, State)> = Vec::new();
    let mut last = f.seq;
    let mut g = Rng(99);
    for round in 0..20i64 {
        if g.below(2) == 0 {
            held.push((pair.spare.db().snapshot(), w.cuts[&last].clone()));
        }
        if g.below(3) == 0 && !held.is_empty() {
            let i = g.below(held.len() as u64) as usize;
            held.remove(i);
        }
        for _ in 0..(1 + g.below(2)) {
            for _ in 0..(1 + g.below(900)) {
                let k = g.below(1400) as i64;
                if g.below(4) == 0 {
                    let _ = t.delete(k);
                } else {
                    t.upsert(json!({"id": k, "r": round})).unwrap();
                }
            }
            last = w.delta().await.unwrap().seq;
        }
        assert!(pair.sync("held").await);
        pair.check(&w.cuts[&last], last, &format!("held round {round}"));
        for (s, expect) in &held {
            assert_eq!(
                &snapshot_map(s),
                expect,
                "round {round}: a held snapshot moved"
            );
        }
    }
    w.manager.stop().await.unwrap();
    pair.stop().await;
}

/// A subscriber appearing and going away between syncs: the two replicas
/// still publish the same.
#[tokio::test]
async fn subscribers_coming_and_going() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table("t").unwrap();
    for i in 0..1000 {
        t.insert(json!({"i": i})).unwrap();
    }
    w.full().await;
    let spare = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let plain = Replica::follow(local(tmp.path()), quiet().spare_copy(false))
        .await
        .unwrap();
    let mut subs: Option<(broadcast::Receiver<Mutation>, broadcast::Receiver<Mutation>)> = None;
    for round in 0..12i64 {
        if round % 3 == 0 {
            subs = None;
        } else if subs.is_none() {
            subs = Some((spare.db().subscribe(), plain.db().subscribe()));
        }
        for k in (1 + round..1000).step_by(2) {
            let _ = t.update(k, json!({"r": round}));
        }
        let _ = t.delete(500 + round);
        t.insert(json!({"new": round})).unwrap();
        let d = w.delta().await.unwrap();
        spare.sync().await.unwrap();
        plain.sync().await.unwrap();
        assert_eq!(table_map(spare.db()), w.cuts[&d.seq], "round {round}");
        assert_eq!(table_map(plain.db()), w.cuts[&d.seq], "round {round}");
        assert_eq!(spare.db().seq(), d.seq);
        assert_eq!(plain.db().seq(), d.seq);
        if let Some((a, b)) = subs.as_mut() {
            let (ea, eb) = (muts(a), muts(b));
            assert!(!ea.is_empty());
            assert_eq!(ea, eb, "round {round}");
        }
    }
    w.manager.stop().await.unwrap();
}

/// Promotion after following for a while (deltas, a chain switch, auto
/// keys deleted at the top), then more writes, then restore.
#[tokio::test]
async fn promotion_of_each_kind_then_restore() {
    for spare_copy in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Writer::start(tmp.path()).await;
        let a = w.db.create_table("a").unwrap();
        let s = w.db.create_table_with_key("s", "name").unwrap();
        for i in 0..900 {
            a.insert(json!({"i": i})).unwrap();
            if i % 3 == 0 {
                s.insert(json!({"name": format!("n{i}")})).unwrap();
            }
        }
        w.full().await;
        let replica = Replica::follow(local(tmp.path()), quiet().spare_copy(spare_copy))
            .await
            .unwrap();
        let mut g = Rng(5 + spare_copy as u64);
        for round in 0..8u64 {
            for _ in 0..(1 + g.below(700)) {
                match g.below(4) {
                    0 => {
                        a.insert(json!({"r": round})).unwrap();
                    }
                    1 => {
                        let _ = a.update(1 + g.below(1200) as i64, json!({"u": round}));
                    }
                    2 => {
                        let _ = s.upsert(json!({"name": format!("n{}", g.below(900)), "r": round}));
                    }
                    _ => {
                        let _ = s.delete(format!("n{}", g.below(900)));
                    }
                }
            }
            // Delete the newest auto keys: the counter must not go back.
            let top = a
                .all()
                .unwrap()
                .iter()
                .filter_map(|v| v["id"].as_i64())
                .max()
                .unwrap();
            a.delete(top).unwrap();
            a.delete(top - 1).unwrap();
            let seq = if round == 4 {
                w.full().await.seq
            } else {
                w.delta().await.unwrap().seq
            };
            replica.sync().await.unwrap();
            assert_eq!(
                table_map(replica.db()),
                w.cuts[&seq],
                "spare={spare_copy} round {round}"
            );
        }
        // One more delta the replica has not polled.
        a.update(3, json!({"last": true})).unwrap();
        let last = w.delta().await.unwrap();
        w.manager.stop().await.unwrap();
        let expected_key = a.insert(json!({"probe": 1})).unwrap(); // the writer's next key
        let promoted = replica
            .promote(
                BackupConfig::new(tmp.path())
                    .incremental(true)
                    .backup_interval(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
        assert_eq!(
            table_map(&promoted.db),
            w.cuts[&last.seq],
            "spare={spare_copy}"
        );
        let pa = promoted.db.table("a").unwrap();
        let key = pa.insert(json!({"probe": 1})).unwrap();
        assert_eq!(
            key, expected_key,
            "spare={spare_copy}: the promoted writer's next auto key"
        );
        promoted.db.table("s").unwrap().delete("n3").ok();
        promoted
            .db
            .table("s")
            .unwrap()
            .upsert(json!({"name": "after", "v": 1}))
            .unwrap();
        let out = promoted.manager.backup_now().await.unwrap();
        assert_eq!(out.info().unwrap().kind, BackupKind::Delta);
        promoted
            .db
            .table("a")
            .unwrap()
            .update(4, json!({"more": 1}))
            .unwrap();
        promoted.manager.backup_now().await.unwrap();
        promoted.manager.stop().await.unwrap();
        let r = Restore::from_dir(tmp.path()).unwrap().run().await.unwrap();
        assert_eq!(
            table_map(&r.db),
            table_map(&promoted.db),
            "spare={spare_copy}"
        );
        assert_eq!(r.db.seq(), promoted.db.seq());
        // The promoted replica's auto keys after restore go on too.
        let k2 = r.db.table("a").unwrap().insert(json!({"x": 1})).unwrap();
        let k3 = promoted
            .db
            .table("a")
            .unwrap()
            .insert(json!({"x": 1}))
            .unwrap();
        assert_eq!(k2, k3);
    }
}

/// Promotion right after a sync (the catch-up of the replaced copy may
/// still be running), then writes through the promoted database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_right_after_a_sync_with_writes_immediately() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table("t").unwrap();
    for i in 0..3000 {
        t.insert(json!({"i": i})).unwrap();
    }
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    for k in 1..=2500i64 {
        t.update(k, json!({"u": 1})).unwrap();
    }
    let d = w.delta().await.unwrap();
    w.manager.stop().await.unwrap();
    replica.sync().await.unwrap();
    let promoted = replica
        .promote(
            BackupConfig::new(tmp.path())
                .incremental(true)
                .backup_interval(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(table_map(&promoted.db), w.cuts[&d.seq]);
    let pt = promoted.db.table("t").unwrap();
    for k in 1..=2000i64 {
        pt.update(k, json!({"p": 1})).unwrap();
    }
    pt.delete(7).unwrap();
    let mut model = w.cuts[&d.seq].clone();
    // Apply the same to the writer db to model.
    for k in 1..=2000i64 {
        t.update(k, json!({"p": 1})).unwrap();
    }
    t.delete(7).unwrap();
    model.insert("t".into(), table_map(&w.db)["t"].clone());
    assert_eq!(table_map(&promoted.db), model);
    promoted.manager.backup_now().await.unwrap();
    promoted.manager.stop().await.unwrap();
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(table_map(&r.db), model);
}

// ---------------------------------------------------------------------------
// Hand-crafted files in the Python original's format.
// ---------------------------------------------------------------------------

fn py_full(tables: &[(&str, &str, Vec<Value>)]) -> String {
    let mut m = serde_json::Map::new();
    for (name, pk, recs) in tables {
        m.insert(
            name.to_string(),
            json!({"primary_key": pk, "schema": null, "records": recs}),
        );
    }
    serde_json::to_string(&json!({ "tables": m })).unwrap()
}

/// A delta whose table objects are written in the order given (raw JSON
/// text per table).
fn py_delta(tables: &[(&str, String)]) -> String {
    let inner: Vec<String> = tables
        .iter()
        .map(|(n, body)| format!("{}:{}", serde_json::to_string(n).unwrap(), body))
        .collect();
    format!(
        "{{\"type\":\"delta\",\"timestamp\":1795682694.5,\"tables\":{{{}}}}}",
        inner.join(",")
    )
}

fn arr(v: &[Value]) -> String {
    serde_json::to_string(v).unwrap()
}

fn name(kind: &str, micros: u64) -> String {
    format!("dictdb_{kind}_1795682694_{micros:06}.json")
}

/// Python-format deltas with deletes before upserts, the same key upserted
/// twice (across a feed batch), a key both upserted and deleted: both
/// replicas must serve what restore builds, and publish the same.
#[tokio::test]
async fn python_format_deltas_with_odd_orders() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let recs: Vec<Value> = (0..1000).map(|i| json!({"id": i, "v": "base"})).collect();
    let srecs: Vec<Value> = (0..100)
        .map(|i| json!({"code": format!("c{i}"), "v": "base"}))
        .collect();
    std::fs::write(
        dir.join(name("backup", 100_000)),
        py_full(&[("t", "id", recs), ("s", "code", srecs)]),
    )
    .unwrap();
    let mut pair = Pair::follow(local(dir)).await;
    let expect = |dir: &Path| {
        let dir = dir.to_path_buf();
        async move {
            let r = Restore::from_dir(&dir).unwrap().run().await.unwrap();
            (table_map(&r.db), r.db.seq())
        }
    };
    let (e, _) = expect(dir).await;
    assert_eq!(table_map(pair.spare.db()), e);
    assert_eq!(table_map(pair.plain.db()), e);
    let _ = muts(&mut pair.rx_s);
    let _ = muts(&mut pair.rx_p);

    // 1. deletes before upserts; keys both deleted and upserted.
    let dels: Vec<Value> = (0..700).map(|i| json!(i)).collect();
    let ups: Vec<Value> = (300..1100).map(|i| json!({"id": i, "v": "d1"})).collect();
    let d1 = py_delta(&[(
        "t",
        format!("{{\"deletes\":{},\"upserts\":{}}}", arr(&dels), arr(&ups)),
    )]);
    // 2. the same key upserted twice, across the 512 boundary; then deleted
    // keys some of which were upserted.
    let mut ups2: Vec<Value> = (0..600)
        .map(|i| json!({"id": 2000 + i, "v": "d2a"}))
        .collect();
    ups2.extend((0..600).map(|i| json!({"id": 2000 + i, "v": "d2b"})));
    ups2.push(json!({"id": 5, "v": "reborn"}));
    let dels2: Vec<Value> = (2100..2200)
        .map(|i| json!(i))
        .chain([json!(999_999)])
        .collect();
    let s_ups: Vec<Value> = vec![
        json!({"code": "c1", "v": "x"}),
        json!({"code": "c1", "v": "y"}),
        json!({"code": "new", "v": 1}),
    ];
    let s_dels: Vec<Value> = vec![json!("c1"), json!("c2"), json!("absent")];
    let d2 = py_delta(&[
        (
            "s",
            format!(
                "{{\"deletes\":{},\"upserts\":{}}}",
                arr(&s_dels),
                arr(&s_ups)
            ),
        ),
        (
            "t",
            format!("{{\"upserts\":{},\"deletes\":{}}}", arr(&ups2), arr(&dels2)),
        ),
    ]);
    // 3. deletes (fed) then nothing; and upserts only in s.
    let dels3: Vec<Value> = (2000..2600).map(|i| json!(i)).collect();
    let d3 = py_delta(&[
        (
            "t",
            format!("{{\"upserts\":[],\"deletes\":{}}}", arr(&dels3)),
        ),
        (
            "s",
            format!(
                "{{\"upserts\":{},\"deletes\":[]}}",
                arr(&[json!({"code": "c2", "v": "back"})])
            ),
        ),
    ]);
    for (i, d) in [d1, d2, d3].into_iter().enumerate() {
        std::fs::write(dir.join(name("delta", 200_000 + i as u64)), d).unwrap();
        let ok = pair.sync(&format!("py delta {i}")).await;
        let (e, seq) = expect(dir).await;
        assert!(ok, "py delta {i}: {:?}", pair.spare.status().problem);
        assert_eq!(
            table_map(pair.plain.db()),
            e,
            "py delta {i}: plain vs restore"
        );
        assert_eq!(
            table_map(pair.spare.db()),
            e,
            "py delta {i}: spare vs restore"
        );
        let _ = seq;
        let (a, b) = (muts(&mut pair.rx_s), muts(&mut pair.rx_p));
        assert_eq!(a, b, "py delta {i}: events");
        assert_eq!(pair.spare.db().seq(), pair.plain.db().seq());
    }
    // Several deltas in one sync, odd orders.
    for j in 0..3u64 {
        let ups: Vec<Value> = (0..800)
            .map(|i| json!({"id": i * 2, "v": format!("m{j}")}))
            .collect();
        let dels: Vec<Value> = (0..800).map(|i| json!(i * 3)).collect();
        let body = if j % 2 == 0 {
            format!("{{\"deletes\":{},\"upserts\":{}}}", arr(&dels), arr(&ups))
        } else {
            format!("{{\"upserts\":{},\"deletes\":{}}}", arr(&ups), arr(&dels))
        };
        std::fs::write(
            dir.join(name("delta", 300_000 + j)),
            py_delta(&[("t", body)]),
        )
        .unwrap();
    }
    assert!(pair.sync("three at once").await);
    let (e, _) = expect(dir).await;
    assert_eq!(table_map(pair.plain.db()), e, "three at once: plain");
    assert_eq!(table_map(pair.spare.db()), e, "three at once: spare");
    assert_eq!(
        muts(&mut pair.rx_s),
        muts(&mut pair.rx_p),
        "three at once: events"
    );

    // A bad file: 600 good upserts (fed to the spare) then a record without
    // its key. Both stop; the file replaced by a good one of another size
    // with other values is applied exactly.
    let before = table_map(pair.spare.db());
    let mut bad_ups: Vec<Value> = (0..600).map(|i| json!({"id": i, "v": "BAD"})).collect();
    bad_ups.push(json!({"nokey": 1}));
    let bad_name = name("delta", 400_000);
    std::fs::write(
        dir.join(&bad_name),
        py_delta(&[(
            "t",
            format!("{{\"upserts\":{},\"deletes\":[]}}", arr(&bad_ups)),
        )]),
    )
    .unwrap();
    assert!(!pair.sync("bad py").await);
    assert_eq!(table_map(pair.plain.db()), before, "bad: plain moved");
    assert_eq!(table_map(pair.spare.db()), before, "bad: spare moved");
    assert!(muts(&mut pair.rx_s).is_empty());
    assert!(muts(&mut pair.rx_p).is_empty());
    let good_ups: Vec<Value> = (0..10)
        .map(|i| json!({"id": i, "v": "GOOD-and-longer"}))
        .collect();
    std::fs::write(
        dir.join(&bad_name),
        py_delta(&[(
            "t",
            format!("{{\"upserts\":{},\"deletes\":[1,2,3]}}", arr(&good_ups)),
        )]),
    )
    .unwrap();
    assert!(
        pair.sync("fixed py").await,
        "{:?}",
        pair.spare.status().problem
    );
    let (e, _) = expect(dir).await;
    assert_eq!(table_map(pair.plain.db()), e, "fixed: plain");
    assert_eq!(table_map(pair.spare.db()), e, "fixed: spare");
    assert_eq!(muts(&mut pair.rx_s), muts(&mut pair.rx_p), "fixed: events");
    // And another after it.
    let ups: Vec<Value> = (0..700).map(|i| json!({"id": i, "v": "post"})).collect();
    std::fs::write(
        dir.join(name("delta", 500_000)),
        py_delta(&[("t", format!("{{\"upserts\":{},\"deletes\":[]}}", arr(&ups)))]),
    )
    .unwrap();
    assert!(pair.sync("post").await);
    let (e, _) = expect(dir).await;
    assert_eq!(table_map(pair.plain.db()), e, "post: plain");
    assert_eq!(table_map(pair.spare.db()), e, "post: spare");
    assert_eq!(muts(&mut pair.rx_s), muts(&mut pair.rx_p), "post: events");
    // A delta naming a table that does not exist, with upserts first for a
    // real table: both refuse it and stay.
    let before = table_map(pair.spare.db());
    let ups: Vec<Value> = (0..700)
        .map(|i| json!({"id": i, "v": "ghost-file"}))
        .collect();
    std::fs::write(
        dir.join(name("delta", 600_000)),
        py_delta(&[
            ("t", format!("{{\"upserts\":{},\"deletes\":[]}}", arr(&ups))),
            (
                "ghost",
                "{\"upserts\":[{\"id\":1}],\"deletes\":[]}".to_string(),
            ),
        ]),
    )
    .unwrap();
    let ok = pair.sync("ghost").await;
    if !ok {
        assert_eq!(table_map(pair.plain.db()), before, "ghost: plain moved");
        assert_eq!(table_map(pair.spare.db()), before, "ghost: spare moved");
    } else {
        assert_eq!(table_map(pair.plain.db()), table_map(pair.spare.db()));
    }
    assert_eq!(muts(&mut pair.rx_s), muts(&mut pair.rx_p), "ghost: events");
    // A new full backup repairs.
    let recs: Vec<Value> = (0..50).map(|i| json!({"id": i, "v": "full2"})).collect();
    std::fs::write(
        dir.join(name("backup", 700_000)),
        py_full(&[("t", "id", recs)]),
    )
    .unwrap();
    assert!(
        pair.sync("full2").await,
        "{:?}",
        pair.spare.status().problem
    );
    let (e, _) = expect(dir).await;
    assert_eq!(table_map(pair.plain.db()), e, "full2: plain");
    assert_eq!(table_map(pair.spare.db()), e, "full2: spare");
    assert_eq!(muts(&mut pair.rx_s), muts(&mut pair.rx_p), "full2: events");
    let ups: Vec<Value> = (0..600)
        .map(|i| json!({"id": i, "v": "after-full2"}))
        .collect();
    std::fs::write(
        dir.join(name("delta", 800_000)),
        py_delta(&[(
            "t",
            format!("{{\"deletes\":[3,4,599],\"upserts\":{}}}", arr(&ups)),
        )]),
    )
    .unwrap();
    assert!(pair.sync("after full2").await);
    let (e, _) = expect(dir).await;
    assert_eq!(table_map(pair.plain.db()), e, "after full2: plain");
    assert_eq!(table_map(pair.spare.db()), e, "after full2: spare");
    assert_eq!(
        muts(&mut pair.rx_s),
        muts(&mut pair.rx_p),
        "after full2: events"
    );
    pair.stop().await;
}

/// Our own format, re-sealed: a writer's delta edited so that a table's
/// deletes come before its upserts, and a key is upserted twice.
#[tokio::test]
async fn resealed_v2_delta_with_deletes_first_and_duplicate_upserts() {
    use common::craft::{json_body, seal_json};
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table("t").unwrap();
    for i in 0..1000 {
        t.insert(json!({"i": i})).unwrap();
    }
    let f = w.full().await;
    let mut pair = Pair::follow(local(tmp.path())).await;
    pair.check(&w.cuts[&f.seq], f.seq, "start");
    for k in 1..=700i64 {
        t.update(k, json!({"u": 1})).unwrap();
    }
    for k in 800..=900i64 {
        t.delete(k).unwrap();
    }
    let d = w.delta().await.unwrap();
    let path = tmp.path().join(&d.file);
    let bytes = std::fs::read(&path).unwrap();
    let body = json_body(&bytes);
    // Swap the order of "upserts" and "deletes" in table t.
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let ups = serde_json::to_string(&v["tables"]["t"]["upserts"]).unwrap();
    let dels = serde_json::to_string(&v["tables"]["t"]["deletes"]).unwrap();
    let orig = format!("{{\"upserts\":{ups},\"deletes\":{dels}}}");
    let swapped = format!("{{\"deletes\":{dels},\"upserts\":{ups}}}");
    if body.contains(&orig) {
        let edited = body.replace(&orig, &swapped);
        std::fs::write(&path, seal_json(&edited)).unwrap();
        let ok = pair.sync("swapped").await;
        if ok {
            pair.check(&w.cuts[&d.seq], d.seq, "swapped");
        } else {
            eprintln!(
                "swapped v2 delta refused by both: {:?}",
                pair.spare.status().problem
            );
        }
    } else {
        eprintln!("could not find the table body verbatim; skipped the edit");
        assert!(pair.sync("plain").await);
        pair.check(&w.cuts[&d.seq], d.seq, "plain");
    }
    w.manager.stop().await.unwrap();
    pair.stop().await;
}

/// A good delta, a damaged one (after its upserts were fed) and a good one
/// behind it, all read by one sync: the cut is the first delta's.
#[tokio::test]
async fn three_deltas_in_one_sync_with_the_middle_one_damaged() {
    for frac in [(1usize, 3usize), (95, 100)] {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Writer::start(tmp.path()).await;
        let t = w.db.create_table("t").unwrap();
        for i in 0..1500 {
            t.insert(json!({"i": i})).unwrap();
        }
        w.full().await;
        let mut pair = Pair::follow(local(tmp.path())).await;
        for k in 1..=1000i64 {
            t.update(k, json!({"a": 1})).unwrap();
        }
        let d1 = w.delta().await.unwrap();
        for k in 1..=1200i64 {
            t.update(k, json!({"b": 1})).unwrap();
        }
        t.delete(1400).unwrap();
        let d2 = w.delta().await.unwrap();
        for k in 1..=900i64 {
            t.update(k, json!({"c": 1})).unwrap();
        }
        w.delta().await.unwrap();
        flip_at(&tmp.path().join(&d2.file), frac.0, frac.1);
        assert!(!pair.sync("bad middle").await);
        pair.check(&w.cuts[&d1.seq], d1.seq, &format!("bad middle {frac:?}"));
        // Writer goes on with deltas (still behind the damage), then a full.
        t.update(1, json!({"d": 1})).unwrap();
        w.delta().await.unwrap();
        assert!(!pair.sync("still bad").await);
        pair.check(&w.cuts[&d1.seq], d1.seq, "still bad");
        let f = w.full().await;
        for k in 1..=700i64 {
            t.update(k, json!({"e": 1})).unwrap();
        }
        let d5 = w.delta().await.unwrap();
        assert!(pair.sync("repaired").await);
        let _ = f;
        pair.check(&w.cuts[&d5.seq], d5.seq, &format!("repaired {frac:?}"));
        w.manager.stop().await.unwrap();
        pair.stop().await;
    }
}

/// The promoted spare replica's database keeps what is written to it after
/// the background work of the last sync had time to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_database_is_not_touched_by_late_background_work() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    let t = w.db.create_table("t").unwrap();
    for i in 0..3000 {
        t.insert(json!({"i": i})).unwrap();
    }
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    for round in 0..3i64 {
        for k in 1..=2500i64 {
            t.update(k, json!({"u": round})).unwrap();
        }
        w.delta().await.unwrap();
        replica.sync().await.unwrap();
    }
    let d = {
        for k in 1..=2500i64 {
            t.update(k, json!({"last": 1})).unwrap();
        }
        w.delta().await.unwrap()
    };
    w.manager.stop().await.unwrap();
    let promoted = replica
        .promote(
            BackupConfig::new(tmp.path())
                .incremental(true)
                .backup_interval(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    assert_eq!(table_map(&promoted.db), w.cuts[&d.seq]);
    let pt = promoted.db.table("t").unwrap();
    let mut rx = promoted.db.subscribe();
    for k in 1..=100i64 {
        pt.update(k, json!({"p": 1})).unwrap();
        t.update(k, json!({"p": 1})).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for k in 101..=200i64 {
        pt.delete(k).unwrap();
        t.delete(k).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(table_map(&promoted.db), table_map(&w.db));
    assert_eq!(muts(&mut rx).len(), 200);
    promoted.manager.backup_now().await.unwrap();
    promoted.manager.stop().await.unwrap();
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(table_map(&r.db), table_map(&w.db));
}

/// A Python-format delta naming a table twice, or a table with two
/// "upserts": both replicas refuse it and stay.
#[tokio::test]
async fn python_format_delta_with_a_duplicated_table_or_field() {
    for (i, body) in [
        format!(
            "{{\"type\":\"delta\",\"timestamp\":1.5,\"tables\":{{\"t\":{{\"upserts\":{},\"deletes\":[]}},\"t\":{{\"upserts\":[],\"deletes\":[1]}}}}}}",
            arr(&(0..600).map(|i| json!({"id": i, "v": "dup"})).collect::<Vec<_>>())
        ),
        format!(
            "{{\"type\":\"delta\",\"timestamp\":1.5,\"tables\":{{\"t\":{{\"upserts\":{},\"deletes\":[],\"upserts\":[]}}}}}}",
            arr(&(0..600).map(|i| json!({"id": i, "v": "dup"})).collect::<Vec<_>>())
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let recs: Vec<Value> = (0..700).map(|i| json!({"id": i, "v": "base"})).collect();
        std::fs::write(dir.join(name("backup", 100_000)), py_full(&[("t", "id", recs)])).unwrap();
        let mut pair = Pair::follow(local(dir)).await;
        let before = table_map(pair.spare.db());
        let _ = (muts(&mut pair.rx_s), muts(&mut pair.rx_p));
        std::fs::write(dir.join(name("delta", 200_000)), body).unwrap();
        assert!(!pair.sync(&format!("dup {i}")).await, "dup {i} accepted");
        assert_eq!(table_map(pair.spare.db()), before, "dup {i}: spare moved");
        assert_eq!(table_map(pair.plain.db()), before, "dup {i}: plain moved");
        assert!(muts(&mut pair.rx_s).is_empty());
        // A good delta replacing it (another size).
        let ups: Vec<Value> = (0..650).map(|i| json!({"id": i, "v": "good-good"})).collect();
        std::fs::write(
            dir.join(name("delta", 200_000)),
            py_delta(&[("t", format!("{{\"upserts\":{},\"deletes\":[0]}}", arr(&ups)))]),
        )
        .unwrap();
        assert!(pair.sync(&format!("dup {i} fixed")).await);
        let r = Restore::from_dir(dir).unwrap().run().await.unwrap();
        assert_eq!(table_map(pair.spare.db()), table_map(&r.db), "dup {i} fixed: spare");
        assert_eq!(table_map(pair.plain.db()), table_map(&r.db), "dup {i} fixed: plain");
        assert_eq!(muts(&mut pair.rx_s), muts(&mut pair.rx_p));
        pair.stop().await;
    }
}
