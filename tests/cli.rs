//! The `dictdb-backup` command, run as a real process on real directories:
//! a chain written by the backup manager (full + 2 deltas), a damaged copy of
//! it, and the chain written by the Python original.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use dictdb::{BackupConfig, BackupInfo, BackupManager, BackupName, DictDB, FileFormat};
use serde_json::{json, Value};

/// What a run of the command printed and returned.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Asserts success and returns stdout.
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "expected success: {self:#?}");
        &self.stdout
    }
}

fn cli<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_dictdb-backup"))
        .args(args)
        .output()
        .expect("run dictdb-backup");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

type Tables = BTreeMap<String, BTreeMap<String, Value>>;

/// A backup directory holding one chain (full + 2 deltas) and a foreign file.
struct Chain {
    tmp: tempfile::TempDir,
    dir: PathBuf,
    db: DictDB,
    full: BackupInfo,
    d1: BackupInfo,
    d2: BackupInfo,
    /// The database as it was when the first delta was cut.
    at_d1: Tables,
}

/// A value that occurs only in the second delta, for damaging it.
const MARKER: &str = "123456789";

async fn make_chain() -> Chain {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backups");
    let db = DictDB::new();
    let users = db.create_table("users").unwrap();
    for i in 1..=5 {
        users.insert(common::workload_record(i)).unwrap();
    }
    let m = BackupManager::start(&db, BackupConfig::new(&dir).incremental(true))
        .await
        .unwrap();
    let full = m.backup_full().await.unwrap();

    users.update(2, json!({"age": 77})).unwrap();
    users.insert(json!({"name": "Frank"})).unwrap();
    users.delete(3).unwrap();
    let d1 = m.backup_delta().await.unwrap().info().unwrap().clone();
    let at_d1 = common::table_map(&db);

    let events = db.create_table_with_key("events", "event_id").unwrap();
    events
        .insert(json!({"event_id": "ev-1", "payload": 123456789}))
        .unwrap();
    events
        .insert(json!({"event_id": "ev-2", "type": "click"}))
        .unwrap();
    users.update(1, json!({"active": false})).unwrap();
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

/// Changes one digit inside a record value of `file`: still valid JSON, but
/// no longer what its checksum says.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
        .expect("marker value in the file");
    let last = at + MARKER.len() - 1;
    bytes[last] = b'8';
    serde_json::from_slice::<Value>(&bytes).expect("still valid JSON");
    std::fs::write(file, bytes).unwrap();
}

/// The lines of `text` that mention `name`.
fn line_of<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(name))
        .unwrap_or_else(|| panic!("no line mentions {name}:\n{text}"))
}

fn load(path: &Path, format: FileFormat) -> DictDB {
    DictDB::load(path, format).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The list --json entry of the file `name`.
fn entry<'a>(listing: &'a Value, name: &str) -> &'a Value {
    listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} not listed: {listing:#}"))
}

