//! Change sets: what a delta holds, and the one way they reach a database.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{reclaim, validate_table_name, Change, DictDB, State, TableMap, TableState};
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

/// Who applies a change set, which decides what may be written and how the
/// sequence number moves.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Writer {
    /// A caller of [`DictDB::apply`] (restore, `apply_delta`): refused on a
    /// read-only database; one sequence number per change.
    User,
    /// A replica applying one backup file to its read-only database (the
    /// only writer there). Its changes end at the file's cut: the database's
    /// sequence number becomes `cut` (when the file records one), as a
    /// restore's does.
    Replica {
        /// The writer's sequence number at the file's cut.
        cut: Option<u64>,
    },
}

/// Applies of one change set that found the database changed under them
/// before the last round stages under the lock (which always succeeds).
const OPTIMISTIC_ROUNDS: usize = 4;

/// A change set staged against a database by [`DictDB::prepare`]: every
/// change worked out on O(1) copies of the tables it touches, without the
/// database lock. [`commit`](Self::commit) then takes the lock for O(tables)
/// — a check that nothing moved and a swap of table roots — so readers and
/// writers wait for about a pointer swap, whatever the number of changes.
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
/// let changes = before.changes_to(&db.snapshot());
///
/// let replica = DictDB::new();
/// replica.create_table("users")?.insert(json!({"name": "Ada"}))?;
/// let prepared = replica.prepare(&changes)?;   // the work, off the lock
/// assert_eq!(prepared.affected(), 1);
/// assert_eq!(prepared.commit()?, 1);           // the swap
/// assert_eq!(replica.table("users")?.len()?, 2);
/// # Ok::<(), dictdb::Error>(())
/// ```
#[must_use = "nothing changes until the prepared changes are committed"]
pub struct PreparedChanges {
    db: DictDB,
    writer: Writer,
    seen: Seen,
    staged: Staged,
}

impl fmt::Debug for PreparedChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedChanges")
            .field("seq", &self.seen.seq)
            .field("tables", &self.staged.tables.keys().collect::<Vec<_>>())
            .field("affected", &self.staged.affected)
            .finish()
    }
}

/// The tables a change set touches, as they stood when it was staged.
struct Seen {
    seq: u64,
    /// Every touched table that existed: an O(1) copy (persistent maps).
    tables: BTreeMap<Arc<str>, TableState>,
    /// Every touched name, existing or not.
    names: Vec<Arc<str>>,
}

impl Seen {
    /// Takes O(1) copies of the tables `changes` touches (under the lock).
    fn take(st: &State, changes: &ChangeSet) -> Seen {
        let mut names: Vec<Arc<str>> = changes
            .dropped
            .iter()
            .chain(changes.created.keys())
            .chain(changes.tables.iter().map(|t| &t.name))
            .chain(changes.next_keys.keys())
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        let tables = names
            .iter()
            .filter_map(|n| st.tables.get(n).map(|t| (Arc::clone(n), t.clone())))
            .collect();
        Seen {
            seq: st.seq,
            tables,
            names,
        }
    }

    /// Whether `st` still holds exactly what was seen: the same sequence
    /// number, and each touched table the same incarnation with the same
    /// records (a pointer comparison), key field and key counter. O(tables).
    fn still(&self, st: &State) -> bool {
        st.seq == self.seq
            && self
                .names
                .iter()
                .all(|n| match (self.tables.get(n), st.tables.get(n)) {
                    (None, None) => true,
                    (Some(a), Some(b)) => {
                        a.incarnation == b.incarnation
                            && a.records.ptr_eq(&b.records)
                            && a.next_id == b.next_id
                            && Arc::ptr_eq(&a.primary_key, &b.primary_key)
                    }
                    _ => false,
                })
    }
}

/// Checks the names of the tables a set drops and creates.
pub(super) fn validate_names(changes: &ChangeSet, file: &str) -> Result<()> {
    for name in changes.dropped.iter().chain(changes.created.keys()) {
        validate_table_name(name).map_err(|e| Error::corrupt(file, e))?;
    }
    Ok(())
}

