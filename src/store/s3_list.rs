//! Listing a prefix that holds keys object_store cannot represent.
//!
//! object_store 0.14 parses every key of a `ListObjectsV2` page into a
//! [`Path`], and one key it refuses (`svc/..`, `svc//x`, a control
//! character) fails the whole page, so one stray object written by another
//! tool would stop every listing, restore and prune of the prefix.
//!
//! [`TolerantLists`] wraps the HTTP client object_store's S3 client uses and
//! rewrites the answers to list requests only (nothing else is touched, and
//! requests are signed before they get here): each key and common prefix
//! `Path::parse` refuses is replaced by a stand-in under the listed prefix,
//! [`STAND_IN`] followed by the hex of the original key. The store's listing
//! turns stand-ins back into [`SkippedEntry`]s naming the original key.

use async_trait::async_trait;
use bytes::Bytes;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path;
use object_store::ClientOptions;

use super::SkippedEntry;

/// First characters of a stand-in key's last segment.
pub(crate) const STAND_IN: &str = ".dictdb-unaddressable-key-";

/// An [`HttpConnector`] (reqwest's) whose clients rewrite list answers.
#[derive(Debug, Default)]
pub(crate) struct TolerantLists;

impl HttpConnector for TolerantLists {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Rewrite { inner }))
    }
}

#[derive(Debug)]
struct Rewrite {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for Rewrite {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let prefix = list_prefix(&req);
        let response = self.inner.execute(req).await?;
        let Some(prefix) = prefix else {
            return Ok(response);
        };
        if !response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let bytes = body.bytes().await?;
        let body = match std::str::from_utf8(&bytes) {
            Ok(text) => match rewrite(text, &prefix) {
                Some(new) => Bytes::from(new),
                None => bytes,
            },
            Err(_) => bytes,
        };
        Ok(HttpResponse::from_parts(parts, body.into()))
    }
}

/// The `prefix` of a `ListObjectsV2` request (`""` when none), or `None`
/// for any other request.
fn list_prefix(req: &HttpRequest) -> Option<String> {
    if req.method() != "GET" {
        return None;
    }
    let query = req.uri().query()?;
    let mut is_list = false;
    let mut prefix = String::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "list-type" => is_list = v == "2",
            "prefix" => prefix = percent_decode(v),
            _ => {}
        }
    }
    is_list.then_some(prefix)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The list answer with every unparsable `<Key>` and common `<Prefix>`
/// replaced by a stand-in; `None` when nothing needs replacing.
fn rewrite(xml: &str, prefix: &str) -> Option<String> {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    let mut changed = false;
    // Keys only appear in <Contents>; <Prefix> is also the echo of the
    // request's prefix at the top level, which is ours and valid.
    loop {
        let key = rest.find("<Key>");
        let common = rest.find("<CommonPrefixes>");
        let (at, open, close) = match (key, common) {
            (None, None) => break,
            (Some(k), Some(c)) if c < k => (c, "<Prefix>", "</Prefix>"),
            (None, Some(c)) => (c, "<Prefix>", "</Prefix>"),
            (Some(k), _) => (k, "<Key>", "</Key>"),
        };
        let Some(start) = rest[at..].find(open).map(|i| at + i + open.len()) else {
            break;
        };
        let Some(end) = rest[start..].find(close).map(|i| start + i) else {
            break;
        };
        out.push_str(&rest[..start]);
        let raw = &rest[start..end];
        let key = unescape(raw);
        if Path::parse(&key).is_ok() {
            out.push_str(raw);
        } else {
            changed = true;
            out.push_str(&stand_in(prefix, &key));
        }
        out.push_str(close);
        rest = &rest[end + close.len()..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// The stand-in of `key` listed under `prefix`.
fn stand_in(prefix: &str, key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    let dir = prefix.trim_end_matches('/');
    if dir.is_empty() {
        format!("{STAND_IN}{hex}")
    } else {
        format!("{dir}/{STAND_IN}{hex}")
    }
}

/// The entry a stand-in's last segment stands for, if it is one.
pub(crate) fn skipped(segment: &str, size: Option<u64>) -> Option<SkippedEntry> {
    let hex = segment.strip_prefix(STAND_IN)?;
    let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let key = String::from_utf8_lossy(&bytes?).into_owned();
    Some(SkippedEntry::new(
        &key,
        size,
        "an object key no plain file name can address (empty or `.`/`..` segments, \
         control characters): not a backup file, skipped",
    ))
}

/// XML text with its entities decoded (`&amp;`, `&#10;`, ...).
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(end) = after.find(';') else {
            out.push_str(&rest[i..]);
            return out;
        };
        let entity = &after[..end];
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .or_else(|| e.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| e.strip_prefix('#').map(str::parse))
                .and_then(|r| r.ok())
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &after[end + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unparsable_keys_become_stand_ins() {
        let xml = "<ListBucketResult><Prefix>svc/</Prefix>\
            <Contents><Key>svc/..</Key><Size>3</Size></Contents>\
            <Contents><Key>svc/a.json</Key><Size>1</Size></Contents>\
            <Contents><Key>svc/b&#1;c</Key><Size>2</Size></Contents>\
            <CommonPrefixes><Prefix>svc//</Prefix></CommonPrefixes>\
            <CommonPrefixes><Prefix>svc/sub/</Prefix></CommonPrefixes></ListBucketResult>";
        let out = rewrite(xml, "svc/").unwrap();
        assert!(out.contains("<Key>svc/a.json</Key>"), "{out}");
        assert!(out.contains("<Prefix>svc/</Prefix>"), "{out}");
        assert!(out.contains("<Prefix>svc/sub/</Prefix>"), "{out}");
        assert!(!out.contains("svc/..<") && !out.contains("svc//<"), "{out}");
        let seg = format!("{STAND_IN}{}", "7376632f2e2e");
        assert!(out.contains(&format!("<Key>svc/{seg}</Key>")), "{out}");
        assert_eq!(skipped(&seg, Some(3)).unwrap().name, "svc/..");
        let ctl = format!("{STAND_IN}{}", "7376632f620163");
        assert!(out.contains(&ctl), "{out}");
        assert_eq!(skipped(&ctl, None).unwrap().name, "svc/b\\u{1}c");
        assert!(rewrite("<Contents><Key>svc/a</Key></Contents>", "svc/").is_none());
        assert_eq!(percent_decode("svc%2Fx%20y"), "svc/x y");
    }
}
