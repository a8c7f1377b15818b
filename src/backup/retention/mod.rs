//! Retention: which old backups to delete, as restic and litestream users
//! know it.
//!
//! A [`RetentionPolicy`] combines rules — keep the last N full backups,
//! everything within a duration, the newest full backup of each of the last
//! N days, ISO weeks or months (in UTC) — and a file is kept if any rule
//! keeps it. [`RetentionPolicy::plan`] turns a store listing and a time into
//! a [`RetentionPlan`]: pure, so it can be printed as a dry run (its
//! `Display` says what goes and why) and tested without a clock or a store.
//! [`RetentionPlan::apply`] deletes the planned files from a
//! [`BackupStore`]. A manager configured with
//! [`BackupConfig::retention`](crate::BackupConfig::retention) does both
//! after each successful full backup.
//!
//! # Chains, and what is never deleted
//!
//! Backup names sort in the order they were written. A delta belongs to the
//! closest full backup before it; a full backup and its deltas are a
//! *chain*, the unit a restore uses. Retention keeps or deletes whole
//! chains:
//!
//! - a delta is kept while the full backup it builds on is kept, and a delta
//!   that a rule keeps (`keep_within`) keeps its full backup and every delta
//!   between them, so a kept file can always be restored;
//! - the newest chain is never deleted, whatever the policy;
//! - files that are not backups, and backups in a format this crate cannot
//!   read (pickle files of the Python original), are never deleted, nor is
//!   the chain a pickle file belongs to;
//! - deltas written before any full backup (orphans, which cannot be
//!   restored) are a chain of their own, deleted when no rule keeps them;
//! - the deletion order keeps the store restorable at every step: whole
//!   chains, oldest first, and within a chain the deltas newest first and
//!   the full backup last. A crash mid-prune leaves every chain a prefix of
//!   itself (a full backup and its first deltas), which restores.
//!
//! Only full backups count for `keep_last` and the calendar rules; files of
//! any kind count for `keep_within`. Periods are UTC: see
//! [`RetentionPolicy`] for why.
//!
//! # Examples
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use dictdb::backup::retention::{DeleteReason, KeepReason};
//! use dictdb::store::StoredFile;
//! use dictdb::RetentionPolicy;
//!
//! // A full backup every day at noon UTC from 2024-03-01 to 2024-03-10,
//! // each followed by a delta an hour later.
//! let noon = 1_709_294_400; // 2024-03-01T12:00:00Z
//! let mut files = Vec::new();
//! for day in 0..10u64 {
//!     let t = noon + day * 86_400;
//!     files.push(StoredFile { name: format!("dictdb_backup_{t}_000000.json"), size: 100 });
//!     files.push(StoredFile { name: format!("dictdb_delta_{}_000000.json", t + 3600), size: 10 });
//! }
//! let now = UNIX_EPOCH + Duration::from_secs(noon + 9 * 86_400 + 7200);
//! let plan = RetentionPolicy::default().keep_daily(3).plan(&files, now);
//!
//! // Three chains stay: 8, 9 and 10 March.
//! assert_eq!(plan.kept().len(), 6);
//! assert_eq!(
//!     plan.kept()[0].reasons,
//!     [KeepReason::Daily { year: 2024, month: 3, day: 8 }]
//! );
//! // The rest goes, each delta before its full backup.
//! assert_eq!(plan.deletions().len(), 14);
//! assert!(matches!(plan.deletions()[0].reason, DeleteReason::ChainDeleted { .. }));
//! assert_eq!(plan.deletions()[1].reason, DeleteReason::NotKept);
//! ```

mod plan;
mod policy;

use std::time::SystemTime;

use tokio::sync::broadcast;
use tracing::{info, warn};

pub use plan::{
    DeleteReason, Deletion, KeepReason, Kept, PruneFailure, PruneReport, RetentionPlan,
};
pub use policy::RetentionPolicy;

use super::BackupEvent;
use crate::store::{BackupStore, SkippedEntry};

