//! The plan: which files go, in which order, and why each file goes or stays;
//! and the executor that carries a plan out.

use std::collections::HashSet;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use tracing::debug;

use super::policy::RetentionPolicy;
use crate::error::Error;
use crate::naming::{BackupKind, BackupName, NameFormat};
use crate::store::{BackupStore, StoredFile};

/// Why a file stays.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeepReason {
    /// It belongs to the newest chain (the newest full backup and the deltas
    /// after it), which is never deleted.
    NewestChain,
    /// One of the newest full backups (`keep_last`); `rank` 1 is the newest.
    Last {
        /// 1 for the newest full backup, 2 for the one before, ...
        rank: usize,
    },
    /// Written within the `keep_within` window.
    Within,
    /// The newest full backup of a UTC day (`keep_daily`).
    Daily {
        /// Year.
        year: i16,
        /// Month, 1 to 12.
        month: i8,
        /// Day of the month, 1 to 31.
        day: i8,
    },
    /// The newest full backup of an ISO week, in UTC (`keep_weekly`).
    Weekly {
        /// ISO week-numbering year (the first days of January can belong to
        /// the previous year's last week).
        year: i16,
        /// ISO week, 1 to 53.
        week: i8,
    },
    /// The newest full backup of a UTC calendar month (`keep_monthly`).
    Monthly {
        /// Year.
        year: i16,
        /// Month, 1 to 12.
        month: i8,
    },
    /// A file this crate cannot read (a pickle file written by the Python
    /// original): never deleted, and so neither is its chain.
    Unreadable,
    /// No rule keeps this file itself, but its chain is kept: it is a delta
    /// of a kept full backup, or a full backup or delta that a kept delta
    /// builds on. `because` is the first file of the chain that a rule keeps.
    Chain {
        /// The file that keeps the chain.
        because: String,
    },
    /// The policy has no rule, so it keeps everything.
    NoRule,
    /// The chain of the newest full backup known to restore (checked by
    /// reading it, or the full backup a manager has just written): never
    /// deleted. See [`RetentionPolicy::plan_keeping`].
    Restorable,
    /// A chain newer than the newest one known to restore: it did not
    /// restore, or was not checked. Never deleted, so that nothing newer
    /// than a sound chain is lost before a newer sound chain exists.
    NewerThanRestorable {
        /// The full backup of the newest chain known to restore.
        restorable: String,
    },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::NewestChain => f.write_str("newest chain"),
            KeepReason::Last { rank } => write!(f, "keep-last #{rank}"),
            KeepReason::Within => f.write_str("keep-within"),
            KeepReason::Daily { year, month, day } => {
                write!(f, "keep-daily {year:04}-{month:02}-{day:02}")
            }
            KeepReason::Weekly { year, week } => write!(f, "keep-weekly {year:04}-W{week:02}"),
            KeepReason::Monthly { year, month } => write!(f, "keep-monthly {year:04}-{month:02}"),
            KeepReason::Unreadable => f.write_str("a pickle file, never deleted"),
            KeepReason::Chain { because } => write!(f, "in the chain kept for {because}"),
            KeepReason::NoRule => f.write_str("no rule set, everything is kept"),
            KeepReason::Restorable => f.write_str("newest chain that restores"),
            KeepReason::NewerThanRestorable { restorable } => write!(
                f,
                "newer than {restorable}, the newest chain that restores: kept until a newer \
                 chain restores"
            ),
        }
    }
}

/// Why a file goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeleteReason {
    /// A full backup that no rule keeps, nor any delta of its chain.
    NotKept,
    /// A delta of a full backup that goes.
    ChainDeleted {
        /// The full backup it builds on.
        full: String,
    },
    /// A delta written before any full backup in the store: there is
    /// nothing it could be restored on, and no rule keeps it.
    Orphan,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::NotKept => {
                f.write_str("no rule keeps this full backup or a delta of its chain")
            }
            DeleteReason::ChainDeleted { full } => write!(f, "a delta of {full}, which goes"),
            DeleteReason::Orphan => {
                f.write_str("a delta older than every full backup, with nothing to restore it on")
            }
        }
    }
}

