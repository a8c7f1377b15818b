//! Decoding the chosen files and applying them.
//!
//! The full backup is decoded (and indexed on a second thread when large)
//! while the deltas after it are read and decoded ahead, one at a time: at
//! most one decoded delta waits while another is decoded and a third is
//! applied, so memory stays within the database being built plus three
//! deltas, however long the chain. A large delta (over [`AHEAD_BYTES`]) is
//! not decoded ahead at all: it waits until every delta before it was
//! applied, so memory holds at most one large delta at a time.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::chain::{check_identity, Catalog, Cursor, Entry};
use super::plan::{planned, Chosen};
use super::verify::Seen;
use super::{Restore, Restored, Stopped};
use crate::db::{ChangeSet, DictDB};
use crate::error::{Error, Result};
use crate::format::{self, transform, Body, Decoded, DeltaFeed, Keys};
use crate::store::{BackupStore, FileReader};

/// Files at least this large are indexed on a second thread while parsed.
const PIPELINE_BYTES: u64 = 4 << 20;

/// Deltas larger than this (compressed ones counted at 16 times their
/// size) are decoded only once every delta before them was applied.
const AHEAD_BYTES: u64 = 64 << 20;

/// Why loading a chain failed.
pub(crate) enum Failed {
    /// The full backup could not be used (a lenient restore tries an older
    /// one).
    Base(Error),
    /// Anything else.
    Other(Error),
}

/// Whether a file is large enough to index on a second thread (a
/// compressed file holds many times its size).
fn pipeline(e: &Entry) -> bool {
    let scale = if e.name.compressed { 16 } else { 1 };
    e.file.size.saturating_mul(scale) >= PIPELINE_BYTES
}

/// Decodes an opened file: decrypts and decompresses it as its name says,
/// streaming, and decodes the plaintext. Runs on a blocking thread.
fn decode_opened(
    e: &Entry,
    reader: FileReader,
    keys: &Keys,
    mut feed: Option<Feed>,
) -> Result<Decoded> {
    let format = e.format()?;
    let plain = transform::open(reader, e.layers(), keys, e.file_name())?;
    let feed = feed.as_deref_mut().map(|f| f as &mut dyn DeltaFeed);
    format::decode_fed(plain, format, e.file_name(), pipeline(e), feed)
}

/// Where a delta's upserts go while it is decoded (see [`DeltaFeed`]).
pub(crate) type Feed = Box<dyn DeltaFeed + Send>;

/// Reads and decodes a whole file on the blocking pool, streaming it,
/// handing a delta's upserts to `feed` as they are read (the feed is
/// dropped when the decoding ends, however it ends).
async fn decode_entry(catalog: &Catalog, e: &Entry, feed: Option<Feed>) -> Result<Decoded> {
    e.format()?;
    let reader = e.open(&*catalog.store).await?;
    let entry = e.clone();
    let keys = catalog.keys.clone();
    tokio::task::spawn_blocking(move || decode_opened(&entry, reader, &keys, feed))
        .await
        .map_err(|err| Error::corrupt(e.file_name(), format!("decoding task failed: {err}")))?
}

/// Decodes a file and checks everything it must be on its own: checksum,
/// document, records, its kind and name, and (without a checksum) whether
/// it may be trusted in this store. Restore, verify and inspect all judge a
/// file with this function.
pub(crate) async fn check_file(opts: &Restore, catalog: &Catalog, e: &Entry) -> Result<Decoded> {
    check_file_fed(opts, catalog, e, None).await
}

/// [`check_file`], handing a delta's upserts to `feed` while it is decoded
/// (before any check has passed: the receiver throws its work away unless
/// this returns the file).
pub(crate) async fn check_file_fed(
    opts: &Restore,
    catalog: &Catalog,
    e: &Entry,
    feed: Option<Feed>,
) -> Result<Decoded> {
    let d = decode_entry(catalog, e, feed).await?;
    check_identity(e, &d.header)?;
    if d.header.meta.is_none() {
        catalog.unverified_allowed(e, opts.allow_unverified).await?;
    }
    Ok(d)
}

