//! Read replicas: following a store's chain delta by delta and across new
//! chains, whole cuts only, read-only, the mutation stream, status and lag,
//! damaged and missing files, an unreachable store, retention racing the
//! replica, a writer restarting, promotion, and polling on paused and real
//! time.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{table_map, workload_record};
use dictdb::replica::{Replica, ReplicaEvent, ReplicaOptions};
use dictdb::restore::Restore;
use dictdb::store::{BackupStore, BackupWriter, LocalStore, StoredFile, WriterLock};
use dictdb::{
    restore_dir, BackupConfig, BackupInfo, BackupKind, BackupManager, DictDB, Error, Result,
};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::TryRecvError;

type State = BTreeMap<String, BTreeMap<String, Value>>;

/// A writer: a database, an incremental manager on `dir` that writes only
/// when asked, and the state at each cut it wrote.
struct Writer {
    db: DictDB,
    manager: BackupManager,
    cuts: BTreeMap<u64, State>,
}

impl Writer {
    async fn start(dir: &Path) -> Writer {
        Writer::with(BackupConfig::new(dir)).await
    }

    /// A writer with `config` (made incremental, writing only when asked).
    async fn with(config: BackupConfig) -> Writer {
        let db = DictDB::new();
        db.create_table("users").unwrap();
        let manager = BackupManager::start(
            &db,
            config
                .incremental(true)
                .max_deltas_before_full(1000)
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

    fn users(&self) -> dictdb::Table {
        self.db.table("users").unwrap()
    }

    /// Inserts `n` records from key `from`.
    fn insert(&self, from: i64, n: i64) {
        let users = self.users();
        for i in from..from + n {
            users.insert(workload_record(i)).unwrap();
        }
    }

    fn record(&mut self, info: &BackupInfo) {
        // No writer runs during these backups: the state now is the cut.
        assert_eq!(info.seq, self.db.seq());
        self.cuts.insert(info.seq, table_map(&self.db));
    }

    async fn full(&mut self) -> BackupInfo {
        let info = self.manager.backup_full().await.unwrap();
        self.record(&info);
        info
    }

    async fn delta(&mut self) -> BackupInfo {
        let out = self.manager.backup_delta().await.unwrap();
        let info = out.info().expect("something changed").clone();
        assert_eq!(info.kind, BackupKind::Delta);
        self.record(&info);
        info
    }
}

fn local(dir: &Path) -> Arc<dyn BackupStore> {
    Arc::new(LocalStore::open(dir).unwrap())
}

fn quiet() -> ReplicaOptions {
    // Polls only when a test asks (sync), unless it says otherwise.
    ReplicaOptions::default().interval(Duration::from_secs(3600))
}

fn drain(rx: &mut tokio::sync::broadcast::Receiver<ReplicaEvent>) -> Vec<ReplicaEvent> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => out.push(e),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return out,
            Err(TryRecvError::Lagged(n)) => panic!("lagged {n}"),
        }
    }
}

fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// A store over a directory, as a reader sees it: counts what is asked of
/// it, can be taken down, and can delete a file just before it is opened
/// (retention racing the reader).
#[derive(Debug)]
struct ReaderStore {
    inner: LocalStore,
    lists: AtomicUsize,
    opens: AtomicUsize,
    ranges: AtomicUsize,
    down: AtomicBool,
    delete_on_open: Mutex<Option<String>>,
    /// The next read of this file fails after this many bytes (an I/O
    /// error mid-file), once.
    cut_read: Mutex<Option<(String, usize)>>,
}

impl ReaderStore {
    fn new(dir: &Path) -> Arc<ReaderStore> {
        Arc::new(ReaderStore {
            inner: LocalStore::open(dir).unwrap(),
            lists: AtomicUsize::new(0),
            opens: AtomicUsize::new(0),
            ranges: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            delete_on_open: Mutex::new(None),
            cut_read: Mutex::new(None),
        })
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::Store {
                path: format!("reader:{what}"),
                message: "connection refused (injected)".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BackupStore for ReaderStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn list(&self) -> Result<Vec<StoredFile>> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.check("list")?;
        self.inner.list().await
    }
    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        self.inner.create(name).await
    }
    async fn open(&self, name: &str) -> Result<dictdb::store::FileReader> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        self.check(name)?;
        let doomed = self.delete_on_open.lock().unwrap().take();
        match doomed {
            Some(d) if d == name => self.inner.delete(name).await?,
            Some(d) => *self.delete_on_open.lock().unwrap() = Some(d),
            None => {}
        }
        let reader = self.inner.open(name).await?;
        let cut = self.cut_read.lock().unwrap().take();
        match cut {
            Some((file, after)) if file == name => Ok(Box::new(CutReader {
                inner: reader,
                left: after,
            })),
            other => {
                *self.cut_read.lock().unwrap() = other;
                Ok(reader)
            }
        }
    }
    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.ranges.fetch_add(1, Ordering::SeqCst);
        self.check(name)?;
        self.inner.read_range(name, range).await
    }
    async fn stat(&self, name: &str) -> Result<Option<StoredFile>> {
        self.inner.stat(name).await
    }
    async fn lock_writer(&self) -> Result<Option<WriterLock>> {
        self.inner.lock_writer().await
    }
    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }
}

