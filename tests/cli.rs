//! The `dictdb-backup` command, run as a real process on real directories:
//! help and exit codes, list (headers only), verify (per chain), inspect.
//! Restore is in `cli_restore.rs`, diff and prune in `cli_diff_prune.rs`,
//! object storage in `cli_s3.rs`.

mod cli_common;
mod common;

use std::ffi::OsStr;

use cli_common::*;
use serde_json::{json, Value};

#[test]
fn help_describes_the_command_each_subcommand_and_the_exit_codes() {
    let help = cli(["--help"]);
    let text = help.ok();
    assert!(
        text.starts_with("List, verify, restore, inspect, diff, prune and follow the backups"),
        "{text}"
    );
    assert!(
        !text.contains("An in-memory, dict-style database"),
        "{text}"
    );
    for code in [
        "0  done",
        "1  backup data is damaged",
        "2  usage",
        "3  not found",
        "4  no backups",
        "5  a --lenient restore",
    ] {
        assert!(text.contains(code), "{code}: {text}");
    }
    for (sub, says) in [
        ("list", "Reads only each file's header"),
        ("verify", "every checksum checked"),
        ("restore", "--dry-run does all the reading"),
        ("inspect", "upsert and delete counts"),
        ("diff", "what that file did"),
        ("prune", "--keep-last"),
    ] {
        assert!(text.contains(&format!("  {sub} ")), "{sub}: {text}");
        let h = cli([sub, "--help"]);
        let h = h.ok();
        assert!(h.contains(says), "{sub} --help should say {says:?}: {h}");
        assert!(h.contains("Exit codes:"), "{sub}: {h}");
    }
    cli(Vec::<&str>::new()).fails(2, "Usage");
    cli(["frobnicate"]).fails(2, "frobnicate");
}

#[test]
fn missing_and_empty_directories_are_told_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    for sub in ["list", "verify"] {
        cli([OsStr::new(sub), missing.as_os_str()]).fails(3, "no such directory");
        cli([OsStr::new(sub), tmp.path().as_os_str()]).fails(4, "no backups here");
    }
    cli(args!["restore", &missing, "--dry-run"]).fails(3, "no such directory");
    cli(args!["restore", tmp.path(), "--dry-run"]).fails(4, "no backups here");
    std::fs::write(tmp.path().join("notes.txt"), "x").unwrap();
    cli(args!["list", tmp.path()]).fails(
        4,
        "its one file is not a backup (backups are named dictdb_backup_*",
    );
    let file = tmp.path().join("notes.txt");
    cli(args!["list", &file]).fails(2, "is a file, not a backup directory");
}

