//! Backups in object storage (feature `object-store`): S3 and S3-compatible
//! servers, or any other [`object_store::ObjectStore`].
//!
//! [`ObjectBackupStore`] keeps backup files as objects directly under a
//! prefix. Small files (under one part) are written with one conditional
//! `PUT` (`If-None-Match: *`); larger files stream through a multipart
//! upload, part by part while the backup is serialised, so a backup never
//! sits whole in memory. In both cases the object becomes visible only when
//! the writer commits, and a failed or abandoned write leaves nothing under
//! the final name, except after [`Error::CommitUncertain`] (see the limits
//! on [`ObjectBackupStore`]).
//!
//! [`open_url`] opens a store from a URL (`s3://bucket/prefix`,
//! `file:///abs/dir`, `memory://`) or a plain directory path, so callers can
//! accept either.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::{Path, PathPart};
use object_store::{
    BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use tracing::warn;

use super::lease::{Lease, Slot, DEFAULT_LEASE_TTL, LEASE_OBJECT};
use super::object_errors::{chain, check_credentials, explain};
use super::s3_list::{self, TolerantLists};
use super::{
    check_name, BackupStore, BackupWriter, FileReader, LocalStore, SkippedEntry, StoreListing,
    StoredFile, WriterLock, LOCK_FILE,
};
use crate::error::{Error, Result};

/// The smallest part S3 accepts for every part but the last.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// The largest part S3 accepts.
const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;

/// Prefix of [`LocalStore`]'s temporary files, skipped when a `file://` URL
/// points at a directory that `LocalStore` also writes to.
const LOCAL_TMP_PREFIX: &str = ".dictdb-tmp-";

/// Settings of an [`ObjectBackupStore`]: upload part size and concurrency,
/// and (for S3) retries, timeouts and extra client configuration.
///
/// Retries and timeouts bound how long a backup waits on an unreachable
/// server before it fails (and the manager reports the failure and tries
/// again at the next backup). With the defaults every request (a `PUT`, a
/// part, a ranged `GET`, a `HEAD`, a listing, a `DELETE`) ends within 60 s,
/// retries included: each attempt is cut after the request timeout (30 s;
/// connecting, 5 s), a failed attempt is retried up to 5 times with a
/// backoff growing from 100 ms to 5 s, and whatever is still running at
/// the retry timeout (60 s) is cut there. Reads are ranged `GET`s of
/// 4 MiB, so the request timeout never meets a file's size. Tests that
/// stop a server on purpose want much shorter settings.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use dictdb::store::ObjectStoreOptions;
///
/// let options = ObjectStoreOptions::default()
///     .max_retries(1)
///     .retry_timeout(Duration::from_secs(2))
///     .connect_timeout(Duration::from_secs(1))
///     .request_timeout(Duration::from_secs(10))
///     .part_size(8 * 1024 * 1024)
///     .lease_ttl(Duration::from_secs(30))
///     .s3_config("aws_endpoint", "http://127.0.0.1:5055")
///     .s3_config("aws_allow_http", "true");
/// ```
#[derive(Clone, Debug)]
pub struct ObjectStoreOptions {
    max_retries: usize,
    retry_timeout: Duration,
    init_backoff: Duration,
    max_backoff: Duration,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    part_size: usize,
    max_concurrency: usize,
    s3_config: Vec<(String, String)>,
    lease_ttl: Duration,
}

impl Default for ObjectStoreOptions {
    fn default() -> Self {
        ObjectStoreOptions {
            max_retries: 5,
            retry_timeout: Duration::from_secs(60),
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: None,
            request_timeout: None,
            part_size: 8 * 1024 * 1024,
            max_concurrency: 2,
            s3_config: Vec::new(),
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

impl ObjectStoreOptions {
    /// Retries of a failed request (S3). Default: 5. Zero disables retries.
    #[must_use]
    pub fn max_retries(mut self, n: usize) -> Self {
        self.max_retries = n;
        self
    }

    /// The longest a request may take, retries included: no retry starts
    /// later than this after the first attempt, and an attempt still running
    /// then is cut (S3, and every store this builds or
    /// [`ObjectBackupStore::with_options`] wraps). Default: 60 s.
    #[must_use]
    pub fn retry_timeout(mut self, timeout: Duration) -> Self {
        self.retry_timeout = timeout;
        self
    }

    /// First and longest wait between retries, growing exponentially (S3).
    /// Default: 100 ms and 5 s.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.init_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// Timeout of the connect phase of a request (S3). Default: object_store's
    /// (5 s), or `AWS_CONNECT_TIMEOUT` from the environment.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Timeout of one attempt of a request, from connecting to the last byte
    /// of the answer (S3): one part upload, or one ranged `GET` of 4 MiB.
    /// Default: object_store's (30 s), or `AWS_TIMEOUT` from the
    /// environment.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// Size of a multipart upload part, and the largest file written with a
    /// single `PUT`. At least [`MIN_PART_SIZE`] (S3's minimum), at most
    /// 5 GiB. Default: 8 MiB. S3 allows 10 000 parts per upload, so 8 MiB
    /// parts take files up to 78 GiB.
    #[must_use]
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// Parts uploaded at once. A writer holds at most `n + 1` parts in
    /// memory. Default: 2. At least 1.
    #[must_use]
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n;
        self
    }

    /// Time to live of the single-writer lease a backup manager takes on
    /// the prefix (see [`ObjectBackupStore`]'s "Single writer"): renewed
    /// every third of it; a writer that could not renew it for this long
    /// commits nothing; a writer that died without giving it up is replaced
    /// once 1.5 times this has passed. Default: 20 s. Zero: no lease.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// One more S3 setting, applied after the environment: any key
    /// `AmazonS3Builder` understands, such as `aws_endpoint`,
    /// `aws_allow_http`, `aws_access_key_id`, `aws_secret_access_key`,
    /// `aws_region`, `aws_virtual_hosted_style_request`. Ignored by
    /// `file://` and `memory://` stores. An unknown key is an error when the
    /// store is opened.
    #[must_use]
    pub fn s3_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.s3_config.push((key.into(), value.into()));
        self
    }

    fn validate(&self) -> Result<()> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(Error::Config(format!(
                "object store part size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes, got {}",
                self.part_size
            )));
        }
        if self.max_concurrency == 0 {
            return Err(Error::Config(
                "object store max_concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.init_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

/// The retry and timeout settings a store was opened with, enforced on
/// every request ([`within`]) and named in the errors they cause.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    max_retries: usize,
    retry_timeout: Duration,
    request_timeout: Option<Duration>,
}

impl Limits {
    /// Which settings applied, for an error message.
    fn describe(&self) -> String {
        let request = self
            .request_timeout
            .map_or_else(|| "30s (default)".to_string(), |t| format!("{t:?}"));
        format!(
            "retry settings: request_timeout {request} per attempt, max_retries {}, \
             retry_timeout {:?} per request, retries included",
            self.max_retries, self.retry_timeout
        )
    }
}

/// The `store` name of the error a request cut short by
/// [`Limits::retry_timeout`] becomes.
const DEADLINE: &str = "dictdb";

/// A request that ran past its retry timeout.
#[derive(Debug)]
struct DeadlinePassed(Duration);

impl fmt::Display for DeadlinePassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no answer within retry_timeout ({:?}), retries included",
            self.0
        )
    }
}

impl std::error::Error for DeadlinePassed {}

/// Runs one request (with object_store's retries) and cuts it at the retry
/// timeout: object_store stops retrying then, but an attempt in flight
/// would run on for up to its own timeout.
pub(crate) async fn within<T>(
    limits: Option<Limits>,
    request: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    let Some(limits) = limits else {
        return request.await;
    };
    match tokio::time::timeout(limits.retry_timeout, request).await {
        Ok(r) => r,
        Err(_) => Err(object_store::Error::Generic {
            store: DEADLINE,
            source: Box::new(DeadlinePassed(limits.retry_timeout)),
        }),
    }
}

/// Backup files kept as objects in an [`ObjectStore`], directly under a
/// prefix (feature `object-store`).
///
/// - [`list`](BackupStore::list) lists the objects directly under the
///   prefix (not those in "subdirectories"); unfinished multipart uploads
///   are not objects and never show.
/// - [`create`](BackupStore::create) returns a writer that buffers up to one
///   part. A file that fits in one part is written at commit with a single
///   conditional `PUT` (`If-None-Match: *`), which fails rather than
///   overwrite an existing object. A larger file starts a multipart upload
///   as soon as the first part is full and uploads parts while the backup is
///   being serialised (at most `max_concurrency` at once); commit uploads
///   the last part and completes the upload, and only then does the object
///   appear. Abort (and a failed write or commit) aborts the upload.
/// - A request that gets no usable answer (a network error, a timeout, a
///   5xx, after the retries) is [`Error::StoreUnavailable`], naming the
///   object and the retry settings; any other object_store error is
///   [`Error::Store`]: either way a failed backup like any other. Every
///   request ends within the retry timeout of the options the store was
///   opened with ([`ObjectStoreOptions::retry_timeout`]).
/// - [`open`](BackupStore::open) reads ranged `GET`s of 4 MiB, two in
///   flight: each request has its own timeout, and a reader holds at most
///   four ranges in memory.
///
/// # Limits
///
/// - S3 cannot make a multipart upload conditional: before completing one,
///   the writer checks with `HEAD` that no object has the final name and
///   fails if one has. Another writer creating the same name between that
///   check and the completion would be overwritten. Backup names carry a
///   microsecond timestamp and the manager writes one file at a time, so
///   this needs two managers writing to the same prefix at once, which is
///   not supported anyway.
/// - A process killed in the middle of a multipart upload leaves its parts
///   on S3 (invisible, but billed) until they are aborted: give the bucket a
///   lifecycle rule that aborts incomplete multipart uploads after a day.
///   A writer dropped without commit or abort aborts its upload in the
///   background.
/// - When the server stops answering during the final request (the `PUT`
///   or the completion), the object may exist although commit reports an
///   error: [`Error::CommitUncertain`]. The writer then sends a `DELETE` of
///   the name in the background (the name was free before); while the
///   server is unreachable, a complete file may remain under its final name
///   after a failed backup.
/// - When the answer to a conditional `PUT` is lost, the client retries it
///   and finds the name taken. The writer reads the object back: the bytes
///   it sent mean the write took effect, and commit succeeds; other bytes
///   are another writer's ("already exists"); an object it cannot read
///   back is [`Error::CommitUncertain`], and the file may be complete under
///   its final name.
/// - Deleting an object that does not exist succeeds on S3.
/// - Durability is the server's: S3 acknowledges a write once it is stored
///   redundantly. `file://` stores `fsync` files and their directory.
///
/// # Single writer
///
/// A backup manager ([`BackupStore::lock_writer`]) holds a lease on the
/// prefix: the object `.dictdb-lease` (never listed, restored or pruned),
/// created with a conditional `PUT` and renewed every third of its time to
/// live ([`ObjectStoreOptions::lease_ttl`], default 20 s) with a `PUT`
/// conditional on its ETag. A second manager on the prefix (a promoted
/// replica whose writer still runs, a service started twice) fails to start
/// with [`Error::Locked`] naming the holder and when its lease expires. The
/// holder checks its lease before every commit and every delete, renewing
/// on the spot if it lapsed; a lease taken over by another writer, or not
/// renewed for a whole time to live, stops it from committing anything
/// more. A manager that ends marks the lease released (the next one takes
/// it at once); one killed leaves it to expire: 1.5 × the time to live
/// after its last renewal, by the taker's clock.
///
/// Each acquisition gets a fencing token
/// ([`WriterLock::fencing_token`]) larger than every earlier one on the
/// prefix; the manager records it in every file it writes, begins with a
/// full backup (it never continues a chain written under another token),
/// and restore and verify refuse a chain whose files carry two tokens.
///
/// Not prevented: a writer paused for longer than the time to live between
/// its last check and the request it was about to send can still land that
/// one file (under its old token); clocks further apart than half the time
/// to live; tools that write without the lease; servers without
/// conditional `PUT` (then no lease is taken, with a warning).
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use dictdb::store::{BackupStore, ObjectBackupStore};
/// use dictdb::{BackupConfig, BackupManager, DictDB};
/// use object_store::memory::InMemory;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dictdb::Result<()> {
/// let store: Arc<dyn BackupStore> =
///     Arc::new(ObjectBackupStore::new(Arc::new(InMemory::new()), "backups"));
/// let db = DictDB::new();
/// db.create_table("users")?.insert(serde_json::json!({"name": "Alice"}))?;
/// let backups = BackupManager::start(&db, BackupConfig::with_store(Arc::clone(&store))).await?;
/// backups.backup_full().await?;
/// backups.stop().await?;
/// assert_eq!(store.list().await?.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ObjectBackupStore {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
    part_size: usize,
    max_concurrency: usize,
    /// Retry and timeout settings enforced on each request (`None`: the
    /// wrapped store's own).
    limits: Option<Limits>,
    lease_ttl: Duration,
    /// The lease this store (and its clones) took, if any: checked before
    /// every commit and delete.
    lease: Arc<Slot>,
}

