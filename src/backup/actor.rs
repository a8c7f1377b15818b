//! The actor task: the only writer of backup files.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Instant as WallInstant, SystemTime};

use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn, Instrument};

use super::config::BackupConfig;
use super::pending::Pending;
use super::schedule::Schedule;
use super::status::{LastBackup, LastFailure};
use super::{
    retention, telemetry, BackupEvent, BackupInfo, BackupOutcome, Command, Deadline, Request,
    Resume, Shared,
};
use crate::db::{DictDB, Mutation, Snapshot};
use crate::error::{Error, Result};
use crate::format::transform::Sealer;
use crate::format::{self, Doc, FileFormat, Link, Sealing};
use crate::naming::{BackupKind, BackupName, Namer};
use crate::store::{BackupStore, WriterLock};

/// Events drained per turn at most, so commands and timers are never starved
/// by a writer that never pauses.
const DRAIN_BATCH: usize = 4096;

/// A batch this large means writers are busy: see [`Actor::on_mutations`].
const BUSY_BATCH: usize = 16;

/// How long the actor leaves events to queue up when writers are busy.
const FOLD_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// Everything the actor is made of, handed over by `BackupManager`.
pub(crate) struct Parts {
    pub(crate) db: DictDB,
    pub(crate) store: Arc<dyn BackupStore>,
    pub(crate) config: BackupConfig,
    pub(crate) rx: mpsc::Receiver<Command>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) events: broadcast::Sender<BackupEvent>,
    pub(crate) deadline: watch::Receiver<Deadline>,
    pub(crate) lock: Option<WriterLock>,
    pub(crate) resume: Option<Resume>,
}

pub(crate) struct Actor {
    db: DictDB,
    store: Arc<dyn BackupStore>,
    config: BackupConfig,
    rx: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
    /// Held for the actor's lifetime: one writer per store. Declared
    /// before `events` so it is released before subscribers see the end.
    lock: Option<WriterLock>,
    /// The only strong sender: the event stream ends with the actor.
    events: broadcast::Sender<BackupEvent>,
    /// The shutdown deadline, once `shutdown` sets one.
    deadline: watch::Receiver<Deadline>,
    mutations: broadcast::Receiver<Mutation>,
    /// Changes after the last successful backup's cut.
    pending: Pending,
    /// Changes of the window being written, while a backup is in flight.
    in_flight_changes: u64,
    /// An event read past a cut while draining, for the next window.
    carry: Option<Mutation>,
    /// Events are left to queue until then (writers are busy).
    fold_pause: Option<Instant>,
    schedule: Schedule,
    namer: Namer,
    /// The full backup the current chain of deltas builds on.
    base: Option<String>,
    /// The cut of the last successful backup (`pending` starts there). When
    /// mutation events were missed, the next delta is this snapshot's
    /// structural diff against the new cut instead of a full backup: it
    /// shares its persistent maps with the live database, so keeping it
    /// costs only what changed since (the old versions of changed records
    /// and the tree paths to them).
    last_cut: Option<Snapshot>,
    /// Why the next backup must be full, when it must.
    force_full: Option<&'static str>,
    deltas_since_full: u32,
    consecutive_failures: u32,
}

/// How the loop ended, and who to tell.
enum Ending {
    Stop(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<Result<BackupInfo>>, Result<BackupInfo>),
}

/// What one write produced.
enum Written {
    /// The file is durable.
    File(BackupInfo),
    /// The delta was not committed: its base is gone from the store (why).
    BaseGone(String),
}