#[tokio::test]
async fn list_marks_the_chain_with_kinds_counts_and_checksums() {
    let c = make_chain().await;
    let out = cli([OsStr::new("list"), c.dir.as_os_str()]);
    let text = out.ok();
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    let full = line_of(text, &c.full.file);
    assert!(full.starts_with('*'), "{full}");
    assert!(full.contains(" full "), "{full}");
    assert!(full.contains("5 records"), "{full}");
    assert!(full.contains(&format!(" 0..{} ", c.full.seq)), "{full}");
    assert!(full.contains(&c.full.bytes.to_string()), "{full}");
    assert!(full.trim_end().ends_with("verified"), "{full}");
    let t = BackupName::parse(&c.full.file).unwrap();
    assert!(
        full.contains(&format!(".{:06}Z", t.micros)),
        "time with microseconds: {full}"
    );

    let d1 = line_of(text, &c.d1.file);
    assert!(d1.starts_with('*') && d1.contains(" delta "), "{d1}");
    assert!(d1.contains("3 changes"), "{d1}");
    assert!(
        d1.contains(&format!(" {}..{} ", c.full.seq, c.d1.seq)),
        "{d1}"
    );
    let d2 = line_of(text, &c.d2.file);
    assert!(d2.starts_with('*') && d2.contains("3 changes"), "{d2}");
    assert!(d2.contains(" 2 "), "two tables: {d2}");

    let foreign = line_of(text, "notes.txt");
    assert!(!foreign.starts_with('*'), "{foreign}");
    assert!(foreign.contains("ignored"), "{foreign}");
    assert!(text.contains(&format!("sequence {}", c.d2.seq)), "{text}");

    // Files are in time order, foreign ones last.
    let pos = |n: &str| text.find(n).unwrap();
    assert!(pos(&c.full.file) < pos(&c.d1.file));
    assert!(pos(&c.d1.file) < pos(&c.d2.file));
    assert!(pos(&c.d2.file) < pos("notes.txt"));

    // --json, before or after the subcommand.
    for args in [
        vec![OsStr::new("--json"), OsStr::new("list"), c.dir.as_os_str()],
        vec![OsStr::new("list"), c.dir.as_os_str(), OsStr::new("--json")],
    ] {
        let v = cli(args).json();
        assert_eq!(v["files"].as_array().unwrap().len(), 4);
        assert_eq!(v["chain"]["ok"], true);
        assert_eq!(
            v["chain"]["files"],
            json!([c.full.file, c.d1.file, c.d2.file])
        );
        assert_eq!(v["chain"]["seq"], c.d2.seq);
        let f = entry(&v, &c.full.file);
        assert_eq!(
            (&f["kind"], &f["records"], &f["changes"], &f["tables"]),
            (&json!("full"), &json!(5), &Value::Null, &json!(1))
        );
        assert_eq!(f["status"], "verified");
        assert_eq!(f["checksum"], c.full.checksum);
        assert_eq!(f["in_chain"], true);
        assert_eq!(f["size"], c.full.bytes);
        let d = entry(&v, &c.d2.file);
        assert_eq!(d["kind"], "delta");
        assert_eq!(d["changes"], 3);
        assert_eq!(d["seq"], json!({"from": c.d1.seq, "to": c.d2.seq}));
        assert_eq!(
            d["timestamp"].as_f64(),
            Some(BackupName::parse(&c.d2.file).unwrap().timestamp())
        );
        let n = entry(&v, "notes.txt");
        assert_eq!(
            (&n["kind"], &n["status"], &n["in_chain"]),
            (&Value::Null, &json!("ignored"), &json!(false))
        );
    }
}