/// A file the plan deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deletion {
    /// The file name, as the store listed it.
    pub name: String,
    /// The name, parsed.
    pub backup: BackupName,
    /// Size in bytes.
    pub size: u64,
    /// Why it goes.
    pub reason: DeleteReason,
}

impl fmt::Display for Deletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// A backup file the plan keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Kept {
    /// The file name, as the store listed it.
    pub name: String,
    /// The name, parsed.
    pub backup: BackupName,
    /// Size in bytes.
    pub size: u64,
    /// Every rule that keeps it (never empty).
    pub reasons: Vec<KeepReason>,
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.name)?;
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// What a [`RetentionPolicy`] would do to a store: the files to delete, in
/// the order that keeps the store restorable at every step, and why each
/// file goes or stays. Made by [`RetentionPolicy::plan`], carried out by
/// [`apply`](Self::apply); printing it is a dry run.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use dictdb::store::StoredFile;
/// use dictdb::RetentionPolicy;
///
/// let files: Vec<StoredFile> = [
///     "dictdb_backup_1700000000_000000.json",
///     "dictdb_delta_1700000100_000000.json",
///     "dictdb_backup_1700086400_000000.json",
///     "notes.txt",
/// ]
/// .into_iter()
/// .map(|name| StoredFile { name: name.into(), size: 10 })
/// .collect();
/// let now = UNIX_EPOCH + Duration::from_secs(1_700_090_000);
/// let plan = RetentionPolicy::default().keep_last(1).plan(&files, now);
///
/// let gone: Vec<&str> = plan.deletions().iter().map(|d| d.name.as_str()).collect();
/// // The delta goes before the full backup it builds on.
/// assert_eq!(
///     gone,
///     ["dictdb_delta_1700000100_000000.json", "dictdb_backup_1700000000_000000.json"]
/// );
/// assert_eq!(plan.ignored(), ["notes.txt"]);
/// println!("{plan}"); // what goes and why: a dry run
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionPlan {
    policy: RetentionPolicy,
    deletions: Vec<Deletion>,
    kept: Vec<Kept>,
    ignored: Vec<String>,
}

impl RetentionPlan {
    /// The files to delete, in the order to delete them: whole chains, oldest
    /// first; within a chain the deltas newest first and the full backup
    /// last. Stopping after any number of them leaves every chain a prefix of
    /// what it was, so the store stays restorable.
    pub fn deletions(&self) -> &[Deletion] {
        &self.deletions
    }

    /// The backup files that stay (pickle files included), in name order,
    /// each with the rules that keep it.
    pub fn kept(&self) -> &[Kept] {
        &self.kept
    }

    /// Files that are not backups (any name [`BackupName::parse`] refuses):
    /// never touched.
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// The policy the plan was made with.
    pub fn policy(&self) -> &RetentionPolicy {
        &self.policy
    }

    /// The bytes the deletions free.
    pub fn bytes_freed(&self) -> u64 {
        self.deletions.iter().map(|d| d.size).sum()
    }

