//! `follow`: a read replica of the store, kept current by polling, that
//! prints each file it applies and how far behind the store it is, for an
//! operator watching a store (or a script reading `--json` lines).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use dictdb::replica::{
    Replica, ReplicaCut, ReplicaEvent, ReplicaLag, ReplicaOptions, ReplicaStatus,
};
use jiff::Timestamp;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::error::{CliError, Exit};
use crate::output::{about, plural, size, Output};
use crate::report::{kind, SeqRange};
use crate::{store, time};

/// What `follow` was asked.
pub(crate) struct Request {
    pub(crate) store: std::path::PathBuf,
    pub(crate) interval: Duration,
    pub(crate) once: bool,
    /// `--allow-unverified` and `--key-field`, as for a restore.
    pub(crate) python: crate::keys::PythonArgs,
}

/// One line of output: text, or one JSON object per line with `--json`.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Line {
    /// The replica started (or, with `--once`, caught up).
    Following {
        time: String,
        store: String,
        cut: Option<Cut>,
        lag: Lag,
        problem: Option<Problem>,
    },
    /// A delta of the chain applied.
    Applied {
        time: String,
        file: String,
        kind: &'static str,
        seq: Option<SeqRange>,
        affected: usize,
        bytes: u64,
        duration_ms: f64,
        /// How long readers of a replica could have waited for the swap.
        blocked_us: f64,
        lag: Lag,
    },
    /// Moved to a newer chain.
    ChainSwitched {
        time: String,
        from: Option<String>,
        to: String,
        files: Vec<String>,
        seq: Option<u64>,
        affected: usize,
        duration_ms: f64,
        blocked_us: f64,
        lag: Lag,
    },
    /// Stopped at the last good cut (a damaged or missing file, an
    /// unreachable store); it keeps polling.
    Stopped { time: String, problem: Problem },
    /// The lag changed without a file applied (new files it cannot use
    /// yet, or caught up).
    Lag { time: String, lag: Lag },
    /// Events this command missed (it fell behind the replica).
    Missed { time: String, events: u64 },
}

#[derive(Serialize)]
struct Cut {
    file: String,
    base: String,
    deltas: u32,
    seq: Option<u64>,
    written: Option<String>,
}

#[derive(Clone, Serialize, PartialEq)]
struct Lag {
    files: u64,
    seq: Option<u64>,
    seconds: f64,
    newest: Option<String>,
}

#[derive(Serialize)]
struct Problem {
    file: Option<String>,
    error: String,
}

fn now() -> String {
    time::format(Timestamp::now())
}

impl Cut {
    fn of(c: &ReplicaCut) -> Cut {
        Cut {
            file: c.file.clone(),
            base: c.base.clone(),
            deltas: c.deltas,
            seq: c.seq,
            written: time::of_file(&c.file).map(time::format),
        }
    }
}

impl Lag {
    fn of(l: &ReplicaLag) -> Lag {
        Lag {
            files: l.files,
            seq: l.seq,
            seconds: (l.behind.as_secs_f64() * 1e3).round() / 1e3,
            newest: l.newest.clone(),
        }
    }
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.files == 0 {
            return f.write_str("current");
        }
        write!(f, "behind by {}", plural(self.files, "file", "files"))?;
        if let Some(s) = self.seq {
            write!(f, ", {}", plural(s, "change", "changes"))?;
        }
        write!(f, ", {:.1} s", self.seconds)
    }
}

