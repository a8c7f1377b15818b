//! Model-based test: random sequences of inserts, updates, upserts, deletes,
//! table creates and drops, interleaved with full, delta and
//! notify-triggered backups (on paused time), checked against a plain
//! reference model after a restore at every backup point.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use dictdb::restore::Restore;
use dictdb::{BackupConfig, BackupEvent, BackupManager, DictDB, Key};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Table name -> key text -> record.
type State = BTreeMap<String, BTreeMap<String, Value>>;

/// The reference: tables of records keyed by the key's display form, plus
/// each table's key field and next auto key.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    tables: BTreeMap<String, (String, BTreeMap<String, Value>, i64)>,
}

impl Model {
    fn state(&self) -> State {
        self.tables
            .iter()
            .map(|(n, (_, rows, _))| (n.clone(), rows.clone()))
            .collect()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create(u8, bool),
    Drop(u8),
    Insert(u8, u16),
    InsertKeyed(u8, u8, u16),
    Update(u8, u8, u16),
    Upsert(u8, u8, u16),
    Delete(u8, u8),
    Full,
    Delta,
    Notify,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (any::<u8>(), any::<bool>()).prop_map(|(t, k)| Op::Create(t, k)),
        1 => any::<u8>().prop_map(Op::Drop),
        4 => (any::<u8>(), any::<u16>()).prop_map(|(t, v)| Op::Insert(t, v)),
        2 => (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(t, k, v)| Op::InsertKeyed(t, k, v)),
        3 => (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(t, k, v)| Op::Update(t, k, v)),
        2 => (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(t, k, v)| Op::Upsert(t, k, v)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(t, k)| Op::Delete(t, k)),
        1 => Just(Op::Full),
        2 => Just(Op::Delta),
        2 => Just(Op::Notify),
    ]
}

const NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

fn merge(rec: &mut Value, patch: &Map<String, Value>) {
    for (k, v) in patch {
        rec[k] = v.clone();
    }
}

