//! Retention: the planner checked against a plain model of the policy over
//! random backup histories, the invariants that must hold whatever the
//! policy, restic's documented examples, the executor against a directory
//! (and its stop at the first failure), and a manager that prunes.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use dictdb::backup::retention::{DeleteReason, KeepReason, RetentionPlan};
use dictdb::store::{BackupStore, BackupWriter, FileReader, LocalStore, StoredFile};
use dictdb::{
    restore_dir, BackupConfig, BackupEvent, BackupKind, BackupManager, DictDB, Error,
    RetentionPolicy,
};
use proptest::prelude::*;
use serde_json::json;

const DAY: u64 = 86_400;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn stored(names: &[String]) -> Vec<StoredFile> {
    names
        .iter()
        .map(|n| StoredFile {
            name: n.clone(),
            size: n.len() as u64,
        })
        .collect()
}

fn full(secs: u64) -> String {
    format!("dictdb_backup_{secs}_000000.json")
}

fn delta(secs: u64) -> String {
    format!("dictdb_delta_{secs}_000000.json")
}

fn gone(plan: &RetentionPlan) -> Vec<String> {
    plan.deletions().iter().map(|d| d.name.clone()).collect()
}

fn kept(plan: &RetentionPlan) -> Vec<String> {
    plan.kept().iter().map(|k| k.name.clone()).collect()
}

// ---------------------------------------------------------------------------
// The model: a plain, independent statement of the policy. Its calendar is
// written here from the proleptic Gregorian formulas, not taken from jiff.
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// ISO (year, week) of a day: the week's Thursday decides the year.
fn iso_week(days: i64) -> (i64, i64) {
    let monday_based = (days + 3).rem_euclid(7); // 1970-01-01 was a Thursday
    let thursday = days - monday_based + 3;
    let (year, _, _) = civil_from_days(thursday);
    (year, (thursday - days_from_civil(year, 1, 1)) / 7 + 1)
}

#[test]
fn the_models_calendar_is_right_where_it_matters() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    assert_eq!(days_from_civil(2024, 2, 29), 19_782);
    assert_eq!(iso_week(days_from_civil(2026, 12, 31)), (2026, 53));
    assert_eq!(iso_week(days_from_civil(2027, 1, 3)), (2026, 53));
    assert_eq!(iso_week(days_from_civil(2027, 1, 4)), (2027, 1));
    assert_eq!(iso_week(days_from_civil(2025, 12, 29)), (2026, 1));
    assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
    for d in 0..30_000 {
        let (y, m, dd) = civil_from_days(d);
        assert_eq!(days_from_civil(y, m, dd), d);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    Newest,
    Last(usize),
    Within,
    Day(i64, i64, i64),
    Week(i64, i64),
    Month(i64, i64),
    Pickle,
}

/// A backup file the generator wrote, described without parsing its name.
#[derive(Clone, Debug)]
struct Gen {
    name: String,
    secs: u64,
    micros: u32,
    is_full: bool,
    ext: &'static str,
}

