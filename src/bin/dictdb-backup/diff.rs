//! `diff`: what changed between two states of a store — "what did this
//! delta do?" (the state before a file against the state after it) and
//! "what changed between 09:00 and 10:00?" — tables created and dropped,
//! records added, changed and removed, by key.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dictdb::{BackupName, BackupStore, DictDB, FileFormat, Key, Snapshot};
use serde::Serialize;

use crate::error::{explain, CliError, Exit};
use crate::output::{columns, plural, Output};
use crate::{points, store};

/// What `diff` was asked for.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) store: PathBuf,
    pub(crate) from: String,
    pub(crate) to: Option<String>,
    /// `--allow-unverified`, `--key-field`.
    pub(crate) python: crate::keys::PythonArgs,
}

#[derive(Serialize)]
struct DiffReport {
    store: String,
    from: Side,
    to: Side,
    identical: bool,
    tables_created: Vec<Created>,
    tables_dropped: Vec<Dropped>,
    tables: Vec<TableDiff>,
    totals: Totals,
}

/// One end of the comparison.
#[derive(Serialize)]
pub(crate) struct Side {
    /// The point as given (`latest` when defaulted).
    pub(crate) point: String,
    /// What state that is, in words.
    pub(crate) description: String,
    /// The backup files restored to reach it.
    pub(crate) files: Vec<String>,
    pub(crate) seq: Option<u64>,
}

#[derive(Serialize)]
struct Created {
    name: String,
    primary_key: String,
}

#[derive(Serialize)]
struct Dropped {
    name: String,
    records: usize,
}

#[derive(Serialize)]
struct TableDiff {
    name: String,
    added: Keys,
    changed: Keys,
    removed: Keys,
}

#[derive(Serialize, Default)]
struct Keys {
    count: usize,
    keys: Vec<Key>,
}

#[derive(Serialize, Default)]
struct Totals {
    added: usize,
    changed: usize,
    removed: usize,
}

/// A state of the store and how it was reached.
pub(crate) struct State {
    pub(crate) side: Side,
    pub(crate) snapshot: Snapshot,
}

pub(crate) async fn run(req: Request, out: Output) -> Result<Exit, CliError> {
    let store = store::open(&req.store)?;
    // Entries named like backups that cannot be read are points too: a
    // diff up to one says why it cannot be made, as a restore would.
    let names: Vec<String> = store
        .list_all()
        .await?
        .with_unreadable_backups()
        .into_iter()
        .map(|f| f.name)
        .collect();
    if !names.iter().any(|n| BackupName::parse(n).is_some()) {
        return Err(crate::error::no_backups(&store.location(), names.len()));
    }
    let from = points::parse(&req.from, &req.store, &names)?;
    let (older, newer) = match (&req.to, from) {
        (None, points::Point::File(name)) => {
            let before = points::before_file(&store, &names, &name, &req.python).await?;
            let after = resolve(&store, &req.python, &req.from, points::Point::File(name)).await?;
            (before, after)
        }
        (to, from) => {
            let to_arg = to.as_deref().unwrap_or("latest");
            let to = points::parse(to_arg, &req.store, &names)?;
            let older = resolve(&store, &req.python, &req.from, from).await?;
            (older, resolve(&store, &req.python, to_arg, to).await?)
        }
    };
    let report = compare(dictdb::printable_name(&store.location()), older, newer);
    out.report(&report)?;
    Ok(Exit::Ok)
}

/// Restores (or loads) the state at `point`.
async fn resolve(
    store: &Arc<dyn BackupStore>,
    python: &crate::keys::PythonArgs,
    arg: &str,
    point: points::Point,
) -> Result<State, CliError> {
    if let points::Point::Local(path) = &point {
        return load(arg, path).await;
    }
    let (opts, until, until_seq) = points::restore_options(store, &point);
    let opts = python.apply(opts);
    let restored = match opts.run().await {
        Ok(r) => r,
        Err(e) => return Err(explain(e, &**store, until, until_seq).await),
    };
    if let points::Point::File(name) = &point {
        if restored.applied.last().map(|p| &p.name) != Some(name) {
            return Err(CliError::new(
                Exit::Damaged,
                "broken_chain",
                format!(
                    "{name}: no restore reaches the state after it (a delta with no full backup \
                     before it?); run `dictdb-backup verify`"
                ),
            )
            .about(name.clone()));
        }
    }
    let files: Vec<String> = restored.applied.iter().map(|p| p.name.clone()).collect();
    Ok(State {
        side: Side {
            point: arg.to_string(),
            description: points::describe(&point, &files),
            files,
            seq: restored.seq,
        },
        snapshot: restored.db.snapshot(),
    })
}