/// A reader that fails with an I/O error once `left` bytes were read.
struct CutReader {
    inner: dictdb::store::FileReader,
    left: usize,
}

impl std::io::Read for CutReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("connection reset (injected)"));
        }
        let n = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..n])?;
        self.left -= got;
        Ok(got)
    }
}

/// A read that breaks in the middle of a delta, after the spare copy was
/// handed part of its upserts: the replica stays at the previous cut, reads
/// the file again next poll and applies it whole, and the deltas after it
/// apply exactly (the spare fed from the broken read was thrown away).
#[tokio::test]
async fn a_read_broken_mid_delta_leaves_the_previous_cut_and_is_read_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3000);
    let full = w.full().await;
    let store = ReaderStore::new(tmp.path());
    let replica = Replica::follow(Arc::clone(&store) as Arc<dyn BackupStore>, quiet())
        .await
        .unwrap();
    for k in 1..=2500 {
        w.users().update(k, json!({"broken": k})).unwrap();
    }
    let d = w.delta().await;
    let size = std::fs::metadata(tmp.path().join(&d.file)).unwrap().len() as usize;
    *store.cut_read.lock().unwrap() = Some((d.file.clone(), size * 2 / 3));
    let err = replica.sync().await.unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(
        table_map(replica.db()),
        w.cuts[&full.seq],
        "the previous cut"
    );
    assert_eq!(replica.db().seq(), full.seq);
    // Read again, whole this time.
    replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&d.seq]);
    for round in 0..3 {
        for k in (1 + round..3000).step_by(7) {
            w.users().update(k, json!({"round": round})).unwrap();
        }
        let d = w.delta().await;
        replica.sync().await.unwrap();
        assert_eq!(table_map(replica.db()), w.cuts[&d.seq], "round {round}");
    }
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn follows_each_delta_and_serves_the_writers_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 50);
    let full = w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq]);
    assert_eq!(replica.db().seq(), full.seq);
    let mut events = replica.subscribe();
    let mut files = Vec::new();
    for round in 0..3 {
        w.insert(100 + round * 10, 5);
        w.users()
            .update(round + 1, json!({"round": round}))
            .unwrap();
        w.users().delete(40 - round).unwrap();
        let d = w.delta().await;
        let status = replica.sync().await.unwrap();
        assert_eq!(table_map(replica.db()), w.cuts[&d.seq], "round {round}");
        assert_eq!(replica.db().seq(), d.seq);
        let cut = status.cut.unwrap();
        assert_eq!(
            (cut.file.as_str(), cut.base.as_str(), cut.seq),
            (d.file.as_str(), full.file.as_str(), Some(d.seq))
        );
        assert_eq!(cut.deltas, round as u32 + 1);
        assert!(cut.verified);
        assert!(status.lag.is_current());
        assert_eq!(status.lag.seq, Some(0));
        files.push(d.file);
    }
    let applied: Vec<(String, usize)> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            ReplicaEvent::Applied(a) => Some((a.file, a.affected)),
            _ => None,
        })
        .collect();
    assert_eq!(
        applied,
        files.iter().map(|f| (f.clone(), 7)).collect::<Vec<_>>()
    );
    // Nothing new: a poll applies nothing.
    replica.sync().await.unwrap();
    assert!(drain(&mut events)
        .iter()
        .all(|e| !matches!(e, ReplicaEvent::Applied(_))));
    w.manager.stop().await.unwrap();
    replica.stop().await.unwrap();
    assert!(!replica.status().running);
    assert!(matches!(replica.sync().await, Err(Error::ReplicaStopped)));
}

