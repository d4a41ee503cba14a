//! Errors for input that fails validation: each one names the field, what was wrong, and what
//! is allowed, so a user can fix a sweep file or a flag without reading code.

use std::fmt;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `grid.reuse_factor[2]`.
    pub field: String,
    /// What is wrong and what is allowed, e.g. `must be at least 1, got 0`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every invalid field found in one input: validation reports them all at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Records that `field` is invalid for the reason `message`.
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// Returns `Ok(())` when nothing was recorded, else the errors.
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// Adds every error of `other`, with `prefix.` in front of its field.
    pub fn extend_prefixed(&mut self, prefix: &str, other: ValidationErrors) {
        for err in other.0 {
            self.push(format!("{prefix}.{}", err.field), err.message);
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [] => write!(f, "no validation errors"),
            [one] => write!(f, "invalid {one}"),
            many => {
                write!(f, "{} invalid fields:", many.len())?;
                for err in many {
                    write!(f, "\n  {err}")?;
                }
                Ok(())
            }
        }
    }
}
