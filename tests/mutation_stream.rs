//! The mutation stream (`DictDB::subscribe`) and snapshot consistency: one
//! event per committed change with gap-free sequence numbers, nothing for a
//! failed operation, `Lagged` for a slow subscriber, and snapshots that hold
//! exactly the changes up to their cut while a writer keeps writing.

mod common;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dictdb::{Change, DictDB, Key, Mutation, Record};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

/// Every event waiting in `rx`, checking that nothing was missed.
fn drain(rx: &mut Receiver<Mutation>) -> Vec<Mutation> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(m) => out.push(m),
            Err(TryRecvError::Empty) => return out,
            Err(e) => panic!("unexpected receive error: {e:?}"),
        }
    }
}

/// A compact description of an event, for whole-sequence comparisons.
fn describe(m: &Mutation) -> (String, String) {
    let what = match &m.change {
        Change::Insert { key, record } => format!("insert {key} {}", record.to_json_string()),
        Change::Update { key, record } => format!("update {key} {}", record.to_json_string()),
        Change::Delete { key } => format!("delete {key}"),
        Change::TableCreated { primary_key } => format!("create {primary_key}"),
        Change::TableDropped => "drop".to_string(),
        other => format!("{other:?}"),
    };
    (m.table.to_string(), what)
}

fn assert_consecutive(events: &[Mutation], first: u64) {
    for (i, m) in events.iter().enumerate() {
        assert_eq!(m.seq, first + i as u64, "event #{i}: {m:?}");
    }
}

fn s(table: &str, what: &str) -> (String, String) {
    (table.to_string(), what.to_string())
}

