//! Table handles and their CRUD operations.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use imbl::ordmap::DiffItem;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::{Change, DictDB, State, TableState};
use crate::error::{Error, Result};
use crate::key::{json_type_name, Key};
use crate::record::{self, PendingRecord, Record};

/// A handle to one table of a [`DictDB`].
///
/// Cheap to clone. If the table is dropped, every operation on the handle
/// fails with [`Error::TableNotFound`], even if a table of the same name is
/// created again later.
///
/// Every operation that changes something is atomic (all or nothing), takes
/// the database lock for the time of the change only, and publishes one
/// [`crate::Mutation`] per record changed.
#[derive(Clone)]
pub struct Table {
    db: DictDB,
    name: Arc<str>,
    pk: Arc<str>,
    incarnation: u64,
}

/// What [`Table::upsert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Upsert {
    /// No record had the key: the record was inserted.
    Inserted(Key),
    /// A record had the key: the fields were merged into it.
    Updated(Key),
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.name)
            .field("primary_key", &self.pk)
            .finish()
    }
}

fn as_object(value: Value) -> Result<Map<String, Value>> {
    match value {
        Value::Object(m) => {
            record::check_fields(&m)?;
            Ok(m)
        }
        other => Err(Error::NotAnObject(json_type_name(&other))),
    }
}

impl Table {
    pub(super) fn new(db: DictDB, name: Arc<str>, pk: Arc<str>, incarnation: u64) -> Self {
        Table {
            db,
            name,
            pk,
            incarnation,
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The primary-key field.
    pub fn primary_key(&self) -> &str {
        &self.pk
    }

    /// The database this table belongs to.
    pub fn db(&self) -> &DictDB {
        &self.db
    }

    fn state<'a>(&self, st: &'a State) -> Result<&'a TableState> {
        match st.tables.get(&*self.name) {
            Some(t) if t.incarnation == self.incarnation => Ok(t),
            _ => Err(Error::TableNotFound(self.name.to_string())),
        }
    }

    /// Runs `f` on this table's state with the lock held, and hands it a way
    /// to publish changes.
    fn write<R>(
        &self,
        f: impl FnOnce(&mut TableState, &mut dyn FnMut(Change)) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self.db.lock();
        let st = &mut *guard;
        st.check_writable()?;
        let t = match Arc::make_mut(&mut st.tables).get_mut(&*self.name) {
            Some(t) if t.incarnation == self.incarnation => t,
            _ => return Err(Error::TableNotFound(self.name.to_string())),
        };
        let seq = &mut st.seq;
        let db = &self.db;
        let name = &self.name;
        let mut publish = |c: Change| db.commit(seq, name, || c);
        f(t, &mut publish)
    }

    /// Inserts a record and returns its key.
    ///
    /// A record without the key field gets the next auto-assigned integer,
    /// added as its last field; auto-assigned integers are never handed out
    /// twice, even after deletes, loads and restores. A record whose key is
    /// already present is refused with [`Error::DuplicateKey`].
    pub fn insert(&self, record: Value) -> Result<Key> {
        // Encoding happens before the lock is taken.
        let pending = PendingRecord::new(&record, &self.pk)?;
        self.write(|t, publish| {
            let (key, rec) = match pending.key.clone() {
                Some(key) => {
                    let rec = pending.finish(None);
                    // One walk down the tree, not two: insert, and in the
                    // rare case the key was taken put the old record back
                    // (under the lock: nobody sees the difference).
                    if let Some(old) = t.records.insert(key.clone(), rec.clone()) {
                        t.records.insert(key.clone(), old);
                        return Err(Error::DuplicateKey {
                            table: self.name.to_string(),
                            key,
                        });
                    }
                    t.bump(&key);
                    (key, rec)
                }
                None => {
                    let id = t.alloc_id(&self.name)?;
                    let rec = pending.finish(Some((&self.pk, id)));
                    t.records.insert(Key::Int(id), rec.clone());
                    (Key::Int(id), rec)
                }
            };
            publish(Change::Insert {
                key: key.clone(),
                record: rec,
            });
            Ok(key)
        })
    }

