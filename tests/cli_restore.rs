//! `dictdb-backup restore`, run as a real process: the output file, every
//! form of `--until` (and the implausible ones), `--until-seq`,
//! `--dry-run`, `--lenient` (exit 5 and what was left out), and progress on
//! a terminal only.

mod cli_common;
mod common;

use std::ffi::OsStr;

use cli_common::*;
use jiff::Timestamp;
use serde_json::{json, Value};

#[tokio::test]
async fn restore_writes_a_file_equal_to_the_live_db() {
    let c = make_chain().await;
    let x = c.tmp.path().join("x.json");
    let out = cli(args!["restore", &c.dir, "--out", &x]);
    let text = out.ok();
    // Piped stderr: no progress bar, nothing at all.
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
    assert_eq!(common::dump(&load(&x)), common::dump(&c.db));
    for f in [&c.full.file, &c.d1.file, &c.d2.file] {
        assert!(
            line_of(text, f).trim_start().starts_with("applied"),
            "{text}"
        );
    }
    assert!(
        line_of(text, &c.d1.file).contains("3 records affected"),
        "{text}"
    );
    assert!(text.contains(&format!("sequence: {}", c.d2.seq)), "{text}");
    assert!(text.contains("verified: yes"), "{text}");
    assert!(
        line_of(text, "wrote").contains("2 tables, 7 records"),
        "{text}"
    );

    // MessagePack by --format or by extension; --json report.
    for (name, format) in [("y.bin", Some("msgpack")), ("z.msgpack", None)] {
        let y = c.tmp.path().join(name);
        let mut a = args!["--json", "restore", &c.dir, "-o", &y];
        if let Some(f) = format {
            a.extend(args!["--format", f]);
        }
        let out = cli(a);
        assert_eq!(out.code, 0, "{out:#?}");
        let v = out.json();
        assert_eq!(v["out"]["format"], "msgpack");
        assert_eq!(
            (&v["seq"], &v["verified"], &v["complete"]),
            (&json!(c.d2.seq), &json!(true), &json!(true))
        );
        assert_eq!(v["applied"][1]["affected"], 3);
        let db = dictdb::DictDB::load(&y, dictdb::FileFormat::MessagePack).unwrap();
        assert_eq!(common::table_map(&db), common::table_map(&c.db));
    }

    // Never into the chain being restored.
    let into = c.dir.join("dictdb_backup_9999999999_000000.json");
    cli(args!["restore", &c.dir, "--out", &into]).fails(2, "refusing");
    assert!(!into.exists());
    cli(args!["restore", &c.dir]).fails(2, "--out");
    // An output directory that cannot be written: refused before any work,
    // as an I/O error (2), not "not found" (3).
    cli(args!["restore", &c.dir, "--out", "/proc/restored.json"]).fails(2, "cannot write in /proc");
    cli(args!["restore", &c.dir, "--out", c.tmp.path()]).fails(2, "is a directory");
}

