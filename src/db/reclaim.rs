//! Freeing large garbage off the thread that made it.
//!
//! A replica that swaps in its next state leaves the previous one behind:
//! every tree node the changes copied, and every record they replaced.
//! Freeing that costs about as much as the changes did, and no reader waits
//! for it, so it goes to one thread of its own (`dictdb-reclaim`, started on
//! first use) and the replica goes on serving the new cut at once. The
//! backup manager sends the cut it no longer needs there the same way.
//!
//! The thread runs at a lower priority, so on a machine kept busy it may
//! fall behind. At most [`BACKLOG`] values wait for it: beyond that the
//! caller frees its garbage itself, and memory never grows with the
//! backlog; the caller is only slowed while the thread cannot keep up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

/// Values handed to the thread and not freed yet, at most.
const BACKLOG: usize = 8;

/// Values handed to the thread and not freed yet.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Anything to drop.
type Garbage = Box<dyn Send>;

/// The reclaiming thread's queue; `None` when it could not be started
/// (then garbage is freed where it was made).
static QUEUE: OnceLock<Option<Mutex<Sender<Garbage>>>> = OnceLock::new();

fn queue() -> Option<&'static Mutex<Sender<Garbage>>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Garbage>();
            std::thread::Builder::new()
                .name("dictdb-reclaim".into())
                .spawn(move || {
                    crate::background::lower_priority();
                    for garbage in rx {
                        drop(garbage);
                        PENDING.fetch_sub(1, Ordering::Relaxed);
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Drops `garbage` on the reclaiming thread (or here, if that thread is
/// not available or [`BACKLOG`] values already wait for it). Each call is
/// one message: meant for a few large values per apply, not for one value
/// per record.
pub(crate) fn later<T: Send + 'static>(garbage: T) {
    let Some(queue) = queue() else {
        return drop(garbage);
    };
    if PENDING.fetch_add(1, Ordering::Relaxed) >= BACKLOG {
        PENDING.fetch_sub(1, Ordering::Relaxed);
        return drop(garbage);
    }
    let sender = queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Err(returned) = sender.send(Box::new(garbage)) {
        PENDING.fetch_sub(1, Ordering::Relaxed);
        drop(returned.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The thread is shared: the test that holds it up runs alone with the
    /// one that checks where garbage goes.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn garbage_is_dropped_on_the_reclaiming_thread() {
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        struct Probe(Arc<Mutex<Option<String>>>);
        impl Drop for Probe {
            fn drop(&mut self) {
                let name = std::thread::current().name().map(str::to_string);
                *self.0.lock().unwrap() = name;
            }
        }
        let seen = Arc::new(Mutex::new(None));
        later(Probe(Arc::clone(&seen)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the garbage was never dropped");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen.lock().unwrap().as_deref(), Some("dictdb-reclaim"));
    }

    /// While the thread is held up, no more than the backlog waits for it:
    /// the rest is freed by the caller, so memory does not pile up behind a
    /// starved thread; once it catches up, garbage goes to it again.
    #[test]
    fn garbage_beyond_the_backlog_is_dropped_by_the_caller() {
        let _serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        type Seen = Arc<Mutex<Vec<(usize, Option<String>)>>>;
        struct Probe(usize, Seen);
        impl Drop for Probe {
            fn drop(&mut self) {
                let name = std::thread::current().name().map(str::to_string);
                self.1.lock().unwrap().push((self.0, name));
            }
        }
        struct Blocker(std::sync::mpsc::Receiver<()>);
        impl Drop for Blocker {
            fn drop(&mut self) {
                let _ = self.0.recv_timeout(Duration::from_secs(30));
            }
        }
        let seen: Seen = Arc::default();
        let (release, held) = std::sync::mpsc::channel();
        later(Blocker(held));
        // The blocker counts until it is freed: BACKLOG - 1 more at most
        // may queue (fewer if other tests' garbage waits too).
        for i in 0..BACKLOG + 2 {
            later(Probe(i, Arc::clone(&seen)));
        }
        let here = std::thread::current().name().map(str::to_string);
        let last = seen.lock().unwrap().last().cloned();
        assert_eq!(
            last,
            Some((BACKLOG + 1, here.clone())),
            "the last probe was queued"
        );
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().len() < BACKLOG + 2 {
            assert!(
                Instant::now() < deadline,
                "the queued garbage was never dropped"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        while PENDING.load(Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "the backlog never drained");
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen_by = Arc::new(Mutex::new(None));
        struct Named(Arc<Mutex<Option<String>>>);
        impl Drop for Named {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = std::thread::current().name().map(str::to_string);
            }
        }
        later(Named(Arc::clone(&seen_by)));
        while seen_by.lock().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the garbage was never dropped");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(seen_by.lock().unwrap().as_deref(), Some("dictdb-reclaim"));
    }
}
