//! `--identity FILE`: the age identities that decrypt encrypted backups,
//! read once and used by every restore, verify, inspect, list, diff and
//! follow.

use std::path::PathBuf;
use std::sync::Arc;
#[cfg(feature = "encryption")]
use std::sync::OnceLock;

use dictdb::restore::Restore;
use dictdb::BackupStore;

use crate::error::CliError;

#[cfg(feature = "encryption")]
static IDENTITIES: OnceLock<Vec<dictdb::encryption::Identity>> = OnceLock::new();

/// Reads the identity files given with `--identity` (each holds
/// `AGE-SECRET-KEY-1…` lines, as `age-keygen` writes them).
#[cfg(feature = "encryption")]
pub(crate) fn load(files: &[PathBuf]) -> Result<(), CliError> {
    let mut all = Vec::new();
    for f in files {
        let shown = f.display().to_string();
        match std::fs::metadata(f) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::not_found(
                    &shown,
                    format!("--identity {shown}: no such file"),
                ))
            }
            _ => {}
        }
        let ids = dictdb::encryption::Identity::from_file(f).map_err(|e| match e {
            // Not a backup configuration: the operator's identity file.
            dictdb::Error::Config(m) => {
                CliError::usage(format!("invalid identity file: {m}")).about(shown.clone())
            }
            e => CliError::from(e).about(shown.clone()),
        })?;
        all.extend(ids);
    }
    // Called once, from main, before anything reads the identities.
    let _ = IDENTITIES.set(all);
    Ok(())
}

/// Without the `encryption` feature, `--identity` is refused.
#[cfg(not(feature = "encryption"))]
pub(crate) fn load(files: &[PathBuf]) -> Result<(), CliError> {
    if files.is_empty() {
        return Ok(());
    }
    Err(CliError::usage(
        "--identity needs dictdb-backup built with the `encryption` feature \
         (cargo install dictdb --features encryption)",
    ))
}

/// A restore of `store` with the identities given.
pub(crate) fn restore(store: Arc<dyn BackupStore>) -> Restore {
    let r = Restore::new(store);
    #[cfg(feature = "encryption")]
    let r = match IDENTITIES.get() {
        Some(ids) => r.identities(ids.iter().cloned()),
        None => r,
    };
    r
}

/// The options for stores the Python original wrote, shared by the
/// commands that restore (`verify`, `restore`, `diff`, `follow`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct PythonArgs {
    /// Accept files without a checksum (written by the Python original)
    /// even after files written by dictdb in the store, where they are
    /// refused by default: a damaged file of ours cannot lose its
    /// checksum in one byte, but the store may hold worse damage.
    #[arg(long)]
    pub(crate) allow_unverified: bool,
    /// TABLE=FIELD: the key field of a table that deltas of the Python
    /// original change without the chain holding it (a table created
    /// after the original's last full backup: its deltas do not say).
    /// Split at the first `=`; may be given for several tables (for
    /// one table twice, the last wins).
    #[arg(long, value_name = "TABLE=FIELD", value_parser = parse_key_field)]
    pub(crate) key_field: Vec<(String, String)>,
}

impl PythonArgs {
    /// `restore` with these options.
    pub(crate) fn apply(&self, restore: Restore) -> Restore {
        self.key_field.iter().fold(
            restore.allow_unverified(self.allow_unverified),
            |r, (table, field)| r.key_field(table, field),
        )
    }

    /// A replica's options with these.
    pub(crate) fn replica(
        &self,
        options: dictdb::replica::ReplicaOptions,
    ) -> dictdb::replica::ReplicaOptions {
        self.key_field.iter().fold(
            options.allow_unverified(self.allow_unverified),
            |o, (table, field)| o.key_field(table, field),
        )
    }
}

/// `TABLE=FIELD`, split at the first `=`; neither side empty.
fn parse_key_field(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((table, field)) if !table.is_empty() && !field.is_empty() => {
            Ok((table.to_string(), field.to_string()))
        }
        _ => Err(format!(
            "not TABLE=FIELD: {s:?} (for example events=event_id)"
        )),
    }
}

/// Replica options with the identities given.
pub(crate) fn replica(options: dictdb::replica::ReplicaOptions) -> dictdb::replica::ReplicaOptions {
    #[cfg(feature = "encryption")]
    let options = match IDENTITIES.get() {
        Some(ids) => ids.iter().cloned().fold(options, |o, id| o.identity(id)),
        None => options,
    };
    options
}
