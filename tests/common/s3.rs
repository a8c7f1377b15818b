//! The loopback S3 server the object-storage tests run against (started by
//! `.ci/s3-server.sh`): its endpoint, fresh buckets.

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The S3 endpoint to test against, or `None` (and a message) to skip.
pub fn endpoint(test: &str) -> Option<String> {
    match std::env::var("DICTDB_S3_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => Some(e.trim().trim_end_matches('/').to_string()),
        _ => {
            // Straight to stderr, past the test harness's capture, so the
            // skip shows in a normal `cargo test` run.
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: DICTDB_S3_ENDPOINT not set (source .ci/s3-server.sh)"
            );
            None
        }
    }
}

/// A bucket name no other test (or earlier run) uses.
pub fn unique_bucket(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "dictdb-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a bucket with a plain HTTP `PUT` (moto does not check signatures).
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .output()
        .expect("curl must be installed to create test buckets");
    assert!(
        out.status.success(),
        "creating bucket {bucket} at {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