#[test]
fn one_event_per_committed_change() {
    let db = DictDB::new();
    let mut rx = db.subscribe();
    let users = db.create_table("users").unwrap();
    users.insert(json!({"name": "a"})).unwrap();
    users.update(1, json!({"age": 3})).unwrap();
    users.upsert(json!({"id": 1, "name": "b"})).unwrap();
    users.upsert(json!({"id": 7})).unwrap();
    users
        .insert_many([json!({"n": 1}), json!({"id": "k"}), json!({"n": 2})])
        .unwrap();
    assert_eq!(
        users
            .update_where(|r| r.get("n").is_some(), json!({"m": true}))
            .unwrap(),
        2
    );
    assert!(users.delete(7).unwrap());
    assert!(!users.delete(7).unwrap(), "no event for a missing key");
    assert_eq!(users.delete_where(|r| r["m"] == true).unwrap(), 2);
    assert_eq!(users.update_where(|_| false, json!({"x": 1})).unwrap(), 0);
    assert_eq!(users.delete_where(|_| false).unwrap(), 0);
    let events = db.create_table_with_key("events", "event_id").unwrap();
    events.insert(json!({"event_id": "e"})).unwrap();
    db.drop_table("users").unwrap();

    let got = drain(&mut rx);
    assert_consecutive(&got, 1);
    assert_eq!(got.last().unwrap().seq, db.seq());
    let got: Vec<_> = got.iter().map(describe).collect();
    assert_eq!(
        got,
        [
            s("users", "create id"),
            s("users", r#"insert 1 {"name":"a","id":1}"#),
            s("users", r#"update 1 {"name":"a","id":1,"age":3}"#),
            s("users", r#"update 1 {"name":"b","id":1,"age":3}"#),
            s("users", r#"insert 7 {"id":7}"#),
            s("users", r#"insert 8 {"n":1,"id":8}"#),
            s("users", r#"insert "k" {"id":"k"}"#),
            s("users", r#"insert 9 {"n":2,"id":9}"#),
            s("users", r#"update 8 {"n":1,"id":8,"m":true}"#),
            s("users", r#"update 9 {"n":2,"id":9,"m":true}"#),
            s("users", "delete 7"),
            s("users", "delete 8"),
            s("users", "delete 9"),
            s("events", "create event_id"),
            s("events", r#"insert "e" {"event_id":"e"}"#),
            s("users", "drop"),
        ]
    );
}

#[test]
fn event_records_are_the_records_as_they_now_stand() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let mut rx = db.subscribe();
    t.insert(json!({"a": 1})).unwrap();
    t.update(1, json!({"b": [1, 2]})).unwrap();
    let got = drain(&mut rx);
    let snap = db.snapshot();
    let stored = snap.table("t").unwrap().get(&Key::Int(1)).unwrap();
    match &got[1].change {
        Change::Update { key, record } => {
            assert_eq!(key, &Key::Int(1));
            assert_eq!(record, stored);
            assert_eq!(record.to_value(), json!({"a": 1, "id": 1, "b": [1, 2]}));
            assert_eq!(record.get("b"), Some(json!([1, 2])));
        }
        other => panic!("expected an update, got {other:?}"),
    }
    match &got[0].change {
        Change::Insert { key, record } => {
            assert_eq!(key, &Key::Int(1));
            assert_eq!(record.to_value(), json!({"a": 1, "id": 1}));
        }
        other => panic!("expected an insert, got {other:?}"),
    }
    assert!(got.iter().all(|m| &*m.table == "t"));
}

#[test]
fn failed_operations_publish_nothing() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"id": 1})).unwrap();
    let mut rx = db.subscribe();
    let seq = db.seq();

    assert!(db.create_table("t").is_err());
    assert!(db.create_table("a/b").is_err());
    assert!(db.drop_table("nope").is_err());
    assert!(t.insert(json!({"id": 1})).is_err());
    assert!(t.insert(json!([1])).is_err());
    assert!(t.insert(json!({"id": 1.5})).is_err());
    assert!(t
        .insert_many([json!({"id": 2}), json!({"id": 3}), json!({"id": 2})])
        .is_err());
    assert!(t.insert_many([json!({"id": 2}), json!(null)]).is_err());
    assert!(t.update(5, json!({"x": 1})).is_err());
    assert!(t.update(1, json!({"id": 2})).is_err());
    assert!(t.update(1, json!("x")).is_err());
    assert!(t.update_where(|_| true, json!({"id": 9})).is_err());
    assert!(t.upsert(json!({"id": true})).is_err());
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        t.update_where(|_| panic!("on purpose"), json!({"x": 1}))
    }));
    assert!(panicked.is_err());
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        t.delete_where(|_| panic!("on purpose"))
    }));
    assert!(panicked.is_err());
    let dropped = db.create_table("gone").unwrap();
    db.drop_table("gone").unwrap();
    assert!(dropped.insert(json!({})).is_err());

    // Only the create and drop of "gone" were published.
    let got = drain(&mut rx);
    assert_eq!(
        got.iter().map(describe).collect::<Vec<_>>(),
        [s("gone", "create id"), s("gone", "drop")]
    );
    assert_consecutive(&got, seq + 1);
    assert_eq!(db.seq(), seq + 2);
    assert_eq!(t.len().unwrap(), 1);
}

#[test]
fn insert_many_publishes_one_event_per_record_in_order() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let mut rx = db.subscribe();
    let keys = t.insert_many((0..100).map(|i| json!({"i": i}))).unwrap();
    let got = drain(&mut rx);
    assert_eq!(got.len(), 100);
    assert_consecutive(&got, 2);
    for (m, k) in got.iter().zip(&keys) {
        match &m.change {
            Change::Insert { key, .. } => assert_eq!(key, k),
            other => panic!("expected an insert, got {other:?}"),
        }
    }
}

