//! An HTTP service (axum) that keeps its database backed up across restarts:
//! the skeleton dictdb recommends.
//!
//! ```text
//! cargo run --example http_service -- [PORT] [BACKUP_DIR]
//! ```
//!
//! `PORT` (or `DICTDB_HTTP_PORT`; default 8080, `0` picks a free one) is
//! bound on 127.0.0.1 only; `BACKUP_DIR` (or `DICTDB_BACKUP_DIR`; default
//! `./http-backups`) holds the backups. The service prints
//! `listening on http://127.0.0.1:PORT` once it accepts requests.
//!
//! - On start it restores the newest backup chain in the directory, if
//!   there is one, and keeps writing to that chain (deltas on the restored
//!   full backup): `BackupManager::restore_or_start`.
//! - Handlers never call `notify_change()`: change-count triggers back up
//!   within a second of 100 changes, and within 10 s of any change.
//! - Failed backups are logged from the event stream (the manager retries
//!   them with a backoff); `GET /status` shows the manager's status.
//! - On SIGTERM or Ctrl-C it stops accepting requests, finishes the ones in
//!   flight, then `shutdown(10 s)` writes a final full backup: every write
//!   that was acknowledged is in it. The exit status is non-zero if that
//!   backup could not be written in time.
//!
//! Endpoints:
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /users` | every user |
//! | `GET /users/{id}` | one user (404 if none) |
//! | `PUT /users/{id}` | stores the JSON object as user `id`, replacing any previous one whole |
//! | `DELETE /users/{id}` | deletes user `id` (404 if none) |
//! | `POST /users/{id}/visits` | adds one to the user's `visits`, atomically (`update_with`) |
//! | `POST /notes` | stores `{"text": ...}` as a typed `Note`, returns its key |
//! | `GET /notes/{id}` | one note, read back as a `Note` |
//! | `GET /status` | the backup manager's status |

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dictdb::{BackupConfig, BackupEvent, BackupManager, DictDB, Error, Table};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tracing::{debug, error, info, warn};

/// A note, stored through serde (`insert_as` / `get_as`).
#[derive(Serialize, Deserialize)]
struct Note {
    text: String,
    created: u64,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Clone)]
struct App {
    users: Table,
    notes: Table,
    backups: BackupManager,
}

/// A dictdb error as an HTTP answer.
struct ApiError(Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::RecordNotFound { .. } => StatusCode::NOT_FOUND,
            Error::NotAnObject(_)
            | Error::InvalidRecord(_)
            | Error::InvalidKey { .. }
            | Error::PrimaryKeyChange { .. }
            | Error::RecordType { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))).into_response()
}

async fn list_users(State(app): State<App>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(app.users.all()?))
}

async fn get_user(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(match app.users.get(id)? {
        Some(user) => Json(user).into_response(),
        None => not_found(),
    })
}

/// Stores the object whole under `id`: a replace when the user exists, an
/// insert otherwise. Answers with the record as stored.
async fn put_user(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let mut record = match body {
        Value::Object(m) => m,
        other => return Err(ApiError(Error::NotAnObject(type_name(&other)))),
    };
    record.insert("id".into(), json!(id));
    let record = Value::Object(record);
    loop {
        match app.users.replace(id.as_str(), record.clone()) {
            Err(Error::RecordNotFound { .. }) => match app.users.insert(record.clone()) {
                // Another request created it meanwhile: replace it.
                Err(Error::DuplicateKey { .. }) => continue,
                other => {
                    other?;
                }
            },
            other => other?,
        }
        break;
    }
    let stored = app
        .users
        .get(id.as_str())?
        .ok_or_else(|| ApiError(Error::InvalidRecord("deleted meanwhile".into())))?;
    Ok(Json(stored))
}

async fn delete_user(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Response> {
    Ok(if app.users.delete(id)? {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found()
    })
}

async fn visit(State(app): State<App>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let user = app.users.update_with(id, |user| {
        let visits = user.get("visits").and_then(Value::as_u64).unwrap_or(0);
        user.insert("visits".into(), json!(visits + 1));
    })?;
    Ok(Json(user))
}

async fn add_note(
    State(app): State<App>,
    Json(note): Json<NewNote>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let key = app.notes.insert_as(&Note {
        text: note.text,
        created,
    })?;
    Ok((StatusCode::CREATED, Json(json!({"id": key.to_json()}))))
}

async fn get_note(State(app): State<App>, Path(id): Path<i64>) -> ApiResult<Response> {
    Ok(match app.notes.get_as::<Note>(id)? {
        Some(note) => {
            Json(json!({"id": id, "text": note.text, "created": note.created})).into_response()
        }
        None => not_found(),
    })
}

async fn status(State(app): State<App>) -> Json<Value> {
    let s = app.backups.status();
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
    Json(json!({
        "running": s.running,
        "last_success": s.last_success.as_ref().map(|l| json!({
            "file": l.file, "seq": l.seq, "kind": l.kind.to_string(),
        })),
        "last_error": s.last_error.as_ref().map(|e| e.error.to_string()),
        "consecutive_failures": s.consecutive_failures,
        "deltas_since_full": s.deltas_since_full,
        "changes_pending": s.changes_pending,
        "in_flight": s.in_flight,
        "next_due_ms": ms(s.next_due_in),
        "retry_in_ms": ms(s.retry_in),
    }))
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The table `name`, created when the store held none.
fn table(db: &DictDB, name: &str) -> dictdb::Result<Table> {
    match db.table(name) {
        Err(Error::TableNotFound(_)) => db.create_table(name),
        other => other,
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn terminated() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(cause = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                error!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C: shutting down"),
        () = term => info!("SIGTERM: shutting down"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .or_else(|| std::env::var("DICTDB_HTTP_PORT").ok())
        .unwrap_or_else(|| "8080".into())
        .parse()?;
    let dir = args
        .next()
        .or_else(|| std::env::var("DICTDB_BACKUP_DIR").ok())
        .unwrap_or_else(|| "./http-backups".into());

    // Restore the newest chain (if any) and keep writing to it.
    let started = BackupManager::restore_or_start(
        BackupConfig::new(&dir)
            .incremental(true)
            .max_deltas_before_full(20)
            .backup_interval(Duration::from_secs(300))
            .min_backup_interval(Duration::from_secs(1))
            .backup_after(100, Duration::from_secs(1))
            .backup_after(1, Duration::from_secs(10))
            .keep_full_backups(3),
    )
    .await?;
    let (db, backups) = (started.db, started.manager);
    match &started.restored {
        Some(r) => info!(
            files = r.applied.len(),
            seq = ?r.seq,
            "restored the newest backup chain from {dir}"
        ),
        None => info!("no backup in {dir}: starting empty"),
    }

    // Failures (and the rest) from the event stream; it ends with the manager.
    let mut events = backups.events();
    let logger = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                BackupEvent::Failed {
                    kind,
                    error,
                    consecutive_failures,
                    retry_in,
                    ..
                } => warn!(%kind, cause = %error, consecutive_failures, ?retry_in, "backup failed"),
                BackupEvent::FullInsteadOfDelta { reason } => {
                    warn!(%reason, "full backup instead of a delta")
                }
                BackupEvent::Completed(info) => {
                    debug!(kind = %info.kind, file = %info.file, seq = info.seq, "backup written")
                }
                other => debug!(?other, "backup event"),
            }
        }
    });

    let app = App {
        users: table(&db, "users")?,
        notes: table(&db, "notes")?,
        backups: backups.clone(),
    };
    let router = Router::new()
        .route("/users", get(list_users))
        .route(
            "/users/{id}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/users/{id}/visits", post(visit))
        .route("/notes", post(add_note))
        .route("/notes/{id}", get(get_note))
        .route("/status", get(status))
        .with_state(app);

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    info!(%addr, backups = %dir, "listening");
    // Stops accepting on the signal, then waits for the requests in flight:
    // every write acknowledged so far is in the database.
    axum::serve(listener, router)
        .with_graceful_shutdown(terminated())
        .await?;

    // A last full backup, within the time an orchestrator gives.
    let result = backups.shutdown(Duration::from_secs(10)).await;
    let _ = logger.await;
    match result {
        Ok(info) => {
            info!(file = %info.file, records = info.records, seq = info.seq, "final backup written");
            Ok(())
        }
        Err(e) => {
            error!(cause = %e, "final backup failed");
            std::process::exit(1);
        }
    }
}
