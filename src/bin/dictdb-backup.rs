//! `dictdb-backup`: the operator command for dictdb backup directories.
//!
//! It reads directories written by [`dictdb::BackupManager`] and by the
//! Python original (DictDB), and never changes them.
//!
//! ```text
//! dictdb-backup list DIR                 one line per file, the restore chain marked `*`
//! dictdb-backup verify DIR               check every file and the chain (exit 1 if unsound)
//! dictdb-backup restore DIR --out FILE [--until TIME] [--format json|msgpack] [--lenient]
//! dictdb-backup inspect FILE             summary of one backup file
//! ```
//!
//! `--json` (before or after the subcommand) prints machine-readable JSON on
//! stdout instead of the human text.
//!
//! - **list** shows, for each file of `DIR` in time order, its kind (`full`,
//!   `delta`, or `-` for a foreign file, listed as ignored), the time from its
//!   name (UTC, RFC 3339 with microseconds), the sequence range it covers
//!   (`from..to`, `-` when the file records none, as the Python original's
//!   files), its tables, records (full) or changes (delta), its size in bytes
//!   and its checksum status: `verified`, `unverified` (no checksum, as the
//!   Python original writes) or `DAMAGED: <error>`. The files a restore would
//!   apply are marked `*`; when the chain is broken, the files a `--lenient`
//!   restore would apply are marked `~`.
//! - **verify** prints the same table, then every problem found (which file,
//!   what is wrong) and exits 1 unless every backup file and the chain are
//!   sound. Unverified files are reported but are not failures.
//! - **restore** restores the newest full backup and the deltas after it, and
//!   writes the result to `--out` as a full backup file (`DictDB.load`-able
//!   JSON in the Python original's layout by default; MessagePack with
//!   `--format msgpack`, or by default when `--out` ends in `.msgpack`;
//!   a backup-named `--out` inside `DIR` is refused).
//!   `--until TIME` uses only files written at or before `TIME`, given in RFC
//!   3339 (`2026-11-26T09:34:32.123456Z`, `2026-11-26T11:34:32+02:00`) or as
//!   unix seconds with a fraction, as in the file names
//!   (`1795682694.736609`). `--lenient` stops at the last consistent point
//!   instead of failing on a damaged or missing link, and says where and why.
//!   On a terminal, a progress line is shown on stderr while it runs.
//! - **inspect** summarises one file: kind, time, sequence range, tables,
//!   records or changes, size and checksum status (exit 1 if it is damaged).
//!
//! Exit status: 0 on success; 1 when backup data is damaged, a chain is
//! broken or there is nothing to restore; 2 for usage and I/O errors.
//! Errors are printed on stderr.