#[tokio::test]
async fn until_takes_rfc3339_dates_unix_seconds_and_relative_times() {
    let c = make_chain().await;
    let listing = cli(args!["list", &c.dir, "--json"]).json();
    let d1_time = entry(&listing, &c.d1.file)["time"]
        .as_str()
        .unwrap()
        .to_string();
    let t: Timestamp = d1_time.parse().unwrap();
    let name = dictdb::BackupName::parse(&c.d1.file).unwrap();
    let offset = t
        .to_zoned_datetime(jiff::tz::TimeZone::fixed(jiff::tz::offset(2)))
        .strftime("%Y-%m-%dT%H:%M:%S%.6f%:z")
        .to_string();
    for until in [
        format!("{}.{:06}", name.secs, name.micros),
        d1_time.clone(),
        offset,
    ] {
        let v = cli(args![
            "--json",
            "restore",
            &c.dir,
            "--dry-run",
            "--until",
            &until
        ]);
        assert_eq!(v.code, 0, "{until}: {v:#?}");
        let v = v.json();
        assert_eq!(
            applied(&v),
            [c.full.file.as_str(), c.d1.file.as_str()],
            "{until}"
        );
        assert_eq!(v["until"], d1_time, "{until}");
    }
    let x = c.tmp.path().join("at-d1.json");
    cli(args!["restore", &c.dir, "-o", &x, "--until", &d1_time]).ok();
    assert_eq!(common::table_map(&load(&x)), c.at_d1);

    // Tomorrow (a date) includes everything; today's start, and times
    // before now, precede every backup.
    let today = Timestamp::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .date();
    let tomorrow = today.tomorrow().unwrap().to_string();
    let v = cli(args![
        "--json",
        "restore",
        &c.dir,
        "--dry-run",
        "--until",
        &tomorrow
    ])
    .json();
    assert_eq!(applied(&v).len(), 3);
    let first = entry(&listing, &c.full.file)["time"]
        .as_str()
        .unwrap()
        .to_string();
    for until in ["-15m", "15m", "2h ago", "2 hours ago", &today.to_string()] {
        let out = cli(args!["restore", &c.dir, "--dry-run", "--until", until]);
        out.fails(4, "nothing was backed up before");
        assert!(
            out.stderr.contains(&format!("first backup at {first}")),
            "{until}: {out:#?}"
        );
    }
    // --until=-15m works too; relative times include old backups.
    cli(args!["restore", &c.dir, "--dry-run", "--until=-15m"]).fails(4, "nothing was backed up");
    let py = common::python_fixture_dir();
    let v = cli(args![
        "--json",
        "restore",
        &py,
        "--dry-run",
        "--until",
        "1h ago"
    ])
    .json();
    assert_eq!(applied(&v).len(), 4, "{v:#}");

    // Implausible or malformed: refused with a reason, exit 2.
    for (until, why) in [
        ("1795843611000", "milliseconds"),
        ("1795843611000000", "microseconds"),
        ("1960-01-01", "before 1970"),
        ("1969-12-31T23:00:00Z", "before 1970"),
        ("2099-01-01", "more than 10 years from now"),
        ("2026-11-26T08:44:54", "no time zone"),
        ("+15m", "counts back from now"),
        ("yesterday", "RFC 3339"),
        ("2026-02-30", "invalid"),
    ] {
        cli(args!["restore", &c.dir, "--dry-run", "--until", until]).fails(2, why);
    }
}