/// Writes a full backup, two deltas and a newer full backup with `w`,
/// following with `options`: the replica serves every cut.
async fn follow_through_a_chain_and_a_new_one(w: &mut Writer, dir: &Path, options: ReplicaOptions) {
    w.insert(1, 40);
    let full = w.full().await;
    let replica = Replica::follow(local(dir), options).await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq]);
    for round in 0..2 {
        w.insert(100 + round * 10, 5);
        w.users().delete(30 - round).unwrap();
        let d = w.delta().await;
        let status = replica.sync().await.unwrap();
        assert!(status.problem.is_none(), "{:?}", status.problem);
        assert_eq!(table_map(replica.db()), w.cuts[&d.seq], "round {round}");
        assert_eq!(status.cut.unwrap().file, d.file);
    }
    w.insert(500, 3);
    let next = w.full().await;
    let status = replica.sync().await.unwrap();
    assert_eq!(status.cut.unwrap().file, next.file);
    assert_eq!(table_map(replica.db()), w.cuts[&next.seq]);
    w.manager.stop().await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn a_compressed_store_is_followed_like_a_plain_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w =
        Writer::with(BackupConfig::new(tmp.path()).compression(dictdb::Compression::zstd())).await;
    follow_through_a_chain_and_a_new_one(&mut w, tmp.path(), quiet()).await;
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(names.len(), 4);
    assert!(names.iter().all(|n| n.ends_with(".zst")), "{names:?}");
}

#[cfg(feature = "encryption")]
#[tokio::test]
async fn an_encrypted_store_is_followed_with_the_identity_and_refused_without() {
    use dictdb::encryption::Identity;
    let tmp = tempfile::tempdir().unwrap();
    let id = Identity::generate();
    let mut w = Writer::with(
        BackupConfig::new(tmp.path())
            .compression(dictdb::Compression::zstd())
            .encrypt_to([id.to_public()]),
    )
    .await;
    follow_through_a_chain_and_a_new_one(&mut w, tmp.path(), quiet().identity(id)).await;
    // Without the identity: a clear error, not an empty replica.
    let e = Replica::follow(local(tmp.path()), quiet()).await;
    let e = match e {
        Err(e) => e.to_string(),
        Ok(r) => {
            let p = r.status().problem.expect("stopped without the identity");
            r.stop().await.unwrap();
            p.error.to_string()
        }
    };
    assert!(e.contains("identity"), "{e}");
}

#[tokio::test]
async fn a_newer_full_backup_moves_the_replica_to_its_chain_in_one_change() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 1000);
    let first = w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let users = replica.db().table("users").unwrap();
    let mut mutations = replica.db().subscribe();
    let mut events = replica.subscribe();

    // Two more chains in one poll: the replica goes straight to the newest.
    w.users().update(7, json!({"v": 1})).unwrap();
    w.delta().await;
    w.full().await;
    w.users().delete(8).unwrap();
    w.delta().await;
    w.users().update(9, json!({"v": 2})).unwrap();
    let last_full = w.full().await;
    w.insert(5000, 2);
    let last = w.delta().await;
    let status = replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&last.seq]);
    let cut = status.cut.unwrap();
    assert_eq!(cut.base, last_full.file);
    assert_eq!((cut.file, cut.deltas), (last.file.clone(), 1));
    let switches: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            ReplicaEvent::ChainSwitched(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(switches.len(), 1);
    assert_eq!(switches[0].from.as_deref(), Some(first.file.as_str()));
    assert_eq!(switches[0].to, last_full.file);
    assert_eq!(switches[0].files, [last_full.file.clone(), last.file]);
    // The difference only: 2 updates, 1 delete, 2 inserts, published as
    // mutations ending at the cut.
    assert_eq!(switches[0].affected, 5);
    let seqs: Vec<u64> = std::iter::from_fn(|| mutations.try_recv().ok())
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs.len(), 5);
    assert_eq!(seqs.last(), Some(&last.seq));
    // A handle taken before the switch still works: the table was changed,
    // not replaced.
    assert_eq!(users.len().unwrap(), 1001);
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn a_damaged_delta_stops_the_replica_at_the_previous_cut_until_the_next_full_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 20);
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let mut events = replica.subscribe();
    w.insert(100, 3);
    let d1 = w.delta().await;
    w.insert(200, 3);
    let d2 = w.delta().await;
    w.insert(300, 3);
    let d3 = w.delta().await;
    flip_middle_byte(&tmp.path().join(&d2.file));

    let err = replica.sync().await.unwrap_err();
    assert!(err.to_string().contains(&d2.file), "{err}");
    assert!(
        matches!(err, Error::ChecksumMismatch { .. } | Error::Corrupt { .. }),
        "{err}"
    );
    assert_eq!(
        table_map(replica.db()),
        w.cuts[&d1.seq],
        "the cut before it"
    );
    assert_eq!(replica.db().seq(), d1.seq);
    let status = replica.status();
    let problem = status.problem.expect("a problem");
    assert_eq!(problem.file.as_deref(), Some(d2.file.as_str()));
    assert_eq!(status.cut.unwrap().file, d1.file);
    assert_eq!(status.lag.files, 2);
    assert_eq!(status.lag.seq, Some(d3.seq - d1.seq));
    assert_eq!(status.lag.newest.as_deref(), Some(d3.file.as_str()));
    // Told once, however often it polls.
    assert!(replica.sync().await.is_err());
    let failures = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, ReplicaEvent::Failed(_)))
        .count();
    assert_eq!(failures, 1);

    // The writer's next full backup repairs the store.
    let repair = w.full().await;
    let status = replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&repair.seq]);
    assert!(status.problem.is_none());
    assert_eq!(
        status.last_error.unwrap().file.as_deref(),
        Some(d2.file.as_str())
    );
    assert!(status.lag.is_current());
    // Its upserts had reached the spare copy before the damage was found:
    // that copy was thrown away, and the deltas after the repair apply to
    // exactly the writer's cuts.
    for round in 0..3 {
        w.insert(400 + round * 10, 4);
        w.users().delete(round + 1).unwrap();
        let d = w.delta().await;
        replica.sync().await.unwrap();
        assert_eq!(table_map(replica.db()), w.cuts[&d.seq], "round {round}");
    }
    w.manager.stop().await.unwrap();
}