impl fmt::Debug for ObjectBackupStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBackupStore")
            .field("location", &self.location)
            .field("store", &self.inner)
            .field("part_size", &self.part_size)
            .field("max_concurrency", &self.max_concurrency)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

impl ObjectBackupStore {
    /// Backups under `prefix` (`""` for the root) in `store`, with the
    /// default part size and concurrency. Retries and timeouts are those
    /// `store` was built with.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<Path>) -> ObjectBackupStore {
        let options = ObjectStoreOptions::default();
        let prefix = prefix.into();
        ObjectBackupStore {
            location: format!("{store}/{prefix}"),
            inner: store,
            prefix,
            part_size: options.part_size,
            max_concurrency: options.max_concurrency,
            limits: None,
            lease_ttl: options.lease_ttl,
            lease: Arc::default(),
        }
    }

    /// Like [`new`](Self::new), with the part size, concurrency and lease
    /// time to live of `options`, and its retry timeout as the longest any
    /// request may take (its other retry, timeout and S3 settings apply only
    /// to stores opened from a URL). Errors: invalid options.
    pub fn with_options(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<Path>,
        options: &ObjectStoreOptions,
    ) -> Result<ObjectBackupStore> {
        options.validate()?;
        let mut s = ObjectBackupStore::new(store, prefix);
        s.part_size = options.part_size;
        s.max_concurrency = options.max_concurrency;
        s.limits = Some(options.limits());
        s.lease_ttl = options.lease_ttl;
        Ok(s)
    }

    /// Opens a store from a URL with default options; see
    /// [`from_url_with`](Self::from_url_with).
    pub fn from_url(url: &str) -> Result<ObjectBackupStore> {
        ObjectBackupStore::from_url_with(url, &ObjectStoreOptions::default())
    }

    /// Opens a store from a URL:
    ///
    /// - `s3://bucket/prefix` (or `s3a://`): the bucket and prefix come from
    ///   the URL; everything else (endpoint, region, credentials, allow-http,
    ///   ...) from the environment exactly as `AmazonS3Builder::from_env()`
    ///   reads it (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`,
    ///   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, ...),
    ///   then from [`ObjectStoreOptions::s3_config`]. Without credentials
    ///   object_store asks the instance metadata service, as the AWS SDKs do.
    /// - `file:///abs/dir`: a local directory (created if missing) through
    ///   object_store's `LocalFileSystem`, with `fsync`.
    /// - `memory://` (or `memory://prefix`): a new, empty in-memory store,
    ///   for tests; clone the result to share it.
    ///
    /// No request is sent: a wrong endpoint, bucket or credential shows at
    /// the first operation, except that with `AWS_EC2_METADATA_DISABLED=true`
    /// (which object_store itself ignores) an S3 URL with no credentials
    /// configured is refused here, naming the settings that provide them.
    ///
    /// Errors: an unparsable URL, another scheme, invalid options, a prefix
    /// that is not a valid object path, an `s3://` or `memory://` URL with a
    /// part that would be ignored (user, password, port, query, fragment) or
    /// a prefix with `.` or `..` segments.
    pub fn from_url_with(url: &str, options: &ObjectStoreOptions) -> Result<ObjectBackupStore> {
        options.validate()?;
        let parsed = url::Url::parse(url)
            .map_err(|e| Error::Config(format!("invalid backup store URL {url:?}: {e}")))?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        if matches!(scheme.as_str(), "s3" | "s3a" | "memory") {
            check_url_parts(url, &parsed)?;
        }
        let (inner, prefix, location): (Arc<dyn ObjectStore>, Path, String) = match scheme.as_str()
        {
            "s3" | "s3a" => {
                let bucket = parsed.host_str().unwrap_or_default();
                if bucket.is_empty() {
                    return Err(Error::Config(format!(
                        "backup store URL {url:?} names no bucket (s3://BUCKET/prefix)"
                    )));
                }
                let prefix = url_prefix(url, parsed.path())?;
                let builder = s3_builder(bucket, options)?;
                check_credentials(&builder)?;
                let s3 = builder
                    .build()
                    .map_err(|e| Error::Config(format!("S3 store for {url:?}: {}", chain(&e))))?;
                let location = join_location(&format!("{scheme}://{bucket}"), &prefix);
                (Arc::new(s3), prefix, location)
            }
            "file" => {
                let dir: PathBuf = parsed.to_file_path().map_err(|()| {
                    Error::Config(format!(
                        "backup store URL {url:?} is not an absolute local path (file:///abs/dir)"
                    ))
                })?;
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| Error::Config(format!("{url:?}: {}", chain(&e))))?
                    .with_fsync(true);
                (
                    Arc::new(fs),
                    Path::default(),
                    format!("file://{}", dir.display()),
                )
            }
            "memory" => {
                let raw = format!("{}{}", parsed.host_str().unwrap_or_default(), parsed.path());
                let prefix = url_prefix(url, &raw)?;
                let location = join_location("memory://", &prefix);
                (Arc::new(InMemory::new()), prefix, location)
            }
            other => {
                return Err(Error::Config(format!(
                    "unsupported backup store URL scheme {other:?} in {url:?} \
                     (use s3://bucket/prefix, file:///abs/dir, memory:// or a directory path)"
                )))
            }
        };
        Ok(ObjectBackupStore {
            inner,
            prefix,
            location,
            part_size: options.part_size,
            max_concurrency: options.max_concurrency,
            limits: Some(options.limits()),
            lease_ttl: options.lease_ttl,
            lease: Arc::default(),
        })
    }

    /// The object store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The prefix backups live under.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// The multipart upload part size.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// The time to live of the single-writer lease (zero: none).
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// The lease of this store's prefix.
    fn lease(&self) -> Lease {
        Lease {
            store: Arc::clone(&self.inner),
            path: self.prefix.clone().join(PathPart::from(LEASE_OBJECT)),
            location: self.location.clone(),
            ttl: self.lease_ttl,
            slot: Arc::clone(&self.lease),
            limits: self.limits,
        }
    }

    /// The object path of a backup file name: a plain name that object
    /// storage keeps as it is (no character object_store would
    /// percent-encode, so `list` gives back the same name).
    fn object(&self, name: &str) -> Result<Path> {
        check_name(name)?;
        let part = PathPart::from(name);
        if part.as_ref() != name {
            return Err(Error::Store {
                path: self.display(name),
                message: "not a valid object name (characters such as `%`, `#`, `*`, `?`, \
                          `[`, `]`, `{`, `}`, `<`, `>`, `|`, `^`, `~`, `\"` and backquotes are refused)"
                    .into(),
            });
        }
        Ok(self.prefix.clone().join(part))
    }

    fn display(&self, name: &str) -> String {
        join_location(&self.location, name)
    }

    fn error(&self, name: &str, e: &object_store::Error) -> Error {
        self.error_at(self.display(name), e)
    }

    /// A request's error: [`Error::StoreUnavailable`] (naming the settings
    /// that applied) when the store did not answer, else [`Error::Store`].
    fn error_at(&self, path: String, e: &object_store::Error) -> Error {
        if unanswered(e) {
            let settings = self
                .limits
                .map(|l| format!(" ({})", l.describe()))
                .unwrap_or_default();
            return Error::StoreUnavailable {
                path,
                message: format!("{}{settings}", explain(e)),
            };
        }
        Error::Store {
            path,
            message: explain(e),
        }
    }

    /// [`within`] this store's limits.
    async fn within<T>(
        &self,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        within(self.limits, request).await
    }
}

