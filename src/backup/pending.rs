//! The pending delta: mutation events folded since the last backup's cut.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::db::{Change, ChangeSet, Mutation, Snapshot, TableChanges};
use crate::key::Key;
use crate::record::Record;

/// Changes of one table since the cut.
#[derive(Debug, Default, Clone)]
pub(crate) struct PendingTable {
    /// The table was (re)created in this window, with this key field: any
    /// earlier incarnation is gone and `rows` describe the new one.
    created: Option<Arc<str>>,
    /// The table was dropped in this window (and not created again since).
    dropped: bool,
    /// Latest state of each changed key: `Some` upsert, `None` delete.
    rows: HashMap<Key, Option<Record>>,
}

/// Everything that changed after `base_seq`, folded to the latest state per
/// key. Exact as long as `complete` holds: every event from `base_seq + 1`
/// to `last_seq` was seen.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The cut this window starts after.
    pub(crate) base_seq: u64,
    /// Highest sequence number folded (or `base_seq`).
    pub(crate) last_seq: u64,
    /// False once an event was missed (lag, or a gap in sequence numbers).
    pub(crate) complete: bool,
    /// Number of events folded.
    pub(crate) events: u64,
    tables: BTreeMap<Arc<str>, PendingTable>,
}

impl Pending {
    pub(crate) fn new(base_seq: u64) -> Self {
        Pending {
            base_seq,
            last_seq: base_seq,
            complete: true,
            events: 0,
            tables: BTreeMap::new(),
        }
    }

    /// Whether nothing happened in the window.
    pub(crate) fn is_empty(&self) -> bool {
        self.last_seq == self.base_seq && self.tables.is_empty()
    }

    /// Marks the window as missing events.
    pub(crate) fn mark_incomplete(&mut self) {
        self.complete = false;
    }

    /// Folds one event. Events at or below `base_seq` are already covered
    /// by the backup that made the cut and are ignored.
    pub(crate) fn fold(&mut self, m: Mutation) {
        if m.seq <= self.base_seq || m.seq <= self.last_seq {
            return;
        }
        if m.seq != self.last_seq + 1 {
            // A gap: some event never reached us.
            self.complete = false;
        }
        self.last_seq = m.seq;
        self.events += 1;
        let t = self.tables.entry(m.table).or_default();
        match m.change {
            Change::Insert { key, record } | Change::Update { key, record } => {
                t.rows.insert(key, Some(record));
            }
            Change::Delete { key } => {
                t.rows.insert(key, None);
            }
            Change::TableCreated { primary_key } => {
                t.created = Some(primary_key);
                t.dropped = false;
                t.rows.clear();
            }
            Change::TableDropped => {
                t.created = None;
                t.dropped = true;
                t.rows.clear();
            }
        }
    }

    /// Folds a later window into this one, after a failed backup: the result
    /// covers both, from this window's base.
    pub(crate) fn absorb(&mut self, later: Pending) {
        self.complete &= later.complete;
        if later.last_seq > self.last_seq {
            if later.base_seq > self.last_seq {
                // Events between the two windows were never folded.
                self.complete = false;
            }
            self.last_seq = later.last_seq;
        }
        self.events += later.events;
        for (name, lt) in later.tables {
            let t = self.tables.entry(name).or_default();
            if lt.created.is_some() || lt.dropped {
                // The later window dropped or re-created the table: its state
                // replaces the earlier one (restore drops, then creates).
                *t = lt;
            } else {
                t.rows.extend(lt.rows);
            }
        }
    }