/// The spare copy (in place, fed while the file is read) and the copying
/// apply serve the same cuts and publish the same mutations, through
/// deltas, a table created and dropped, and a chain switch.
#[tokio::test]
async fn replicas_with_and_without_a_spare_copy_serve_and_publish_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 2000);
    w.full().await;
    let spared = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let copying = Replica::follow(local(tmp.path()), quiet().spare_copy(false))
        .await
        .unwrap();
    let (mut rx_spared, mut rx_copying) = (spared.db().subscribe(), copying.db().subscribe());
    let mutations = |rx: &mut tokio::sync::broadcast::Receiver<dictdb::Mutation>| {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| format!("{m:?}"))
            .collect::<Vec<_>>()
    };
    for round in 0..8i64 {
        // More upserts than one feed batch, updates, deletes and inserts.
        for k in (1 + round..2000).step_by(3) {
            let _ = w.users().update(k, json!({"round": round}));
        }
        for k in (2 + round..2000).step_by(97) {
            let _ = w.users().delete(k);
        }
        w.insert(10_000 + round * 100, 50);
        match round {
            2 => {
                let t = w.db.create_table("events").unwrap();
                t.insert(json!({"kind": "a"})).unwrap();
            }
            4 => w.db.drop_table("events").unwrap(),
            _ => {}
        }
        let d = if round == 6 {
            w.full().await
        } else {
            w.delta().await
        };
        spared.sync().await.unwrap();
        copying.sync().await.unwrap();
        assert_eq!(table_map(spared.db()), w.cuts[&d.seq], "round {round}");
        assert_eq!(table_map(copying.db()), w.cuts[&d.seq], "round {round}");
        assert_eq!(spared.db().seq(), copying.db().seq());
        let (a, b) = (mutations(&mut rx_spared), mutations(&mut rx_copying));
        assert!(!a.is_empty());
        assert_eq!(a, b, "round {round}");
    }
    w.manager.stop().await.unwrap();
    spared.stop().await.unwrap();
    copying.stop().await.unwrap();
}

#[tokio::test]
async fn a_missing_delta_is_a_gap_the_replica_never_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 5);
    let full = w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    w.insert(10, 1);
    let d1 = w.delta().await;
    w.insert(20, 1);
    let d2 = w.delta().await;
    let saved = std::fs::read(tmp.path().join(&d1.file)).unwrap();
    std::fs::remove_file(tmp.path().join(&d1.file)).unwrap();
    let err = replica.sync().await.unwrap_err();
    assert!(
        matches!(&err, Error::Chain { file, reason } if file == &d2.file && reason.contains("missing")),
        "{err}"
    );
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq]);
    let r = Restore::from_dir(tmp.path()).unwrap().run().await;
    assert!(r.is_err(), "restore sees the gap too");
    // The file comes back (an operator's copy): the replica moves on.
    std::fs::write(tmp.path().join(&d1.file), saved).unwrap();
    replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&d2.seq]);
    w.manager.stop().await.unwrap();
}

