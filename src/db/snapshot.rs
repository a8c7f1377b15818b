//! Consistent, O(1) snapshots of the whole database.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use serde_json::Value;

use super::{ChangeSet, TableChanges};
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

    /// Each table's next auto-assigned key, as files record it.
    pub(crate) fn next_keys(&self) -> BTreeMap<Arc<str>, u64> {
        self.tables
            .iter()
            .map(|t| {
                let next = u64::try_from(t.next_id.max(0)).unwrap_or(u64::MAX);
                (Arc::clone(&t.name), next)
            })
            .collect()
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

impl Snapshot {
    /// The changes that turn this snapshot into `newer`: a [`ChangeSet`]
    /// that, applied to a database holding `self`, leaves it holding
    /// `newer`'s records.
    ///
    /// Tables only in `newer` are created, tables only here are dropped, a
    /// table whose key field changed is dropped and created again; records
    /// added or changed are upserts, records gone are deletes, in key
    /// order. The persistent maps are compared structurally: parts they
    /// share (everything untouched since one was taken from the other) are
    /// skipped, so the cost follows the changes, not the size of the tables.
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::DictDB;
    /// use serde_json::json;
    ///
    /// let db = DictDB::new();
    /// let users = db.create_table("users")?;
    /// users.insert(json!({"name": "Ada"}))?;
    /// let before = db.snapshot();
    /// users.insert(json!({"name": "Grace"}))?;
    /// users.delete(1)?;
    /// let changes = before.changes_to(&db.snapshot());
    /// assert_eq!(changes.len(), 2); // one upsert, one delete
    /// # Ok::<(), dictdb::Error>(())
    /// ```
    pub fn changes_to(&self, newer: &Snapshot) -> ChangeSet {
        self.changes_within(newer, None)
    }

    /// [`changes_to`](Self::changes_to) in at most `budget` changes (each
    /// record upserted or deleted, each table dropped or created, as a
    /// database numbers them) when the record by record difference needs
    /// more: tables are then dropped and created again with their new
    /// records, those that save most first.
    ///
    /// A replica moving to a newer chain numbers the difference so that it
    /// ends at the writer's cut, and the writer made at most `cut - seq`
    /// changes in between: when the record by record difference is larger,
    /// the writer must have dropped and re-created tables (each such table
    /// cost it at least its new records plus two), so the difference fits
    /// once the same is done here.
    pub(crate) fn changes_within(&self, newer: &Snapshot, budget: Option<u64>) -> ChangeSet {
        let mut out = self.record_changes(newer);
        let Some(budget) = budget else {
            return out;
        };
        let cost = |set: &ChangeSet| (set.dropped.len() + set.created.len() + set.len()) as u64;
        let mut total = cost(&out);
        if total <= budget {
            return out;
        }
        // (saving, table index) for tables kept whose records changed more
        // than re-creating them costs.
        let mut savings: Vec<(usize, usize)> = out
            .tables
            .iter()
            .enumerate()
            .filter(|(_, t)| !out.created.contains_key(&t.name))
            .filter_map(|(i, t)| {
                let size = newer.table(&t.name).map_or(0, TableSnapshot::len);
                (t.upserts.len() + t.deletes.len())
                    .checked_sub(size + 2)
                    .filter(|s| *s > 0)
                    .map(|s| (s, i))
            })
            .collect();
        savings.sort_unstable_by(|a, b| b.cmp(a));
        for (saving, i) in savings {
            if total <= budget {
                break;
            }
            let t = &mut out.tables[i];
            let Some(new) = newer.table(&t.name) else {
                continue;
            };
            out.dropped.push(Arc::clone(&t.name));
            out.created
                .insert(Arc::clone(&t.name), Arc::clone(&new.primary_key));
            t.deletes.clear();
            t.upserts = new.records.values().cloned().collect();
            total -= saving as u64;
        }
        out
    }

    /// The record by record difference (see [`changes_to`](Self::changes_to)).
    fn record_changes(&self, newer: &Snapshot) -> ChangeSet {
        let mut out = ChangeSet {
            next_keys: newer.next_keys(),
            ..ChangeSet::default()
        };
        for old in &self.tables {
            let same = newer
                .table(&old.name)
                .is_some_and(|n| n.primary_key == old.primary_key);
            if !same {
                out.dropped.push(Arc::clone(&old.name));
            }
        }
        for new in &newer.tables {
            let old = self
                .table(&new.name)
                .filter(|o| o.primary_key == new.primary_key);
            let mut t = TableChanges {
                name: Arc::clone(&new.name),
                primary_key: Some(Arc::clone(&new.primary_key)),
                ..TableChanges::default()
            };
            match old {
                Some(old) => {
                    for item in old.records.diff(&new.records) {
                        match item {
                            DiffItem::Add(_, rec) | DiffItem::Update { new: (_, rec), .. } => {
                                t.upserts.push(rec.clone());
                            }
                            DiffItem::Remove(key, _) => t.deletes.push(key.clone()),
                        }
                    }
                }
                None => {
                    out.created
                        .insert(Arc::clone(&new.name), Arc::clone(&new.primary_key));
                    t.upserts.extend(new.records.values().cloned());
                }
            }
            if !t.upserts.is_empty() || !t.deletes.is_empty() || out.created.contains_key(&new.name)
            {
                out.tables.push(t);
            }
        }
        out
    }
}
