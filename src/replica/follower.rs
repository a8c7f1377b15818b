//! The follower: one poll of the store, and what it applies.
//!
//! Each poll lists the store once. A full backup newer than the chain the
//! replica serves moves it to that chain: the chain is restored into a
//! separate database by the restore code (every link and checksum checked),
//! and the difference between the two cuts is applied to the replica's
//! database as one atomic change. Otherwise each delta of the chain written
//! since the last poll is read and checked the way a restore checks it
//! (identity, link, checksum) and applied atomically, in order. The first
//! file that fails stops the poll: the replica keeps serving the last cut it
//! reached, never one past a gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant as WallInstant, SystemTime};

use tokio::sync::broadcast;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::status::{
    AppliedFile, ChainSwitch, ReplicaCut, ReplicaEvent, ReplicaFailure, ReplicaLag, StatusCell,
};
use crate::background;
use crate::db::{Applied, Behind, ChangeSet, DictDB, Spare};
use crate::error::{Error, Result};
use crate::format::Body;
use crate::naming::{BackupKind, BackupName};
use crate::restore::apply::{self, Failed, Feed};
use crate::restore::chain::{name_time, Catalog, Cursor, Entry};
use crate::restore::{plan, PlannedFile, Restore, Restored};
use crate::store::BackupStore;

/// The chain a replica serves and how far into it it is.
#[derive(Clone, Debug)]
pub(crate) struct Position {
    /// Files applied, base first.
    pub(crate) chain: Vec<PlannedFile>,
    /// Records each delta affected.
    pub(crate) affected: Vec<usize>,
    /// The chain rules' cursor: base, sequence number reached, verified.
    pub(crate) cursor: Cursor,
    base: BackupName,
    last: BackupName,
    applied_at: SystemTime,
}

impl Position {
    /// Where a restore left the chain.
    pub(crate) fn of(r: &Restored) -> Option<Position> {
        let base_file = r.applied.first()?;
        let last_file = r.applied.last()?;
        Some(Position {
            chain: r.applied.clone(),
            affected: r.affected.clone(),
            cursor: Cursor {
                base: base_file.name.clone(),
                has_seq: base_file.seq.is_some(),
                seq: r.seq,
                verified: r.verified,
                token: r
                    .applied
                    .iter()
                    .find_map(|f| f.fencing_token.map(|t| (t, f.name.clone()))),
            },
            base: BackupName::parse(&base_file.name)?,
            last: BackupName::parse(&last_file.name)?,
            applied_at: SystemTime::now(),
        })
    }

    pub(crate) fn cut(&self) -> ReplicaCut {
        ReplicaCut {
            file: self
                .chain
                .last()
                .map(|f| f.name.clone())
                .unwrap_or_default(),
            base: self.cursor.base.clone(),
            deltas: u32::try_from(self.chain.len().saturating_sub(1)).unwrap_or(u32::MAX),
            seq: self.cursor.seq,
            written_at: name_time(&self.last),
            applied_at: self.applied_at,
            verified: self.cursor.verified,
        }
    }

    /// The restore result a promoted manager continues from.
    pub(crate) fn restored(&self, db: DictDB) -> Restored {
        Restored {
            db,
            applied: self.chain.clone(),
            affected: self.affected.clone(),
            seq: self.cursor.seq,
            verified: self.cursor.verified,
            skipped: Vec::new(),
            stopped: None,
        }
    }
}

/// A file that stopped a poll, and why.
type Stop = (Option<String>, Error);

/// Damage that stays with a file (its bytes will not change under its
/// name): remembered, so a damaged file is not read again every poll.
/// Links, I/O and store errors are looked at again each poll.
fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. } | Error::ChecksumMismatch { .. } | Error::UnsupportedFormat { .. }
    )
}

/// Runs blocking work (decoding is done by the restore code; this is for
/// diffs and applies) off the async worker threads.
async fn blocking<T: Send + 'static>(
    file: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::corrupt(file, format!("applying task failed: {e}")))?
}

/// Where one apply finds the spare copy of the tables.
enum SpareIn {
    /// No spare: the changes are worked out on a copy of their paths.
    None,
    Ready(Spare),
    /// Being fed the file's upserts on its own thread.
    Feeding(std::thread::JoinHandle<Spare>),
}

