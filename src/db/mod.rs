//! The in-memory database: tables, the mutation stream, snapshots, and
//! change sets, the one way other code (restore, `apply_delta`) changes it.

mod changeset;
mod file;
mod mutation;
pub(crate) mod reclaim;
mod snapshot;
mod spare;
mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use imbl::OrdMap;
use serde_json::Value;
use tokio::sync::broadcast;

pub(crate) use changeset::record_key;
pub(crate) use changeset::Applied;
pub use changeset::{ChangeSet, PreparedChanges, TableChanges};
pub use file::{apply_delta, SaveInfo};
pub use mutation::{Change, Mutation};
pub use snapshot::{Snapshot, TableSnapshot};
pub(crate) use spare::{Behind, Spare};
pub use table::{Table, Upsert};

use crate::error::{Error, Result};
use crate::key::Key;
use crate::record::Record;

/// Default capacity of the mutation broadcast channel.
///
/// A tight write loop outruns a small channel (WORKLOAD.md measured two thirds
/// of events dropped at 1,024 slots); 65,536 slots cost about 6 MiB and give a
/// backup actor tens of milliseconds of slack at a million writes per second.
pub const DEFAULT_EVENT_CAPACITY: usize = 1 << 16;

/// An in-memory database of named tables of JSON records.
///
/// `DictDB` is a cheap handle (`Clone + Send + Sync`): clones share the same
/// tables. Every committed change gets a global sequence number and is
/// published as a [`Mutation`] on a broadcast channel ([`DictDB::subscribe`]);
/// [`DictDB::snapshot`] takes a consistent cut of all tables in O(1) per table.
///
/// A [`crate::replica::Replica`]'s database is read-only: every write path
/// (table creation and drop, every [`Table`] write, [`DictDB::apply`])
/// fails with [`Error::ReadOnly`] until the replica is promoted.
///
/// # Examples
///
/// ```
/// use dictdb::DictDB;
/// use serde_json::json;
///
/// let db = DictDB::new();
/// let users = db.create_table("users")?;
/// let id = users.insert(json!({"name": "Alice"}))?;
/// assert_eq!(users.get(id)?.unwrap()["name"], "Alice");
///
/// let events = db.create_table_with_key("events", "event_id")?;
/// events.insert(json!({"event_id": "ev-1", "type": "click"}))?;
/// assert_eq!(db.table_names(), ["events", "users"]);
/// # Ok::<(), dictdb::Error>(())
/// ```
#[derive(Clone)]
pub struct DictDB {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The mutation channel, made on the first subscription: a database
    /// nobody subscribes to (a restore being checked, a replica's copy)
    /// never pays for its slots.
    events: OnceLock<broadcast::Sender<Mutation>>,
    capacity: usize,
    /// The last committed sequence number, readable without the lock: a
    /// backup in progress watches it to tell whether writers are active.
    activity: AtomicU64,
}

/// The tables of a database, by name.
pub(crate) type TableMap = BTreeMap<Arc<str>, TableState>;

#[derive(Default)]
pub(crate) struct State {
    /// Sequence number of the last committed change.
    pub(crate) seq: u64,
    /// Every table, behind one `Arc`: a replica works out its next state
    /// on a copy of the map and swaps the whole of it in one step (see
    /// `changeset.rs`). Writers change it through [`Arc::make_mut`], which
    /// copies the map (O(tables)) only while such a copy is being made.
    pub(crate) tables: Arc<TableMap>,
    /// Incarnation counter: a table dropped and created again is a new table,
    /// and handles to the old one stop working.
    pub(crate) next_incarnation: u64,
    /// Set on a replica's database: why writes are refused. Kept under the
    /// lock, so a write checks it in the same critical section it commits
    /// in, and clearing it (promotion) cannot race a write.
    pub(crate) read_only: Option<Arc<str>>,
}

impl State {
    pub(crate) fn new_incarnation(&mut self) -> u64 {
        self.next_incarnation += 1;
        self.next_incarnation
    }

    /// Refuses a write to a read-only database.
    pub(crate) fn check_writable(&self) -> Result<()> {
        match &self.read_only {
            Some(why) => Err(Error::ReadOnly(why.to_string())),
            None => Ok(()),
        }
    }
}