/// A delta behind a symbolic link to a disk that did not mount: the
/// replica stops at it, names it and keeps serving the cut before it; once
/// the link's target is there, the replica reads it through the link.
#[cfg(unix)]
#[tokio::test]
async fn a_delta_behind_a_dangling_link_is_waited_for_never_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 5);
    let full = w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    w.insert(10, 1);
    let d1 = w.delta().await;
    let mount = tempfile::tempdir().unwrap();
    let elsewhere = mount.path().join("disk");
    let saved = std::fs::read(tmp.path().join(&d1.file)).unwrap();
    std::fs::remove_file(tmp.path().join(&d1.file)).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(&d1.file), tmp.path().join(&d1.file)).unwrap();
    let err = replica.sync().await.unwrap_err();
    assert!(err.is_store_failure(), "{err}");
    assert!(err.to_string().contains(&d1.file), "{err}");
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq]);
    // The disk is back.
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join(&d1.file), saved).unwrap();
    replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&d1.seq]);
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn writes_through_the_replica_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let db = replica.db();
    let users = db.table("users").unwrap();
    let seq = db.seq();
    let refused = |r: Result<()>| match r {
        Err(Error::ReadOnly(why)) => assert!(why.contains("replica"), "{why}"),
        other => panic!("{other:?}"),
    };
    refused(users.insert(json!({"name": "x"})).map(drop));
    refused(users.insert_many([json!({"name": "x"})]).map(drop));
    refused(users.update(1, json!({"x": 1})));
    refused(users.upsert(json!({"id": 1, "x": 1})).map(drop));
    refused(users.replace(1, json!({"x": 1})));
    refused(users.update_with(1, |_| {}).map(drop));
    refused(users.delete(1).map(drop));
    refused(users.delete_where(|_| true).map(drop));
    refused(users.update_where(|_| true, json!({"x": 1})).map(drop));
    refused(db.create_table("other").map(drop));
    refused(db.drop_table("users"));
    let other = DictDB::new();
    other.create_table("t").unwrap();
    let changes = DictDB::new().snapshot().changes_to(&other.snapshot());
    refused(db.apply(&changes).map(drop));
    refused(db.prepare(&changes).map(drop));
    assert!(db.is_read_only());
    assert_eq!(db.seq(), seq);
    assert_eq!(users.len().unwrap(), 3, "reads work");
    assert_eq!(users.get(1).unwrap().unwrap()["id"], 1);
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn subscribers_see_the_mutations_the_replica_applies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let mut rx = replica.db().subscribe();
    w.users().update(1, json!({"a": 1})).unwrap();
    w.users().update(1, json!({"a": 2})).unwrap(); // folded into one upsert
    w.users().delete(2).unwrap();
    w.insert(10, 1);
    w.db.create_table("events").unwrap();
    let d = w.delta().await;
    replica.sync().await.unwrap();
    let got: Vec<dictdb::Mutation> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    let shape: Vec<(String, String)> = got
        .iter()
        .map(|m| {
            let what = match &m.change {
                dictdb::Change::Insert { key, .. } => format!("insert {key}"),
                dictdb::Change::Update { key, record } => {
                    format!("update {key} a={}", record.to_value()["a"])
                }
                dictdb::Change::Delete { key } => format!("delete {key}"),
                dictdb::Change::TableCreated { .. } => "created".into(),
                other => format!("{other:?}"),
            };
            (m.table.to_string(), what)
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("events".into(), "created".into()),
            ("users".into(), "update 1 a=2".into()),
            ("users".into(), "insert 10".into()),
            ("users".into(), "delete 2".into()),
        ]
    );
    // Consecutive, and the last at the writer's cut.
    let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (d.seq - 3..=d.seq).collect::<Vec<_>>());
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn status_reports_the_cut_the_lag_and_an_unreachable_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    let full = w.full().await;
    let store = ReaderStore::new(tmp.path());
    let replica = Replica::follow(store.clone(), quiet()).await.unwrap();
    let status = replica.status();
    assert!(status.running);
    assert_eq!(status.cut.as_ref().unwrap().file, full.file);
    assert!(status.lag.is_current());
    assert!(status.next_poll_in.unwrap() > Duration::from_secs(3000));
    let mut events = replica.subscribe();

    // The store goes away while the writer goes on.
    store.down.store(true, Ordering::SeqCst);
    w.insert(10, 2);
    let d1 = w.delta().await;
    std::thread::sleep(Duration::from_millis(20)); // distinct name times
    w.insert(20, 2);
    let d2 = w.delta().await;
    let err = replica.sync().await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(replica.sync().await.is_err());
    let status = replica.status();
    assert!(status.problem.as_ref().unwrap().file.is_none());
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq], "still serving");

    // Back: the replica catches up, file by file.
    store.down.store(false, Ordering::SeqCst);
    let opens = store.opens.load(Ordering::SeqCst);
    let status = replica.sync().await.unwrap();
    assert!(store.opens.load(Ordering::SeqCst) > opens);
    assert!(status.lag.is_current());
    assert_eq!(table_map(replica.db()), w.cuts[&d2.seq]);
    let evs = drain(&mut events);
    let failed = evs
        .iter()
        .filter(|e| matches!(e, ReplicaEvent::Failed(_)))
        .count();
    assert_eq!(failed, 1, "one problem, told once");
    let applied: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            ReplicaEvent::Applied(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(applied.len(), 2);
    // After the first of the two, one file was still to come.
    assert_eq!(applied[0].file, d1.file);
    assert_eq!(applied[0].lag.files, 1);
    assert_eq!(applied[0].lag.seq, Some(d2.seq - d1.seq));
    assert!(applied[0].lag.behind >= Duration::from_millis(20));
    assert!(applied[1].lag.is_current());
    assert!(evs
        .iter()
        .any(|e| matches!(e, ReplicaEvent::Lag(l) if l.is_current())));
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn the_lag_of_a_replica_stuck_behind_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    let full = w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let mut ds = Vec::new();
    for i in 0..3 {
        std::thread::sleep(Duration::from_millis(5));
        w.insert(10 + i, 1);
        ds.push(w.delta().await);
    }
    flip_middle_byte(&tmp.path().join(&ds[0].file));
    assert!(replica.sync().await.is_err());
    let lag = replica.status().lag;
    assert_eq!(lag.files, 3);
    assert_eq!(lag.seq, Some(ds[2].seq - full.seq));
    let behind = dictdb::BackupName::parse(&ds[2].file).unwrap().timestamp()
        - dictdb::BackupName::parse(&full.file).unwrap().timestamp();
    assert!((lag.behind.as_secs_f64() - behind).abs() < 1e-5, "{lag:?}");
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn a_reader_holding_a_snapshot_keeps_a_consistent_view_while_the_replica_moves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 2000);
    let full = w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    let held = replica.db().snapshot();
    assert_eq!(held.seq(), full.seq);

    // Readers on other threads: every state they see is one of the cuts.
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeMap::<u64, State>::new()));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let db = replica.db().clone();
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let snap = db.snapshot();
                    let t = snap.table("users").unwrap();
                    // Cheap per round: the count; the whole state once per cut.
                    let mut s = seen.lock().unwrap();
                    s.entry(snap.seq())
                        .or_insert_with(|| common::snapshot_map(&snap));
                    n += t.len();
                }
                n
            })
        })
        .collect();
    for round in 0..10i64 {
        let users = w.users();
        for k in 0..50 {
            users
                .update(round * 50 + k + 1, json!({"round": round}))
                .unwrap();
        }
        users.delete(1500 + round).unwrap();
        w.insert(10_000 + round * 10, 5);
        w.delta().await;
        replica.sync().await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(!seen.is_empty());
    for (seq, state) in seen.iter() {
        assert_eq!(
            Some(state),
            w.cuts.get(seq),
            "a reader saw a state at {seq} that is no cut"
        );
    }
    // The snapshot held from the start never moved.
    let t = held.table("users").unwrap();
    assert_eq!(t.len(), 2000);
    assert!(t.get(&dictdb::Key::Int(1500)).is_some());
    assert_eq!(
        t.get(&dictdb::Key::Int(1)).unwrap().to_value(),
        workload_record(1)
    );
    assert_eq!(table_map(replica.db()), w.cuts[&w.db.seq()]);
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn retention_deleting_a_file_the_replica_is_about_to_read_is_not_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 5);
    w.full().await;
    let store = ReaderStore::new(tmp.path());
    let replica = Replica::follow(store.clone(), quiet()).await.unwrap();
    w.insert(10, 1);
    let d1 = w.delta().await;
    // The listing shows d1; it is gone when the replica opens it.
    *store.delete_on_open.lock().unwrap() = Some(d1.file.clone());
    let err = replica.sync().await.unwrap_err();
    assert!(err.to_string().contains(&d1.file), "{err}");
    // The writer's retention only deletes after a newer full backup: the
    // replica moves to it.
    let f2 = w.full().await;
    replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&f2.seq]);
    w.manager.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_aggressive_retention_is_followed_on_the_real_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    users.insert(json!({"n": 0})).unwrap();
    let manager = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .max_deltas_before_full(2)
            .keep_full_backups(1)
            .backup_interval(Duration::from_millis(15))
            .min_backup_interval(Duration::from_millis(5)),
    )
    .await
    .unwrap();
    manager.backup_full().await.unwrap();
    let replica = Replica::follow(
        local(tmp.path()),
        ReplicaOptions::default().interval(Duration::from_millis(7)),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let mut i = 0;
    while std::time::Instant::now() < deadline {
        i += 1;
        users.insert(json!({"n": i})).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = manager.backup_full().await.unwrap();
    manager.stop().await.unwrap();
    let status = replica.sync().await.unwrap();
    assert_eq!(status.cut.unwrap().file, last.file);
    assert_eq!(table_map(replica.db()), table_map(&db));
    let st = replica.status();
    assert!(st.polls > 20, "polled {} times", st.polls);
}

#[tokio::test]
async fn a_writer_restarting_with_restore_or_start_is_followed_through() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || {
        BackupConfig::new(tmp.path())
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
    };
    let first = BackupManager::restore_or_start(config()).await.unwrap();
    first
        .db
        .create_table("t")
        .unwrap()
        .insert(json!({"a": 1}))
        .unwrap();
    first.manager.backup_full().await.unwrap();
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    first
        .db
        .table("t")
        .unwrap()
        .insert(json!({"a": 2}))
        .unwrap();
    first.manager.backup_delta().await.unwrap();
    first.manager.stop().await.unwrap();
    drop(first);

    let second = BackupManager::restore_or_start(config()).await.unwrap();
    second
        .db
        .table("t")
        .unwrap()
        .insert(json!({"a": 3}))
        .unwrap();
    let d = second.manager.backup_delta().await.unwrap();
    assert_eq!(
        d.info().unwrap().kind,
        BackupKind::Delta,
        "the chain goes on"
    );
    let status = replica.sync().await.unwrap();
    assert_eq!(status.cut.unwrap().deltas, 2);
    assert_eq!(table_map(replica.db()), table_map(&second.db));
    assert_eq!(replica.db().seq(), second.db.seq());
    second.manager.stop().await.unwrap();
}

