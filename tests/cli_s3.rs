//! `dictdb-backup` on object storage: missing credentials are named before
//! any request (no server needed), and, against the loopback S3 server
//! (`source .ci/s3-server.sh`), a bucket that does not exist, and list,
//! verify, restore, diff and prune of a bucket.
#![cfg(feature = "object-store")]

mod cli_common;
mod common;

use std::process::Command;
use std::sync::Arc;

use cli_common::*;
use dictdb::store::{open_url_with, ObjectStoreOptions};
use dictdb::{BackupConfig, BackupManager, DictDB};
use serde_json::json;

/// The command with an empty environment plus `vars`.
fn bare(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dictdb-backup"));
    cmd.env_clear().env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

#[test]
fn missing_credentials_are_named_before_any_request() {
    for args in [
        vec!["list", "s3://some-bucket/backups"],
        vec!["verify", "s3://some-bucket/backups"],
        vec!["restore", "s3://some-bucket/backups", "--dry-run"],
        vec!["diff", "s3://some-bucket/backups", "latest"],
        vec!["prune", "s3://some-bucket/backups", "--keep-last", "3"],
    ] {
        let out = run(bare(&[]).args(&args));
        out.fails(2, "no AWS credentials are configured");
        for needle in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_EC2_METADATA_DISABLED=false",
        ] {
            assert!(out.stderr.contains(needle), "{args:?}: {out:#?}");
        }
        assert!(!out.stderr.contains("169.254"), "{out:#?}");
    }
    let out = run(bare(&[("AWS_ACCESS_KEY_ID", "AKIA")]).args(["--json", "list", "s3://b/p"]));
    let v = assert_json_error(&out, "credentials");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("but AWS_SECRET_ACCESS_KEY is not"));
    assert_eq!(v["error"]["file"], "s3://b/p");
    // A file:// URL to a missing directory is not created.
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("file://{}", tmp.path().join("nope").display());
    run(bare(&[]).args(["list", &url])).fails(3, "no such directory");
    assert!(!tmp.path().join("nope").exists());
}

/// The endpoint of the loopback S3 server, or `None` to skip.
fn endpoint() -> Option<String> {
    match std::env::var("DICTDB_S3_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => Some(e.trim().trim_end_matches('/').to_string()),
        _ => {
            eprintln!("cli_s3: skipped: DICTDB_S3_ENDPOINT not set (source .ci/s3-server.sh)");
            None
        }
    }
}

fn create_bucket(endpoint: &str, bucket: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .output()
        .expect("curl must be installed to create test buckets");
    assert!(out.status.success(), "creating bucket {bucket}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_lists_verifies_restores_diffs_and_prunes() {
    let Some(ep) = endpoint() else { return };
    let s3 = |args: &[&str]| {
        run(bare(&[
            ("AWS_ENDPOINT", &ep),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ])
        .args(args))
    };
    let missing = format!("s3://dictdb-cli-no-such-bucket-{}/x", std::process::id());
    s3(&["list", &missing]).fails(3, "no such bucket");
    let out = s3(&["--json", "verify", &missing]);
    assert_json_error(&out, "not_found");

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let bucket = format!("dictdb-cli-{}-{nanos}", std::process::id());
    create_bucket(&ep, &bucket);
    let url = format!("s3://{bucket}/svc");
    s3(&["list", &url]).fails(4, "no backups here");
    let options = ObjectStoreOptions::default()
        .max_retries(1)
        .s3_config("aws_endpoint", &ep)
        .s3_config("aws_allow_http", "true")
        .s3_config("aws_access_key_id", "test")
        .s3_config("aws_secret_access_key", "test")
        .s3_config("aws_region", "us-east-1");
    let store = open_url_with(&url, &options).unwrap();
    let db = DictDB::new();
    let t = db.create_table("users").unwrap();
    let m = BackupManager::start(
        &db,
        BackupConfig::with_store(Arc::clone(&store)).incremental(true),
    )
    .await
    .unwrap();
    let mut infos = Vec::new();
    for (i, full) in [true, false, true, false].into_iter().enumerate() {
        t.insert(json!({"name": format!("user {i}")})).unwrap();
        let info = if full {
            m.backup_full().await.unwrap()
        } else {
            m.backup_delta().await.unwrap().info().unwrap().clone()
        };
        infos.push(info);
    }
    m.stop().await.unwrap();
    let names: Vec<&str> = infos.iter().map(|i| i.file.as_str()).collect();
    let seq0 = infos[0].seq.to_string();

    let out = s3(&["list", &url]);
    let text = out.ok();
    assert!(line_of(text, names[3]).starts_with('*'), "{text}");
    assert!(text.contains("checksums were not checked"), "{text}");
    let v = s3(&["--json", "verify", &url]).json();
    assert_eq!(
        (&v["ok"], v["chains"].as_array().map(Vec::len)),
        (&json!(true), Some(2))
    );
    let v = s3(&["--json", "restore", &url, "--dry-run", "--until-seq", &seq0]).json();
    assert_eq!(applied(&v), [names[0]]);
    let v = s3(&["--json", "diff", &url, names[3]]).json();
    assert_eq!(v["totals"], json!({"added": 1, "changed": 0, "removed": 0}));

    let out = s3(&["prune", &url, "--keep-last", "1", "--dry-run"]);
    assert!(
        out.ok().contains(&format!("delete {}", names[0])),
        "{out:#?}"
    );
    assert_eq!(store.list().await.unwrap().len(), 4);
    s3(&["prune", &url, "--keep-last", "1"]).ok();
    let left: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(left, names[2..]);
}