/// Applies one data operation to both the database and the model.
fn apply(db: &DictDB, model: &mut Model, op: &Op) {
    match *op {
        Op::Create(t, string_keys) => {
            let name = NAMES[usize::from(t) % 3];
            let pk = if string_keys { "sk" } else { "id" };
            let r = db.create_table_with_key(name, pk);
            assert_eq!(r.is_ok(), !model.tables.contains_key(name));
            if r.is_ok() {
                model
                    .tables
                    .insert(name.into(), (pk.into(), BTreeMap::new(), 1));
            }
        }
        Op::Drop(t) => {
            let name = NAMES[usize::from(t) % 3];
            assert_eq!(
                db.drop_table(name).is_ok(),
                model.tables.remove(name).is_some()
            );
        }
        Op::Insert(t, v) => {
            let name = NAMES[usize::from(t) % 3];
            let Some((pk, rows, next)) = model.tables.get_mut(name) else {
                return;
            };
            let rec = json!({"v": v, "half": f64::from(v) / 2.0});
            if pk == "sk" {
                // String-keyed tables need the key; auto keys are integers.
                let key = format!("k{v}");
                let mut rec = rec;
                rec["sk"] = json!(key);
                let r = db.table(name).unwrap().insert(rec.clone());
                let k = Key::from(key.as_str());
                assert_eq!(r.is_ok(), !rows.contains_key(&k.to_string()));
                if r.is_ok() {
                    rows.insert(k.to_string(), rec);
                }
                return;
            }
            let key = db.table(name).unwrap().insert(rec.clone()).unwrap();
            assert_eq!(key, Key::Int(*next), "auto keys follow the model");
            let mut rec = rec;
            rec["id"] = json!(*next);
            rows.insert(key.to_string(), rec);
            *next += 1;
        }
        Op::InsertKeyed(t, k, v) => {
            let name = NAMES[usize::from(t) % 3];
            let Some((pk, rows, next)) = model.tables.get_mut(name) else {
                return;
            };
            let (key, kv) = if pk == "sk" {
                (Key::from(format!("k{k}")), json!(format!("k{k}")))
            } else {
                (Key::Int(i64::from(k)), json!(k))
            };
            let rec = json!({pk.as_str(): kv, "w": v});
            let r = db.table(name).unwrap().insert(rec.clone());
            assert_eq!(r.is_ok(), !rows.contains_key(&key.to_string()));
            if r.is_ok() {
                rows.insert(key.to_string(), rec);
                if let Key::Int(i) = key {
                    *next = (*next).max(i + 1);
                }
            }
        }
        Op::Update(t, k, v) | Op::Upsert(t, k, v) => {
            let name = NAMES[usize::from(t) % 3];
            let Some((pk, rows, next)) = model.tables.get_mut(name) else {
                return;
            };
            let (key, kv) = if pk == "sk" {
                (Key::from(format!("k{k}")), json!(format!("k{k}")))
            } else {
                (Key::Int(i64::from(k % 32)), json!(k % 32))
            };
            let patch = json!({"u": v});
            let table = db.table(name).unwrap();
            if matches!(op, Op::Update(..)) {
                let r = table.update(key.clone(), patch.clone());
                assert_eq!(r.is_ok(), rows.contains_key(&key.to_string()));
                if let Some(rec) = rows.get_mut(&key.to_string()) {
                    merge(rec, patch.as_object().unwrap());
                }
            } else {
                let mut rec = patch.clone();
                rec[pk.as_str()] = kv;
                table.upsert(rec.clone()).unwrap();
                match rows.get_mut(&key.to_string()) {
                    Some(old) => merge(old, rec.as_object().unwrap()),
                    None => {
                        rows.insert(key.to_string(), rec);
                        if let Key::Int(i) = key {
                            *next = (*next).max(i + 1);
                        }
                    }
                }
            }
        }
        Op::Delete(t, k) => {
            let name = NAMES[usize::from(t) % 3];
            let Some((pk, rows, _)) = model.tables.get_mut(name) else {
                return;
            };
            let key = if pk == "sk" {
                Key::from(format!("k{k}"))
            } else {
                Key::Int(i64::from(k % 32))
            };
            let removed = db.table(name).unwrap().delete(key.clone()).unwrap();
            assert_eq!(removed, rows.remove(&key.to_string()).is_some());
        }
        Op::Full | Op::Delta | Op::Notify => unreachable!(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn restore_matches_the_model_at_every_backup_point(ops in proptest::collection::vec(op(), 1..50)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async move {
            let tmp = tempfile::tempdir().unwrap();
            let db = DictDB::new();
            let mut model = Model::default();
            let m = BackupManager::start(
                &db,
                BackupConfig::new(tmp.path())
                    .incremental(true)
                    .max_deltas_before_full(3)
                    .backup_interval(Duration::from_secs(3600))
                    .min_backup_interval(Duration::from_secs(2)),
            ).await
            .unwrap();
            let mut events = m.subscribe();
            // (backup cut, model state at that cut)
            let mut points: Vec<(u64, State)> = Vec::new();
            for op in &ops {
                match op {
                    Op::Full => points.push((m.backup_full().await.unwrap().seq, model.state())),
                    Op::Delta => {
                        if let Some(i) = m.backup_delta().await.unwrap().info() {
                            points.push((i.seq, model.state()));
                        }
                    }
                    Op::Notify => {
                        while events.try_recv().is_ok() {} // only this backup's event counts
                        m.notify_change();
                        // Past the debounce window: the deferred backup fires
                        // (or is skipped when nothing changed: no event then).
                        tokio::time::advance(Duration::from_secs(3)).await;
                        let completed = tokio::time::timeout(Duration::from_secs(1), async {
                            loop {
                                match events.recv().await.unwrap() {
                                    BackupEvent::Completed(i) => return i.seq,
                                    BackupEvent::Failed { error, .. } => panic!("{error}"),
                                    _ => {}
                                }
                            }
                        })
                        .await;
                        if let Ok(seq) = completed {
                            points.push((seq, model.state()));
                        }
                    }
                    data => apply(&db, &mut model, data),
                }
                assert_eq!(common::table_map(&db), model.state());
            }
            m.stop().await.unwrap();
            for (seq, expected) in points {
                let r = Restore::from_dir(tmp.path()).unwrap().until_seq(seq).run().await.unwrap();
                assert_eq!(r.seq, Some(seq));
                assert_eq!(common::table_map(&r.db), expected, "restore at {}", seq);
            }
        });
    }
}
