//! Change-count triggers, Redis-style (`save 60 10000`), as plain state.
//!
//! A rule `(changes, within)` fires when at least `changes` changes were
//! made since the last successful backup's cut AND at least `within` has
//! passed since that backup started (or since the manager started, before
//! its first backup). This is exactly Redis's `save <seconds> <changes>`:
//! `save 900 1` backs up 15 minutes after the first change, `save 60 10000`
//! a minute after the last backup when 10,000 changes piled up. Any number
//! of rules; the first to be satisfied fires. A change is one committed
//! mutation: a record inserted, updated or deleted, a table created or
//! dropped.

use std::time::Duration;

use tokio::time::Instant;

/// One rule: back up after `changes` changes once `within` has passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub(crate) changes: u64,
    pub(crate) within: Duration,
}

/// The rules and the time the counting started.
#[derive(Debug)]
pub(crate) struct Triggers {
    rules: Vec<Rule>,
    /// Start of the last successful backup (or of the manager).
    since: Instant,
}

impl Triggers {
    pub(crate) fn new(rules: Vec<Rule>, start: Instant) -> Self {
        Triggers {
            rules,
            since: start,
        }
    }

    /// When a backup is due given `changes` changes since the last
    /// successful backup's cut (`None`: no rule is satisfied by the count,
    /// so nothing is due until more changes come).
    pub(crate) fn deadline(&self, changes: u64) -> Option<Instant> {
        self.rules
            .iter()
            .filter(|r| changes >= r.changes)
            .map(|r| self.since + r.within)
            .min()
    }

    /// A backup that started at `started` succeeded: counting starts again.
    pub(crate) fn succeeded(&mut self, started: Instant) {
        self.since = started;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(changes: u64, secs: u64) -> Rule {
        Rule {
            changes,
            within: Duration::from_secs(secs),
        }
    }

    #[test]
    fn redis_semantics() {
        let t0 = Instant::now();
        // save 900 1 / save 300 10 / save 60 10000
        let mut t = Triggers::new(vec![rule(1, 900), rule(10, 300), rule(10_000, 60)], t0);
        assert_eq!(t.deadline(0), None, "no change, no backup");
        assert_eq!(t.deadline(1), Some(t0 + Duration::from_secs(900)));
        assert_eq!(t.deadline(10), Some(t0 + Duration::from_secs(300)));
        assert_eq!(t.deadline(50_000), Some(t0 + Duration::from_secs(60)));
        let t1 = t0 + Duration::from_secs(70);
        t.succeeded(t1);
        assert_eq!(t.deadline(10_000), Some(t1 + Duration::from_secs(60)));
    }

    #[test]
    fn no_rules_never_fire() {
        let t = Triggers::new(Vec::new(), Instant::now());
        assert_eq!(t.deadline(u64::MAX), None);
    }
}
