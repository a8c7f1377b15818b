//! Points of a store's history that `diff` compares: a backup file (the
//! state once it is applied), a time (as `--until` takes it), a sequence
//! number (`seq:N`), `latest`, or a full backup file outside the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dictdb::restore::Restore;
use dictdb::{BackupName, BackupStore, DictDB, Error};
use jiff::{SignedDuration, Timestamp};

use crate::diff::{Side, State};
use crate::error::{explain, CliError};
use crate::output::plural;
use crate::time;

/// A point of a store's history.
#[derive(Debug)]
pub(crate) enum Point {
    /// A backup file of the store: the state once it is applied.
    File(String),
    /// A full backup file outside the store.
    Local(PathBuf),
    Time(Timestamp),
    Seq(u64),
    Latest,
}

/// Reads a point given on the command line; `names` are the store's files.
pub(crate) fn parse(arg: &str, store: &Path, names: &[String]) -> Result<Point, CliError> {
    let a = arg.trim();
    if a.eq_ignore_ascii_case("latest") || a.eq_ignore_ascii_case("newest") {
        return Ok(Point::Latest);
    }
    if names.iter().any(|n| n == a) {
        return Ok(Point::File(a.to_string()));
    }
    let path = Path::new(a);
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(seq) = a.strip_prefix("seq:").or_else(|| a.strip_prefix("seq=")) {
        return seq
            .trim()
            .parse()
            .map(Point::Seq)
            .map_err(|_| CliError::usage(format!("{a}: expected seq:N with N a sequence number")));
    }
    // A path to a file of the store's own directory.
    let in_store = !crate::store::is_url(store)
        && names.iter().any(|n| n == file_name)
        && matches!(
            (path.parent().map(Path::canonicalize), store.canonicalize()),
            (Some(Ok(a)), Ok(b)) if a == b
        );
    if in_store {
        return Ok(Point::File(file_name.to_string()));
    }
    if path.is_file() {
        return Ok(Point::Local(path.to_path_buf()));
    }
    if BackupName::parse(file_name).is_some() {
        return Err(CliError::not_found(
            a,
            format!("{a}: no such backup file in {}", store.display()),
        ));
    }
    time::parse_until(a).map(Point::Time).map_err(|why| {
        CliError::usage(format!(
            "{a}: not a backup file of {}, a file, seq:N or latest, nor a time: {why}",
            store.display()
        ))
    })
}

/// The restore that reaches `point`, with its limits (for messages).
pub(crate) fn restore_options(
    store: &Arc<dyn BackupStore>,
    point: &Point,
) -> (Restore, Option<Timestamp>, Option<u64>) {
    let r = crate::keys::restore(Arc::clone(store));
    match point {
        Point::File(name) => match time::of_file(name) {
            Some(t) => (r.until_time(time::system(t)), Some(t), None),
            None => (r, None, None),
        },
        Point::Time(t) => (r.until_time(time::system(*t)), Some(*t), None),
        Point::Seq(n) => (r.until_seq(*n), None, Some(*n)),
        Point::Local(_) | Point::Latest => (r, None, None),
    }
}

/// The state just before the backup file `name`: everything written
/// before it (nothing, for the first backup of the store).
pub(crate) async fn before_file(
    store: &Arc<dyn BackupStore>,
    names: &[String],
    name: &str,
    python: &crate::keys::PythonArgs,
) -> Result<State, CliError> {
    let point = format!("before {name}");
    let empty = |why: String| State {
        side: Side {
            point: point.clone(),
            description: why,
            files: Vec::new(),
            seq: None,
        },
        snapshot: DictDB::new().snapshot(),
    };
    let stamp = BackupName::parse(name).map(|n| n.stamp());
    let earlier = names
        .iter()
        .filter_map(|n| BackupName::parse(n))
        .any(|n| Some(n.stamp()) < stamp);
    let t = time::of_file(name).and_then(|t| t.checked_sub(SignedDuration::from_micros(1)).ok());
    let (Some(t), true) = (t, earlier) else {
        return Ok(empty(format!("nothing: {name} is the first backup")));
    };
    let restored = match python
        .apply(crate::keys::restore(Arc::clone(store)))
        .until_time(time::system(t))
        .run()
        .await
    {
        Ok(r) => r,
        Err(Error::NoBackup(_)) => {
            return Ok(empty(format!(
                "nothing: no full backup before {name} to restore"
            )))
        }
        Err(e) => return Err(explain(e, &**store, Some(t), None).await),
    };
    let files: Vec<String> = restored.applied.iter().map(|p| p.name.clone()).collect();
    Ok(State {
        side: Side {
            description: format!("the state before {name} ({})", chain(&files)),
            point,
            files,
            seq: restored.seq,
        },
        snapshot: restored.db.snapshot(),
    })
}

/// `dictdb_backup_X + 2 deltas`.
fn chain(files: &[String]) -> String {
    match files.first() {
        Some(base) => format!(
            "{base} + {}",
            plural(files.len() as u64 - 1, "delta", "deltas")
        ),
        None => "nothing".into(),
    }
}

/// What state a point is, in words.
pub(crate) fn describe(point: &Point, files: &[String]) -> String {
    let chain = chain(files);
    match point {
        Point::File(name) => format!("the state after {name} ({chain})"),
        Point::Time(t) => format!("the state at {} ({chain})", time::format(*t)),
        Point::Seq(n) => format!("the state at sequence {n} ({chain})"),
        Point::Latest => format!("the newest state ({chain})"),
        Point::Local(p) => format!("the file {}", p.display()),
    }
}
