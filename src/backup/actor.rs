//! The actor task: the only writer of backup files.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant as WallInstant;

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tracing::{error, info, warn, Instrument};

use super::config::BackupConfig;
use super::debounce::Debounce;
use super::pending::Pending;
use super::{retention, BackupEvent, BackupInfo, BackupOutcome, Command, Request, Shared};
use crate::db::{DictDB, Mutation, Snapshot};
use crate::error::{Error, Result};
use crate::format::transform::Sealer;
use crate::format::{self, Doc, FileFormat, Link, Sealing};
use crate::naming::{BackupKind, BackupName, Namer};
use crate::store::BackupStore;

/// Events drained per turn at most, so commands and timers are never starved
/// by a writer that never pauses.
const DRAIN_BATCH: usize = 4096;

/// A batch this large means writers are busy: see [`Actor::on_mutations`].
const BUSY_BATCH: usize = 16;

/// How long the actor leaves events to queue up when writers are busy.
const FOLD_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

pub(crate) struct Actor {
    db: DictDB,
    store: Arc<dyn BackupStore>,
    config: BackupConfig,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    mutations: broadcast::Receiver<Mutation>,
    /// Changes after the last successful backup's cut.
    pending: Pending,
    /// An event read past a cut while draining, for the next window.
    carry: Option<Mutation>,
    /// Events are left to queue until then (writers are busy).
    fold_pause: Option<Instant>,
    debounce: Debounce,
    namer: Namer,
    /// The full backup the current chain of deltas builds on.
    base: Option<String>,
    /// Why the next backup must be full, when it must.
    force_full: Option<&'static str>,
    next_periodic: Instant,
    deltas_since_full: u32,
    consecutive_failures: u32,
}