pub(crate) struct Follower {
    pub(crate) db: DictDB,
    pub(crate) store: Arc<dyn BackupStore>,
    /// The restore options every check is made with (lenient: a chain
    /// stops at its last consistent point).
    pub(crate) opts: Restore,
    pub(crate) pos: Option<Position>,
    pub(crate) status: Arc<StatusCell>,
    pub(crate) events: broadcast::Sender<ReplicaEvent>,
    /// Files found damaged, by name, with their size then.
    bad: HashMap<String, (u64, Error)>,
    /// The newest file's name and sequence number (a header read once per
    /// newest file).
    newest: Option<(String, Option<u64>)>,
    last_lag: ReplicaLag,
    /// The next spare copy of the tables being made (see `db/spare.rs`).
    spare: Option<oneshot::Receiver<Option<Spare>>>,
    /// What the last apply left for the next spare copy, until
    /// [`Follower::background`] starts it.
    pending: Option<CatchUp>,
    /// Whether the replica keeps a spare copy of its index
    /// (`ReplicaOptions::spare_copy`, set by [`Follower::prepare_spare`]):
    /// without, no copy is ever made and each file is worked out on a copy
    /// of the paths its changes take.
    keep_spare: bool,
}

/// Changes applied to the database but not yet to the copy they replaced.
struct CatchUp {
    behind: Option<Behind>,
    changes: ChangeSet,
    file: String,
}

impl Follower {
    pub(crate) fn new(
        db: DictDB,
        store: Arc<dyn BackupStore>,
        opts: Restore,
        pos: Option<Position>,
        status: Arc<StatusCell>,
        events: broadcast::Sender<ReplicaEvent>,
    ) -> Follower {
        Follower {
            db,
            store,
            opts,
            pos,
            status,
            events,
            bad: HashMap::new(),
            newest: None,
            last_lag: ReplicaLag::default(),
            spare: None,
            pending: None,
            keep_spare: false,
        }
    }

    /// Whether a spare copy exists or is being made (for tests).
    #[cfg(test)]
    pub(crate) fn has_spare(&self) -> bool {
        self.spare.is_some() || self.pending.is_some()
    }

    /// Starts making the spare copy of the tables (O(records), in the
    /// background), for the first file the replica applies.
    pub(crate) fn prepare_spare(&mut self) {
        self.keep_spare = true;
        let db = self.db.clone();
        self.spare = Some(background::spawn("dictdb-replica-spare", move || {
            Some(db.spare())
        }));
    }

    /// Records a problem (an event when it is a new one).
    pub(crate) fn fail(&self, file: Option<String>, error: Error) {
        let failure = ReplicaFailure {
            at: SystemTime::now(),
            file,
            error,
        };
        if self.status.problem(failure.clone()) {
            warn!(
                store = %self.store.location(),
                file = failure.file.as_deref().unwrap_or("-"),
                cause = %failure.error,
                "replica stopped at its last good cut"
            );
            let _ = self.events.send(ReplicaEvent::Failed(failure));
        }
    }

    fn known_bad(&self, e: &Entry) -> Option<Error> {
        match self.bad.get(e.file_name()) {
            Some((size, err)) if *size == e.file.size => Some(err.clone()),
            _ => None,
        }
    }

    fn remember(&mut self, catalog: &Catalog, file: &str, e: &Error) {
        if is_damage(e) {
            if let Some(entry) = catalog.entries.iter().find(|x| x.file_name() == file) {
                self.bad
                    .insert(file.to_string(), (entry.file.size, e.clone()));
            }
        }
    }

