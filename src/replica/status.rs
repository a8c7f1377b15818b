//! What [`super::Replica::status`] reports and what its events carry, and
//! the state the follower keeps up to date for it.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::error::Error;
use crate::naming::BackupKind;

/// The backup cut a replica serves: every change up to the end of
/// [`file`](Self::file), none after.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReplicaCut {
    /// The last file applied (the chain's full backup, or one of its deltas).
    pub file: String,
    /// The full backup the chain starts from.
    pub base: String,
    /// Deltas applied after it.
    pub deltas: u32,
    /// The writer's sequence number at the cut (`None`: files written by
    /// the Python original, which record none). The database's
    /// [`seq`](crate::DictDB::seq) is the same number.
    pub seq: Option<u64>,
    /// When the writer wrote the file: the time in its name, by the
    /// writer's clock.
    pub written_at: SystemTime,
    /// When this replica reached the cut.
    pub applied_at: SystemTime,
    /// Whether every file of the chain so far carried a checksum that
    /// matched (files of the Python original carry none).
    pub verified: bool,
}

/// How far a replica is behind its store, as of its last poll.
///
/// Zero everywhere when the cut it serves is the newest file of the store.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ReplicaLag {
    /// Backup files in the store written after the cut's file (by name
    /// order, so also files a newer chain makes unnecessary).
    pub files: u64,
    /// The newest file's sequence number minus the cut's, when both record
    /// one.
    pub seq: Option<u64>,
    /// The time in the newest file's name minus the time in the cut's file
    /// name (both by the writer's clock).
    pub behind: Duration,
    /// The newest backup file of the store, if any.
    pub newest: Option<String>,
}

impl ReplicaLag {
    /// Whether the replica serves the newest file of its store.
    pub fn is_current(&self) -> bool {
        self.files == 0
    }
}

/// Why a replica is not moving on: a poll that failed, a damaged or missing
/// file it stopped before.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplicaFailure {
    /// When it was found.
    pub at: SystemTime,
    /// The file it is about, when there is one (the replica serves the cut
    /// before it).
    pub file: Option<String>,
    /// What is wrong.
    pub error: Error,
}

/// A replica's state, as [`super::Replica::status`] returns it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplicaStatus {
    /// Whether the replica still follows its store (false once stopped or
    /// promoted).
    pub running: bool,
    /// The store it follows.
    pub store: String,
    /// The cut it serves (`None`: the store held no full backup yet).
    pub cut: Option<ReplicaCut>,
    /// How far behind the store it is, as of the last poll.
    pub lag: ReplicaLag,
    /// Why it is not current right now: set while a poll fails or a damaged
    /// or missing file stops it, cleared once it moves on (or polls
    /// cleanly).
    pub problem: Option<ReplicaFailure>,
    /// The last failure, kept after it cleared (compare the times).
    pub last_error: Option<ReplicaFailure>,
    /// Polls so far (the first load included).
    pub polls: u64,
    /// When the last poll ended.
    pub last_poll: Option<SystemTime>,
    /// Time until the next poll (`None` once stopped).
    pub next_poll_in: Option<Duration>,
}

/// A file a replica applied.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AppliedFile {
    /// The file.
    pub file: String,
    /// Full or delta.
    pub kind: BackupKind,
    /// Sequence range `(from, to]` the file covers, when it records one.
    pub seq: Option<(u64, u64)>,
    /// Records it affected in the replica's database.
    pub affected: usize,
    /// Its size in bytes.
    pub bytes: u64,
    /// From the start of the read to the swap.
    pub duration: Duration,
    /// How long the swap held the database lock: the longest any reader
    /// waited for this file (the changes were worked out before, without
    /// the lock).
    pub blocked: Duration,
    /// How far behind the store the replica still is.
    pub lag: ReplicaLag,
}