#[tokio::test]
async fn list_reads_headers_only_and_marks_the_restore_chain() {
    let c = make_chain().await;
    // Damage past the header: list cannot see it (it reads headers only),
    // and says checksums were not checked; verify sees it.
    damage(&c.dir.join(&c.d2.file));
    let out = cli(args!["list", &c.dir]);
    let text = out.ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(text.contains("checksums were not checked"), "{text}");
    assert!(text.contains("run `dictdb-backup verify"), "{text}");
    for f in [&c.full, &c.d1, &c.d2] {
        let line = line_of(text, &f.file);
        assert!(line.starts_with('*'), "{line}");
        assert!(
            line.contains("header ok") && !line.contains("DAMAGED"),
            "{line}"
        );
    }
    let full = line_of(text, &c.full.file);
    assert!(
        full.contains(" full ") && full.contains("5 records"),
        "{full}"
    );
    assert!(full.contains(&format!(" 0..{} ", c.full.seq)), "{full}");
    assert!(full.contains(" users "), "table names: {full}");
    assert!(
        full.contains(" B ") || full.contains("KiB"),
        "human size: {full}"
    );
    let d2 = line_of(text, &c.d2.file);
    assert!(
        d2.contains("3 changes") && d2.contains("events,users"),
        "{d2}"
    );
    let foreign = line_of(text, "notes.txt");
    assert!(
        !foreign.starts_with('*') && foreign.contains("ignored"),
        "{foreign}"
    );
    assert!(
        text.contains(&format!("restores to sequence {}", c.d2.seq)),
        "{text}"
    );
    assert_eq!(cli(args!["verify", &c.dir]).code, 1);

    let v = cli(args!["list", &c.dir, "--json"]).json();
    assert_eq!(v["checksums_checked"], false);
    assert_eq!(
        v["chain"]["files"],
        json!([c.full.file, c.d1.file, c.d2.file])
    );
    assert_eq!(v["chain"]["seq"], c.d2.seq);
    let d = entry(&v, &c.d2.file);
    assert_eq!((&d["status"], &d["in_chain"]), (&json!("ok"), &json!(true)));
    assert_eq!(d["changes"], 3);
    assert_eq!(d["seq"], json!({"from": c.d1.seq, "to": c.d2.seq}));
    assert_eq!(
        d["tables"],
        json!([{"name": "events", "upserts": 2, "deletes": 0},
               {"name": "users", "upserts": 1, "deletes": 0}])
    );
    assert_eq!(
        entry(&v, &c.full.file)["tables"],
        json!([{"name": "users", "records": 5}])
    );
    assert_eq!(entry(&v, "notes.txt")["status"], "ignored");

    // A damaged header is what list does see: the chain is broken there,
    // and `~` marks what a lenient restore would use.
    let d1 = c.dir.join(&c.d1.file);
    std::fs::write(&d1, &std::fs::read(&d1).unwrap()[..20]).unwrap();
    let out = cli(args!["list", &c.dir]);
    let text = out.ok();
    assert!(line_of(text, &c.d1.file).contains("DAMAGED"), "{text}");
    assert!(line_of(text, &c.full.file).starts_with('~'), "{text}");
    assert!(text.contains("chain: BROKEN"), "{text}");
}

