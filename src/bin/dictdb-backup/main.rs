//! `dictdb-backup`: the operator's command for the backups a dictdb
//! service writes, in a directory or an object store. It lists, verifies,
//! restores, inspects, diffs and prunes them; only `prune` changes a store.
//!
//! One module per subcommand; [`output`] prints every report as text or,
//! with `--json`, as JSON from the report's `Serialize` derive; errors are
//! [`error::CliError`]s with stable exit codes ([`error::EXIT_CODES`]).

mod diff;
mod error;
mod follow;
mod inspect;
mod keys;
mod list;
mod output;
mod points;
mod progress;
mod prune;
mod report;
mod restore;
mod store;
mod time;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dictdb::FileFormat;
use jiff::Timestamp;

use error::{CliError, Exit, EXIT_CODES};
use output::Output;

const ABOUT: &str = "List, verify, restore, inspect, diff, prune and follow the backups of a \
                     dictdb service: full and delta backup files in a directory or an S3 bucket";

const LONG_ABOUT: &str = "\
List, verify, restore, inspect, diff, prune and follow the backups of a dictdb \
service: the full and delta backup files a BackupManager (or the Python DictDB) \
writes, in a directory or in object storage (s3://bucket/prefix).

Only `prune` changes a store. `--json` (anywhere on the line) prints a JSON report \
on stdout instead of text; errors then also go to stdout as \
{\"error\": {\"kind\", \"message\", \"file\"}, \"exit_code\": N}, and always to stderr \
as text.

In an incident: `list` (fast, headers only), `verify` (reads everything), `inspect` \
the file it names, `restore --until ... --dry-run` then `restore --out`, and `diff` \
to see what a point in time is missing.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "dictdb-backup",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES,
)]
struct Cli {
    /// Print a JSON report on stdout instead of text (errors too).
    #[arg(long, global = true)]
    json: bool,

    /// An age identity file (AGE-SECRET-KEY-1… lines, as age-keygen writes
    /// them) to decrypt encrypted (.age) backups; may be repeated.
    #[arg(long, global = true, value_name = "FILE")]
    identity: Vec<PathBuf>,

    /// The longest one request to object storage may take, retries
    /// included (default 60s); each attempt is also cut after 30s, or
    /// after this if shorter. Reads are ranged GETs of 4 MiB, so a large
    /// file needs no longer timeout.
    #[arg(long, global = true, value_name = "DURATION", value_parser = time::parse_duration)]
    timeout: Option<std::time::Duration>,

    #[command(subcommand)]
    command: Command,
}

/// Where backups are: a directory or an object-store URL.
const STORE_HELP: &str = "A backup directory, or an object-store URL (s3://bucket/prefix, \
                          file:///abs/dir; credentials and endpoint from AWS_* variables)";

