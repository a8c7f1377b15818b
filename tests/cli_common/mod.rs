//! Helpers for the tests of the `dictdb-backup` command: running it as a
//! real process, and backup directories written by the real manager.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use dictdb::{BackupConfig, BackupInfo, BackupManager, DictDB};
use serde_json::{json, Value};

/// What a run of the command printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self:#?}"))
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }

    /// Asserts the exit code and that stderr mentions `needle`.
    pub fn fails(&self, code: i32, needle: &str) -> &Self {
        assert_eq!(self.code, code, "expected exit {code}: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr should mention {needle:?}: {self:#?}"
        );
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }
}

/// Runs the command with `args`.
pub fn cli<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(env!("CARGO_BIN_EXE_dictdb-backup")).args(args))
}

/// Runs a prepared command.
pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run dictdb-backup");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `args` as `OsStr`s, for mixing paths and literals.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => { vec![$(::std::ffi::OsStr::new($a)),*] };
}

pub type Tables = BTreeMap<String, BTreeMap<String, Value>>;

/// A backup directory holding one chain (full + 2 deltas) and a foreign file.
pub struct Chain {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub db: DictDB,
    pub full: BackupInfo,
    pub d1: BackupInfo,
    pub d2: BackupInfo,
    /// The database as it was when the first delta was cut.
    pub at_d1: Tables,
}

/// A value that occurs only in the second delta, for damaging it.
pub const MARKER: &str = "123456789";

/// The chain: 5 users; d1 changes user 2, adds user 6, deletes user 3; d2
/// creates table `events` (2 records) and changes user 1.
pub async fn make_chain() -> Chain {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 1..=5 {
        users.insert(crate::common::workload_record(i)).unwrap();
    }
    let m = BackupManager::start(&db, BackupConfig::new(&dir).incremental(true))
        .await
        .unwrap();
    let full = m.backup_full().await.unwrap();

    users.update(2, json!({"age": 77})).unwrap();
    users.insert(json!({"name": "Frank"})).unwrap();
    users.delete(3).unwrap();
    let d1 = m.backup_delta().await.unwrap().info().unwrap().clone();
    let at_d1 = crate::common::table_map(&db);

    let events = db.create_table_with_key("events", "event_id").unwrap();
    events
        .insert(json!({"event_id": "ev-1", "payload": 123456789}))
        .unwrap();
    events
        .insert(json!({"event_id": "ev-2", "type": "click"}))
        .unwrap();
    users.update(1, json!({"active": true})).unwrap();
    let d2 = m.backup_delta().await.unwrap().info().unwrap().clone();
    m.stop().await.unwrap();

    std::fs::write(dir.join("notes.txt"), "not a backup").unwrap();
    Chain {
        tmp,
        dir,
        db,
        full,
        d1,
        d2,
        at_d1,
    }
}

/// Two chains: `full1 d1 full2 d2 d3` (one record each step).
pub struct TwoChains {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub files: Vec<BackupInfo>,
}

pub async fn make_two_chains() -> TwoChains {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let db = DictDB::new();
    let t = db.create_table("items").unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(&dir).incremental(true))
        .await
        .unwrap();
    let mut files = Vec::new();
    for (i, full) in [true, false, true, false, false].into_iter().enumerate() {
        t.insert(json!({"n": i, "note": format!("step {i} {MARKER}")}))
            .unwrap();
        let info = if full {
            m.backup_full().await.unwrap()
        } else {
            m.backup_delta().await.unwrap().info().unwrap().clone()
        };
        files.push(info);
    }
    m.stop().await.unwrap();
    TwoChains { tmp, dir, files }
}

/// Changes one digit inside a record value of `file`: still valid JSON, its
/// header intact, but no longer what its checksum says.
pub fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(MARKER.len())
        .rposition(|w| w == MARKER.as_bytes())
        .expect("marker value in the file");
    let last = at + MARKER.len() - 1;
    bytes[last] = b'8';
    serde_json::from_slice::<Value>(&bytes).expect("still valid JSON");
    std::fs::write(file, bytes).unwrap();
}

/// The first line of `text` that mentions `name`.
pub fn line_of<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("no line mentions {name}:\n{text}"))
}

/// The `files` entry of a list/verify JSON report named `name`.
pub fn entry<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {report:#}"))
}

/// The names of `applied` in a restore JSON report.
pub fn applied(report: &Value) -> Vec<String> {
    report["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

/// Loads a restored file.
pub fn load(path: &Path) -> DictDB {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("msgpack") => dictdb::FileFormat::MessagePack,
        _ => dictdb::FileFormat::Json,
    };
    DictDB::load(path, format).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts that a `--json` run printed an error object whose exit code is
/// the process's, and text on stderr.
pub fn assert_json_error(run: &Run, kind: &str) -> Value {
    let v = run.json();
    assert_eq!(v["exit_code"], run.code, "{run:#?}");
    assert_eq!(v["error"]["kind"], kind, "{run:#?}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{run:#?}");
    assert!(run.stderr.contains("error"), "text on stderr too: {run:#?}");
    v
}