    /// One poll: a listing, then whatever it shows is new. Returns the
    /// problem that stops the replica, if any (also recorded in the
    /// status).
    pub(crate) async fn poll(&mut self, next: tokio::time::Instant) -> Option<ReplicaFailure> {
        let catalog = match self.opts.catalog().await {
            Ok(c) => c,
            Err(e) => {
                self.fail(None, e);
                self.status.polled(self.last_lag.clone(), next);
                return self.status.current_problem();
            }
        };
        let mut stop: Option<Stop> = None;

        // A newer chain: the newest usable full backup after the one served.
        let newer: Vec<usize> = catalog
            .fulls()
            .rev()
            .take_while(|&i| {
                self.pos
                    .as_ref()
                    .is_none_or(|p| catalog.entries[i].name > p.base)
            })
            .collect();
        let mut switched = false;
        for i in newer {
            let e = &catalog.entries[i];
            if let Some(err) = self.known_bad(e) {
                stop.get_or_insert((Some(e.file_name().to_string()), err));
                continue;
            }
            match self.switch(&catalog, i).await {
                Ok(stopped) => {
                    switched = true;
                    if let Some(s) = stopped {
                        stop.get_or_insert(s);
                    }
                    break;
                }
                Err((file, err)) => {
                    let damaged = is_damage(&err);
                    if let Some(f) = &file {
                        self.remember(&catalog, f, &err);
                    }
                    stop.get_or_insert((file, err));
                    // An older, still newer chain is a cut too; but a store
                    // that failed to answer may answer next time.
                    if !damaged {
                        break;
                    }
                }
            }
        }

        // The deltas of the chain served, written since the last poll.
        // (A new chain that stopped early stops here: its next delta is
        // the damaged one.)
        if !(switched && stop.is_some()) {
            if let Some(err) = self.follow_chain(&catalog).await {
                stop.get_or_insert(err);
            }
        }

        let lag = self.lag(&catalog).await;
        self.status.polled(lag.clone(), next);
        if lag != self.last_lag {
            self.last_lag = lag.clone();
            let _ = self.events.send(ReplicaEvent::Lag(lag));
        }
        match stop {
            Some((file, error)) => self.fail(file, error),
            None => self.status.clear_problem(),
        }
        self.status.current_problem()
    }

    /// Applies the deltas of the chain served that follow its last file.
    async fn follow_chain(&mut self, catalog: &Catalog) -> Option<Stop> {
        let pos = self.pos.as_ref()?;
        let Some(b) = catalog
            .entries
            .iter()
            .position(|e| e.file_name() == pos.cursor.base)
        else {
            // Gone (retention after a newer full backup, or deleted): the
            // chain cannot go on, and nothing newer could be used.
            let base = pos.cursor.base.clone();
            return Some((
                Some(base.clone()),
                Error::chain(
                    &base,
                    "the full backup this replica follows is gone from the store, and no newer \
                     usable full backup is there: the replica keeps serving its last cut",
                ),
            ));
        };
        for j in catalog.chain_deltas(b) {
            let e = &catalog.entries[j];
            let last = self.pos.as_ref().map(|p| p.last.clone())?;
            if e.name <= last {
                continue;
            }
            if let Some(err) = self.known_bad(e) {
                return Some((Some(e.file_name().to_string()), err));
            }
            if let Err(err) = self.apply_delta(catalog, e).await {
                self.remember(catalog, e.file_name(), &err);
                return Some((Some(e.file_name().to_string()), err));
            }
        }
        None
    }

    /// The spare copy of the tables, once the job making it is done.
    async fn take_spare(&mut self) -> Option<Spare> {
        if !self.keep_spare {
            return None;
        }
        self.background();
        match self.spare.take() {
            Some(job) => job.await.ok().flatten(),
            None => None,
        }
    }

    /// Starts making the next spare copy, if an apply left that to do: the
    /// replaced copy catches up with the changes the apply made, or a new
    /// copy is made. On a thread of lower priority, after the poll that
    /// applied them has answered (a poll that applies several files waits
    /// for it between two files).
    pub(crate) fn background(&mut self) {
        let Some(CatchUp {
            behind,
            changes,
            file,
        }) = self.pending.take()
        else {
            return;
        };
        let db = self.db.clone();
        self.spare = Some(background::spawn("dictdb-replica-spare", move || {
            let caught_up = behind.and_then(|b| b.catch_up(&changes, &file));
            Some(caught_up.unwrap_or_else(|| db.spare()))
        }));
    }

