//! `prune`: deletes old backups by retention rules restic users know
//! (`--keep-last`, `--keep-within`, `--keep-daily`, `--keep-weekly`,
//! `--keep-monthly`), whole chains at a time, in an order that keeps the
//! store restorable at every step; `--dry-run` shows what would go and why.
//!
//! Before planning, the chains are restored strictly, newest first, until
//! one restores (`Restore::newest_sound_chain`, the restore's own code):
//! that chain and every newer one are kept whatever the rules say, and
//! when no chain restores nothing is deleted (exit 1). The rules alone go
//! by names, and the newest name can be damaged, a copy or garbage.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use dictdb::backup::retention::RetentionPlan;
use dictdb::RetentionPolicy;
use serde::Serialize;

use crate::error::{CliError, Exit};
use crate::output::{plural, size, Output};
use crate::store;

/// What `prune` was asked for.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) store: PathBuf,
    pub(crate) keep_last: usize,
    pub(crate) keep_within: Option<Duration>,
    pub(crate) keep_daily: usize,
    pub(crate) keep_weekly: usize,
    pub(crate) keep_monthly: usize,
    pub(crate) dry_run: bool,
}

#[derive(Serialize)]
struct PruneReport {
    store: String,
    policy: String,
    dry_run: bool,
    /// What goes (in a dry run: would go), in deletion order, and why.
    delete: Vec<Gone>,
    keep: Vec<Kept>,
    ignored: Vec<String>,
    /// Entries never pruned because they are not trusted as backups: names
    /// shaped like a backup's outside 1970..2200 or with leading zeros,
    /// object keys no plain name addresses. Also in `ignored` when named.
    skipped: Vec<Skipped>,
    bytes_freed: u64,
    /// Deleted (empty in a dry run).
    deleted: Vec<String>,
    /// The deletion that failed, which stopped the prune.
    failed: Option<Failed>,
    /// The full backup of the newest chain that restores (read and checked
    /// before planning); it and every newer chain are kept.
    restorable: Option<String>,
    /// Newer chains that do not restore (kept), newest first, and why.
    unsound: Vec<Failed>,
    #[serde(skip)]
    plan: String,
}

#[derive(Serialize)]
struct Gone {
    name: String,
    size: u64,
    reason: String,
}

#[derive(Serialize)]
struct Kept {
    name: String,
    reasons: Vec<String>,
}

#[derive(Serialize)]
struct Skipped {
    /// Control characters escaped.
    name: String,
    reason: String,
    /// Named like a backup: planned with its chain all the same.
    #[serde(skip)]
    unreadable_backup: bool,
}

#[derive(Serialize)]
struct Failed {
    file: String,
    error: String,
}

