//! `dictdb-backup` on compressed and encrypted stores: `--identity FILE`
//! for list, verify, restore, inspect and diff, and what each says without
//! one or with the wrong one.
#![cfg(feature = "encryption")]

mod cli_common;
mod common;

use std::path::{Path, PathBuf};

use cli_common::*;
use dictdb::encryption::Identity;
use dictdb::{BackupConfig, BackupManager, Compression, DictDB};
use serde_json::json;

struct Encrypted {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    db: DictDB,
    files: Vec<String>,
    key: PathBuf,
    other_key: PathBuf,
}

fn key_file(dir: &Path, name: &str, id: &Identity) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "# created by a test\n# public key: {}\n{}\n",
            id.to_public(),
            id.to_secret_string()
        ),
    )
    .unwrap();
    path
}

async fn encrypted_chain() -> Encrypted {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let id = Identity::generate();
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 1..=5 {
        users.insert(common::workload_record(i)).unwrap();
    }
    let m = BackupManager::start(
        &db,
        BackupConfig::new(&dir)
            .incremental(true)
            .compression(Compression::zstd())
            .encrypt_to([id.to_public()]),
    )
    .await
    .unwrap();
    let mut files = vec![m.backup_full().await.unwrap().file];
    users.update(2, json!({"age": 77})).unwrap();
    files.push(m.backup_delta().await.unwrap().info().unwrap().file.clone());
    m.stop().await.unwrap();
    let key = key_file(tmp.path(), "key.txt", &id);
    let other_key = key_file(tmp.path(), "other.txt", &Identity::generate());
    Encrypted {
        tmp,
        dir,
        db,
        files,
        key,
        other_key,
    }
}

#[tokio::test]
async fn every_reading_command_takes_an_identity() {
    let c = encrypted_chain().await;
    assert!(c.files.iter().all(|f| f.ends_with(".json.zst.age")));

    let text = cli(args!["list", &c.dir, "--identity", &c.key])
        .ok()
        .to_string();
    assert!(line_of(&text, &c.files[0]).contains("header ok"), "{text}");
    assert!(text.contains("chain (*)"), "{text}");

    let text = cli(args!["verify", &c.dir, "--identity", &c.key])
        .ok()
        .to_string();
    assert!(line_of(&text, &c.files[1]).contains("verified"), "{text}");

    let out = c.tmp.path().join("out.json");
    cli(args![
        "--identity",
        &c.key,
        "restore",
        &c.dir,
        "--out",
        &out
    ])
    .ok();
    assert_eq!(common::dump(&load(&out)), common::dump(&c.db));

    // A compressed output, by its name.
    let zout = c.tmp.path().join("out.msgpack.zst");
    cli(args![
        "restore",
        &c.dir,
        "--identity",
        &c.key,
        "--out",
        &zout
    ])
    .ok();
    let back = DictDB::load(&zout, dictdb::FileFormat::MessagePack).unwrap();
    assert_eq!(common::dump(&back), common::dump(&c.db));

    let text = cli(args![
        "inspect",
        &c.dir.join(&c.files[0]),
        "--identity",
        &c.key
    ])
    .ok()
    .to_string();
    assert!(text.contains("verified"), "{text}");

    let text = cli(args!["diff", &c.dir, &c.files[1], "--identity", &c.key])
        .ok()
        .to_string();
    assert!(text.contains("users changed: 2"), "{text}");
}

#[tokio::test]
async fn without_the_identity_each_command_says_why() {
    let c = encrypted_chain().await;
    // list still lists, from the names, and says the files are encrypted.
    let run = cli(args!["list", &c.dir]);
    let text = run.ok();
    assert!(line_of(text, &c.files[0]).contains("encrypted"), "{text}");
    let v = cli(args!["list", &c.dir, "--json"]).json();
    assert_eq!(entry(&v, &c.files[0])["status"], "encrypted");
    assert_eq!(entry(&v, &c.files[0])["encrypted"], true);

    let out = c.tmp.path().join("out.json");
    let run = cli(args!["restore", &c.dir, "--out", &out, "--json"]);
    assert_eq!(run.code, 2, "{run:#?}");
    let v = assert_json_error(&run, "no_identity");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--identity"));
    assert!(!out.exists());

    let run = cli(args![
        "restore",
        &c.dir,
        "--out",
        &out,
        "--identity",
        &c.other_key,
        "--json"
    ]);
    assert_eq!(run.code, 2, "{run:#?}");
    assert_json_error(&run, "wrong_identity");

    // Damage is exit 1, whatever the key.
    let full = c.dir.join(&c.files[0]);
    let mut bytes = std::fs::read(&full).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&full, bytes).unwrap();
    cli(args![
        "restore",
        &c.dir,
        "--out",
        &out,
        "--identity",
        &c.key
    ])
    .fails(1, "damaged");
    cli(args!["verify", &c.dir, "--identity", &c.key]).fails(1, "verify failed");

    // A bad identity file is named, and its key never printed.
    let bad = c.tmp.path().join("bad.txt");
    std::fs::write(&bad, "AGE-SECRET-KEY-1NOTAREALKEY\n").unwrap();
    let run = cli(args!["list", &c.dir, "--identity", &bad]);
    run.fails(2, "bad.txt");
    assert!(!run.stderr.contains("NOTAREALKEY"), "{run:#?}");
    cli(args![
        "list",
        &c.dir,
        "--identity",
        &c.tmp.path().join("none.txt")
    ])
    .fails(3, "no such file");
}
