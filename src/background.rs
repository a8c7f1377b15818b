//! Threads for work nobody waits for: made with a lower scheduling
//! priority, so that on a busy machine they yield to the service's own
//! threads and to the work callers do wait for.

use tokio::sync::oneshot;

/// Lowers the calling thread's scheduling priority (nice 10, Linux).
#[cfg(target_os = "linux")]
pub(crate) fn lower_priority() {
    // SAFETY: setpriority takes plain integers and has no memory-safety
    // preconditions. On Linux, PRIO_PROCESS with `who` 0 applies to the
    // calling thread only. Failure leaves the priority unchanged, which is
    // harmless.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
}

/// Lowers the calling thread's scheduling priority (nothing here).
#[cfg(not(target_os = "linux"))]
pub(crate) fn lower_priority() {}

/// Runs `work` on a thread of its own at a lower priority; its result
/// arrives on the returned channel (closed without one if no thread could
/// be started, or if `work` panicked).
pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    let _ = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        });
    rx
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn background_work_answers_on_its_channel() {
        let name = super::spawn("dictdb-test", || {
            std::thread::current().name().map(str::to_string)
        });
        assert_eq!(name.await.unwrap().as_deref(), Some("dictdb-test"));
    }
}