    /// Deletes the planned files from `store`, in plan order, and stops at
    /// the first failure: going on past a file that could not be deleted
    /// (a delta, say) could delete what comes before it and leave that delta
    /// without its base. Deleting a file that is already gone is not a
    /// failure. Nothing is listed again: the plan is applied as made.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use dictdb::{BackupStore, LocalStore, RetentionPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> dictdb::Result<()> {
    /// # let tmp = tempfile::tempdir().unwrap();
    /// # for n in ["dictdb_backup_1700000000_000000.json", "dictdb_backup_1700000001_000000.json"] {
    /// #     std::fs::write(tmp.path().join(n), "{}").unwrap();
    /// # }
    /// let store = LocalStore::open(tmp.path())?;
    /// let plan = RetentionPolicy::default()
    ///     .keep_last(1)
    ///     .plan(&store.list().await?, SystemTime::now());
    /// let report = plan.apply(&store).await;
    /// assert!(report.is_complete());
    /// assert_eq!(report.deleted, ["dictdb_backup_1700000000_000000.json"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn apply(&self, store: &dyn BackupStore) -> PruneReport {
        let mut deleted = Vec::with_capacity(self.deletions.len());
        for d in &self.deletions {
            debug!(file = %d.name, reason = %d.reason, "retention deletes a file");
            if let Err(error) = store.delete(&d.name).await {
                return PruneReport {
                    deleted,
                    failed: Some(PruneFailure {
                        file: d.name.clone(),
                        error,
                    }),
                };
            }
            deleted.push(d.name.clone());
        }
        PruneReport {
            deleted,
            failed: None,
        }
    }
}

/// A header line, then one line per file: `delete NAME: why`, `keep NAME:
/// rules`, `ignore NAME`. What a `--dry-run` prints.
impl fmt::Display for RetentionPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retention ({}): delete {} files ({} bytes), keep {}, ignore {}",
            self.policy,
            self.deletions.len(),
            self.bytes_freed(),
            self.kept.len(),
            self.ignored.len()
        )?;
        for d in &self.deletions {
            write!(f, "\ndelete {d}")?;
        }
        for k in &self.kept {
            write!(f, "\nkeep {k}")?;
        }
        for name in &self.ignored {
            let shown = crate::naming::printable_name(name);
            match BackupName::classify(name) {
                crate::naming::NameCheck::Refused(why) => write!(f, "\nignore {shown}: {why}")?,
                _ => write!(f, "\nignore {shown}: not a backup file")?,
            }
        }
        Ok(())
    }
}

/// What [`RetentionPlan::apply`] did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PruneReport {
    /// The files deleted, in the order they were.
    pub deleted: Vec<String>,
    /// The deletion that failed, if one did; the planned files after it were
    /// not tried.
    pub failed: Option<PruneFailure>,
}

impl PruneReport {
    /// True when every planned file was deleted.
    pub fn is_complete(&self) -> bool {
        self.failed.is_none()
    }
}

/// A deletion that failed, which stopped the prune.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PruneFailure {
    /// The file that could not be deleted.
    pub file: String,
    /// Why.
    pub error: Error,
}

/// One backup file of the listing.
struct Entry<'a> {
    file: &'a StoredFile,
    name: BackupName,
    /// In a format this crate reads (not pickle): only these are selected
    /// by rules, and only these are ever deleted.
    readable: bool,
}

impl Entry<'_> {
    /// Microseconds since the epoch.
    fn micros(&self) -> u128 {
        u128::from(self.name.secs) * 1_000_000 + u128::from(self.name.micros)
    }
}

impl RetentionPolicy {
    /// Plans what this policy deletes from a store holding `files` (a
    /// [`BackupStore::list`]ing) at time `now`. Pure: it reads neither the
    /// store nor the clock, so the same listing and `now` give the same plan.
    ///
    /// Files are ordered by name ([`BackupName`]'s order, which is the order
    /// they were written in); each delta belongs to the closest full backup
    /// before it, and a full backup with its deltas is a chain. A chain is
    /// kept whole if any rule keeps any of its files, and deleted whole
    /// otherwise. See [`RetentionPlan`] for an example.
    pub fn plan(&self, files: &[StoredFile], now: SystemTime) -> RetentionPlan {
        self.plan_with(files, now, None)
    }

