//! Change sets: what a delta holds, and the one way they reach a database.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::{validate_table_name, Change, DictDB, TableState};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::record::Record;

/// A set of changes to a database, cut between two sequence numbers: the
/// content of a delta backup.
///
/// The backup manager builds one from the mutations it folds and writes it
/// as a delta; reading a delta gives one back; [`DictDB::apply`] applies one,
/// atomically. Tables dropped come first, then tables created (empty, with
/// their key field), then each table's upserts (whole records, replacing)
/// and deletes.
#[derive(Clone, Default, PartialEq)]
pub struct ChangeSet {
    pub(crate) dropped: Vec<Arc<str>>,
    pub(crate) created: BTreeMap<Arc<str>, Arc<str>>,
    pub(crate) tables: Vec<TableChanges>,
    /// Next auto-assigned key of each table at the cut.
    pub(crate) next_keys: BTreeMap<Arc<str>, u64>,
}

/// The changes of one table in a [`ChangeSet`].
#[derive(Clone, Default, PartialEq)]
pub struct TableChanges {
    pub(crate) name: Arc<str>,
    /// The table's key field, when the writer recorded it (then checked
    /// against the table's when applied).
    pub(crate) primary_key: Option<Arc<str>>,
    pub(crate) upserts: Vec<Record>,
    pub(crate) deletes: Vec<Key>,
}

impl ChangeSet {
    /// Tables dropped (applied first).
    pub fn dropped(&self) -> impl Iterator<Item = &str> + '_ {
        self.dropped.iter().map(|t| &**t)
    }

    /// Tables created, with their key field (applied after the drops).
    pub fn created(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.created.iter().map(|(t, pk)| (&**t, &**pk))
    }

    /// The tables whose records change, by name.
    pub fn tables(&self) -> &[TableChanges] {
        &self.tables
    }

    /// Upserts plus deletes, in all tables.
    pub fn len(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.upserts.len() + t.deletes.len())
            .sum()
    }

    /// Whether nothing changes: no record, and no table created or dropped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.dropped.is_empty() && self.created.is_empty()
    }
}

impl fmt::Debug for ChangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeSet")
            .field("dropped", &self.dropped)
            .field("created", &self.created)
            .field("tables", &self.tables)
            .finish()
    }
}

impl TableChanges {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Records inserted or replaced, whole.
    pub fn upserts(&self) -> &[Record] {
        &self.upserts
    }

    /// Keys deleted (a key that is not there is no error).
    pub fn deletes(&self) -> &[Key] {
        &self.deletes
    }
}

impl fmt::Debug for TableChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableChanges")
            .field("name", &self.name)
            .field("upserts", &self.upserts.len())
            .field("deletes", &self.deletes.len())
            .finish()
    }
}

/// A record's key under `pk`, or why it has none.
pub(crate) fn record_key(rec: &Record, pk: &str, table: &str) -> std::result::Result<Key, String> {
    match rec.key(pk) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(format!(
            "a record of table `{table}` has no primary key `{pk}`"
        )),
        Err(e) => Err(format!("table `{table}`: {e}")),
    }
}

impl DictDB {
    /// Applies a change set atomically and returns the number of records
    /// affected: each upsert counts, each delete of a present key counts,
    /// deletes of absent keys are ignored.
    ///
    /// Upserts replace whole records. Tables the set drops are dropped and
    /// tables it creates are created (replacing any table of that name).
    /// Each table's next auto-assigned key moves past every key inserted and
    /// past the counter the set records, so keys are never reused. One
    /// [`crate::Mutation`] is published per change.
    ///
    /// On any error (a change to a table that neither exists nor is created,
    /// a record without a valid key, a key field that differs from the
    /// table's) nothing changes.
    pub fn apply(&self, changes: &ChangeSet) -> Result<usize> {
        self.apply_named(changes, "change set")
    }