use std::collections::HashSet;
use std::fmt::{self, Write as _};
use std::io::{self, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use dictdb::restore::{
    inspect_file, verify_store, ChainReport, FileReport, Plan, PlannedFile, Restore, VerifyReport,
};
use dictdb::{BackupKind, BackupName, BackupStore, Error, FileFormat, Integrity, LocalStore};
use serde_json::{json, Value};

/// Inspect, verify and restore dictdb backup directories.
#[derive(Debug, Parser)]
#[command(name = "dictdb-backup", version, about, long_about = None)]
struct Cli {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the files of a backup directory; `*` marks the chain a restore uses.
    List {
        /// The backup directory, or an object-store URL (s3://bucket/prefix).
        dir: PathBuf,
    },
    /// Check every file and the chain; exit 1 if anything is unsound.
    Verify {
        /// The backup directory, or an object-store URL (s3://bucket/prefix).
        dir: PathBuf,
    },
    /// Restore a backup directory into one full backup file.
    Restore(RestoreArgs),
    /// Summarise one backup file.
    Inspect {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
struct RestoreArgs {
    /// The backup directory, or an object-store URL (s3://bucket/prefix).
    dir: PathBuf,

    /// Where to write the restored database (replaced if it exists).
    #[arg(long, short, value_name = "FILE")]
    out: PathBuf,

    /// Use only files written at or before TIME: RFC 3339
    /// (2026-11-26T09:34:32.123456Z) or unix seconds (1795682694.736609).
    #[arg(long, value_name = "TIME", value_parser = parse_until)]
    until: Option<UtcTime>,

    /// Output format: json (default; the Python original's layout) or msgpack.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    format: Option<FileFormat>,

    /// Stop at the last consistent point instead of failing on a broken link.
    #[arg(long)]
    lenient: bool,
}

fn parse_until(s: &str) -> Result<UtcTime, String> {
    UtcTime::parse(s)
}

fn parse_format(s: &str) -> Result<FileFormat, String> {
    s.parse::<FileFormat>().map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0, usage errors to
            // stderr with status 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::List { dir } => list(&dir, cli.json).await,
        Command::Verify { dir } => verify(&dir, cli.json).await,
        Command::Restore(args) => restore(args, cli.json).await,
        Command::Inspect { file } => inspect(&file, cli.json).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "dictdb-backup: error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

// ---------------------------------------------------------------------------
// Errors and output

/// An error that ends the command: a message for stderr and an exit status.
#[derive(Debug)]
struct CliError {
    code: u8,
    message: String,
}

impl CliError {
    /// A usage or I/O error (status 2).
    fn usage(message: impl Into<String>) -> CliError {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        // Problems with the backup data are status 1, like a failed verify;
        // everything else (I/O, the environment) is status 2.
        let code = match e {
            Error::Chain { .. }
            | Error::Corrupt { .. }
            | Error::ChecksumMismatch { .. }
            | Error::NoBackup(_)
            | Error::UnsupportedFormat { .. } => 1,
            _ => 2,
        };
        CliError {
            code,
            message: e.to_string(),
        }
    }
}

impl From<fmt::Error> for CliError {
    fn from(_: fmt::Error) -> CliError {
        CliError::usage("formatting the output failed")
    }
}

/// Writes `text` to stdout. A closed pipe (`| head`) is not an error.
fn emit(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(CliError::usage(format!("writing to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn emit_json(value: &Value) -> Result<(), CliError> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::usage(format!("serialising the output: {e}")))?;
    text.push('\n');
    emit(&text)
}

// ---------------------------------------------------------------------------
// Times: RFC 3339 and unix seconds

/// A UTC instant with microsecond resolution (`micros` is always the
/// non-negative part within the second, as in the backup file names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct UtcTime {
    secs: i64,
    micros: u32,
}

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (the
/// inverse of [`days_from_civil`]).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
                                  // Both in range by construction, so the conversions never fail.
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a run of ASCII digits at `range` of `s` (never panics).
fn digits(s: &str, range: std::ops::Range<usize>, what: &str) -> Result<u32, String> {
    match s.get(range) {
        Some(d) if !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()) => {
            d.parse().map_err(|_| format!("{what} out of range"))
        }
        _ => Err(format!("expected the {what} as digits")),
    }
}

fn expect_byte(s: &str, at: usize, allowed: &[u8], what: &str) -> Result<(), String> {
    match s.as_bytes().get(at) {
        Some(b) if allowed.contains(b) => Ok(()),
        _ => Err(format!("expected {what} at position {}", at + 1)),
    }
}

/// The first six digits of a fraction, as microseconds (further digits are
/// truncated: a time never rounds up past a file written after it).
fn fraction_micros(frac: &str) -> Result<u32, String> {
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected digits after the decimal point".into());
    }
    let mut micros = 0u32;
    for i in 0..6 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        micros = micros * 10 + d;
    }
    Ok(micros)
}

impl UtcTime {
    /// Parses RFC 3339 or unix seconds with an optional fraction.
    fn parse(s: &str) -> Result<UtcTime, String> {
        let s = s.trim();
        let looks_unix = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let parsed = if looks_unix {
            UtcTime::parse_unix(s)
        } else {
            UtcTime::parse_rfc3339(s)
        };
        parsed.map_err(|why| {
            format!(
                "invalid time {s:?}: {why} (expected RFC 3339 such as \
                 2026-11-26T09:34:32.123456Z or 2026-11-26T11:34:32+02:00, \
                 or unix seconds such as 1795682694.736609)"
            )
        })
    }

    /// `SECS[.FRACTION]`, as in the backup file names.
    fn parse_unix(s: &str) -> Result<UtcTime, String> {
        let (whole, frac) = match s.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (s, None),
        };
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err("expected whole seconds before the decimal point".into());
        }
        let secs: i64 = whole
            .parse()
            .map_err(|_| "seconds out of range".to_string())?;
        let micros = frac.map(fraction_micros).transpose()?.unwrap_or(0);
        Ok(UtcTime { secs, micros })
    }

    /// `YYYY-MM-DDTHH:MM:SS[.FRACTION](Z|+HH:MM|-HH:MM)`; `t` or a space
    /// may replace `T` and `z` may replace `Z` (RFC 3339, section 5.6). A
    /// leap second (`:60`) is read as the first second of the next minute.
    fn parse_rfc3339(s: &str) -> Result<UtcTime, String> {
        let year = digits(s, 0..4, "year")?;
        expect_byte(s, 4, b"-", "'-'")?;
        let month = digits(s, 5..7, "month")?;
        expect_byte(s, 7, b"-", "'-'")?;
        let day = digits(s, 8..10, "day")?;
        expect_byte(s, 10, b"Tt ", "'T'")?;
        let hour = digits(s, 11..13, "hour")?;
        expect_byte(s, 13, b":", "':'")?;
        let minute = digits(s, 14..16, "minute")?;
        expect_byte(s, 16, b":", "':'")?;
        let second = digits(s, 17..19, "second")?;
        let mut rest = s.get(19..).ok_or("expected the seconds")?;
        let mut micros = 0;
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = after_dot
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after_dot.len());
            micros = fraction_micros(&after_dot[..end])?;
            rest = &after_dot[end..];
        }
        let offset: i64 = match rest {
            "Z" | "z" => 0,
            "" => return Err("missing time zone (Z or an offset such as +02:00)".into()),
            _ => {
                let sign = match rest.as_bytes().first() {
                    Some(b'+') => 1,
                    Some(b'-') => -1,
                    _ => return Err(format!("unexpected {rest:?} after the time")),
                };
                if rest.len() != 6 {
                    return Err(format!("offset {rest:?} is not of the form +HH:MM"));
                }
                let oh = digits(rest, 1..3, "offset hours")?;
                expect_byte(rest, 3, b":", "':' in the offset")?;
                let om = digits(rest, 4..6, "offset minutes")?;
                if oh > 23 || om > 59 {
                    return Err(format!("offset {rest:?} out of range"));
                }
                sign * (i64::from(oh) * 3600 + i64::from(om) * 60)
            }
        };
        let year = i64::from(year);
        if !(1..=12).contains(&month) {
            return Err(format!("month {month} out of range"));
        }
        if day == 0 || day > days_in_month(year, month) {
            return Err(format!("day {day} out of range for {year:04}-{month:02}"));
        }
        if hour > 23 || minute > 59 || second > 60 {
            return Err(format!(
                "time {hour:02}:{minute:02}:{second:02} out of range"
            ));
        }
        let secs = days_from_civil(year, month, day) * SECS_PER_DAY
            + i64::from(hour) * 3600
            + i64::from(minute) * 60
            + i64::from(second)
            - offset;
        Ok(UtcTime { secs, micros })
    }

    /// The time of a backup file name, exactly.
    fn from_name(name: &BackupName) -> Option<UtcTime> {
        Some(UtcTime {
            secs: i64::try_from(name.secs).ok()?,
            micros: name.micros,
        })
    }

    /// Fractional seconds, rounded to the microsecond.
    fn from_f64(t: f64) -> Option<UtcTime> {
        if !t.is_finite() || t.abs() > 1e15 {
            return None;
        }
        let floor = t.floor();
        let mut secs = floor as i64;
        let mut micros = ((t - floor) * 1e6).round() as u32;
        if micros >= 1_000_000 {
            secs += 1;
            micros = 0;
        }
        Some(UtcTime { secs, micros })
    }

    /// The time of a report: exact from the name, else from the document.
    fn of_report(r: &FileReport) -> Option<UtcTime> {
        BackupName::parse(&r.name)
            .and_then(|n| UtcTime::from_name(&n))
            .or_else(|| r.timestamp.and_then(UtcTime::from_f64))
    }

    fn of_planned(p: &PlannedFile) -> Option<UtcTime> {
        BackupName::parse(&p.name)
            .and_then(|n| UtcTime::from_name(&n))
            .or_else(|| UtcTime::from_f64(p.timestamp))
    }

    /// Seconds since the epoch, computed as [`BackupName::timestamp`] does,
    /// so a file's own time compares equal to it.
    fn as_f64(self) -> f64 {
        self.secs as f64 + f64::from(self.micros) / 1e6
    }
}

