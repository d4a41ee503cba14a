//! Which model files a sweep takes, and finding them: a folder and a glob, explicit paths, or
//! both.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which model files a sweep takes: a folder and a glob, explicit paths, or both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSelection {
    /// A folder to search; relative paths are taken from the sweep file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// A glob over file names in `dir` (default `model_trial_*.h5`, as the original script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Explicit model files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathBuf>,
    /// At most this many models, in name order (the original's `--limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The pattern the original script matches by default.
pub const DEFAULT_PATTERN: &str = "model_trial_*.h5";

/// Why a model selection found no usable files.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    /// The selection names neither a folder nor a file.
    #[error("no models selected: give a folder (models.dir / --input-dir) or model paths")]
    Empty,
    /// The folder could not be read.
    #[error("cannot read model folder {dir}: {source}")]
    ReadDir {
        /// The folder.
        dir: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The glob is not a valid pattern.
    #[error("invalid pattern `{pattern}`: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing in the folder matches.
    #[error(
        "no file in {dir} matches `{pattern}`{hint}; pass --pattern (or models.pattern) to choose other files"
    )]
    NoMatch {
        /// The folder.
        dir: PathBuf,
        /// The pattern.
        pattern: String,
        /// A note listing a few files that are there, or saying the folder is empty.
        hint: String,
    },
    /// An explicit path does not exist or is not a file.
    #[error("model file {0} does not exist or is not a file")]
    Missing(PathBuf),
}

impl ModelSelection {
    /// Lists the selected files, sorted by path, with `base` as the folder relative paths
    /// start from.
    pub fn resolve(&self, base: &Path) -> Result<Vec<PathBuf>, SelectionError> {
        if self.dir.is_none() && self.paths.is_empty() {
            return Err(SelectionError::Empty);
        }
        let mut found = Vec::new();
        if let Some(dir) = &self.dir {
            let dir = base.join(dir);
            let pattern_text = self.pattern.as_deref().unwrap_or(DEFAULT_PATTERN);
            let pattern =
                glob::Pattern::new(pattern_text).map_err(|err| SelectionError::Pattern {
                    pattern: pattern_text.to_owned(),
                    message: err.msg.to_owned(),
                })?;
            let entries = std::fs::read_dir(&dir).map_err(|source| SelectionError::ReadDir {
                dir: dir.clone(),
                source,
            })?;
            let mut others = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| SelectionError::ReadDir {
                    dir: dir.clone(),
                    source,
                })?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if !entry.path().is_file() {
                    continue;
                }
                if pattern.matches(&name) {
                    found.push(entry.path());
                } else {
                    others.push(name);
                }
            }
            if found.is_empty() {
                others.sort();
                let hint = if others.is_empty() {
                    " (the folder has no files)".to_owned()
                } else {
                    let shown: Vec<&str> = others.iter().take(5).map(String::as_str).collect();
                    format!(
                        " (it has {} other files, e.g. {})",
                        others.len(),
                        shown.join(", ")
                    )
                };
                return Err(SelectionError::NoMatch {
                    dir,
                    pattern: pattern_text.to_owned(),
                    hint,
                });
            }
        }
        for path in &self.paths {
            let path = base.join(path);
            if !path.is_file() {
                return Err(SelectionError::Missing(path));
            }
            found.push(path);
        }
        found.sort();
        found.dedup();
        if let Some(limit) = self.limit {
            found.truncate(limit);
        }
        Ok(found)
    }
}