#[tokio::test]
async fn until_seq_and_dry_run() {
    let c = make_chain().await;
    let seq = c.d1.seq.to_string();
    let x = c.tmp.path().join("never.json");
    let out = cli(args![
        "--json",
        "restore",
        &c.dir,
        "--until-seq",
        &seq,
        "--dry-run",
        "-o",
        &x
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    let v = out.json();
    assert_eq!(applied(&v), [c.full.file.as_str(), c.d1.file.as_str()]);
    assert_eq!(
        (&v["dry_run"], &v["seq"], &v["out"]),
        (&json!(true), &json!(c.d1.seq), &Value::Null)
    );
    // A dry run reads and checks every file: it knows their checksums
    // matched (it said `null` here).
    assert_eq!(v["verified"], json!(true), "{v:#}");
    assert!(!x.exists(), "a dry run writes nothing");

    let out = cli(args!["restore", &c.dir, "--dry-run"]);
    let text = out.ok();
    assert!(text.starts_with("dry run: nothing written"), "{text}");
    assert!(line_of(text, &c.d2.file).contains("apply"), "{text}");
    // The chain and the foreign file; the manager's lock file aside.
    let before: Vec<_> = std::fs::read_dir(&c.dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name() != ".dictdb-lock")
        .collect();
    assert_eq!(before.len(), 4);

    cli(args!["restore", &c.dir, "--dry-run", "--until-seq", "0"])
        .fails(4, "no full backup at or before sequence 0");
    let py = common::python_fixture_dir();
    cli(args!["restore", &py, "--dry-run", "--until-seq", "3"]).fails(2, "--until");
    // A dry run fails where the restore would.
    damage(&c.dir.join(&c.d2.file));
    cli(args!["restore", &c.dir, "--dry-run"]).fails(1, "checksum mismatch");
}

#[tokio::test]
async fn lenient_restore_exits_5_and_says_what_it_left_out() {
    let c = make_chain().await;
    damage(&c.dir.join(&c.d2.file));
    let x = c.tmp.path().join("strict.json");
    let out = cli(args!["restore", &c.dir, "--out", &x]);
    out.fails(1, &c.d2.file);
    assert!(out.stderr.contains("--lenient"), "{out:#?}");
    assert!(!x.exists());

    let x = c.tmp.path().join("lenient.json");
    let out = cli(args!["restore", &c.dir, "--out", &x, "--lenient"]);
    out.fails(5, "restore incomplete: 1 file left out");
    assert!(
        line_of(&out.stdout, "stopped at").contains(&c.d2.file),
        "{out:#?}"
    );
    assert!(
        line_of(&out.stdout, "stopped at").contains("checksum mismatch"),
        "{out:#?}"
    );
    assert!(
        out.stdout.contains("INCOMPLETE: left out 1 file"),
        "{out:#?}"
    );
    assert_eq!(common::table_map(&load(&x)), c.at_d1);

    let v = cli(args!["--json", "restore", &c.dir, "--out", &x, "--lenient"]).json();
    assert_eq!(v["complete"], false);
    assert_eq!(v["stopped"]["file"], c.d2.file);
    assert_eq!(v["left_out"], json!([c.d2.file]));
    assert_eq!(applied(&v), [c.full.file.as_str(), c.d1.file.as_str()]);

    // A damaged newest full backup: skipped for the older chain, whose
    // later files are all left out.
    let two = make_two_chains().await;
    let n: Vec<&str> = two.files.iter().map(|f| f.file.as_str()).collect();
    damage(&two.dir.join(n[2]));
    let out = cli(args![
        "--json",
        "restore",
        &two.dir,
        "--dry-run",
        "--lenient"
    ]);
    assert_eq!(out.code, 5, "{out:#?}");
    let v = out.json();
    assert_eq!(applied(&v), n[..2]);
    assert_eq!(v["skipped"][0]["file"], n[2]);
    assert_eq!(v["left_out"], json!(n[2..]));
    // A lenient restore with nothing wrong is complete: exit 0.
    let d1 = dictdb::BackupName::parse(&c.d1.file).unwrap();
    let until = format!("{}.{:06}", d1.secs, d1.micros);
    cli(args![
        "restore",
        &c.dir,
        "--dry-run",
        "--lenient",
        "--until",
        &until
    ])
    .ok();
}

#[tokio::test]
async fn progress_is_shown_on_a_terminal_only() {
    let c = make_chain().await;
    let x = c.tmp.path().join("x.json");
    // Piped: nothing on stderr (checked in the first test too).
    let out = cli(args!["restore", &c.dir, "-o", &x]);
    assert!(out.stderr.is_empty(), "{out:#?}");
    // On a terminal (`script` gives the command a pseudo-terminal): bytes
    // read out of the total, and the file being read.
    let Ok(script) = which("script") else {
        panic!("`script` (util-linux) is needed to give the command a terminal");
    };
    let command = format!(
        "{} restore {} -o {}",
        env!("CARGO_BIN_EXE_dictdb-backup"),
        c.dir.display(),
        x.display()
    );
    let out = run(std::process::Command::new(script).args([
        OsStr::new("-qec"),
        OsStr::new(&command),
        OsStr::new("/dev/null"),
    ]));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("restoring ["), "{out:#?}");
    assert!(
        out.stdout.contains(" B/") || out.stdout.contains("KiB/"),
        "{out:#?}"
    );
    assert!(out.stdout.contains("file 1: dictdb_"), "{out:#?}");
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The store given as a `file://` URL is the same directory: a backup-named
/// `--out` into it is refused as with a plain path, and nothing is replaced
/// (it used to overwrite the newest full backup with an older state).
#[cfg(feature = "object-store")]
#[tokio::test]
async fn out_into_the_store_is_refused_however_the_store_is_spelled() {
    let c = make_chain().await;
    let dir = c.dir.canonicalize().unwrap();
    let full = dir.join(&c.full.file);
    let before = std::fs::read(&full).unwrap();
    for url in [
        format!("file://{}", dir.display()),
        format!("FILE://{}", dir.display()),
        format!("file://localhost{}", dir.display()),
        format!("file://{}/", dir.display()),
    ] {
        let r = cli(args![
            "restore",
            &url,
            "--until-seq",
            &c.d1.seq.to_string(),
            "--out",
            &full
        ]);
        r.fails(2, "refusing");
        assert_eq!(std::fs::read(&full).unwrap(), before, "{url}");
        // A new backup name too: it would become the newest chain.
        let new = dir.join("dictdb_backup_9999999999_000000.json");
        cli(args!["restore", &url, "--out", &new]).fails(2, "refusing");
        assert!(!new.exists(), "{url}");
    }
    cli(args!["verify", &c.dir]).ok();
}

/// Another store's backup is never replaced by `--out`; a plain name
/// still is.
#[tokio::test]
async fn out_never_replaces_a_backup_of_another_store() {
    let c = make_chain().await;
    let other = c.tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let theirs = other.join(&c.full.file);
    std::fs::write(&theirs, "their backup").unwrap();
    cli(args!["restore", &c.dir, "--out", &theirs]).fails(2, "refusing to replace");
    assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "their backup");
    // A new backup name in another directory (seeding a new store) is fine.
    let fresh = other.join("dictdb_backup_9999999999_000000.json");
    cli(args!["restore", &c.dir, "--out", &fresh]).ok();
    let plain = c.tmp.path().join("plain.json");
    std::fs::write(&plain, "old").unwrap();
    cli(args!["restore", &c.dir, "--out", &plain]).ok();
    assert_eq!(common::dump(&load(&plain)), common::dump(&c.db));
}

/// `--format` that contradicts the name's extension is refused before any
/// work (it used to write MessagePack into `x.json`).
#[tokio::test]
async fn format_must_agree_with_the_out_extension() {
    let c = make_chain().await;
    for (name, format) in [
        ("x.json", "msgpack"),
        ("x.msgpack", "json"),
        ("x.json.zst", "msgpack"),
    ] {
        let x = c.tmp.path().join(name);
        cli(args!["restore", &c.dir, "--out", &x, "--format", format]).fails(2, "the name says");
        assert!(!x.exists(), "{name}");
    }
    for (name, format) in [
        ("x.json", "json"),
        ("x.msgpack", "msgpack"),
        ("x.out", "msgpack"),
    ] {
        let x = c.tmp.path().join(name);
        cli(args!["restore", &c.dir, "--out", &x, "--format", format]).ok();
    }
}

/// Exit codes agree with verify: the only full backup damaged is damage
/// (1, naming it) for `restore --lenient` too, and a store holding only
/// deltas is a broken chain (1, naming the first delta and its missing
/// base) for restore as for verify; both used to exit 4 ("no backups").
#[tokio::test]
async fn no_usable_full_backup_is_damage_not_an_empty_store() {
    let c = make_chain().await;
    let x = c.tmp.path().join("x.json");
    let full = c.dir.join(&c.full.file);
    let sound = std::fs::read(&full).unwrap();
    let mut bytes = sound.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&full, &bytes).unwrap();
    for lenient in [false, true] {
        let mut a = args!["restore", &c.dir, "--out", &x];
        if lenient {
            a.push(OsStr::new("--lenient"));
        }
        cli(a).fails(1, &c.full.file);
    }
    let v = cli(args!["--json", "restore", &c.dir, "--lenient", "--dry-run"]);
    assert_eq!((v.code, &v.json()["error"]["kind"]), (1, &json!("damaged")));
    let v = cli(args!["verify", &c.dir]);
    assert!(v.code == 1 && v.stdout.contains(&c.full.file), "{v:#?}");

    std::fs::remove_file(&full).unwrap();
    for a in [
        args!["restore", &c.dir, "--out", &x],
        args!["restore", &c.dir, "--dry-run", "--lenient"],
    ] {
        let r = cli(a);
        r.fails(1, &c.d1.file);
        assert!(r.stderr.contains(&c.full.file), "{r:#?}");
    }
    let v = cli(args!["verify", &c.dir]);
    assert!(v.code == 1 && v.stdout.contains(&c.d1.file), "{v:#?}");
    assert!(!x.exists());
}