impl Gen {
    fn micros_total(&self) -> u128 {
        u128::from(self.secs) * 1_000_000 + u128::from(self.micros)
    }
    fn readable(&self) -> bool {
        self.ext != "pickle"
    }
    /// Name order: time, then full before delta, then extension, then the
    /// listed text (two spellings of one time).
    fn key(&self) -> (u64, u32, bool, &'static str, String) {
        (
            self.secs,
            self.micros,
            !self.is_full,
            self.ext,
            self.name.clone(),
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Rules {
    last: usize,
    within_secs: u64,
    daily: usize,
    weekly: usize,
    monthly: usize,
}

impl Rules {
    fn policy(&self) -> RetentionPolicy {
        RetentionPolicy::default()
            .keep_last(self.last)
            .keep_within(Duration::from_secs(self.within_secs))
            .keep_daily(self.daily)
            .keep_weekly(self.weekly)
            .keep_monthly(self.monthly)
    }
    fn any(&self) -> bool {
        self.last + self.daily + self.weekly + self.monthly > 0 || self.within_secs > 0
    }
}

/// What the model expects.
#[derive(Debug)]
struct Expected {
    /// Backup files in name order.
    files: Vec<Gen>,
    /// Chain of each file: the index of its full backup, or `None` for a
    /// delta before every full backup.
    chain: Vec<Option<usize>>,
    direct: Vec<BTreeSet<Why>>,
    kept: Vec<bool>,
}

fn model(generated: &[Gen], rules: Rules, now_micros: u128) -> Expected {
    let mut by_name: BTreeMap<String, Gen> = BTreeMap::new();
    for g in generated {
        by_name.entry(g.name.clone()).or_insert_with(|| g.clone());
    }
    let mut files: Vec<Gen> = by_name.into_values().collect();
    files.sort_by_key(Gen::key);
    let n = files.len();

    let mut chain = Vec::with_capacity(n);
    let mut current = None;
    for (i, f) in files.iter().enumerate() {
        // Full backups of the same time (twins) are one chain.
        let twin = current.is_some_and(|c: usize| {
            files[c].is_full && (files[c].secs, files[c].micros) == (f.secs, f.micros)
        });
        if f.is_full && !twin {
            current = Some(i);
        }
        chain.push(current);
    }

    let mut direct = vec![BTreeSet::new(); n];
    if let Some(newest) = chain.last().copied() {
        for i in 0..n {
            if chain[i] == newest {
                direct[i].insert(Why::Newest);
            }
        }
    }
    for (i, f) in files.iter().enumerate() {
        if !f.readable() {
            direct[i].insert(Why::Pickle);
        }
    }
    let readable_fulls: Vec<usize> = (0..n)
        .filter(|&i| files[i].is_full && files[i].readable())
        .collect();
    // Twins share a rank.
    let mut rank = 0;
    let mut last_stamp = None;
    for &i in readable_fulls.iter().rev() {
        let stamp = (files[i].secs, files[i].micros);
        if last_stamp != Some(stamp) {
            rank += 1;
            last_stamp = Some(stamp);
        }
        if rank > rules.last {
            break;
        }
        direct[i].insert(Why::Last(rank));
    }
    if rules.within_secs > 0 {
        if let Some(newest) = files
            .iter()
            .filter(|f| f.readable())
            .map(Gen::micros_total)
            .max()
        {
            let end = newest.min(now_micros);
            let start = end.saturating_sub(u128::from(rules.within_secs) * 1_000_000);
            for (i, f) in files.iter().enumerate() {
                if f.readable() && f.micros_total() >= start {
                    direct[i].insert(Why::Within);
                }
            }
        }
    }
    // For each period with a full backup, its newest; then the newest n
    // periods.
    let gfs = |count: usize, period: &dyn Fn(i64) -> Why, direct: &mut Vec<BTreeSet<Why>>| {
        let mut newest_of: BTreeMap<Why, usize> = BTreeMap::new();
        for &i in &readable_fulls {
            let p = period((files[i].secs / DAY) as i64);
            let best = newest_of.entry(p).or_insert(i);
            if files[i].key() > files[*best].key() {
                *best = i;
            }
        }
        for (p, i) in newest_of.into_iter().rev().take(count) {
            direct[i].insert(p);
        }
    };
    gfs(
        rules.daily,
        &|d| {
            let (y, m, dd) = civil_from_days(d);
            Why::Day(y, m, dd)
        },
        &mut direct,
    );
    gfs(
        rules.weekly,
        &|d| {
            let (y, w) = iso_week(d);
            Why::Week(y, w)
        },
        &mut direct,
    );
    gfs(
        rules.monthly,
        &|d| {
            let (y, m, _) = civil_from_days(d);
            Why::Month(y, m)
        },
        &mut direct,
    );

    let kept: Vec<bool> = (0..n)
        .map(|i| !rules.any() || (0..n).any(|j| chain[j] == chain[i] && !direct[j].is_empty()))
        .collect();
    Expected {
        files,
        chain,
        direct,
        kept,
    }
}

fn why(r: &KeepReason) -> Option<Why> {
    Some(match r {
        KeepReason::NewestChain => Why::Newest,
        KeepReason::Last { rank } => Why::Last(*rank),
        KeepReason::Within => Why::Within,
        KeepReason::Daily { year, month, day } => {
            Why::Day(i64::from(*year), i64::from(*month), i64::from(*day))
        }
        KeepReason::Weekly { year, week } => Why::Week(i64::from(*year), i64::from(*week)),
        KeepReason::Monthly { year, month } => Why::Month(i64::from(*year), i64::from(*month)),
        KeepReason::Unreadable => Why::Pickle,
        KeepReason::Chain { .. } | KeepReason::NoRule => return None,
        other => panic!("a keep reason the model does not know: {other:?}"),
    })
}

// ---------------------------------------------------------------------------
// Random histories.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Step {
    gap: u64,
    micros: u32,
    is_full: bool,
    ext: &'static str,
    /// Spell the seconds with a leading zero: no writer's name, so not a
    /// backup (ignored, never deleted), like a foreign file.
    padded: bool,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![
            3 => Just(0u64),
            3 => 1u64..600,
            4 => 600u64..DAY,
            3 => DAY..4 * DAY,
            1 => 4 * DAY..40 * DAY,
        ],
        prop_oneof![2 => Just(0u32), 1 => 0u32..1_000_000],
        prop::bool::weighted(0.35),
        prop_oneof![12 => Just("json"), 6 => Just("msgpack"), 1 => Just("pickle")],
        prop::bool::weighted(0.03),
    )
        .prop_map(|(gap, micros, is_full, ext, padded)| Step {
            gap,
            micros,
            is_full,
            ext,
            padded,
        })
}

fn foreign() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("notes.txt".to_string()),
        Just("dictdb_backup_1_2.json".to_string()),
        Just("dictdb_backup_1700000000_000000.txt".to_string()),
        Just(".dictdb-tmp-42-dictdb_backup_1700000000_000000.json".to_string()),
        Just("dictdb_delta_1700000000_0000001.json".to_string()),
        Just("Dictdb_backup_1700000000_000000.json".to_string()),
        "[a-z_]{1,12}\\.json",
    ]
}

