//! Freeing large garbage off the thread that made it.
//!
//! A replica that swaps in its next state leaves the previous one behind:
//! every tree node the changes copied, and every record they replaced.
//! Freeing that costs about as much as the changes did, and no reader waits
//! for it, so it goes to one thread of its own (`dictdb-reclaim`, started on
//! first use) and the replica goes on serving the new cut at once.

use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

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
                    }
                })
                .ok()
                .map(|_| Mutex::new(tx))
        })
        .as_ref()
}

/// Drops `garbage` on the reclaiming thread (or here, if that thread is
/// not available). Each call is one message: meant for a few large values
/// per apply, not for one value per record.
pub(crate) fn later<T: Send + 'static>(garbage: T) {
    let Some(queue) = queue() else {
        return drop(garbage);
    };
    let sender = queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Err(returned) = sender.send(Box::new(garbage)) {
        drop(returned.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn garbage_is_dropped_on_the_reclaiming_thread() {
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
}