impl Actor {
    pub(crate) fn new(
        db: DictDB,
        store: Arc<dyn BackupStore>,
        config: BackupConfig,
        rx: mpsc::Receiver<Command>,
        shared: Arc<Shared>,
    ) -> Actor {
        // Subscribe and read the sequence number under the database lock, so
        // the first window starts exactly where the stream does.
        let (seq, mutations) = {
            let st = db.lock();
            (st.seq, db.subscribe())
        };
        Actor {
            next_periodic: Instant::now() + config.backup_interval,
            debounce: Debounce::new(config.min_backup_interval),
            db,
            store,
            config,
            rx,
            shared,
            mutations,
            pending: Pending::new(seq),
            carry: None,
            fold_pause: None,
            namer: Namer::default(),
            base: None,
            force_full: None,
            deltas_since_full: 0,
            consecutive_failures: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        // New names must sort after every file already there, whatever the
        // wall clock says.
        if let Ok(files) = self.store.list().await {
            for f in files {
                if let Some(n) = BackupName::parse(&f.name) {
                    self.namer.observe(n.stamp());
                }
            }
        }
        // A process killed while writing leaves its temporary file behind.
        match self.store.remove_leftovers().await {
            Ok(removed) if !removed.is_empty() => {
                info!(
                    files = removed.len(),
                    "removed temporary files left by a crashed writer"
                );
            }
            Ok(_) => {}
            Err(e) => warn!(cause = %e, "could not look for leftover temporary files"),
        }
        let mut stop_reply: Option<oneshot::Sender<()>> = None;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                cmd = self.rx.recv() => match cmd {
                    // Every handle is gone.
                    None => break,
                    Some(Command::Stop { reply }) => {
                        stop_reply = Some(reply);
                        break;
                    }
                    Some(Command::Backup { request, reply }) => {
                        let result = self.backup(request).await;
                        let _ = reply.send(result);
                    }
                },
                () = self.shared.notify.notified() => self.debounce.notify(),
                () = sleep_until(deadline) => self.on_timer().await,
                () = Self::fold_pause_end(self.fold_pause), if self.fold_pause.is_some() => self.fold_pause = None,
                first = self.mutations.recv(), if self.fold_pause.is_none() => self.on_mutations(first),
            }
        }
        info!(store = %self.store.location(), "backup manager stopped");
        drop(self);
        if let Some(reply) = stop_reply {
            let _ = reply.send(());
        }
    }

    fn next_deadline(&self) -> Instant {
        match self.debounce.deadline() {
            Some(d) if d < self.next_periodic => d,
            _ => self.next_periodic,
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.next_periodic <= now {
            while self.next_periodic <= now {
                self.next_periodic += self.config.backup_interval;
            }
        } else if self.debounce.deadline().is_none_or(|d| d > now) {
            return;
        }
        // Errors are reported through the event stream and the callback.
        let _ = self.backup(Request::Now).await;
    }

    /// Folds the event just received and every one already waiting; when
    /// writers are busy, pauses receiving for [`FOLD_PAUSE`].
    ///
    /// Waking per event would cost every writer a wakeup of this task, and a
    /// receiver that keeps catching up takes the channel's internal lock over
    /// and over; when the scheduler preempted it there, writers stalled
    /// behind that lock for a whole time slice (measured: 3 to 12 ms). In
    /// bursts, the writers run alone while events queue up in the channel
    /// (65,536 slots by default: far more than a millisecond's worth).
    fn on_mutations(&mut self, first: std::result::Result<Mutation, RecvError>) {
        match first {
            Ok(m) => self.pending.fold(m),
            Err(RecvError::Lagged(n)) => self.lagged(n),
            Err(RecvError::Closed) => return,
        }
        let mut folded = 1;
        let mut emptied = false;
        while folded < DRAIN_BATCH {
            match self.mutations.try_recv() {
                Ok(m) => self.pending.fold(m),
                Err(TryRecvError::Lagged(n)) => self.lagged(n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => {
                    emptied = true;
                    break;
                }
            }
            folded += 1;
        }
        // Pause only once caught up: a channel still full of events is
        // drained without pause, so a pause never makes the actor lag.
        if emptied && folded >= BUSY_BATCH {
            self.fold_pause = Some(Instant::now() + FOLD_PAUSE);
        }
    }

    /// Sleeps until the fold pause ends (forever when there is none: the
    /// branch is then disabled).
    async fn fold_pause_end(pause: Option<Instant>) {
        match pause {
            Some(t) => sleep_until(t).await,
            None => std::future::pending().await,
        }
    }

    fn lagged(&mut self, missed: u64) {
        warn!(
            missed,
            "mutation stream lagged; the next backup will be full"
        );
        self.pending.mark_incomplete();
        let _ = self.shared.events.send(BackupEvent::Lagged { missed });
    }

    /// Folds every event up to the cut `seq`. All of them are already in the
    /// channel: events are sent under the lock the snapshot was taken under.
    fn drain_to(&mut self, seq: u64) {
        if let Some(m) = self.carry.take() {
            if m.seq <= seq {
                self.pending.fold(m);
            } else {
                self.carry = Some(m);
                return;
            }
        }
        while self.pending.last_seq < seq {
            match self.mutations.try_recv() {
                Ok(m) if m.seq > seq => {
                    // Events up to the cut went missing: the window is
                    // incomplete, and this one belongs to the next window.
                    self.pending.mark_incomplete();
                    self.carry = Some(m);
                    break;
                }
                Ok(m) => self.pending.fold(m),
                Err(TryRecvError::Lagged(n)) => self.lagged(n),
                Err(TryRecvError::Empty | TryRecvError::Closed) => {
                    self.pending.mark_incomplete();
                    break;
                }
            }
        }
    }

    /// Why a delta cannot be exact right now, if it cannot.
    fn full_reason(&self) -> Option<&'static str> {
        if self.base.is_none() {
            Some("no full backup written by this manager yet")
        } else if !self.pending.complete {
            Some("mutation events were missed since the last backup")
        } else {
            self.force_full
        }
    }

    async fn backup(&mut self, request: Request) -> Result<BackupOutcome> {
        let had_notification = self.debounce.is_pending();
        self.debounce.backup_started(Instant::now());
        let mut kind = match request {
            Request::Full => BackupKind::Full,
            Request::Delta => BackupKind::Delta,
            Request::Now
                if self.config.incremental
                    && self.deltas_since_full < self.config.max_deltas_before_full =>
            {
                BackupKind::Delta
            }
            Request::Now => BackupKind::Full,
        };
        let started = WallInstant::now();
        let snapshot = self.db.snapshot();
        self.drain_to(snapshot.seq());
        if kind == BackupKind::Delta {
            if let Some(reason) = self.full_reason() {
                info!(reason, "writing a full backup instead of a delta");
                let _ = self
                    .shared
                    .events
                    .send(BackupEvent::FullInsteadOfDelta { reason });
                kind = BackupKind::Full;
            } else if self.pending.is_empty() {
                return Ok(BackupOutcome::Skipped);
            }
        }
        let result = self.write(kind, snapshot, started).await;
        match result {
            Ok(info) => {
                self.succeeded(&info).await;
                Ok(BackupOutcome::Written(info))
            }
            Err(err) => {
                self.failed(kind, &err, had_notification);
                Err(err)
            }
        }
    }

    /// Writes one file while folding the events that keep arriving into a
    /// fresh window; on failure the two windows are merged back.
    async fn write(
        &mut self,
        kind: BackupKind,
        snapshot: Snapshot,
        started: WallInstant,
    ) -> Result<BackupInfo> {
        let seq = snapshot.seq();
        let old = Arc::new(std::mem::replace(&mut self.pending, Pending::new(seq)));
        if let Some(m) = self.carry.take() {
            self.pending.fold(m);
        }
        let format = self.config.file_format;
        let name = self
            .namer
            .next(kind, format, self.config.sealing.layers())
            .to_string();
        let from_seq = (kind == BackupKind::Delta).then_some(old.base_seq);
        let job = Job {
            db: self.db.clone(),
            kind,
            format,
            snapshot,
            window: Arc::clone(&old),
            base: self.base.clone(),
            sealing: self.config.sealing.clone(),
        };
        let store = Arc::clone(&self.store);
        let span = tracing::info_span!("backup", %kind, file = %name, seq);
        let fut = write_job(store, name.clone(), job).instrument(span);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                biased;
                r = &mut fut => break r,
                () = Self::fold_pause_end(self.fold_pause), if self.fold_pause.is_some() => self.fold_pause = None,
                first = self.mutations.recv(), if self.fold_pause.is_none() => self.on_mutations(first),
            }
        };
        match result {
            Ok((records, bytes, checksum)) => Ok(BackupInfo {
                kind,
                file: name,
                seq,
                from_seq,
                records,
                bytes,
                duration: started.elapsed(),
                checksum,
            }),
            Err(e) => {
                let newer = std::mem::replace(&mut self.pending, Arc::unwrap_or_clone(old));
                self.pending.absorb(newer);
                Err(e)
            }
        }
    }

    async fn succeeded(&mut self, info: &BackupInfo) {
        self.consecutive_failures = 0;
        match info.kind {
            BackupKind::Full => {
                self.deltas_since_full = 0;
                self.base = Some(info.file.clone());
                self.force_full = None;
            }
            BackupKind::Delta => self.deltas_since_full += 1,
        }
        self.shared.consecutive_failures.store(0, Ordering::Relaxed);
        self.shared
            .deltas_since_full
            .store(self.deltas_since_full, Ordering::Relaxed);
        info!(
            kind = %info.kind,
            file = %info.file,
            seq = info.seq,
            records = info.records,
            bytes = info.bytes,
            elapsed_ms = info.duration.as_secs_f64() * 1e3,
            "backup written"
        );
        let _ = self
            .shared
            .events
            .send(BackupEvent::Completed(info.clone()));
        if info.kind == BackupKind::Full {
            if let Some(policy) = &self.config.retention {
                // The wall clock is read here, never inside retention.
                let now = std::time::SystemTime::now();
                retention::prune(&*self.store, policy, now, &self.shared.events).await;
            }
        }
    }

    fn failed(&mut self, kind: BackupKind, err: &Error, had_notification: bool) {
        self.consecutive_failures += 1;
        let n = self.consecutive_failures;
        self.shared.consecutive_failures.store(n, Ordering::Relaxed);
        if err.is_durability_unknown() {
            // A file that may or may not exist cannot be built on: the next
            // backup starts a new chain.
            self.force_full =
                Some("the last backup's commit failed, so whether its file exists is unknown");
        }
        self.debounce.backup_failed(had_notification);
        error!(%kind, cause = %err, consecutive_failures = n, "backup failed");
        if let Some(cb) = &self.config.on_backup_failure {
            if catch_unwind(AssertUnwindSafe(|| cb(err, n))).is_err() {
                error!("the backup failure callback panicked");
            }
        }
        let _ = self.shared.events.send(BackupEvent::Failed {
            kind,
            error: err.clone(),
            consecutive_failures: n,
        });
    }
}