fn rules() -> impl Strategy<Value = Rules> {
    (
        prop_oneof![2 => Just(0usize), 1 => 1usize..5],
        prop_oneof![2 => Just(0u64), 1 => 1u64..10 * DAY],
        prop_oneof![1 => Just(0usize), 1 => 1usize..12],
        prop_oneof![1 => Just(0usize), 1 => 1usize..6],
        prop_oneof![1 => Just(0usize), 1 => 1usize..5],
    )
        .prop_map(|(last, within_secs, daily, weekly, monthly)| Rules {
            last,
            within_secs,
            daily,
            weekly,
            monthly,
        })
}

#[derive(Clone, Debug)]
struct History {
    backups: Vec<Gen>,
    foreign: Vec<String>,
    rules: Rules,
    now_micros: u128,
}

impl History {
    fn listing(&self) -> Vec<StoredFile> {
        let mut names: Vec<String> = self.backups.iter().map(|g| g.name.clone()).collect();
        names.extend(self.foreign.iter().cloned());
        // Stores list in any order; a listing may repeat a name.
        names.sort_by_key(|n| n.len() ^ (n.bytes().map(usize::from).sum::<usize>() % 7));
        stored(&names)
    }
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(u64::try_from(self.now_micros).unwrap())
    }
}

fn history() -> impl Strategy<Value = History> {
    (
        1_600_000_000u64..1_900_000_000,
        prop::collection::vec(step(), 0..50),
        prop::collection::vec(foreign(), 0..4),
        rules(),
        -3 * DAY as i64..10 * DAY as i64,
        prop::option::weighted(0.3, any::<prop::sample::Index>()),
    )
        .prop_map(|(start, steps, mut foreign, mut rules, now_offset, edge)| {
            let mut t = start;
            let mut backups = Vec::new();
            for s in steps {
                t += s.gap;
                let kind = if s.is_full { "backup" } else { "delta" };
                if s.padded {
                    foreign.push(format!("dictdb_{kind}_0{t}_{:06}.{}", s.micros, s.ext));
                    continue;
                }
                let secs = t.to_string();
                backups.push(Gen {
                    name: format!("dictdb_{kind}_{secs}_{:06}.{}", s.micros, s.ext),
                    secs: t,
                    micros: s.micros,
                    is_full: s.is_full,
                    ext: s.ext,
                });
            }
            // Now and then a window that ends exactly on an older backup's
            // second, to pin down that its start is inclusive.
            if let (Some(edge), true) = (edge, rules.within_secs > 0 && !backups.is_empty()) {
                let distance = t - backups[edge.index(backups.len())].secs;
                rules.within_secs = distance.max(1);
            }
            let now_secs = t.saturating_add_signed(now_offset);
            History {
                backups,
                foreign,
                rules,
                now_micros: u128::from(now_secs) * 1_000_000 + 250_000,
            }
        })
}