#[derive(Clone)]
pub(crate) struct TableState {
    pub(crate) incarnation: u64,
    pub(crate) primary_key: Arc<str>,
    pub(crate) schema: Option<Arc<Value>>,
    pub(crate) records: OrdMap<Key, Record>,
    /// Next auto-assigned integer key; above every integer key ever stored.
    /// `i128` so that a key of `i64::MAX` leaves it at an honest "exhausted".
    pub(crate) next_id: i128,
}

impl TableState {
    pub(crate) fn new(incarnation: u64, primary_key: Arc<str>) -> Self {
        TableState {
            incarnation,
            primary_key,
            schema: None,
            records: OrdMap::new(),
            next_id: 1,
        }
    }

    /// Moves the auto-key counter past `key`.
    pub(crate) fn bump(&mut self, key: &Key) {
        if let Key::Int(i) = key {
            self.next_id = self.next_id.max(i128::from(*i) + 1);
        }
    }

    /// Takes the next auto-assigned key.
    pub(crate) fn alloc_id(&mut self, table: &str) -> Result<i64> {
        let id = i64::try_from(self.next_id).map_err(|_| Error::InvalidKey {
            field: self.primary_key.to_string(),
            reason: format!("auto-assigned keys of table `{table}` are exhausted"),
        })?;
        self.next_id += 1;
        Ok(id)
    }
}

/// Checks a table name: it ends up in documents and messages, never in a
/// path, but names that look like paths or carry control bytes are refused
/// so that no tool downstream can be tricked by one.
pub(crate) fn validate_table_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "a table name cannot be empty"
    } else if name.len() > 255 {
        "a table name is at most 255 bytes"
    } else if name == "." || name == ".." {
        "`.` and `..` are not table names"
    } else if name.contains(['/', '\\']) {
        "a table name cannot contain a path separator"
    } else if name.chars().any(char::is_control) {
        "a table name cannot contain NUL or other control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidTableName {
        name: name.to_string(),
        reason,
    })
}

impl Default for DictDB {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for DictDB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("DictDB")
            .field("seq", &st.seq)
            .field("tables", &st.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl DictDB {
    /// An empty database with the default event capacity.
    pub fn new() -> Self {
        Self::with_event_capacity(DEFAULT_EVENT_CAPACITY)
    }

    /// An empty database whose mutation channel holds `capacity` events
    /// (at least 1) before a slow subscriber lags.
    pub fn with_event_capacity(capacity: usize) -> Self {
        DictDB {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                events: OnceLock::new(),
                capacity: capacity.max(1),
                activity: AtomicU64::new(0),
            }),
        }
    }

    /// Locks the state. The lock is never held across an `.await`, and user
    /// closures (predicates) run before any change is applied, so a panic in
    /// one cannot leave a half-applied change: a poisoned lock is safe to
    /// take over.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Assigns the next sequence number to a change and publishes it.
    ///
    /// Called with the lock held, so sequence numbers and channel order match
    /// commit order. With no subscriber the event is never even built.
    pub(crate) fn commit(&self, seq: &mut u64, table: &Arc<str>, change: impl FnOnce() -> Change) {
        *seq += 1;
        self.shared.activity.store(*seq, Ordering::Relaxed);
        let events = self.shared.events.get();
        if let Some(events) = events.filter(|e| e.receiver_count() > 0) {
            let _ = events.send(Mutation {
                seq: *seq,
                table: Arc::clone(table),
                change: change(),
            });
        }
    }

    /// Whether anyone listens to the mutation stream (events are built only
    /// then).
    pub(crate) fn has_subscribers(&self) -> bool {
        self.shared
            .events
            .get()
            .is_some_and(|e| e.receiver_count() > 0)
    }

    /// Publishes a change whose sequence number was assigned under the lock
    /// (a replica's apply publishes after releasing it: see
    /// `changeset.rs`).
    pub(crate) fn publish(&self, seq: u64, table: Arc<str>, change: Change) {
        if let Some(events) = self.shared.events.get() {
            let _ = events.send(Mutation { seq, table, change });
        }
    }

    /// Whether writes are refused (a [`crate::replica::Replica`]'s
    /// database, until it is promoted).
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(!dictdb::DictDB::new().is_read_only());
    /// ```
    pub fn is_read_only(&self) -> bool {
        self.lock().read_only.is_some()
    }

    /// Makes the database read-only (`Some(why)`: every write path then
    /// fails with [`Error::ReadOnly`] carrying `why`) or writable again.
    pub(crate) fn set_read_only(&self, why: Option<&str>) {
        self.lock().read_only = why.map(Arc::from);
    }

