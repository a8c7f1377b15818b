//! Opening the store named on the command line: a directory, or (with the
//! `object-store` feature) a URL such as `s3://bucket/prefix`, checked
//! before any request so an operator hears "no such directory" or "no
//! credentials" instead of what a request would have said.

use std::path::Path;
use std::sync::Arc;

use dictdb::{BackupStore, LocalStore};

use crate::error::{CliError, Exit};

/// `--timeout`: the longest one object-store request may take.
static TIMEOUT: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();

/// Sets `--timeout` for the stores opened from now on.
pub(crate) fn set_timeout(timeout: Option<std::time::Duration>) {
    let _ = TIMEOUT.set(timeout);
}

/// Opens a store that must already exist. Never creates anything.
pub(crate) fn open(arg: &Path) -> Result<Arc<dyn BackupStore>, CliError> {
    let text = arg.to_string_lossy();
    if text.contains("://") {
        return open_url(&text);
    }
    check_dir(arg)?;
    Ok(Arc::new(LocalStore::existing(arg)?))
}

/// The format a file's name says: its extension under any `.zst` and
/// `.age` (`db.msgpack.zst` is MessagePack).
pub(crate) fn format_by_name(path: &Path) -> Option<dictdb::FileFormat> {
    let name = path.file_name()?.to_str()?;
    let name = name.strip_suffix(".age").unwrap_or(name);
    let name = name.strip_suffix(".zst").unwrap_or(name);
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .and_then(dictdb::FileFormat::from_extension)
}

/// Whether `arg` names an object-store URL rather than a directory.
pub(crate) fn is_url(arg: &Path) -> bool {
    arg.to_string_lossy().contains("://")
}

/// The local directory a store argument names: the path itself, or the
/// path of a `file://` URL (`file:///abs/dir`, `file://localhost/abs/dir`,
/// any case of the scheme). `None` for a store elsewhere (`s3://`,
/// `memory://`) or a URL that is not one.
pub(crate) fn local_dir(arg: &Path) -> Option<std::path::PathBuf> {
    if !is_url(arg) {
        return Some(arg.to_path_buf());
    }
    file_url_dir(&arg.to_string_lossy())
}

#[cfg(feature = "object-store")]
fn file_url_dir(text: &str) -> Option<std::path::PathBuf> {
    let parsed = url::Url::parse(text).ok()?;
    if !parsed.scheme().eq_ignore_ascii_case("file") {
        return None;
    }
    parsed.to_file_path().ok()
}

/// Without object-store support no URL opens, so none names a directory
/// anything could be written to through it.
#[cfg(not(feature = "object-store"))]
fn file_url_dir(_text: &str) -> Option<std::path::PathBuf> {
    None
}

/// A directory that exists, or the error an operator needs.
fn check_dir(dir: &Path) -> Result<(), CliError> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(CliError::usage(format!(
            "{shown}: is a file, not a backup directory (to read one file: dictdb-backup inspect {shown})"
        ))
        .about(shown)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::not_found(
            &shown,
            format!("{shown}: no such directory"),
        )),
        Err(e) => Err(CliError::new(Exit::Usage, "io", format!("{shown}: {e}")).about(shown)),
    }
}

#[cfg(not(feature = "object-store"))]
fn open_url(url: &str) -> Result<Arc<dyn BackupStore>, CliError> {
    Err(CliError::new(
        Exit::Usage,
        "config",
        format!(
            "{url}: object-store URLs need dictdb-backup built with the `object-store` feature \
             (cargo install dictdb --features object-store)"
        ),
    ))
}

#[cfg(feature = "object-store")]
fn open_url(text: &str) -> Result<Arc<dyn BackupStore>, CliError> {
    let parsed = url::Url::parse(text).map_err(|e| {
        CliError::new(
            Exit::Usage,
            "config",
            format!("invalid backup store URL {text:?}: {e}"),
        )
    })?;
    match parsed.scheme().to_ascii_lowercase().as_str() {
        "s3" | "s3a" => check_credentials(text, |k| std::env::var(k).ok())?,
        "file" => {
            // open_url would create a missing directory: an operator's
            // typo must not leave one behind.
            let dir = parsed.to_file_path().map_err(|()| {
                CliError::usage(format!(
                    "{text}: not an absolute local path (file:///abs/dir)"
                ))
            })?;
            check_dir(&dir)?;
        }
        _ => {}
    }
    let mut options = dictdb::store::ObjectStoreOptions::default();
    if let Some(t) = TIMEOUT.get().copied().flatten() {
        options = options.retry_timeout(t);
        if t < std::time::Duration::from_secs(30) {
            options = options.request_timeout(t);
        }
    }
    Ok(dictdb::store::open_url_with(text, &options)?)
}

/// Refuses an S3 URL when no credential source is configured: without
/// one, the S3 client asks the EC2 instance metadata service, and off EC2
/// the operator sees a failed PUT to 169.254.169.254 instead of the cause.
#[cfg(feature = "object-store")]
pub(crate) fn check_credentials(
    url: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<(), CliError> {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    let truthy = |k: &str| var(k).is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let key = set("AWS_ACCESS_KEY_ID");
    let secret = set("AWS_SECRET_ACCESS_KEY");
    let configured = (key && secret)
        || set("AWS_PROFILE")
        || set("AWS_WEB_IDENTITY_TOKEN_FILE")
        || set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || set("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || truthy("AWS_SKIP_SIGNATURE")
        // An explicit opt-in to the instance metadata service.
        || var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("false"));
    if configured {
        return Ok(());
    }
    let missing = match (key, secret) {
        (true, false) => "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
        (false, true) => "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
        _ => "no AWS credentials are configured",
    };
    Err(CliError::new(
        Exit::Usage,
        "credentials",
        format!(
            "{url}: {missing}. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
             (plus AWS_SESSION_TOKEN for temporary credentials), or AWS_PROFILE, \
             or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or \
             AWS_CONTAINER_CREDENTIALS_RELATIVE_URI; AWS_REGION, and AWS_ENDPOINT \
             with AWS_ALLOW_HTTP=true for a server other than AWS. On an EC2 \
             instance whose role should be used, set AWS_EC2_METADATA_DISABLED=false \
             to ask the instance metadata service"
        ),
    )
    .about(url))
}

#[cfg(all(test, feature = "object-store"))]
mod tests {
    use super::*;

    fn check(vars: &[(&str, &str)]) -> Result<(), CliError> {
        check_credentials("s3://b/p", |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn credential_sources() {
        let e = check(&[]).err().map(|e| e.message).unwrap_or_default();
        assert!(e.contains("AWS_ACCESS_KEY_ID") && e.contains("AWS_EC2_METADATA_DISABLED=false"));
        let e = check(&[("AWS_ACCESS_KEY_ID", "k")]).err();
        assert!(e.is_some_and(|e| e.message.contains("AWS_SECRET_ACCESS_KEY is not")));
        assert!(check(&[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]).is_ok());
        assert!(check(&[("AWS_PROFILE", "ops")]).is_ok());
        assert!(check(&[("AWS_EC2_METADATA_DISABLED", "false")]).is_ok());
        assert!(check(&[("AWS_EC2_METADATA_DISABLED", "true")]).is_err());
        assert!(check(&[("AWS_PROFILE", " ")]).is_err());
    }
}