/// Every change of a set, worked out on copies of the tables.
pub(super) struct Staged {
    /// Whether `events` holds the record changes (else nobody subscribed).
    pub(super) with_events: bool,
    /// Tables the set drops (removed first, when they exist).
    pub(super) dropped: Vec<Arc<str>>,
    /// Tables the set creates, with their key field (replacing any table of
    /// that name).
    pub(super) created: Vec<(Arc<str>, Arc<str>)>,
    /// The final state of each table the set writes (created or changed);
    /// dropped tables are removed by name at commit.
    pub(super) tables: BTreeMap<Arc<str>, TableState>,
    /// One event per record change, in order.
    pub(super) events: Vec<(Arc<str>, Change)>,
    pub(super) affected: usize,
}

/// Checks that `changes` can be applied to `base`: every table it changes
/// exists there or is created by it (and is not dropped by it), its key
/// field matches, and every upsert has a valid key. Returns those keys,
/// table by table, so [`stage`] reads each record's key once.
///
/// Everything that can make a change set fail is checked here, before
/// anything is changed: [`stage`] cannot fail after this, so it can change
/// a map in place.
fn check_applicable(changes: &ChangeSet, file: &str, base: &TableMap) -> Result<Vec<Vec<Key>>> {
    let mut keys = Vec::with_capacity(changes.tables.len());
    for t in &changes.tables {
        let name = &t.name;
        let pk = if let Some(pk) = changes.created.get(name) {
            pk
        } else if changes.dropped.contains(name) && base.contains_key(name) {
            return Err(Error::corrupt(
                file,
                format!("changes table `{name}`, which it also drops"),
            ));
        } else {
            &base
                .get(name)
                .ok_or_else(|| {
                    Error::corrupt(
                        file,
                        format!(
                            "changes table `{name}`, which does not exist and which it does \
                             not create (is a delta missing from the chain?)"
                        ),
                    )
                })?
                .primary_key
        };
        if let Some(given) = &t.primary_key {
            if given != pk {
                return Err(Error::corrupt(
                    file,
                    format!(
                        "table `{name}` has key field `{given}` here but `{pk}` in the database"
                    ),
                ));
            }
        }
        keys.push(
            t.upserts
                .iter()
                .map(|rec| record_key(rec, pk, name).map_err(|e| Error::corrupt(file, e)))
                .collect::<Result<Vec<Key>>>()?,
        );
    }
    Ok(keys)
}

