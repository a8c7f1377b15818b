//! When the next automatic backup is due: the periodic timer, the debounced
//! notifications, the change-count triggers and the backoff after failures,
//! combined in one plain struct. Time comes in as arguments: the actor reads
//! the clock once per turn and hands `now` in.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::debounce::Debounce;
use super::triggers::{Rule, Triggers};

/// The schedule of automatic backups.
#[derive(Debug)]
pub(crate) struct Schedule {
    interval: Duration,
    min_interval: Duration,
    next_periodic: Instant,
    debounce: Debounce,
    triggers: Triggers,
    backoff: Backoff,
    last_attempt: Option<Instant>,
    /// An automatic backup failed: it is tried again when the backoff ends,
    /// even if nothing else comes due.
    retry: bool,
}

/// The smallest first wait after a failure, so that a zero
/// `min_backup_interval` still backs off.
const MIN_BACKOFF: Duration = Duration::from_millis(1);

impl Schedule {
    /// `interval`: periodic backups; `min_interval`: the shortest time
    /// between a backup and one triggered by a notification or a rule, and
    /// the first wait after a failure; `max_backoff`: the longest wait.
    pub(crate) fn new(
        now: Instant,
        interval: Duration,
        min_interval: Duration,
        max_backoff: Duration,
        rules: Vec<Rule>,
    ) -> Self {
        Schedule {
            interval,
            min_interval,
            next_periodic: now + interval,
            debounce: Debounce::new(min_interval),
            triggers: Triggers::new(rules, now),
            backoff: Backoff::new(min_interval.max(MIN_BACKOFF), max_backoff),
            last_attempt: None,
            retry: false,
        }
    }

    /// A `notify_change()` arrived at `now`.
    pub(crate) fn notify(&mut self, now: Instant) {
        self.debounce.notify(now);
    }

    /// Whether a notification is waiting for a backup.
    pub(crate) fn notification_pending(&self) -> bool {
        self.debounce.is_pending()
    }

    /// When the next automatic backup is due, with `changes` changes
    /// pending since the last successful backup's cut.
    pub(crate) fn deadline(&self, changes: u64) -> Instant {
        let mut due = self.next_periodic;
        if let Some(d) = self.debounce.deadline() {
            due = due.min(d);
        }
        if let Some(d) = self.triggers.deadline(changes) {
            let d = match self.last_attempt {
                Some(t) => d.max(t + self.min_interval),
                None => d,
            };
            due = due.min(d);
        }
        match self.backoff.not_before() {
            // A failed automatic backup is retried when the wait ends.
            Some(t) if self.retry => t,
            // Anything else that comes due waits for it too.
            Some(t) => due.max(t),
            None => due,
        }
    }

    /// If an automatic backup is due at `now`, takes it (the periodic timer
    /// moves on) and returns true. The caller then starts the backup.
    pub(crate) fn fire(&mut self, now: Instant, changes: u64) -> bool {
        if self.deadline(changes) > now {
            return false;
        }
        while self.next_periodic <= now {
            self.next_periodic += self.interval;
        }
        self.retry = false;
        true
    }

    /// A backup (automatic or asked for) starts at `now`: it covers every
    /// notification received so far.
    pub(crate) fn started(&mut self, now: Instant) {
        self.debounce.backup_started(now);
        self.last_attempt = Some(now);
    }

    /// The backup that started at `started` succeeded.
    pub(crate) fn succeeded(&mut self, started: Instant) {
        self.backoff.succeeded();
        self.triggers.succeeded(started);
        self.retry = false;
    }

    /// The backup failed at `now`. `automatic`: the schedule started it;
    /// `covered_notification`: a notification was waiting when it started.
    /// Returns how long until the next automatic attempt, when one will be
    /// made without anything else coming due.
    pub(crate) fn failed(
        &mut self,
        now: Instant,
        automatic: bool,
        covered_notification: bool,
        changes: u64,
    ) -> Option<Duration> {
        let wait = self.backoff.failed(now);
        self.debounce.backup_failed(covered_notification);
        self.retry |= automatic;
        let again =
            self.retry || self.debounce.is_pending() || self.triggers.deadline(changes).is_some();
        again.then_some(wait)
    }

