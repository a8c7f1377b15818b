//! The single-writer lease of an object-store prefix (feature
//! `object-store`).
//!
//! Object storage has no `flock`. A backup manager on an
//! [`ObjectBackupStore`](super::ObjectBackupStore) instead holds a lease: a
//! small object, `.dictdb-lease`, under the prefix, created with a
//! conditional `PUT` (`If-None-Match: *`, so of two writers starting at once
//! exactly one gets it) and renewed every third of its time to live with a
//! `PUT` conditional on the ETag the last write returned (`If-Match`), so a
//! writer whose lease was taken over finds out at its next renewal.
//!
//! - **Expiry.** The lease records its time to live and the holder's wall
//!   clock at each renewal. The holder counts its validity on its own
//!   monotonic clock from the moment it *sent* the last successful renewal:
//!   past `ttl` it commits nothing (each commit, and each delete, checks
//!   first, renewing on the spot when it can). Another process takes the
//!   lease over only when, by its own wall clock, `1.5 × ttl` have passed
//!   since the recorded renewal, with a `PUT` conditional on the ETag it
//!   read: the extra half tolerates clocks that differ by up to `ttl / 2`.
//! - **Release.** A manager that ends (stop, shutdown, every handle dropped)
//!   marks the lease released, with the same conditional `PUT`; the next
//!   writer takes a released lease at once. A writer killed without release
//!   leaves it to expire: the next writer waits up to `1.5 × ttl`.
//! - **Fencing.** Each acquisition gets a token: the previous holder's
//!   token plus one, or the wall clock in milliseconds if that is larger (a
//!   new lease object, or a lease written before tokens). Renewals, and a
//!   holder recreating a lease that vanished, keep it. A manager writes it
//!   into each file's metadata and continues only chains written under it;
//!   restore refuses a chain with two tokens.
//! - **Not prevented:** a writer paused (or cut off) for longer than `ttl`
//!   between its last check and the request it was about to send (one
//!   `PUT`, or the completion of one multipart upload) can still land that
//!   one file; clocks further apart than `ttl / 2`; anything that writes to
//!   the prefix without taking the lease (another tool); servers without
//!   conditional `PUT`s (then no lease is taken, and a warning says so).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::object::{unanswered, within, Limits};
use super::object_errors::explain;
use super::WriterLock;
use crate::error::{Error, Result};

/// Name of the lease object under a store's prefix.
pub(crate) const LEASE_OBJECT: &str = ".dictdb-lease";

/// Default time to live of a lease.
pub(crate) const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);

/// What the lease object holds (JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Body {
    /// Who holds it, for the message another writer gets.
    holder: String,
    /// Time to live, in milliseconds.
    ttl_ms: u64,
    /// The holder's wall clock at its last renewal (ms since the epoch).
    renewed_unix_ms: u64,
    /// Set when the holder gave the lease up.
    #[serde(default)]
    released: bool,
    /// The fencing token of this holding (0: a lease written before tokens).
    #[serde(default)]
    token: u64,
}

impl Body {
    /// When another process may take the lease over, by its own clock.
    fn takeover_at_ms(&self) -> u64 {
        self.renewed_unix_ms
            .saturating_add(self.ttl_ms)
            .saturating_add(self.ttl_ms / 2)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This process, as a lease holder.
fn me() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".into());
    format!("pid {} on {host}", std::process::id())
}

/// The lease as one store (and its clones) holds it: `None` when this store
/// took no lease (readers, tools), so nothing is checked.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    held: Mutex<Option<Held>>,
    /// One write of the lease at a time: two renewals with the same ETag
    /// would make the second look like a takeover.
    writing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct Held {
    /// The version the last write of the lease returned.
    version: UpdateVersion,
    /// No commit after this (monotonic; from when the renewal was sent).
    valid_until: Instant,
    /// Set when another writer took the lease: who.
    lost: Option<String>,
    /// The fencing token of this holding.
    token: u64,
}

impl Slot {
    fn get(&self) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, held: Option<Held>) {
        *self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = held;
    }
}