/// Lists the store, plans with `policy` at `now`, and applies the plan,
/// reporting what went as [`BackupEvent::Pruned`] and a failure (to list, or
/// the deletion that stopped the prune) as [`BackupEvent::PruneFailed`].
/// Never fatal: what stays is pruned after the next full backup.
///
/// Entries the listing skipped (see [`BackupEvent::EntriesSkipped`]) are
/// reported and returned (`None`: the store could not be listed); their
/// names never reach the plan, so none is ever deleted.
///
/// `written` is the full backup the manager has just written. Its chain and
/// every chain after it are kept ([`RetentionPolicy::plan_keeping`]), the
/// same rule `dictdb-backup prune` applies after reading the chains: no
/// chain is deleted unless a newer chain kept is known to restore. Here no
/// file is read to know it: the manager serialised that full backup from
/// its own database and its commit succeeded (retention runs only after a
/// successful full backup), so the chain it starts restores. And it is the
/// newest chain: the manager names each file after every trusted name in
/// the store (a name from a clock that ran ahead included), and holds the
/// directory's lock, so nothing newer can appear beside it. Passing its
/// name still matters where that does not hold (object storage has no
/// lock): a chain named after it is kept, never taken for the newest chain
/// in its place, so the chain just written is never deleted.
pub(crate) async fn prune(
    store: &dyn BackupStore,
    policy: &RetentionPolicy,
    now: SystemTime,
    written: &str,
    events: &broadcast::Sender<BackupEvent>,
) -> Option<Vec<SkippedEntry>> {
    if policy.keeps_everything() {
        return None;
    }
    let listing = match store.list_all().await {
        Ok(l) => l.refuse_untrusted_names(),
        Err(error) => {
            warn!(cause = %error, "retention could not list the backup store");
            let _ = events.send(BackupEvent::PruneFailed {
                file: store.location(),
                error,
            });
            return None;
        }
    };
    let planned = listing.with_unreadable_backups();
    let skipped = listing.skipped;
    if !skipped.is_empty() {
        warn!(
            entries = skipped.len(),
            first = %skipped[0],
            "the backup store holds entries that are not backup files; they are skipped"
        );
        let _ = events.send(BackupEvent::EntriesSkipped {
            entries: skipped.clone(),
        });
    }
    let plan = policy.plan_keeping(&planned, now, written);
    if plan.deletions().is_empty() {
        return Some(skipped);
    }
    let report = plan.apply(store).await;
    if !report.deleted.is_empty() {
        info!(
            files = report.deleted.len(),
            policy = %policy,
            "retention deleted old backups"
        );
        let _ = events.send(BackupEvent::Pruned {
            files: report.deleted,
        });
    }
    if let Some(failure) = report.failed {
        warn!(
            file = %failure.file,
            cause = %failure.error,
            "retention could not delete a file; it stops there and tries again after the next full backup"
        );
        let _ = events.send(BackupEvent::PruneFailed {
            file: failure.file,
            error: failure.error,
        });
    }
    Some(skipped)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::store::StoredFile;

    fn f(name: &str) -> StoredFile {
        StoredFile {
            name: name.into(),
            size: 1,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn gone(plan: &RetentionPlan) -> Vec<&str> {
        plan.deletions().iter().map(|d| d.name.as_str()).collect()
    }

    fn kept(plan: &RetentionPlan) -> Vec<&str> {
        plan.kept().iter().map(|k| k.name.as_str()).collect()
    }

    #[test]
    fn keep_last_keeps_newest_chains_and_foreign_files() {
        let files = [
            f("dictdb_backup_100_000000.json"),
            f("dictdb_delta_101_000000.json"),
            f("dictdb_backup_200_000000.msgpack"),
            f("dictdb_delta_201_000000.msgpack"),
            f("dictdb_backup_300_000000.json"),
            f("dictdb_delta_301_000000.json"),
            f("notes.txt"),
        ];
        let keep = |n| {
            RetentionPolicy::default()
                .keep_last(n)
                .plan(&files, at(400))
        };
        assert_eq!(
            gone(&keep(2)),
            [
                "dictdb_delta_101_000000.json",
                "dictdb_backup_100_000000.json"
            ]
        );
        assert!(gone(&keep(3)).is_empty());
        assert_eq!(
            gone(&keep(1)),
            [
                "dictdb_delta_101_000000.json",
                "dictdb_backup_100_000000.json",
                "dictdb_delta_201_000000.msgpack",
                "dictdb_backup_200_000000.msgpack",
            ]
        );
        assert_eq!(keep(1).ignored(), ["notes.txt"]);
        let last = keep(1);
        assert_eq!(
            last.kept()[0].reasons,
            [KeepReason::NewestChain, KeepReason::Last { rank: 1 }]
        );
        assert_eq!(last.kept()[1].reasons, [KeepReason::NewestChain]);
    }

    #[test]
    fn the_default_policy_deletes_nothing() {
        let files = [
            f("dictdb_delta_50_000000.json"),
            f("dictdb_backup_100_000000.json"),
            f("dictdb_backup_200_000000.json"),
        ];
        let plan = RetentionPolicy::default().plan(&files, at(1_000_000));
        assert!(plan.deletions().is_empty());
        assert_eq!(plan.kept()[0].reasons, [KeepReason::NoRule]);
        assert_eq!(plan.kept()[2].reasons, [KeepReason::NewestChain]);
    }

    #[test]
    fn a_pickle_file_keeps_its_chain_and_still_ends_the_chain_before() {
        // The Python original's deltas after a pickle full backup build on
        // it, not on the JSON backup before.
        let files = [
            f("dictdb_backup_100_000000.json"),
            f("dictdb_delta_101_000000.json"),
            f("dictdb_backup_200_000000.pickle"),
            f("dictdb_delta_201_000000.json"),
            f("dictdb_backup_300_000000.json"),
            f("dictdb_backup_400_000000.json"),
            f("dictdb_delta_401_000000.pickle"),
            f("dictdb_delta_402_000000.json"),
            f("dictdb_backup_500_000000.json"),
        ];
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .plan(&files, at(600));
        assert_eq!(
            gone(&plan),
            [
                "dictdb_delta_101_000000.json",
                "dictdb_backup_100_000000.json",
                "dictdb_backup_300_000000.json",
            ]
        );
        let chain = &plan.kept()[1];
        assert_eq!(chain.name, "dictdb_delta_201_000000.json");
        assert_eq!(
            chain.reasons,
            [KeepReason::Chain {
                because: "dictdb_backup_200_000000.pickle".into()
            }]
        );
        // A pickle delta keeps the full backup before it, and the delta after.
        assert!(kept(&plan).contains(&"dictdb_backup_400_000000.json"));
        assert!(kept(&plan).contains(&"dictdb_delta_402_000000.json"));
    }

    #[test]
    fn a_delta_in_the_window_keeps_its_full_backup_and_the_deltas_between() {
        let day = 86_400;
        let files = [
            f("dictdb_backup_0_000000.json"),
            f(&format!("dictdb_delta_{}_000000.json", 2 * day)),
            f(&format!("dictdb_delta_{}_000000.json", 9 * day)),
            f(&format!("dictdb_delta_{}_000000.json", 9 * day + 1)),
            f(&format!("dictdb_backup_{}_000000.json", 10 * day)),
        ];
        let plan = RetentionPolicy::default()
            .keep_within(Duration::from_secs(day))
            .plan(&files, at(10 * day + 5));
        assert!(gone(&plan).is_empty(), "{plan}");
        assert_eq!(
            plan.kept()[1].reasons,
            [KeepReason::Chain {
                because: format!("dictdb_delta_{}_000000.json", 9 * day)
            }]
        );
        assert_eq!(plan.kept()[2].reasons, [KeepReason::Within]);
        // One second less of window, and the old chain goes.
        let plan = RetentionPolicy::default()
            .keep_within(Duration::from_secs(day - 2))
            .plan(&files, at(10 * day + 5));
        assert_eq!(gone(&plan).len(), 4, "{plan}");
        assert_eq!(gone(&plan)[3], "dictdb_backup_0_000000.json");
    }

    #[test]
    fn the_window_ends_at_the_newest_backup_or_now_whichever_is_earlier() {
        let files = [
            f("dictdb_backup_1000_000000.json"),
            f("dictdb_backup_2000_000000.json"),
            f("dictdb_backup_3000_000000.json"),
        ];
        let within = RetentionPolicy::default().keep_within(Duration::from_secs(1000));
        // A store nobody writes to any more: the last 1000 s of its history.
        assert_eq!(
            gone(&within.plan(&files, at(1_000_000))),
            ["dictdb_backup_1000_000000.json"]
        );
        // A newest name from a clock that ran ahead does not move the window.
        assert!(gone(&within.plan(&files, at(1900))).is_empty());
        // Before the epoch: the window starts at 0, nothing goes.
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert!(gone(&within.plan(&files, before)).is_empty());
        // A huge window.
        assert!(gone(
            &RetentionPolicy::default()
                .keep_within(Duration::MAX)
                .plan(&files, at(u64::MAX / 2))
        )
        .is_empty());
    }

    #[test]
    fn orphan_deltas_go_newest_first_unless_kept() {
        let files = [
            f("dictdb_delta_10_000000.json"),
            f("dictdb_delta_20_000000.json"),
            f("dictdb_backup_30_000000.json"),
            f("dictdb_delta_40_000000.json"),
        ];
        let plan = RetentionPolicy::default().keep_last(5).plan(&files, at(50));
        assert_eq!(
            gone(&plan),
            ["dictdb_delta_20_000000.json", "dictdb_delta_10_000000.json"]
        );
        assert!(plan
            .deletions()
            .iter()
            .all(|d| d.reason == DeleteReason::Orphan));
        let plan = RetentionPolicy::default()
            .keep_within(Duration::from_secs(25))
            .plan(&files, at(50));
        assert!(gone(&plan).is_empty(), "{plan}");
        // Only deltas: they are the newest chain.
        let only = &files[..2];
        let plan = RetentionPolicy::default().keep_last(1).plan(only, at(50));
        assert!(gone(&plan).is_empty());
        assert_eq!(plan.kept()[0].reasons, [KeepReason::NewestChain]);
    }

    #[test]
    fn nothing_to_plan() {
        let p = RetentionPolicy::default().keep_last(1).keep_daily(1);
        let plan = p.plan(&[], at(0));
        assert!(plan.deletions().is_empty() && plan.kept().is_empty());
        let foreign = [f("a.json"), f("dictdb_backup_1_2.json"), f("a.json")];
        let plan = p.plan(&foreign, at(0));
        assert!(plan.deletions().is_empty() && plan.kept().is_empty());
        // A listing that repeats a name lists it once.
        assert_eq!(plan.ignored(), ["a.json", "dictdb_backup_1_2.json"]);
    }

    #[test]
    fn ties_in_the_same_microsecond_order_full_before_delta_then_by_name() {
        let files = [
            f("dictdb_delta_100_000000.msgpack"),
            f("dictdb_backup_100_000000.msgpack"),
            f("dictdb_delta_100_000000.json"),
            f("dictdb_backup_100_000000.json"),
            f("dictdb_backup_0100_000000.json"),
        ];
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .plan(&files, at(200));
        // Fulls: 100.json < 100.msgpack, twins of the same time: one chain
        // (the deltas name which one they build on), kept whole. A padded
        // name is no writer's: ignored, never deleted (its unpadded
        // spelling is another file).
        assert!(gone(&plan).is_empty(), "{plan}");
        assert_eq!(plan.ignored(), ["dictdb_backup_0100_000000.json"]);
        assert_eq!(
            kept(&plan),
            [
                "dictdb_backup_100_000000.json",
                "dictdb_backup_100_000000.msgpack",
                "dictdb_delta_100_000000.json",
                "dictdb_delta_100_000000.msgpack",
            ]
        );
        assert_eq!(
            plan.kept()[0].reasons,
            [KeepReason::NewestChain, KeepReason::Last { rank: 1 }]
        );
    }

    #[test]
    fn twins_of_a_kept_full_backup_are_kept_and_share_its_rank() {
        // A `zstd` copy beside the older full backup: the chain of 200 and
        // both files of 100 (one chain) are the last two.
        let files = [
            f("dictdb_backup_50_000000.json"),
            f("dictdb_backup_100_000000.json"),
            f("dictdb_backup_100_000000.json.zst"),
            f("dictdb_delta_101_000000.json"),
            f("dictdb_backup_200_000000.json"),
        ];
        let plan = RetentionPolicy::default()
            .keep_last(2)
            .plan(&files, at(300));
        assert_eq!(gone(&plan), ["dictdb_backup_50_000000.json"]);
        // keep-last 1: the twins go together, the delta first.
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .plan(&files, at(300));
        assert_eq!(
            gone(&plan),
            [
                "dictdb_backup_50_000000.json",
                "dictdb_delta_101_000000.json",
                "dictdb_backup_100_000000.json.zst",
                "dictdb_backup_100_000000.json",
            ]
        );
    }

    #[test]
    fn plan_keeping_keeps_the_restorable_chain_and_every_newer_one() {
        let files = [
            f("dictdb_backup_100_000000.json"),
            f("dictdb_delta_101_000000.json"),
            f("dictdb_backup_200_000000.json"),
            f("dictdb_delta_201_000000.json"),
            f("dictdb_backup_300_000000.json"),
        ];
        let p = RetentionPolicy::default().keep_last(1);
        // 300 (newest by name) does not restore; 200 does.
        let plan = p.plan_keeping(&files, at(400), "dictdb_backup_200_000000.json");
        assert_eq!(
            gone(&plan),
            [
                "dictdb_delta_101_000000.json",
                "dictdb_backup_100_000000.json"
            ]
        );
        assert_eq!(plan.kept()[0].reasons, [KeepReason::Restorable]);
        assert_eq!(
            plan.kept()[2].reasons,
            [
                KeepReason::NewestChain,
                KeepReason::Last { rank: 1 },
                KeepReason::NewerThanRestorable {
                    restorable: "dictdb_backup_200_000000.json".into()
                }
            ]
        );
        // The oldest restores: nothing goes.
        let plan = p.plan_keeping(&files, at(400), "dictdb_backup_100_000000.json");
        assert!(gone(&plan).is_empty(), "{plan}");
        // A name that is no backup's protects everything.
        let plan = p.plan_keeping(&files, at(400), "notes.txt");
        assert!(gone(&plan).is_empty(), "{plan}");
        // The newest restores: the rules alone.
        assert_eq!(
            gone(&p.plan_keeping(&files, at(400), "dictdb_backup_300_000000.json")),
            gone(&p.plan(&files, at(400)))
        );
    }

    #[test]
    fn gfs_periods_are_utc_iso_weeks_and_months() {
        // 2026-12-31 (Thu, ISO 2026-W53), 2027-01-03 (Sun, 2026-W53),
        // 2027-01-04 (Mon, 2027-W01), all at 23:30 UTC.
        let t = |s: u64| format!("dictdb_backup_{s}_000000.json");
        let (thu, sun, mon) = (1_798_759_800, 1_799_019_000, 1_799_105_400);
        let files = [f(&t(thu)), f(&t(sun)), f(&t(mon))];
        let weekly = RetentionPolicy::default()
            .keep_weekly(5)
            .plan(&files, at(mon));
        assert_eq!(gone(&weekly), [t(thu)]);
        assert_eq!(
            weekly.kept()[0].reasons,
            [KeepReason::Weekly {
                year: 2026,
                week: 53
            }]
        );
        let monthly = RetentionPolicy::default()
            .keep_monthly(5)
            .plan(&files, at(mon));
        assert_eq!(gone(&monthly), [t(sun)]);
        assert_eq!(
            monthly.kept()[0].reasons,
            [KeepReason::Monthly {
                year: 2026,
                month: 12
            }]
        );
        let daily = RetentionPolicy::default()
            .keep_daily(2)
            .plan(&files, at(mon));
        assert_eq!(gone(&daily), [t(thu)]);
    }

    #[test]
    fn names_beyond_2200_are_ignored_never_kept_or_deleted() {
        let files = [
            f("dictdb_backup_1700000000_000000.json"),
            f("dictdb_backup_1800000000_000000.json"),
            f("dictdb_backup_99999999999999_000000.json"),
            f("dictdb_backup_18446744073709551615_999999.json"),
        ];
        let plan = RetentionPolicy::default()
            .keep_daily(1)
            .plan(&files, at(1_800_000_000));
        // A name past 2200 is no clock's: it neither passes for the newest
        // chain nor is deleted.
        assert_eq!(gone(&plan), ["dictdb_backup_1700000000_000000.json"]);
        assert_eq!(kept(&plan), ["dictdb_backup_1800000000_000000.json"]);
        assert_eq!(
            plan.ignored(),
            [
                "dictdb_backup_18446744073709551615_999999.json",
                "dictdb_backup_99999999999999_000000.json"
            ]
        );
        let text = plan.to_string();
        assert!(text.contains("outside 1970-01-01..2200-01-01"), "{text}");
    }

    #[test]
    fn the_plan_prints_what_goes_and_why() {
        let files = [
            f("dictdb_backup_100_000000.json"),
            f("dictdb_delta_101_000000.json"),
            f("dictdb_backup_200_000000.json"),
            f("notes.txt"),
        ];
        let plan = RetentionPolicy::default()
            .keep_last(1)
            .plan(&files, at(300));
        assert_eq!(
            plan.to_string(),
            "retention (keep-last 1): delete 2 files (2 bytes), keep 1, ignore 1\n\
             delete dictdb_delta_101_000000.json: a delta of dictdb_backup_100_000000.json, which goes\n\
             delete dictdb_backup_100_000000.json: no rule keeps this full backup or a delta of its chain\n\
             keep dictdb_backup_200_000000.json: newest chain, keep-last #1\n\
             ignore notes.txt: not a backup file"
        );
    }
}