    fn seal(&self, t: &mut TableState, pending: PendingRecord) -> Result<(Key, Record)> {
        match pending.key.clone() {
            Some(key) => {
                if t.records.contains_key(&key) {
                    return Err(Error::DuplicateKey {
                        table: self.name.to_string(),
                        key,
                    });
                }
                t.bump(&key);
                Ok((key, pending.finish(None)))
            }
            None => {
                let id = t.alloc_id(&self.name)?;
                Ok((Key::Int(id), pending.finish(Some((&self.pk, id)))))
            }
        }
    }

    /// Inserts several records, all or nothing: if any record is invalid or
    /// its key is taken (in the table or earlier in the batch), nothing is
    /// inserted. Returns the keys in input order.
    pub fn insert_many<I>(&self, records: I) -> Result<Vec<Key>>
    where
        I: IntoIterator<Item = Value>,
    {
        let pending = records
            .into_iter()
            .map(|r| PendingRecord::new(&r, &self.pk))
            .collect::<Result<Vec<_>>>()?;
        self.write(|t, publish| {
            // Work on a copy (O(1)) so a failure half-way leaves `t` untouched.
            let mut staged = t.clone();
            let mut out = Vec::with_capacity(pending.len());
            for p in pending {
                let (key, rec) = self.seal(&mut staged, p)?;
                staged.records.insert(key.clone(), rec.clone());
                out.push((key, rec));
            }
            *t = staged;
            Ok(out
                .into_iter()
                .map(|(key, record)| {
                    publish(Change::Insert {
                        key: key.clone(),
                        record,
                    });
                    key
                })
                .collect())
        })
    }

    /// The record with this key, if any.
    pub fn get(&self, key: impl Into<Key>) -> Result<Option<Value>> {
        let key = key.into();
        let rec = {
            let st = self.db.lock();
            self.state(&st)?.records.get(&key).cloned()
        };
        // Decoding happens after the lock is released.
        Ok(rec.map(|r| r.to_value()))
    }

    /// Whether a record has this key.
    pub fn contains(&self, key: impl Into<Key>) -> Result<bool> {
        let key = key.into();
        let st = self.db.lock();
        Ok(self.state(&st)?.records.contains_key(&key))
    }

    fn check_patch(&self, key: &Key, patch: &Map<String, Value>) -> Result<()> {
        if let Some(v) = patch.get(&*self.pk) {
            let new = Key::from_json(v, &self.pk)?;
            if &new != key {
                return Err(Error::PrimaryKeyChange {
                    table: self.name.to_string(),
                    field: self.pk.to_string(),
                    key: key.clone(),
                });
            }
        }
        Ok(())
    }

    /// Merges `fields` into the record with this key: fields present are
    /// replaced, new ones appended. Changing the primary key is an error.
    pub fn update(&self, key: impl Into<Key>, fields: Value) -> Result<()> {
        let key = key.into();
        let patch = as_object(fields)?;
        self.check_patch(&key, &patch)?;
        self.write(|t, publish| {
            let old = t.records.get(&key).ok_or_else(|| Error::RecordNotFound {
                table: self.name.to_string(),
                key: key.clone(),
            })?;
            let rec = record::merge(old, &patch);
            t.records.insert(key.clone(), rec.clone());
            publish(Change::Update { key, record: rec });
            Ok(())
        })
    }

