//! The retention policy: which rules keep which full backups.

use std::fmt;
use std::time::Duration;

/// Which backups to keep, in the words restic and litestream users know.
///
/// Each rule picks full backups (or, for [`keep_within`](Self::keep_within),
/// any file); a file is kept if **any** rule keeps it, together with the
/// whole chain it belongs to. A number of zero (or a zero duration) turns a
/// rule off, and [`Default`] has every rule off and **keeps everything**.
/// Whatever the rules say, the newest chain is never deleted, nor files in a
/// format this crate cannot read (pickle), nor files that are not backups.
///
/// Calendar periods are in **UTC**. restic uses the host's local time; a
/// backup store is often shared by hosts in different zones, and a daylight
/// saving change makes local days 23 or 25 hours long, so the same store
/// could be pruned differently by two hosts, or by one host twice. In UTC the
/// plan depends only on the file names and `now`.
///
/// See the [module documentation](super) for what a chain is and how the plan
/// is made; [`plan`](Self::plan) makes one.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dictdb::RetentionPolicy;
///
/// // restic: forget --keep-last 3 --keep-within 2d --keep-daily 7 --keep-weekly 4 --keep-monthly 12
/// let policy = RetentionPolicy::default()
///     .keep_last(3)
///     .keep_within(Duration::from_secs(2 * 86_400))
///     .keep_daily(7)
///     .keep_weekly(4)
///     .keep_monthly(12);
/// assert_eq!(
///     policy.to_string(),
///     "keep-last 3, keep-within 2d, keep-daily 7, keep-weekly 4, keep-monthly 12"
/// );
/// assert!(!policy.keeps_everything());
/// assert!(RetentionPolicy::default().keeps_everything());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetentionPolicy {
    pub(super) last: usize,
    pub(super) within: Duration,
    pub(super) daily: usize,
    pub(super) weekly: usize,
    pub(super) monthly: usize,
}

impl RetentionPolicy {
    /// Keep the newest `n` full backups (restic `--keep-last`, pgBackRest
    /// `retention-full`). Default: 0, off.
    #[must_use]
    pub fn keep_last(mut self, n: usize) -> Self {
        self.last = n;
        self
    }

    /// Keep every backup written within `duration` of the newest one, or of
    /// `now` if that is earlier (litestream `retention`, restic
    /// `--keep-within`); a delta in the window keeps the full backup it
    /// builds on and every delta between them. Default: zero, off.
    ///
    /// The window ends at the newest backup's time or at `now`, whichever
    /// comes first. A manager prunes right after writing a full backup, so
    /// both are the same there, as in litestream; for a store that nobody
    /// writes to any more, the window still holds the last `duration` of its
    /// history, as in restic; and a backup named by a clock that ran ahead
    /// never moves the window forward over backups written since.
    #[must_use]
    pub fn keep_within(mut self, duration: Duration) -> Self {
        self.within = duration;
        self
    }

    /// For each of the last `n` UTC days that have a full backup, keep the
    /// newest full backup of that day (restic `--keep-daily`). Default: 0,
    /// off.
    #[must_use]
    pub fn keep_daily(mut self, n: usize) -> Self {
        self.daily = n;
        self
    }

    /// For each of the last `n` ISO weeks (Monday to Sunday, UTC) that have a
    /// full backup, keep the newest full backup of that week (restic
    /// `--keep-weekly`). Default: 0, off.
    #[must_use]
    pub fn keep_weekly(mut self, n: usize) -> Self {
        self.weekly = n;
        self
    }

    /// For each of the last `n` UTC calendar months that have a full backup,
    /// keep the newest full backup of that month (restic `--keep-monthly`).
    /// Default: 0, off.
    #[must_use]
    pub fn keep_monthly(mut self, n: usize) -> Self {
        self.monthly = n;
        self
    }

    /// True when every rule is off: the policy deletes nothing.
    pub fn keeps_everything(&self) -> bool {
        self.last == 0
            && self.within.is_zero()
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
    }
}

/// The rules in restic's words (`keep-last 3, keep-within 2d`), or
/// `keep everything`.
impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.keeps_everything() {
            return f.write_str("keep everything");
        }
        let counts = [
            ("keep-last", self.last),
            ("keep-within", 0),
            ("keep-daily", self.daily),
            ("keep-weekly", self.weekly),
            ("keep-monthly", self.monthly),
        ];
        let mut sep = "";
        for (name, n) in counts {
            if name == "keep-within" && !self.within.is_zero() {
                write!(f, "{sep}{name} {}", DurationText(self.within))?;
            } else if n > 0 {
                write!(f, "{sep}{name} {n}")?;
            } else {
                continue;
            }
            sep = ", ";
        }
        Ok(())
    }
}

/// A duration as restic writes one: `2d`, `1d12h`, `90m`, `45s`; a
/// fraction of a second falls back to `Debug` (`1.5s`).
pub(super) struct DurationText(pub(super) Duration);

impl fmt::Display for DurationText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 || d.is_zero() {
            return write!(f, "{d:?}");
        }
        let secs = d.as_secs();
        let parts = [
            (secs / 86_400, "d"),
            (secs % 86_400 / 3600, "h"),
            (secs % 3600 / 60, "m"),
            (secs % 60, "s"),
        ];
        for (n, unit) in parts {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_only_the_rules_that_are_on() {
        assert_eq!(
            RetentionPolicy::default().keep_last(0).to_string(),
            "keep everything"
        );
        assert_eq!(
            RetentionPolicy::default().keep_weekly(4).to_string(),
            "keep-weekly 4"
        );
        assert_eq!(
            RetentionPolicy::default()
                .keep_within(Duration::from_secs(86_400 + 12 * 3600 + 61))
                .keep_monthly(2)
                .to_string(),
            "keep-within 1d12h1m1s, keep-monthly 2"
        );
        assert_eq!(
            DurationText(Duration::from_millis(1500)).to_string(),
            "1.5s"
        );
        assert_eq!(
            DurationText(Duration::from_secs(90 * 60)).to_string(),
            "1h30m"
        );
    }

    #[test]
    fn zero_turns_a_rule_off() {
        let p = RetentionPolicy::default()
            .keep_daily(3)
            .keep_daily(0)
            .keep_within(Duration::ZERO);
        assert!(p.keeps_everything());
        assert_eq!(p, RetentionPolicy::default());
    }
}
