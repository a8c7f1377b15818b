//! The debounce window for change notifications, as a plain state machine.
//!
//! A pure function of the instants it is handed: it never reads a clock.
//! (It once read `Instant::now()` to say "due at once", which is always a
//! moment in the future by the time the caller compares it with its own
//! `now`: the first notification then waited for the periodic timer.)

use std::time::Duration;

use tokio::time::Instant;

/// Decides when a `notify_change()` turns into a backup.
///
/// A notification more than `min_interval` after the last backup attempt
/// fires at once; one inside the window is deferred to the window's end, and
/// every notification in the window coalesces into that one backup. Any
/// backup that starts after a notification covers it.
#[derive(Debug)]
pub(crate) struct Debounce {
    min_interval: Duration,
    last_attempt: Option<Instant>,
    /// When the oldest notification not yet covered by a backup arrived.
    pending_since: Option<Instant>,
}

impl Debounce {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Debounce {
            min_interval,
            last_attempt: None,
            pending_since: None,
        }
    }

    /// Records a notification received at `now`.
    pub(crate) fn notify(&mut self, now: Instant) {
        self.pending_since.get_or_insert(now);
    }

    /// When the pending notification is due (`None`: nothing pending): when
    /// it arrived, or the end of the window of the last attempt if later.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let since = self.pending_since?;
        Some(match self.last_attempt {
            Some(t) => since.max(t + self.min_interval),
            None => since,
        })
    }

    /// A backup starts at `now`: it covers every notification received so far.
    pub(crate) fn backup_started(&mut self, now: Instant) {
        self.last_attempt = Some(now);
        self.pending_since = None;
    }

    /// The backup that started failed: the notification it was to cover is
    /// pending again (due at the end of the window at the earliest).
    pub(crate) fn backup_failed(&mut self, covered_notification: bool) {
        if covered_notification {
            self.pending_since = self.pending_since.or(self.last_attempt);
        }
    }

    /// Whether a notification is waiting.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending_since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn first_notification_is_due_when_it_arrives() {
        // The regression: the deadline used to be `Instant::now()` read at
        // the time it was asked, always later than the caller's `now`.
        let t0 = Instant::now();
        let mut d = Debounce::new(secs(5));
        assert_eq!(d.deadline(), None);
        d.notify(t0);
        assert_eq!(d.deadline(), Some(t0));
        // Asked later, it is still due at t0: the caller's `now` is past it.
        assert!(d.deadline().unwrap() <= t0 + secs(1));
    }

    #[test]
    fn coalesces_inside_the_window() {
        let t0 = Instant::now();
        let mut d = Debounce::new(secs(5));
        d.notify(t0);
        d.backup_started(t0);
        assert_eq!(d.deadline(), None);
        d.notify(t0 + secs(1));
        d.notify(t0 + secs(2));
        d.notify(t0 + secs(3));
        assert_eq!(d.deadline(), Some(t0 + secs(5)));
        d.backup_started(t0 + secs(5));
        assert!(!d.is_pending());
        d.backup_failed(true);
        assert_eq!(d.deadline(), Some(t0 + secs(10)));
        d.backup_started(t0 + secs(10));
        d.backup_failed(false);
        assert_eq!(d.deadline(), None, "nothing to cover, nothing re-armed");
    }

    #[test]
    fn notification_after_the_window_fires_when_it_arrives() {
        let t0 = Instant::now();
        let mut d = Debounce::new(secs(5));
        d.backup_started(t0);
        d.notify(t0 + secs(60));
        assert_eq!(d.deadline(), Some(t0 + secs(60)));
    }
}