/// `AmazonS3Builder::from_env()` for `bucket`, with `options` applied.
fn s3_builder(bucket: &str, options: &ObjectStoreOptions) -> Result<AmazonS3Builder> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(options.retry_config())
        .with_http_connector(TolerantLists);
    if let Some(t) = options.connect_timeout {
        b = b.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            millis(t),
        );
    }
    if let Some(t) = options.request_timeout {
        b = b.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            millis(t),
        );
    }
    for (key, value) in &options.s3_config {
        let k: AmazonS3ConfigKey = key
            .to_ascii_lowercase()
            .parse()
            .map_err(|e| Error::Config(format!("unknown S3 setting {key:?}: {}", chain(&e))))?;
        if k == AmazonS3ConfigKey::Bucket {
            return Err(Error::Config(
                "the bucket comes from the URL (s3://BUCKET/prefix), not from s3_config".into(),
            ));
        }
        b = b.with_config(k, value);
    }
    Ok(b)
}

/// A duration in the `humantime` form object_store parses.
fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Refuses the parts of an `s3://` or `memory://` URL that would be
/// ignored (user, password, port, query, fragment) and a prefix with `.` or
/// `..` segments, which URL parsing would resolve (`svc/../svc2` is
/// `svc2`): a URL means exactly the bucket and prefix it spells.
fn check_url_parts(url: &str, parsed: &url::Url) -> Result<()> {
    let ignored = [
        (!parsed.username().is_empty(), "a user name"),
        (parsed.password().is_some(), "a password"),
        (parsed.port().is_some(), "a port"),
        (parsed.query().is_some(), "a query (`?...`)"),
        (parsed.fragment().is_some(), "a fragment (`#...`)"),
    ];
    if let Some((_, what)) = ignored.iter().find(|(has, _)| *has) {
        return Err(Error::Config(format!(
            "backup store URL {url:?} has {what}, which would be ignored: the URL names only \
             the bucket and prefix (s3://BUCKET/prefix); credentials, endpoint and region come \
             from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT, AWS_REGION or \
             ObjectStoreOptions::s3_config"
        )));
    }
    // The path as written, before URL parsing resolves dot segments.
    let after_scheme = url.split_once("://").map_or("", |(_, rest)| rest);
    let raw = after_scheme
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .split_once('/')
        .map_or("", |(_, path)| path);
    let dot = raw.split('/').any(|seg| {
        let seg = seg.to_ascii_lowercase().replace("%2e", ".");
        seg == "." || seg == ".."
    });
    if dot {
        return Err(Error::Config(format!(
            "backup store URL {url:?}: the prefix has `.` or `..` segments; spell the prefix \
             it should resolve to"
        )));
    }
    Ok(())
}