impl Problem {
    fn of(file: Option<String>, e: &dictdb::Error) -> Problem {
        let error = match &file {
            Some(f) => about(e, f),
            None => e.to_string(),
        };
        Problem { file, error }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{file}: {}", self.error),
            None => f.write_str(&self.error),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Following {
                time,
                store,
                cut,
                lag,
                problem,
            } => {
                match cut {
                    Some(c) => write!(
                        f,
                        "{time}  following {store}: at {} ({} + {}{}), {lag}",
                        c.file,
                        c.base,
                        plural(c.deltas, "delta", "deltas"),
                        c.seq.map(|s| format!(", seq {s}")).unwrap_or_default()
                    )?,
                    None => write!(
                        f,
                        "{time}  following {store}: no full backup yet, waiting for one"
                    )?,
                }
                if let Some(p) = problem {
                    write!(f, "\n{time}  STOPPED at the last good cut: {p}")?;
                }
                writeln!(f)
            }
            Line::Applied {
                time,
                file,
                kind,
                seq,
                affected,
                bytes,
                duration_ms,
                lag,
                ..
            } => writeln!(
                f,
                "{time}  applied {file} ({kind}, seq {}, {}, {}, {duration_ms:.1} ms), {lag}",
                SeqRange::show(*seq),
                plural(*affected as u64, "record", "records"),
                size(*bytes)
            ),
            Line::ChainSwitched {
                time,
                to,
                files,
                seq,
                affected,
                duration_ms,
                lag,
                ..
            } => writeln!(
                f,
                "{time}  moved to the chain of {to} (+ {}{}, {} changed, {duration_ms:.1} ms), {lag}",
                plural(files.len().saturating_sub(1) as u64, "delta", "deltas"),
                seq.map(|s| format!(", seq {s}")).unwrap_or_default(),
                plural(*affected as u64, "record", "records")
            ),
            Line::Stopped { time, problem } => {
                writeln!(f, "{time}  STOPPED at the last good cut: {problem}")
            }
            Line::Lag { time, lag } => writeln!(f, "{time}  {lag}"),
            Line::Missed { time, events } => writeln!(
                f,
                "{time}  (missed {}: this command fell behind)",
                plural(*events, "event", "events")
            ),
        }
    }
}

fn following(status: &ReplicaStatus) -> Line {
    Line::Following {
        time: now(),
        store: status.store.clone(),
        cut: status.cut.as_ref().map(Cut::of),
        lag: Lag::of(&status.lag),
        problem: status
            .problem
            .as_ref()
            .map(|p| Problem::of(p.file.clone(), &p.error)),
    }
}

fn line(event: ReplicaEvent) -> Option<Line> {
    Some(match event {
        ReplicaEvent::Applied(a) => Line::Applied {
            time: now(),
            kind: kind(Some(a.kind)),
            seq: SeqRange::of(a.seq),
            file: a.file,
            affected: a.affected,
            bytes: a.bytes,
            duration_ms: a.duration.as_secs_f64() * 1e3,
            blocked_us: a.blocked.as_secs_f64() * 1e6,
            lag: Lag::of(&a.lag),
        },
        ReplicaEvent::ChainSwitched(s) => Line::ChainSwitched {
            time: now(),
            from: s.from,
            to: s.to,
            files: s.files,
            seq: s.seq,
            affected: s.affected,
            duration_ms: s.duration.as_secs_f64() * 1e3,
            blocked_us: s.blocked.as_secs_f64() * 1e6,
            lag: Lag::of(&s.lag),
        },
        ReplicaEvent::Failed(p) => Line::Stopped {
            time: now(),
            problem: Problem::of(p.file.clone(), &p.error),
        },
        ReplicaEvent::Lag(l) => Line::Lag {
            time: now(),
            lag: Lag::of(&l),
        },
        ReplicaEvent::SubscriberLagged { missed } => Line::Missed {
            time: now(),
            events: missed,
        },
        _ => return None,
    })
}

/// Completes on Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) async fn run(req: Request, out: Output) -> Result<Exit, CliError> {
    if req.interval.is_zero() {
        return Err(CliError::usage("--interval must be greater than zero"));
    }
    let store = store::open(Path::new(&req.store))?;
    let replica = Replica::follow(
        store,
        crate::keys::replica(
            req.python
                .replica(ReplicaOptions::default().interval(req.interval)),
        ),
    )
    .await?;
    let status = replica.status();
    out.line(&following(&status))?;
    if req.once {
        replica.stop().await?;
        return Ok(match (&status.problem, &status.cut) {
            (Some(p), _) => {
                out.warn(&format!("stopped at the last good cut: {}", p.error));
                Exit::Damaged
            }
            (None, None) => Exit::NoBackups,
            (None, Some(_)) => Exit::Ok,
        });
    }
    let mut events = replica.events();
    let stop = interrupted();
    tokio::pin!(stop);
    let mut last_lag = Lag::of(&status.lag);
    loop {
        tokio::select! {
            () = &mut stop => break,
            event = events.next() => {
                let Some(event) = event else { break };
                if let ReplicaEvent::Lag(l) = &event {
                    // Applied lines carry the lag: a lag line only says
                    // what they do not.
                    let lag = Lag::of(l);
                    if lag == last_lag {
                        continue;
                    }
                    last_lag = lag;
                }
                if let Some(l) = line(event) {
                    if let Line::Applied { lag, .. } | Line::ChainSwitched { lag, .. } = &l {
                        last_lag = lag.clone();
                    }
                    out.line(&l)?;
                }
            }
        }
    }
    replica.stop().await?;
    Ok(Exit::Ok)
}
