//! The `metrics` feature: what the manager publishes through the `metrics`
//! facade, read back with metrics-util's debugging recorder.
#![cfg(feature = "metrics")]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use common::fault::FaultyStore;
use dictdb::{BackupConfig, BackupManager, DictDB};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;

/// (name, kind label) -> value.
fn read(recorder: &DebuggingRecorder) -> Vec<(String, Option<String>, DebugValue)> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let k = key.key();
            let kind = k
                .labels()
                .find(|l| l.key() == "kind")
                .map(|l| l.value().to_string());
            (k.name().to_string(), kind, value)
        })
        .collect()
}

fn value<'a>(
    all: &'a [(String, Option<String>, DebugValue)],
    name: &str,
    kind: Option<&str>,
) -> Option<&'a DebugValue> {
    all.iter()
        .find(|(n, k, _)| n == name && k.as_deref() == kind)
        .map(|(_, _, v)| v)
}

#[test]
fn counters_histograms_and_the_pending_gauge() {
    let recorder = DebuggingRecorder::new();
    // The actor runs on this thread: a current-thread runtime.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let db = DictDB::new();
        let users = db.create_table("users").unwrap();
        let store = FaultyStore::new(tmp.path());
        let m = BackupManager::start(
            &db,
            BackupConfig::with_store(Arc::new(store.clone())).incremental(true),
        )
        .await
        .unwrap();
        users.insert(json!({"n": 1})).unwrap();
        let full = m.backup_full().await.unwrap();
        users.insert(json!({"n": 2})).unwrap();
        users.insert(json!({"n": 3})).unwrap();
        m.backup_delta().await.unwrap();
        store.faults.create.store(true, Ordering::SeqCst);
        users.insert(json!({"n": 4})).unwrap();
        assert!(m.backup_delta().await.is_err());
        m.stop().await.unwrap();

        let all = read(&recorder);
        let written = "dictdb_backups_written_total";
        assert_eq!(
            value(&all, written, Some("full")),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            value(&all, written, Some("delta")),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(
            value(&all, "dictdb_backups_failed_total", Some("delta")),
            Some(&DebugValue::Counter(1))
        );
        match value(&all, "dictdb_backup_bytes", Some("full")) {
            Some(DebugValue::Histogram(v)) => assert_eq!(v[0].0, full.bytes as f64),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            value(&all, "dictdb_backup_duration_seconds", Some("delta")),
            Some(DebugValue::Histogram(v)) if v.len() == 1
        ));
        match value(&all, "dictdb_backup_changes_pending", None) {
            Some(DebugValue::Gauge(g)) => assert_eq!(g.0, 1.0, "the change of the failed delta"),
            other => panic!("{other:?}"),
        }
    });
}
