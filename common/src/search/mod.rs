//! What a hyperparameter search left beside its models, joined to the models by file name or
//! trial id: Keras Tuner's `trials_summary.json` and `hyperparams_trial_<id>.json` (the layout
//! a tuner script writes next to `model_trial_<id>.h5`), Keras Tuner's own
//! `<project>/trial_<id>/trial.json` files, or a generic metrics table (CSV or JSON) keyed by
//! model file name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::results::SearchInfo;

mod records;
#[cfg(test)]
mod tests;

pub use records::trial_id_of;
use records::{
    base_name, cell_value, info_from_row, info_from_tuner_trial, merge_info, normal_id, read_json,
    stem_of,
};

/// Why a search's files could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not what it should be.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what it should hold.
        message: String,
    },
}

/// Columns a metrics table may name its models by, in the order they are looked for.
pub const MODEL_COLUMNS: &[&str] = &[
    "model",
    "model_file",
    "model_name",
    "h5_file",
    "file",
    "filename",
    "name",
    "path",
];

/// Every search record found, by model file name and by trial id.
#[derive(Debug, Clone, Default)]
pub struct SearchTable {
    by_name: BTreeMap<String, SearchInfo>,
    by_trial: BTreeMap<String, SearchInfo>,
}

impl SearchTable {
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_trial.is_empty()
    }

    /// How many records were found.
    pub fn len(&self) -> usize {
        self.by_name.len() + self.by_trial.len()
    }

    fn add(&mut self, name: Option<String>, info: SearchInfo) {
        let id = info.trial_id.clone();
        match (name, id) {
            (Some(name), _) => match self.by_name.get_mut(&name) {
                Some(existing) => merge_info(existing, info),
                None => {
                    self.by_name.insert(name, info);
                }
            },
            (None, Some(id)) => match self.by_trial.get_mut(&id) {
                Some(existing) => merge_info(existing, info),
                None => {
                    self.by_trial.insert(id, info);
                }
            },
            (None, None) => {}
        }
    }

    /// Everything a search left in `dir`: `trials_summary.json`, `hyperparams_trial_<id>.json`
    /// and Keras Tuner `trial.json` files in sub-folders (three levels deep).
    pub fn discover(dir: &Path) -> Result<SearchTable, SearchError> {
        let mut table = SearchTable::default();
        let summary = dir.join("trials_summary.json");
        if summary.is_file() {
            table.read_summary(&summary)?;
        }
        let entries = std::fs::read_dir(dir).map_err(|source| SearchError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut hyperparams: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("hyperparams_trial") && n.ends_with(".json")
                })
            })
            .collect();
        hyperparams.sort();
        for path in hyperparams {
            let Some(id) = trial_id_of(&path.file_name().unwrap_or_default().to_string_lossy())
            else {
                continue;
            };
            let v = read_json(&path)?;
            let Some(map) = v.as_object() else { continue };
            let values = map
                .get("values")
                .or_else(|| map.get("hyperparameters"))
                .and_then(Value::as_object)
                .unwrap_or(map);
            table.add(
                None,
                SearchInfo {
                    source: path
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                    trial_id: Some(id),
                    hyperparameters: values.clone().into_iter().collect(),
                    metrics: BTreeMap::new(),
                },
            );
        }
        table.read_tuner_dir(dir, 3)?;
        Ok(table)
    }

    /// A Keras Tuner directory: every `trial.json` up to `depth` folders down.
    fn read_tuner_dir(&mut self, dir: &Path, depth: usize) -> Result<(), SearchError> {
        if depth == 0 {
            return Ok(());
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for sub in dirs {
            let trial = sub.join("trial.json");
            if trial.is_file() {
                let v = read_json(&trial)?;
                let source = format!(
                    "{}/trial.json",
                    sub.file_name().unwrap_or_default().to_string_lossy()
                );
                if let Some(info) = info_from_tuner_trial(&v, &source) {
                    self.add(None, info);
                }
            } else {
                self.read_tuner_dir(&sub, depth - 1)?;
            }
        }
        Ok(())
    }

    /// `trials_summary.json`: a list of trials, `{"trials": [...]}`, or a map by trial id.
    fn read_summary(&mut self, path: &Path) -> Result<(), SearchError> {
        let v = read_json(path)?;
        let source = "trials_summary.json";
        let rows: Vec<(Option<String>, &Map<String, Value>)> = match &v {
            Value::Array(rows) => rows
                .iter()
                .filter_map(Value::as_object)
                .map(|r| (None, r))
                .collect(),
            Value::Object(m) => match m.get("trials") {
                Some(Value::Array(rows)) => rows
                    .iter()
                    .filter_map(Value::as_object)
                    .map(|r| (None, r))
                    .collect(),
                _ => m
                    .iter()
                    .filter_map(|(k, r)| r.as_object().map(|r| (normal_id(k), r)))
                    .collect(),
            },
            _ => Vec::new(),
        };
        if rows.is_empty() {
            return Err(SearchError::Format {
                path: path.to_owned(),
                message: "holds no trials: expected a list of trials (trial_id, model_file, hyperparameters, val_accuracy, ...), {\"trials\": [...]}, or a map by trial id".to_owned(),
            });
        }
        for (key_id, row) in rows {
            let mut info = info_from_row(row, source);
            if info.trial_id.is_none() {
                info.trial_id = key_id;
            }
            let name = MODEL_COLUMNS
                .iter()
                .find_map(|c| row.get(*c).and_then(Value::as_str))
                .filter(|n| n.contains('.'))
                .map(base_name);
            if let Some(name) = &name
                && info.trial_id.is_none()
            {
                info.trial_id = trial_id_of(name);
            }
            self.add(name, info);
        }
        Ok(())
    }

    /// A metrics table given by the user: a CSV or JSON table keyed by model file name, or a
    /// Keras Tuner directory.
    pub fn load_metrics(path: &Path) -> Result<SearchTable, SearchError> {
        let mut table = SearchTable::default();
        if path.is_dir() {
            table.read_tuner_dir(path, 4)?;
            if table.is_empty() {
                return Err(SearchError::Format {
                    path: path.to_owned(),
                    message: "holds no Keras Tuner trial.json: give a tuner directory, or a CSV/JSON table with a model column".to_owned(),
                });
            }
            return Ok(table);
        }
        let source = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let rows: Vec<Map<String, Value>> = if is_json {
            match read_json(path)? {
                Value::Array(rows) => rows
                    .into_iter()
                    .filter_map(|r| r.as_object().cloned())
                    .collect(),
                Value::Object(m) if m.get("trials").is_some_and(Value::is_array) => m["trials"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_object().cloned())
                    .collect(),
                Value::Object(m) => m
                    .into_iter()
                    .filter_map(|(name, r)| {
                        let mut r = r.as_object()?.clone();
                        r.insert("model".to_owned(), Value::String(name));
                        Some(r)
                    })
                    .collect(),
                _ => Vec::new(),
            }
        } else {
            let mut reader = csv::Reader::from_path(path).map_err(|e| SearchError::Format {
                path: path.to_owned(),
                message: format!("cannot read it as CSV: {e}"),
            })?;
            let headers = reader
                .headers()
                .map_err(|e| SearchError::Format {
                    path: path.to_owned(),
                    message: format!("has no header row: {e}"),
                })?
                .clone();
            let mut rows = Vec::new();
            for record in reader.records() {
                let record = record.map_err(|e| SearchError::Format {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?;
                rows.push(
                    headers
                        .iter()
                        .zip(record.iter())
                        .filter(|(_, v)| !v.trim().is_empty())
                        .map(|(h, v)| (h.trim().to_owned(), cell_value(v)))
                        .collect(),
                );
            }
            rows
        };
        let Some(first) = rows.first() else {
            return Err(SearchError::Format {
                path: path.to_owned(),
                message: "holds no rows".to_owned(),
            });
        };
        let Some(column) = MODEL_COLUMNS.iter().find(|c| first.contains_key(**c)) else {
            return Err(SearchError::Format {
                path: path.to_owned(),
                message: format!(
                    "names no model: its columns are {}; add a column `model` with each model's file name",
                    first.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        for mut row in rows {
            let Some(name) = row.remove(*column) else {
                continue;
            };
            let name = match &name {
                Value::String(s) => base_name(s),
                other => other.to_string(),
            };
            let mut info = info_from_row(&row, &source);
            if info.trial_id.is_none() {
                info.trial_id = trial_id_of(&name);
            }
            table.add(Some(name), info);
        }
        Ok(table)
    }

    /// Adds every record of `other`; a model both know keeps this table's fields first.
    pub fn extend(&mut self, other: SearchTable) {
        for (name, info) in other.by_name {
            self.add(Some(name), info);
        }
        for (_, info) in other.by_trial {
            self.add(None, info);
        }
    }

    /// What the search recorded of the model file `name`: the record naming the file (or its
    /// stem), merged with the one of its trial id.
    pub fn lookup(&self, name: &str) -> Option<SearchInfo> {
        let stem = stem_of(name);
        let named = self.by_name.get(name).cloned().or_else(|| {
            self.by_name
                .iter()
                .find(|(n, _)| stem_of(n) == stem)
                .map(|(_, i)| i.clone())
        });
        let id = named
            .as_ref()
            .and_then(|i| i.trial_id.clone())
            .or_else(|| trial_id_of(&stem));
        let by_id = id.and_then(|id| self.by_trial.get(&id).cloned());
        match (named, by_id) {
            (Some(mut a), Some(b)) => {
                merge_info(&mut a, b);
                Some(a)
            }
            (a, b) => a.or(b),
        }
    }
}
