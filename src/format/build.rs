//! Building the neutral types from decoded records: a full backup's tables
//! indexed by key (a [`Snapshot`]), a delta's [`ChangeSet`].
//!
//! Indexing a large table (building its persistent B-tree) costs about as
//! much as parsing it, so a large full backup is indexed on a second thread
//! while the first one parses ([`Pipeline`]): on two cores the B-tree comes
//! for free.

use std::collections::BTreeMap;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use imbl::OrdMap;

use crate::db::record_key;
use crate::key::Key;
use crate::record::Record;

/// Records handed to a sink at a time.
pub(crate) const BATCH: usize = 4096;

/// One table's records indexed by key, and the next auto key they imply.
pub(crate) type Built = (OrdMap<Key, Record>, i128);

/// Indexes one table's records, in file order; duplicate keys and records
/// without a valid key are errors.
pub(crate) struct Indexer {
    table: String,
    pk: String,
    records: OrdMap<Key, Record>,
    next_id: i128,
}

impl Indexer {
    pub(crate) fn new(table: String, pk: String) -> Self {
        Indexer {
            table,
            pk,
            records: OrdMap::new(),
            next_id: 1,
        }
    }

    pub(crate) fn add(&mut self, rec: Record) -> Result<(), String> {
        let key = record_key(&rec, &self.pk, &self.table)?;
        if let Key::Int(i) = key {
            self.next_id = self.next_id.max(i128::from(i) + 1);
        }
        if self.records.insert(key.clone(), rec).is_some() {
            return Err(format!(
                "duplicate primary key {key} in table `{}`",
                self.table
            ));
        }
        Ok(())
    }

    fn finish(self) -> (String, Built) {
        (self.table, (self.records, self.next_id))
    }
}

/// Where the records of a full backup's tables go while it is decoded.
pub(crate) trait RecordSink {
    /// The records of this table (with this key field) follow.
    fn start(&mut self, table: &str, pk: &str) -> Result<(), String>;
    /// Records, in file order.
    fn batch(&mut self, records: Vec<Record>) -> Result<(), String>;
    /// Every table, indexed.
    fn finish(self: Box<Self>) -> Result<BTreeMap<String, Built>, String>;
}

/// Indexes on the decoding thread.
#[derive(Default)]
pub(crate) struct Inline {
    done: BTreeMap<String, Built>,
    current: Option<Indexer>,
}

impl Inline {
    fn close(&mut self) {
        if let Some(ix) = self.current.take() {
            let (name, built) = ix.finish();
            self.done.insert(name, built);
        }
    }
}

impl RecordSink for Inline {
    fn start(&mut self, table: &str, pk: &str) -> Result<(), String> {
        self.close();
        self.current = Some(Indexer::new(table.to_string(), pk.to_string()));
        Ok(())
    }

    fn batch(&mut self, records: Vec<Record>) -> Result<(), String> {
        let ix = self.current.as_mut().ok_or("records before their table")?;
        for rec in records {
            ix.add(rec)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<BTreeMap<String, Built>, String> {
        self.close();
        Ok(self.done)
    }
}

enum Msg {
    Start(String, String),
    Batch(Vec<Record>),
}

/// Indexes on a thread of its own, fed through a bounded channel.
pub(crate) struct Pipeline {
    tx: Option<SyncSender<Msg>>,
    worker: Option<std::thread::JoinHandle<Result<BTreeMap<String, Built>, String>>>,
}

impl Pipeline {
    pub(crate) fn start() -> std::io::Result<Pipeline> {
        let (tx, rx) = sync_channel::<Msg>(16);
        let worker = std::thread::Builder::new()
            .name("dictdb-index".into())
            .spawn(move || index(rx))?;
        Ok(Pipeline {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    fn send(&mut self, msg: Msg) -> Result<(), String> {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(msg).is_ok());
        if sent {
            Ok(())
        } else {
            // The indexer stopped on an error: that error explains more.
            self.tx = None;
            Err(self
                .join()
                .err()
                .unwrap_or_else(|| "the indexer stopped".into()))
        }
    }

    fn join(&mut self) -> Result<BTreeMap<String, Built>, String> {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w
                .join()
                .map_err(|_| "the indexing thread panicked".to_string())?,
            None => Err("the indexer stopped".into()),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Closing the channel ends the worker; its result is not wanted.
        self.tx = None;
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn index(rx: Receiver<Msg>) -> Result<BTreeMap<String, Built>, String> {
    let mut sink = Inline::default();
    for msg in rx {
        match msg {
            Msg::Start(table, pk) => sink.start(&table, &pk)?,
            Msg::Batch(batch) => sink.batch(batch)?,
        }
    }
    Box::new(sink).finish()
}

impl RecordSink for Pipeline {
    fn start(&mut self, table: &str, pk: &str) -> Result<(), String> {
        self.send(Msg::Start(table.to_string(), pk.to_string()))
    }

    fn batch(&mut self, records: Vec<Record>) -> Result<(), String> {
        self.send(Msg::Batch(records))
    }

    fn finish(mut self: Box<Self>) -> Result<BTreeMap<String, Built>, String> {
        self.join()
    }
}