    /// The change set of this window, sorted for deterministic files.
    /// `snapshot` is the cut the window ends at: it gives each table's key
    /// field and the auto-key counters.
    pub(crate) fn to_changes(&self, snapshot: &Snapshot) -> ChangeSet {
        let mut out = ChangeSet {
            next_keys: snapshot.next_keys(),
            ..ChangeSet::default()
        };
        for (name, t) in &self.tables {
            if t.dropped || t.created.is_some() {
                out.dropped.push(Arc::clone(name));
            }
            if let Some(pk) = &t.created {
                out.created.insert(Arc::clone(name), Arc::clone(pk));
            } else if t.dropped {
                continue;
            }
            let mut rows: Vec<(&Key, &Option<Record>)> = t.rows.iter().collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut tc = TableChanges {
                name: Arc::clone(name),
                primary_key: snapshot
                    .table(name)
                    .map(|s| Arc::from(s.primary_key()))
                    .or_else(|| t.created.clone()),
                ..TableChanges::default()
            };
            for (k, r) in rows {
                match r {
                    Some(rec) => tc.upserts.push(rec.clone()),
                    None => tc.deletes.push(k.clone()),
                }
            }
            if !tc.upserts.is_empty() || !tc.deletes.is_empty() || t.created.is_some() {
                out.tables.push(tc);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PendingRecord;
    use serde_json::json;

    fn rec(id: i64, v: &str) -> Record {
        PendingRecord::new(&json!({"id": id, "v": v}), "id")
            .unwrap()
            .finish(None)
    }

    fn empty() -> Snapshot {
        crate::DictDB::new().snapshot()
    }

    fn m(seq: u64, table: &str, change: Change) -> Mutation {
        Mutation {
            seq,
            table: Arc::from(table),
            change,
        }
    }

    #[test]
    fn keeps_latest_state_per_key() {
        let mut p = Pending::new(10);
        p.fold(m(9, "t", Change::Delete { key: Key::Int(9) })); // before the cut
        p.fold(m(
            11,
            "t",
            Change::Insert {
                key: Key::Int(1),
                record: rec(1, "a"),
            },
        ));
        p.fold(m(
            12,
            "t",
            Change::Update {
                key: Key::Int(1),
                record: rec(1, "b"),
            },
        ));
        p.fold(m(
            13,
            "t",
            Change::Insert {
                key: Key::Int(2),
                record: rec(2, "c"),
            },
        ));
        p.fold(m(14, "t", Change::Delete { key: Key::Int(2) }));
        assert!(p.complete);
        let d = p.to_changes(&empty());
        assert_eq!(p.events, 4);
        let t = &d.tables()[0];
        assert_eq!(t.upserts(), &[rec(1, "b")]);
        assert_eq!(t.deletes(), &[Key::Int(2)]);
    }

    #[test]
    fn gap_marks_incomplete() {
        let mut p = Pending::new(0);
        p.fold(m(1, "t", Change::TableDropped));
        p.fold(m(3, "t", Change::TableDropped));
        assert!(!p.complete);
    }

    #[test]
    fn table_lifecycle() {
        let mut p = Pending::new(0);
        p.fold(m(
            1,
            "old",
            Change::Insert {
                key: Key::Int(1),
                record: rec(1, "x"),
            },
        ));
        p.fold(m(2, "old", Change::TableDropped));
        p.fold(m(
            3,
            "new",
            Change::TableCreated {
                primary_key: Arc::from("id"),
            },
        ));
        p.fold(m(
            4,
            "new",
            Change::Insert {
                key: Key::Int(5),
                record: rec(5, "y"),
            },
        ));
        let d = p.to_changes(&empty());
        assert_eq!(d.dropped().collect::<Vec<_>>(), ["new", "old"]);
        assert_eq!(d.created().collect::<Vec<_>>(), [("new", "id")]);
        assert_eq!(d.tables().len(), 1);
        assert_eq!(d.tables()[0].upserts(), &[rec(5, "y")]);
    }

    #[test]
    fn absorb_after_failure_covers_both_windows() {
        let mut a = Pending::new(0);
        a.fold(m(
            1,
            "t",
            Change::Insert {
                key: Key::Int(1),
                record: rec(1, "a"),
            },
        ));
        a.fold(m(
            2,
            "t",
            Change::Insert {
                key: Key::Int(2),
                record: rec(2, "a"),
            },
        ));
        let mut b = Pending::new(2);
        b.fold(m(
            3,
            "t",
            Change::Update {
                key: Key::Int(1),
                record: rec(1, "b"),
            },
        ));
        a.absorb(b);
        assert!(a.complete);
        assert_eq!((a.base_seq, a.last_seq), (0, 3));
        let d = a.to_changes(&empty());
        assert_eq!(d.tables()[0].upserts(), &[rec(1, "b"), rec(2, "a")]);
    }
}