    /// Applies `changes` (read from `file`, which names errors) to the
    /// replica's database: in place on the spare copy of its tables and
    /// swapped in (see `db/spare.rs`), or on a copy of the paths they take
    /// while there is no spare. Then the next spare is made off the
    /// replica's path: the replaced copy catches up, or a new copy is made.
    async fn apply_changes(
        &mut self,
        changes: ChangeSet,
        file: &str,
        cut: Option<u64>,
        spare: SpareIn,
    ) -> Result<Applied> {
        let db = self.db.clone();
        let name = file.to_string();
        let (applied, behind, changes) = blocking(file, move || {
            let spare = match spare {
                SpareIn::Ready(s) => Some(s),
                // The decoding has ended and dropped the feed: the thread
                // finishes what it was handed and gives the spare back.
                SpareIn::Feeding(handle) => handle.join().ok(),
                SpareIn::None => None,
            };
            let (applied, behind) = db.apply_replica(spare, &changes, &name, cut)?;
            Ok((applied, behind, changes))
        })
        .await?;
        if !self.keep_spare {
            crate::db::reclaim::later(changes);
            return Ok(applied);
        }
        self.pending = Some(CatchUp {
            behind,
            changes,
            file: file.to_string(),
        });
        Ok(applied)
    }

    /// Reads, checks and applies one delta of the chain served.
    async fn apply_delta(&mut self, catalog: &Catalog, e: &Entry) -> Result<()> {
        let started = WallInstant::now();
        let cursor = match &self.pos {
            Some(p) => p.cursor.clone(),
            None => return Ok(()),
        };
        // The header first (a ranged read): a missing or foreign link is
        // found without reading the file.
        let header = plan::checked_header(&self.opts, catalog, e).await?;
        cursor.check_link(e, &header)?;
        // The upserts go to the spare copy while the file is read; if the
        // file fails a check, the spare is thrown away (and made again).
        let (feed, spare) = match self.take_spare().await {
            Some(spare) => match spare.feed(self.db.has_subscribers()) {
                Some((feed, thread)) => (Some(Box::new(feed) as Feed), SpareIn::Feeding(thread)),
                None => (None, SpareIn::None),
            },
            None => (None, SpareIn::None),
        };
        let d = apply::check_file_fed(&self.opts, catalog, e, feed).await?;
        if d.header != header {
            return Err(Error::chain(
                e.file_name(),
                "the file changed while it was being read",
            ));
        }
        cursor.check_link(e, &d.header)?;
        let python = d.header.meta.is_none();
        let Body::Delta(mut changes) = d.body else {
            return Err(Error::corrupt(e.file_name(), "holds a full backup"));
        };
        // A delta of the Python original may change a table created after
        // its last full backup: made with the key field given, as a
        // restore makes it.
        if python {
            apply::create_python_tables(&self.opts, &self.db, &mut changes, e.file_name())?;
        }
        let cut = d.header.meta.as_ref().map(|m| m.seq);
        let applied = self
            .apply_changes(changes, e.file_name(), cut, spare)
            .await?;
        let affected = applied.affected;
        let planned = plan::planned(e, &d.header);
        let Some(pos) = self.pos.as_mut() else {
            return Ok(());
        };
        pos.cursor.advance(e, &d.header, &d.integrity);
        pos.chain.push(planned.clone());
        pos.affected.push(affected);
        pos.last = e.name.clone();
        pos.applied_at = SystemTime::now();
        self.status.set_cut(pos.cut());
        let duration = started.elapsed();
        debug!(file = %planned.name, affected, elapsed_ms = duration.as_secs_f64() * 1e3, "replica applied a delta");
        let lag = self.lag(catalog).await;
        let _ = self.events.send(ReplicaEvent::Applied(AppliedFile {
            file: planned.name,
            kind: BackupKind::Delta,
            seq: planned.seq,
            affected,
            bytes: planned.size,
            duration,
            blocked: applied.held,
            lag,
        }));
        Ok(())
    }

