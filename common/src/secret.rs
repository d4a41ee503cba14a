//! Secret strings (tokens, passwords, keys) that never show in `Debug` output or in a
//! printed configuration.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret string (a token, a password, a key): `Debug` prints `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// Serializes the secret itself, so the config layers can carry it; print configs through
/// [`Config::redacted`].
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// What a redacted secret shows.
pub(crate) const REDACTED: &str = "<redacted>";

impl Secret {
    /// The secret as printed: `<redacted>`, or empty when unset.
    pub(crate) fn redacted(&self) -> Secret {
        if self.0.is_empty() {
            Secret::default()
        } else {
            Secret::new(REDACTED)
        }
    }
}