/// Checks a plan against the model and against the invariants.
fn check(h: &History, plan: &RetentionPlan) -> Result<(), TestCaseError> {
    let e = model(&h.backups, h.rules, h.now_micros);
    let n = e.files.len();
    let index: HashMap<&str, usize> = e
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.as_str(), i))
        .collect();

    // Same files kept and deleted as the model, each kept one for the same
    // rules.
    let want_gone: BTreeSet<&str> = (0..n)
        .filter(|&i| !e.kept[i])
        .map(|i| e.files[i].name.as_str())
        .collect();
    let got_gone: BTreeSet<&str> = plan.deletions().iter().map(|d| d.name.as_str()).collect();
    prop_assert_eq!(&got_gone, &want_gone, "{}", plan);
    prop_assert_eq!(plan.deletions().len(), got_gone.len(), "deleted twice");
    let want_kept: Vec<&str> = (0..n)
        .filter(|&i| e.kept[i])
        .map(|i| e.files[i].name.as_str())
        .collect();
    let got_kept: Vec<&str> = plan.kept().iter().map(|k| k.name.as_str()).collect();
    prop_assert_eq!(&got_kept, &want_kept, "kept, in name order");
    for k in plan.kept() {
        let i = index[k.name.as_str()];
        let got: BTreeSet<Why> = k.reasons.iter().filter_map(why).collect();
        prop_assert_eq!(&got, &e.direct[i], "rules keeping {}", k.name);
        prop_assert!(!k.reasons.is_empty());
        if e.direct[i].is_empty() {
            let expected = if h.rules.any() {
                let first = (0..n)
                    .find(|&j| e.chain[j] == e.chain[i] && !e.direct[j].is_empty())
                    .expect("a kept chain has a file a rule keeps");
                KeepReason::Chain {
                    because: e.files[first].name.clone(),
                }
            } else {
                KeepReason::NoRule
            };
            prop_assert_eq!(&k.reasons, &vec![expected]);
        }
    }
    for d in plan.deletions() {
        let i = index[d.name.as_str()];
        let expected = match (e.files[i].is_full, e.chain[i]) {
            (true, _) => DeleteReason::NotKept,
            (false, Some(f)) => DeleteReason::ChainDeleted {
                full: e.files[f].name.clone(),
            },
            (false, None) => DeleteReason::Orphan,
        };
        prop_assert_eq!(&d.reason, &expected);
    }
    let mut foreign: Vec<&str> = h.foreign.iter().map(String::as_str).collect();
    foreign.sort_unstable();
    foreign.dedup();
    prop_assert_eq!(plan.ignored().to_vec(), foreign);

    // Invariants, whatever the model says.
    // 1. The newest chain is never deleted.
    if let Some(newest) = e.chain.last() {
        for i in (0..n).filter(|&i| e.chain[i] == *newest) {
            prop_assert!(!got_gone.contains(e.files[i].name.as_str()));
        }
    }
    // 2. Every kept delta's full backup is kept.
    for i in (0..n).filter(|&i| e.kept[i] && !e.files[i].is_full) {
        if let Some(f) = e.chain[i] {
            prop_assert!(!got_gone.contains(e.files[f].name.as_str()));
        }
    }
    // 3. Nothing foreign, nothing pickle, is ever deleted.
    for d in plan.deletions() {
        prop_assert!(!h.foreign.contains(&d.name));
        prop_assert!(!d.name.ends_with(".pickle"));
    }
    // 4. After every prefix of the deletion order, each chain is a prefix
    //    of itself; and doomed chains go one after the other, oldest first.
    let mut present = vec![true; n];
    for step in 0..=plan.deletions().len() {
        if step > 0 {
            present[index[plan.deletions()[step - 1].name.as_str()]] = false;
        }
        let mut chains: BTreeMap<Option<usize>, Vec<bool>> = BTreeMap::new();
        for (head, here) in e.chain.iter().zip(&present) {
            chains.entry(*head).or_default().push(*here);
        }
        for (head, members) in chains {
            let holes = members.windows(2).any(|w| !w[0] && w[1]);
            prop_assert!(
                !holes,
                "after {} deletions chain {:?} is not a prefix",
                step,
                head.map(|f| &e.files[f].name)
            );
        }
    }
    let order: Vec<Option<usize>> = plan
        .deletions()
        .iter()
        .map(|d| e.chain[index[d.name.as_str()]])
        .collect();
    let mut runs = order.clone();
    runs.dedup();
    let mut sorted_runs = runs.clone();
    sorted_runs.sort();
    sorted_runs.dedup();
    prop_assert_eq!(&runs, &sorted_runs, "whole chains, oldest first");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The planner against the model, over random histories of full and
    /// delta backups across simulated days, weeks and months.
    #[test]
    fn the_plan_is_the_models(h in history()) {
        let plan = h.rules.policy().plan(&h.listing(), h.now());
        check(&h, &plan)?;

        // Pruning twice in a row deletes nothing the second time.
        let gone: BTreeSet<String> = gone(&plan).into_iter().collect();
        let rest: Vec<StoredFile> = h
            .listing()
            .into_iter()
            .filter(|f| !gone.contains(&f.name))
            .collect();
        let again = h.rules.policy().plan(&rest, h.now());
        prop_assert!(again.deletions().is_empty(), "second prune: {}", again);
    }
}

