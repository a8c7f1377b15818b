//! Listing a store from the files' headers: what each file says about
//! itself, read from its first kilobytes (a ranged read on object storage),
//! nothing verified.

use std::sync::Arc;

use super::chain::check_identity;
use super::{Plan, Restore, TableSummary};
use crate::error::{Error, Result};
use crate::naming::BackupKind;
use crate::store::BackupStore;

/// One file of a store, as its header describes it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListedFile {
    /// File name.
    pub name: String,
    /// Full or delta (`None`: not a backup file, ignored by restore).
    pub kind: Option<BackupKind>,
    /// Size in bytes.
    pub size: u64,
    /// Time from the name, in seconds since the epoch.
    pub timestamp: Option<f64>,
    /// Sequence range `(from, to]`, when the file records one.
    pub seq: Option<(u64, u64)>,
    /// Tables and their counts, when the file records them (files written
    /// by this version of dictdb).
    pub tables: Vec<TableSummary>,
    /// Records (full) or changes (delta), when the file records the count.
    pub records: Option<u64>,
    /// Whether the file carries dictdb metadata (else: the Python
    /// original's, unverifiable).
    pub ours: bool,
    /// Whether the file is compressed (its name ends in `.zst`, before any
    /// `.age`).
    pub compressed: bool,
    /// Whether the file is encrypted (its name ends in `.age`). Its header
    /// is encrypted too: without an identity, [`error`](Self::error) says
    /// [`DecryptFailure::MissingIdentity`](crate::DecryptFailure) and only
    /// what the name says is known.
    pub encrypted: bool,
    /// Why the header could not be read or does not match the name.
    pub error: Option<Error>,
}

/// What [`list_store`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Listing {
    /// Backup files in write order, then the others by name.
    pub files: Vec<ListedFile>,
    /// What a restore would use, from the headers
    /// ([`Restore::quick_plan`]), or why it cannot.
    pub plan: std::result::Result<Plan, Error>,
}

/// Lists a store from the files' headers only: a few kilobytes read per
/// file, whatever its size (an encrypted file's first 64 KiB chunk).
/// Checksums and records are not read: use [`super::verify_store`] for
/// that. Encrypted files need identities: see [`Restore::list`].
pub async fn list_store(store: Arc<dyn BackupStore>) -> Result<Listing> {
    Restore::new(store).list().await
}

/// [`list_store`] with the identities of `opts`.
pub(crate) async fn list_with(opts: &Restore) -> Result<Listing> {
    let catalog = opts.catalog().await?;
    let mut files = Vec::with_capacity(catalog.entries.len() + catalog.foreign.len());
    for e in &catalog.entries {
        let mut f = ListedFile {
            name: e.file_name().to_string(),
            kind: Some(e.kind()),
            size: e.file.size,
            timestamp: Some(e.name.timestamp()),
            seq: None,
            tables: Vec::new(),
            records: None,
            ours: false,
            compressed: e.name.compressed,
            encrypted: e.name.encrypted,
            error: None,
        };
        let header = catalog.header(e).await;
        match header.and_then(|h| check_identity(e, &h).map(|()| h)) {
            Ok(h) => {
                if let Some(m) = &h.meta {
                    f.ours = true;
                    f.seq = Some((m.from_seq.unwrap_or(0), m.seq));
                    f.records = Some(m.count);
                    f.tables = m
                        .tables
                        .iter()
                        .flatten()
                        .map(|(name, c)| TableSummary {
                            name: name.clone(),
                            records: c.records,
                            deletes: c.deletes,
                        })
                        .collect();
                }
            }
            Err(err) => f.error = Some(err),
        }
        files.push(f);
    }
    files.extend(catalog.foreign.iter().map(|f| ListedFile {
        name: f.name.clone(),
        kind: None,
        size: f.size,
        timestamp: None,
        seq: None,
        tables: Vec::new(),
        records: None,
        ours: false,
        compressed: false,
        encrypted: false,
        error: None,
    }));
    let plan = opts.quick_plan().await;
    Ok(Listing { files, plan })
}
