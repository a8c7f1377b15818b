//! Names and keys a backup store must not trust (issue 16, defects 1, 3 and
//! 9): a name with the largest timestamp or leading zeros (in a directory
//! and in a bucket), stray object keys no plain name addresses, and errors
//! an operator can act on.
//!
//! The object-store tests run against the loopback S3 server
//! (`source .ci/s3-server.sh`) and say they are skipped without it.

mod cli_common;
mod common;

use std::path::Path;
use std::sync::Arc;

use cli_common::run;
use dictdb::restore::{list_store, verify_store, Restore};
use dictdb::{BackupConfig, BackupEvent, BackupManager, DictDB, RetentionPolicy};
use serde_json::json;

const HUGE: &str = "dictdb_backup_18446744073709551615_999999.json";
const PADDED: &str = "dictdb_backup_01795682694_732481.json";
const UNPADDED: &str = "dictdb_backup_1795682694_732481.json";

fn cli() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dictdb-backup"));
    cmd.env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Pruned files, failures, and entries reported skipped, from the events
/// received so far.
fn drain(
    events: &mut tokio::sync::broadcast::Receiver<BackupEvent>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut pruned = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    while let Ok(e) = events.try_recv() {
        match e {
            BackupEvent::Pruned { files } => pruned.extend(files),
            BackupEvent::PruneFailed { file, error } => failed.push(format!("{file}: {error}")),
            BackupEvent::Failed { error, .. } => failed.push(error.to_string()),
            // Reported before each prune (and at start, before anyone listens).
            BackupEvent::EntriesSkipped { entries } => {
                skipped.extend(entries.into_iter().map(|e| e.name)) // api
            }
            _ => {}
        }
    }
    (pruned, failed, skipped)
}

/// A manager with keep-last-1 retention over `store`, two full backups of
/// one record, and the checks every store with hostile names must pass:
/// names go on from the clock, nothing hostile is deleted or trusted, and
/// the data restores. Returns the files the second backup left.
async fn two_backups_survive(store: Arc<dyn dictdb::BackupStore>, hostile: &[&str]) {
    let db = DictDB::new();
    let t = db.create_table("t").unwrap();
    t.insert(json!({"name": "first"})).unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store))
            .retention(RetentionPolicy::default().keep_last(1)),
    )
    .await
    .unwrap();
    let mut events = m.subscribe();
    let first = m.backup_full().await.expect("first backup");
    t.insert(json!({"name": "second"})).unwrap();
    let second = m.backup_full().await.expect("second backup");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for info in [&first, &second] {
        let n = dictdb::BackupName::parse(&info.file).unwrap();
        assert!(
            n.secs.abs_diff(now) < 3600,
            "names follow the clock, not a hostile name: {}",
            info.file
        );
    }
    let status = m.status();
    m.stop().await.unwrap();
    let (pruned, failed, reported) = drain(&mut events);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        pruned,
        std::slice::from_ref(&first.file),
        "only the older real backup is pruned"
    );
    let names: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(names.contains(&second.file), "{names:?}");
    assert!(!names.contains(&first.file), "{names:?}");
    for h in hostile {
        if !h.contains('/') {
            assert!(names.contains(&h.to_string()), "{h} must stay: {names:?}");
        }
    }
    // Reported: the events and the status name each hostile entry, the
    // status with a reason.
    for h in hostile {
        let shown = dictdb::printable_name(h); // api
        assert!(
            reported.iter().any(|n| n.ends_with(&shown)),
            "{h}: {reported:?}"
        ); // api
        let shown = dictdb::printable_name(h); // api
        assert!(
            status
                .skipped
                .iter()
                .any(|s| s.name.ends_with(&shown) && !s.reason.is_empty()),
            "{h}: {:?}",
            status.skipped
        ); // api
    }
    // The data restores, from the real backup.
    let restored = Restore::new(Arc::clone(&store)).run().await.unwrap();
    assert_eq!(
        common::table_map(&restored.db),
        common::table_map(&db),
        "restore uses the real backup"
    );
    assert_eq!(restored.applied.len(), 1);
    // list and verify show the hostile entries with a reason.
    let listing = list_store(Arc::clone(&store)).await.unwrap();
    let report = verify_store(Arc::clone(&store)).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    for h in hostile {
        let shown = dictdb::printable_name(h); // api
        assert!(
            listing
                .files
                .iter()
                .any(|f| f.name.ends_with(&shown) && f.kind.is_none() && f.note.is_some()),
            "{h}: {:?}",
            listing.files
        ); // api
        assert!(
            report
                .files
                .iter()
                .any(|f| f.name.ends_with(&shown) && f.kind.is_none() && f.note.is_some()),
            "{h}"
        ); // api
    }
}