/// A delta of the Python original that changes a table the database does
/// not hold (created after the original's last full backup: its deltas do
/// not record created tables nor key fields) creates it, with the key field
/// the caller gave ([`Restore::key_field`]); without one it is refused, as
/// the apply would refuse it, but saying what is missing.
pub(crate) fn create_python_tables(
    opts: &Restore,
    db: &DictDB,
    changes: &mut ChangeSet,
    file: &str,
) -> Result<()> {
    for t in &changes.tables {
        let name: &str = &t.name;
        if db.has_table(name) || changes.created.contains_key(name) {
            continue;
        }
        let Some(field) = opts.key_fields.get(name) else {
            return Err(Error::corrupt(
                file,
                format!(
                    "changes table `{name}`, which the restored database does not hold: the \
                     Python original writes a table created after its last full backup only \
                     into its deltas, without its key field; give it with {}",
                    key_field_hint(name)
                ),
            ));
        };
        changes
            .created
            .insert(Arc::clone(&t.name), Arc::from(field.as_str()));
    }
    Ok(())
}

/// How to give the key field of `table`: the command-line flag as it can
/// be typed in a shell (quoted when the name needs it), or only the
/// library call when the flag cannot name it (it splits at the first `=`).
fn key_field_hint(table: &str) -> String {
    let call = format!(
        "`Restore::key_field({table:?}, FIELD)`, or `BackupConfig::restore_key_field` for a \
         restore on start, `ReplicaOptions::key_field` for a replica"
    );
    if table.contains('=') {
        return format!("{call} (`--key-field` cannot name a table with `=`)");
    }
    let arg = format!("{table}=FIELD");
    let plain = arg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-.=/:@%+,".contains(&b));
    let arg = if plain {
        arg
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    };
    format!("`--key-field {arg}` ({call})")
}

/// Aborts the read-ahead when the restore ends early (the decoding thread
/// then finds its channels closed and ends).
struct Ahead(JoinHandle<()>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Applies change sets to the database on one thread of its own, off the
/// async workers (a large delta takes a while) and always the same thread,
/// so the memory one delta frees is reused by the next.
struct Applier {
    db: DictDB,
    tx: Option<std::sync::mpsc::Sender<ApplyJob>>,
}

/// A change set to apply, the file it came from, and where the answer goes.
type ApplyJob = (ChangeSet, String, oneshot::Sender<Result<usize>>);

impl Applier {
    fn new(db: DictDB) -> Applier {
        Applier { db, tx: None }
    }

    async fn apply(&mut self, changes: ChangeSet, file: &str) -> Result<usize> {
        if self.tx.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<ApplyJob>();
            let db = self.db.clone();
            std::thread::Builder::new()
                .name("dictdb-apply".into())
                .spawn(move || {
                    for (changes, name, reply) in rx {
                        // The restore's own database: nobody reads it yet.
                        let _ = reply.send(db.apply_in_place(&changes, &name));
                    }
                })
                .map_err(|e| Error::io(file, e))?;
            self.tx = Some(tx);
        }
        let (reply, answer) = oneshot::channel();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((changes, file.to_string(), reply)).is_ok());
        let stopped = || Error::corrupt(file, "the apply thread stopped");
        if !sent {
            return Err(stopped());
        }
        answer.await.map_err(|_| stopped())?
    }
}