#[tokio::test]
async fn a_truncated_file_under_a_final_name_stops_the_replica_and_is_read_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 5);
    let full = w.full().await;
    let store = ReaderStore::new(tmp.path());
    let replica = Replica::follow(store.clone(), quiet()).await.unwrap();
    w.insert(10, 50);
    let d = w.delta().await;
    // A copy tool that stopped half-way: half a file under the final name.
    let path = tmp.path().join(&d.file);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = replica.sync().await.unwrap_err();
    assert!(err.to_string().contains(&d.file), "{err}");
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq]);
    let opens = store.opens.load(Ordering::SeqCst);
    assert!(replica.sync().await.is_err());
    assert!(replica.sync().await.is_err());
    assert_eq!(store.opens.load(Ordering::SeqCst), opens, "not read again");
    // The whole file replaces it: read again, applied.
    std::fs::write(&path, &bytes).unwrap();
    replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&d.seq]);
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn a_replica_of_an_empty_store_fills_in_when_the_first_full_backup_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    assert!(replica.status().cut.is_none());
    assert!(replica.db().table_names().is_empty());
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 10);
    let full = w.full().await;
    replica.sync().await.unwrap();
    assert_eq!(table_map(replica.db()), w.cuts[&full.seq]);
    assert_eq!(replica.status().cut.unwrap().file, full.file);
    w.manager.stop().await.unwrap();
}