impl Actor {
    pub(crate) fn new(parts: Parts) -> Actor {
        let Parts {
            db,
            store,
            config,
            rx,
            shared,
            events,
            deadline,
            lock,
            resume,
        } = parts;
        // Subscribe and read the sequence number under the database lock, so
        // the first window starts exactly where the stream does.
        let (seq, mutations) = {
            let st = db.lock();
            (st.seq, db.subscribe())
        };
        let schedule = Schedule::new(
            Instant::now(),
            config.backup_interval,
            config.min_backup_interval,
            config.retry_cap(),
            config.rules.clone(),
        );
        let (base, deltas_since_full) = match resume {
            Some(r) => (Some(r.base), r.deltas),
            None => (None, 0),
        };
        // A resumed manager starts at its chain's last cut: the database as
        // it stands now.
        let last_cut = base
            .as_ref()
            .map(|_| db.snapshot())
            .filter(|s| s.seq() == seq);
        // Before the task first runs, so `status()` is right at once.
        shared.status.set_chain(base.clone(), deltas_since_full);
        shared.status.set_schedule(schedule.deadline(0), None);
        Actor {
            schedule,
            db,
            store,
            config,
            rx,
            shared,
            events,
            deadline,
            lock,
            mutations,
            pending: Pending::new(seq),
            in_flight_changes: 0,
            carry: None,
            fold_pause: None,
            namer: Namer::default(),
            base,
            last_cut,
            force_full: None,
            deltas_since_full,
            consecutive_failures: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        // Marks the status as ended however the task ends, a panic included.
        let _ended = EndGuard(Arc::clone(&self.shared));
        // New names must sort after every file already there, whatever the
        // wall clock says. The listing runs while commands are taken: a stop
        // or shutdown does not wait for a store that does not answer, and a
        // backup asked for meanwhile waits for the listing (one request,
        // within the store's retry timeout) and fails with its error if it
        // failed, rather than wait once more on the same store. Names it
        // does not trust (a time outside 1970..2200, leading zeros) and keys
        // no plain name addresses are skipped and reported.
        let store = Arc::clone(&self.store);
        let startup = async move {
            let files = store.list_all().await;
            // A process killed while writing leaves its temporary file behind.
            let leftovers = store.remove_leftovers().await;
            (files, leftovers)
        };
        tokio::pin!(startup);
        let mut queued = Vec::new();
        let mut first = None;
        let started = loop {
            tokio::select! {
                biased;
                r = &mut startup => break Some(r),
                cmd = self.rx.recv() => match cmd {
                    Some(Command::Backup { request, reply }) => queued.push((request, reply)),
                    other => {
                        first = Some(other);
                        break None;
                    }
                },
            }
        };
        let mut unlisted = None;
        match started {
            Some((files, leftovers)) => {
                match files {
                    Ok(listing) => {
                        let listing = listing.refuse_untrusted_names();
                        for f in &listing.files {
                            if let Some(n) = BackupName::parse(&f.name) {
                                self.namer.observe(n.stamp());
                            }
                        }
                        if !listing.skipped.is_empty() {
                            warn!(
                                entries = listing.skipped.len(),
                                first = %listing.skipped[0],
                                "the backup store holds entries that are not backup files; they are skipped"
                            );
                            self.shared.status.set_skipped(listing.skipped.clone());
                            let _ = self.events.send(BackupEvent::EntriesSkipped {
                                entries: listing.skipped,
                            });
                        }
                    }
                    Err(e) => {
                        warn!(cause = %e, "could not list the store at start");
                        unlisted = Some(e);
                    }
                }
                match leftovers {
                    Ok(removed) if !removed.is_empty() => {
                        info!(
                            files = removed.len(),
                            "removed temporary files left by a crashed writer"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => warn!(cause = %e, "could not look for leftover temporary files"),
                }
            }
            None => warn!("stopped before the store answered its first listing"),
        }
        for (request, reply) in queued {
            let result = match &unlisted {
                // The store did not answer: a failed backup, reported as
                // any other, without waiting on it a second time.
                Some(e @ Error::StoreUnavailable { .. }) => {
                    let kind = match request {
                        Request::Delta => BackupKind::Delta,
                        _ => BackupKind::Full,
                    };
                    self.failed(kind, e, false, false);
                    Err(e.clone())
                }
                _ => self.backup(request, false).await,
            };
            let _ = reply.send(result);
        }
        let mut ending = None;
        loop {
            let cmd = match first.take() {
                Some(cmd) => cmd,
                None => {
                    let deadline = self.schedule.deadline(self.pending.events);
                    self.shared
                        .status
                        .set_schedule(deadline, self.schedule.backing_off_until());
                    tokio::select! {
                        biased;
                        cmd = self.rx.recv() => cmd,
                        () = self.shared.notify.notified() => {
                            self.schedule.notify(Instant::now());
                            continue;
                        }
                        () = sleep_until(deadline) => {
                            self.on_timer().await;
                            continue;
                        }
                        () = Self::fold_pause_end(self.fold_pause), if self.fold_pause.is_some() => {
                            self.fold_pause = None;
                            continue;
                        }
                        first = self.mutations.recv(), if self.fold_pause.is_none() => {
                            self.on_mutations(first);
                            continue;
                        }
                    }
                }
            };
            match cmd {
                // Every handle is gone.
                None => break,
                Some(Command::Stop { reply }) => {
                    ending = Some(Ending::Stop(reply));
                    break;
                }
                Some(Command::Shutdown { reply }) => {
                    let result = self.final_backup().await;
                    ending = Some(Ending::Shutdown(reply, result));
                    break;
                }
                Some(Command::Backup { request, reply }) => {
                    let result = self.backup(request, false).await;
                    let _ = reply.send(result);
                }
            }
        }
        info!(store = %self.store.location(), "backup manager stopped");
        // An object store's lease is given up by a request: waited for, so
        // a writer started once this one is stopped finds the store free.
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        let shared = Arc::clone(&self.shared);
        // Releases the store lock and closes the event stream before anyone
        // is told the actor has ended.
        drop(self);
        shared.status.ended();
        match ending {
            Some(Ending::Stop(reply)) => {
                let _ = reply.send(());
            }
            Some(Ending::Shutdown(reply, result)) => {
                let _ = reply.send(result);
            }
            None => {}
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.schedule.fire(now, self.pending.events) {
            // Errors are reported through the event stream and the callback.
            let _ = self.backup(Request::Now, true).await;
        }
    }

    /// The final full backup of `shutdown`, unless its deadline has passed.
    async fn final_backup(&mut self) -> Result<BackupInfo> {
        let deadline = *self.deadline.borrow();
        if let Some((at, timeout)) = deadline {
            if Instant::now() >= at {
                return Err(Error::ShutdownDeadline {
                    timeout,
                    detail: "no time was left for the final full backup".into(),
                });
            }
        }
        match self.backup(Request::Full, false).await? {
            BackupOutcome::Written(info) => Ok(info),
            BackupOutcome::Skipped => Err(Error::ManagerStopped),
        }
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
        self.publish_pending();
    }

    /// Changes no completed file holds, for `status()` and the gauge.
    fn publish_pending(&self) {
        let n = self.pending.events + self.in_flight_changes;
        self.shared.status.set_pending(n);
        telemetry::pending(n);
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
            "mutation stream lagged; the next delta compares the last cut with the new one"
        );
        self.pending.mark_incomplete();
        let _ = self.events.send(BackupEvent::Lagged { missed });
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
        } else if self.force_full.is_some() {
            self.force_full
        } else if !self.pending.complete && self.diff_base().is_none() {
            Some("mutation events were missed since the last backup")
        } else {
            None
        }
    }

    /// The last cut to compare the new one with, when events were missed
    /// and the window cannot say what changed.
    fn diff_base(&self) -> Option<&Snapshot> {
        self.last_cut
            .as_ref()
            .filter(|cut| !self.pending.complete && cut.seq() == self.pending.base_seq)
    }

    /// A delta was due, a full backup is written instead.
    fn full_instead(&mut self, reason: String) {
        if self.base.is_none() {
            debug!(%reason, "writing a full backup instead of a delta");
        } else {
            warn!(%reason, "writing a full backup instead of a delta");
        }
        let _ = self.events.send(BackupEvent::FullInsteadOfDelta { reason });
    }

    /// One backup. `automatic`: the schedule asked for it (not a caller).
    async fn backup(&mut self, request: Request, automatic: bool) -> Result<BackupOutcome> {
        let now = Instant::now();
        let had_notification = self.schedule.notification_pending();
        self.schedule.started(now);
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
        let mut snapshot = self.db.snapshot();
        self.drain_to(snapshot.seq());
        if kind == BackupKind::Delta {
            if let Some(reason) = self.full_reason() {
                self.full_instead(reason.to_string());
                kind = BackupKind::Full;
            } else if self.pending.is_empty() {
                return Ok(BackupOutcome::Skipped);
            }
        }
        self.shared.status.set_in_flight(true);
        let result = loop {
            let diff_from = match kind {
                BackupKind::Delta => self.diff_base().cloned(),
                BackupKind::Full => None,
            };
            if diff_from.is_some() {
                debug!("events were missed: the delta compares the last cut with this one");
            }
            match self.write(kind, snapshot.clone(), started, diff_from).await {
                Ok(Written::File(info)) => {
                    // The previous cut owns every tree node the changes
                    // since copied: freeing them touches each record of
                    // every changed leaf, a cost that grows with the table.
                    // The caller waits for none of it.
                    if let Some(previous) = self.last_cut.replace(snapshot) {
                        crate::db::reclaim::later(previous);
                    }
                    break Ok(info);
                }
                // The delta's base is gone from the store (checked before
                // the first byte and again before the commit).
                Ok(Written::BaseGone(reason)) => {
                    self.base = None;
                    self.full_instead(reason);
                    kind = BackupKind::Full;
                    snapshot = self.db.snapshot();
                    self.drain_to(snapshot.seq());
                }
                Err(err) => break Err(err),
            }
        };
        self.shared.status.set_in_flight(false);
        self.publish_pending();
        match result {
            Ok(info) => {
                self.succeeded(&info, now).await;
                Ok(BackupOutcome::Written(info))
            }
            Err(err) => {
                self.failed(kind, &err, automatic, had_notification);
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
        diff_from: Option<Snapshot>,
    ) -> Result<Written> {
        let seq = snapshot.seq();
        let old = Arc::new(std::mem::replace(&mut self.pending, Pending::new(seq)));
        if let Some(m) = self.carry.take() {
            self.pending.fold(m);
        }
        self.in_flight_changes = old.events;
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
            diff_from,
            base: self.base.clone(),
            sealing: self.config.sealing.clone(),
            token: self.lock.as_ref().and_then(WriterLock::fencing_token),
        };
        let store = Arc::clone(&self.store);
        let span = tracing::info_span!("backup", %kind, file = %name, seq);
        let fut = write_job(store, name.clone(), job, self.deadline.clone()).instrument(span);
        tokio::pin!(fut);
        let result = loop {
            tokio::select! {
                biased;
                r = &mut fut => break r,
                () = Self::fold_pause_end(self.fold_pause), if self.fold_pause.is_some() => self.fold_pause = None,
                first = self.mutations.recv(), if self.fold_pause.is_none() => self.on_mutations(first),
            }
        };
        self.in_flight_changes = 0;
        match result {
            Ok(Produced::File(records, bytes, checksum)) => Ok(Written::File(BackupInfo {
                kind,
                file: name,
                seq,
                from_seq,
                records,
                bytes,
                duration: started.elapsed(),
                checksum,
            })),
            Ok(Produced::BaseGone(reason)) => {
                let newer = std::mem::replace(&mut self.pending, Arc::unwrap_or_clone(old));
                self.pending.absorb(newer);
                Ok(Written::BaseGone(reason))
            }
            Err(e) => {
                let newer = std::mem::replace(&mut self.pending, Arc::unwrap_or_clone(old));
                self.pending.absorb(newer);
                Err(e)
            }
        }
    }

    async fn succeeded(&mut self, info: &BackupInfo, started: Instant) {
        self.consecutive_failures = 0;
        match info.kind {
            BackupKind::Full => {
                self.deltas_since_full = 0;
                self.base = Some(info.file.clone());
                self.force_full = None;
            }
            BackupKind::Delta => self.deltas_since_full += 1,
        }
        self.schedule.succeeded(started);
        self.shared.status.succeeded(LastBackup {
            at: SystemTime::now(),
            kind: info.kind,
            file: info.file.clone(),
            seq: info.seq,
        });
        self.shared
            .status
            .set_chain(self.base.clone(), self.deltas_since_full);
        // One line per backup is noise at INFO for a service backing up
        // every few seconds: completions are DEBUG, failures WARN/ERROR.
        debug!(
            kind = %info.kind,
            file = %info.file,
            seq = info.seq,
            records = info.records,
            bytes = info.bytes,
            elapsed_ms = info.duration.as_secs_f64() * 1e3,
            "backup written"
        );
        telemetry::written(info);
        let _ = self.events.send(BackupEvent::Completed(info.clone()));
        if info.kind == BackupKind::Full {
            if let Some(policy) = &self.config.retention {
                // The wall clock is read here, never inside retention.
                let now = std::time::SystemTime::now();
                // Past a shutdown deadline the backup is what matters: the
                // pruning is done by the next manager.
                tokio::select! {
                    biased;
                    _ = deadline_passed(self.deadline.clone()) => {
                        warn!("retention cut short by the shutdown deadline");
                    }
                    skipped = retention::prune(&*self.store, policy, now, &info.file, &self.events) => {
                        if let Some(skipped) = skipped {
                            self.shared.status.set_skipped(skipped);
                        }
                    }
                }
            }
        }
    }

    fn failed(&mut self, kind: BackupKind, err: &Error, automatic: bool, had_notification: bool) {
        self.consecutive_failures += 1;
        let n = self.consecutive_failures;
        if err.is_durability_unknown() {
            // A file that may or may not exist cannot be built on: the next
            // backup starts a new chain.
            self.force_full =
                Some("the last backup's commit failed, so whether its file exists is unknown");
        }
        let retry_in = self.schedule.failed(
            Instant::now(),
            automatic,
            had_notification,
            self.pending.events,
        );
        error!(
            %kind,
            cause = %err,
            consecutive_failures = n,
            retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
            "backup failed"
        );
        if let Some(cb) = &self.config.on_backup_failure {
            if catch_unwind(AssertUnwindSafe(|| cb(err, n))).is_err() {
                error!("the backup failure callback panicked");
            }
        }
        self.shared.status.failed(
            LastFailure {
                at: SystemTime::now(),
                kind,
                error: err.clone(),
            },
            n,
        );
        telemetry::failed(kind);
        let _ = self.events.send(BackupEvent::Failed {
            kind,
            error: err.clone(),
            consecutive_failures: n,
            retry_in,
        });
    }
}

/// Marks the status as ended when dropped.
struct EndGuard(Arc<Shared>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.status.ended();
    }
}

/// Completes when the shutdown deadline passes (never, if none is ever
/// set), with the error to report.
async fn deadline_passed(mut rx: watch::Receiver<Deadline>) -> Error {
    loop {
        let current = *rx.borrow_and_update();
        match current {
            Some((at, timeout)) => {
                tokio::select! {
                    () = sleep_until(at) => {
                        return Error::ShutdownDeadline {
                            timeout,
                            detail: "the backup being written was aborted".into(),
                        };
                    }
                    // An earlier deadline was set: look again.
                    changed = rx.changed() => if changed.is_err() {
                        sleep_until(at).await;
                    },
                }
            }
            None => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
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
    /// Missed events: the delta is this cut's diff against `snapshot`.
    diff_from: Option<Snapshot>,
    base: Option<String>,
    /// Compression and encryption.
    sealing: Sealing,
    /// The fencing token of the store's single-writer lease, written into
    /// the file's metadata.
    token: Option<u64>,
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
                crate::background::lower_priority();
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

/// What [`write_job`] produced.
enum Produced {
    /// Committed: (records or changes, bytes, checksum).
    File(u64, u64, String),
    /// A delta whose base full backup is gone from the store (or could not
    /// be confirmed) right before the commit: aborted, nothing committed.
    BaseGone(String),
}

/// Serialises on a low-priority thread and streams the chunks to the store.
/// A delta's base is checked (a stat, never a read) before anything is
/// serialised and again between the last chunk and the commit: a delta on a
/// missing base would be reported as a success and restore to nothing. The
/// caller keeps folding mutation events meanwhile, so a slow store cannot
/// make it lag. When the shutdown deadline in `deadline` passes, the store writer
/// is aborted (in the background, so a store that does not answer cannot
/// hold the caller) and the error says so.
async fn write_job(
    store: Arc<dyn BackupStore>,
    name: String,
    job: Job,
    deadline: watch::Receiver<Deadline>,
) -> Result<Produced> {
    let base_check = match job.kind {
        BackupKind::Delta => job.base.clone(),
        BackupKind::Full => None,
    };
    let cancelled = deadline_passed(deadline);
    tokio::pin!(cancelled);
    // A store that cannot answer the check fails the backup (retried with
    // backoff) rather than making every retry a full backup. The error
    // names the file being written, like every other failure of it.
    let unchecked = |base: &str, e: Error| {
        Error::Store {
        path: format!("{}/{name}", store.location()),
        message: format!(
            "could not check that the full backup {base} this delta builds on is still in the store: {e}"
        ),
    }
    };
    if let Some(base) = &base_check {
        let stat = tokio::select! {
            biased;
            e = &mut cancelled => return Err(e),
            r = store.stat(base) => r,
        };
        if stat.map_err(|e| unchecked(base, e))?.is_none() {
            return Ok(Produced::BaseGone(format!(
                "the full backup {base} that the deltas build on is missing from the store"
            )));
        }
    }
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
        // A second core while no writer has committed since the cut: an
        // idle service gets its full backup twice as fast, a busy one keeps
        // the paced single thread (see `Pacer`).
        let db = job.db.clone();
        let quiet = job.snapshot.seq();
        let idle = move || db.activity() == quiet;
        let written = match job.kind {
            BackupKind::Full => format::encode(
                job.format,
                &Doc::Full {
                    snapshot: &job.snapshot,
                    name: Some(&target),
                    token: job.token,
                },
                &mut emit,
                Some(&idle),
            )?,
            BackupKind::Delta => {
                // Computed here, off the actor: a diff skips the parts the two
                // cuts share, so it costs what changed, not the table size.
                let changes = match &job.diff_from {
                    Some(cut) => cut.changes_to(&job.snapshot),
                    None => job.window.to_changes(&job.snapshot),
                };
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
                        token: job.token,
                    },
                    &mut emit,
                    None,
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
    let created = tokio::select! {
        biased;
        e = &mut cancelled => Err(e),
        w = store.create(&name) => w,
    };
    let mut writer = match created {
        Ok(w) => w,
        Err(e) => {
            drop(rx);
            if !matches!(e, Error::ShutdownDeadline { .. }) {
                let _ = producer.await;
            }
            return Err(e);
        }
    };
    let mut write_error = None;
    let cancel = loop {
        let chunk = tokio::select! {
            biased;
            e = &mut cancelled => break Some(e),
            c = rx.recv() => c,
        };
        let Some(chunk) = chunk else { break None };
        let written = tokio::select! {
            biased;
            e = &mut cancelled => break Some(e),
            r = writer.write(chunk) => r,
        };
        if let Err(e) = written {
            write_error = Some(e);
            break None;
        }
    };
    // Unblocks the producer if the store failed first.
    drop(rx);
    if let Some(e) = cancel {
        // The serialisation thread ends on its own at its next chunk.
        tokio::spawn(writer.abort());
        return Err(e);
    }
    let produced = producer.await;
    let produced = match (write_error, produced) {
        (Some(e), _) | (None, Err(e)) | (None, Ok(Err(e))) => {
            writer.abort().await;
            return Err(e);
        }
        (None, Ok(Ok(p))) => p,
    };
    if let Some(base) = base_check {
        // The base may have gone while the delta was written (deleted by
        // hand, by another manager's retention).
        let stat = tokio::select! {
            biased;
            e = &mut cancelled => {
                tokio::spawn(writer.abort());
                return Err(e);
            }
            r = store.stat(&base) => r,
        };
        match stat {
            Ok(Some(_)) => {}
            Ok(None) => {
                writer.abort().await;
                return Ok(Produced::BaseGone(format!(
                    "the full backup {base} that this delta builds on disappeared from the store while the delta was written"
                )));
            }
            // Nothing is committed: a plain failure, retried later.
            Err(e) => {
                writer.abort().await;
                return Err(unchecked(&base, e));
            }
        }
    }
    let committed = tokio::select! {
        biased;
        e = &mut cancelled => Err(e),
        r = writer.commit() => r,
    };
    committed.map_err(|e| match e {
        e @ Error::CommitUncertain(_) => e,
        // The store may have made the file durable and visible before the
        // error reached us (an object store answer lost on the way back),
        // or the deadline cut the commit short.
        e => Error::CommitUncertain(Box::new(e)),
    })?;
    let (records, bytes, checksum) = produced;
    Ok(Produced::File(records, bytes, checksum))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::{BackupConfig, BackupManager, DictDB, Key};

    /// The manager keeps the last cut for the structural diff after a lag;
    /// the next backup's cut replaces it, and the old one is freed (off the
    /// caller's path, on the reclaiming thread), not kept.
    #[tokio::test]
    async fn the_previous_cut_is_released_after_the_next_backup() {
        let dir = tempfile::tempdir().unwrap();
        let db = DictDB::new();
        let t = db.create_table("t").unwrap();
        t.insert(json!({"id": 1, "v": "old"})).unwrap();
        let m = BackupManager::start(&db, BackupConfig::new(dir.path()).incremental(true))
            .await
            .unwrap();
        m.backup_full().await.unwrap();
        let old = db
            .snapshot()
            .table("t")
            .unwrap()
            .get(&Key::Int(1))
            .unwrap()
            .clone();
        t.update(1, json!({"v": "new"})).unwrap();
        // Here and in the manager's last cut.
        assert_eq!(old.owners(), 2);
        m.backup_delta().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while old.owners() > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the previous cut was never freed"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        m.stop().await.unwrap();
    }
}
