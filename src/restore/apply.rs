//! Decoding the chosen files and applying them.
//!
//! The full backup is decoded (and indexed on a second thread when large)
//! while the deltas after it are read and decoded ahead, one at a time: at
//! most one decoded delta waits while another is decoded and a third is
//! applied, so memory stays within the database being built plus three
//! deltas, however long the chain.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::chain::{check_identity, Catalog, Cursor, Entry};
use super::plan::{planned, Chosen};
use super::verify::Seen;
use super::{Restore, Restored, Stopped};
use crate::db::DictDB;
use crate::error::{Error, Result};
use crate::format::{self, Body, Decoded};
use crate::store::BackupStore;

/// Files at least this large are indexed on a second thread while parsed.
const PIPELINE_BYTES: u64 = 4 << 20;

/// Why loading a chain failed.
pub(crate) enum Failed {
    /// The full backup could not be used (a lenient restore tries an older
    /// one).
    Base(Error),
    /// Anything else.
    Other(Error),
}

/// Reads and decodes a whole file on the blocking pool, streaming it.
pub(crate) async fn decode_entry(store: &Arc<dyn BackupStore>, e: &Entry) -> Result<Decoded> {
    let format = e.format()?;
    let reader = store.open(e.file_name()).await?;
    let name = e.file_name().to_string();
    let pipeline = e.file.size >= PIPELINE_BYTES;
    tokio::task::spawn_blocking(move || format::decode(reader, format, &name, pipeline))
        .await
        .map_err(|err| Error::corrupt(e.file_name(), format!("decoding task failed: {err}")))?
}

/// Decodes a file and checks everything it must be on its own: checksum,
/// document, records, its kind and name, and (without a checksum) whether
/// it may be trusted in this store. Restore, verify and inspect all judge a
/// file with this function.
pub(crate) async fn check_file(opts: &Restore, catalog: &Catalog, e: &Entry) -> Result<Decoded> {
    let d = decode_entry(&catalog.store, e).await?;
    check_identity(e, &d.header)?;
    if d.header.meta.is_none() {
        catalog.unverified_allowed(e, opts.allow_unverified).await?;
    }
    Ok(d)
}

/// Aborts the read-ahead when the restore ends early.
struct Ahead(JoinHandle<()>);

impl Drop for Ahead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn changed(e: &Entry) -> Error {
    Error::chain(
        e.file_name(),
        "the file changed while it was being restored",
    )
}

/// Sees each file once it was applied (verify reports on them).
pub(crate) type Observer<'a> = &'a mut (dyn FnMut(usize, Seen) + Send);

/// Loads the chosen chain.
pub(crate) async fn load(
    opts: &Restore,
    catalog: &Catalog,
    chosen: &Chosen,
    mut observe: Option<Observer<'_>>,
) -> std::result::Result<Restored, Failed> {
    let (tx, mut rx) = mpsc::channel::<Result<Decoded>>(1);
    let jobs: Vec<Entry> = chosen
        .deltas
        .iter()
        .map(|(i, _)| catalog.entries[*i].clone())
        .collect();
    let store = Arc::clone(&catalog.store);
    let _ahead = Ahead(tokio::spawn(async move {
        for e in jobs {
            if tx.send(decode_entry(&store, &e).await).await.is_err() {
                break;
            }
        }
    }));

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
            let Body::Delta(changes) = d.body else {
                return Err(changed(e));
            };
            let (db2, name) = (db.clone(), e.file_name().to_string());
            let n = tokio::task::spawn_blocking(move || db2.apply_named(&changes, &name))
                .await
                .map_err(|err| {
                    Error::corrupt(e.file_name(), format!("apply task failed: {err}"))
                })??;
            Ok((d.header, d.integrity, n, seen))
        }
        .await;
        match step {
            Ok((h, integrity, n, seen)) => {
                if let (Some(f), Some(seen)) = (observe.as_mut(), seen) {
                    f(*i, seen);
                }
                cursor.advance(&h, &integrity);
                applied.push(planned(e, &h));
                affected.push(n);
            }
            Err(error) if opts.lenient => {
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
