//! `dictdb-backup follow`, run as a real process: `--once` on sound,
//! damaged, empty and missing stores; and following a writer live, one JSON
//! line per file applied, until SIGTERM.

mod cli_common;
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use cli_common::*;
use dictdb::{BackupConfig, BackupManager, DictDB};
use serde_json::{json, Value};

#[tokio::test]
async fn once_prints_where_a_replica_of_the_store_stands() {
    let c = make_chain().await;
    let text = cli(args!["follow", &c.dir, "--once"]).ok().to_string();
    let line = line_of(&text, "following");
    assert!(line.contains(&c.d2.file), "{text}");
    assert!(
        line.contains(&format!("{} + 2 deltas", c.full.file)),
        "{text}"
    );
    assert!(line.ends_with("current"), "{text}");

    let run = cli(args!["follow", &c.dir, "--once", "--json"]);
    let v: Value = serde_json::from_str(run.ok().trim()).unwrap();
    assert_eq!(v["event"], "following");
    assert_eq!(v["cut"]["file"], c.d2.file.as_str());
    assert_eq!(v["cut"]["seq"], c.d2.seq);
    assert_eq!(v["lag"]["files"], 0);
    assert!(v["problem"].is_null());
}

#[tokio::test]
async fn once_on_a_damaged_delta_stops_at_the_cut_before_it() {
    let c = make_chain().await;
    damage(&c.dir.join(&c.d2.file));
    let run = cli(args!["follow", &c.dir, "--once", "--json"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["cut"]["file"], c.d1.file.as_str());
    assert_eq!(v["problem"]["file"], c.d2.file.as_str());
    assert!(v["problem"]["error"].as_str().unwrap().contains("checksum"));
    assert_eq!(v["lag"]["files"], 1);
    let run = cli(args!["follow", &c.dir, "--once"]);
    assert_eq!(run.code, 1);
    assert!(
        line_of(&run.stdout, "STOPPED").contains(&c.d2.file),
        "{run:#?}"
    );
}

#[test]
fn once_without_backups_and_on_missing_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let run = cli(args!["follow", tmp.path(), "--once"]);
    assert_eq!(run.code, 4, "{run:#?}");
    assert!(run.stdout.contains("no full backup yet"), "{run:#?}");
    cli(args!["follow", &tmp.path().join("nope"), "--once"]).fails(3, "no such directory");
    cli(args!["follow", tmp.path(), "--interval", "0s"]).fails(2, "--interval");
    cli(args!["follow", tmp.path(), "--interval", "soon"]).fails(2, "invalid duration");
}

/// Reads JSON lines from the child until one satisfies `want`.
fn next_line(lines: &mut impl Iterator<Item = std::io::Result<String>>, want: &str) -> Value {
    for line in lines {
        let line = line.expect("stdout line");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        if v["event"] == want {
            return v;
        }
    }
    panic!("the command ended before a {want} line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_writer_live_and_ends_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    users.insert(json!({"name": "Ada"})).unwrap();
    let m = BackupManager::start(&db, BackupConfig::new(&dir).incremental(true))
        .await
        .unwrap();
    let full = m.backup_full().await.unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
        .args(["follow", "--json", "--interval", "50ms"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_line(&mut lines, "following");
    assert_eq!(first["cut"]["file"], full.file.as_str());

    users.insert(json!({"name": "Grace"})).unwrap();
    users.update(1, json!({"name": "Ada L."})).unwrap();
    let d = m.backup_delta().await.unwrap().info().unwrap().clone();
    let applied = next_line(&mut lines, "applied");
    assert_eq!(applied["file"], d.file.as_str());
    assert_eq!(applied["affected"], 2);
    assert_eq!(applied["seq"], json!({"from": full.seq, "to": d.seq}));
    assert_eq!(applied["lag"]["files"], 0);

    users.delete(2).unwrap();
    let f2 = m.backup_full().await.unwrap();
    let switched = next_line(&mut lines, "chain_switched");
    assert_eq!(switched["to"], f2.file.as_str());
    assert_eq!(switched["from"], full.file.as_str());
    assert_eq!(switched["affected"], 1);
    m.stop().await.unwrap();

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM ends it cleanly");
}

/// `--key-field` (and `--allow-unverified`) work for `follow` as for a
/// restore: the original's store with a table created after its last full
/// backup is followed to its end given the key field, and stops before the
/// delta that changes the table without it, saying how to give it.
#[test]
fn once_follows_the_original_deltas_of_a_new_table_given_its_key_field() {
    let tmp = common::chain_with_a_table_created_after_the_full_backup();
    let run = cli(args!["follow", tmp.path(), "--once", "--json"]);
    assert_eq!(run.code, 1, "{run:#?}");
    let v: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["problem"]["file"], "dictdb_delta_1795682695_000000.json");
    assert!(
        v["problem"]["error"]
            .as_str()
            .unwrap()
            .contains("--key-field audit=FIELD"),
        "{v:#}"
    );
    let run = cli(args![
        "follow",
        tmp.path(),
        "--once",
        "--json",
        "--key-field",
        "audit=audit_id"
    ]);
    let v: Value = serde_json::from_str(run.ok().trim()).unwrap();
    assert_eq!(v["cut"]["file"], "dictdb_delta_1795682696_000000.json");
    assert!(v["problem"].is_null(), "{v:#}");
}
