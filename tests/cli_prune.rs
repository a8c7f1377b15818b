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

/// The files of the store, backups only, and a copy of their bytes.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    common::backup_files(dir)
        .into_iter()
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect()
}

#[tokio::test]
async fn prune_keeps_the_newest_chain_that_restores_and_everything_newer() {
    // A fake full backup under the newest name (the Python original's
    // 13-byte empty store): the chain before it is the newest that
    // restores, and stays with it; the oldest chain still goes. A damaged
    // newest full backup: the oldest chain is the only one that restores,
    // and nothing is deleted.
    for fault in ["fake", "damaged"] {
        let c = make_two_chains().await;
        let n: Vec<String> = c.files.iter().map(|f| f.file.clone()).collect();
        let (sound, gone) = match fault {
            "fake" => {
                std::fs::write(
                    c.dir.join("dictdb_backup_4102444799_000000.json"),
                    r#"{"tables":{}}"#,
                )
                .unwrap();
                (&n[2], vec![n[1].clone(), n[0].clone()])
            }
            _ => {
                damage(&c.dir.join(&n[2]));
                (&n[0], vec![])
            }
        };
        let before = snapshot(&c.dir);
        let dry = cli(args!["prune", &c.dir, "--keep-last", "1", "--dry-run"]);
        dry.fails(1, "does not restore");
        assert!(
            line_of(&dry.stdout, &format!("keep {sound}")).contains("newest chain that restores"),
            "{fault}: {}",
            dry.stdout
        );
        assert_eq!(
            snapshot(&c.dir),
            before,
            "{fault}: a dry run deletes nothing"
        );
        let v = cli(args![
            "--json",
            "prune",
            &c.dir,
            "--keep-last",
            "1",
            "--dry-run"
        ])
        .json();
        assert_eq!(v["restorable"], json!(sound), "{fault}");
        let planned: Vec<String> = v["delete"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(planned, gone, "{fault}");
        let run = cli(args!["prune", &c.dir, "--keep-last", "1"]);
        run.fails(1, "does not restore");
        let left: Vec<String> = before
            .iter()
            .map(|(name, _)| name.clone())
            .filter(|name| !gone.contains(name))
            .collect();
        assert_eq!(common::backup_files(&c.dir), left, "{fault}");
        // The sound chain still restores, as before the prune.
        cli(args!["restore", &c.dir, "--lenient", "--dry-run"]).fails(5, "");
    }
}

#[tokio::test]
async fn prune_deletes_nothing_when_no_chain_restores() {
    let c = make_two_chains().await;
    damage(&c.dir.join(&c.files[0].file));
    damage(&c.dir.join(&c.files[2].file));
    let before = snapshot(&c.dir);
    for dry in [true, false] {
        let mut a = args!["prune", &c.dir, "--keep-last", "1"];
        if dry {
            a.push(std::ffi::OsStr::new("--dry-run"));
        }
        let out = cli(a);
        let text = &out.fails(1, "prune deleted nothing: no chain of").stderr;
        assert!(text.contains("2 chains checked, none restores"), "{text}");
        assert_eq!(snapshot(&c.dir), before);
    }
    let v = cli(args!["--json", "prune", &c.dir, "--keep-last", "1"]);
    assert_json_error(&v, "no_sound_chain");
}

#[tokio::test]
async fn a_twin_beside_a_full_backup_neither_breaks_restore_nor_loses_the_full_backup() {
    // `zstd x.json` keeps x.json and adds x.json.zst, which dictdb did not
    // write: the delta after them names x.json as its base.
    let c = make_two_chains().await;
    let n: Vec<String> = c.files.iter().map(|f| f.file.clone()).collect();
    let twin = format!("{}.zst", n[2]);
    std::fs::write(c.dir.join(&twin), b"(\xb5/\xfd not ours").unwrap();
    let out = cli(args!["restore", &c.dir, "--dry-run"]);
    let text = out.ok();
    assert!(text.contains(&n[2]) && text.contains(&n[4]), "{text}");
    let out = cli(args!["prune", &c.dir, "--keep-last", "1"]);
    out.ok();
    assert_eq!(
        common::backup_files(&c.dir),
        [n[2].clone(), twin.clone(), n[3].clone(), n[4].clone()]
    );
    cli(args!["restore", &c.dir, "--dry-run"]).ok();
}

/// A full backup behind a dangling symbolic link (its disk did not mount)
/// keeps its place: its deltas are its chain's, kept while a rule keeps
/// the chain, and deleted with it (the link too) when none does.
#[cfg(unix)]
#[tokio::test]
async fn a_full_backup_behind_a_dangling_link_keeps_its_deltas() {
    let c = make_two_chains().await;
    let n: Vec<&str> = c.files.iter().map(|f| f.file.as_str()).collect();
    let link = c.dir.join(n[0]);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(c.dir.join("not-mounted").join(n[0]), &link).unwrap();

    let out = cli(args!["prune", &c.dir, "--keep-last", "5", "--dry-run"]);
    let text = out.ok();
    assert!(
        line_of(text, &format!("keep {}", n[1])).contains("in the chain kept for"),
        "{text}"
    );
    assert!(
        line_of(text, &format!("cannot read {}", n[0])).contains("goes with its chain"),
        "{text}"
    );
    let out = cli(args!["prune", &c.dir, "--keep-last", "5"]);
    let text = out.ok();
    assert!(text.contains("nothing to delete"), "{text}");
    assert!(c.dir.join(n[1]).is_file(), "{text}");

    let out = cli(args!["prune", &c.dir, "--keep-last", "1"]);
    let text = out.ok();
    assert!(text.contains("deleted 2 files"), "{text}");
    assert!(std::fs::symlink_metadata(&link).is_err(), "{text}");
    assert!(!c.dir.join(n[1]).exists(), "{text}");
    cli(args!["verify", &c.dir]).ok();
}