/// A lease on one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: Path,
    /// The store's location, for messages.
    pub(crate) location: String,
    pub(crate) ttl: Duration,
    pub(crate) slot: Arc<Slot>,
    /// The store's request limits: a lease request ends within its retry
    /// timeout like every other.
    pub(crate) limits: Option<Limits>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Lease {
    fn display(&self) -> String {
        format!("{}/{LEASE_OBJECT}", self.location.trim_end_matches('/'))
    }

    fn error(&self, e: &object_store::Error) -> Error {
        if unanswered(e) {
            return Error::StoreUnavailable {
                path: self.display(),
                message: explain(e),
            };
        }
        Error::Store {
            path: self.display(),
            message: explain(e),
        }
    }

    fn body(&self, released: bool, token: u64) -> PutPayload {
        let body = Body {
            holder: me(),
            ttl_ms: ms(self.ttl),
            renewed_unix_ms: unix_ms(SystemTime::now()),
            released,
            token,
        };
        PutPayload::from(serde_json::to_vec(&body).unwrap_or_default())
    }

    async fn put(
        &self,
        released: bool,
        token: u64,
        mode: PutMode,
    ) -> object_store::Result<UpdateVersion> {
        let r = within(
            self.limits,
            self.store.put_opts(
                &self.path,
                self.body(released, token),
                PutOptions::from(mode),
            ),
        )
        .await?;
        Ok(UpdateVersion {
            e_tag: r.e_tag,
            version: r.version,
        })
    }

    fn hold(&self, version: UpdateVersion, sent: Instant, token: u64) {
        self.slot.set(Some(Held {
            version,
            valid_until: sent + self.ttl,
            lost: None,
            token,
        }));
    }

    /// The fencing token of the lease this store holds, if any.
    pub(crate) fn token(&self) -> Option<u64> {
        self.slot.get().map(|h| h.token)
    }

    fn locked(&self, holder: String) -> Error {
        Error::Locked {
            location: self.location.clone(),
            holder,
        }
    }

    /// Takes the lease, or fails with [`Error::Locked`] naming the holder.
    /// `Ok(false)`: the server has no conditional `PUT`, so no lease.
    pub(crate) async fn acquire(&self) -> Result<bool> {
        for _ in 0..3 {
            let sent = Instant::now();
            // A new lease object: the wall clock in milliseconds, above the
            // tokens of earlier leases on the prefix (each the clock at its
            // creation plus one per takeover) unless clocks went back.
            let token = unix_ms(SystemTime::now()).max(1);
            match self.put(false, token, PutMode::Create).await {
                Ok(version) => return self.probe(version, sent, token).await,
                Err(object_store::Error::NotImplemented { .. }) => return Ok(self.unsupported()),
                Err(object_store::Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(self.error(&e)),
            }
            let got = match within(self.limits, self.store.get(&self.path)).await {
                Ok(got) => got,
                // Released and deleted in between: try again.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.error(&e)),
            };
            let seen = UpdateVersion {
                e_tag: got.meta.e_tag.clone(),
                version: got.meta.version.clone(),
            };
            let modified = unix_ms(SystemTime::from(got.meta.last_modified));
            let bytes = within(self.limits, got.bytes())
                .await
                .map_err(|e| self.error(&e))?;
            let now = unix_ms(SystemTime::now());
            let body = serde_json::from_slice::<Body>(&bytes).ok();
            // The previous holder's token plus one (or the wall clock, if
            // that is larger: a lease of an older version has token 0).
            let token = body
                .as_ref()
                .map_or(0, |b| b.token)
                .saturating_add(1)
                .max(now);
            let (free, holder) = match body.ok_or(()) {
                Ok(b) if b.released => (true, b.holder),
                Ok(b) => {
                    let at = b.takeover_at_ms();
                    let free = now >= at;
                    let who = if free {
                        b.holder
                    } else {
                        format!(
                            "{} (its lease on the prefix, {LEASE_OBJECT}, was renewed {:.1} s ago \
                             and expires for other writers in {:.1} s unless renewed)",
                            b.holder,
                            now.saturating_sub(b.renewed_unix_ms) as f64 / 1e3,
                            at.saturating_sub(now) as f64 / 1e3
                        )
                    };
                    (free, who)
                }
                // Unreadable: judged by the server's time of its last
                // write, with this store's time to live.
                Err(_) => {
                    let at = modified.saturating_add(ms(self.ttl) * 3 / 2);
                    (
                        now >= at,
                        format!("an unreadable lease object {LEASE_OBJECT}"),
                    )
                }
            };
            if !free {
                return Err(self.locked(holder));
            }
            let sent = Instant::now();
            match self.put(false, token, PutMode::Update(seen)).await {
                Ok(version) => {
                    if !holder.is_empty() {
                        tracing::info!(previous = %holder, store = %self.location, token, "took over an expired or released single-writer lease");
                    }
                    return self.probe(version, sent, token).await;
                }
                // Another writer took it first.
                Err(object_store::Error::Precondition { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => return Ok(self.unsupported()),
                Err(e) => return Err(self.error(&e)),
            }
        }
        Err(self.locked("another backup manager taking the lease at the same time".into()))
    }

    /// After creating the lease: renews it once, so a server that creates
    /// conditionally but cannot update (a local file system through
    /// object_store) is found out now rather than when the lease expires.
    async fn probe(&self, version: UpdateVersion, sent: Instant, token: u64) -> Result<bool> {
        self.hold(version.clone(), sent, token);
        let sent = Instant::now();
        match self.put(false, token, PutMode::Update(version)).await {
            Ok(v) => {
                self.hold(v, sent, token);
                Ok(true)
            }
            Err(object_store::Error::NotImplemented { .. }) => {
                self.slot.set(None);
                let _ = within(self.limits, self.store.delete(&self.path)).await;
                Ok(self.unsupported())
            }
            Err(e) => {
                self.slot.set(None);
                Err(self.error(&e))
            }
        }
    }

    fn unsupported(&self) -> bool {
        warn!(
            store = %self.location,
            "the store has no conditional PUT: no single-writer lease, one writer per prefix is up to you"
        );
        false
    }

    /// Renews the lease. A lease that is gone (a server that lost its
    /// state, an operator's delete) is created again if nobody else has;
    /// one taken over by another writer is lost for good.
    pub(crate) async fn renew(&self) -> Result<()> {
        let _one = self.slot.writing.lock().await;
        let Some(held) = self.slot.get() else {
            return Ok(());
        };
        if held.lost.is_some() {
            return Ok(());
        }
        let sent = Instant::now();
        let e = match self
            .put(false, held.token, PutMode::Update(held.version.clone()))
            .await
        {
            Ok(v) => {
                self.hold(v, sent, held.token);
                return Ok(());
            }
            Err(e) => e,
        };
        if !matches!(e, object_store::Error::Precondition { .. }) {
            return Err(self.error(&e));
        }
        // S3 answers a missing object with a failed precondition too.
        match within(self.limits, self.store.head(&self.path)).await {
            Err(object_store::Error::NotFound { .. }) => {
                // Recreated by its holder: the same holding, the same token.
                let sent = Instant::now();
                match self.put(false, held.token, PutMode::Create).await {
                    Ok(v) => {
                        self.hold(v, sent, held.token);
                        Ok(())
                    }
                    Err(object_store::Error::AlreadyExists { .. }) => self.lose().await,
                    Err(e) => Err(self.error(&e)),
                }
            }
            Ok(_) => self.lose().await,
            Err(e) => Err(self.error(&e)),
        }
    }

    /// Another writer holds the lease now: every later commit is refused.
    async fn lose(&self) -> Result<()> {
        let holder = match within(self.limits, self.store.get(&self.path)).await {
            Ok(got) => match within(self.limits, got.bytes()).await {
                Ok(b) => serde_json::from_slice::<Body>(&b)
                    .map_or_else(|_| "another writer".to_string(), |b| b.holder),
                Err(_) => "another writer".into(),
            },
            Err(_) => "another writer".into(),
        };
        warn!(store = %self.location, %holder, "the single-writer lease was taken over: this manager writes nothing more");
        if let Some(mut held) = self.slot.get() {
            held.lost = Some(holder.clone());
            self.slot.set(Some(held));
        }
        Err(self.locked(holder))
    }

    /// Checks, before a commit or a delete, that this store may still
    /// write: always, when it took no lease; else while its lease is valid
    /// (renewed on the spot when it has lapsed).
    pub(crate) async fn ensure(&self) -> Result<()> {
        let Some(held) = self.slot.get() else {
            return Ok(());
        };
        if let Some(holder) = held.lost {
            return Err(self.locked(holder));
        }
        if Instant::now() < held.valid_until {
            return Ok(());
        }
        self.renew().await.map_err(|e| match e {
            e @ Error::Locked { .. } => e,
            e => Error::Store {
                path: self.display(),
                message: format!(
                    "the single-writer lease expired (not renewed for {:?}) and cannot be renewed: {e}",
                    self.ttl
                ),
            },
        })
    }

    /// Gives the lease up (a conditional `PUT` marking it released).
    pub(crate) async fn release(&self) {
        let _one = self.slot.writing.lock().await;
        let Some(held) = self.slot.get() else {
            return;
        };
        self.slot.set(None);
        if held.lost.is_some() {
            return;
        }
        if let Err(e) = self
            .put(true, held.token, PutMode::Update(held.version))
            .await
        {
            warn!(store = %self.location, cause = %e, "could not release the single-writer lease: it expires by itself");
        }
    }

    /// Takes the lease and keeps it renewed until the returned lock is
    /// released or dropped. `None`: the server cannot hold a lease.
    pub(crate) async fn lock(self) -> Result<Option<WriterLock>> {
        if self.ttl.is_zero() || !self.acquire().await? {
            return Ok(None);
        }
        let renewer = {
            let lease = self.clone();
            tokio::spawn(async move {
                loop {
                    let pause = match lease.slot.get() {
                        None => return,
                        Some(h) if h.lost.is_some() => return,
                        Some(_) => lease.ttl / 3,
                    };
                    tokio::time::sleep(pause).await;
                    if let Err(e) = lease.renew().await {
                        if matches!(e, Error::Locked { .. }) {
                            return;
                        }
                        warn!(cause = %e, "could not renew the single-writer lease; trying again");
                        tokio::time::sleep(lease.ttl / 10).await;
                    }
                }
            })
        };
        let guard = Guard {
            lease: self.clone(),
            renewer,
        };
        let release = self.clone();
        let lock = WriterLock::with_release(
            self.display(),
            guard,
            Box::new(move || Box::pin(async move { release.release().await })),
        );
        Ok(Some(match self.token() {
            Some(token) => lock.with_fencing_token(token),
            None => lock,
        }))
    }
}

/// Keeps the renewal task for as long as the lock lives.
struct Guard {
    lease: Lease,
    renewer: tokio::task::JoinHandle<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.renewer.abort();
        // Dropped without release (an error path, a panic): release in the
        // background, or let the lease expire.
        if self.lease.slot.get().is_some() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let lease = self.lease.clone();
                runtime.spawn(async move { lease.release().await });
            }
        }
    }
}