fn empty_backup(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), br#"{"tables":{}}"#).unwrap();
}

#[tokio::test]
async fn largest_timestamp_in_a_directory_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    empty_backup(tmp.path(), HUGE);
    let store: Arc<dyn dictdb::BackupStore> =
        Arc::new(dictdb::LocalStore::open(tmp.path()).unwrap());
    two_backups_survive(Arc::clone(&store), &[HUGE]).await;
    assert!(tmp.path().join(HUGE).exists());
    // The command lists, verifies and restores the real data.
    let dir = tmp.path().to_str().unwrap();
    let out = run(cli().args(["--json", "list", dir]));
    assert_eq!(out.code, 0, "{out:#?}");
    let v = out.json();
    let f = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == HUGE)
        .unwrap()
        .clone();
    assert!(f["kind"].is_null(), "{f}");
    assert_eq!(f["status"], "skipped", "{f}"); // api
    let out = run(cli().args(["verify", dir]));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(out.stdout.contains("SKIPPED"), "{out:#?}"); // api
}

#[tokio::test]
async fn leading_zeros_in_a_directory_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    empty_backup(tmp.path(), PADDED);
    let store: Arc<dyn dictdb::BackupStore> =
        Arc::new(dictdb::LocalStore::open(tmp.path()).unwrap());
    two_backups_survive(Arc::clone(&store), &[PADDED]).await;
    assert!(tmp.path().join(PADDED).exists());
    // `prune` of the command neither deletes it nor claims to.
    let dir = tmp.path().to_str().unwrap();
    let out = run(cli().args(["prune", dir, "--keep-last", "1"]));
    assert_eq!(out.code, 0, "{out:#?}");
    assert!(!out.stdout.contains(UNPADDED), "{out:#?}");
    assert!(
        out.stdout.contains(&format!("skipped {PADDED}")),
        "{out:#?}"
    ); // api
    assert!(tmp.path().join(PADDED).exists());
}

/// A directory holding only the 13-byte `{"tables":{}}` under the largest
/// name: no backups, not an empty database restored with exit 0; the
/// message says why the file is skipped.
#[test]
fn only_a_hostile_name_is_no_backup() {
    let tmp = tempfile::tempdir().unwrap();
    empty_backup(tmp.path(), HUGE);
    let dir = tmp.path().to_str().unwrap();
    let out_file = tmp.path().join("out").join("restored.json");
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    for args in [
        vec!["restore", dir, "--out", out_file.to_str().unwrap()],
        vec!["list", dir],
        vec!["verify", dir],
    ] {
        let out = run(cli().args(&args));
        out.fails(4, "no backups here");
        assert!(
            out.stderr.contains("outside 1970-01-01..2200-01-01"),
            "{out:#?}"
        ); // api
    }
    assert!(!out_file.exists());
}

/// The naming rules themselves: hostile stamps never overflow or wrap.
#[test]
fn hostile_stamps_are_refused_by_name() {
    for bad in [
        HUGE,
        PADDED,
        "dictdb_delta_18446744073709551615_999999.msgpack",
        "dictdb_backup_99999999999999999999999_000000.json",
        "dictdb_backup_7258118400_000000.json",
    ] {
        assert!(dictdb::BackupName::parse(bad).is_none(), "{bad}");
        assert!(
            matches!(
                dictdb::BackupName::classify(bad),
                dictdb::NameCheck::Refused(_)
            ),
            "{bad}"
        ); // api
    }
    assert!(dictdb::BackupName::parse("dictdb_backup_7258118399_999999.json").is_some());
    assert!(dictdb::BackupName::parse("dictdb_backup_0_000000.json").is_some());
}