    /// Moves to the chain of the full backup `i`: restored into a database
    /// of its own, then the difference applied to the replica's as one
    /// change. `Ok(Some(stop))`: moved, but the new chain stops early (a
    /// damaged or missing delta).
    async fn switch(
        &mut self,
        catalog: &Catalog,
        i: usize,
    ) -> std::result::Result<Option<Stop>, Stop> {
        let started = WallInstant::now();
        let e = &catalog.entries[i];
        let named = |err: Error| (Some(e.file_name().to_string()), err);
        let chosen = plan::choose_chain(&self.opts, catalog, i)
            .await
            .map_err(named)?;
        let restored = match apply::load(&self.opts, catalog, &chosen, None).await {
            Ok(r) => r,
            Err(Failed::Base(err) | Failed::Other(err)) => return Err(named(err)),
        };
        let Some(mut pos) = Position::of(&restored) else {
            return Err(named(Error::corrupt(
                e.file_name(),
                "the restored chain holds no file",
            )));
        };
        let db = self.db.clone();
        let new_db = restored.db.clone();
        let cut = restored.seq;
        let file = e.file_name().to_string();
        let changes = blocking(e.file_name(), move || {
            // Both snapshots are O(1); the diff skips what the two cuts
            // share and runs here, off the lock. It fits in the writer's
            // changes between the two cuts, so that the replica's sequence
            // number ends at the new cut (tables the writer dropped and
            // created again are dropped and created here too).
            let old = db.snapshot();
            let budget = cut.filter(|c| *c > old.seq()).map(|c| c - old.seq());
            let changes = old.changes_within(&new_db.snapshot(), budget);
            drop(new_db);
            Ok(changes)
        })
        .await
        .map_err(named)?;
        let spare = self
            .take_spare()
            .await
            .map_or(SpareIn::None, SpareIn::Ready);
        let applied = self
            .apply_changes(changes, &file, cut, spare)
            .await
            .map_err(named)?;
        let affected = applied.affected;
        drop(restored.db);
        let from = self.pos.as_ref().map(|p| p.cursor.base.clone());
        pos.applied_at = SystemTime::now();
        self.status.set_cut(pos.cut());
        let files = pos.chain.iter().map(|f| f.name.clone()).collect();
        let seq = pos.cursor.seq;
        self.pos = Some(pos);
        let duration = started.elapsed();
        debug!(to = %e.file_name(), affected, elapsed_ms = duration.as_secs_f64() * 1e3, "replica moved to a newer chain");
        let lag = self.lag(catalog).await;
        let _ = self.events.send(ReplicaEvent::ChainSwitched(ChainSwitch {
            from,
            to: e.file_name().to_string(),
            files,
            seq,
            affected,
            duration,
            blocked: applied.held,
            lag,
        }));
        let stopped = restored.stopped.map(|s| {
            self.remember(catalog, &s.file, &s.error);
            (Some(s.file), s.error)
        });
        Ok(stopped)
    }

    /// The newest file's sequence number, from its header: read once per
    /// newest file (a ranged read), and only while the replica is behind it.
    async fn newest_seq(&mut self, e: &Entry, catalog: &Catalog) -> Option<u64> {
        match &self.newest {
            Some((name, seq)) if name == e.file_name() => *seq,
            _ => {
                let seq = match catalog.header(e).await {
                    Ok(h) => h.meta.map(|m| m.seq),
                    Err(_) => None,
                };
                self.newest = Some((e.file_name().to_string(), seq));
                seq
            }
        }
    }

    /// The lag of the cut served behind the newest file of `catalog`.
    async fn lag(&mut self, catalog: &Catalog) -> ReplicaLag {
        let Some(newest) = catalog.entries.last() else {
            return ReplicaLag::default();
        };
        let Some(pos) = &self.pos else {
            return ReplicaLag {
                files: catalog.entries.len() as u64,
                seq: None,
                behind: Duration::ZERO,
                newest: Some(newest.file_name().to_string()),
            };
        };
        let files = catalog.entries.iter().filter(|e| e.name > pos.last).count() as u64;
        let cut = pos.cursor.seq;
        let behind = name_time(&newest.name)
            .duration_since(name_time(&pos.last))
            .unwrap_or(Duration::ZERO);
        let seq = if files == 0 {
            cut.map(|_| 0)
        } else {
            match (self.newest_seq(newest, catalog).await, cut) {
                (Some(n), Some(c)) => Some(n.saturating_sub(c)),
                _ => None,
            }
        };
        ReplicaLag {
            files,
            seq,
            behind,
            newest: Some(newest.file_name().to_string()),
        }
    }
}