/// Works out every change of `changes` against `base` (at least the
/// touched tables as they stand), without touching the database. `file`
/// names errors.
///
/// The set is checked first ([`check_applicable`]); on an error `base` is
/// left as it was. Then each table the set changes is taken out of `base`
/// and changed where it stands: in place when nobody else holds its nodes
/// (a replica's spare copy, a restore's own database), else copying the
/// paths the changes take (a map shared with the database).
///
/// `with_events`: build the record change events (skipped while nobody
/// subscribes: a commit that then finds a subscriber stages again).
pub(super) fn stage(
    changes: &ChangeSet,
    file: &str,
    base: &mut TableMap,
    with_events: bool,
) -> Result<Staged> {
    let keys = check_applicable(changes, file, base)?;
    // `None`: dropped by the set (and not created again).
    let mut staged: BTreeMap<Arc<str>, Option<TableState>> = BTreeMap::new();
    for name in &changes.dropped {
        if base.contains_key(name) {
            staged.insert(Arc::clone(name), None);
        }
    }
    for (name, pk) in &changes.created {
        staged.insert(Arc::clone(name), Some(TableState::new(0, Arc::clone(pk))));
    }
    let mut affected = 0usize;
    let mut events: Vec<(Arc<str>, Change)> =
        Vec::with_capacity(if with_events { changes.len() } else { 0 });
    for (t, keys) in changes.tables.iter().zip(keys) {
        let name = &t.name;
        // Checked: created by the set (or changed earlier in it), else in
        // `base` and not dropped, so the error below cannot happen.
        let mut table = match staged.get(name) {
            Some(Some(s)) => s.clone(),
            _ => base.remove(name).ok_or_else(|| {
                Error::corrupt(file, format!("changes table `{name}`, which is not there"))
            })?,
        };
        for (rec, key) in t.upserts.iter().zip(keys) {
            table.bump(&key);
            let existed = table.records.insert(key.clone(), rec.clone()).is_some();
            affected += 1;
            if !with_events {
                continue;
            }
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
                if with_events {
                    events.push((Arc::clone(name), Change::Delete { key: key.clone() }));
                }
            }
        }
        staged.insert(Arc::clone(name), Some(table));
    }
    for (name, n) in &changes.next_keys {
        let n = i128::from(*n);
        if let Some(Some(t)) = staged.get_mut(name) {
            t.next_id = t.next_id.max(n);
        } else if !staged.contains_key(name) && base.get(name).is_some_and(|t| t.next_id < n) {
            if let Some(mut t) = base.remove(name) {
                t.next_id = n;
                staged.insert(Arc::clone(name), Some(t));
            }
        }
    }
    Ok(Staged {
        with_events,
        dropped: changes.dropped.clone(),
        created: changes
            .created
            .iter()
            .map(|(n, pk)| (Arc::clone(n), Arc::clone(pk)))
            .collect(),
        tables: staged
            .into_iter()
            .filter_map(|(name, t)| t.map(|t| (name, t)))
            .collect(),
        events,
        affected,
    })
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
    /// The changes are worked out on O(1) copies of the tables they touch
    /// without holding the database lock; the lock is then held only to
    /// check that those tables did not move meanwhile and to swap the new
    /// table roots in (O(tables), plus one event send per change when
    /// someone subscribes), so readers never wait for the whole set. If a
    /// writer changed the database in between, the set is worked out again
    /// (the last attempt under the lock, so an apply always completes).
    ///
    /// On any error (a change to a table that neither exists nor is created,
    /// a record without a valid key, a key field that differs from the
    /// table's, a read-only database) nothing changes.
    pub fn apply(&self, changes: &ChangeSet) -> Result<usize> {
        self.apply_named(changes, "change set")
    }

    /// [`apply`](Self::apply), with errors naming `file`.
    pub(crate) fn apply_named(&self, changes: &ChangeSet, file: &str) -> Result<usize> {
        self.apply_as(changes, file, Writer::User)
            .map(|a| a.affected)
    }

    /// Works out every change of `changes` against the database as it
    /// stands, without holding the lock, for a quick
    /// [`commit`](PreparedChanges::commit) later. Errors are those of
    /// [`apply`](Self::apply); nothing changes until the commit.
    pub fn prepare(&self, changes: &ChangeSet) -> Result<PreparedChanges> {
        self.prepare_as(changes, "change set", Writer::User)
    }

    pub(crate) fn prepare_as(
        &self,
        changes: &ChangeSet,
        file: &str,
        writer: Writer,
    ) -> Result<PreparedChanges> {
        validate_names(changes, file)?;
        let seen = {
            let st = self.lock();
            check(&st, writer)?;
            Seen::take(&st, changes)
        };
        let staged = stage(
            changes,
            file,
            &mut seen.tables.clone(),
            self.has_subscribers(),
        )?;
        Ok(PreparedChanges {
            db: self.clone(),
            writer,
            seen,
            staged,
        })
    }

    /// Applies `changes` as `writer`: staged off the lock, committed under
    /// it; staged again when the database moved meanwhile.
    pub(crate) fn apply_as(
        &self,
        changes: &ChangeSet,
        file: &str,
        writer: Writer,
    ) -> Result<Applied> {
        if let Writer::Replica { cut } = writer {
            for _ in 0..OPTIMISTIC_ROUNDS {
                if let Some(applied) = self.swap_whole(changes, file, cut)? {
                    return Ok(applied);
                }
            }
        }
        for _ in 0..OPTIMISTIC_ROUNDS {
            match self.prepare_as(changes, file, writer)?.commit_timed() {
                Err(Error::Conflict) => continue,
                other => return other,
            }
        }
        // Writers keep winning the race: apply under the lock this time.
        self.apply_locked(changes, file, writer)
    }

    /// [`apply_named`](Self::apply_named) for a database nobody else uses
    /// yet (a restore building its result): applied in place under the
    /// lock, see [`apply_locked`](Self::apply_locked).
    pub(crate) fn apply_in_place(&self, changes: &ChangeSet, file: &str) -> Result<usize> {
        self.apply_locked(changes, file, Writer::User)
            .map(|a| a.affected)
    }

    /// Applies `changes` under the lock, changing the database's own tables
    /// where they stand: in place when nothing else holds their nodes (no
    /// snapshot, no replica state), so a change costs an insert, not a copy
    /// of its path in the tree plus the freeing of the old one (most of a
    /// delta's cost when restoring). Still all or nothing: [`stage`] checks
    /// the whole set before it changes anything. Readers wait for the whole
    /// apply: for a database nobody reads yet, or when writers keep winning
    /// the optimistic race.
    fn apply_locked(&self, changes: &ChangeSet, file: &str, writer: Writer) -> Result<Applied> {
        validate_names(changes, file)?;
        let mut guard = self.lock();
        let locked = Instant::now();
        check(&guard, writer)?;
        // (Events always: a subscriber may come while this runs.)
        let staged = stage(changes, file, Arc::make_mut(&mut guard.tables), true)?;
        let (affected, leftovers) = install(self, &mut guard, writer, staged);
        let held = locked.elapsed();
        drop(guard);
        leftovers.publish(self);
        Ok(Applied { affected, held })
    }
}

