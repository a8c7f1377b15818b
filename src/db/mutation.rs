//! The mutation stream: one event per committed change.

use std::sync::Arc;

use crate::key::Key;
use crate::record::Record;

/// One committed change, as published on [`crate::DictDB::subscribe`].
///
/// `seq` is global to the database and increases by exactly one per change,
/// so a subscriber that sees a gap knows it missed events (tokio's broadcast
/// channel also reports that as `RecvError::Lagged`).
#[derive(Clone, Debug)]
pub struct Mutation {
    /// Global sequence number of this change.
    pub seq: u64,
    /// The table it happened in.
    pub table: Arc<str>,
    /// What changed.
    pub change: Change,
}

/// What a [`Mutation`] changed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Change {
    /// A new record; `record` is the record as stored.
    Insert {
        /// The record's key.
        key: Key,
        /// The record as it now stands.
        record: Record,
    },
    /// An existing record was replaced or had fields merged into it.
    Update {
        /// The record's key.
        key: Key,
        /// The record as it now stands.
        record: Record,
    },
    /// A record was deleted.
    Delete {
        /// The deleted key.
        key: Key,
    },
    /// The table was created (it starts empty).
    TableCreated {
        /// Its primary-key field.
        primary_key: Arc<str>,
    },
    /// The table was dropped with all its records.
    TableDropped,
}