impl fmt::Display for UtcTime {
    /// RFC 3339 in UTC with microseconds: `2026-11-26T09:34:32.123456Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(SECS_PER_DAY);
        let sod = self.secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60,
            self.micros
        )
    }
}

// ---------------------------------------------------------------------------
// Describing files

/// What can be said about one file's readability.
enum Status<'a> {
    /// Not a backup file name: ignored by restore.
    Ignored,
    Verified(&'a str),
    Unverified,
    /// Unreadable: a label (`DAMAGED`, ...), the error and the file.
    Bad(&'static str, &'a Error, &'a str),
}

impl Status<'_> {
    fn of(r: &FileReport) -> Status<'_> {
        match (&r.kind, &r.status) {
            (None, _) => Status::Ignored,
            (Some(_), Ok(Integrity::Verified(sum))) => Status::Verified(sum),
            (Some(_), Ok(_)) => Status::Unverified,
            (Some(_), Err(e)) => Status::Bad(
                match e {
                    Error::UnsupportedFormat { .. } => "UNSUPPORTED",
                    Error::Io { .. } | Error::Store { .. } => "UNREADABLE",
                    _ => "DAMAGED",
                },
                e,
                &r.name,
            ),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Status::Ignored => "ignored",
            Status::Verified(_) => "verified",
            Status::Unverified => "unverified",
            Status::Bad("UNSUPPORTED", ..) => "unsupported",
            Status::Bad("UNREADABLE", ..) => "unreadable",
            Status::Bad(..) => "damaged",
        }
    }
}

impl fmt::Display for Status<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Ignored => f.write_str("ignored (not a backup file)"),
            Status::Verified(_) => f.write_str("verified"),
            Status::Unverified => f.write_str("unverified"),
            Status::Bad(label, e, file) => write!(f, "{label}: {}", error_about(e, file)),
        }
    }
}