/// The hint for a file without checksum after ours names an option that
/// exists, and that option accepts it, in restore, verify and follow alike.
#[tokio::test]
async fn allow_unverified_is_an_option_of_restore_verify_and_follow() {
    let c = make_chain().await;
    let python = "dictdb_backup_1999999999_000000.json";
    std::fs::write(
        c.dir.join(python),
        r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":1}]}}}"#,
    )
    .unwrap();
    let x = c.tmp.path().join("x.json");
    let r = cli(args!["restore", &c.dir, "--out", &x]);
    r.fails(1, "--allow-unverified");
    let v = cli(args!["verify", &c.dir]);
    assert!(v.code == 1 && v.stdout.contains(python), "{v:#?}");
    cli(args!["restore", &c.dir, "--out", &x, "--allow-unverified"]).ok();
    assert!(load(&x).table("t").is_ok());
    cli(args!["verify", &c.dir, "--allow-unverified"]).ok();
    // And of follow: a replica stops before the file without it, and
    // serves it with it.
    let f = cli(args!["follow", &c.dir, "--once", "--json"]);
    assert_eq!(f.code, 1, "{f:#?}");
    let v: Value = serde_json::from_str(f.stdout.trim()).unwrap();
    assert_eq!(v["problem"]["file"], python, "{v:#}");
    let f = cli(args![
        "follow",
        &c.dir,
        "--once",
        "--json",
        "--allow-unverified"
    ]);
    let v: Value = serde_json::from_str(f.ok().trim()).unwrap();
    assert_eq!(v["cut"]["file"], python, "{v:#}");
    assert!(v["problem"].is_null(), "{v:#}");
}

