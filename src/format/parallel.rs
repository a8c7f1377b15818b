//! A table's records written on two cores: segments of records are written
//! by this thread and a helper, and handed on in order.
//!
//! Transcoding records to JSON text is most of a JSON full backup's time. A
//! table is cut into segments of [`SEGMENT`] records; this thread and one
//! helper take segments in turn and this thread hands them on in order. At
//! most [`AHEAD`] finished segments wait, so memory stays at a few
//! megabytes whatever the table's size. The helper only takes a segment
//! while `idle()` says the machine's other core is free for it (the backup
//! manager: no writer has committed since the backup started); otherwise it
//! stops and this thread goes on alone, at the pace the caller sets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, TryRecvError};

use super::checksum::ChunkWriter;
use super::syntax::DocWriter;
use crate::db::TableSnapshot;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::record::prefetched;

/// Records per segment: about 2 MB of JSON for the standard workload.
pub(crate) const SEGMENT: usize = 16 * 1024;

/// Finished segments waiting to be handed on, at most.
const AHEAD: usize = 4;

/// Tables smaller than this are written on one thread.
const MIN_RECORDS: usize = 4 * SEGMENT;

/// Whether another core may be used now.
pub(crate) type Idle<'a> = &'a (dyn Fn() -> bool + Sync);

/// Writes the records of `t` as the elements of the array just begun,
/// through `out`. Falls back to one thread for small tables, for formats
/// where it does not pay, or when no other core may be used.
pub(crate) fn write_records<W, F>(
    w: &mut W,
    out: &mut ChunkWriter<F>,
    t: &TableSnapshot,
    idle: Option<Idle<'_>>,
) -> Result<()>
where
    W: DocWriter + Sync,
    F: FnMut(Vec<u8>) -> Result<()>,
{
    let parallel = idle.filter(|idle| w.parallel_pays() && t.len() >= MIN_RECORDS && idle());
    let Some(idle) = parallel else {
        // Prefetched: MessagePack, a copy per record, otherwise waits on
        // memory for each (JSON segments, on two cores, measured no gain).
        for rec in prefetched(t.records.iter().map(|(_, r)| r)) {
            w.record(rec);
            out.maybe_flush(w.buf())?;
        }
        return Ok(());
    };
    // What is buffered goes first; segments are handed on as they are.
    out.flush(w.buf())?;
    // Segment starts: one pass over the keys, a small fraction of writing.
    let starts: Vec<Key> = t.records.keys().step_by(SEGMENT).cloned().collect();
    let count = starts.len();
    let writer: &W = w;
    let segment = |k: usize| {
        let mut records = match starts.get(k + 1) {
            Some(end) => Box::new(t.records.range::<_, Key>(&starts[k]..end).map(|(_, r)| r))
                as Box<dyn Iterator<Item = _>>,
            None => Box::new(t.records.range::<_, Key>(&starts[k]..).map(|(_, r)| r)),
        };
        writer.segment(&mut records, SEGMENT, k == 0)
    };
    let next = AtomicUsize::new(0);
    let result = std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = sync_channel::<(usize, Vec<u8>)>(AHEAD);
        let (next_ref, segment_ref) = (&next, &segment);
        let helper = std::thread::Builder::new()
            .name("dictdb-backup-2".into())
            .spawn_scoped(scope, move || {
                while idle() {
                    let k = next_ref.fetch_add(1, Ordering::Relaxed);
                    if k >= count || tx.send((k, segment_ref(k))).is_err() {
                        break;
                    }
                }
            });
        if helper.is_err() {
            // No second thread: this one takes every segment.
            drop(rx);
            for k in next.fetch_add(count, Ordering::Relaxed)..count {
                out.emit(segment(k))?;
            }
            return Ok(());
        }
        let mut done: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        let mut expected = 0;
        while expected < count {
            if let Some(bytes) = done.remove(&expected) {
                out.emit(bytes)?;
                expected += 1;
                continue;
            }
            match rx.try_recv() {
                Ok((k, bytes)) => {
                    done.insert(k, bytes);
                    continue;
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {}
            }
            // Take a segment while few are waiting; else wait for the
            // helper's.
            if done.len() < AHEAD {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k < count {
                    done.insert(k, segment(k));
                    continue;
                }
            }
            match rx.recv() {
                Ok((k, bytes)) => {
                    done.insert(k, bytes);
                }
                Err(_) => {
                    return Err(Error::Store {
                        path: "backup".into(),
                        message: format!("segment {expected} of a table was never written"),
                    })
                }
            }
        }
        Ok(())
    });
    w.elements_written();
    result
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::format::{encode, Doc, FileFormat};
    use crate::DictDB;

    fn bytes(db: &DictDB, idle: Option<&(dyn Fn() -> bool + Sync)>) -> Vec<u8> {
        let snapshot = db.snapshot();
        let mut out = Vec::new();
        let mut emit = |c: Vec<u8>| {
            out.extend_from_slice(&c);
            Ok(())
        };
        let doc = Doc::Full {
            snapshot: &snapshot,
            name: Some("x.json"),
            token: None,
        };
        encode(FileFormat::Json, &doc, &mut emit, idle).unwrap();
        out
    }

    #[test]
    fn two_cores_write_the_same_bytes_as_one() {
        let db = DictDB::new();
        let t = db.create_table("t").unwrap();
        t.insert_many((0..super::MIN_RECORDS as i64 + 17).map(|i| json!({"v": i, "s": "é\n"})))
            .unwrap();
        let small = db.create_table("small").unwrap();
        small.insert(json!({"a": 1})).unwrap();
        let one = bytes(&db, None);
        // Always idle: the helper takes every other segment.
        assert_eq!(bytes(&db, Some(&|| true)), one);
        // The other core becomes busy half-way: this thread finishes alone.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let busy_later = || calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 3;
        assert_eq!(bytes(&db, Some(&busy_later)), one);
        // Never idle: one thread.
        assert_eq!(bytes(&db, Some(&|| false)), one);
    }
}