#[derive(Debug, Subcommand)]
enum Command {
    /// List a store's backups from their headers; `*` marks the chain a restore would use.
    ///
    /// Reads only each file's header (a few kilobytes; a ranged read on
    /// object storage), whatever the file's size: checksums are NOT checked
    /// (run `verify`). Shows each file's kind, time (UTC), sequence range,
    /// tables, record or change count and size; `*` marks the chain a
    /// restore would use, `~` what a `--lenient` restore would use when
    /// that chain is broken. Exit 0 when listed, even when a header shows
    /// a file DAMAGED or a chain BROKEN (`verify` is the check: exit 1), 3
    /// no such directory, 4 no backups here.
    #[command(after_help = EXIT_CODES)]
    List {
        #[arg(value_name = "STORE", help = STORE_HELP)]
        store: PathBuf,
    },
    /// Read every file and restore every chain as a restore would; exit 1 if anything is unsound.
    ///
    /// Every byte is read and every checksum checked; each chain (a full
    /// backup and its deltas) is restored and dropped. Reports each file
    /// and each chain, then every problem (which file, what is wrong).
    /// Files of the Python original carry no checksum: reported as
    /// unverified, not as failures. Exit 0 sound, 1 a damaged file or
    /// broken chain, 4 no backups here.
    #[command(after_help = EXIT_CODES)]
    Verify {
        #[arg(value_name = "STORE", help = STORE_HELP)]
        store: PathBuf,
        #[command(flatten)]
        python: keys::PythonArgs,
    },
    /// Restore a store (up to a time or a sequence number) into one full backup file.
    ///
    /// Restores the newest full backup and the deltas after it (every link
    /// and checksum checked) and writes the result to --out as one full
    /// backup: JSON in the Python original's layout (DictDB.load reads it),
    /// or MessagePack. --dry-run does all the reading and checking and
    /// writes nothing. Exit 0 done, 1 damaged (the error names the file;
    /// --lenient stops before it), 4 nothing to restore at or before the
    /// limit, 5 a --lenient restore that left files out (it prints which).
    #[command(after_help = EXIT_CODES)]
    Restore {
        #[arg(value_name = "STORE", help = STORE_HELP)]
        store: PathBuf,
        /// Where to write the restored database (replaced if it exists,
        /// unless it is named like a backup: never into the store's own
        /// directory, however the store is spelled, and never over an
        /// existing backup-named file).
        #[arg(long, short, value_name = "FILE", required_unless_present = "dry_run")]
        out: Option<PathBuf>,
        /// Use only files written at or before TIME: RFC 3339
        /// (2026-11-26T09:34:32.123456Z), a date (2026-11-26 = its start,
        /// UTC), unix seconds as in the file names (1795682694.736609), or
        /// a time before now (15m, -15m, "2h ago", 1d).
        #[arg(long, value_name = "TIME", value_parser = time::parse_until, allow_hyphen_values = true)]
        until: Option<Timestamp>,
        /// Use only files whose sequence range ends at or before N.
        #[arg(long, value_name = "N", value_parser = parse_seq)]
        until_seq: Option<u64>,
        /// Output format: json (default, or by --out's extension) or msgpack;
        /// must agree with --out's extension when it has one.
        #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
        format: Option<FileFormat>,
        /// Stop at the last consistent point instead of failing on a
        /// damaged or missing file (exit 5, and says what was left out).
        #[arg(long)]
        lenient: bool,
        /// Show what a restore would apply, reading and checking everything; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        python: keys::PythonArgs,
    },
    /// Read and check one backup file: kind, time, tables, records, upserts and deletes.
    ///
    /// Reads the whole file and checks it as a restore does. Shows its
    /// tables with record counts (full backup) or upsert and delete counts
    /// (delta). A file that is not a backup is said to be what it is.
    /// Exit 0 sound, 1 damaged or not a backup, 3 no such file.
    #[command(after_help = EXIT_CODES)]
    Inspect {
        /// The file.
        file: PathBuf,
        /// Read the file as this format (json or msgpack) whatever its name says.
        #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
        format: Option<FileFormat>,
    },
    /// Show what changed between two states: what one backup file did, or between two times.
    ///
    /// A point is a backup file of STORE (the state once it is applied), a
    /// time (as restore --until takes it), seq:N (as --until-seq), latest,
    /// or a full backup file elsewhere (restore's --out). With one point
    /// that names a backup file: what that file did (the state before it
    /// against the state after it). Otherwise from FROM to TO (default:
    /// latest). Shows tables created and dropped and records added,
    /// changed and removed per table; --json lists every key.
    #[command(after_help = EXIT_CODES)]
    Diff {
        #[arg(value_name = "STORE", help = STORE_HELP)]
        store: PathBuf,
        /// The older point.
        #[arg(value_name = "FROM", allow_hyphen_values = true)]
        from: String,
        /// The newer point (default: latest).
        #[arg(value_name = "TO", allow_hyphen_values = true)]
        to: Option<String>,
        #[command(flatten)]
        python: keys::PythonArgs,
    },
    /// Follow a store as a read replica does: print each file applied and the lag, until Ctrl-C.
    ///
    /// Restores the newest chain (every checksum and link checked), then
    /// polls the store every --interval: one listing per poll; each new
    /// delta is read, checked and applied, and a newer full backup moves it
    /// to that chain. Prints one line per file applied with how far behind
    /// the store it still is (files, changes, seconds), and every problem:
    /// a damaged or missing file stops it at the last good cut (it never
    /// skips one) until the writer's next full backup. Nothing is written.
    /// With --json, one JSON object per line. --once: catch up, print where
    /// it stands and exit. Exit 0 (Ctrl-C or SIGTERM; --once: current), 1
    /// (--once) stopped by a damaged or missing file, 3 no such directory,
    /// 4 (--once) no full backup yet.
    #[command(after_help = EXIT_CODES)]
    Follow {
        #[arg(value_name = "STORE", help = STORE_HELP)]
        store: PathBuf,
        /// Time between two polls (500ms, 2s, 1m).
        #[arg(long, value_name = "DUR", default_value = "1s", value_parser = time::parse_duration)]
        interval: Duration,
        /// Catch up once, print where the replica stands, and exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        python: keys::PythonArgs,
    },
    /// Delete old backups by retention rules, whole chains at a time; --dry-run shows what and why.
    ///
    /// A file is kept when any rule keeps it. Only full backups count for
    /// --keep-last and the calendar rules (UTC days, ISO weeks, months);
    /// a kept full backup keeps its deltas. The newest chain and files that
    /// are not backups are never deleted. First the chains are restored,
    /// newest first, until one restores: it and every newer chain are kept;
    /// if none restores, nothing is deleted (exit 1). Exit 1 too when a
    /// newer chain does not restore (it is kept). At least one rule is
    /// required.
    #[command(after_help = EXIT_CODES)]
    Prune {
        #[arg(value_name = "STORE", help = STORE_HELP)]
        store: PathBuf,
        /// Keep the newest N full backups (and their deltas).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: usize,
        /// Keep every backup written within DURATION of the newest (2d, 12h, 1w, 1 month).
        #[arg(long, value_name = "DURATION", value_parser = time::parse_duration)]
        keep_within: Option<Duration>,
        /// Keep the newest full backup of each of the last N days (UTC).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: usize,
        /// Keep the newest full backup of each of the last N ISO weeks.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: usize,
        /// Keep the newest full backup of each of the last N months.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: usize,
        /// Show what would be deleted and why; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A sequence number, with a reason an operator can act on (the standard
/// parser says "number too large to fit in target type").
fn parse_seq(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>().map_err(|_| {
            format!(
                "sequence number {t} is beyond any database's (at most {})",
                u64::MAX
            )
        })
    } else {
        Err(format!(
            "not a sequence number: {t:?} (a whole number, as `dictdb-backup list` shows in SEQ)"
        ))
    }
}

fn parse_format(s: &str) -> Result<FileFormat, String> {
    s.parse::<FileFormat>().map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            let json = std::env::args_os().any(|a| a == "--json");
            let message = e.render().to_string();
            let message = message.trim().trim_start_matches("error: ");
            let first = message.lines().next().unwrap_or(message).to_string();
            let err = CliError::usage(first);
            // The text is on stderr already (clap's, with its usage line).
            Output { json }.json_error(&err);
            return Exit::Usage.into();
        }
    };
    let out = Output { json: cli.json };
    store::set_timeout(cli.timeout);
    if let Err(e) = keys::load(&cli.identity) {
        return out.fail(&e).into();
    }
    match run(cli.command, out).await {
        Ok(exit) => exit.into(),
        Err(e) => out.fail(&e).into(),
    }
}