impl DictDB {
    /// A replica's apply: the database's next state worked out whole, off
    /// the lock, on a copy of the table map (O(tables); each touched table
    /// copies only the paths the changes take), then swapped in with one
    /// pointer store. Readers wait for the swap only, whatever the number of
    /// changes or tables; the replaced state is freed on another thread.
    ///
    /// `Ok(None)`: the database moved meanwhile (nothing changed; the caller
    /// tries again).
    fn swap_whole(
        &self,
        changes: &ChangeSet,
        file: &str,
        cut: Option<u64>,
    ) -> Result<Option<Applied>> {
        validate_names(changes, file)?;
        let from = self.served();
        let mut next: TableMap = (*from.tables).clone();
        let staged = stage(changes, file, &mut next, self.has_subscribers())?;
        Ok(self.swap_in(next, staged, from, cut).map(|swapped| {
            // The last references to the nodes the changes replaced:
            // freeing them costs as much as the changes did, and nobody
            // waits for it.
            reclaim::later((swapped.old, swapped.now));
            swapped.applied
        }))
    }

    /// Installs `staged` into `tables` (the replica's next state, worked out
    /// off the lock from the map `from` describes), numbers the changes to
    /// end at the writer's `cut`, and swaps the map in with one pointer
    /// store, if the database still serves exactly `from`. The events go
    /// out after the lock is released, in order; what was replaced is freed
    /// on the reclaiming thread. `None`: the database moved (nothing
    /// changed).
    pub(super) fn swap_in(
        &self,
        mut tables: TableMap,
        staged: Staged,
        from: Served,
        cut: Option<u64>,
    ) -> Option<Swapped> {
        let Staged {
            with_events,
            dropped,
            created,
            tables: staged,
            events: record_events,
            affected,
        } = staged;
        let mut incarnations = from.incarnations;
        let (events, replaced) =
            install_tables(&mut tables, &mut incarnations, dropped, created, staged);
        let (first, seq) = numbering(
            from.seq,
            (events.len() + affected) as u64,
            Writer::Replica { cut },
        );
        let serving = Arc::new(tables);
        let mut guard = self.lock();
        let locked = Instant::now();
        if !from.still(&guard) || (!with_events && self.has_subscribers()) {
            drop(guard);
            reclaim::later((serving, from, replaced));
            return None;
        }
        let old = std::mem::replace(&mut guard.tables, Arc::clone(&serving));
        guard.seq = seq;
        guard.next_incarnation = incarnations;
        self.shared
            .activity
            .store(seq, std::sync::atomic::Ordering::Relaxed);
        let held = locked.elapsed();
        drop(guard);
        drop(from);
        if with_events && self.has_subscribers() {
            let all = events.into_iter().chain(record_events);
            for (seq, (name, change)) in (first + 1..).zip(all) {
                self.publish(seq, name, change);
            }
        }
        reclaim::later(replaced);
        Some(Swapped {
            applied: Applied { affected, held },
            old,
            now: Served {
                tables: serving,
                seq,
                incarnations,
            },
        })
    }

    /// What the database serves now.
    pub(super) fn served(&self) -> Served {
        let st = self.lock();
        Served {
            tables: Arc::clone(&st.tables),
            seq: st.seq,
            incarnations: st.next_incarnation,
        }
    }
}