/// Reads and decodes `jobs` in order, one at a time, ahead of the caller: a
/// task opens each file, one thread decodes them all (one thread, so the
/// memory of one decoded delta is reused for the next instead of spreading
/// over the allocator's per-thread arenas), and at most one decoded delta
/// waits for the caller.
fn read_ahead(
    store: Arc<dyn BackupStore>,
    keys: Keys,
    jobs: Vec<Entry>,
    ahead_bytes: u64,
) -> (
    mpsc::Receiver<Result<Decoded>>,
    std::sync::mpsc::Sender<()>,
    Option<Ahead>,
) {
    let (done_tx, done_rx) = mpsc::channel::<Result<Decoded>>(1);
    // One message per delta applied: a large delta waits for them.
    let (applied_tx, applied_rx) = std::sync::mpsc::channel::<()>();
    if jobs.is_empty() {
        return (done_rx, applied_tx, None);
    }
    let (job_tx, mut job_rx) = mpsc::channel::<(Entry, Result<FileReader>)>(1);
    let decoder = done_tx.clone();
    let spawned = std::thread::Builder::new()
        .name("dictdb-read-ahead".into())
        .spawn(move || {
            // Decoded, not yet applied.
            let mut outstanding = 0usize;
            while let Some((e, reader)) = job_rx.blocking_recv() {
                let scale = if e.name.compressed { 16 } else { 1 };
                if e.file.size.saturating_mul(scale) > ahead_bytes {
                    while outstanding > 0 {
                        if applied_rx.recv().is_err() {
                            return;
                        }
                        outstanding -= 1;
                    }
                }
                let decoded = reader.and_then(|r| decode_opened(&e, r, &keys, None));
                if decoder.blocking_send(decoded).is_err() {
                    break;
                }
                outstanding += 1;
                while applied_rx.try_recv().is_ok() {
                    outstanding = outstanding.saturating_sub(1);
                }
            }
        });
    if let Err(err) = spawned {
        let _ = done_tx.try_send(Err(Error::Store {
            path: store.location(),
            message: format!("cannot start the read-ahead thread: {err}"),
        }));
        return (done_rx, applied_tx, None);
    }
    drop(done_tx);
    let opener = tokio::spawn(async move {
        for e in jobs {
            let reader = e.open(&*store).await;
            if job_tx.send((e, reader)).await.is_err() {
                break;
            }
        }
    });
    (done_rx, applied_tx, Some(Ahead(opener)))
}

fn changed(e: &Entry) -> Error {
    Error::chain(
        e.file_name(),
        "the file changed while it was being restored",
    )
}

/// Sees each file once it was applied (verify reports on them).
pub(crate) type Observer<'a> = &'a mut (dyn FnMut(usize, Seen) + Send + Sync);