#[test]
fn subscribers_see_only_later_changes_and_all_see_the_same() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({})).unwrap();
    // No subscriber yet: the changes still take sequence numbers.
    assert_eq!(db.seq(), 2);
    let mut a = db.subscribe();
    let mut b = db.clone().subscribe();
    t.insert(json!({})).unwrap();
    db.clone().table("t").unwrap().delete(1).unwrap();
    let ga = drain(&mut a);
    let gb = drain(&mut b);
    assert_consecutive(&ga, 3);
    assert_eq!(
        ga.iter().map(describe).collect::<Vec<_>>(),
        gb.iter().map(describe).collect::<Vec<_>>()
    );
    assert_eq!(ga.len(), 2);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_lagged() {
    let db = DictDB::with_event_capacity(4);
    let mut rx = db.subscribe();
    let t = db.create_table("t").unwrap();
    for i in 0..10 {
        t.insert(json!({"i": i})).unwrap();
    }
    // 11 events in a channel of 4: the oldest 7 are gone.
    match rx.recv().await {
        Err(RecvError::Lagged(n)) => assert_eq!(n, 7),
        other => panic!("expected Lagged, got {other:?}"),
    }
    // The stream goes on with the newest events, gap-free from there.
    let mut rest = Vec::new();
    for _ in 0..4 {
        rest.push(rx.recv().await.unwrap());
    }
    assert_consecutive(&rest, 8);
    assert_eq!(rest.last().unwrap().seq, db.seq());
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

    // A subscriber that keeps up never lags, even with a tiny channel.
    let mut rx = db.subscribe();
    for i in 0..20 {
        t.insert(json!({"j": i})).unwrap();
        let m = rx.recv().await.unwrap();
        assert_eq!(m.seq, db.seq());
    }
    // A capacity of 0 is raised to 1.
    let tiny = DictDB::with_event_capacity(0);
    let mut rx = tiny.subscribe();
    tiny.create_table("x").unwrap();
    assert_eq!(rx.recv().await.unwrap().seq, 1);
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

/// Runs `write(i)` for i = 0, 1, ... on another thread until `stop`, and
/// hands back the thread. Waits until the writer has started so snapshots
/// overlap with writes.
fn spawn_writer(
    db: &DictDB,
    stop: &Arc<AtomicBool>,
    limit: u64,
    write: impl Fn(u64) + Send + 'static,
) -> std::thread::JoinHandle<u64> {
    let stop = Arc::clone(stop);
    let start = db.seq();
    let handle = std::thread::spawn(move || {
        let mut i = 0;
        while i < limit && !stop.load(Ordering::Relaxed) {
            write(i);
            i += 1;
        }
        i
    });
    while db.seq() < start + 10 && !handle.is_finished() {
        std::thread::yield_now();
    }
    handle
}

#[test]
fn snapshot_holds_exactly_the_changes_up_to_its_seq() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    let created_at = db.seq();
    let stop = Arc::new(AtomicBool::new(false));
    let tw = t.clone();
    let writer = spawn_writer(&db, &stop, 200_000, move |i| {
        tw.insert(json!({"i": i})).unwrap();
    });

    let mut last_seq = 0;
    let mut distinct = 0;
    // Until 500 different cuts were seen (or the writer is done): no timing
    // assumption about how the two threads interleave.
    while distinct < 500 && !writer.is_finished() {
        let snap = db.snapshot();
        let table = snap.table("t").unwrap();
        let n = table.len() as u64;
        // Only inserts after the creation: one record per sequence number.
        assert_eq!(n, snap.seq() - created_at, "snapshot at {}", snap.seq());
        // And they are exactly keys 1..=n: every change up to the cut is in,
        // none above it.
        let n = n as i64;
        if n > 0 {
            assert!(table.get(&Key::Int(1)).is_some());
            let last = table.get(&Key::Int(n)).expect("the newest record is in");
            assert_eq!(last.get("i"), Some(json!(n - 1)));
        }
        assert!(
            table.get(&Key::Int(n + 1)).is_none(),
            "nothing above the cut"
        );
        assert!(snap.seq() >= last_seq, "snapshots go forward");
        if snap.seq() > last_seq {
            distinct += 1;
        }
        last_seq = snap.seq();
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(distinct > 1, "the writer ran during the snapshots");

    let snap = db.snapshot();
    assert_eq!(snap.table("t").unwrap().len() as u64, written);
    assert_eq!(snap.seq(), created_at + written);
}

/// Applies one mutation to a model of the database.
fn apply(model: &mut BTreeMap<String, BTreeMap<Key, Record>>, m: &Mutation) {
    let table = m.table.to_string();
    match &m.change {
        Change::TableCreated { .. } => {
            model.insert(table, BTreeMap::new());
        }
        Change::TableDropped => {
            model.remove(&table);
        }
        Change::Insert { key, record } | Change::Update { key, record } => {
            model
                .get_mut(&table)
                .expect("change in a known table")
                .insert(key.clone(), record.clone());
        }
        Change::Delete { key } => {
            model
                .get_mut(&table)
                .expect("change in a known table")
                .remove(key);
        }
        other => panic!("unknown change {other:?}"),
    }
}

#[test]
fn snapshots_match_the_replayed_stream_under_a_mixed_writer() {
    // The default channel (65,536 events) holds everything this writer does.
    const OPS: u64 = 12_000;
    let db = DictDB::new();
    let mut rx = db.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    let wdb = db.clone();
    let writer = spawn_writer(&db, &stop, OPS, move |i| {
        let t = match wdb.table("t") {
            Ok(t) => t,
            Err(_) => wdb.create_table("t").unwrap(),
        };
        let key = (i % 64) as i64;
        match i % 5 {
            0 | 1 => {
                let _ = t.upsert(json!({"id": key, "v": i}));
            }
            2 => {
                let _ = t.update(key, json!({"w": i}));
            }
            3 => {
                let _ = t.delete(key);
            }
            _ => {
                if i % 1000 == 4 {
                    wdb.drop_table("t").unwrap();
                    wdb.create_table("t").unwrap();
                } else {
                    let _ = t.insert(json!({"v": i}));
                }
            }
        }
    });
    let mut snaps = Vec::new();
    while !writer.is_finished() && snaps.len() < 5_000 {
        snaps.push(db.snapshot());
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    snaps.push(db.snapshot());

    let events = drain(&mut rx);
    assert_consecutive(&events, 1);
    assert_eq!(events.last().unwrap().seq, db.seq());

    let mut model = BTreeMap::new();
    let mut next = events.iter().peekable();
    let mut checked = 0;
    for snap in &snaps {
        while let Some(m) = next.next_if(|m| m.seq <= snap.seq()) {
            apply(&mut model, m);
        }
        let actual: BTreeMap<String, BTreeMap<Key, Record>> = snap
            .tables()
            .iter()
            .map(|t| {
                (
                    t.name().to_string(),
                    t.iter().map(|(k, r)| (k.clone(), r.clone())).collect(),
                )
            })
            .collect();
        assert_eq!(actual, model, "snapshot at seq {}", snap.seq());
        checked += 1;
    }
    assert!(next.next().is_none());
    assert!(checked > 1);
    // The final state, as JSON, agrees as well.
    let final_model: Value = model
        .iter()
        .map(|(name, recs)| {
            (
                name.clone(),
                json!({"primary_key": "id", "records": recs.values().map(Record::to_value).collect::<Vec<_>>()}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert_eq!(common::dump(&db), final_model);
}

#[test]
fn a_snapshot_does_not_change_when_the_database_does() {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    for i in 0..100 {
        t.insert(json!({"i": i})).unwrap();
    }
    let before = db.snapshot();
    let dump_before: Vec<String> = before
        .table("t")
        .unwrap()
        .iter()
        .map(|(_, r)| r.to_json_string())
        .collect();
    t.update(1, json!({"changed": true})).unwrap();
    t.delete(2).unwrap();
    t.insert(json!({"new": 1})).unwrap();
    db.drop_table("t").unwrap();
    db.create_table("u").unwrap();

    assert_eq!(before.seq(), 101);
    assert_eq!(before.tables().len(), 1);
    assert!(before.table("u").is_none());
    let after: Vec<String> = before
        .table("t")
        .unwrap()
        .iter()
        .map(|(_, r)| r.to_json_string())
        .collect();
    assert_eq!(after, dump_before);
    assert_eq!(before.record_count(), 100);
}