fn url_prefix(url: &str, path: &str) -> Result<Path> {
    Path::from_url_path(path).map_err(|e| {
        Error::Config(format!(
            "backup store URL {url:?}: the prefix is not a valid object path: {e}"
        ))
    })
}

fn join_location(base: &str, rest: impl fmt::Display) -> String {
    let rest = rest.to_string();
    if rest.is_empty() {
        base.to_string()
    } else if base.ends_with('/') {
        format!("{base}{rest}")
    } else {
        format!("{base}/{rest}")
    }
}

/// Opens a backup store from a URL or a directory path, with default
/// options: see [`open_url_with`].
///
/// # Examples
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> dictdb::Result<()> {
/// let store = dictdb::store::open_url("memory://backups")?;
/// assert_eq!(store.location(), "memory://backups");
/// assert!(store.list().await?.is_empty());
/// # Ok(())
/// # }
/// ```
pub fn open_url(url: &str) -> Result<Arc<dyn BackupStore>> {
    open_url_with(url, &ObjectStoreOptions::default())
}

/// Opens a backup store from a URL or a directory path.
///
/// A string with `://` is a URL for [`ObjectBackupStore::from_url_with`]
/// (`s3://bucket/prefix`, `file:///abs/dir`, `memory://`); anything else is
/// a directory path, opened (and created if missing) as a [`LocalStore`],
/// as [`crate::BackupConfig::new`] does. Callers such as a command line can
/// so accept either.
pub fn open_url_with(url: &str, options: &ObjectStoreOptions) -> Result<Arc<dyn BackupStore>> {
    if url.contains("://") {
        Ok(Arc::new(ObjectBackupStore::from_url_with(url, options)?))
    } else {
        Ok(Arc::new(LocalStore::open(url)?))
    }
}

#[async_trait]
impl BackupStore for ObjectBackupStore {
    fn location(&self) -> String {
        self.location.clone()
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        Ok(self.list_all().await?.files)
    }

    async fn list_all(&self) -> Result<StoreListing> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing = self
            .within(self.inner.list_with_delimiter(prefix))
            .await
            .map_err(|e| self.error_at(self.location.clone(), &e))?;
        let mut skipped = Vec::new();
        // Keys object_store cannot represent come back as stand-ins (see
        // `s3_list`): reported, never files.
        for dir in &listing.common_prefixes {
            if let Some(last) = dir.filename() {
                skipped.extend(s3_list::skipped(last, None));
            }
        }
        let mut out: Vec<StoredFile> = Vec::with_capacity(listing.objects.len());
        for meta in listing.objects {
            let Some(mut rest) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let Some(name) = rest.next().map(|p| p.as_ref().to_string()) else {
                continue;
            };
            if rest.next().is_some()
                || name.starts_with(LOCAL_TMP_PREFIX)
                || name == LOCK_FILE
                || name == LEASE_OBJECT
            {
                continue;
            }
            if let Some(entry) = s3_list::skipped(&name, Some(meta.size)) {
                skipped.push(entry);
                continue;
            }
            // A key object_store parses but no plain name addresses.
            if check_name(&name).is_err() || self.object(&name).is_err() {
                skipped.push(SkippedEntry::new(
                    &join_location(self.prefix.as_ref(), &name),
                    Some(meta.size),
                    "not a plain file name: not a backup file, skipped",
                ));
                continue;
            }
            out.push(StoredFile {
                name,
                size: meta.size,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        skipped.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(StoreListing::new(out, skipped))
    }

    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        let path = self.object(name)?;
        self.lease().ensure().await?;
        Ok(Box::new(ObjectWriter {
            target: Target {
                store: self.clone(),
                name: name.to_string(),
                path,
            },
            small: Vec::new(),
            upload: None,
            failed: false,
        }))
    }

    async fn open(&self, name: &str) -> Result<FileReader> {
        let path = self.object(name)?;
        // The size first, then ranged GETs of READ_RANGE bytes, at most
        // READS_IN_FLIGHT at once: each request has its own timeout, which
        // never meets the file's size, and memory holds at most
        // READS_IN_FLIGHT ranges fetched plus one queued and one being read.
        let meta = self
            .within(self.inner.head(&path))
            .await
            .map_err(|e| self.error(name, &e))?;
        let size = meta.size;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(1);
        let store = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let ranges = (0..size)
                .step_by(READ_RANGE as usize)
                .map(move |start| start..(start + READ_RANGE).min(size));
            let mut chunks = stream::iter(ranges)
                .map(|range| {
                    let (store, path, name) = (&store, &path, &name);
                    async move {
                        let want = range.end - range.start;
                        let bytes = store
                            .within(store.inner.get_range(path, range))
                            .await
                            .map_err(|e| store.error(name, &e))?;
                        if bytes.len() as u64 != want {
                            return Err(Error::Store {
                                path: store.display(name),
                                message: format!(
                                    "the object changed while it was read \
                                     (a range of {want} bytes returned {})",
                                    bytes.len()
                                ),
                            });
                        }
                        Ok(bytes)
                    }
                })
                .buffered(READS_IN_FLIGHT);
            while let Some(item) = chunks.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Box::new(StreamReader {
            rx,
            current: Bytes::new(),
        }))
    }

    async fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        let path = self.object(name)?;
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = self
            .within(self.inner.get_range(&path, range))
            .await
            .map_err(|e| self.error(name, &e))?;
        Ok(Vec::from(bytes))
    }

    async fn stat(&self, name: &str) -> Result<Option<StoredFile>> {
        let path = self.object(name)?;
        match self.within(self.inner.head(&path)).await {
            Ok(meta) => Ok(Some(StoredFile {
                name: name.to_string(),
                size: meta.size,
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(name, &e)),
        }
    }

    async fn lock_writer(&self) -> Result<Option<WriterLock>> {
        self.lease().lock().await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.object(name)?;
        self.lease().ensure().await?;
        self.within(self.inner.delete(&path))
            .await
            .map_err(|e| self.error(name, &e))
    }
}

/// The size of the ranged `GET`s that read an object.
const READ_RANGE: u64 = 4 << 20;

/// Ranged `GET`s of one object in flight at once.
const READS_IN_FLIGHT: usize = 2;

/// A blocking reader over an object's byte stream, fed by a task on the
/// runtime. Read it on a blocking thread (it waits with `blocking_recv`).
struct StreamReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes>>,
    current: Bytes,
}

impl std::io::Read for StreamReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.current = b,
                // The store's error travels inside the io::Error; the codec
                // takes it out again.
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A file on its way to object storage.
struct ObjectWriter {
    target: Target,
    /// Bytes written while the file still fits one part.
    small: Vec<u8>,
    /// The multipart upload (object_store's writer: parts of `part_size`,
    /// uploaded as they fill), once the file has outgrown one part.
    upload: Option<WriteMultipart>,
    /// A request of this upload failed: `abort` then runs in the background
    /// rather than wait on a store that may not answer.
    failed: bool,
}

/// Where a file goes. Kept apart from the upload in progress (which is not
/// `Sync`) so the requests below can be awaited from `Send` futures.
struct Target {
    store: ObjectBackupStore,
    name: String,
    path: Path,
}

impl Target {
    fn error(&self, e: &object_store::Error) -> Error {
        self.store.error(&self.name, e)
    }

    fn already_exists(&self) -> Error {
        Error::Store {
            path: self.store.display(&self.name),
            message: "an object with this name already exists; it was not overwritten".into(),
        }
    }

    /// Checks that no object has the final name (multipart uploads cannot be
    /// conditional).
    async fn name_is_free(&self) -> Result<()> {
        match self.store.within(self.store.inner.head(&self.path)).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Ok(_) => Err(self.already_exists()),
            Err(e) => Err(self.error(&e)),
        }
    }

    /// After a write whose outcome is unknown, deletes the final name in
    /// the background and says so in the error.
    fn failed_write(&self, e: &object_store::Error) -> Error {
        let err = self.error(e);
        if !outcome_unknown(e) {
            return err;
        }
        remove_after_failure(&self.store, &self.path, &self.name);
        Error::CommitUncertain(Box::new(with_message(
            err,
            "; the write may have taken effect: a DELETE of the name was sent in the background",
        )))
    }

    /// Uploads what is left, checks the final name is free and completes
    /// the upload.
    async fn complete(&self, mut up: WriteMultipart) -> Result<()> {
        // Every full part uploaded first, so the check below comes as late
        // as it can: only the last part is still to go after it.
        if let Err(e) = self.store.within(up.wait_for_capacity(0)).await {
            abort_in_background(up, &self.name);
            return Err(self.error(&e));
        }
        if let Err(e) = self.name_is_free().await {
            abort_in_background(up, &self.name);
            return Err(e);
        }
        match self.store.within(up.finish()).await {
            Ok(_) => Ok(()),
            // `finish` aborts the upload on error; the completion may still
            // have taken effect if its answer was lost.
            Err(e) => Err(self.failed_write(&e)),
        }
    }

    /// Writes a file of less than one part with one conditional `PUT`.
    async fn put_small(&self, bytes: Vec<u8>) -> Result<()> {
        let payload = PutPayload::from(bytes);
        let create = PutOptions::from(PutMode::Create);
        let first = self
            .store
            .within(
                self.store
                    .inner
                    .put_opts(&self.path, payload.clone(), create),
            )
            .await;
        let e = match first {
            Ok(_) => return Ok(()),
            // Another writer's object, or ours: object_store retries a PUT
            // whose answer was lost, and the retry finds the first attempt's
            // object. Only the content tells.
            Err(object_store::Error::AlreadyExists { .. }) => {
                return self.ours_already(&payload).await;
            }
            // Conditional put turned off (`AWS_CONDITIONAL_PUT=disabled`):
            // check, then write, as for a multipart upload.
            Err(object_store::Error::NotImplemented { .. }) => {
                self.name_is_free().await?;
                match self
                    .store
                    .within(self.store.inner.put(&self.path, payload))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        Err(self.failed_write(&e))
    }

    /// A conditional `PUT` found the name taken: reads the object back and
    /// compares it with what was sent. The same bytes are this write's, its
    /// answer lost on the way back (the file is committed); other bytes are
    /// another writer's (refused, not overwritten); an object that cannot
    /// be read back leaves the outcome unknown.
    async fn ours_already(&self, sent: &PutPayload) -> Result<()> {
        let store = &self.store;
        let uncertain = |detail: String| {
            Error::CommitUncertain(Box::new(Error::Store {
                path: store.display(&self.name),
                message: format!(
                    "the name was taken when the write was retried (its first answer was lost?), \
                     and the object could not be compared with what was sent: {detail}; \
                     it may be this file, complete"
                ),
            }))
        };
        let size = sent.content_length() as u64;
        let meta = match store.within(store.inner.head(&self.path)).await {
            Ok(m) => m,
            Err(e) => return Err(uncertain(chain(&e))),
        };
        if meta.size != size {
            return Err(self.already_exists());
        }
        let got = match store
            .within(store.inner.get_range(&self.path, 0..size))
            .await
        {
            Ok(b) => b,
            Err(e) => return Err(uncertain(chain(&e))),
        };
        let same = sent.iter().flat_map(|b| b.iter()).eq(got.iter());
        if !same {
            return Err(self.already_exists());
        }
        tracing::info!(
            file = %store.display(&self.name),
            "the answer to a PUT was lost; the object under the name holds exactly what was sent: committed"
        );
        Ok(())
    }
}

/// `e` with `more` added to its message.
fn with_message(e: Error, more: &str) -> Error {
    match e {
        Error::Store { path, message } => Error::Store {
            path,
            message: format!("{message}{more}"),
        },
        Error::StoreUnavailable { path, message } => Error::StoreUnavailable {
            path,
            message: format!("{message}{more}"),
        },
        other => other,
    }
}

async fn abort_upload(up: WriteMultipart, name: &str) {
    if let Err(e) = up.abort().await {
        warn!(file = %name, cause = %chain(&e), "could not abort a multipart upload");
    }
}

/// Aborts an upload without waiting on a store that may not answer.
fn abort_in_background(up: WriteMultipart, name: &str) {
    let name = name.to_string();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move { abort_upload(up, &name).await });
    }
}