/// Everything needed to serialise one file, owned so it can move to the
/// blocking pool.
struct Job {
    /// Watched while serialising, to give way to active writers.
    db: DictDB,
    kind: BackupKind,
    format: FileFormat,
    snapshot: Snapshot,
    window: Arc<Pending>,
    base: Option<String>,
    /// Compression and encryption.
    sealing: Sealing,
}

/// Runs `f` on a thread of its own at a lower CPU priority (nice 10 on
/// Linux) and waits for it from tokio's blocking pool.
///
/// Serialising a large snapshot keeps a core busy for a while; at a lower
/// priority it yields that core to the service's own threads whenever they
/// want it, so writers do not stall behind a backup (the backup takes longer
/// on a saturated machine instead). The thread is waited for from the
/// blocking pool, which keeps paused-time tests exact (tokio does not move a
/// paused clock while a blocking task runs), and it exits when done, so no
/// pool thread is ever left with a changed priority.
fn background<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> impl std::future::Future<Output = Result<T>> {
    let path = name.to_string();
    // Started now, not when first polled: the caller drains its output
    // before awaiting the result.
    let handle = tokio::task::spawn_blocking(move || {
        let worker = std::thread::Builder::new()
            .name("dictdb-backup".into())
            .spawn(move || {
                lower_priority();
                f()
            })
            .map_err(|e| format!("cannot start the serialisation thread: {e}"))?;
        worker
            .join()
            .map_err(|_| "the serialisation thread panicked".to_string())
    });
    async move {
        let failed = |message: String| Error::Store {
            path: path.clone(),
            message,
        };
        handle
            .await
            .map_err(|e| failed(format!("serialisation task failed: {e}")))?
            .map_err(failed)
    }
}