    /// Creates an empty table whose primary key is the field `"id"`.
    pub fn create_table(&self, name: &str) -> Result<Table> {
        self.create_table_with_key(name, "id")
    }

    /// Creates an empty table with `primary_key` as its key field.
    pub fn create_table_with_key(&self, name: &str, primary_key: &str) -> Result<Table> {
        validate_table_name(name)?;
        let mut st = self.lock();
        let st = &mut *st;
        st.check_writable()?;
        if st.tables.contains_key(name) {
            return Err(Error::TableExists(name.to_string()));
        }
        let incarnation = st.new_incarnation();
        let name: Arc<str> = Arc::from(name);
        let pk: Arc<str> = Arc::from(primary_key);
        Arc::make_mut(&mut st.tables).insert(
            Arc::clone(&name),
            TableState::new(incarnation, Arc::clone(&pk)),
        );
        let pk2 = Arc::clone(&pk);
        self.commit(&mut st.seq, &name, || Change::TableCreated {
            primary_key: pk2,
        });
        Ok(Table::new(self.clone(), name, pk, incarnation))
    }

    /// Drops a table and all its records.
    pub fn drop_table(&self, name: &str) -> Result<()> {
        let mut st = self.lock();
        let st = &mut *st;
        st.check_writable()?;
        let Some((name, _)) = Arc::make_mut(&mut st.tables).remove_entry(name) else {
            return Err(Error::TableNotFound(name.to_string()));
        };
        self.commit(&mut st.seq, &name, || Change::TableDropped);
        Ok(())
    }

    /// A handle to an existing table.
    pub fn table(&self, name: &str) -> Result<Table> {
        let st = self.lock();
        let (name, t) = st
            .tables
            .get_key_value(name)
            .ok_or_else(|| Error::TableNotFound(name.to_string()))?;
        Ok(Table::new(
            self.clone(),
            Arc::clone(name),
            Arc::clone(&t.primary_key),
            t.incarnation,
        ))
    }

    /// Names of all tables, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.lock().tables.keys().map(|k| k.to_string()).collect()
    }

    /// Whether a table exists.
    pub fn has_table(&self, name: &str) -> bool {
        self.lock().tables.contains_key(name)
    }

    /// Subscribes to the mutation stream: every change committed after this
    /// call, in sequence order. A subscriber that falls more than the channel
    /// capacity behind gets `RecvError::Lagged` and must resynchronise (for
    /// instance from a [`snapshot`](Self::snapshot)).
    pub fn subscribe(&self) -> broadcast::Receiver<Mutation> {
        self.shared
            .events
            .get_or_init(|| broadcast::channel(self.shared.capacity).0)
            .subscribe()
    }

    /// A counter that moves whenever a change commits, read without the lock.
    pub(crate) fn activity(&self) -> u64 {
        self.shared.activity.load(Ordering::Relaxed)
    }

    /// Sequence number of the last committed change.
    pub fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// A consistent snapshot of all tables (O(1) per table, see [`Snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        let st = self.lock();
        Snapshot {
            seq: st.seq,
            tables: st
                .tables
                .iter()
                .map(|(name, t)| TableSnapshot {
                    name: Arc::clone(name),
                    primary_key: Arc::clone(&t.primary_key),
                    schema: t.schema.clone(),
                    records: t.records.clone(),
                    next_id: t.next_id,
                })
                .collect(),
        }
    }

    /// Moves the sequence number to the cut a restore reached.
    pub(crate) fn set_seq(&self, seq: u64) {
        let mut st = self.lock();
        st.seq = seq;
        self.shared.activity.store(seq, Ordering::Relaxed);
    }

    /// Builds a database from loaded tables (no events: nobody can have
    /// subscribed yet). `seq` continues the sequence of the file's writer.
    pub(crate) fn from_snapshot(snapshot: Snapshot) -> DictDB {
        let db = DictDB::new();
        {
            let mut st = db.lock();
            st.seq = snapshot.seq;
            for t in snapshot.tables {
                let mut ts = TableState::new(st.new_incarnation(), t.primary_key);
                ts.schema = t.schema;
                ts.records = t.records;
                ts.next_id = t.next_id;
                Arc::make_mut(&mut st.tables).insert(t.name, ts);
            }
        }
        db
    }
}