/// Whether a failed write may still have taken effect: the request or its
/// answer was lost (a network error, a timeout, a server error), as opposed
/// to a clear refusal (permissions, a missing bucket, a precondition).
fn outcome_unknown(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. })
}

/// Whether a request got no usable answer: a network error, a timeout
/// (object_store's per attempt, or the retry timeout), a server error (5xx,
/// 429), after the retries; not a refusal (4xx) nor a local file system's
/// error.
pub(crate) fn unanswered(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { store, .. } if *store == DEADLINE => true,
        object_store::Error::Generic { store, .. } if *store == "S3" => {
            let text = chain(e);
            let refused = text.split("status code: ").skip(1).any(|rest| {
                rest.starts_with('4') && !rest.starts_with("429") && !rest.starts_with("408")
            });
            !refused
        }
        _ => false,
    }
}

/// After a write whose outcome is unknown (the request failed, but the
/// server may have stored the object), deletes the final name in the
/// background, so that a failed commit leaves nothing behind once the
/// store answers again. The name was checked free just before (or the
/// write was conditional), so what is there is ours.
fn remove_after_failure(store: &ObjectBackupStore, path: &Path, name: &str) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (store, path, name) = (store.clone(), path.clone(), name.to_string());
    runtime.spawn(async move {
        if let Err(e) = store.within(store.inner.delete(&path)).await {
            warn!(
                file = %store.display(&name),
                cause = %chain(&e),
                "a failed write may have left an object under its final name"
            );
        }
    });
}