// ---------------------------------------------------------------------------
// The executor, against an in-memory store that fails one chosen deletion.
// ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct MemStore {
    files: Mutex<BTreeMap<String, u64>>,
    fail_on: Option<String>,
    deletes: Mutex<Vec<String>>,
}

#[async_trait]
impl BackupStore for MemStore {
    fn location(&self) -> String {
        "memory".into()
    }
    async fn list(&self) -> dictdb::Result<Vec<StoredFile>> {
        let files = self.files.lock().unwrap();
        Ok(files
            .iter()
            .map(|(name, size)| StoredFile {
                name: name.clone(),
                size: *size,
            })
            .collect())
    }
    async fn create(&self, name: &str) -> dictdb::Result<Box<dyn BackupWriter>> {
        Err(Error::Store {
            path: name.into(),
            message: "read-only test store".into(),
        })
    }
    async fn open(&self, name: &str) -> dictdb::Result<FileReader> {
        Err(Error::Store {
            path: name.into(),
            message: "no contents in this test store".into(),
        })
    }
    async fn read_range(&self, name: &str, _: std::ops::Range<u64>) -> dictdb::Result<Vec<u8>> {
        Err(Error::Store {
            path: name.into(),
            message: "no contents in this test store".into(),
        })
    }
    async fn delete(&self, name: &str) -> dictdb::Result<()> {
        self.deletes.lock().unwrap().push(name.to_string());
        if self.fail_on.as_deref() == Some(name) {
            return Err(Error::Store {
                path: name.into(),
                message: "injected fault: delete".into(),
            });
        }
        self.files.lock().unwrap().remove(name);
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Applying a plan deletes exactly its files in its order, and a failed
    /// deletion stops it there: what remains is the listing minus a prefix
    /// of the plan.
    #[test]
    fn applying_stops_at_the_first_failure(h in history(), fail_at in any::<prop::sample::Index>()) {
        let listing = h.listing();
        let plan = h.rules.policy().plan(&listing, h.now());
        let doomed = gone(&plan);
        let fail_on = (!doomed.is_empty() && fail_at.index(4) > 0)
            .then(|| doomed[fail_at.index(doomed.len())].clone());
        let store = MemStore {
            files: Mutex::new(listing.iter().map(|f| (f.name.clone(), f.size)).collect()),
            fail_on: fail_on.clone(),
            deletes: Mutex::default(),
        };
        let report = runtime().block_on(plan.apply(&store));
        let stop = fail_on
            .as_ref()
            .map_or(doomed.len(), |f| doomed.iter().position(|d| d == f).unwrap());
        prop_assert_eq!(&report.deleted, &doomed[..stop].to_vec());
        prop_assert_eq!(report.is_complete(), fail_on.is_none());
        if let Some(failed) = &report.failed {
            prop_assert_eq!(Some(&failed.file), fail_on.as_ref());
        }
        // Nothing after the failure was tried.
        prop_assert_eq!(store.deletes.lock().unwrap().len(), stop + usize::from(fail_on.is_some()));
        let left: BTreeSet<String> = store.files.lock().unwrap().keys().cloned().collect();
        let expected: BTreeSet<String> = listing
            .iter()
            .map(|f| f.name.clone())
            .filter(|n| !doomed[..stop].contains(n))
            .collect();
        prop_assert_eq!(left, expected);
    }
}

// ---------------------------------------------------------------------------
// restic's documented examples, and the corners.
// ---------------------------------------------------------------------------

/// 2024-05-01T00:00:00Z.
const MAY_1_2024: u64 = 1_714_521_600;

/// The restic forum's explanation of `--keep-daily 4`: one snapshot per day
/// that has one, so a day without a snapshot does not use up a slot.
#[test]
fn keep_daily_4_counts_only_days_that_have_a_backup() {
    let h = 3600;
    let a1 = full(MAY_1_2024 + 8 * h);
    let a2 = full(MAY_1_2024 + DAY + 8 * h);
    let a3 = full(MAY_1_2024 + DAY + 11 * h);
    let a4 = full(MAY_1_2024 + 3 * DAY + 9 * h);
    let a5 = full(MAY_1_2024 + 4 * DAY + 10 * h);
    let files = stored(&[a1.clone(), a2.clone(), a3.clone(), a4.clone(), a5.clone()]);
    let plan = RetentionPolicy::default()
        .keep_daily(4)
        .plan(&files, at(MAY_1_2024 + 4 * DAY + 12 * h));
    assert_eq!(gone(&plan), [a2]);
    assert_eq!(kept(&plan), [a1, a3, a4, a5]);
}

/// restic's usual example, `--keep-daily 7`, over 30 days of a service
/// that writes a full backup every 6 hours and a delta every hour.
#[test]
fn keep_daily_7_over_30_days() {
    let mut names = Vec::new();
    for hour in 0..30 * 24 {
        let t = MAY_1_2024 + hour * 3600 + 17;
        names.push(if hour % 6 == 0 { full(t) } else { delta(t) });
    }
    let now = at(MAY_1_2024 + 30 * DAY);
    let plan = RetentionPolicy::default()
        .keep_daily(7)
        .plan(&stored(&names), now);
    // Each of the last 7 days keeps its 18:00 full backup and its 5
    // deltas; the newest is also the newest chain.
    let fulls: Vec<&str> = plan
        .kept()
        .iter()
        .filter(|k| k.backup.kind == BackupKind::Full)
        .map(|k| k.name.as_str())
        .collect();
    let want: Vec<String> = (23..30)
        .map(|d| full(MAY_1_2024 + d * DAY + 18 * 3600 + 17))
        .collect();
    assert_eq!(fulls, want);
    assert_eq!(plan.kept().len(), 7 * 6);
    assert_eq!(plan.deletions().len(), names.len() - 7 * 6);
    assert_eq!(
        plan.kept()[0].reasons,
        [KeepReason::Daily {
            year: 2024,
            month: 5,
            day: 24
        }]
    );
    assert_eq!(
        plan.kept().last().unwrap().reasons,
        [KeepReason::NewestChain]
    );
}

/// `--keep-weekly 4 --keep-monthly 12` over a year of daily backups: the
/// week of 31 December 2025 is ISO week 1 of 2026, and each month keeps its
/// last day.
#[test]
fn keep_weekly_4_and_monthly_12_over_a_year() {
    let jan_1_2025 = 1_735_689_600;
    let names: Vec<String> = (0..365)
        .map(|d| full(jan_1_2025 + d * DAY + 43_200))
        .collect();
    let plan = RetentionPolicy::default()
        .keep_weekly(4)
        .keep_monthly(12)
        .plan(&stored(&names), at(jan_1_2025 + 365 * DAY));
    let day_of = |name: &str| {
        let secs: u64 = name
            .trim_start_matches("dictdb_backup_")
            .split('_')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        civil_from_days((secs / DAY) as i64)
    };
    let days: Vec<(i64, i64, i64)> = kept(&plan).iter().map(|n| day_of(n)).collect();
    let mut want: Vec<(i64, i64, i64)> = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        .iter()
        .enumerate()
        .map(|(m, last)| (2025, m as i64 + 1, *last))
        .collect();
    want.extend([(2025, 12, 14), (2025, 12, 21), (2025, 12, 28)]);
    want.sort_unstable();
    assert_eq!(days, want);
    let last = plan.kept().last().unwrap();
    assert!(last.reasons.contains(&KeepReason::Weekly {
        year: 2026,
        week: 1
    }));
    assert!(last.reasons.contains(&KeepReason::Monthly {
        year: 2025,
        month: 12
    }));
}

/// `--keep-within 1d --keep-last 2`: a file is kept if any rule keeps it.
#[test]
fn rules_combine_a_file_is_kept_if_any_rule_keeps_it() {
    let names = [
        full(MAY_1_2024),
        full(MAY_1_2024 + 5 * DAY),
        delta(MAY_1_2024 + 5 * DAY + 60),
        full(MAY_1_2024 + 9 * DAY),
        full(MAY_1_2024 + 10 * DAY),
        delta(MAY_1_2024 + 10 * DAY + 60),
    ];
    let now = at(MAY_1_2024 + 10 * DAY + 120);
    let within = RetentionPolicy::default().keep_within(Duration::from_secs(DAY));
    assert_eq!(gone(&within.plan(&stored(&names), now)).len(), 4);
    let both = within.keep_last(2).plan(&stored(&names), now);
    assert_eq!(
        gone(&both),
        [names[0].clone(), names[2].clone(), names[1].clone()]
    );
    assert_eq!(both.kept()[0].reasons, [KeepReason::Last { rank: 2 }]);
    assert_eq!(
        both.kept()[1].reasons,
        [
            KeepReason::NewestChain,
            KeepReason::Last { rank: 1 },
            KeepReason::Within
        ]
    );
}

#[test]
fn policies_that_keep_only_the_newest_chain() {
    let names = [
        full(MAY_1_2024),
        delta(MAY_1_2024 + 1),
        full(MAY_1_2024 + DAY),
        delta(MAY_1_2024 + DAY + 1),
        delta(MAY_1_2024 + DAY + 2),
    ];
    let now = at(MAY_1_2024 + 400 * DAY);
    for policy in [
        RetentionPolicy::default().keep_last(1),
        RetentionPolicy::default().keep_daily(1),
        RetentionPolicy::default().keep_weekly(1),
        RetentionPolicy::default().keep_within(Duration::from_nanos(1)),
    ] {
        let plan = policy.plan(&stored(&names), now);
        assert_eq!(
            gone(&plan),
            [names[1].clone(), names[0].clone()],
            "{policy}"
        );
        assert_eq!(kept(&plan), names[2..].to_vec(), "{policy}");
    }
    // Only deltas, only foreign files, nothing: nothing goes.
    let deltas = [delta(MAY_1_2024), delta(MAY_1_2024 + 1)];
    let keep_last = RetentionPolicy::default().keep_last(1);
    assert!(gone(&keep_last.plan(&stored(&deltas), now)).is_empty());
    let foreign = [
        "notes.txt".to_string(),
        "dictdb_backup_x_000000.json".into(),
    ];
    let plan = keep_last.plan(&stored(&foreign), now);
    assert!(plan.deletions().is_empty() && plan.kept().is_empty());
    assert_eq!(plan.ignored().len(), 2);
    assert!(keep_last.plan(&[], now).deletions().is_empty());
}

// ---------------------------------------------------------------------------
// Against a directory, and through a manager.
// ---------------------------------------------------------------------------

/// A `LocalStore` that refuses to delete one file.
#[derive(Debug)]
struct RefusesOne {
    inner: LocalStore,
    refuse: String,
}

#[async_trait]
impl BackupStore for RefusesOne {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn list(&self) -> dictdb::Result<Vec<StoredFile>> {
        self.inner.list().await
    }
    async fn create(&self, name: &str) -> dictdb::Result<Box<dyn BackupWriter>> {
        self.inner.create(name).await
    }
    async fn open(&self, name: &str) -> dictdb::Result<FileReader> {
        self.inner.open(name).await
    }
    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> dictdb::Result<Vec<u8>> {
        self.inner.read_range(name, range).await
    }
    async fn delete(&self, name: &str) -> dictdb::Result<()> {
        if name == self.refuse {
            return Err(Error::Store {
                path: name.into(),
                message: "injected fault: delete".into(),
            });
        }
        self.inner.delete(name).await
    }
}

#[tokio::test]
async fn a_directory_is_pruned_in_plan_order_and_a_failure_leaves_a_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let mut names = vec![
        full(MAY_1_2024),
        delta(MAY_1_2024 + 1),
        delta(MAY_1_2024 + 2),
        full(MAY_1_2024 + DAY),
        delta(MAY_1_2024 + DAY + 1),
        delta(MAY_1_2024 + DAY + 2),
        delta(MAY_1_2024 + DAY + 3),
        full(MAY_1_2024 + 2 * DAY),
    ];
    // Not ours, and a JSON delta of a pickle full backup: never deleted.
    let others = [
        "notes.txt",
        "dictdb_backup_1714000000_000000.pickle",
        "dictdb_delta_1714000001_000000.json",
    ];
    for n in names.iter().map(String::as_str).chain(others) {
        std::fs::write(tmp.path().join(n), "{}").unwrap();
    }
    // The second chain refuses its middle delta.
    let store = RefusesOne {
        inner: LocalStore::open(tmp.path()).unwrap(),
        refuse: names[5].clone(),
    };
    let plan = RetentionPolicy::default()
        .keep_last(1)
        .plan(&store.list().await.unwrap(), at(MAY_1_2024 + 3 * DAY));
    let report = plan.apply(&store).await;
    assert_eq!(
        report.deleted,
        [
            names[2].clone(),
            names[1].clone(),
            names[0].clone(),
            names[6].clone()
        ]
    );
    assert_eq!(report.failed.as_ref().unwrap().file, names[5]);
    let mut left = common::backup_files(tmp.path());
    left.retain(|n| !others.contains(&n.as_str()));
    let mut want = vec![
        names[3].clone(),
        names[4].clone(),
        names[5].clone(),
        names[7].clone(),
    ];
    want.sort();
    assert_eq!(left, want, "the second chain lost only its newest delta");
    for n in others {
        assert!(tmp.path().join(n).exists(), "{n}");
    }

