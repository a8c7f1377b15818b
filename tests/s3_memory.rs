//! Peak memory while reading a large object from the loopback S3 server
//! (`source .ci/s3-server.sh`; skipped without `DICTDB_S3_ENDPOINT`): a
//! counting allocator measures the bytes allocated at once while the
//! object streams through `BackupStore::open`. A binary of its own, so no
//! other test allocates meanwhile.
#![cfg(feature = "object-store")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write as _};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dictdb::store::{open_url_with, ObjectStoreOptions, MIN_PART_SIZE};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size > layout.size() {
                let now = NOW.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                NOW.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_large_object_holds_a_few_ranges_at_most() {
    let endpoint = match std::env::var("DICTDB_S3_ENDPOINT") {
        Ok(e) if !e.trim().is_empty() => e.trim().trim_end_matches('/').to_string(),
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "reading_a_large_object_holds_a_few_ranges_at_most: skipped: DICTDB_S3_ENDPOINT not set"
            );
            return;
        }
    };
    let bucket = format!("dictdb-memory-{}", std::process::id());
    let out = Command::new("curl")
        .args(["-sS", "-f", "--max-time", "10", "-X", "PUT"])
        .arg(format!("{endpoint}/{bucket}"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let opts = ObjectStoreOptions::default()
        .retry_timeout(Duration::from_secs(30))
        .part_size(MIN_PART_SIZE)
        .s3_config("aws_endpoint", &endpoint)
        .s3_config("aws_allow_http", "true")
        .s3_config("aws_access_key_id", "test")
        .s3_config("aws_secret_access_key", "test")
        .s3_config("aws_region", "us-east-1");
    let store = open_url_with(&format!("s3://{bucket}/m"), &opts).unwrap();
    let size: usize = 96 << 20;
    let mut w = store.create("large.bin").await.unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    for _ in 0..size >> 20 {
        w.write(chunk.clone()).await.unwrap();
    }
    w.commit().await.unwrap();
    drop(chunk);

    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut reader = store.open("large.bin").await.unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0usize;
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break total;
            }
            assert!(buf[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ((total + i) % (1 << 20) % 253) as u8));
            total += n;
        }
    })
    .await
    .unwrap();
    assert_eq!(read, size);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    eprintln!(
        "reading a {} MiB object: peak {:.1} MiB allocated at once",
        size >> 20,
        peak as f64 / (1 << 20) as f64
    );
    // Two 4 MiB ranges in flight, one queued, one being read, and the
    // client's buffers: far below the object's size.
    assert!(peak < 32 << 20, "peak {peak} bytes");
}