    /// [`apply`](Self::apply), with errors naming `file`.
    pub(crate) fn apply_named(&self, changes: &ChangeSet, file: &str) -> Result<usize> {
        for name in changes.dropped.iter().chain(changes.created.keys()) {
            validate_table_name(name).map_err(|e| Error::corrupt(file, e))?;
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        st.check_writable()?;

        // Phase 1: work out every change without touching the database.
        let mut staged: BTreeMap<Arc<str>, Option<TableState>> = BTreeMap::new();
        for name in &changes.dropped {
            if st.tables.contains_key(name) {
                staged.insert(Arc::clone(name), None);
            }
        }
        for (name, pk) in &changes.created {
            staged.insert(Arc::clone(name), Some(TableState::new(0, Arc::clone(pk))));
        }
        let mut affected = 0usize;
        let mut events: Vec<(Arc<str>, Change)> = Vec::with_capacity(changes.len());
        for t in &changes.tables {
            let name = &t.name;
            let mut table = match staged.get(name) {
                Some(Some(s)) => s.clone(),
                Some(None) => {
                    return Err(Error::corrupt(
                        file,
                        format!("changes table `{name}`, which it also drops"),
                    ))
                }
                None => st.tables.get(name).cloned().ok_or_else(|| {
                    Error::corrupt(
                        file,
                        format!(
                            "changes table `{name}`, which does not exist and which it does not \
                             create (is a delta missing from the chain?)"
                        ),
                    )
                })?,
            };
            if let Some(pk) = &t.primary_key {
                if *pk != table.primary_key {
                    return Err(Error::corrupt(
                        file,
                        format!(
                            "table `{name}` has key field `{pk}` here but `{}` in the database",
                            table.primary_key
                        ),
                    ));
                }
            }
            let pk = Arc::clone(&table.primary_key);
            for rec in &t.upserts {
                let key = record_key(rec, &pk, name).map_err(|e| Error::corrupt(file, e))?;
                table.bump(&key);
                let existed = table.records.insert(key.clone(), rec.clone()).is_some();
                affected += 1;
                let change = if existed {
                    Change::Update {
                        key,
                        record: rec.clone(),
                    }
                } else {
                    Change::Insert {
                        key,
                        record: rec.clone(),
                    }
                };
                events.push((Arc::clone(name), change));
            }
            for key in &t.deletes {
                if table.records.remove(key).is_some() {
                    affected += 1;
                    events.push((Arc::clone(name), Change::Delete { key: key.clone() }));
                }
            }
            staged.insert(Arc::clone(name), Some(table));
        }
        for (name, n) in &changes.next_keys {
            let n = i128::from(*n);
            if let Some(Some(t)) = staged.get_mut(name) {
                t.next_id = t.next_id.max(n);
            } else if let Some(t) = st.tables.get(name) {
                if t.next_id < n {
                    let mut t = t.clone();
                    t.next_id = n;
                    staged.insert(Arc::clone(name), Some(t));
                }
            }
        }

        // Phase 2: apply, publishing one event per change.
        for name in &changes.dropped {
            if let Some((name, _)) = st.tables.remove_entry(name) {
                self.commit(&mut st.seq, &name, || Change::TableDropped);
            }
        }
        for (name, pk) in &changes.created {
            if let Some((name, _)) = st.tables.remove_entry(name) {
                self.commit(&mut st.seq, &name, || Change::TableDropped);
            }
            let pk = Arc::clone(pk);
            self.commit(&mut st.seq, name, || Change::TableCreated {
                primary_key: pk,
            });
        }
        for (name, table) in staged {
            if let Some(mut table) = table {
                table.incarnation = match st.tables.get(&name) {
                    Some(t) => t.incarnation,
                    None => st.new_incarnation(),
                };
                st.tables.insert(name, table);
            }
        }
        for (name, change) in events {
            self.commit(&mut st.seq, &name, || change);
        }
        Ok(affected)
    }
}