/// Loads the chosen chain.
pub(crate) async fn load(
    opts: &Restore,
    catalog: &Catalog,
    chosen: &Chosen,
    mut observe: Option<Observer<'_>>,
) -> std::result::Result<Restored, Failed> {
    let jobs: Vec<Entry> = chosen
        .deltas
        .iter()
        .map(|(i, _)| catalog.entries[*i].clone())
        .collect();
    let (mut rx, applied_tx, _ahead) = read_ahead(
        Arc::clone(&catalog.store),
        catalog.keys.clone(),
        jobs,
        AHEAD_BYTES,
    );

    let base = &catalog.entries[chosen.base];
    let d = check_file(opts, catalog, base)
        .await
        .map_err(Failed::Base)?;
    if d.header != chosen.base_header {
        return Err(Failed::Base(changed(base)));
    }
    if let Some(f) = observe.as_mut() {
        f(chosen.base, Seen::of(&d));
    }
    let Body::Full(snapshot) = d.body else {
        return Err(Failed::Base(changed(base)));
    };
    let db = DictDB::from_snapshot(snapshot);
    let mut applier = Applier::new(db.clone());
    let mut cursor = Cursor::start(base, &d.header);
    cursor.verified = d.integrity.is_verified();
    let mut applied = vec![planned(base, &d.header)];
    let mut affected = Vec::new();
    let mut stopped = chosen.stopped.clone();
    for (i, header) in &chosen.deltas {
        let e = &catalog.entries[*i];
        let step = async {
            let d = rx
                .recv()
                .await
                .ok_or_else(|| Error::chain(e.file_name(), "read-ahead stopped"))??;
            // The headers were checked while planning; the decoded file must
            // be the same file, and its link is checked again on what was
            // actually read.
            if d.header != *header {
                return Err(changed(e));
            }
            check_identity(e, &d.header)?;
            cursor.check_link(e, &d.header)?;
            let seen = observe.is_some().then(|| Seen::of(&d));
            let python = d.header.meta.is_none();
            let Body::Delta(mut changes) = d.body else {
                return Err(changed(e));
            };
            if python {
                create_python_tables(opts, &db, &mut changes, e.file_name())?;
            }
            let n = applier.apply(changes, e.file_name()).await;
            let _ = applied_tx.send(());
            Ok((d.header, d.integrity, n?, seen))
        }
        .await;
        match step {
            Ok((h, integrity, n, seen)) => {
                if let (Some(f), Some(seen)) = (observe.as_mut(), seen) {
                    f(*i, seen);
                }
                cursor.advance(e, &h, &integrity);
                applied.push(planned(e, &h));
                affected.push(n);
            }
            Err(error) if opts.lenient && !error.is_store_failure() => {
                stopped = Some(Stopped {
                    file: e.file_name().to_string(),
                    error,
                });
                break;
            }
            Err(error) => return Err(Failed::Other(error)),
        }
    }
    if let Some(seq) = cursor.seq {
        db.set_seq(seq);
    }
    Ok(Restored {
        db,
        applied,
        affected,
        seq: cursor.seq,
        verified: cursor.verified,
        skipped: Vec::new(),
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_field_hint_can_be_typed() {
        assert!(key_field_hint("events")
            .starts_with(r#"`--key-field events=FIELD` (`Restore::key_field("events", FIELD)`"#));
        assert!(key_field_hint("my events").starts_with("`--key-field 'my events=FIELD'`"));
        assert!(key_field_hint("it's").starts_with(r"`--key-field 'it'\''s=FIELD'`"));
        let eq = key_field_hint("a=b");
        assert!(
            !eq.contains("--key-field a") && eq.contains(r#"key_field("a=b""#),
            "{eq}"
        );
    }
    use crate::naming::BackupKind;
    use crate::store::LocalStore;
    use crate::{BackupConfig, BackupManager};
    use std::time::Duration;

    /// Three deltas, read ahead with `ahead_bytes`: whether the second
    /// arrives before the first was applied.
    async fn second_arrives_early(ahead_bytes: u64) -> bool {
        let tmp = tempfile::tempdir().unwrap();
        let db = DictDB::new();
        let t = db.create_table("t").unwrap();
        let m = BackupManager::start(&db, BackupConfig::new(tmp.path()).incremental(true))
            .await
            .unwrap();
        t.insert(serde_json::json!({"x": 0})).unwrap();
        m.backup_full().await.unwrap();
        for i in 1..=3 {
            t.insert(serde_json::json!({"x": i})).unwrap();
            m.backup_delta().await.unwrap();
        }
        m.stop().await.unwrap();
        let store: Arc<dyn BackupStore> = Arc::new(LocalStore::existing(tmp.path()).unwrap());
        let catalog = Catalog::load(Arc::clone(&store), Keys::default())
            .await
            .unwrap();
        let deltas: Vec<Entry> = catalog
            .entries
            .iter()
            .filter(|e| e.kind() == BackupKind::Delta)
            .cloned()
            .collect();
        assert_eq!(deltas.len(), 3);
        let (mut rx, applied, _ahead) = read_ahead(store, Keys::default(), deltas, ahead_bytes);
        assert!(rx.recv().await.unwrap().is_ok());
        let early = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .is_ok();
        applied.send(()).unwrap();
        if !early {
            let second = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await;
            assert!(second.unwrap().unwrap().is_ok());
        }
        early
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_delta_is_decoded_only_after_the_ones_before_it_were_applied() {
        // Small deltas are decoded ahead.
        assert!(second_arrives_early(u64::MAX).await);
        // Deltas over the limit wait for the ones before them.
        assert!(!second_arrives_early(0).await);
    }
}