#[async_trait]
impl BackupWriter for ObjectWriter {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let part_size = self.target.store.part_size;
        match &mut self.upload {
            Some(up) => {
                // Back pressure: at most `max_concurrency` parts in flight,
                // so a writer holds a bounded number of parts in memory.
                let max = self.target.store.max_concurrency;
                if let Err(e) = self.target.store.within(up.wait_for_capacity(max)).await {
                    self.failed = true;
                    return Err(self.target.error(&e));
                }
                up.put(Bytes::from(chunk));
            }
            None => {
                self.small.extend_from_slice(&chunk);
                if self.small.len() >= part_size {
                    let t = &self.target;
                    let upload = t
                        .store
                        .within(t.store.inner.put_multipart(&t.path))
                        .await
                        .map_err(|e| t.error(&e))?;
                    let mut up = WriteMultipart::new_with_chunk_size(upload, part_size);
                    up.put(Bytes::from(std::mem::take(&mut self.small)));
                    self.upload = Some(up);
                }
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let upload = self.upload.take();
        let small = std::mem::take(&mut self.small);
        let target = &self.target;
        // The last moment a lease lost or expired can stop this writer.
        if let Err(e) = target.store.lease().ensure().await {
            if let Some(up) = upload {
                abort_upload(up, &target.name).await;
            }
            return Err(e);
        }
        match upload {
            Some(up) => target.complete(up).await,
            None => target.put_small(small).await,
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.small.clear();
        if let Some(up) = self.upload.take() {
            if self.failed {
                abort_in_background(up, &self.target.name);
            } else {
                let store = &self.target.store;
                if let Err(e) = store.within(up.abort()).await {
                    warn!(file = %self.target.name, cause = %chain(&e), "could not abort a multipart upload");
                }
            }
        }
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        // Dropped in the middle of a multipart upload (a cancelled backup):
        // S3 keeps the parts until the upload is aborted, so abort it.
        if let Some(up) = self.upload.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let name = std::mem::take(&mut self.target.name);
                runtime.spawn(async move { abort_upload(up, &name).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(prefix: &str) -> ObjectBackupStore {
        ObjectBackupStore::new(Arc::new(InMemory::new()), prefix)
    }

    async fn write(store: &ObjectBackupStore, name: &str, parts: &[Vec<u8>]) -> Result<()> {
        let mut w = store.create(name).await?;
        for p in parts {
            w.write(p.clone()).await?;
        }
        w.commit().await
    }

    #[tokio::test]
    async fn small_and_multipart_files_round_trip() {
        let store = memory("a/b");
        write(&store, "small.json", &[b"{}".to_vec()])
            .await
            .unwrap();
        let big: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 1 << 20]).collect();
        write(&store, "big.json", &big).await.unwrap();
        let listed = store.list().await.unwrap();
        assert_eq!(
            listed,
            vec![
                StoredFile {
                    name: "big.json".into(),
                    size: 12 << 20
                },
                StoredFile {
                    name: "small.json".into(),
                    size: 2
                },
            ]
        );
        assert_eq!(store.read("big.json").await.unwrap(), big.concat());
        assert_eq!(store.read("small.json").await.unwrap(), b"{}");
        store.delete("small.json").await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn nothing_visible_before_commit_and_abort_leaves_nothing() {
        let store = memory("");
        let mut w = store.create("x.json").await.unwrap();
        for _ in 0..10 {
            w.write(vec![1; 1 << 20]).await.unwrap();
        }
        assert!(store.list().await.unwrap().is_empty());
        w.abort().await;
        assert!(store.list().await.unwrap().is_empty());
        assert!(matches!(
            store.read("x.json").await,
            Err(Error::Store { .. })
        ));
    }

    #[tokio::test]
    async fn existing_objects_are_not_overwritten() {
        let store = memory("p");
        write(&store, "f.json", &[b"first".to_vec()]).await.unwrap();
        let err = write(&store, "f.json", &[b"second".to_vec()])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let big: Vec<Vec<u8>> = (0..9).map(|_| vec![7; 1 << 20]).collect();
        let err = write(&store, "f.json", &big).await.unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert_eq!(store.read("f.json").await.unwrap(), b"first");
    }

    #[tokio::test]
    async fn list_ignores_nested_and_foreign_objects() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for p in [
            "pre/a.json",
            "pre/sub/b.json",
            "other/c.json",
            "pre/.dictdb-tmp-1-x",
        ] {
            inner
                .put(&Path::from(p), b"x".to_vec().into())
                .await
                .unwrap();
        }
        let store = ObjectBackupStore::new(Arc::clone(&inner), "pre");
        let names: Vec<String> = store
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a.json"]);
        let root = ObjectBackupStore::new(inner, "");
        assert!(root.list().await.unwrap().is_empty());
    }

    fn leased(inner: &Arc<dyn ObjectStore>, ttl: Duration) -> ObjectBackupStore {
        let opts = ObjectStoreOptions::default().lease_ttl(ttl);
        ObjectBackupStore::with_options(Arc::clone(inner), "p", &opts).unwrap()
    }

    #[tokio::test]
    async fn one_lease_per_prefix_until_it_is_released() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let first = leased(&inner, Duration::from_secs(30));
        let lock = first.lock_writer().await.unwrap().expect("a lease");
        assert!(lock.description().ends_with("p/.dictdb-lease"));
        let second = leased(&inner, Duration::from_secs(30));
        match second.lock_writer().await {
            Err(Error::Locked { location, holder }) => {
                assert_eq!(location, first.location());
                assert!(
                    holder.contains(&format!("pid {}", std::process::id())),
                    "{holder}"
                );
                assert!(holder.contains("expires"), "{holder}");
            }
            other => panic!("{other:?}"),
        }
        // The lease is not a backup file.
        assert!(first.list().await.unwrap().is_empty());
        write(&first, "a.json", &[b"{}".to_vec()]).await.unwrap();
        let token = lock.fencing_token().expect("a lease has a fencing token");
        lock.release().await;
        let lock = second
            .lock_writer()
            .await
            .unwrap()
            .expect("released: free at once");
        // Each holding has its own token, larger than the one before.
        assert!(lock.fencing_token().unwrap() > token);
        // The first store gave its lease up: it checks nothing any more,
        // the second holds it.
        write(&second, "b.json", &[b"{}".to_vec()]).await.unwrap();
        drop(lock);
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_holder_commits_nothing_more() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let ttl = Duration::from_millis(200);
        let dead = leased(&inner, ttl);
        // Taken without the renewal task: a writer that died.
        assert!(dead.lease().acquire().await.unwrap());
        let mut pending = dead.create("late.json").await.unwrap();
        pending.write(b"{}".to_vec()).await.unwrap();
        let next = leased(&inner, ttl);
        assert!(matches!(
            next.lock_writer().await,
            Err(Error::Locked { .. })
        ));
        tokio::time::sleep(ttl * 3 / 2 + Duration::from_millis(50)).await;
        let lock = next
            .lock_writer()
            .await
            .unwrap()
            .expect("expired: taken over");
        // The old holder's commit finds its lease gone.
        let err = pending.commit().await.unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(matches!(
            dead.delete("x.json").await,
            Err(Error::Locked { .. })
        ));
        assert!(matches!(
            dead.create("y.json").await,
            Err(Error::Locked { .. })
        ));
        assert!(next.list().await.unwrap().is_empty(), "nothing landed");
        write(&next, "ok.json", &[b"{}".to_vec()]).await.unwrap();
        drop(lock);
    }

    #[tokio::test]
    async fn a_lease_is_renewed_while_its_holder_lives() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let ttl = Duration::from_millis(150);
        let holder = leased(&inner, ttl);
        let lock = holder.lock_writer().await.unwrap().expect("a lease");
        tokio::time::sleep(ttl * 4).await;
        let other = leased(&inner, ttl);
        assert!(matches!(
            other.lock_writer().await,
            Err(Error::Locked { .. })
        ));
        write(&holder, "a.json", &[b"{}".to_vec()]).await.unwrap();
        lock.release().await;
    }

    #[tokio::test]
    async fn a_lease_object_lost_by_the_server_is_created_again() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let ttl = Duration::from_millis(100);
        let holder = leased(&inner, ttl);
        assert!(holder.lease().acquire().await.unwrap());
        inner.delete(&Path::from("p/.dictdb-lease")).await.unwrap();
        tokio::time::sleep(ttl * 2).await;
        write(&holder, "a.json", &[b"{}".to_vec()]).await.unwrap();
        let other = leased(&inner, ttl);
        assert!(matches!(
            other.lock_writer().await,
            Err(Error::Locked { .. })
        ));
    }