/// What a database served when work on its next state began.
pub(super) struct Served {
    /// Its table map (held: a write that changes it in place would have to
    /// copy it first, so a changed map is always a different `Arc`).
    pub(super) tables: Arc<TableMap>,
    pub(super) seq: u64,
    /// Its incarnation counter.
    pub(super) incarnations: u64,
}

impl Served {
    /// Whether the database (its state `st`) still serves exactly this:
    /// the same map (a write would have copied it: it is held), sequence
    /// number and incarnation counter.
    pub(super) fn still(&self, st: &State) -> bool {
        Arc::ptr_eq(&st.tables, &self.tables)
            && st.seq == self.seq
            && st.next_incarnation == self.incarnations
    }
}

/// What [`DictDB::swap_in`] did.
pub(super) struct Swapped {
    pub(super) applied: Applied,
    /// The map it replaced.
    pub(super) old: Arc<TableMap>,
    /// What the database serves after it.
    pub(super) now: Served,
}

/// What an apply did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Applied {
    /// Records affected (see [`DictDB::apply`]).
    pub(crate) affected: usize,
    /// How long it held the database lock: what readers and writers could
    /// have waited for.
    pub(crate) held: Duration,
}

fn check(st: &State, writer: Writer) -> Result<()> {
    match writer {
        Writer::User => st.check_writable(),
        Writer::Replica { .. } => Ok(()),
    }
}

impl PreparedChanges {
    /// Records the commit would affect (see [`DictDB::apply`]).
    pub fn affected(&self) -> usize {
        self.staged.affected
    }

    /// Commits the prepared changes: holds the database lock only to check
    /// that the tables they touch (and the sequence number) did not move
    /// since [`DictDB::prepare`], and to swap the new tables in. Returns the
    /// records affected, or [`Error::Conflict`] (nothing changed: prepare
    /// again) when they moved (or when the changes were prepared while
    /// nobody subscribed to the mutation stream and someone does now: their
    /// events were not built), or [`Error::ReadOnly`].
    pub fn commit(self) -> Result<usize> {
        self.commit_timed().map(|a| a.affected)
    }

    /// [`commit`](Self::commit), timing how long the lock was held.
    pub(crate) fn commit_timed(self) -> Result<Applied> {
        let PreparedChanges {
            db,
            writer,
            seen,
            staged,
        } = self;
        let mut guard = db.lock();
        let locked = Instant::now();
        check(&guard, writer)?;
        // Someone subscribed since the changes were worked out without
        // their events: work them out again, with.
        if !seen.still(&guard) || (!staged.with_events && db.has_subscribers()) {
            return Err(Error::Conflict);
        }
        let (affected, leftovers) = install(&db, &mut guard, writer, staged);
        let held = locked.elapsed();
        drop(guard);
        leftovers.publish(&db);
        Ok(Applied { affected, held })
    }
}

/// What is left once the lock is released: a replica's events to publish,
/// and the replaced table roots, freed off the lock (dropping the last
/// reference to a table's old nodes costs as much as the changes did).
struct Leftovers {
    /// Events not sent yet, numbered from `first + 1`: table drops and
    /// creations, then record changes.
    events: Vec<(Arc<str>, Change)>,
    record_events: Vec<(Arc<str>, Change)>,
    first: u64,
    publish: bool,
    _replaced: Vec<TableState>,
}

impl Leftovers {
    fn publish(self, db: &DictDB) {
        let Leftovers {
            events,
            record_events,
            first,
            publish,
            _replaced,
        } = self;
        if publish {
            let all = events.into_iter().chain(record_events);
            for (seq, (name, change)) in (first + 1..).zip(all) {
                db.publish(seq, name, change);
            }
        }
    }
}

