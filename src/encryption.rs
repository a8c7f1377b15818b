//! Encryption keys (feature `encryption`): the [age](https://age-encryption.org)
//! X25519 [`Recipient`]s a backup is encrypted to, and the [`Identity`]s that
//! decrypt it.
//!
//! Files are standard age files (`age -d -i key.txt file.json.zst.age |
//! zstd -d` reads one). Besides one `X25519` stanza per recipient, the
//! header carries a `dictdb-recipients` stanza listing the recipients'
//! public keys, in clear: age's stanzas are anonymous, so without it a
//! wrong key could not be told from a damaged header. Identities ignore
//! that stanza, and the header's MAC covers it.
//!
//! # Examples
//!
//! ```
//! use dictdb::encryption::{Identity, Recipient};
//!
//! let identity = Identity::generate();
//! let recipient: Recipient = identity.to_public().to_string().parse().unwrap();
//! assert_eq!(recipient, identity.to_public());
//! let err = "age1nope".parse::<Recipient>().unwrap_err();
//! assert!(err.to_string().contains("age1nope"));
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use age_core::format::{FileKey, Stanza};

use crate::error::{Error, Result};

/// The tag of the stanza that lists a file's recipients.
pub(crate) const LISTING_TAG: &str = "dictdb-recipients";

/// Who a backup is encrypted to: an age X25519 public key (`age1…`).
///
/// Parse one with `"age1…".parse::<Recipient>()`; the error says what is
/// wrong (a secret key given instead of a public key, a typo).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Recipient(pub(crate) age::x25519::Recipient);

impl FromStr for Recipient {
    type Err = Error;

    fn from_str(s: &str) -> Result<Recipient> {
        let text = s.trim();
        if text.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-") {
            return Err(Error::Config(
                "an age secret key (AGE-SECRET-KEY-1…) was given as a recipient: give its \
                 public key (age1…, as `age-keygen -y` prints it); the secret key is for \
                 restoring"
                    .into(),
            ));
        }
        text.parse::<age::x25519::Recipient>()
            .map(Recipient)
            .map_err(|reason| {
                Error::Config(format!(
                    "invalid age recipient {text:?}: {reason} (expected an X25519 public key, \
                     age1… as `age-keygen` prints it)"
                ))
            })
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({})", self.0)
    }
}

/// What decrypts a backup: an age X25519 secret key (`AGE-SECRET-KEY-1…`).
///
/// `Debug` shows only its public key.
#[derive(Clone)]
pub struct Identity(pub(crate) age::x25519::Identity);

impl Identity {
    /// A new random identity.
    pub fn generate() -> Identity {
        Identity(age::x25519::Identity::generate())
    }

    /// The recipient (public key) files must be encrypted to for this
    /// identity to decrypt them.
    pub fn to_public(&self) -> Recipient {
        Recipient(self.0.to_public())
    }

    /// The secret key, `AGE-SECRET-KEY-1…`, as an identity file holds it.
    /// Keep it secret.
    pub fn to_secret_string(&self) -> String {
        self.0.to_string().expose_secret().to_string()
    }

    /// Reads an age identity file: one `AGE-SECRET-KEY-1…` per line, blank
    /// lines and `#` comments allowed (what `age-keygen -o FILE` writes).
    /// Errors name the file and the line, never the key.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Vec<Identity>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        Identity::parse_all(&text, &path.display().to_string())
    }

    /// Parses the text of an identity file (see [`from_file`](Self::from_file));
    /// `origin` names it in errors. At least one identity is required.
    pub fn parse_all(text: &str, origin: &str) -> Result<Vec<Identity>> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = line.parse::<Identity>().map_err(|e| match e {
                Error::Config(m) => Error::Config(format!("{origin}, line {}: {m}", i + 1)),
                other => other,
            })?;
            out.push(id);
        }
        if out.is_empty() {
            return Err(Error::Config(format!(
                "{origin}: no identity in this file (expected AGE-SECRET-KEY-1… lines, as \
                 `age-keygen` writes them)"
            )));
        }
        Ok(out)
    }
}

impl FromStr for Identity {
    type Err = Error;

    /// Parses `AGE-SECRET-KEY-1…`. The error never repeats the text given.
    fn from_str(s: &str) -> Result<Identity> {
        let text = s.trim();
        if text.starts_with("age1") {
            return Err(Error::Config(
                "an age public key (age1…) was given as an identity: restoring needs the \
                 secret key (AGE-SECRET-KEY-1…) it was made from"
                    .into(),
            ));
        }
        text.parse::<age::x25519::Identity>()
            .map(Identity)
            .map_err(|reason| {
                Error::Config(format!(
                    "not an age X25519 identity: {reason} (expected AGE-SECRET-KEY-1…, as \
                     `age-keygen` writes it)"
                ))
            })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity(for {})", self.0.to_public())
    }
}

/// The stanza that lists the recipients in clear (see the module docs).
pub(crate) struct Listing(pub(crate) Vec<String>);

impl age::Recipient for Listing {
    fn wrap_file_key(
        &self,
        _file_key: &FileKey,
    ) -> std::result::Result<(Vec<Stanza>, HashSet<String>), age::EncryptError> {
        Ok((
            vec![Stanza {
                tag: LISTING_TAG.to_string(),
                args: self.0.clone(),
                body: Vec::new(),
            }],
            HashSet::new(),
        ))
    }
}

/// The recipients a file's header lists (its `dictdb-recipients` stanza),
/// from the header's text; `None` when it has no such stanza.
pub(crate) fn listed_recipients(header: &[u8]) -> Option<Vec<String>> {
    let text = String::from_utf8_lossy(header);
    for line in text.lines() {
        if line.starts_with("---") {
            break;
        }
        if let Some(rest) = line.strip_prefix("-> ") {
            let mut words = rest.split(' ');
            if words.next() == Some(LISTING_TAG) {
                return Some(words.map(str::to_string).collect());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_with_clear_errors() {
        let id = Identity::generate();
        let secret = id.to_secret_string();
        let again: Identity = secret.parse().unwrap();
        assert_eq!(again.to_public(), id.to_public());
        let e = secret.parse::<Recipient>().unwrap_err().to_string();
        assert!(e.contains("secret key") && !e.contains(&secret), "{e}");
        let public = id.to_public().to_string();
        let e = public.parse::<Identity>().unwrap_err().to_string();
        assert!(e.contains("public key"), "{e}");
        assert!(!format!("{id:?}").contains(&secret));
        let text = format!("# created: today\n# public key: {public}\n\n{secret}\n");
        assert_eq!(Identity::parse_all(&text, "k.txt").unwrap().len(), 1);
        let e = Identity::parse_all("# nothing\n", "k.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.txt") && e.contains("no identity"), "{e}");
        let e = Identity::parse_all("AGE-SECRET-KEY-1XYZ\n", "k.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.txt, line 1"), "{e}");
    }

    #[test]
    fn the_listing_is_found_in_a_header() {
        let header = b"age-encryption.org/v1\n-> X25519 abc\nxyz\n-> dictdb-recipients age1a age1b\n\n--- mac\n";
        assert_eq!(
            listed_recipients(header),
            Some(vec!["age1a".to_string(), "age1b".to_string()])
        );
        assert_eq!(listed_recipients(b"age-encryption.org/v1\n--- mac\n"), None);
    }
}
