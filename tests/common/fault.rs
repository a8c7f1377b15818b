//! A backup store that fails on demand, wrapping a real directory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dictdb::store::{BackupStore, BackupWriter, LocalStore, StoredFile, WriterLock};
use dictdb::{Error, Result};
use tokio::sync::Semaphore;

/// Which operation fails next.
#[derive(Debug, Default)]
pub struct Faults {
    /// `create` fails.
    pub create: AtomicBool,
    /// A `write` fails once this many bytes have been accepted in one file
    /// (`u64::MAX`: never). Models an I/O error mid-file or a full disk.
    pub write_after: AtomicU64,
    /// `commit` fails before anything is renamed (like a failed fsync).
    pub fsync: AtomicBool,
    /// `commit` fails at the rename step.
    pub rename: AtomicBool,
    /// `delete` fails.
    pub delete: AtomicBool,
    /// `create` panics (a buggy store: kills the actor).
    pub panic: AtomicBool,
    /// `stat` fails.
    pub stat: AtomicBool,
    /// `stat` calls so far.
    pub stats: AtomicUsize,
    /// Writers committed so far.
    pub commits: AtomicUsize,
    /// Writers created so far.
    pub creates: AtomicUsize,
    /// `create` calls that reached the gate (waiting or through).
    pub at_gate: AtomicUsize,
}

/// A store over a directory whose operations can be made to fail, and whose
/// `create` can be held until the test releases it.
#[derive(Debug, Clone)]
pub struct FaultyStore {
    inner: LocalStore,
    pub faults: Arc<Faults>,
    /// When set, `create` waits for a permit (one per file).
    pub gate: Option<Arc<Semaphore>>,
}

impl FaultyStore {
    pub fn new(dir: &Path) -> FaultyStore {
        let faults = Faults::default();
        faults.write_after.store(u64::MAX, Ordering::SeqCst);
        FaultyStore {
            inner: LocalStore::open(dir).unwrap(),
            faults: Arc::new(faults),
            gate: None,
        }
    }

    pub fn gated(dir: &Path) -> (FaultyStore, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let mut s = FaultyStore::new(dir);
        s.gate = Some(Arc::clone(&gate));
        (s, gate)
    }

    pub fn heal(&self) {
        let f = &self.faults;
        f.create.store(false, Ordering::SeqCst);
        f.write_after.store(u64::MAX, Ordering::SeqCst);
        f.fsync.store(false, Ordering::SeqCst);
        f.rename.store(false, Ordering::SeqCst);
        f.delete.store(false, Ordering::SeqCst);
        f.stat.store(false, Ordering::SeqCst);
    }
}

fn injected(path: &str, what: &str) -> Error {
    Error::Store {
        path: path.to_string(),
        message: format!("injected fault: {what}"),
    }
}

struct FaultyWriter {
    name: String,
    inner: Box<dyn BackupWriter>,
    faults: Arc<Faults>,
    written: u64,
}

#[async_trait]
impl BackupWriter for FaultyWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        let limit = self.faults.write_after.load(Ordering::SeqCst);
        if self.written + chunk.len() as u64 > limit {
            // Accept what fits, then fail like a disk that filled up.
            let fits = limit.saturating_sub(self.written) as usize;
            if fits > 0 {
                self.inner.write(chunk[..fits].to_vec()).await?;
                self.written += fits as u64;
            }
            return Err(Error::Io {
                path: self.name.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    "no space left on device (injected)",
                ),
            });
        }
        self.written += chunk.len() as u64;
        self.inner.write(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        if self.faults.fsync.load(Ordering::SeqCst) {
            self.inner.abort().await;
            return Err(Error::Sync {
                path: self.name.clone(),
                source: std::io::Error::other("fsync failed (injected)"),
            });
        }
        if self.faults.rename.load(Ordering::SeqCst) {
            self.inner.abort().await;
            return Err(injected(&self.name, "rename"));
        }
        self.faults.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit().await
    }

    async fn abort(self: Box<Self>) {
        self.inner.abort().await;
    }
}

#[async_trait]
impl BackupStore for FaultyStore {
    fn location(&self) -> String {
        format!("faulty:{}", self.inner.location())
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        self.inner.list().await
    }

    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        if let Some(gate) = &self.gate {
            self.faults.at_gate.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await.expect("gate closed").forget();
        }
        self.faults.creates.fetch_add(1, Ordering::SeqCst);
        if self.faults.panic.load(Ordering::SeqCst) {
            panic!("injected panic in create");
        }
        if self.faults.create.load(Ordering::SeqCst) {
            return Err(injected(name, "create"));
        }
        let inner = self.inner.create(name).await?;
        Ok(Box::new(FaultyWriter {
            name: name.to_string(),
            inner,
            faults: Arc::clone(&self.faults),
            written: 0,
        }))
    }

    async fn open(&self, name: &str) -> Result<dictdb::store::FileReader> {
        self.inner.open(name).await
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.inner.read_range(name, range).await
    }

    async fn stat(&self, name: &str) -> Result<Option<StoredFile>> {
        self.faults.stats.fetch_add(1, Ordering::SeqCst);
        if self.faults.stat.load(Ordering::SeqCst) {
            return Err(injected(name, "stat"));
        }
        self.inner.stat(name).await
    }

    async fn lock_writer(&self) -> Result<Option<WriterLock>> {
        self.inner.lock_writer().await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        if self.faults.delete.load(Ordering::SeqCst) {
            return Err(injected(name, "delete"));
        }
        self.inner.delete(name).await
    }
}

/// A store whose `create` or `write` never answers (a server that accepts
/// connections and says nothing), over a real directory for everything else.
#[derive(Debug, Clone)]
pub struct HangingStore {
    inner: LocalStore,
    /// `create` hangs (otherwise `write` does).
    pub hang_create: bool,
    /// Writers aborted so far.
    pub aborts: Arc<AtomicUsize>,
}

impl HangingStore {
    pub fn new(dir: &Path, hang_create: bool) -> HangingStore {
        HangingStore {
            inner: LocalStore::open(dir).unwrap(),
            hang_create,
            aborts: Arc::new(AtomicUsize::new(0)),
        }
    }
}

struct HangingWriter {
    aborts: Arc<AtomicUsize>,
}

#[async_trait]
impl BackupWriter for HangingWriter {
    async fn write(&mut self, _chunk: Vec<u8>) -> Result<()> {
        std::future::pending().await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        std::future::pending().await
    }

    async fn abort(self: Box<Self>) {
        self.aborts.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl BackupStore for HangingStore {
    fn location(&self) -> String {
        format!("hanging:{}", self.inner.location())
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        self.inner.list().await
    }

    async fn create(&self, _name: &str) -> Result<Box<dyn BackupWriter>> {
        if self.hang_create {
            std::future::pending::<()>().await;
        }
        Ok(Box::new(HangingWriter {
            aborts: Arc::clone(&self.aborts),
        }))
    }

    async fn open(&self, name: &str) -> Result<dictdb::store::FileReader> {
        self.inner.open(name).await
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        self.inner.read_range(name, range).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }
}