/// Swaps the staged tables in, under the lock, and numbers the events.
///
/// O(tables): drops and creates by name, one root swap per staged table,
/// the sequence number moved in one step. Events go out here, under the
/// lock, for a [`Writer::User`]: a snapshot taken under the lock then
/// always finds every event up to its cut already in the channel (what the
/// backup manager's exact deltas rely on). A [`Writer::Replica`] is the
/// only writer of its read-only database and nobody can back it up, so its
/// events are sent after the lock is released, in order, and readers wait
/// only for the swap.
fn install(db: &DictDB, st: &mut State, writer: Writer, staged: Staged) -> (usize, Leftovers) {
    let Staged {
        with_events: _,
        dropped,
        created,
        tables,
        events: record_events,
        affected,
    } = staged;
    let (mut events, replaced) = install_tables(
        Arc::make_mut(&mut st.tables),
        &mut st.next_incarnation,
        dropped,
        created,
        tables,
    );
    // One sequence number per change, whether or not its event was built
    // (`affected` counts the record changes).
    debug_assert!(record_events.is_empty() || record_events.len() == affected);
    let (first, seq) = numbering(st.seq, (events.len() + affected) as u64, writer);
    st.seq = seq;
    db.shared
        .activity
        .store(st.seq, std::sync::atomic::Ordering::Relaxed);
    let subscribed = db.has_subscribers();
    let mut record_events = record_events;
    let publish = match writer {
        Writer::User => {
            if subscribed {
                let all = events.drain(..).chain(record_events.drain(..));
                for (seq, (name, change)) in (first + 1..).zip(all) {
                    db.publish(seq, name, change);
                }
            }
            false
        }
        Writer::Replica { .. } => subscribed,
    };
    (
        affected,
        Leftovers {
            events,
            record_events,
            first,
            publish,
            _replaced: replaced,
        },
    )
}

/// Puts staged tables into `tables`: drops and creations by name, then one
/// root per staged table (a new table takes the next incarnation from
/// `incarnations`). Returns the table drop and creation events, in order,
/// and the table states replaced. O(tables).
pub(super) fn install_tables(
    tables: &mut TableMap,
    incarnations: &mut u64,
    dropped: Vec<Arc<str>>,
    created: Vec<(Arc<str>, Arc<str>)>,
    staged: BTreeMap<Arc<str>, TableState>,
) -> (Vec<(Arc<str>, Change)>, Vec<TableState>) {
    let mut replaced = Vec::new();
    // Table drops and creations, published before the record changes. The
    // record changes stay in their own vector: moving it here would copy
    // O(changes) under the lock.
    let mut events = Vec::with_capacity(dropped.len() + 2 * created.len());
    for name in dropped {
        if let Some((name, old)) = tables.remove_entry(&name) {
            replaced.push(old);
            events.push((name, Change::TableDropped));
        }
    }
    for (name, primary_key) in created {
        if let Some((old_name, old)) = tables.remove_entry(&name) {
            replaced.push(old);
            events.push((old_name, Change::TableDropped));
        }
        events.push((name, Change::TableCreated { primary_key }));
    }
    for (name, mut table) in staged {
        // A table the set creates is staged with incarnation 0; every other
        // staged table keeps its own.
        if table.incarnation == 0 {
            *incarnations += 1;
            table.incarnation = *incarnations;
        }
        if let Some(old) = tables.insert(name, table) {
            replaced.push(old);
        }
    }
    (events, replaced)
}