    // Once the fault is gone, the next prune finishes the job.
    let store = LocalStore::open(tmp.path()).unwrap();
    let plan = RetentionPolicy::default()
        .keep_last(1)
        .plan(&store.list().await.unwrap(), at(MAY_1_2024 + 3 * DAY));
    assert!(plan.apply(&store).await.is_complete());
    names.drain(..7);
    let mut left = common::backup_files(tmp.path());
    left.retain(|n| !others.contains(&n.as_str()));
    assert_eq!(left, names);
}

#[tokio::test]
async fn a_manager_prunes_with_its_policy_after_each_full_backup() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    // Every backup of this test is written today (UTC), so keeping the
    // newest full backup of one day keeps the newest chain only, even if
    // the test runs across midnight.
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .incremental(true)
            .max_deltas_before_full(2)
            .retention(RetentionPolicy::default().keep_daily(1)),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    let mut fulls = Vec::new();
    for i in 0..9 {
        t.insert(json!({"i": i})).unwrap();
        let info = m.backup_now().await.unwrap();
        let info = info.info().unwrap().clone();
        if info.kind == BackupKind::Full {
            fulls.push(info.file);
        }
    }
    m.stop().await.unwrap();
    let files = common::backup_files(tmp.path());
    assert_eq!(files[0], *fulls.last().unwrap(), "{files:?}");
    assert_eq!(
        files.len(),
        3,
        "the newest full backup and its two deltas: {files:?}"
    );
    assert!(tmp.path().join("notes.txt").exists());
    let mut pruned = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e {
            BackupEvent::Pruned { files } => pruned.extend(files),
            BackupEvent::PruneFailed { file, error } => panic!("{file}: {error}"),
            _ => {}
        }
    }
    assert_eq!(pruned.len(), 6, "{pruned:?}");
    let r = restore_dir(tmp.path()).await.unwrap();
    assert_eq!(common::table_map(&r.db), common::table_map(&db));

    // A window that holds everything deletes nothing.
    let tmp = tempfile::tempdir().unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::new(tmp.path())
            .retention(RetentionPolicy::default().keep_within(Duration::from_secs(3600))),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        m.backup_full().await.unwrap();
    }
    m.stop().await.unwrap();
    assert_eq!(common::backup_files(tmp.path()).len(), 3);
}