    /// Merges `fields` into every record for which `predicate` holds and
    /// returns how many were updated. All or nothing: if the patch would
    /// change any matching record's key, nothing is updated.
    ///
    /// The predicate runs without the database lock (see
    /// [`delete_where`](Self::delete_where)), so it may itself read the
    /// database.
    pub fn update_where<F>(&self, predicate: F, fields: Value) -> Result<usize>
    where
        F: Fn(&Value) -> bool,
    {
        let patch = as_object(fields)?;
        self.with_matches(&predicate, |t, matches, publish| {
            // Every check comes before the first change: all or nothing.
            let mut staged = Vec::with_capacity(matches.len());
            for (key, rec) in matches {
                self.check_patch(&key, &patch)?;
                staged.push((key, record::merge(&rec, &patch)));
            }
            let n = staged.len();
            for (key, rec) in staged {
                t.records.insert(key.clone(), rec.clone());
                publish(Change::Update { key, record: rec });
            }
            Ok(n)
        })
    }

    /// Finds the records `predicate` holds for and hands them to `apply`,
    /// under the lock, as they currently stand.
    ///
    /// User code never runs under the database lock: the predicate is
    /// evaluated on an O(1) snapshot; if other writers changed the table
    /// meanwhile, only the records they changed are evaluated again, on a
    /// new snapshot (the diff of persistent maps skips shared structure), a
    /// few rounds at most. Past that, records still being changed by others
    /// keep the other writers' version.
    fn with_matches<F, R>(
        &self,
        predicate: &F,
        apply: impl FnOnce(&mut TableState, Vec<(Key, Record)>, &mut dyn FnMut(Change)) -> Result<R>,
    ) -> Result<R>
    where
        F: Fn(&Value) -> bool,
    {
        const ROUNDS: usize = 8;
        let mut seen = {
            let st = self.db.lock();
            self.state(&st)?.records.clone()
        };
        let mut matches: BTreeMap<Key, Record> = seen
            .iter()
            .filter(|(_, r)| predicate(&r.to_value()))
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut round = 0;
        let mut apply = Some(apply);
        loop {
            let now = {
                let result = self.write(|t, publish| {
                    if !t.records.ptr_eq(&seen) && round < ROUNDS {
                        return Ok(Err(t.records.clone()));
                    }
                    let current: Vec<(Key, Record)> = std::mem::take(&mut matches)
                        .into_iter()
                        .filter(|(k, r)| t.records.get(k) == Some(r))
                        .collect();
                    let apply = apply
                        .take()
                        .ok_or_else(|| Error::TableNotFound(self.name.to_string()))?;
                    apply(t, current, publish).map(Ok)
                })?;
                match result {
                    Ok(r) => return Ok(r),
                    Err(now) => now,
                }
            };
            for item in seen.diff(&now) {
                match item {
                    DiffItem::Add(k, r) | DiffItem::Update { new: (k, r), .. } => {
                        if predicate(&r.to_value()) {
                            matches.insert(k.clone(), r.clone());
                        } else {
                            matches.remove(k);
                        }
                    }
                    DiffItem::Remove(k, _) => {
                        matches.remove(k);
                    }
                }
            }
            seen = now;
            round += 1;
        }
    }

    /// Inserts the record, or merges it into the record with the same key.
    pub fn upsert(&self, record: Value) -> Result<Upsert> {
        let pending = PendingRecord::new(&record, &self.pk)?;
        let Some(key) = pending.key.clone() else {
            return self.insert(record).map(Upsert::Inserted);
        };
        let Value::Object(patch) = record else {
            return Err(Error::NotAnObject(json_type_name(&record)));
        };
        self.write(|t, publish| match t.records.get(&key) {
            Some(old) => {
                let rec = record::merge(old, &patch);
                t.records.insert(key.clone(), rec.clone());
                publish(Change::Update {
                    key: key.clone(),
                    record: rec,
                });
                Ok(Upsert::Updated(key))
            }
            None => {
                t.bump(&key);
                let rec = pending.finish(None);
                t.records.insert(key.clone(), rec.clone());
                publish(Change::Insert {
                    key: key.clone(),
                    record: rec,
                });
                Ok(Upsert::Inserted(key))
            }
        })
    }