    /// [`plan`](Self::plan), and also keeps the chain of the full backup
    /// `restorable` ([`KeepReason::Restorable`]) and every chain after it
    /// ([`KeepReason::NewerThanRestorable`]), whatever the rules say.
    ///
    /// `restorable` must be a full backup known to restore: the newest chain
    /// that a restore checked ([`Restore::newest_sound_chain`], what
    /// `dictdb-backup prune` does), or the full backup a manager has just
    /// written. [`plan`](Self::plan) alone protects the newest chain *by
    /// name*, which may be damaged or not be a backup at all; with this,
    /// no chain is deleted unless a newer chain kept is known to restore.
    /// A name that is not a backup's protects every chain.
    ///
    /// [`Restore::newest_sound_chain`]: crate::restore::Restore::newest_sound_chain
    pub fn plan_keeping(
        &self,
        files: &[StoredFile],
        now: SystemTime,
        restorable: &str,
    ) -> RetentionPlan {
        self.plan_with(files, now, Some(restorable))
    }

    fn plan_with(
        &self,
        files: &[StoredFile],
        now: SystemTime,
        restorable: Option<&str>,
    ) -> RetentionPlan {
        let mut ignored = Vec::new();
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        for file in files {
            if !seen.insert(file.name.as_str()) {
                continue; // a listing that repeats a name
            }
            match BackupName::parse(&file.name) {
                Some(name) => entries.push(Entry {
                    file,
                    readable: matches!(name.format, NameFormat::Supported(_)),
                    name,
                }),
                None => ignored.push(file.name.clone()),
            }
        }
        ignored.sort();
        // Two names can parse alike (`…_0100_…` and `…_100_…`): the listed
        // name breaks the tie, so the order never depends on the listing's.
        entries.sort_by(|a, b| {
            a.name
                .cmp(&b.name)
                .then_with(|| a.file.name.cmp(&b.file.name))
        });

        // Chains of indices into `entries`; the first starts with a delta
        // when deltas come before every full backup (orphans). Full backups
        // with the same time in their names (twins: `x.json` and a
        // `x.json.zst` or `x.msgpack` copy) are one chain: the deltas after
        // them name one of them as their base, and which one is only known
        // by reading them, so they are kept or deleted together.
        let mut chains: Vec<Vec<usize>> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match chains.last_mut() {
                Some(chain) if e.name.kind == BackupKind::Delta => chain.push(i),
                Some(chain)
                    if entries[chain[0]].name.kind == BackupKind::Full
                        && entries[chain[0]].name.stamp() == e.name.stamp() =>
                {
                    chain.push(i)
                }
                _ => chains.push(vec![i]),
            }
        }

        let mut direct = self.direct_reasons(&entries, &chains, now);
        if let Some(restorable) = restorable {
            let from = BackupName::parse(restorable).map(|n| n.stamp());
            let mut first = true;
            for chain in &chains {
                let head = &entries[chain[0]].name;
                if head.kind != BackupKind::Full || from.is_some_and(|s| head.stamp() < s) {
                    continue;
                }
                let reason = if first && from == Some(head.stamp()) {
                    KeepReason::Restorable
                } else {
                    KeepReason::NewerThanRestorable {
                        restorable: restorable.to_string(),
                    }
                };
                first = false;
                for &i in chain {
                    direct[i].push(reason.clone());
                }
            }
        }

