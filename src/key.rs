//! Primary keys: JSON integers or strings.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

/// A record's primary key: a JSON integer (that fits an `i64`) or a JSON string.
///
/// Integers sort before strings; integers sort numerically and strings by
/// their bytes. This is the order records are kept and written in.
///
/// # Examples
///
/// ```
/// use dictdb::Key;
///
/// assert_eq!(Key::from(7), Key::Int(7));
/// assert_eq!(Key::from("ev-001").to_string(), "\"ev-001\"");
/// assert!(Key::from(1) < Key::from("a"));
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    /// An integer key.
    Int(i64),
    /// A string key.
    Str(Arc<str>),
}

impl Key {
    /// Reads a key from a JSON value: integers (within `i64`) and strings only.
    ///
    /// The error says why the value cannot be a key; `field` is only used to
    /// build that message.
    pub fn from_json(value: &Value, field: &str) -> crate::Result<Key> {
        match value {
            Value::String(s) => Ok(Key::Str(Arc::from(s.as_str()))),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Key::Int(i))
                } else if n.is_u64() {
                    Err(crate::Error::InvalidKey {
                        field: field.to_string(),
                        reason: format!("integer {n} does not fit a signed 64-bit key"),
                    })
                } else {
                    Err(crate::Error::InvalidKey {
                        field: field.to_string(),
                        reason: format!(
                            "a float ({n}) cannot be a key; use an integer or a string"
                        ),
                    })
                }
            }
            other => Err(crate::Error::InvalidKey {
                field: field.to_string(),
                reason: format!(
                    "{} cannot be a key; use an integer or a string",
                    json_type_name(other)
                ),
            }),
        }
    }

    /// The key as a JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            Key::Int(i) => Value::from(*i),
            Key::Str(s) => Value::from(&**s),
        }
    }

    /// The integer, if this is an integer key.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Key::Int(i) => Some(*i),
            Key::Str(_) => None,
        }
    }

    /// The string, if this is a string key.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Key::Int(_) => None,
            Key::Str(s) => Some(s),
        }
    }
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl fmt::Display for Key {
    /// Integers as digits, strings quoted as in JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => write!(f, "{:?}", &**s),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! int_key {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(v: $t) -> Key {
                Key::Int(i64::from(v))
            }
        }
    )*};
}
int_key!(i8, i16, i32, i64, u8, u16, u32);

impl From<&str> for Key {
    fn from(v: &str) -> Key {
        Key::Str(Arc::from(v))
    }
}

impl From<String> for Key {
    fn from(v: String) -> Key {
        Key::Str(Arc::from(v))
    }
}

impl From<&String> for Key {
    fn from(v: &String) -> Key {
        Key::Str(Arc::from(v.as_str()))
    }
}

impl From<&Key> for Key {
    fn from(v: &Key) -> Key {
        v.clone()
    }
}

impl TryFrom<&Value> for Key {
    type Error = crate::Error;

    fn try_from(value: &Value) -> crate::Result<Key> {
        Key::from_json(value, "key")
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Key::Int(i) => s.serialize_i64(*i),
            Key::Str(v) => s.serialize_str(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_integers_and_strings_only() {
        assert_eq!(Key::from_json(&json!(5), "id").unwrap(), Key::Int(5));
        assert_eq!(Key::from_json(&json!(-5), "id").unwrap(), Key::Int(-5));
        assert_eq!(Key::from_json(&json!("x"), "id").unwrap(), Key::from("x"));
        for bad in [
            json!(1.5),
            json!(1.0),
            json!(true),
            json!(null),
            json!([1]),
            json!({"a": 1}),
            json!(u64::MAX),
        ] {
            let err = Key::from_json(&bad, "id").unwrap_err();
            assert!(
                matches!(err, crate::Error::InvalidKey { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn order_ints_before_strings() {
        let mut keys = vec![Key::from("b"), Key::from(10), Key::from("a"), Key::from(-3)];
        keys.sort();
        assert_eq!(
            keys,
            vec![Key::from(-3), Key::from(10), Key::from("a"), Key::from("b")]
        );
    }
}