#[cfg(feature = "object-store")]
mod s3 {
    use super::*;

    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;
    use std::time::Duration;

    use dictdb::store::{open_url_with, ObjectStoreOptions};

    use crate::common::s3::{endpoint, unique_bucket};

    fn curl(args: &[&str]) -> String {
        let out = Command::new("curl")
            .args(["-sS", "-f", "--max-time", "10", "--path-as-is"])
            .args(args)
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Puts an object under a raw (already URL-encoded) key, as another tool
    /// would, bypassing every check of ours and of object_store.
    fn put_raw(endpoint: &str, bucket: &str, raw_key: &str, body: &str) {
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            body,
            &format!("{endpoint}/{bucket}/{raw_key}"),
        ]);
    }

    fn options(endpoint: &str) -> ObjectStoreOptions {
        ObjectStoreOptions::default()
            .max_retries(0)
            .retry_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .request_timeout(Duration::from_secs(10))
            .s3_config("aws_endpoint", endpoint)
            .s3_config("aws_allow_http", "true")
            .s3_config("aws_access_key_id", "test")
            .s3_config("aws_secret_access_key", "test")
            .s3_config("aws_region", "us-east-1")
    }

    fn s3_cli(endpoint: &str) -> Command {
        let mut c = super::cli();
        c.env("AWS_ENDPOINT", endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stray_keys_and_hostile_names_in_a_bucket() {
        let Some(ep) = endpoint("stray_keys_and_hostile_names_in_a_bucket") else {
            return;
        };
        let bucket = unique_bucket("names");
        curl(&["-X", "PUT", &format!("{ep}/{bucket}")]);
        // Keys object_store cannot parse (each fails a whole listing page on
        // its own) and names no clock wrote.
        put_raw(&ep, &bucket, "svc/..", "x");
        put_raw(&ep, &bucket, "svc/../x", "x");
        put_raw(&ep, &bucket, "svc//x", "x");
        put_raw(&ep, &bucket, "svc/a%01b", "x");
        put_raw(&ep, &bucket, &format!("svc/{HUGE}"), r#"{"tables":{}}"#);
        put_raw(&ep, &bucket, &format!("svc/{PADDED}"), r#"{"tables":{}}"#);
        let store = open_url_with(&format!("s3://{bucket}/svc"), &options(&ep)).unwrap();
        two_backups_survive(Arc::clone(&store), &[HUGE, PADDED, "svc/..", "svc/a\u{1}b"]).await;
        let keys = curl(&[&format!("{ep}/{bucket}?list-type=2")]);
        for k in ["<Key>svc/..</Key>", "<Key>svc//x</Key>", HUGE, PADDED] {
            assert!(keys.contains(k), "{k} must stay: {keys}");
        }
        // The command lists, verifies and restores; names are escaped.
        let url = format!("s3://{bucket}/svc");
        let out = run(s3_cli(&ep).args(["list", &url]));
        assert_eq!(out.code, 0, "{out:#?}");
        assert!(out.stdout.contains("svc/a\\u{1}b"), "{out:#?}"); // api
        assert!(!out.stdout.contains('\u{1}'), "{out:#?}");
        let out = run(s3_cli(&ep).args(["verify", &url]));
        assert_eq!(out.code, 0, "{out:#?}");
        let out = run(s3_cli(&ep).args(["prune", &url, "--keep-last", "1"]));
        assert_eq!(out.code, 0, "{out:#?}");
        assert!(out.stdout.contains("skipped svc/..:"), "{out:#?}"); // api
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("restored.json");
        let out = run(s3_cli(&ep).args(["restore", &url, "--out", target.to_str().unwrap()]));
        assert_eq!(out.code, 0, "{out:#?}");
        assert!(out.stderr.contains("skipped svc/..:"), "{out:#?}"); // api
        assert!(out.stderr.contains(&format!("skipped {HUGE}:")), "{out:#?}"); // api
        let restored = std::fs::read_to_string(&target).unwrap();
        assert!(restored.contains("second"), "{restored}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_bucket_and_plain_http_are_named() {
        let Some(ep) = endpoint("missing_bucket_and_plain_http_are_named") else {
            return;
        };
        let bucket = unique_bucket("nobucket");
        let store = open_url_with(&format!("s3://{bucket}/svc"), &options(&ep)).unwrap();
        let mut w = store
            .create("dictdb_backup_1795682694_000000.json")
            .await
            .unwrap();
        w.write(b"{}".to_vec()).await.unwrap();
        let e = w.commit().await.unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains(&bucket), "{e}");
        assert!(!e.contains('<') && !e.contains('\n'), "{e}");
        assert!(!e.contains("not found"), "{e}");
        let e = store.list().await.unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        // An http:// endpoint without AWS_ALLOW_HTTP.
        let store = open_url_with(
            &format!("s3://{bucket}/svc"),
            &options(&ep).s3_config("aws_allow_http", "false"),
        )
        .unwrap();
        let e = store.list().await.unwrap_err().to_string();
        assert!(e.contains("AWS_ALLOW_HTTP=true"), "{e}");
    }

    /// A server that answers every request with an HTML error page.
    fn html_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(8) {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 8192];
                let _ = c.read(&mut buf);
                let body = "<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>";
                let _ = write!(
                    c,
                    "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn html_answers_are_not_pasted() {
        let ep = html_server();
        let store = open_url_with("s3://b/svc", &options(&ep)).unwrap();
        let e = store.list().await.unwrap_err().to_string();
        assert!(!e.contains('<'), "{e}");
        assert!(e.contains("AWS_ENDPOINT"), "{e}");
    }

    #[test]
    fn urls_with_parts_we_ignore_are_refused() {
        for bad in [
            "s3://user:secret@bucket/svc",
            "s3://bucket:9000/svc",
            "s3://bucket/svc?versionId=1",
            "s3://bucket/svc#x",
            "s3://bucket/svc/../svc2",
        ] {
            let e = open_url_with(bad, &ObjectStoreOptions::default());
            assert!(e.is_err(), "{bad} must be refused");
        }
        let creds = ObjectStoreOptions::default()
            .s3_config("aws_access_key_id", "k")
            .s3_config("aws_secret_access_key", "s");
        assert!(open_url_with("s3://bucket/svc/", &creds).is_ok());
    }

    /// No credentials anywhere: the error says so and names the settings.
    /// Runs in a child process whose environment holds no credentials; the
    /// metadata endpoint is a closed loopback port, so nothing leaves
    /// 127.0.0.1.
    #[test]
    fn missing_credentials_are_named() {
        let Some(ep) = endpoint("missing_credentials_are_named") else {
            return;
        };
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        for disabled in [false, true] {
            let mut cmd = Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "--exact",
                "s3::no_credentials_child",
                "--include-ignored",
                "--nocapture",
            ])
            .env_clear()
            .env("DICTDB_NAMES_CHILD", "1")
            .env("AWS_ENDPOINT", &ep)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_METADATA_ENDPOINT", format!("http://{closed}"));
            if disabled {
                cmd.env("AWS_EC2_METADATA_DISABLED", "true");
            }
            let out = cmd.output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
        }
    }

    #[tokio::test]
    #[ignore = "run by missing_credentials_are_named in a clean environment"]
    async fn no_credentials_child() {
        if std::env::var("DICTDB_NAMES_CHILD").is_err() {
            return;
        }
        let options = ObjectStoreOptions::default()
            .max_retries(0)
            .retry_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2));
        // With AWS_EC2_METADATA_DISABLED=true the store is refused when
        // opened; without, the first request fails.
        let e = match dictdb::store::open_url_with("s3://dictdb-test/svc", &options) {
            Ok(store) => store.list().await.unwrap_err().to_string(),
            Err(e) => {
                assert!(std::env::var("AWS_EC2_METADATA_DISABLED").is_ok(), "{e}");
                e.to_string()
            }
        };
        println!("error: {e}");
        assert!(e.contains("no S3 credentials"), "{e}");
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        assert!(!e.contains("latest/api/token"), "{e}");
    }
}
