//! The output layer: every command builds a report that is both
//! `Serialize` (for `--json`) and `Display` (the human text), and errors
//! go to stderr as text and, with `--json`, to stdout as a JSON object too.

use std::fmt::{self, Display, Write as _};
use std::io::{self, Write as _};

use indicatif::HumanBytes;
use serde::Serialize;

use crate::error::{CliError, Exit};

/// Where reports and errors go.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Output {
    pub(crate) json: bool,
}

/// The JSON object printed on stdout for an error (with `--json`).
#[derive(Serialize)]
struct ErrorObject<'a> {
    error: &'a CliError,
    exit_code: u8,
}

impl Output {
    /// Prints a report: pretty JSON with `--json`, else its text.
    pub(crate) fn report<R: Serialize + Display>(&self, report: &R) -> Result<(), CliError> {
        let text = if self.json {
            let mut s = serde_json::to_string_pretty(report).map_err(|e| {
                CliError::new(Exit::Usage, "io", format!("serialising the output: {e}"))
            })?;
            s.push('\n');
            s
        } else {
            report.to_string()
        };
        stdout(&text)
    }

    /// Prints one line of a stream of reports (`follow`): compact JSON on
    /// one line with `--json` (JSON Lines), else its text.
    pub(crate) fn line<R: Serialize + Display>(&self, report: &R) -> Result<(), CliError> {
        let text = if self.json {
            let mut s = serde_json::to_string(report).map_err(|e| {
                CliError::new(Exit::Usage, "io", format!("serialising the output: {e}"))
            })?;
            s.push('\n');
            s
        } else {
            report.to_string()
        };
        stdout(&text)
    }

    /// Reports an error: text on stderr; with `--json`, also a JSON error
    /// object on stdout. Returns the exit code.
    pub(crate) fn fail(&self, e: &CliError) -> Exit {
        self.warn(&format!("error: {}", e.message));
        self.json_error(e);
        e.exit
    }

    /// With `--json`, the JSON error object on stdout (nothing otherwise).
    pub(crate) fn json_error(&self, e: &CliError) {
        if self.json {
            let object = ErrorObject {
                error: e,
                exit_code: e.exit.code(),
            };
            if let Ok(mut s) = serde_json::to_string_pretty(&object) {
                s.push('\n');
                let _ = stdout(&s);
            }
        }
    }

    /// A line on stderr, prefixed with the command's name.
    /// Control characters are escaped: a message may carry a path or a
    /// name from the store (`notes\nkeep …\u{1b}[31m`), which must not
    /// forge lines or reach the terminal as escapes.
    pub(crate) fn warn(&self, line: &str) {
        let line = dictdb::printable_name(line);
        let _ = writeln!(io::stderr(), "dictdb-backup: {line}");
    }
}

/// Writes to stdout. A closed pipe (`| head`) is not an error.
fn stdout(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::new(
            Exit::Usage,
            "io",
            format!("writing to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

/// Writes `rows` as aligned columns (the last column unpadded).
pub(crate) fn columns(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
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
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

/// `1.21 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// `1 file`, `2 files`.
pub(crate) fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// An error's message without a leading `<file>: `, for lines that already
/// name the file.
pub(crate) fn about(e: &dictdb::Error, file: &str) -> String {
    let text = e.to_string();
    match text.strip_prefix(file).and_then(|t| t.strip_prefix(": ")) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}