#[tokio::test]
async fn verify_reports_each_chain_and_names_the_damaged_file() {
    let c = make_two_chains().await;
    let names: Vec<&str> = c.files.iter().map(|f| f.file.as_str()).collect();
    let out = cli(args!["verify", &c.dir]);
    let text = out.ok();
    assert!(
        text.contains(&format!("chain 1: {} + 1 delta: OK", names[0])),
        "{text}"
    );
    assert!(
        line_of(text, "chain 2:").contains("+ 2 deltas: OK")
            && line_of(text, "chain 2:").contains("[restore uses this chain]"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("OK"), "{text}");

    // Damage the old chain's delta: restore still works, verify fails.
    damage(&c.dir.join(names[1]));
    let out = cli(args!["verify", &c.dir]);
    out.fails(1, "verify failed");
    assert!(
        line_of(&out.stdout, "chain 1:").contains("BROKEN"),
        "{out:#?}"
    );
    assert!(line_of(&out.stdout, "chain 2:").contains("OK"), "{out:#?}");
    let problems = &out.stdout[out.stdout.find("FAILED").expect("FAILED")..];
    assert!(problems.contains(names[1]) && problems.contains("checksum mismatch"));
    assert!(line_of(&out.stdout, &format!("{}  ", names[1])).contains("DAMAGED"));

    let run = cli(args!["--json", "verify", &c.dir]);
    assert_eq!(run.code, 1);
    let v = run.json();
    assert_eq!(v["ok"], false);
    let chains = v["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 2);
    assert_eq!(
        (
            &chains[0]["ok"],
            &chains[0]["base"],
            &chains[0]["restore_uses"]
        ),
        (&json!(false), &json!(names[0]), &json!(false))
    );
    assert_eq!(chains[1]["ok"], true);
    assert_eq!(chains[1]["restore_uses"], true);
    assert_eq!(chains[1]["files"], json!(names[2..]));
    assert_eq!(chains[1]["seq"], c.files[4].seq);
    assert_eq!(v["problems"][0]["file"], names[1]);
    assert_eq!(entry(&v, names[1])["status"], "damaged");
    assert_eq!(entry(&v, names[2])["status"], "verified");
    assert_eq!(v["counts"]["bad"], 1);
}

#[tokio::test]
async fn inspect_shows_tables_counts_and_says_what_a_non_backup_is() {
    let c = make_chain().await;
    let out = cli(args!["inspect", &c.dir.join(&c.full.file)]);
    let text = out.ok();
    assert!(text.contains("kind:      full"), "{text}");
    assert!(
        text.contains(&format!("sequence:  0..{}", c.full.seq)),
        "{text}"
    );
    assert!(
        text.contains(&format!("verified ({})", c.full.checksum)),
        "{text}"
    );
    assert!(
        line_of(text, "  users")
            .split_whitespace()
            .eq(["users", "5"]),
        "{text}"
    );
    assert!(text.contains("records:   5"), "{text}");

    let out = cli(args!["inspect", &c.dir.join(&c.d1.file)]);
    let text = out.ok();
    assert!(
        text.contains("UPSERTS") && text.contains("DELETES"),
        "{text}"
    );
    // d1: user 2 updated, user 6 inserted, user 3 deleted.
    assert!(
        line_of(text, "  users")
            .split_whitespace()
            .eq(["users", "2", "1"]),
        "{text}"
    );
    assert!(
        text.contains("changes:   3 (2 upserts, 1 delete)"),
        "{text}"
    );

    let v = cli(args!["inspect", "--json", &c.dir.join(&c.d2.file)]).json();
    assert_eq!(v["kind"], "delta");
    assert_eq!(
        (&v["upserts"], &v["deletes"], &v["changes"]),
        (&json!(3), &json!(0), &json!(3))
    );
    assert_eq!(
        v["tables"][0],
        json!({"name": "events", "upserts": 2, "deletes": 0})
    );
    assert_eq!(v["status"], "verified");

    // Not a backup: said so, with what it looks like; never "unsupported file format ``".
    let notes = c.dir.join("notes.txt");
    let out = cli(args!["inspect", &notes]);
    out.fails(1, "not a dictdb backup file (a text file)");
    assert!(!out.stderr.contains("``"), "{}", out.stderr);
    let other = c.tmp.path().join("config.json");
    std::fs::write(&other, r#"{"listen": ":8080"}"#).unwrap();
    cli(args!["inspect", &other]).fails(1, "not a dictdb backup file (a JSON object)");
    let empty = c.tmp.path().join("empty.msgpack");
    std::fs::write(&empty, b"").unwrap();
    cli(args!["inspect", &empty]).fails(1, "(an empty file)");
    cli(args!["inspect", &c.dir]).fails(2, "is a directory");
    cli(args!["inspect", &c.dir.join("nope.json")]).fails(3, "no such file");
    #[cfg(unix)]
    {
        // Links that lead nowhere readable say so.
        let dangling = c.tmp.path().join("dictdb_delta_1795682694_999999.json");
        std::os::unix::fs::symlink(c.tmp.path().join("not-mounted"), &dangling).unwrap();
        cli(args!["inspect", &dangling]).fails(3, "a symbolic link whose target cannot be read");
        let to_dir = c.tmp.path().join("dictdb_delta_1795682694_999998.json");
        std::os::unix::fs::symlink(&c.dir, &to_dir).unwrap();
        cli(args!["inspect", &to_dir]).fails(2, "a symbolic link to a directory");
    }
    cli(args!["inspect", "s3://bucket/dictdb_backup_1_000001.json"]).fails(2, "local file");

    // --format overrides detection: a backup copied under another name.
    let copy = c.tmp.path().join("saved.bin");
    std::fs::copy(c.dir.join(&c.full.file), &copy).unwrap();
    cli(args!["inspect", &copy]).fails(1, "--format");
    let out = cli(args!["inspect", &copy, "--format", "json"]);
    assert!(out.ok().contains("records:   5"), "{out:#?}");
    cli(args!["inspect", &copy, "--format", "msgpack"]).fails(1, "not a dictdb backup file");
    cli(args!["inspect", &copy, "--format", "pickle"]).fails(2, "MessagePack");

    // A damaged backup: the report, DAMAGED, exit 1.
    damage(&c.dir.join(&c.d2.file));
    let out = cli(args!["inspect", &c.dir.join(&c.d2.file)]);
    out.fails(1, "checksum mismatch");
    assert!(out.stdout.contains("DAMAGED"), "{}", out.stdout);
}

#[test]
fn the_python_chain_lists_verifies_and_inspects_as_unverified() {
    let dir = common::python_fixture_dir();
    let backups = [
        "dictdb_backup_1795682694_728491.json",
        "dictdb_delta_1795682694_732481.json",
        "dictdb_delta_1795682694_736609.json",
        "dictdb_delta_1795682694_740524.json",
    ];
    let out = cli(args!["list", &dir]);
    let text = out.ok();
    for b in backups {
        let line = line_of(text, b);
        assert!(line.starts_with('*'), "{line}");
        assert!(line.contains("no checksum (Python original)"), "{line}");
        assert!(line.contains("2026-11-26T08:44:54."), "{line}");
    }
    let v = cli(args!["list", &dir, "--json"]).json();
    assert_eq!(v["chain"]["files"], json!(backups));
    assert_eq!(v["chain"]["seq"], Value::Null);
    assert_eq!(entry(&v, backups[1])["status"], "no_metadata");

    let out = cli(args!["verify", &dir]);
    let text = out.ok();
    assert!(text.contains("4 unverified"), "{text}");
    assert!(
        text.contains("OK (no sequence numbers: Python original)"),
        "{text}"
    );

    let out = cli(args!["inspect", &dir.join(backups[2])]);
    let text = out.ok();
    assert!(
        text.contains("kind:      delta") && text.contains("unverified"),
        "{text}"
    );
    assert!(
        text.contains("  events") && text.contains("  users"),
        "{text}"
    );
}

/// A table the original created after its last full backup exists only in
/// its deltas, without its key field: `restore` and `verify` refuse it by
/// name and say which option to give, accept it with `--key-field`, and
/// refuse a malformed option as a usage error.
#[test]
fn key_field_lets_a_table_only_the_original_deltas_hold_restore() {
    let tmp = common::python_fixture_copy();
    let delta = "dictdb_delta_1795682695_000000.json";
    std::fs::write(
        tmp.path().join(delta),
        r#"{"type": "delta", "timestamp": 1795682695.0, "tables": {
             "audit": {"upserts": [{"audit_id": "a-1", "what": "login"}], "deletes": []}}}"#,
    )
    .unwrap();
    let dir = tmp.path().to_path_buf();
    let out = tmp.path().join("restored").join("db.json");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let r = cli(args!["restore", &dir, "--out", &out]);
    r.fails(1, "--key-field audit=FIELD");
    assert!(r.stderr.contains(delta), "{r:#?}");
    let v = cli(args!["verify", &dir]);
    assert!(v.code == 1 && v.stdout.contains(delta), "{v:#?}");

    cli(args![
        "restore",
        &dir,
        "--out",
        &out,
        "--key-field",
        "audit=audit_id"
    ])
    .ok();
    let db = dictdb::DictDB::load(&out, dictdb::FileFormat::Json).unwrap();
    let audit = db.table("audit").unwrap();
    assert_eq!(audit.primary_key(), "audit_id");
    assert_eq!(audit.get("a-1").unwrap().unwrap()["what"], "login");
    cli(args!["verify", &dir, "--key-field", "audit=audit_id"]).ok();
    cli(args!["verify", &dir, "--key-field", "audit"]).fails(2, "TABLE=FIELD");
    // `diff` restores too, with the same options.
    cli(args!["diff", &dir, delta]).fails(1, "--key-field audit=FIELD");
    let d = cli(args!["diff", &dir, delta, "--key-field", "audit=audit_id"]);
    assert!(d.ok().contains("a-1"), "{d:#?}");
}
