//! Progress on stderr while files are read (restore, verify, diff): bytes
//! read out of the total and the file being applied, through `indicatif`,
//! on a terminal only. Measured by wrapping the store, so the library
//! needs no callback.

use std::io::{self, IsTerminal, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dictdb::store::{BackupWriter, FileReader, StoredFile};
use dictdb::{BackupName, BackupStore, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar (hidden when stderr is not a terminal).
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// Starts a bar labelled `label`; `total` bytes when known (else the
    /// total of the files the store lists, once it lists them).
    pub(crate) fn start(label: &str, total: Option<u64>) -> Progress {
        if !io::stderr().is_terminal() {
            return Progress {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::no_length(),
        };
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{bar:20}] {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar }
    }

    /// Whether anything is shown.
    pub(crate) fn visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    /// Sets the total, in bytes.
    pub(crate) fn set_total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }

    /// `store`, measured by this bar (unchanged when the bar is hidden).
    pub(crate) fn meter(&self, store: Arc<dyn BackupStore>) -> Arc<dyn BackupStore> {
        if !self.visible() {
            return store;
        }
        Arc::new(Metered {
            inner: store,
            bar: self.bar.clone(),
            files: AtomicU64::new(0),
        })
    }

    /// Erases the bar.
    pub(crate) fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

/// A store that counts the bytes read from it and the files opened.
#[derive(Debug)]
struct Metered {
    inner: Arc<dyn BackupStore>,
    bar: ProgressBar,
    files: AtomicU64,
}

/// A reader that moves the bar by what it reads.
struct Counting {
    inner: FileReader,
    bar: ProgressBar,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

#[async_trait]
impl BackupStore for Metered {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn list(&self) -> Result<Vec<StoredFile>> {
        let files = self.inner.list().await?;
        if self.bar.length().is_none() {
            let total = files
                .iter()
                .filter(|f| BackupName::parse(&f.name).is_some())
                .map(|f| f.size)
                .sum();
            self.bar.set_length(total);
        }
        Ok(files)
    }

    async fn create(&self, name: &str) -> Result<Box<dyn BackupWriter>> {
        self.inner.create(name).await
    }

    async fn open(&self, name: &str) -> Result<FileReader> {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(format!("file {n}: {name}"));
        let inner = self.inner.open(name).await?;
        Ok(Box::new(Counting {
            inner,
            bar: self.bar.clone(),
        }))
    }

    async fn read_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.inner.read_range(name, range).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }
}