/// An error's message without a leading `<file>: `, for lines that already
/// name the file.
fn error_about(e: &Error, file: &str) -> String {
    let text = e.to_string();
    match text.strip_prefix(file).and_then(|t| t.strip_prefix(": ")) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

fn kind_str(kind: Option<BackupKind>) -> &'static str {
    match kind {
        Some(BackupKind::Full) => "full",
        Some(BackupKind::Delta) => "delta",
        _ => "-",
    }
}

fn seq_str(seq: Option<(u64, u64)>) -> String {
    seq.map_or_else(|| "-".to_string(), |(from, to)| format!("{from}..{to}"))
}

fn time_str(t: Option<UtcTime>) -> String {
    t.map_or_else(|| "-".to_string(), |t| t.to_string())
}

/// `7 records` (full) or `3 changes` (delta).
fn count_str(r: &FileReport) -> String {
    match (r.kind, &r.status) {
        (Some(BackupKind::Delta), Ok(_)) => format!("{} changes", r.records),
        (Some(_), Ok(_)) => format!("{} records", r.records),
        _ => "-".to_string(),
    }
}

fn seq_json(seq: Option<(u64, u64)>) -> Value {
    seq.map_or(Value::Null, |(from, to)| json!({"from": from, "to": to}))
}

/// One file as JSON (`in_chain` only for directory listings).
fn file_json(r: &FileReport, in_chain: Option<bool>) -> Value {
    let status = Status::of(r);
    let readable = r.kind.is_some() && r.status.is_ok();
    let time = UtcTime::of_report(r);
    let mut v = json!({
        "name": r.name,
        "kind": r.kind.map(|k| k.to_string()),
        "time": time.map(|t| t.to_string()),
        "timestamp": time.map(UtcTime::as_f64),
        "seq": seq_json(r.seq),
        "tables": readable.then_some(r.tables.len()),
        "records": (readable && r.kind == Some(BackupKind::Full)).then_some(r.records),
        "changes": (readable && r.kind == Some(BackupKind::Delta)).then_some(r.records),
        "size": r.size,
        "status": status.code(),
        "checksum": match &status { Status::Verified(sum) => Some(*sum), _ => None },
        "error": match &status { Status::Bad(_, e, _) => Some(e.to_string()), _ => None },
    });
    if let (Some(flag), Some(obj)) = (in_chain, v.as_object_mut()) {
        obj.insert("in_chain".into(), Value::Bool(flag));
    }
    v
}