/// A replica moved to a newer chain: a full backup written after the one it
/// followed, and the deltas after it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ChainSwitch {
    /// The full backup of the chain left (`None`: the replica served nothing
    /// yet).
    pub from: Option<String>,
    /// The new chain's full backup.
    pub to: String,
    /// The files of the new chain applied, base first.
    pub files: Vec<String>,
    /// The new cut's sequence number.
    pub seq: Option<u64>,
    /// Records that differ between the two cuts, applied as one change.
    pub affected: usize,
    /// From the start of the read to the swap.
    pub duration: Duration,
    /// How long the swap held the database lock.
    pub blocked: Duration,
    /// How far behind the store the replica still is.
    pub lag: ReplicaLag,
}

/// An event on [`super::Replica::subscribe`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// A delta of the chain was applied: the replica serves its cut.
    Applied(AppliedFile),
    /// The replica moved to a newer chain.
    ChainSwitched(ChainSwitch),
    /// A poll failed, or a damaged or missing file stops the replica at the
    /// cut before it (sent once per distinct problem; it keeps polling).
    Failed(ReplicaFailure),
    /// The lag changed at the end of a poll.
    Lag(ReplicaLag),
    /// This subscriber of [`super::Replica::events`] fell behind and missed
    /// the `missed` oldest events.
    SubscriberLagged {
        /// Events this subscriber missed.
        missed: u64,
    },
}

/// The follower's side: written by the follower, read by `status()`.
#[derive(Debug)]
pub(crate) struct StatusCell {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    ended: bool,
    store: String,
    cut: Option<ReplicaCut>,
    lag: ReplicaLag,
    problem: Option<ReplicaFailure>,
    last_error: Option<ReplicaFailure>,
    polls: u64,
    last_poll: Option<SystemTime>,
    next_poll: Option<Instant>,
}

impl StatusCell {
    pub(crate) fn new(store: String) -> StatusCell {
        StatusCell {
            inner: Mutex::new(Inner {
                ended: false,
                store,
                cut: None,
                lag: ReplicaLag::default(),
                problem: None,
                last_error: None,
                polls: 0,
                last_poll: None,
                next_poll: None,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        // Plain fields: a panic while holding the lock leaves nothing half
        // written that matters.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    pub(crate) fn set_cut(&self, cut: ReplicaCut) {
        self.with(|s| s.cut = Some(cut));
    }

    pub(crate) fn polled(&self, lag: ReplicaLag, next: Instant) {
        self.with(|s| {
            s.lag = lag;
            s.polls += 1;
            s.last_poll = Some(SystemTime::now());
            s.next_poll = Some(next);
        });
    }

    /// Records a problem; whether it is a new one (not the one already
    /// recorded).
    pub(crate) fn problem(&self, failure: ReplicaFailure) -> bool {
        self.with(|s| {
            let same = s.problem.as_ref().is_some_and(|p| {
                p.file == failure.file && p.error.to_string() == failure.error.to_string()
            });
            s.last_error = Some(failure.clone());
            if !same {
                s.problem = Some(failure);
            }
            !same
        })
    }

    pub(crate) fn clear_problem(&self) {
        self.with(|s| s.problem = None);
    }

    pub(crate) fn current_problem(&self) -> Option<ReplicaFailure> {
        self.with(|s| s.problem.clone())
    }

    pub(crate) fn ended(&self) {
        self.with(|s| {
            s.ended = true;
            s.next_poll = None;
        });
    }

    pub(crate) fn read(&self, now: Instant) -> ReplicaStatus {
        self.with(|s| ReplicaStatus {
            running: !s.ended,
            store: s.store.clone(),
            cut: s.cut.clone(),
            lag: s.lag.clone(),
            problem: s.problem.clone(),
            last_error: s.last_error.clone(),
            polls: s.polls,
            last_poll: s.last_poll,
            next_poll_in: s
                .next_poll
                .filter(|_| !s.ended)
                .map(|t| t.saturating_duration_since(now)),
        })
    }
}