/// Gives way to the service's writers while a backup serialises.
///
/// On a machine with few cores, a serialiser that keeps one core busy leaves
/// every other wakeup (timers, the runtime, the kernel) to preempt the
/// writers on the other core, for a scheduler tick at a time: measured here,
/// writer stalls of 3 to 8 ms. So after each chunk, if any change committed
/// since the last one, the serialiser sleeps for half the time it just
/// worked (a 2/3 duty cycle), leaving idle gaps for those wakeups. Measured:
/// no writer stall above 1 ms. With no writer active it never sleeps, so an
/// idle service gets its backups at full speed.
struct Pacer<'a> {
    db: &'a DictDB,
    seen: u64,
    since: std::time::Instant,
}

impl<'a> Pacer<'a> {
    fn new(db: &'a DictDB) -> Self {
        Pacer {
            db,
            seen: db.activity(),
            since: std::time::Instant::now(),
        }
    }

    fn pause_if_writers_active(&mut self) {
        let now = self.db.activity();
        if now != self.seen {
            let worked = self.since.elapsed();
            std::thread::sleep((worked / 2).min(std::time::Duration::from_millis(5)));
            self.seen = now;
        }
        self.since = std::time::Instant::now();
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and has no memory-safety
    // preconditions. On Linux, PRIO_PROCESS with `who` 0 applies to the
    // calling thread only. Failure leaves the priority unchanged, which is
    // harmless.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Serialises on a low-priority thread and streams the chunks to the store.
/// Returns (records or changes, bytes, checksum).
async fn write_job(
    store: Arc<dyn BackupStore>,
    name: String,
    job: Job,
) -> Result<(u64, u64, String)> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let target = name.clone();
    let producer = background(&name, move || -> Result<(u64, u64, String)> {
        let mut pacer = Pacer::new(&job.db);
        // Compression and encryption run here, on the serialiser's thread,
        // as streams: only their output goes to the store.
        let send = |chunk: Vec<u8>| {
            tx.blocking_send(chunk).map_err(|_| Error::Store {
                path: target.clone(),
                message: "the store writer stopped".into(),
            })
        };
        let mut sealer = Sealer::new(&job.sealing, &target, send)?;
        let mut emit = |chunk: Vec<u8>| {
            sealer.write(chunk)?;
            pacer.pause_if_writers_active();
            Ok(())
        };
        let written = match job.kind {
            BackupKind::Full => format::encode(
                job.format,
                &Doc::Full {
                    snapshot: &job.snapshot,
                    name: Some(&target),
                },
                &mut emit,
            )?,
            BackupKind::Delta => {
                let changes = job.window.to_changes(&job.snapshot);
                let link = Link {
                    from_seq: job.window.base_seq,
                    seq: job.snapshot.seq(),
                    base: job.base.clone().unwrap_or_default(),
                    timestamp: BackupName::parse(&target).map_or(0.0, |n| n.timestamp()),
                };
                format::encode(
                    job.format,
                    &Doc::Delta {
                        changes: &changes,
                        link: &link,
                        name: &target,
                    },
                    &mut emit,
                )?
            }
        };
        let stored = sealer.finish()?;
        tracing::debug!(
            document_bytes = written.bytes,
            stored_bytes = stored,
            "serialised"
        );
        Ok((written.records, stored, written.checksum))
    });
    let mut writer = match store.create(&name).await {
        Ok(w) => w,
        Err(e) => {
            drop(rx);
            let _ = producer.await;
            return Err(e);
        }
    };
    let mut write_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.write(chunk).await {
            write_error = Some(e);
            break;
        }
    }
    // Unblocks the producer if the store failed first.
    drop(rx);
    let produced = producer.await;
    let produced = match (write_error, produced) {
        (Some(e), _) | (None, Err(e)) | (None, Ok(Err(e))) => {
            writer.abort().await;
            return Err(e);
        }
        (None, Ok(Ok(p))) => p,
    };
    writer.commit().await.map_err(|e| {
        // The store may have made the file durable and visible before the
        // error reached us (an object store answer lost on the way back).
        Error::CommitUncertain(Box::new(e))
    })?;
    Ok(produced)
}
