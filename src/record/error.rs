//! What can be wrong with record bytes.

use std::fmt;

/// Why record bytes could not be read. Private to the crate: callers turn it
/// into an [`crate::Error`] that names the file or table.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum RecordError {
    /// The bytes end in the middle of a value.
    Truncated { at: u64 },
    /// A MessagePack marker that is not a JSON value (binary, extension,
    /// reserved).
    NotJson { what: &'static str, at: u64 },
    /// A string that is not UTF-8.
    InvalidUtf8 { at: u64 },
    /// A value of the wrong type where a specific one was expected.
    Expected {
        expected: &'static str,
        found: &'static str,
    },
    /// Containers nested deeper than [`super::MAX_DEPTH`].
    TooDeep,
    /// The primary key field holds something that cannot be a key.
    BadKey { field: String, reason: String },
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Truncated { at } => write!(f, "unexpected end of data at byte {at}"),
            RecordError::NotJson { what, at } => {
                write!(f, "{what} at byte {at} is not a JSON value")
            }
            RecordError::InvalidUtf8 { at } => write!(f, "invalid UTF-8 in string at byte {at}"),
            RecordError::Expected { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            RecordError::TooDeep => write!(f, "nested more than {} levels deep", super::MAX_DEPTH),
            RecordError::BadKey { field, reason } => {
                write!(f, "primary key `{field}`: {reason}")
            }
        }
    }
}
