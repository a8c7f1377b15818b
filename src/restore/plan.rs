//! Choosing what to restore, from the files' headers.

use std::time::SystemTime;

use super::apply::check_file;
use super::chain::{check_identity, name_time, Catalog, Cursor, Entry};
use super::{Plan, PlannedFile, Restore, Stopped};
use crate::error::{Error, Result};
use crate::format::Header;

/// The chain a restore uses: its base, the deltas to apply, and where a
/// lenient restore stops.
#[derive(Debug)]
pub(crate) struct Chosen {
    /// Index of the full backup in the catalog.
    pub(crate) base: usize,
    pub(crate) base_header: Header,
    /// Index and header of each delta to apply, in order.
    pub(crate) deltas: Vec<(usize, Header)>,
    pub(crate) stopped: Option<Stopped>,
}

pub(crate) fn planned(e: &Entry, h: &Header) -> PlannedFile {
    PlannedFile {
        name: e.file_name().to_string(),
        kind: e.kind(),
        timestamp: e.name.timestamp(),
        seq: h.meta.as_ref().map(|m| (m.from_seq.unwrap_or(0), m.seq)),
        size: e.file.size,
        fencing_token: h.meta.as_ref().and_then(|m| m.fencing_token),
    }
}

impl Chosen {
    pub(crate) fn into_plan(self, catalog: &Catalog, skipped: Vec<Stopped>) -> Plan {
        let mut files = vec![planned(&catalog.entries[self.base], &self.base_header)];
        files.extend(
            self.deltas
                .iter()
                .map(|(i, h)| planned(&catalog.entries[*i], h)),
        );
        let seq = self
            .deltas
            .last()
            .map_or(&self.base_header, |(_, h)| h)
            .meta
            .as_ref()
            .map(|m| m.seq);
        Plan {
            files,
            seq,
            skipped,
            stopped: self.stopped,
            verified: None,
        }
    }
}

/// Reads a header and checks what a file must say about itself (its kind
/// and name; for a file without checksum, whether one may be trusted here).
pub(crate) async fn checked_header(opts: &Restore, catalog: &Catalog, e: &Entry) -> Result<Header> {
    let h = catalog.header(e).await?;
    check_identity(e, &h)?;
    if h.meta.is_none() {
        catalog.unverified_allowed(e, opts.allow_unverified).await?;
    }
    Ok(h)
}

fn describe(t: SystemTime) -> String {
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => format!("{}.{:06}", d.as_secs(), d.subsec_micros()),
        Err(_) => "before 1970".into(),
    }
}

/// Picks the newest usable full backup within the limits (leaving out the
/// `excluded` ones) and the deltas after it, checking every link from the
/// headers. Full backups passed over in lenient mode go to `skipped`.
pub(crate) async fn choose(
    opts: &Restore,
    catalog: &Catalog,
    excluded: &[usize],
    skipped: &mut Vec<Stopped>,
) -> Result<Chosen> {
    let within_time = |e: &Entry| opts.until_time.is_none_or(|t| name_time(&e.name) <= t);
    if let (Some(t), Some(first)) = (opts.until_time, catalog.entries.first()) {
        if !within_time(first) {
            return Err(Error::NoBackup(format!(
                "{}: nothing was backed up at or before {} (the first backup, {}, is later)",
                catalog.store.location(),
                describe(t),
                first.file_name()
            )));
        }
    }
    let mut base = None;
    for i in catalog.fulls_to_try().await {
        let e = &catalog.entries[i];
        if excluded.contains(&i) || !within_time(e) {
            continue;
        }
        let h = match checked_header(opts, catalog, e).await {
            Ok(h) => h,
            // Lenient mode passes over damage, never a store that did not
            // answer: that file may be sound.
            Err(error) if !error.is_store_failure() => {
                skipped.push(stop_at(opts, e, error)?);
                continue;
            }
            Err(error) => return Err(error),
        };
        if let Some(limit) = opts.until_seq {
            match &h.meta {
                None => {
                    return Err(Error::chain(
                        e.file_name(),
                        "written without sequence numbers (by the Python original?): \
                         restore by time instead",
                    ))
                }
                Some(m) if m.seq > limit => continue,
                Some(_) => {}
            }
        }
        base = Some((i, h));
        break;
    }
    let Some((base, base_header)) = base else {
        // Every full backup within the limits is damaged (lenient mode
        // passed over them): damage, not an empty store; name the newest.
        if let Some(s) = skipped.first() {
            return Err(Error::corrupt(
                &s.file,
                format!(
                    "no usable full backup in {}: this one is damaged ({}){}",
                    catalog.store.location(),
                    s.error,
                    match skipped.len() {
                        1 => String::new(),
                        n => format!(", and {} older", n - 1),
                    }
                ),
            ));
        }
        // Deltas and no full backup at all: name the first delta and the
        // base it builds on (the command reports this as a broken chain).
        if let Some(first) = catalog.entries.first() {
            if catalog.fulls().next().is_none() {
                let base = match catalog.header(first).await {
                    Ok(h) => h.meta.and_then(|m| m.base),
                    Err(_) => None,
                };
                let builds_on = base.map_or_else(String::new, |b| {
                    format!(", which builds on {b}, not in the store")
                });
                return Err(Error::NoBackup(format!(
                    "{} (only deltas, no full backup to apply them to: the first is {}{builds_on})",
                    catalog.store.location(),
                    first.file_name()
                )));
            }
        }
        return Err(Error::NoBackup(catalog.store.location()));
    };
    chain_from(opts, catalog, base, base_header).await
}

