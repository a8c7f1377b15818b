//! Exponential backoff after failed backups, as a plain state machine.
//!
//! After the n-th failure in a row, automatic backups wait
//! `min_backup_interval * 2^(n-1)`, capped at a maximum (by default the
//! backup interval); a success resets it. Without it, a store that keeps
//! failing got a new attempt (often a full backup) every
//! `min_backup_interval`, forever.

use std::time::Duration;

use tokio::time::Instant;

/// Failures in a row and the earliest time of the next automatic attempt.
#[derive(Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            failures: 0,
            not_before: None,
        }
    }

    /// The wait after `failures` failures in a row (`failures >= 1`).
    pub(crate) fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// A backup that started failed at `now`: returns the wait before the
    /// next automatic attempt.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = self.delay(self.failures);
        self.not_before = Some(now + wait);
        wait
    }

    /// A backup succeeded: no more waiting.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
        self.not_before = None;
    }

    /// Automatic backups wait until then (`None`: they do not wait).
    pub(crate) fn not_before(&self) -> Option<Instant> {
        self.not_before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_the_base_up_to_the_cap_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(b.not_before(), None);
        let waits: Vec<u64> = (0..6).map(|_| b.failed(t0).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60]);
        assert_eq!(b.not_before(), Some(t0 + Duration::from_secs(60)));
        b.succeeded();
        assert_eq!(b.not_before(), None);
        assert_eq!(b.failed(t0), Duration::from_secs(5));
    }

    #[test]
    fn never_overflows() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(300));
        let b = Backoff::new(Duration::MAX, Duration::from_secs(300));
        assert_eq!(b.delay(3), Duration::from_secs(300));
    }
}