/// Numbers `k` changes applied at sequence number `seq`: the sequence
/// number before the first of them, and the database's sequence number
/// after.
///
/// A replica's changes end at the writer's cut (a delta holds at most as
/// many changes as the writer's sequence range: it folds them); the gap
/// below them is the writer's changes that the file folded.
fn numbering(seq: u64, k: u64, writer: Writer) -> (u64, u64) {
    let cut = match writer {
        Writer::Replica { cut } => cut,
        Writer::User => None,
    };
    let first = match cut {
        Some(cut) if cut >= seq + k => cut - k,
        _ => seq,
    };
    (first, (first + k).max(cut.unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A database with `users` holding keys 1..=n, and a change set that
    /// updates key 1, inserts n+1 and deletes key 2.
    fn fixture(n: i64) -> (DictDB, ChangeSet) {
        let db = DictDB::new();
        let users = db.create_table("users").unwrap();
        for i in 1..=n {
            users.insert(json!({"id": i, "v": 0})).unwrap();
        }
        let before = db.snapshot();
        let other = DictDB::from_snapshot(before.clone());
        let t = other.table("users").unwrap();
        t.update(1, json!({"v": 1})).unwrap();
        t.insert(json!({"id": n + 1})).unwrap();
        t.delete(2).unwrap();
        (db, before.changes_to(&other.snapshot()))
    }

    /// Every record of every table, as text, and the sequence number.
    fn state(db: &DictDB) -> (u64, Vec<String>) {
        let snap = db.snapshot();
        let mut out = Vec::new();
        for t in snap.tables() {
            for (k, r) in t.iter() {
                out.push(format!("{}/{k}: {}", t.name(), r.to_json_string()));
            }
        }
        (db.seq(), out)
    }

    /// The in-place apply (a restore's) changes the tables where they
    /// stand; a set it refuses must still change nothing, wherever in the
    /// set the fault is: the checks all run before the first change.
    #[test]
    fn an_in_place_apply_refused_late_in_the_set_changes_nothing() {
        let rec = |v: serde_json::Value| {
            crate::record::PendingRecord::new(&v, "id")
                .unwrap()
                .finish(None)
        };
        let table = |name: &str, pk: Option<&str>, upserts: Vec<Record>| TableChanges {
            name: Arc::from(name),
            primary_key: pk.map(Arc::from),
            upserts,
            deletes: vec![Key::Int(2)],
        };
        let good = || table("a", Some("id"), vec![rec(json!({"id": 1, "v": 9}))]);
        let faults: Vec<(&str, ChangeSet)> = vec![
            (
                "a record without its key",
                ChangeSet {
                    tables: vec![good(), table("b", None, vec![rec(json!({"v": 1}))])],
                    ..ChangeSet::default()
                },
            ),
            (
                "another key field",
                ChangeSet {
                    tables: vec![good(), table("b", Some("uid"), vec![])],
                    ..ChangeSet::default()
                },
            ),
            (
                "a table that is not there",
                ChangeSet {
                    tables: vec![good(), table("c", None, vec![])],
                    ..ChangeSet::default()
                },
            ),
            (
                "a table it also drops",
                ChangeSet {
                    dropped: vec![Arc::from("b")],
                    tables: vec![good(), table("b", None, vec![])],
                    ..ChangeSet::default()
                },
            ),
        ];
        for (what, changes) in faults {
            let db = DictDB::new();
            for name in ["a", "b"] {
                let t = db.create_table(name).unwrap();
                for i in 1..=3 {
                    t.insert(json!({"id": i, "v": 0})).unwrap();
                }
            }
            let before = state(&db);
            let err = db.apply_in_place(&changes, "f").unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "{what}: {err}");
            assert_eq!(state(&db), before, "{what}: changed by a refused set");
            // The same set without its fault applies: `a` changes in place.
            let mut fixed = changes.clone();
            fixed.tables.truncate(1);
            fixed.dropped.clear();
            assert_eq!(db.apply_in_place(&fixed, "f").unwrap(), 2, "{what}");
            let a = db.table("a").unwrap();
            assert_eq!(a.get(1).unwrap().unwrap()["v"], 9);
            assert!(!a.contains(2).unwrap());
        }
    }

    #[test]
    fn a_write_between_prepare_and_commit_is_a_conflict_and_changes_nothing() {
        let (db, changes) = fixture(10);
        let prepared = db.prepare(&changes).unwrap();
        assert_eq!(prepared.affected(), 3);
        db.table("users")
            .unwrap()
            .update(5, json!({"v": 5}))
            .unwrap();
        let seq = db.seq();
        assert!(matches!(prepared.commit(), Err(Error::Conflict)));
        assert_eq!(db.seq(), seq);
        assert!(db.table("users").unwrap().contains(2).unwrap());
        // apply stages again and succeeds.
        assert_eq!(db.apply(&changes).unwrap(), 3);
        assert!(!db.table("users").unwrap().contains(2).unwrap());
    }

    #[test]
    fn an_apply_nobody_watches_still_numbers_every_change() {
        let (watched, changes) = fixture(10);
        let (unwatched, _) = fixture(10);
        let _rx = watched.subscribe();
        let before = (watched.seq(), unwatched.seq());
        assert_eq!(watched.apply(&changes).unwrap(), 3);
        assert_eq!(unwatched.apply(&changes).unwrap(), 3);
        assert_eq!(watched.seq() - before.0, 3);
        assert_eq!(
            unwatched.seq() - before.1,
            3,
            "no events built, same numbers"
        );
    }

    #[test]
    fn changes_prepared_unwatched_are_prepared_again_for_a_new_subscriber() {
        let (db, changes) = fixture(10);
        let prepared = db.prepare(&changes).unwrap();
        let mut rx = db.subscribe();
        assert!(matches!(prepared.commit(), Err(Error::Conflict)));
        assert_eq!(db.apply(&changes).unwrap(), 3);
        let n = std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!(n, 3, "one event per change");
    }

    #[test]
    fn a_commit_elsewhere_moves_the_sequence_number_and_is_a_conflict() {
        let (db, changes) = fixture(4);
        let prepared = db.prepare(&changes).unwrap();
        db.create_table("other").unwrap();
        assert!(matches!(prepared.commit(), Err(Error::Conflict)));
    }

    #[test]
    fn a_key_counter_moved_without_a_sequence_number_is_a_conflict() {
        let (db, _) = fixture(4);
        let mut bump = ChangeSet::default();
        bump.next_keys.insert(Arc::from("users"), 100);
        let prepared = db.prepare(&bump).unwrap();
        let mut other = ChangeSet::default();
        other.next_keys.insert(Arc::from("users"), 50);
        let seq = db.seq();
        assert_eq!(db.apply(&other).unwrap(), 0);
        assert_eq!(db.seq(), seq, "a counter alone commits no change");
        assert!(matches!(prepared.commit(), Err(Error::Conflict)));
        db.apply(&bump).unwrap();
        assert_eq!(db.snapshot().tables()[0].next_auto_key(), Some(100));
    }

    #[test]
    fn a_reader_holding_a_snapshot_keeps_its_cut() {
        let (db, changes) = fixture(100);
        let held = db.snapshot();
        let users = db.table("users").unwrap();
        db.apply(&changes).unwrap();
        assert_eq!(held.table("users").unwrap().len(), 100);
        assert!(held.table("users").unwrap().get(&Key::Int(2)).is_some());
        assert_eq!(users.len().unwrap(), 100, "one delete, one insert");
        assert!(!users.contains(2).unwrap(), "the handle sees the new cut");
    }

    #[test]
    fn read_only_refuses_users_and_lets_the_replica_write_up_to_its_cut() {
        let (db, changes) = fixture(10);
        let mut events = db.subscribe();
        db.set_read_only(Some("a replica of test"));
        let err = db.apply(&changes).unwrap_err();
        assert!(
            matches!(&err, Error::ReadOnly(why) if why == "a replica of test"),
            "{err}"
        );
        assert!(matches!(db.prepare(&changes), Err(Error::ReadOnly(_))));
        let seq = db.seq();
        let cut = seq + 10;
        let n = db
            .apply_as(&changes, "f", Writer::Replica { cut: Some(cut) })
            .unwrap()
            .affected;
        assert_eq!(n, 3);
        assert_eq!(db.seq(), cut, "the database is at the writer's cut");
        let seqs: Vec<u64> = std::iter::from_fn(|| events.try_recv().ok())
            .map(|m| m.seq)
            .collect();
        assert_eq!(seqs, [cut - 2, cut - 1, cut], "the changes end at the cut");
    }

    #[test]
    fn a_replica_cut_below_its_changes_keeps_the_sequence_monotonic() {
        let (db, changes) = fixture(3);
        let seq = db.seq();
        db.apply_as(&changes, "f", Writer::Replica { cut: Some(1) })
            .unwrap();
        assert_eq!(db.seq(), seq + 3);
    }

    #[test]
    fn apply_completes_while_other_writers_keep_committing() {
        let (db, changes) = fixture(1000);
        let mut events = db.subscribe();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let db = db.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let t = db.table("users").unwrap();
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    t.update(10 + i % 900, json!({"w": i})).unwrap();
                }
            })
        };
        for _ in 0..200 {
            db.apply(&changes).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        // Every event arrived in sequence order, none missing.
        let mut last = None;
        while let Ok(m) = events.try_recv() {
            if let Some(l) = last {
                assert_eq!(m.seq, l + 1);
            }
            last = Some(m.seq);
        }
        assert_eq!(last, Some(db.seq()));
    }
}