/// Pads the cells of `rows` into aligned columns (the last one unpadded).
fn table(out: &mut String, rows: &[Vec<String>]) -> fmt::Result {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let width = widths.get(c).copied().unwrap_or(0);
                write!(line, "{cell:<width$}  ")?;
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Opens the backup store named on the command line: a directory, or (with
/// the `object-store` feature) a URL such as `s3://bucket/prefix`, with
/// endpoint and credentials from the `AWS_*` environment variables.
fn open_store(dir: &Path) -> Result<Arc<dyn BackupStore>, Error> {
    let text = dir.to_string_lossy();
    if text.contains("://") {
        #[cfg(feature = "object-store")]
        return dictdb::store::open_url(&text);
        #[cfg(not(feature = "object-store"))]
        return Err(Error::Config(format!(
            "{text}: object-store URLs need dictdb-backup built with the `object-store` feature"
        )));
    }
    Ok(Arc::new(LocalStore::existing(dir)?))
}

// ---------------------------------------------------------------------------
// list and verify

/// What `list` and `verify` know about a directory.
struct DirReport {
    dir: PathBuf,
    /// Files in time order, foreign files last.
    files: Vec<FileReport>,
    /// The chain a restore uses, or the first broken link.
    chain: Result<Vec<PlannedFile>, Error>,
    /// When the chain is broken: what a lenient restore would use.
    lenient: Option<Result<Plan, Error>>,
    /// Every chain's result.
    chains: Vec<ChainReport>,
    ok: bool,
}

impl DirReport {
    async fn load(dir: &Path) -> Result<DirReport, CliError> {
        let store = open_store(dir)?;
        let report = verify_store(Arc::clone(&store)).await?;
        let ok = report.is_ok();
        let chain = match report.newest_chain() {
            Some(c) => match &c.result {
                Ok(_) => Restore::new(Arc::clone(&store))
                    .plan()
                    .await
                    .map(|p| p.files),
                Err(e) => Err(e.clone()),
            },
            None => Err(Error::NoBackup(store.location())),
        };
        let VerifyReport { files, chains, .. } = report;
        let lenient = match chain {
            Ok(_) => None,
            Err(_) => Some(
                Restore::new(store)
                    .stop_at_last_consistent(true)
                    .plan()
                    .await,
            ),
        };
        // verify_store lists backup files in write order, foreign files last.
        Ok(DirReport {
            dir: dir.to_path_buf(),
            files,
            chain,
            lenient,
            chains,
            ok,
        })
    }

    fn chain_names(&self) -> HashSet<&str> {
        match &self.chain {
            Ok(chain) => chain.iter().map(|p| p.name.as_str()).collect(),
            Err(_) => HashSet::new(),
        }
    }

    fn lenient_names(&self) -> HashSet<&str> {
        match &self.lenient {
            Some(Ok(r)) => r.files.iter().map(|p| p.name.as_str()).collect(),
            _ => HashSet::new(),
        }
    }

    /// Every problem: (file or `chain`, what is wrong).
    fn problems(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .files
            .iter()
            .filter_map(|f| match Status::of(f) {
                bad @ Status::Bad(..) => Some((f.name.clone(), bad.to_string())),
                _ => None,
            })
            .collect();
        if let Err(e) = &self.chain {
            out.push(("chain".into(), e.to_string()));
        }
        for c in &self.chains {
            if let (Err(e), Some(base)) = (&c.result, &c.base) {
                if !out.iter().any(|(_, m)| *m == e.to_string()) {
                    out.push((format!("chain of {base}"), e.to_string()));
                }
            }
        }
        out
    }

    fn render_table(&self, out: &mut String) -> fmt::Result {
        let chain = self.chain_names();
        let lenient = self.lenient_names();
        let mut rows = vec![[
            "",
            "FILE",
            "KIND",
            "TIME (UTC)",
            "SEQ",
            "TABLES",
            "CONTENT",
            "SIZE",
            "CHECKSUM",
        ]
        .map(String::from)
        .to_vec()];
        for f in &self.files {
            let mark = if chain.contains(f.name.as_str()) {
                "*"
            } else if lenient.contains(f.name.as_str()) {
                "~"
            } else {
                ""
            };
            let readable = f.kind.is_some() && f.status.is_ok();
            rows.push(vec![
                mark.to_string(),
                f.name.clone(),
                kind_str(f.kind).to_string(),
                time_str(f.kind.and(UtcTime::of_report(f))),
                seq_str(f.seq),
                if readable {
                    f.tables.len().to_string()
                } else {
                    "-".into()
                },
                count_str(f),
                f.size.to_string(),
                Status::of(f).to_string(),
            ]);
        }
        table(out, &rows)
    }

    fn render_chain(&self, out: &mut String) -> fmt::Result {
        match &self.chain {
            Ok(chain) => {
                let deltas = chain.len().saturating_sub(1);
                let base = chain.first().map_or("-", |p| p.name.as_str());
                let seq = chain.last().and_then(|p| p.seq).map_or_else(
                    || "no sequence numbers (written by the Python original)".to_string(),
                    |(_, to)| format!("restores to sequence {to}"),
                );
                writeln!(
                    out,
                    "chain (*): {base} + {deltas} delta{}, {seq}",
                    if deltas == 1 { "" } else { "s" }
                )
            }
            Err(e) => {
                writeln!(out, "chain: BROKEN: {e}")?;
                match &self.lenient {
                    Some(Ok(r)) => writeln!(
                        out,
                        "a --lenient restore would apply the {} file{} marked ~{}",
                        r.files.len(),
                        if r.files.len() == 1 { "" } else { "s" },
                        r.stopped
                            .as_ref()
                            .map(|s| format!(" and stop at {}", s.file))
                            .unwrap_or_default()
                    ),
                    Some(Err(e)) => writeln!(out, "a --lenient restore fails too: {e}"),
                    None => Ok(()),
                }
            }
        }
    }

    fn chain_json(&self) -> Value {
        let lenient = match &self.lenient {
            None => Value::Null,
            Some(Ok(r)) => json!({
                "files": r.files.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                "seq": r.seq,
                "stopped": r.stopped.as_ref().map(|s| json!({"file": s.file, "error": s.error.to_string()})),
            }),
            Some(Err(e)) => json!({"error": e.to_string()}),
        };
        match &self.chain {
            Ok(chain) => json!({
                "ok": true,
                "files": chain.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                "seq": chain.last().and_then(|p| p.seq).map(|(_, to)| to),
                "error": null,
                "lenient": lenient,
            }),
            Err(e) => json!({
                "ok": false,
                "files": [],
                "seq": null,
                "error": e.to_string(),
                "lenient": lenient,
            }),
        }
    }

    fn files_json(&self) -> Vec<Value> {
        let chain = self.chain_names();
        self.files
            .iter()
            .map(|f| file_json(f, Some(chain.contains(f.name.as_str()))))
            .collect()
    }

    fn counts(&self) -> (usize, usize, usize, usize) {
        let (mut verified, mut unverified, mut bad, mut ignored) = (0, 0, 0, 0);
        for f in &self.files {
            match Status::of(f) {
                Status::Ignored => ignored += 1,
                Status::Verified(_) => verified += 1,
                Status::Unverified => unverified += 1,
                Status::Bad(..) => bad += 1,
            }
        }
        (verified, unverified, bad, ignored)
    }
}

async fn list(dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    let report = DirReport::load(dir).await?;
    if json {
        emit_json(&json!({
            "dir": report.dir.display().to_string(),
            "files": report.files_json(),
            "chain": report.chain_json(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    if report.files.is_empty() {
        writeln!(out, "{}: no files", report.dir.display())?;
    } else {
        report.render_table(&mut out)?;
    }
    report.render_chain(&mut out)?;
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

async fn verify(dir: &Path, json: bool) -> Result<ExitCode, CliError> {
    let report = DirReport::load(dir).await?;
    let problems = report.problems();
    let (verified, unverified, bad, ignored) = report.counts();
    if json {
        emit_json(&json!({
            "dir": report.dir.display().to_string(),
            "ok": report.ok,
            "files": report.files_json(),
            "chain": report.chain_json(),
            "problems": problems
                .iter()
                .map(|(file, error)| json!({"file": file, "error": error}))
                .collect::<Vec<_>>(),
            "counts": {"verified": verified, "unverified": unverified, "bad": bad, "ignored": ignored},
        }))?;
    } else {
        let mut out = String::new();
        if !report.files.is_empty() {
            report.render_table(&mut out)?;
        }
        report.render_chain(&mut out)?;
        writeln!(
            out,
            "files: {verified} verified, {unverified} unverified, {bad} unusable, {ignored} ignored"
        )?;
        if unverified > 0 {
            writeln!(
                out,
                "note: unverified files carry no checksum (the Python original writes none): \
                 they parse, but their bytes cannot be vouched for"
            )?;
        }
        if report.ok {
            writeln!(out, "OK")?;
        } else {
            writeln!(
                out,
                "FAILED: {} problem{}:",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )?;
            for (file, error) in &problems {
                writeln!(out, "  {file}: {error}")?;
            }
        }
        emit(&out)?;
    }
    if report.ok {
        Ok(ExitCode::SUCCESS)
    } else {
        let _ = writeln!(
            io::stderr(),
            "dictdb-backup: verify failed: {} problem{} in {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            report.dir.display()
        );
        Ok(ExitCode::from(1))
    }
}

// ---------------------------------------------------------------------------
// restore

/// A spinner with the elapsed time on stderr, only when stderr is a terminal.
struct Progress {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(label: String) -> Option<Progress> {
        if !io::stderr().is_terminal() {
            return None;
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(120));
            let mut frame = 0usize;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {
                        let spinner = FRAMES[frame % FRAMES.len()];
                        frame = frame.wrapping_add(1);
                        let _ = write!(
                            io::stderr(),
                            "\r{spinner} {label} {:.1}s",
                            started.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            // Erase the line.
            let _ = write!(io::stderr(), "\r\x1b[2K");
        });
        Some(Progress { stop, task })
    }

    async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The format to write: `--format`, else from the extension, else JSON.
fn output_format(args: &RestoreArgs) -> FileFormat {
    args.format.unwrap_or_else(|| {
        args.out
            .extension()
            .and_then(|e| e.to_str())
            .and_then(FileFormat::from_extension)
            .unwrap_or(FileFormat::Json)
    })
}

/// Checks `--out` before any work: a file path in an existing directory,
/// and not a backup-named file in `DIR` (it would change what later restores
/// of `DIR` use).
fn check_out(args: &RestoreArgs) -> Result<(), CliError> {
    let out = &args.out;
    let Some(name) = out.file_name() else {
        return Err(CliError::usage(format!(
            "--out {}: not a file path",
            out.display()
        )));
    };
    if out.is_dir() {
        return Err(CliError::usage(format!(
            "--out {}: is a directory",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(CliError::usage(format!(
            "--out {}: directory {} does not exist",
            out.display(),
            parent.display()
        )));
    }
    let backup_named = name.to_str().and_then(BackupName::parse).is_some();
    let same_dir = matches!(
        (parent.canonicalize(), args.dir.canonicalize()),
        (Ok(a), Ok(b)) if a == b
    );
    if backup_named && same_dir {
        return Err(CliError::usage(format!(
            "--out {}: refusing to write a backup-named file into the directory being restored",
            out.display()
        )));
    }
    Ok(())
}

async fn restore(args: RestoreArgs, json: bool) -> Result<ExitCode, CliError> {
    check_out(&args)?;
    let format = output_format(&args);
    let mut restore = Restore::new(open_store(&args.dir)?).stop_at_last_consistent(args.lenient);
    if let Some(t) = args.until {
        restore = restore.until_time(
            std::time::UNIX_EPOCH + std::time::Duration::new(t.secs.max(0) as u64, t.micros * 1000),
        );
    }
    let progress = Progress::start(format!("restoring {}", args.dir.display()));
    let result = async {
        let restored = restore.run().await?;
        let saved = restored.db.save_async(&args.out, format).await?;
        Ok::<_, Error>((restored, saved))
    }
    .await;
    if let Some(p) = progress {
        p.finish().await;
    }
    let (restored, saved) = result?;
    let tables = restored.db.snapshot().tables().len();

    let applied: Vec<(&PlannedFile, Option<usize>)> = restored
        .applied
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let affected = i
                .checked_sub(1)
                .and_then(|d| restored.affected.get(d).copied());
            (p, affected)
        })
        .collect();

    if json {
        emit_json(&json!({
            "dir": args.dir.display().to_string(),
            "until": args.until.map(|t| json!({"time": t.to_string(), "timestamp": t.as_f64()})),
            "lenient": args.lenient,
            "applied": applied.iter().map(|(p, affected)| {
                let time = UtcTime::of_planned(p);
                json!({
                    "name": p.name,
                    "kind": p.kind.to_string(),
                    "time": time.map(|t| t.to_string()),
                    "timestamp": p.timestamp,
                    "seq": seq_json(p.seq),
                    "size": p.size,
                    "affected": affected,
                })
            }).collect::<Vec<_>>(),
            "seq": restored.seq,
            "verified": restored.verified,
            "skipped": restored.skipped.iter()
                .map(|s| json!({"file": s.file, "error": s.error.to_string()}))
                .collect::<Vec<_>>(),
            "stopped": restored.stopped.as_ref()
                .map(|s| json!({"file": s.file, "error": s.error.to_string()})),
            "out": {
                "path": args.out.display().to_string(),
                "format": format.extension(),
                "tables": tables,
                "records": saved.records,
                "bytes": saved.bytes,
                "seq": saved.seq,
                "checksum": saved.checksum,
            },
        }))?;
        return Ok(ExitCode::SUCCESS);
    }

    let mut out = String::new();
    write!(out, "restored {}", args.dir.display())?;
    if let Some(t) = args.until {
        write!(out, " until {t}")?;
    }
    writeln!(out, "{}", if args.lenient { " (lenient)" } else { "" })?;
    for s in &restored.skipped {
        writeln!(out, "skipped {}: {}", s.file, s.error)?;
    }
    let rows: Vec<Vec<String>> = applied
        .iter()
        .map(|(p, affected)| {
            vec![
                "  applied".to_string(),
                p.kind.to_string(),
                p.name.clone(),
                time_str(UtcTime::of_planned(p)),
                seq_str(p.seq),
                match affected {
                    Some(n) => format!("{n} record{} affected", if *n == 1 { "" } else { "s" }),
                    None => "base".to_string(),
                },
            ]
        })
        .collect();
    table(&mut out, &rows)?;
    match restored.seq {
        Some(seq) => writeln!(out, "sequence: {seq}")?,
        None => writeln!(
            out,
            "sequence: none recorded (a chain written by the Python original)"
        )?,
    }
    if restored.verified {
        writeln!(out, "verified: yes, every applied file's checksum matched")?;
    } else {
        writeln!(
            out,
            "verified: no, some applied files carry no checksum (written by the Python original)"
        )?;
    }
    if args.lenient {
        match &restored.stopped {
            Some(s) => writeln!(
                out,
                "stopped at {}: {}",
                s.file,
                error_about(&s.error, &s.file)
            )?,
            None => writeln!(out, "stopped: no, the chain is consistent to its end")?,
        }
    }
    writeln!(
        out,
        "wrote {} ({}, {} table{}, {} record{}, {} bytes, {})",
        args.out.display(),
        format,
        tables,
        if tables == 1 { "" } else { "s" },
        saved.records,
        if saved.records == 1 { "" } else { "s" },
        saved.bytes,
        saved.checksum
    )?;
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------
// inspect

async fn inspect(file: &Path, json: bool) -> Result<ExitCode, CliError> {
    if !file.is_file() {
        let why = if file.exists() {
            "not a regular file"
        } else {
            "no such file"
        };
        return Err(CliError::usage(format!("{}: {why}", file.display())));
    }
    let r = inspect_file(file, None).await?;
    let status = Status::of(&r);
    let bad = matches!(status, Status::Bad(..));
    if json {
        emit_json(&file_json(&r, None))?;
    } else {
        let mut out = String::new();
        writeln!(out, "file:      {}", file.display())?;
        writeln!(out, "kind:      {}", kind_str(r.kind))?;
        writeln!(out, "time:      {}", time_str(UtcTime::of_report(&r)))?;
        writeln!(out, "sequence:  {}", seq_str(r.seq))?;
        if !bad {
            writeln!(out, "tables:    {}", r.tables.len())?;
            let what = if r.kind == Some(BackupKind::Delta) {
                "changes"
            } else {
                "records"
            };
            writeln!(out, "{:<11}{}", format!("{what}:"), r.records)?;
        }
        writeln!(out, "size:      {} bytes", r.size)?;
        match &status {
            Status::Verified(sum) => writeln!(out, "checksum:  verified ({sum})")?,
            Status::Unverified => writeln!(
                out,
                "checksum:  unverified (none recorded; written by the Python original?)"
            )?,
            other => writeln!(out, "checksum:  {other}")?,
        }
        emit(&out)?;
    }
    if bad {
        if let Status::Bad(label, e, _) = status {
            let _ = writeln!(io::stderr(), "dictdb-backup: {label}: {e}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> UtcTime {
        UtcTime::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn days_from_civil_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 26), 20_783);
        assert_eq!(days_from_civil(1, 1, 1), -719_162);
        // Round trip over four centuries around the epoch, leap days included.
        for days in -146_097 * 2..146_097 * 2 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn parses_rfc3339_with_fraction_and_offsets() {
        // The name of the fixture's second delta: dictdb_delta_1795682694_736609.
        let expected = UtcTime {
            secs: 1_795_682_694,
            micros: 736_609,
        };
        assert_eq!(t("2026-11-26T08:44:54.736609Z"), expected);
        assert_eq!(t("2026-11-26t08:44:54.736609z"), expected);
        assert_eq!(t("2026-11-26 08:44:54.736609Z"), expected);
        assert_eq!(t("2026-11-26T10:44:54.736609+02:00"), expected);
        assert_eq!(t("2026-11-26T04:14:54.736609-04:30"), expected);
        assert_eq!(t("2026-11-27T00:44:54.736609+16:00"), expected);
        // Digits beyond microseconds are truncated, never rounded up.
        assert_eq!(t("2026-11-26T08:44:54.7366099999Z"), expected);
        assert_eq!(t("2026-11-26T08:44:54.7Z").micros, 700_000);
        assert_eq!(t("2026-11-26T08:44:54Z").micros, 0);
        assert_eq!(t("1970-01-01T00:00:00Z").secs, 0);
        assert_eq!(
            t("1969-12-31T23:59:59.5Z"),
            UtcTime {
                secs: -1,
                micros: 500_000
            }
        );
        assert_eq!(t("2024-02-29T00:00:00Z").secs, 1_709_164_800);
        assert_eq!(
            t("2016-12-31T23:59:60Z").secs,
            t("2017-01-01T00:00:00Z").secs
        );
        assert_eq!(t("2000-01-01T00:00:00-00:00").secs, 946_684_800);
    }

    #[test]
    fn parses_unix_seconds() {
        assert_eq!(
            t("1795682694.736609"),
            UtcTime {
                secs: 1_795_682_694,
                micros: 736_609
            }
        );
        assert_eq!(t("1795682694").micros, 0);
        assert_eq!(t("1795682694.5").micros, 500_000);
        assert_eq!(t(" 12.0000019 ").micros, 1);
    }

    #[test]
    fn rejects_malformed_times_without_panicking() {
        for bad in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-11-26T08:44:54",
            "2026-11-26T08:44:54.Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-26T24:00:00Z",
            "2026-11-26T23:60:00Z",
            "2026-11-26T23:59:61Z",
            "2026-11-26T08:44:54+2:00",
            "2026-11-26T08:44:54+0200",
            "2026-11-26T08:44:54+24:00",
            "2026-11-26T08:44:54Zjunk",
            "2026-1l-26T08:44:54Z",
            "2026-11-26T08:44:54.123é",
            "é026-11-26T08:44:54Z",
            "1795682694.",
            ".5",
            "1.2.3",
            "99999999999999999999999",
            "-1",
            "+2026-11-26T08:44:54Z",
        ] {
            assert!(UtcTime::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let msg = UtcTime::parse("nope").unwrap_err();
        assert!(
            msg.contains("RFC 3339") && msg.contains("unix seconds"),
            "{msg}"
        );
    }

    #[test]
    fn formats_rfc3339_utc_with_micros_and_round_trips() {
        let x = UtcTime {
            secs: 1_795_682_694,
            micros: 736_609,
        };
        assert_eq!(x.to_string(), "2026-11-26T08:44:54.736609Z");
        assert_eq!(t(&x.to_string()), x);
        let before = UtcTime {
            secs: -1,
            micros: 5,
        };
        assert_eq!(before.to_string(), "1969-12-31T23:59:59.000005Z");
        assert_eq!(t(&before.to_string()), before);
        for secs in (-10_000_000_000i64..10_000_000_000).step_by(9_876_543_211) {
            let x = UtcTime { secs, micros: 42 };
            assert_eq!(t(&x.to_string()), x);
        }
    }

    #[test]
    fn float_and_name_times_agree() {
        let name = match BackupName::parse("dictdb_delta_1795682694_736609.json") {
            Some(n) => n,
            None => panic!("name should parse"),
        };
        let x = UtcTime::from_name(&name);
        assert_eq!(x, Some(t("1795682694.736609")));
        assert_eq!(x.map(UtcTime::as_f64), Some(name.timestamp()));
        assert_eq!(UtcTime::from_f64(1795682694.25), Some(t("1795682694.25")));
        assert_eq!(UtcTime::from_f64(0.9999996), Some(t("1")));
        assert_eq!(UtcTime::from_f64(f64::NAN), None);
    }
}