/// Plans the chain of the full backup `base` as a strict restore without
/// limits would (what verify checks of every chain).
pub(crate) async fn choose_chain(opts: &Restore, catalog: &Catalog, base: usize) -> Result<Chosen> {
    let h = checked_header(opts, catalog, &catalog.entries[base]).await?;
    chain_from(opts, catalog, base, h).await
}

/// The deltas after `base` that a restore applies, every link checked.
async fn chain_from(
    opts: &Restore,
    catalog: &Catalog,
    base: usize,
    base_header: Header,
) -> Result<Chosen> {
    let within_time = |e: &Entry| opts.until_time.is_none_or(|t| name_time(&e.name) <= t);
    let mut cursor = Cursor::start(&catalog.entries[base], &base_header);
    let mut deltas = Vec::new();
    let mut stopped = None;
    // The last file taken (the base, then each delta).
    let mut last = base;
    for j in catalog.chain_deltas(base) {
        // Sequence numbers are exact: a chain that reached the limit has
        // the state asked for, whatever comes after it.
        if let (Some(limit), Some(seq)) = (opts.until_seq, cursor.seq) {
            if seq == limit {
                break;
            }
        }
        let e = &catalog.entries[j];
        let beyond_time = !within_time(e);
        // A limit at the time of the last file taken leaves no room for a
        // missing one: nothing after it needs to be read.
        if beyond_time && opts.until_time == Some(name_time(&catalog.entries[last].name)) {
            break;
        }
        let h = match checked_header(opts, catalog, e).await {
            Ok(h) => h,
            // The first file after a time limit is the witness that no delta
            // before the limit is missing: damaged, it proves nothing, and
            // the restore cannot say its state is the one asked for.
            Err(error) if beyond_time && !error.is_store_failure() => {
                stopped = Some(stop_at(opts, e, unusable_witness(e, error))?);
                break;
            }
            Err(error) if !error.is_store_failure() => {
                stopped = Some(stop_at(opts, e, error)?);
                break;
            }
            Err(error) => return Err(error),
        };
        let beyond_seq = match (opts.until_seq, &h.meta) {
            (Some(limit), Some(m)) => m.seq > limit,
            (Some(_), None) => {
                return Err(Error::chain(
                    e.file_name(),
                    "written without sequence numbers: restore by time instead",
                ))
            }
            (None, _) => false,
        };
        // The first file beyond the limit must still continue the chain:
        // if it does not, a file before the limit is missing.
        if let Err(error) = cursor.check_link(e, &h) {
            stopped = Some(stop_at(opts, e, error)?);
            break;
        }
        if beyond_time || beyond_seq {
            // Its header says nothing is missing before the limit; a
            // damaged header could say so falsely, so the witness is read
            // whole and checked (one file) before it is believed.
            if let Err(error) = check_file(opts, catalog, e).await {
                if error.is_store_failure() {
                    return Err(error);
                }
                stopped = Some(stop_at(opts, e, unusable_witness(e, error))?);
            }
            break;
        }
        if let Some(m) = &h.meta {
            cursor.seq = Some(m.seq);
        }
        cursor.note_token(e, &h);
        deltas.push((j, h));
        last = j;
    }
    Ok(Chosen {
        base,
        base_header,
        deltas,
        stopped,
    })
}

/// Where a lenient restore stops at (or passes over) `e` for `error`; a
/// strict one fails with `error`.
fn stop_at(opts: &Restore, e: &Entry, error: Error) -> Result<Stopped> {
    if !opts.lenient {
        return Err(error);
    }
    Ok(Stopped {
        file: e.file_name().to_string(),
        error,
    })
}

/// The error for a damaged first file after a limit: restore cannot check
/// that no delta before the limit is missing.
fn unusable_witness(e: &Entry, error: Error) -> Error {
    Error::chain(
        e.file_name(),
        format!(
            "is the first file after the limit and is damaged ({error}), so nothing shows that \
             no delta before the limit is missing"
        ),
    )
}