    /// Replaces the whole record with this key: fields absent from
    /// `record` are removed (unlike [`update`](Self::update) and
    /// [`upsert`](Self::upsert), which merge). A record without the key
    /// field gets it (as its last field); one with a different key is
    /// refused with [`Error::PrimaryKeyChange`], a missing record with
    /// [`Error::RecordNotFound`].
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::DictDB;
    /// use serde_json::json;
    ///
    /// let users = DictDB::new().create_table("users")?;
    /// let id = users.insert(json!({"name": "Alice", "nickname": "Al"}))?;
    /// users.replace(id.clone(), json!({"name": "Alice"}))?;
    /// assert_eq!(users.get(id)?.unwrap(), json!({"name": "Alice", "id": 1}));
    /// # Ok::<(), dictdb::Error>(())
    /// ```
    pub fn replace(&self, key: impl Into<Key>, record: Value) -> Result<()> {
        let key = key.into();
        let (pending, _) = self.replacement(&key, as_object(record)?)?;
        self.write(|t, publish| {
            if !t.records.contains_key(&key) {
                return Err(self.not_found(&key));
            }
            let rec = pending.finish(None);
            t.records.insert(key.clone(), rec.clone());
            publish(Change::Update { key, record: rec });
            Ok(())
        })
    }

    fn not_found(&self, key: &Key) -> Error {
        Error::RecordNotFound {
            table: self.name.to_string(),
            key: key.clone(),
        }
    }

    /// Encodes a whole new version of the record `key` (its key field added
    /// when missing, refused when different); returns it as JSON too.
    fn replacement(
        &self,
        key: &Key,
        mut map: Map<String, Value>,
    ) -> Result<(PendingRecord, Value)> {
        self.check_patch(key, &map)?;
        if !map.contains_key(&*self.pk) {
            map.insert(self.pk.to_string(), key.to_json());
        }
        let value = Value::Object(map);
        Ok((PendingRecord::new(&value, &self.pk)?, value))
    }

    /// Atomic read-modify-write of one record: `f` gets the current record
    /// and changes it in place; the result replaces the record whole (so `f`
    /// may remove fields) and is returned. Changing the key field is refused
    /// ([`Error::PrimaryKeyChange`]); removing it keeps the key.
    ///
    /// `f` never runs under the database lock (it may read the database):
    /// if another writer changes the record between the read and the write,
    /// nothing is written and `f` runs again on the new version. So `f` may
    /// run more than once, and should have no side effects that matter.
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::DictDB;
    /// use serde_json::json;
    ///
    /// let counters = DictDB::new().create_table_with_key("counters", "name")?;
    /// counters.insert(json!({"name": "hits", "n": 41}))?;
    /// let new = counters.update_with("hits", |rec| {
    ///     let n = rec["n"].as_i64().unwrap_or(0);
    ///     rec.insert("n".into(), json!(n + 1));
    /// })?;
    /// assert_eq!(new["n"], 42);
    /// # Ok::<(), dictdb::Error>(())
    /// ```
    pub fn update_with<F>(&self, key: impl Into<Key>, mut f: F) -> Result<Value>
    where
        F: FnMut(&mut Map<String, Value>),
    {
        let key = key.into();
        for round in 0u32.. {
            if round >= 8 {
                // Others keep winning: give them the CPU, then try again.
                std::thread::yield_now();
            }
            let seen = {
                let st = self.db.lock();
                self.state(&st)?.records.get(&key).cloned()
            }
            .ok_or_else(|| self.not_found(&key))?;
            let mut map = match seen.to_value() {
                Value::Object(m) => m,
                other => return Err(Error::NotAnObject(json_type_name(&other))),
            };
            f(&mut map);
            record::check_fields(&map)?;
            let (pending, value) = self.replacement(&key, map)?;
            let applied = self.write(|t, publish| match t.records.get(&key) {
                None => Err(self.not_found(&key)),
                // Someone else wrote it meanwhile: run `f` again.
                Some(now) if *now != seen => Ok(false),
                Some(_) => {
                    let rec = pending.finish(None);
                    t.records.insert(key.clone(), rec.clone());
                    publish(Change::Update {
                        key: key.clone(),
                        record: rec,
                    });
                    Ok(true)
                }
            })?;
            if applied {
                return Ok(value);
            }
        }
        // `0u32..` ends only after u32::MAX rounds of losing every race.
        Err(Error::InvalidRecord(format!(
            "record {key} of table `{}` changed on every attempt of update_with",
            self.name
        )))
    }