        let mut deletions = Vec::new();
        let mut kept = Vec::new();
        for chain in &chains {
            let head = &entries[chain[0]];
            if let Some(&because) = chain.iter().find(|&&i| !direct[i].is_empty()) {
                for &i in chain {
                    let reasons = if direct[i].is_empty() {
                        vec![KeepReason::Chain {
                            because: entries[because].file.name.clone(),
                        }]
                    } else {
                        direct[i].clone()
                    };
                    let e = &entries[i];
                    kept.push(Kept {
                        name: e.file.name.clone(),
                        backup: e.name.clone(),
                        size: e.file.size,
                        reasons,
                    });
                }
            } else {
                // Newest delta first, the full backup last: a crash between
                // two deletions leaves a shorter chain, never a delta
                // without what it builds on.
                for &i in chain.iter().rev() {
                    let e = &entries[i];
                    let reason = match (e.name.kind, head.name.kind) {
                        (BackupKind::Full, _) => DeleteReason::NotKept,
                        (_, BackupKind::Full) => DeleteReason::ChainDeleted {
                            full: head.file.name.clone(),
                        },
                        _ => DeleteReason::Orphan,
                    };
                    deletions.push(Deletion {
                        name: e.file.name.clone(),
                        backup: e.name.clone(),
                        size: e.file.size,
                        reason,
                    });
                }
            }
        }
        RetentionPlan {
            policy: self.clone(),
            deletions,
            kept,
            ignored,
        }
    }

    /// The rules that keep each entry itself (not through its chain).
    fn direct_reasons(
        &self,
        entries: &[Entry<'_>],
        chains: &[Vec<usize>],
        now: SystemTime,
    ) -> Vec<Vec<KeepReason>> {
        let mut direct = vec![Vec::new(); entries.len()];
        if let Some(newest) = chains.last() {
            for &i in newest {
                direct[i].push(KeepReason::NewestChain);
            }
        }
        let fulls_newest_first: Vec<usize> = (0..entries.len())
            .rev()
            .filter(|&i| entries[i].readable && entries[i].name.kind == BackupKind::Full)
            .collect();
        // Twins (the same time) share a rank: they are one chain.
        let mut rank = 0;
        let mut last_stamp = None;
        for &i in &fulls_newest_first {
            let stamp = entries[i].name.stamp();
            if last_stamp != Some(stamp) {
                rank += 1;
                last_stamp = Some(stamp);
            }
            if rank > self.last {
                break;
            }
            direct[i].push(KeepReason::Last { rank });
        }
        if !self.within.is_zero() {
            if let Some(newest) = entries.iter().rev().find(|e| e.readable) {
                let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
                let end = newest.micros().min(now);
                let start = end.saturating_sub(self.within.as_micros());
                for (i, e) in entries.iter().enumerate() {
                    if e.readable && e.micros() >= start {
                        direct[i].push(KeepReason::Within);
                    }
                }
            }
        }
        let periods: [(usize, PeriodOf); 3] = [
            (self.daily, |d| KeepReason::Daily {
                year: d.year(),
                month: d.month(),
                day: d.day(),
            }),
            (self.weekly, |d| {
                let w = d.iso_week_date();
                KeepReason::Weekly {
                    year: w.year(),
                    week: w.week(),
                }
            }),
            (self.monthly, |d| KeepReason::Monthly {
                year: d.year(),
                month: d.month(),
            }),
        ];
        for (n, period) in periods {
            // Newest first, so the first full backup met in each period is
            // that period's newest; the periods met are the last ones that
            // have a full backup, as in restic.
            let mut last_period = None;
            let mut count = 0;
            for &i in &fulls_newest_first {
                if count == n {
                    break;
                }
                // Beyond the year 9999 there is no calendar: such a name is
                // kept by no period rule (other rules still apply).
                let Some(date) = utc_date(entries[i].name.secs) else {
                    continue;
                };
                let p = period(date);
                if last_period.as_ref() != Some(&p) {
                    direct[i].push(p.clone());
                    last_period = Some(p);
                    count += 1;
                }
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if !e.readable {
                direct[i].push(KeepReason::Unreadable);
            }
            if self.keeps_everything() && direct[i].is_empty() {
                direct[i].push(KeepReason::NoRule);
            }
        }
        direct
    }
}

/// The calendar period (as the reason it keeps a file) a UTC date is in.
type PeriodOf = fn(Date) -> KeepReason;

/// The UTC calendar date of a Unix time, if it is within jiff's range.
fn utc_date(secs: u64) -> Option<Date> {
    let ts = Timestamp::from_second(i64::try_from(secs).ok()?).ok()?;
    Some(TimeZone::UTC.to_datetime(ts).date())
}
