//! `dictdb-backup diff`, run as a real process, and `--json` with every
//! kind of error.

mod cli_common;
mod common;

use cli_common::*;
use serde_json::{json, Value};

/// The `tables` entry named `name` of a diff report.
fn table<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no table {name}: {v:#}"))
}

#[tokio::test]
async fn diff_says_what_a_delta_did() {
    let c = make_chain().await;
    // d1: user 2 changed, user 6 added, user 3 removed.
    let out = cli(args!["diff", &c.dir, &c.d1.file]);
    let text = out.ok();
    assert!(
        line_of(text, "from:").contains(&format!("before {}", c.d1.file)),
        "{text}"
    );
    assert!(
        line_of(text, "to:").contains(&format!("after {}", c.d1.file)),
        "{text}"
    );
    assert!(
        line_of(text, "  users ")
            .split_whitespace()
            .eq(["users", "1", "1", "1"]),
        "{text}"
    );
    assert!(
        text.contains("users added: 6") && text.contains("users removed: 3"),
        "{text}"
    );
    assert!(text.contains("users changed: 2"), "{text}");

    // d2: table events created with two records, user 1 changed; the same
    // file named by its path.
    let v = cli(args!["diff", "--json", &c.dir, &c.dir.join(&c.d2.file)]).json();
    assert_eq!(
        v["tables_created"],
        json!([{"name": "events", "primary_key": "event_id"}])
    );
    assert_eq!(v["from"]["seq"], c.d1.seq);
    assert_eq!(v["to"]["seq"], c.d2.seq);
    assert_eq!(v["to"]["files"], json!([c.full.file, c.d1.file, c.d2.file]));
    assert_eq!(
        table(&v, "events")["added"],
        json!({"count": 2, "keys": ["ev-1", "ev-2"]})
    );
    assert_eq!(
        table(&v, "users")["changed"],
        json!({"count": 1, "keys": [1]})
    );
    assert_eq!(table(&v, "users")["added"]["count"], 0);
    assert_eq!(v["totals"], json!({"added": 2, "changed": 1, "removed": 0}));

    // The first full backup: everything in it is new.
    let v = cli(args!["diff", "--json", &c.dir, &c.full.file]).json();
    assert_eq!(v["from"]["files"], json!([]));
    assert_eq!(table(&v, "users")["added"]["keys"], json!([1, 2, 3, 4, 5]));
}

#[tokio::test]
async fn diff_between_two_points_in_time_sequences_and_files() {
    let c = make_chain().await;
    let listing = cli(args!["list", &c.dir, "--json"]).json();
    let time = |f: &str| entry(&listing, f)["time"].as_str().unwrap().to_string();
    // From the full backup's time to d2's: both deltas together.
    let v = cli(args![
        "--json",
        "diff",
        &c.dir,
        &time(&c.full.file),
        &time(&c.d2.file)
    ])
    .json();
    assert_eq!(v["from"]["files"], json!([c.full.file]));
    assert_eq!(v["totals"], json!({"added": 3, "changed": 2, "removed": 1}));
    assert_eq!(table(&v, "users")["removed"]["keys"], json!([3]));
    // Same by sequence numbers, and to `latest` by default.
    let seq = format!("seq:{}", c.full.seq);
    let w = cli(args!["--json", "diff", &c.dir, &seq]).json();
    assert_eq!(w["to"]["point"], "latest");
    assert_eq!((&w["tables"], &w["totals"]), (&v["tables"], &v["totals"]));

    // A restored file against the newest state: what it is missing.
    let x = c.tmp.path().join("at-d1.json");
    cli(args![
        "restore",
        &c.dir,
        "-o",
        &x,
        "--until",
        &time(&c.d1.file)
    ])
    .ok();
    let out = cli(args!["diff", &c.dir, &x, "latest"]);
    let text = out.ok();
    assert!(
        text.contains("created table events (key event_id)"),
        "{text}"
    );
    assert!(
        text.contains("total: 2 records added, 1 changed, 0 removed"),
        "{text}"
    );
    let out = cli(args!["diff", &c.dir, &c.d2.file, &x]);
    assert!(
        out.ok().contains("dropped table events (2 records)"),
        "{out:#?}"
    );
    let out = cli(args!["diff", &c.dir, "latest", "latest"]);
    assert!(out.ok().contains("no changes"), "{out:#?}");

    // Points that are none of these.
    cli(args!["diff", &c.dir, "soon"]).fails(2, "not a backup file of");
    cli(args!["diff", &c.dir, "dictdb_delta_1_000001.json"]).fails(3, "no such backup file");
    cli(args!["diff", &c.dir, "seq:x"]).fails(2, "seq:N");
    cli(args!["diff", &c.dir, "2000-01-01"]).fails(4, "nothing was backed up before");
    // A damaged delta: diff cannot reach the state after it, and says why.
    damage(&c.dir.join(&c.d2.file));
    cli(args!["diff", &c.dir, &c.d2.file]).fails(1, "checksum mismatch");
}

#[tokio::test]
async fn json_errors_are_an_object_on_stdout_and_text_on_stderr() {
    let c = make_chain().await;
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let notes = c.dir.join("notes.txt");
    let x = tmp.path().join("x.json");
    let d2 = c.dir.join(&c.d2.file);
    let cases = [
        (args!["list", &missing], 3, "not_found"),
        (args!["verify", tmp.path()], 4, "no_backups"),
        (args!["list", &notes], 2, "usage"),
        (
            args!["restore", &c.dir, "--dry-run", "--until", "1795843611000"],
            2,
            "usage",
        ),
        (
            args!["restore", &c.dir, "--dry-run", "--until", "2000-01-01"],
            4,
            "no_backups",
        ),
        (args!["restore", &c.dir], 2, "usage"),
        (args!["inspect", &notes], 1, "not_a_backup"),
        (args!["inspect", &missing], 3, "not_found"),
        (args!["diff", &c.dir, "soon"], 2, "usage"),
        (args!["prune", &c.dir], 2, "usage"),
        (args!["frobnicate"], 2, "usage"),
    ];
    for (mut a, code, kind) in cases {
        a.push(std::ffi::OsStr::new("--json"));
        let out = cli(&a);
        assert_eq!(out.code, code, "{a:?}: {out:#?}");
        assert_json_error(&out, kind);
    }
    // Damage: the error names the file.
    damage(&d2);
    let out = cli(args!["--json", "restore", &c.dir, "-o", &x]);
    assert_eq!(out.code, 1, "{out:#?}");
    let v = assert_json_error(&out, "checksum_mismatch");
    assert_eq!(v["error"]["file"], c.d2.file);
    assert!(out.stderr.contains(&c.d2.file), "{out:#?}");
    // verify's failure is a report (with ok: false), not an error object.
    let out = cli(args!["--json", "verify", &c.dir]);
    assert_eq!((out.code, &out.json()["ok"]), (1, &json!(false)));
}

/// A point named like a backup that cannot be read (a link to a disk that
/// did not mount): diff says why, as restore does, not "no such file".
#[cfg(unix)]
#[tokio::test]
async fn a_diff_up_to_an_unreadable_backup_says_why() {
    let c = make_chain().await;
    let link = c.dir.join(&c.d1.file);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(c.dir.join("not-mounted"), &link).unwrap();
    cli(args!["diff", &c.dir, &c.d1.file]).fails(2, "named like a backup but cannot be read");
}