    /// Inserts a value of any type that serialises to a JSON object (a
    /// struct, a map), like [`insert`](Self::insert). A value that does not
    /// serialise, or not to an object, is an error.
    ///
    /// # Examples
    ///
    /// ```
    /// use dictdb::DictDB;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Debug, PartialEq)]
    /// struct User { id: u64, name: String }
    ///
    /// let users = DictDB::new().create_table("users")?;
    /// users.insert_as(&User { id: 7, name: "Alice".into() })?;
    /// let alice: Option<User> = users.get_as(7)?;
    /// assert_eq!(alice, Some(User { id: 7, name: "Alice".into() }));
    /// # Ok::<(), dictdb::Error>(())
    /// ```
    pub fn insert_as<T: Serialize + ?Sized>(&self, record: &T) -> Result<Key> {
        let value = serde_json::to_value(record).map_err(|e| Error::RecordType {
            table: self.name.to_string(),
            key: "?".into(),
            message: e.to_string(),
        })?;
        self.insert(value)
    }

    /// The record with this key converted to `T` (`None`: no such record).
    /// A record that does not convert is [`Error::RecordType`], naming it.
    pub fn get_as<T: DeserializeOwned>(&self, key: impl Into<Key>) -> Result<Option<T>> {
        let key = key.into();
        match self.get(key.clone())? {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| Error::RecordType {
                    table: self.name.to_string(),
                    key: key.to_string(),
                    message: e.to_string(),
                }),
        }
    }

    /// Deletes the record with this key; returns whether there was one.
    pub fn delete(&self, key: impl Into<Key>) -> Result<bool> {
        let key = key.into();
        self.write(|t, publish| {
            if t.records.remove(&key).is_some() {
                publish(Change::Delete { key });
                Ok(true)
            } else {
                Ok(false)
            }
        })
    }

    /// Deletes every record for which `predicate` holds; returns the count.
    ///
    /// The predicate runs on a snapshot, without the database lock held, so
    /// it may read the database and a slow one never stalls other writers;
    /// records that other writers change meanwhile are evaluated again.
    pub fn delete_where<F>(&self, predicate: F) -> Result<usize>
    where
        F: Fn(&Value) -> bool,
    {
        self.with_matches(&predicate, |t, matches, publish| {
            for (key, _) in &matches {
                t.records.remove(key);
                publish(Change::Delete { key: key.clone() });
            }
            Ok(matches.len())
        })
    }

    /// Every record for which `predicate` holds, in key order.
    ///
    /// Runs on an O(1) snapshot of the table, without holding the lock, so a
    /// long scan never blocks writers.
    pub fn select<F>(&self, predicate: F) -> Result<Vec<Value>>
    where
        F: Fn(&Value) -> bool,
    {
        let records = {
            let st = self.db.lock();
            self.state(&st)?.records.clone()
        };
        Ok(records
            .values()
            .map(Record::to_value)
            .filter(|v| predicate(v))
            .collect())
    }

    /// All records, in key order.
    pub fn all(&self) -> Result<Vec<Value>> {
        self.select(|_| true)
    }

    /// Number of records.
    pub fn len(&self) -> Result<usize> {
        let st = self.db.lock();
        Ok(self.state(&st)?.records.len())
    }

    /// Whether the table has no record.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}