#[tokio::test]
async fn promotion_continues_the_chain_with_a_delta_that_restore_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let config = || {
        BackupConfig::new(tmp.path())
            .incremental(true)
            .backup_interval(Duration::from_secs(3600))
    };
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 10);
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    w.insert(20, 1);
    w.delta().await;

    // While the writer holds the store, promotion is refused and the
    // replica goes on following.
    assert!(matches!(
        replica.promote(config()).await,
        Err(Error::Locked { .. })
    ));
    w.insert(30, 1);
    let last = w.delta().await;
    w.manager.stop().await.unwrap();

    // Promotion catches up first: the delta it had not polled yet.
    let promoted = replica.promote(config()).await.unwrap();
    assert!(!replica.status().running);
    assert_eq!(table_map(&promoted.db), w.cuts[&last.seq]);
    assert!(!promoted.db.is_read_only());
    let restored = promoted.restored.as_ref().unwrap();
    assert_eq!(restored.applied.len(), 3);
    assert_eq!(promoted.manager.deltas_since_full(), 2);
    promoted
        .db
        .table("users")
        .unwrap()
        .insert(json!({"name": "after promotion"}))
        .unwrap();
    let next = promoted.manager.backup_now().await.unwrap();
    let info = next.info().unwrap();
    assert_eq!(info.kind, BackupKind::Delta);
    assert_eq!(info.from_seq, Some(last.seq));
    promoted.manager.stop().await.unwrap();
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(table_map(&r.db), table_map(&promoted.db));
    assert_eq!(r.applied.len(), 4);
    // The replica's database is the one promoted.
    assert!(!replica.db().is_read_only());
}