    #[tokio::test]
    async fn no_lease_without_conditional_updates_or_with_a_zero_ttl() {
        let tmp = tempfile::tempdir().unwrap();
        let url = format!("file://{}", tmp.path().display());
        let store = ObjectBackupStore::from_url(&url).unwrap();
        assert!(store.lock_writer().await.unwrap().is_none());
        assert!(
            !tmp.path().join(LEASE_OBJECT).exists(),
            "the probe cleaned up"
        );
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        assert!(leased(&inner, Duration::ZERO)
            .lock_writer()
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn bad_names_are_refused() {
        let store = memory("p");
        for bad in ["", "..", "a/b", "a%b", "a#1", "a*b"] {
            assert!(store.create(bad).await.is_err(), "{bad:?}");
            assert!(store.read(bad).await.is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls() {
        // Credentials given: with AWS_EC2_METADATA_DISABLED=true and none in
        // the environment, an S3 store is refused when opened.
        let creds = ObjectStoreOptions::default()
            .s3_config("aws_access_key_id", "k")
            .s3_config("aws_secret_access_key", "s");
        let s = ObjectBackupStore::from_url_with("s3://bucket/some/prefix/", &creds).unwrap();
        assert_eq!(s.location(), "s3://bucket/some/prefix");
        assert_eq!(s.prefix().as_ref(), "some/prefix");
        let s = ObjectBackupStore::from_url_with("s3://bucket", &creds).unwrap();
        assert_eq!(s.location(), "s3://bucket");
        assert_eq!(s.prefix().as_ref(), "");
        let s = ObjectBackupStore::from_url("memory://").unwrap();
        assert_eq!(s.location(), "memory://");
        let s = ObjectBackupStore::from_url("memory:///x/y").unwrap();
        assert_eq!(s.location(), "memory://x/y");
        for bad in [
            "s3:///prefix",
            "ftp://host/x",
            "file://relative/dir",
            "s3://bucket/a//b",
            "not a url://x",
            "s3://user:secret@bucket/p",
            "s3://user@bucket/p",
            "s3://bucket:9000/p",
            "s3://bucket/p?region=eu-west-1",
            "s3://bucket/p#frag",
            "s3://bucket/svc/../svc2",
            "s3://bucket/svc/./x",
            "s3://bucket/svc/%2E%2E/svc2",
            "memory://x/../y",
        ] {
            assert!(
                matches!(ObjectBackupStore::from_url(bad), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        let opts = ObjectStoreOptions::default().s3_config("no_such_key", "1");
        assert!(ObjectBackupStore::from_url_with("s3://b/p", &opts).is_err());
        let opts = ObjectStoreOptions::default().part_size(1024);
        assert!(ObjectBackupStore::from_url_with("memory://", &opts).is_err());
    }

    #[tokio::test]
    async fn file_urls_and_plain_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("backups");
        let url = format!("file://{}", dir.display());
        let store = open_url(&url).unwrap();
        assert!(dir.is_dir());
        let mut w = store.create("f.json").await.unwrap();
        w.write(b"{}".to_vec()).await.unwrap();
        w.commit().await.unwrap();
        assert_eq!(std::fs::read(dir.join("f.json")).unwrap(), b"{}");
        // The same directory as a plain path is a LocalStore.
        let local = open_url(dir.to_str().unwrap()).unwrap();
        assert_eq!(local.location(), dir.display().to_string());
        assert_eq!(local.read("f.json").await.unwrap(), b"{}");
        assert_eq!(local.list().await.unwrap().len(), 1);
    }
}
