//! Consistent, O(1) snapshots of the whole database.

use std::fmt;
use std::sync::Arc;

use imbl::OrdMap;
use serde_json::Value;

use crate::key::Key;
use crate::record::Record;

/// A consistent view of every table, cut at one sequence number.
///
/// Every change with a sequence number at or below [`Snapshot::seq`] is in
/// the snapshot and none above it. Taking one clones each table's persistent
/// map under the database lock, which costs a few nanoseconds per table
/// whatever the number of records; writers then go on while the snapshot is
/// read (a later write copies only the path it touches).
#[derive(Clone)]
pub struct Snapshot {
    pub(crate) seq: u64,
    pub(crate) tables: Vec<TableSnapshot>,
}

impl Snapshot {
    /// The sequence number of the cut.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// All tables, sorted by name.
    pub fn tables(&self) -> &[TableSnapshot] {
        &self.tables
    }

    /// One table by name.
    pub fn table(&self, name: &str) -> Option<&TableSnapshot> {
        self.tables
            .binary_search_by(|t| (*t.name).cmp(name))
            .ok()
            .map(|i| &self.tables[i])
    }

    /// Total number of records in all tables.
    pub fn record_count(&self) -> usize {
        self.tables.iter().map(TableSnapshot::len).sum()
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("seq", &self.seq)
            .field("tables", &self.tables)
            .finish()
    }
}

/// One table inside a [`Snapshot`].
#[derive(Clone)]
pub struct TableSnapshot {
    pub(crate) name: Arc<str>,
    pub(crate) primary_key: Arc<str>,
    pub(crate) schema: Option<Arc<Value>>,
    pub(crate) records: OrdMap<Key, Record>,
    pub(crate) next_id: i128,
}

impl TableSnapshot {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The primary-key field.
    pub fn primary_key(&self) -> &str {
        &self.primary_key
    }

    /// The schema read from a Python DictDB file, kept as it was (not enforced).
    pub fn schema(&self) -> Option<&Value> {
        self.schema.as_deref()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// One record by key.
    pub fn get(&self, key: &Key) -> Option<&Record> {
        self.records.get(key)
    }

    /// Records in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Key, &Record)> + '_ {
        self.records.iter()
    }

    /// The integer the next auto-assigned key would get (`None` once
    /// exhausted).
    pub fn next_auto_key(&self) -> Option<i64> {
        i64::try_from(self.next_id).ok()
    }
}

impl fmt::Debug for TableSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableSnapshot")
            .field("name", &self.name)
            .field("primary_key", &self.primary_key)
            .field("records", &self.records.len())
            .finish()
    }
}