async fn run(command: Command, out: Output) -> Result<Exit, CliError> {
    match command {
        Command::List { store } => list::run(&store, out).await,
        Command::Verify { store, python } => verify::run(&store, &python, out).await,
        Command::Restore {
            store,
            out: file,
            until,
            until_seq,
            format,
            lenient,
            dry_run,
            python,
        } => {
            let req = restore::Request {
                dir: store,
                out: file,
                until,
                until_seq,
                format,
                lenient,
                dry_run,
                python,
            };
            restore::run(req, out).await
        }
        Command::Inspect { file, format } => inspect::run(&file, format, out).await,
        Command::Diff {
            store,
            from,
            to,
            python,
        } => {
            diff::run(
                diff::Request {
                    store,
                    from,
                    to,
                    python,
                },
                out,
            )
            .await
        }
        Command::Follow {
            store,
            interval,
            once,
            python,
        } => {
            let req = follow::Request {
                store,
                interval,
                once,
                python,
            };
            follow::run(req, out).await
        }
        Command::Prune {
            store,
            keep_last,
            keep_within,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
        } => {
            let req = prune::Request {
                store,
                keep_last,
                keep_within,
                keep_daily,
                keep_weekly,
                keep_monthly,
                dry_run,
            };
            prune::run(req, out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_are_refused_in_plain_words() {
        assert_eq!(parse_seq("8"), Ok(8));
        assert_eq!(parse_seq(&u64::MAX.to_string()), Ok(u64::MAX));
        let e = parse_seq("18446744073709551616").unwrap_err();
        assert!(e.contains("beyond") && !e.contains("target type"), "{e}");
        assert!(parse_seq("8.5").unwrap_err().contains("whole number"));
    }
}
