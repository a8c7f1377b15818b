//! The `dictdb` section of a document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Current document version written by this crate.
pub(crate) const VERSION: u32 = 1;

/// What restore needs to know about a file beyond its records.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Document version (1).
    pub(crate) version: u32,
    /// `"full"` or `"delta"`.
    pub(crate) kind: String,
    /// Sequence number of the cut this file reflects: every change at or
    /// below it, none above.
    pub(crate) seq: u64,
    /// Delta only: the cut it starts from (exclusive); equals the previous
    /// file's `seq` in a sound chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) from_seq: Option<u64>,
    /// Delta only: file name of the full backup this chain starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<String>,
    /// Next auto-assigned key of each table at the cut.
    #[serde(default)]
    pub(crate) next_keys: BTreeMap<String, u64>,
    /// Delta only: tables dropped since `from_seq` (applied first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) dropped: Vec<String>,
    /// Delta only: tables created since `from_seq`, with their key field
    /// (applied after the drops, before the records).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) created: BTreeMap<String, String>,
    /// Number of records (full) or of changes (delta) in the file.
    #[serde(default)]
    pub(crate) count: u64,
}