/// A full backup file outside the store (a restore's `--out`, say).
async fn load(arg: &str, path: &Path) -> Result<State, CliError> {
    let format = store::format_by_name(path).unwrap_or(FileFormat::Json);
    let db = DictDB::load_async(path, format).await?;
    Ok(State {
        side: Side {
            point: arg.to_string(),
            description: format!("the file {}", path.display()),
            files: Vec::new(),
            seq: None,
        },
        snapshot: db.snapshot(),
    })
}

fn compare(store: String, older: State, newer: State) -> DiffReport {
    let (old, new) = (&older.snapshot, &newer.snapshot);
    let changes = old.changes_to(new);
    let tables_dropped = changes
        .dropped()
        .map(|name| Dropped {
            name: name.to_string(),
            records: old.table(name).map_or(0, |t| t.len()),
        })
        .collect();
    let tables_created: Vec<Created> = changes
        .created()
        .map(|(name, pk)| Created {
            name: name.to_string(),
            primary_key: pk.to_string(),
        })
        .collect();
    let mut totals = Totals::default();
    let mut tables = Vec::new();
    for t in changes.tables() {
        let created = tables_created.iter().any(|c| c.name == t.name());
        let before = old.table(t.name()).filter(|_| !created);
        let pk = new.table(t.name()).map_or("id", |n| n.primary_key());
        let mut d = TableDiff {
            name: t.name().to_string(),
            added: Keys::default(),
            changed: Keys::default(),
            removed: Keys::default(),
        };
        for rec in t.upserts() {
            let key = rec.get(pk).and_then(|v| Key::from_json(&v, pk).ok());
            let Some(key) = key else { continue };
            let existed = before.is_some_and(|b| b.get(&key).is_some());
            let into = if existed {
                &mut d.changed
            } else {
                &mut d.added
            };
            into.count += 1;
            into.keys.push(key);
        }
        d.removed.count = t.deletes().len();
        d.removed.keys = t.deletes().to_vec();
        totals.added += d.added.count;
        totals.changed += d.changed.count;
        totals.removed += d.removed.count;
        tables.push(d);
    }
    DiffReport {
        store,
        identical: changes.is_empty(),
        from: older.side,
        to: newer.side,
        tables_created,
        tables_dropped,
        tables,
        totals,
    }
}

/// At most this many keys per category in the text (all of them in JSON).
const SHOWN_KEYS: usize = 10;

fn show_keys(keys: &[Key]) -> String {
    let mut s: Vec<String> = keys.iter().take(SHOWN_KEYS).map(Key::to_string).collect();
    if keys.len() > SHOWN_KEYS {
        s.push(format!(
            "... ({} more; --json lists all)",
            keys.len() - SHOWN_KEYS
        ));
    }
    s.join(", ")
}

impl fmt::Display for DiffReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (label, side) in [("from", &self.from), ("to:  ", &self.to)] {
            let label = if label == "from" { "from:" } else { label };
            let seq = side
                .seq
                .map(|s| format!(", sequence {s}"))
                .unwrap_or_default();
            writeln!(f, "{label} {}{seq}", side.description)?;
        }
        if self.identical {
            return writeln!(
                f,
                "no changes: both states hold the same tables and records"
            );
        }
        for c in &self.tables_created {
            writeln!(f, "created table {} (key {})", c.name, c.primary_key)?;
        }
        for d in &self.tables_dropped {
            writeln!(
                f,
                "dropped table {} ({})",
                d.name,
                plural(d.records as u64, "record", "records")
            )?;
        }
        let mut rows = vec![["  TABLE", "ADDED", "CHANGED", "REMOVED"]
            .map(String::from)
            .to_vec()];
        for t in &self.tables {
            rows.push(vec![
                format!("  {}", t.name),
                t.added.count.to_string(),
                t.changed.count.to_string(),
                t.removed.count.to_string(),
            ]);
        }
        if !self.tables.is_empty() {
            columns(f, &rows)?;
        }
        for t in &self.tables {
            for (what, keys) in [
                ("added", &t.added),
                ("changed", &t.changed),
                ("removed", &t.removed),
            ] {
                if keys.count > 0 {
                    writeln!(f, "  {} {what}: {}", t.name, show_keys(&keys.keys))?;
                }
            }
        }
        let n = &self.totals;
        writeln!(
            f,
            "total: {} added, {} changed, {} removed; {} created, {} dropped",
            plural(n.added as u64, "record", "records"),
            n.changed,
            n.removed,
            plural(self.tables_created.len() as u64, "table", "tables"),
            self.tables_dropped.len()
        )
    }
}