    /// When automatic backups may start again after failures (`None`: not
    /// backing off).
    pub(crate) fn backing_off_until(&self) -> Option<Instant> {
        self.backoff.not_before()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn schedule(t0: Instant, rules: Vec<Rule>) -> Schedule {
        Schedule::new(t0, 300 * S, 5 * S, 300 * S, rules)
    }

    #[test]
    fn periodic_timer_fires_every_interval() {
        let t0 = Instant::now();
        let mut s = schedule(t0, Vec::new());
        assert_eq!(s.deadline(0), t0 + 300 * S);
        assert!(!s.fire(t0 + 299 * S, 0));
        assert!(s.fire(t0 + 300 * S, 0));
        s.started(t0 + 300 * S);
        s.succeeded(t0 + 300 * S);
        assert_eq!(s.deadline(0), t0 + 600 * S);
    }

    #[test]
    fn first_notification_fires_at_once() {
        let t0 = Instant::now();
        let mut s = schedule(t0, Vec::new());
        let t = t0 + 7 * S;
        s.notify(t);
        assert_eq!(s.deadline(0), t);
        assert!(s.fire(t, 0));
        s.started(t);
        assert_eq!(s.deadline(0), t0 + 300 * S, "nothing else pending");
    }

    #[test]
    fn notifications_in_the_window_coalesce() {
        let t0 = Instant::now();
        let mut s = schedule(t0, Vec::new());
        s.notify(t0);
        assert!(s.fire(t0, 0));
        s.started(t0);
        s.succeeded(t0);
        for i in 1..4 {
            s.notify(t0 + i * S);
            assert!(!s.fire(t0 + i * S, 0));
        }
        assert_eq!(s.deadline(0), t0 + 5 * S);
        assert!(s.fire(t0 + 5 * S, 0));
    }

    #[test]
    fn failures_back_off_exponentially_and_success_resets() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 300 * S, 5 * S, 60 * S, Vec::new());
        s.notify(t0);
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            assert!(s.fire(t, 0));
            let had = s.notification_pending();
            s.started(t);
            let wait = s.failed(t, true, had, 0).unwrap();
            waits.push(wait.as_secs());
            assert_eq!(s.deadline(0), t + wait, "retried when the wait ends");
            assert!(!s.fire(t + wait - Duration::from_millis(1), 0));
            t += wait;
        }
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert!(s.fire(t, 0));
        s.started(t);
        s.succeeded(t);
        assert_eq!(s.backing_off_until(), None);
        assert_eq!(s.deadline(0), t0 + 300 * S);
    }

    #[test]
    fn periodic_backups_wait_for_the_backoff() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 10 * S, 5 * S, 300 * S, Vec::new());
        // An asked-for backup fails: no automatic retry of its own...
        s.started(t0);
        assert_eq!(s.failed(t0, false, false, 0), None);
        assert_eq!(s.deadline(0), t0 + 10 * S);
        // ...but after three more failures the periodic backup waits.
        for _ in 0..3 {
            s.started(t0);
            s.failed(t0, false, false, 0);
        }
        assert_eq!(s.deadline(0), t0 + 40 * S);
        assert!(!s.fire(t0 + 10 * S, 0));
        assert!(s.fire(t0 + 40 * S, 0));
        assert_eq!(s.deadline(0), t0 + 50 * S, "the periodic timer moved on");
    }

    #[test]
    fn change_count_rules_respect_the_minimum_interval() {
        let t0 = Instant::now();
        let rules = vec![Rule {
            changes: 100,
            within: Duration::ZERO,
        }];
        let mut s = schedule(t0, rules);
        assert_eq!(s.deadline(99), t0 + 300 * S);
        assert_eq!(s.deadline(100), t0, "due at once before any backup");
        assert!(s.fire(t0, 100));
        s.started(t0);
        s.succeeded(t0);
        assert_eq!(s.deadline(100), t0 + 5 * S, "never inside the window");
        // A failure with changes pending retries after the backoff.
        assert!(s.fire(t0 + 5 * S, 100));
        s.started(t0 + 5 * S);
        assert_eq!(s.failed(t0 + 5 * S, true, false, 100), Some(5 * S));
    }
}
