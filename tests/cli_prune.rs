//! `dictdb-backup prune`, run as a real process: a rule is required, the
//! dry run says what would go and why, and old chains go whole.

mod cli_common;
mod common;

use cli_common::*;
use serde_json::json;

#[tokio::test]
async fn prune_needs_a_rule_shows_a_dry_run_and_deletes_old_chains() {
    let c = make_two_chains().await;
    let n: Vec<&str> = c.files.iter().map(|f| f.file.as_str()).collect();
    // Backup files only (the manager's lock file stays in the directory).
    let count = || common::backup_files(&c.dir).len();
    cli(args!["prune", &c.dir]).fails(2, "no retention rule given");
    cli(args!["prune", &c.dir, "--keep-last", "0"]).fails(2, "keep everything");
    cli(args!["prune", &c.dir, "--keep-within", "soon"]).fails(2, "invalid duration");
    assert_eq!(count(), 5);

    let out = cli(args!["prune", &c.dir, "--keep-last", "1", "--dry-run"]);
    let text = out.ok();
    assert!(text.starts_with("dry run: nothing deleted"), "{text}");
    assert!(
        line_of(text, &format!("delete {}", n[1])).contains("which goes"),
        "{text}"
    );
    assert!(
        line_of(text, &format!("delete {}", n[0])).contains("no rule keeps"),
        "{text}"
    );
    assert!(
        line_of(text, &format!("keep {}", n[2])).contains("keep-last #1"),
        "{text}"
    );
    assert_eq!(count(), 5);
    let v = cli(args![
        "--json",
        "prune",
        &c.dir,
        "--keep-within",
        "1d",
        "--dry-run"
    ])
    .json();
    assert_eq!(v["delete"], json!([]), "everything is within a day");
    assert_eq!(v["policy"], "keep-within 1d");

    let out = cli(args!["prune", &c.dir, "--keep-last", "1"]);
    let text = out.ok();
    assert!(
        line_of(text, &format!("deleted {}", n[1])).contains("which goes"),
        "{text}"
    );
    assert!(text.contains("deleted 2 files"), "{text}");
    assert_eq!(common::backup_files(&c.dir), n[2..]);
    // The store still restores; a second prune has nothing to do.
    cli(args!["restore", &c.dir, "--dry-run"]).ok();
    let out = cli(args!["prune", &c.dir, "--keep-last", "1"]);
    assert!(out.ok().contains("nothing to delete"), "{out:#?}");
    cli(args!["prune", &c.dir.join("nope"), "--keep-last", "1"]).fails(3, "no such directory");
}