#[tokio::test]
async fn promotion_is_refused_while_the_replica_cannot_reach_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    w.full().await;
    let replica = Replica::follow(local(tmp.path()), quiet()).await.unwrap();
    w.insert(10, 3);
    let d = w.delta().await;
    w.manager.stop().await.unwrap();
    flip_middle_byte(&tmp.path().join(&d.file));
    let config = BackupConfig::new(tmp.path()).incremental(true);
    let err = replica.promote(config).await.unwrap_err();
    assert!(err.to_string().contains(&d.file), "{err}");
    assert!(replica.db().is_read_only());
    assert!(replica.status().running, "still following");
    // The lock was given back.
    let other = BackupManager::start(
        &DictDB::new(),
        BackupConfig::new(tmp.path()).allow_store_ahead(true),
    )
    .await
    .unwrap();
    other.stop().await.unwrap();
    // Another store than the one followed is refused.
    let elsewhere = tempfile::tempdir().unwrap();
    let err = replica
        .promote(BackupConfig::new(elsewhere.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Yields until `cond` holds, without moving paused time (the follower
/// runs on this thread; the store's file-system calls on the blocking pool,
/// in real time).
async fn until(cond: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(100));
    }
    panic!("condition never held");
}

#[tokio::test]
async fn polls_once_per_interval_on_paused_time_with_one_listing_each() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    w.full().await;
    let store = ReaderStore::new(tmp.path());
    assert_eq!(
        ReplicaOptions::default().poll_interval(),
        Duration::from_secs(1)
    );
    let replica = Replica::follow(store.clone(), ReplicaOptions::default())
        .await
        .unwrap();
    tokio::time::pause();
    let lists = store.lists.load(Ordering::SeqCst);
    let (opens, ranges) = (
        store.opens.load(Ordering::SeqCst),
        store.ranges.load(Ordering::SeqCst),
    );
    let due = replica.status().next_poll_in.unwrap();
    assert!(
        due <= Duration::from_secs(1) && due > Duration::from_millis(500),
        "{due:?}"
    );
    tokio::time::advance(due - Duration::from_millis(1)).await;
    common::settle().await;
    assert_eq!(store.lists.load(Ordering::SeqCst), lists, "not yet");
    // (Timers fire on whole milliseconds, rounded up.)
    tokio::time::advance(Duration::from_millis(2)).await;
    until(|| store.lists.load(Ordering::SeqCst) == lists + 1).await;
    // Nothing new: a listing, no read of any file.
    until(|| replica.status().polls >= 2).await;
    assert_eq!(store.opens.load(Ordering::SeqCst), opens);
    assert_eq!(store.ranges.load(Ordering::SeqCst), ranges);
    for n in 2..5 {
        let due = replica.status().next_poll_in.unwrap();
        assert!(due > Duration::from_millis(990), "{due:?}");
        tokio::time::advance(due - Duration::from_millis(5)).await;
        common::settle().await;
        assert_eq!(store.lists.load(Ordering::SeqCst), lists + n - 1);
        tokio::time::advance(Duration::from_millis(6)).await;
        until(|| replica.status().polls == n as u64 + 1).await;
        assert_eq!(store.lists.load(Ordering::SeqCst), lists + n);
    }
    tokio::time::resume();
    w.manager.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_on_the_real_clock_with_a_short_interval() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = Writer::start(tmp.path()).await;
    w.insert(1, 3);
    w.full().await;
    let replica = Replica::follow(
        local(tmp.path()),
        ReplicaOptions::default().interval(Duration::from_millis(20)),
    )
    .await
    .unwrap();
    for round in 0..5 {
        w.insert(100 + round * 10, 2);
        let d = w.delta().await;
        let started = std::time::Instant::now();
        let mut events = replica.events();
        // Within a few intervals, without asking.
        while replica.db().seq() < d.seq {
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                tokio_stream::StreamExt::next(&mut events),
            )
            .await;
            assert!(started.elapsed() < Duration::from_secs(5), "round {round}");
        }
        assert_eq!(table_map(replica.db()), w.cuts[&d.seq]);
    }
    w.manager.stop().await.unwrap();
}