/// A delta without checksum after a chain of ours can be no delta of the
/// Python original (those only follow the original's full backups): the
/// hint says so instead of promising that `--allow-unverified` helps, and
/// with the option the chain is still refused as mixed, in restore and
/// verify alike, naming the file.
#[tokio::test]
async fn a_python_looking_delta_after_our_chain_is_not_promised_to_the_option() {
    let c = make_chain().await;
    let python = "dictdb_delta_1999999999_000000.json";
    std::fs::write(
        c.dir.join(python),
        r#"{"type":"delta","timestamp":1999999999.0,"tables":{"t":{"upserts":[{"id":50}],"deletes":[]}}}"#,
    )
    .unwrap();
    let x = c.tmp.path().join("x.json");
    let r = cli(args!["restore", &c.dir, "--out", &x]);
    r.fails(1, "only follow a full backup of the original");
    assert!(r.stderr.contains(python), "{r:#?}");
    assert!(!r.stderr.contains("--allow-unverified"), "{r:#?}");
    let r = cli(args!["restore", &c.dir, "--out", &x, "--allow-unverified"]);
    r.fails(1, "the chain is mixed");
    assert!(r.stderr.contains(python), "{r:#?}");
    let v = cli(args!["verify", &c.dir, "--allow-unverified"]);
    assert!(v.code == 1 && v.stdout.contains(python), "{v:#?}");
    assert!(!x.exists());

    // After a full backup of the original, the same delta can be one of
    // its deltas: then the option is named, and it works.
    std::fs::remove_file(c.dir.join(python)).unwrap();
    std::fs::write(
        c.dir.join("dictdb_backup_1999999998_000000.json"),
        r#"{"tables":{"t":{"primary_key":"id","schema":null,"records":[{"id":1}]}}}"#,
    )
    .unwrap();
    std::fs::write(
        c.dir.join(python),
        r#"{"type":"delta","timestamp":1999999999.0,"tables":{"t":{"upserts":[{"id":50}],"deletes":[]}}}"#,
    )
    .unwrap();
    cli(args!["restore", &c.dir, "--out", &x]).fails(1, "--allow-unverified");
    cli(args!["restore", &c.dir, "--out", &x, "--allow-unverified"]).ok();
    assert!(load(&x).table("t").unwrap().get(50).unwrap().is_some());
}