/// `keep_full_backups(n)` is `keep_last(n)`, and zero keeps everything.
#[tokio::test]
async fn keep_full_backups_is_keep_last() {
    for (n, left) in [(0, 3), (2, 2)] {
        let tmp = tempfile::tempdir().unwrap();
        let db = DictDB::new();
        let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).keep_full_backups(n))
            .await
            .unwrap();
        for _ in 0..3 {
            m.backup_full().await.unwrap();
        }
        m.stop().await.unwrap();
        assert_eq!(common::backup_files(tmp.path()).len(), left, "keep {n}");
    }
}

#[test]
fn the_plan_says_what_goes_and_why() {
    let names = [
        "dictdb_delta_1714521500_000000.json".to_string(),
        full(MAY_1_2024),
        delta(MAY_1_2024 + 1),
        "dictdb_backup_1714521700_000000.pickle".into(),
        delta(MAY_1_2024 + 200),
        full(MAY_1_2024 + DAY),
        "README".into(),
    ];
    let plan = RetentionPolicy::default()
        .keep_last(1)
        .keep_within(Duration::from_secs(3600))
        .plan(&stored(&names), at(MAY_1_2024 + DAY));
    let text = plan.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "retention (keep-last 1, keep-within 1h): delete 3 files (106 bytes), keep 3, ignore 1",
            "delete dictdb_delta_1714521500_000000.json: a delta older than every full backup, with nothing to restore it on",
            "delete dictdb_delta_1714521601_000000.json: a delta of dictdb_backup_1714521600_000000.json, which goes",
            "delete dictdb_backup_1714521600_000000.json: no rule keeps this full backup or a delta of its chain",
            "keep dictdb_backup_1714521700_000000.pickle: a pickle file, never deleted",
            "keep dictdb_delta_1714521800_000000.json: in the chain kept for dictdb_backup_1714521700_000000.pickle",
            "keep dictdb_backup_1714608000_000000.json: newest chain, keep-last #1, keep-within",
            "ignore README: not a backup file",
        ]
    );
    assert_eq!(plan.bytes_freed(), 106);
}
