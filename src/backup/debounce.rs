//! The debounce window for change notifications, as a plain state machine.

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
    pending: bool,
}

impl Debounce {
    pub(crate) fn new(min_interval: Duration) -> Self {
        Debounce {
            min_interval,
            last_attempt: None,
            pending: false,
        }
    }

    /// Records a notification.
    pub(crate) fn notify(&mut self) {
        self.pending = true;
    }

    /// When the pending notification is due (`None`: nothing pending).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        Some(match self.last_attempt {
            Some(t) => t + self.min_interval,
            None => Instant::now(),
        })
    }

    /// A backup starts now: it covers every notification received so far.
    pub(crate) fn backup_started(&mut self, now: Instant) {
        self.last_attempt = Some(now);
        self.pending = false;
    }

    /// The backup that started failed: notifications it was to cover are
    /// pending again (retried when the window ends).
    pub(crate) fn backup_failed(&mut self, covered_notification: bool) {
        if covered_notification {
            self.pending = true;
        }
    }

    /// Whether a notification is waiting.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn coalesces_inside_the_window() {
        let mut d = Debounce::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(d.deadline(), None);
        d.notify();
        assert_eq!(d.deadline(), Some(t0)); // first one: at once
        d.backup_started(t0);
        assert_eq!(d.deadline(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        d.notify();
        d.notify();
        d.notify();
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(5)));
        d.backup_started(t0 + Duration::from_secs(5));
        assert!(!d.is_pending());
        d.backup_failed(true);
        assert_eq!(d.deadline(), Some(t0 + Duration::from_secs(10)));
    }
}