#[tokio::test]
async fn verify_passes_then_names_a_damaged_delta() {
    let c = make_chain().await;
    let out = cli([OsStr::new("verify"), c.dir.as_os_str()]);
    let text = out.ok();
    assert!(text.contains("3 verified"), "{text}");
    assert!(text.trim_end().ends_with("OK"), "{text}");
    let v = cli([
        OsStr::new("--json"),
        OsStr::new("verify"),
        c.dir.as_os_str(),
    ]);
    assert_eq!(v.code, 0);
    assert_eq!(v.json()["ok"], true);

    damage(&c.dir.join(&c.d2.file));
    let out = cli([OsStr::new("verify"), c.dir.as_os_str()]);
    assert_eq!(out.code, 1, "{out:#?}");
    let problems = &out.stdout[out.stdout.find("FAILED").expect("FAILED")..];
    assert!(problems.contains(&c.d2.file), "{problems}");
    assert!(problems.contains("checksum mismatch"), "{problems}");
    assert!(!problems.contains(&c.d1.file), "{problems}");
    assert!(out.stderr.contains("verify failed"), "{}", out.stderr);
    let bad = line_of(&out.stdout, &format!("{}  ", c.d2.file));
    assert!(bad.contains("DAMAGED: "), "{bad}");

    let v = cli([
        OsStr::new("verify"),
        c.dir.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_eq!(v.code, 1);
    let v = v.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["file"], c.d2.file);
    assert_eq!(entry(&v, &c.d2.file)["status"], "damaged");
    assert_eq!(v["chain"]["ok"], false);
    assert_eq!(
        v["chain"]["lenient"]["files"],
        json!([c.full.file, c.d1.file])
    );

    // list still works, shows the damage and what a lenient restore would use.
    let out = cli([OsStr::new("list"), c.dir.as_os_str()]);
    let text = out.ok();
    assert!(line_of(text, &c.d2.file).contains("DAMAGED"), "{text}");
    assert!(line_of(text, &c.full.file).starts_with('~'), "{text}");
    assert!(line_of(text, &c.d1.file).starts_with('~'), "{text}");
    assert!(text.contains("BROKEN"), "{text}");

    // A strict restore refuses, naming the file; a lenient one stops before it.
    let x = c.tmp.path().join("strict.json");
    let out = cli([
        OsStr::new("restore"),
        c.dir.as_os_str(),
        OsStr::new("--out"),
        x.as_os_str(),
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains(&c.d2.file), "{}", out.stderr);
    assert!(!x.exists());

    let x = c.tmp.path().join("lenient.json");
    let out = cli([
        OsStr::new("restore"),
        c.dir.as_os_str(),
        OsStr::new("--out"),
        x.as_os_str(),
        OsStr::new("--lenient"),
    ]);
    let text = out.ok();
    assert!(line_of(text, "stopped at").contains(&c.d2.file), "{text}");
    assert!(!text.contains(&format!("applied  delta  {}", c.d2.file)));
    assert_eq!(common::table_map(&load(&x, FileFormat::Json)), c.at_d1);
}

#[tokio::test]
async fn restore_writes_a_file_equal_to_the_live_db() {
    let c = make_chain().await;
    let x = c.tmp.path().join("x.json");
    let out = cli([
        OsStr::new("restore"),
        c.dir.as_os_str(),
        OsStr::new("--out"),
        x.as_os_str(),
    ]);
    let text = out.ok();
    // Piped stderr: no progress indicator, nothing at all.
    assert!(out.stderr.is_empty(), "{:?}", out.stderr);
    let restored = load(&x, FileFormat::Json);
    assert_eq!(common::table_map(&restored), common::table_map(&c.db));
    assert_eq!(common::dump(&restored), common::dump(&c.db));
    assert_eq!(restored.seq(), c.d2.seq);
    for f in [&c.full.file, &c.d1.file, &c.d2.file] {
        assert!(text.contains(f.as_str()), "{f}: {text}");
    }
    assert!(
        line_of(text, &c.d1.file).contains("3 records affected"),
        "{text}"
    );
    assert!(text.contains(&format!("sequence: {}", c.d2.seq)), "{text}");
    assert!(text.contains("verified: yes"), "{text}");
    // The output is an ordinary JSON document in the Python layout.
    let doc: Value = serde_json::from_slice(&std::fs::read(&x).unwrap()).unwrap();
    assert_eq!(doc["tables"]["events"]["primary_key"], "event_id");

    // MessagePack: by --format, or by the extension.
    for (name, extra) in [("y.bin", Some("msgpack")), ("z.msgpack", None)] {
        let y = c.tmp.path().join(name);
        let mut args = vec![
            OsStr::new("--json"),
            OsStr::new("restore"),
            c.dir.as_os_str(),
            OsStr::new("-o"),
            y.as_os_str(),
        ];
        if let Some(f) = extra {
            args.extend([OsStr::new("--format"), OsStr::new(f)]);
        }
        let out = cli(args);
        assert_eq!(out.code, 0, "{out:#?}");
        let v = out.json();
        assert_eq!(v["out"]["format"], "msgpack");
        assert_eq!(v["seq"], c.d2.seq);
        assert_eq!(v["verified"], true);
        assert_eq!(v["applied"].as_array().unwrap().len(), 3);
        assert_eq!(v["applied"][1]["affected"], 3);
        assert_eq!(v["applied"][0]["affected"], Value::Null);
        assert_eq!(
            common::table_map(&load(&y, FileFormat::MessagePack)),
            common::table_map(&c.db)
        );
    }

    // The result is never written into the chain being restored.
    let into = c.dir.join("dictdb_backup_9999999999_000000.json");
    let out = cli([
        OsStr::new("restore"),
        c.dir.as_os_str(),
        OsStr::new("--out"),
        into.as_os_str(),
    ]);
    assert_eq!(out.code, 2, "{out:#?}");
    assert!(!into.exists());
}

#[tokio::test]
async fn restore_until_the_first_delta_applies_base_and_that_delta_only() {
    let c = make_chain().await;
    let name = BackupName::parse(&c.d1.file).unwrap();
    let unix = format!("{}.{:06}", name.secs, name.micros);
    let listing = cli([OsStr::new("list"), c.dir.as_os_str(), OsStr::new("--json")]).json();
    let rfc3339 = entry(&listing, &c.d1.file)["time"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rfc3339.ends_with('Z'), "{rfc3339}");
    // The same instant with an offset, shifted by +02:00.
    let hour: u32 = rfc3339[11..13].parse().unwrap();
    let offset = (hour < 22).then(|| {
        let mut s = rfc3339.clone();
        s.replace_range(11..13, &format!("{:02}", hour + 2));
        s.pop();
        s.push_str("+02:00");
        s
    });

    for (i, until) in [Some(unix), Some(rfc3339), offset]
        .into_iter()
        .flatten()
        .enumerate()
    {
        let x = c.tmp.path().join(format!("until-{i}.json"));
        let out = cli([
            OsStr::new("--json"),
            OsStr::new("restore"),
            c.dir.as_os_str(),
            OsStr::new("--out"),
            x.as_os_str(),
            OsStr::new("--until"),
            OsStr::new(&until),
        ]);
        assert_eq!(out.code, 0, "{until}: {out:#?}");
        let v = out.json();
        let applied: Vec<&str> = v["applied"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            applied,
            [c.full.file.as_str(), c.d1.file.as_str()],
            "{until}"
        );
        assert_eq!(v["seq"], c.d1.seq);
        assert_eq!(common::table_map(&load(&x, FileFormat::Json)), c.at_d1);
    }

    // Before the full backup there is nothing to restore: status 1.
    let x = c.tmp.path().join("nothing.json");
    let out = cli([
        OsStr::new("restore"),
        c.dir.as_os_str(),
        OsStr::new("--out"),
        x.as_os_str(),
        OsStr::new("--until"),
        OsStr::new("2000-01-01T00:00:00Z"),
    ]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.contains("no usable full backup"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn inspect_a_full_backup_and_a_delta() {
    let c = make_chain().await;
    let out = cli([OsStr::new("inspect"), c.dir.join(&c.full.file).as_os_str()]);
    let text = out.ok();
    assert!(text.contains("kind:      full"), "{text}");
    assert!(text.contains("records:   5"), "{text}");
    assert!(text.contains("tables:    1"), "{text}");
    assert!(
        text.contains(&format!("sequence:  0..{}", c.full.seq)),
        "{text}"
    );
    assert!(text.contains(&format!("{} bytes", c.full.bytes)), "{text}");
    assert!(
        text.contains(&format!("verified ({})", c.full.checksum)),
        "{text}"
    );

    let out = cli([
        OsStr::new("inspect"),
        OsStr::new("--json"),
        c.dir.join(&c.d1.file).as_os_str(),
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    let v = out.json();
    assert_eq!(v["kind"], "delta");
    assert_eq!(v["changes"], 3);
    assert_eq!(v["records"], Value::Null);
    assert_eq!(v["seq"], json!({"from": c.full.seq, "to": c.d1.seq}));
    assert_eq!(v["size"], c.d1.bytes);
    assert_eq!(v["status"], "verified");
    assert_eq!(v["checksum"], c.d1.checksum);

    let text = cli([OsStr::new("inspect"), c.dir.join(&c.d2.file).as_os_str()]);
    assert!(text.ok().contains("changes:   3"), "{text:?}");

    // A damaged file: the report says so, status 1.
    damage(&c.dir.join(&c.d2.file));
    let out = cli([OsStr::new("inspect"), c.dir.join(&c.d2.file).as_os_str()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.contains("DAMAGED"), "{}", out.stdout);
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-dir");
    let out_file = tmp.path().join("out.json");
    let m = missing.as_os_str();
    let o = out_file.as_os_str();
    let cases: Vec<(Vec<&OsStr>, i32, &str)> = vec![
        (vec![OsStr::new("list"), m], 2, "no-such-dir"),
        (vec![OsStr::new("verify"), m], 2, "no-such-dir"),
        (
            vec![OsStr::new("restore"), m, OsStr::new("--out"), o],
            2,
            "no-such-dir",
        ),
        (vec![OsStr::new("inspect"), m], 2, "no-such-dir"),
        (
            vec![
                OsStr::new("restore"),
                tmp.path().as_os_str(),
                OsStr::new("--out"),
                o,
                OsStr::new("--format"),
                OsStr::new("pickle"),
            ],
            2,
            "MessagePack",
        ),
        (
            vec![
                OsStr::new("restore"),
                tmp.path().as_os_str(),
                OsStr::new("--out"),
                o,
                OsStr::new("--until"),
                OsStr::new("yesterday"),
            ],
            2,
            "RFC 3339",
        ),
        (
            vec![
                OsStr::new("restore"),
                tmp.path().as_os_str(),
                OsStr::new("--out"),
                o,
                OsStr::new("--until"),
                OsStr::new("2026-02-30T00:00:00Z"),
            ],
            2,
            "day 30",
        ),
        (
            vec![OsStr::new("restore"), tmp.path().as_os_str()],
            2,
            "--out",
        ),
        (vec![], 2, "Usage"),
        (vec![OsStr::new("frobnicate")], 2, "frobnicate"),
        (vec![OsStr::new("list")], 2, "DIR"),
        // An existing but empty directory: nothing to restore (bad data, 1).
        (
            vec![
                OsStr::new("restore"),
                tmp.path().as_os_str(),
                OsStr::new("--out"),
                o,
            ],
            1,
            "no usable full backup",
        ),
        (
            vec![OsStr::new("verify"), tmp.path().as_os_str()],
            1,
            "verify failed",
        ),
    ];
    for (args, code, needle) in cases {
        let out = cli(&args);
        assert_eq!(out.code, code, "{args:?}: {out:#?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: stderr should mention {needle:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
    assert!(!out_file.exists());

    // A file named like a backup that is not one: reported, never a panic.
    let junk = tmp.path().join("dictdb_backup_1795682694_728491.json");
    std::fs::write(&junk, b"{\"tables\": [1, 2").unwrap();
    let out = cli([OsStr::new("inspect"), junk.as_os_str()]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stdout.contains("DAMAGED"), "{}", out.stdout);
    let out = cli([OsStr::new("list"), tmp.path().as_os_str()]);
    assert!(line_of(out.ok(), "dictdb_backup_").contains("DAMAGED"));

    let help = cli(["--help"]);
    assert_eq!(help.code, 0);
    for sub in ["list", "verify", "restore", "inspect"] {
        assert!(help.stdout.contains(sub), "{}", help.stdout);
    }
}

#[test]
fn python_chain_lists_and_verifies_as_unverified_and_restores_exactly() {
    let dir = common::python_fixture_dir();
    let backups = [
        "dictdb_backup_1795682694_728491.json",
        "dictdb_delta_1795682694_732481.json",
        "dictdb_delta_1795682694_736609.json",
        "dictdb_delta_1795682694_740524.json",
    ];

    let out = cli([OsStr::new("list"), dir.as_os_str()]);
    let text = out.ok();
    for b in backups {
        let line = line_of(text, b);
        assert!(line.starts_with('*'), "{line}");
        assert!(line.trim_end().ends_with("unverified"), "{line}");
        assert!(line.contains("2026-11-26T08:44:54."), "{line}");
    }
    assert!(line_of(text, backups[0]).contains(" full "));
    assert!(line_of(text, backups[1]).contains(" delta "));
    for foreign in ["README.md", "expected_final.json"] {
        let line = line_of(text, foreign);
        assert!(!line.starts_with('*'), "{line}");
        assert!(line.contains("ignored"), "{line}");
    }

    let v = cli([OsStr::new("list"), dir.as_os_str(), OsStr::new("--json")]).json();
    assert_eq!(v["chain"]["ok"], true);
    assert_eq!(v["chain"]["files"], json!(backups));
    assert_eq!(v["chain"]["seq"], Value::Null);
    for b in backups {
        let e = entry(&v, b);
        assert_eq!(e["status"], "unverified", "{e}");
        assert_eq!(e["seq"], Value::Null, "{e}");
        assert_eq!(e["in_chain"], true, "{e}");
    }
    assert_eq!(entry(&v, "README.md")["status"], "ignored");
    assert_eq!(entry(&v, "expected_final.json")["status"], "ignored");

    let out = cli([OsStr::new("verify"), dir.as_os_str()]);
    let text = out.ok();
    assert!(text.contains("4 unverified"), "{text}");
    assert!(text.trim_end().ends_with("OK"), "{text}");
    let v = cli([OsStr::new("verify"), dir.as_os_str(), OsStr::new("--json")]).json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["counts"]["unverified"], 4);

    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("restored.json");
    let out = cli([
        OsStr::new("restore"),
        dir.as_os_str(),
        OsStr::new("--out"),
        x.as_os_str(),
    ]);
    let text = out.ok();
    for b in backups {
        assert!(text.contains(b), "{b}: {text}");
    }
    assert!(text.contains("verified: no"), "{text}");
    assert!(text.contains("sequence: none recorded"), "{text}");
    let expected: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected_final.json")).unwrap()).unwrap();
    assert_eq!(common::dump(&load(&x, FileFormat::Json)), expected);

    // Up to the second delta, by the time in its name.
    let y = tmp.path().join("until.json");
    let out = cli([
        OsStr::new("--json"),
        OsStr::new("restore"),
        dir.as_os_str(),
        OsStr::new("--out"),
        y.as_os_str(),
        OsStr::new("--until"),
        OsStr::new("1795682694.736609"),
    ]);
    assert_eq!(out.code, 0, "{out:#?}");
    assert_eq!(out.json()["applied"].as_array().unwrap().len(), 3);

    let out = cli([OsStr::new("inspect"), dir.join(backups[2]).as_os_str()]);
    let text = out.ok();
    assert!(text.contains("kind:      delta"), "{text}");
    assert!(text.contains("unverified"), "{text}");
}