/// Names and paths printed in messages are escaped: a file name cannot
/// forge lines or send terminal escapes.
#[tokio::test]
async fn control_characters_in_paths_are_escaped_in_messages() {
    let c = make_chain().await;
    let hostile = c.tmp.path().join("notes\nkeep x\u{1b}[31m");
    std::fs::write(&hostile, "").unwrap();
    let r = cli(args!["inspect", &hostile]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(!r.stderr.contains('\u{1b}'), "{r:#?}");
    assert!(r.stderr.contains("notes\\nkeep x\\u{1b}[31m"), "{r:#?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:#?}");
}

/// A JSON `null` key is called `null`, not MessagePack's `nil`.
#[test]
fn a_null_key_is_called_null() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("dictdb_backup_1795682694_728491.json"),
        r#"{"tables":{"u":{"primary_key":"id","schema":null,"records":[{"id":null}]}}}"#,
    )
    .unwrap();
    let v = cli(args!["verify", tmp.path()]);
    assert_eq!(v.code, 1, "{v:#?}");
    assert!(v.stdout.contains("null cannot be a key"), "{v:#?}");
    assert!(!v.stdout.contains("nil"), "{v:#?}");
}

/// A bad `--identity` file is an identity file, not a "backup
/// configuration"; a table name with control characters is printed
/// escaped, in backticks.
#[cfg(feature = "encryption")]
#[tokio::test]
async fn bad_identity_files_and_hostile_table_names_are_worded_for_operators() {
    let c = make_chain().await;
    let id = c.tmp.path().join("id.txt");
    std::fs::write(&id, "AGE-SECRET-KEY-1QQQQ\n").unwrap();
    let r = cli(args!["--identity", &id, "list", &c.dir]);
    r.fails(2, "invalid identity file");
    assert!(!r.stderr.contains("backup configuration"), "{r:#?}");

    let dir = c.tmp.path().join("hostile");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("dictdb_backup_1795682694_728491.json"),
        r#"{"tables":{"u\u001b[31m\nFAKE":{"primary_key":"id","schema":null,"records":[]}}}"#,
    )
    .unwrap();
    let v = cli(args!["verify", &dir]);
    assert_eq!(v.code, 1, "{v:#?}");
    assert!(
        v.stdout.contains(r"invalid table name `u\u{1b}[31m\nFAKE`"),
        "{v:#?}"
    );
}

/// A limit before every backup names the store's first backup, even when
/// that is a full backup that cannot be read (here, behind a link to a disk
/// that did not mount): the deltas after it are not "the first backup".
#[tokio::test]
async fn a_limit_before_an_unreadable_first_backup_names_it() {
    let c = make_chain().await;
    let link = c.dir.join(&c.full.file);
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(c.dir.join("not-mounted"), &link).unwrap();
    let out = cli(args!["restore", &c.dir, "--dry-run", "--until=-15m"]);
    let text = &out.fails(4, "nothing was backed up").stderr;
    assert!(text.contains(&c.full.file), "{text}");
    assert!(!text.contains(&c.d1.file), "{text}");
}
