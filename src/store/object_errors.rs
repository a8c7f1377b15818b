//! Object storage errors as one line an operator can act on: what is wrong
//! and which setting fixes it, never the server's raw XML or HTML body.

use std::error::Error as StdError;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};

/// One line for an object_store error.
pub(crate) fn explain(e: &object_store::Error) -> String {
    explain_text(&chain(e))
}

/// An error and its sources, each once.
pub(crate) fn chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

const CREDENTIALS: &str =
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN \
     for temporary credentials), or AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or \
     AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";

/// With `AWS_EC2_METADATA_DISABLED=true` (as the AWS SDKs read it; object_store
/// does not), an S3 store without credentials is refused when it is opened,
/// rather than asking the instance metadata service at the first request.
pub(crate) fn check_credentials(b: &AmazonS3Builder) -> crate::error::Result<()> {
    let disabled = std::env::var("AWS_EC2_METADATA_DISABLED")
        .is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if !disabled {
        return Ok(());
    }
    let set = |k: AmazonS3ConfigKey| b.get_config_value(&k).is_some_and(|v| !v.trim().is_empty());
    let configured = (set(AmazonS3ConfigKey::AccessKeyId)
        && set(AmazonS3ConfigKey::SecretAccessKey))
        || set(AmazonS3ConfigKey::WebIdentityTokenFile)
        || set(AmazonS3ConfigKey::ContainerCredentialsRelativeUri)
        || set(AmazonS3ConfigKey::ContainerCredentialsFullUri)
        || b.get_config_value(&AmazonS3ConfigKey::SkipSignature)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if configured {
        return Ok(());
    }
    Err(crate::error::Error::Config(format!(
        "no S3 credentials: none are configured, and AWS_EC2_METADATA_DISABLED=true rules \
         out the instance metadata service; {CREDENTIALS}"
    )))
}

/// [`explain`] of an error's text.
pub(crate) fn explain_text(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    if lower.contains("url scheme is not allowed") {
        return "the S3 endpoint is a plain http:// URL, which is refused unless allowed: \
                set AWS_ALLOW_HTTP=true (s3_config \"aws_allow_http\") for a test server, \
                or use an https:// endpoint"
            .into();
    }
    if lower.contains("/latest/api/token") || lower.contains("/latest/meta-data/") {
        return format!(
            "no S3 credentials: none are configured, and the instance metadata service \
             (asked when none are) gave none; {CREDENTIALS}, or set AWS_METADATA_ENDPOINT \
             if the instance metadata service is elsewhere"
        );
    }
    if lower.contains("error getting credentials")
        || lower.contains("error fetching credentials")
        || lower.contains("failed to load credentials")
    {
        return format!(
            "could not get S3 credentials from the configured source ({}); check it, or {CREDENTIALS}",
            first_words(&strip_bodies(text))
        );
    }
    if let Some(body) = xml_body(text) {
        let code = tag(body, "Code").unwrap_or_default();
        let message = tag(body, "Message").unwrap_or_default();
        let status = status(text);
        let said = match (code.is_empty(), message.is_empty()) {
            (false, false) => format!("{code}: {message}"),
            (false, true) => code.clone(),
            (true, false) => message.clone(),
            (true, true) => format!("status {}", status.as_deref().unwrap_or("unknown")),
        };
        return match code.as_str() {
            "NoSuchBucket" => {
                let bucket = tag(body, "BucketName")
                    .map(|b| format!("bucket {b:?}"))
                    .unwrap_or_else(|| "the bucket".into());
                format!(
                    "{bucket} does not exist (NoSuchBucket): check the bucket in the URL \
                     (s3://BUCKET/prefix), AWS_ENDPOINT and AWS_REGION"
                )
            }
            "NoSuchKey" => "no such object (NoSuchKey)".into(),
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired"
            | "AllAccessDisabled" => format!(
                "the server refused the credentials or the request ({said}): check \
                 AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, and the \
                 bucket's policy"
            ),
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException" => {
                format!("{said}: set AWS_REGION to the bucket's region (or AWS_ENDPOINT)")
            }
            _ => format!("the server answered {said}{}", status_suffix(&status)),
        };
    }
    if let Some(at) = html_start(text) {
        let status = status(text);
        return format!(
            "the server answered{} with an HTML page, not an S3 answer ({}): check \
             AWS_ENDPOINT (it must be the S3 API endpoint)",
            status.map(|s| format!(" {s}")).unwrap_or_default(),
            first_words(&text[..at])
        );
    }
    strip_bodies(text)
}

fn status_suffix(status: &Option<String>) -> String {
    status
        .as_ref()
        .map(|s| format!(" (HTTP {s})"))
        .unwrap_or_default()
}

/// The HTTP status in object_store's "status code: 404 Not Found" text.
fn status(text: &str) -> Option<String> {
    let at = text.find("status code: ")? + "status code: ".len();
    let rest = &text[at..];
    let end = rest.find([':', ',', '<']).unwrap_or(rest.len());
    Some(rest[..end].trim().to_string()).filter(|s| !s.is_empty())
}

/// Where an XML answer starts in the text, and the rest from there.
fn xml_body(text: &str) -> Option<&str> {
    let at = text
        .find("<?xml")
        .or_else(|| text.find("<Error>"))
        .or_else(|| text.find("<Error "))?;
    Some(&text[at..])
}

fn html_start(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    lower.find("<!doctype").or_else(|| lower.find("<html"))
}

/// The text inside the first `<name>...</name>`.
fn tag(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    let v = xml[start..end].trim();
    (!v.is_empty()).then(|| one_line(v))
}

/// The text with any XML or HTML body cut off, on one line.
fn strip_bodies(text: &str) -> String {
    let cut = [text.find("<?xml"), text.find("<Error"), html_start(text)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(text.len());
    let kept = text[..cut].trim_end().trim_end_matches(':').trim_end();
    one_line(kept)
}

/// At most the first 200 characters, on one line.
fn first_words(text: &str) -> String {
    let t = one_line(text.trim().trim_end_matches(':'));
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_one_line_with_a_fix() {
        let t = "Object at location svc/x not found: Error performing PUT \
                 http://127.0.0.1:9/b/svc/x in 2ms - Server returned non-2xx status code: \
                 404 Not Found: <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code>\
                 <Message>The specified bucket does not exist</Message>\
                 <BucketName>nob</BucketName></Error>";
        let m = explain_text(t);
        assert!(m.contains("bucket \"nob\" does not exist"), "{m}");
        assert!(!m.contains('<') && !m.contains('\n'), "{m}");
        let m = explain_text("Generic S3 error: builder error: URL scheme is not allowed");
        assert!(m.contains("AWS_ALLOW_HTTP=true"), "{m}");
        let m = explain_text(
            "Generic S3 error: Error getting credentials from provider: Error performing \
             token request: Error performing PUT http://127.0.0.1:9/latest/api/token in 1ms",
        );
        assert!(
            m.starts_with("no S3 credentials") && m.contains("AWS_ACCESS_KEY_ID"),
            "{m}"
        );
        let m = explain_text(
            "Generic S3 error: Error performing GET http://x/b in 1ms - Server returned \
             non-2xx status code: 502 Bad Gateway: <html><body>bad</body></html>",
        );
        assert!(
            m.contains("HTML page") && m.contains("502 Bad Gateway"),
            "{m}"
        );
        assert!(!m.contains('<'), "{m}");
        let m = explain_text("plain: error\nsecond line");
        assert_eq!(m, "plain: error second line");
    }
}