pub(crate) async fn run(req: Request, out: Output) -> Result<Exit, CliError> {
    let policy = RetentionPolicy::default()
        .keep_last(req.keep_last)
        .keep_within(req.keep_within.unwrap_or(Duration::ZERO))
        .keep_daily(req.keep_daily)
        .keep_weekly(req.keep_weekly)
        .keep_monthly(req.keep_monthly);
    if policy.keeps_everything() {
        return Err(CliError::usage(
            "no retention rule given: with none, prune would keep everything (a no-op, so \
             nothing was done); give at least one of --keep-last N, --keep-within DURATION, \
             --keep-daily N, --keep-weekly N, --keep-monthly N (0 turns a rule off)",
        ));
    }
    let store = store::open(&req.store)?;
    // Deleting is writing: prune takes the store's single-writer lock (the
    // lock file of a directory, the lease of a prefix) for as long as it
    // plans and deletes, so it never deletes under a live writer, whose own
    // retention (BackupConfig::retention) is the way to prune a store in
    // use. A dry run reads only.
    let lock = if req.dry_run {
        None
    } else {
        store.lock_writer().await.map_err(|e| match e {
            dictdb::Error::Locked { location, holder } => CliError::from(dictdb::Error::Locked {
                location,
                holder: format!(
                    "{holder}; prune deletes only while no writer holds the store: stop the \
                     service, or give its BackupManager a retention policy"
                ),
            }),
            e => CliError::from(e),
        })?
    };
    let listing = store.list_all().await?;
    // The rules go by names; what is kept must restore. Checked first, by
    // restoring the chains newest first until one does.
    let sound = match crate::keys::restore(std::sync::Arc::clone(&store))
        .newest_sound_chain()
        .await
    {
        Ok(sound) => sound,
        Err(e) => {
            if let Some(lock) = lock {
                lock.release().await;
            }
            return Err(e.into());
        }
    };
    let unsound: Vec<Failed> = sound
        .newer_unsound
        .iter()
        .map(|s| Failed {
            file: dictdb::printable_name(&s.file),
            error: s.error.to_string(),
        })
        .collect();
    let Some(restorable) = sound.base else {
        let why = match sound.newer_unsound.first() {
            None => "it holds no full backup".to_string(),
            Some(first) => format!(
                "{} checked, none restores; the newest, {}: {}",
                plural(sound.newer_unsound.len() as u64, "chain", "chains"),
                dictdb::printable_name(&first.file),
                first.error
            ),
        };
        if let Some(lock) = lock {
            lock.release().await;
        }
        return Err(CliError::new(
            Exit::Damaged,
            "no_sound_chain",
            format!(
                "prune deleted nothing: no chain of {} restores ({why}); a prune keeps the newest \
                 chain that restores and everything newer, so with none it cannot tell what is \
                 safe to delete (run `verify` to see every problem)",
                dictdb::printable_name(&store.location())
            ),
        ));
    };
    let plan = policy.plan_keeping(
        &listing.with_unreadable_backups(),
        SystemTime::now(),
        &restorable,
    );
    let mut report = PruneReport::of(
        dictdb::printable_name(&store.location()),
        &plan,
        req.dry_run,
    );
    report.restorable = Some(restorable);
    report.unsound = unsound;
    let refused = listing.refuse_untrusted_names().skipped;
    report.skipped = refused
        .into_iter()
        .map(|s| Skipped {
            unreadable_backup: s.backup_name().is_some(),
            name: s.name,
            reason: s.reason,
        })
        .collect();
    if !req.dry_run && !plan.deletions().is_empty() {
        let done = plan.apply(&*store).await;
        report.deleted = done.deleted;
        report.failed = done.failed.map(|f| Failed {
            error: f.error.to_string(),
            file: f.file,
        });
    }
    if let Some(lock) = lock {
        lock.release().await;
    }
    out.report(&report)?;
    for u in &report.unsound {
        out.warn(&format!(
            "the chain of {} does not restore, so it is kept, with every chain from {}, the \
             newest chain that restores: {}",
            u.file,
            report.restorable.as_deref().unwrap_or("?"),
            u.error,
        ));
    }
    match &report.failed {
        None if !report.unsound.is_empty() => Ok(Exit::Damaged),
        None => Ok(Exit::Ok),
        Some(f) => {
            out.warn(&format!(
                "prune stopped at {}: {} (deleted {} before it; every chain left still restores)",
                f.file,
                f.error,
                plural(report.deleted.len() as u64, "file", "files")
            ));
            Ok(Exit::Usage)
        }
    }
}

impl PruneReport {
    fn of(store: String, plan: &RetentionPlan, dry_run: bool) -> PruneReport {
        PruneReport {
            store,
            policy: plan.policy().to_string(),
            dry_run,
            delete: plan
                .deletions()
                .iter()
                .map(|d| Gone {
                    name: d.name.clone(),
                    size: d.size,
                    reason: d.reason.to_string(),
                })
                .collect(),
            keep: plan
                .kept()
                .iter()
                .map(|k| Kept {
                    name: k.name.clone(),
                    reasons: k.reasons.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            ignored: plan.ignored().to_vec(),
            skipped: Vec::new(),
            bytes_freed: plan.bytes_freed(),
            deleted: Vec::new(),
            failed: None,
            restorable: None,
            unsound: Vec::new(),
            plan: plan.to_string(),
        }
    }
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.skipped {
            if s.unreadable_backup {
                writeln!(
                    f,
                    "cannot read {}: {} (it goes with its chain)",
                    s.name, s.reason
                )?;
            } else {
                writeln!(f, "skipped {}: {}", s.name, s.reason)?;
            }
        }
        if self.dry_run {
            writeln!(f, "dry run: nothing deleted from {}", self.store)?;
            return writeln!(f, "{}", self.plan);
        }
        if self.delete.is_empty() {
            return writeln!(
                f,
                "{}: nothing to delete ({}: keeps {})",
                self.store,
                self.policy,
                plural(self.keep.len() as u64, "file", "files")
            );
        }
        for name in &self.deleted {
            let why = self
                .delete
                .iter()
                .find(|d| &d.name == name)
                .map_or("", |d| d.reason.as_str());
            writeln!(f, "deleted {name}: {why}")?;
        }
        if let Some(x) = &self.failed {
            writeln!(f, "FAILED to delete {}: {}", x.file, x.error)?;
        }
        let freed: u64 = self
            .delete
            .iter()
            .filter(|d| self.deleted.contains(&d.name))
            .map(|d| d.size)
            .sum();
        writeln!(
            f,
            "{} ({}): deleted {} ({}), kept {}",
            self.store,
            self.policy,
            plural(self.deleted.len() as u64, "file", "files"),
            size(freed),
            plural(self.keep.len() as u64, "file", "files")
        )
    }
}
