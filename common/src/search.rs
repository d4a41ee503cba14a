//! What a hyperparameter search left beside its models, joined to the models by file name or
//! trial id: Keras Tuner's `trials_summary.json` and `hyperparams_trial_<id>.json` (the layout
//! a tuner script writes next to `model_trial_<id>.h5`), Keras Tuner's own
//! `<project>/trial_<id>/trial.json` files, or a generic metrics table (CSV or JSON) keyed by
//! model file name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::results::SearchInfo;

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

/// The trial id in a file or folder name (`model_trial_007.h5`, `trial_07`,
/// `hyperparams_trial_7.json` all give `7`): the digits after the last `trial`, without
/// leading zeros.
pub fn trial_id_of(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    let at = lower.rfind("trial")?;
    let rest = lower[at + 5..].trim_start_matches(['_', '-']);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    normal_id(&digits)
}

/// A trial id without leading zeros (`"007"` and `"7"` are one trial); other ids as given.
fn normal_id(id: &str) -> Option<String> {
    if id.is_empty() {
        return None;
    }
    if id.chars().all(|c| c.is_ascii_digit()) {
        let trimmed = id.trim_start_matches('0');
        return Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned());
    }
    Some(id.to_owned())
}

fn id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => normal_id(s.trim()),
        Value::Number(n) => normal_id(&n.to_string()),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value, SearchError> {
    let text = std::fs::read_to_string(path).map_err(|source| SearchError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| SearchError::Format {
        path: path.to_owned(),
        message: format!("is not valid JSON: {e}"),
    })
}

/// A cell of a CSV table: a number where it reads as one, else the text.
fn cell_value(text: &str) -> Value {
    let t = text.trim();
    if let Ok(i) = t.parse::<i64>() {
        return Value::from(i);
    }
    match t.parse::<f64>() {
        Ok(f) if f.is_finite() => Value::from(f),
        _ => match t {
            "true" | "True" => Value::Bool(true),
            "false" | "False" => Value::Bool(false),
            _ => Value::String(t.to_owned()),
        },
    }
}

/// The file name a table's model cell names (a path or a bare name).
fn base_name(text: &str) -> String {
    Path::new(text.trim())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| text.trim().to_owned())
}

fn stem_of(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_owned())
}

/// Merges `more` into `into`: fields `into` lacks are taken, sources are listed once.
fn merge_info(into: &mut SearchInfo, more: SearchInfo) {
    if into.trial_id.is_none() {
        into.trial_id = more.trial_id;
    }
    for (k, v) in more.hyperparameters {
        into.hyperparameters.entry(k).or_insert(v);
    }
    for (k, v) in more.metrics {
        into.metrics.entry(k).or_insert(v);
    }
    for source in more.source.split(", ").filter(|s| !s.is_empty()) {
        if !into.source.split(", ").any(|s| s == source) {
            if !into.source.is_empty() {
                into.source.push_str(", ");
            }
            into.source.push_str(source);
        }
    }
}

/// A row of a summary or table: `hyperparameters` (a map, or Keras Tuner's `{values}`) as
/// hyperparameters, a nested `metrics` map and every other scalar as metrics.
fn info_from_row(row: &Map<String, Value>, source: &str) -> SearchInfo {
    let mut info = SearchInfo {
        source: source.to_owned(),
        trial_id: row.get("trial_id").and_then(id_text),
        ..SearchInfo::default()
    };
    for (k, v) in row {
        match (k.as_str(), v) {
            ("trial_id", _) => {}
            (k, _)
                if MODEL_COLUMNS.contains(&k) || k.ends_with("_file") || k.ends_with("_path") => {}
            ("hyperparameters" | "hyperparams" | "hps", Value::Object(m)) => {
                let values = m.get("values").and_then(Value::as_object).unwrap_or(m);
                info.hyperparameters.extend(values.clone());
            }
            ("metrics", Value::Object(m)) => {
                for (mk, mv) in m {
                    if !mv.is_object() && !mv.is_array() {
                        info.metrics.insert(mk.clone(), mv.clone());
                    }
                }
            }
            (_, Value::Object(_) | Value::Array(_) | Value::Null) => {}
            _ => {
                info.metrics.insert(k.clone(), v.clone());
            }
        }
    }
    info
}

/// The metric Keras Tuner recorded: the observation at the trial's best step, else the best
/// by the metric's direction, else the last.
fn tuner_metric(metric: &Value, best_step: Option<i64>) -> Option<Value> {
    let observations = metric.get("observations")?.as_array()?;
    let value_of = |o: &Value| -> Option<f64> {
        match o.get("value")? {
            Value::Array(a) => a.first()?.as_f64(),
            v => v.as_f64(),
        }
    };
    if let Some(step) = best_step
        && let Some(v) = observations
            .iter()
            .find(|o| o.get("step").and_then(Value::as_i64) == Some(step))
            .and_then(value_of)
    {
        return Some(Value::from(v));
    }
    let values: Vec<f64> = observations.iter().filter_map(value_of).collect();
    let maximize = metric.get("direction").and_then(Value::as_str) == Some("max");
    let minimize = metric.get("direction").and_then(Value::as_str) == Some("min");
    let v = if maximize {
        values.iter().copied().reduce(f64::max)
    } else if minimize {
        values.iter().copied().reduce(f64::min)
    } else {
        values.last().copied()
    }?;
    Some(Value::from(v))
}

/// One Keras Tuner `trial.json`.
fn info_from_tuner_trial(v: &Value, source: &str) -> Option<SearchInfo> {
    let id = v.get("trial_id").and_then(id_text)?;
    let mut info = SearchInfo {
        source: source.to_owned(),
        trial_id: Some(id),
        ..SearchInfo::default()
    };
    if let Some(values) = v
        .get("hyperparameters")
        .and_then(|h| h.get("values"))
        .and_then(Value::as_object)
    {
        info.hyperparameters.extend(values.clone());
    }
    let best_step = v.get("best_step").and_then(Value::as_i64);
    if let Some(metrics) = v
        .get("metrics")
        .and_then(|m| m.get("metrics"))
        .and_then(Value::as_object)
    {
        for (name, metric) in metrics {
            if let Some(value) = tuner_metric(metric, best_step) {
                info.metrics.insert(name.clone(), value);
            }
        }
    }
    if let Some(score) = v.get("score").filter(|s| s.is_number()) {
        info.metrics.insert("score".to_owned(), score.clone());
    }
    if let Some(status) = v.get("status").and_then(Value::as_str) {
        info.metrics
            .insert("status".to_owned(), Value::from(status.to_owned()));
    }
    Some(info)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn trial_ids_read_from_names() {
        assert_eq!(trial_id_of("model_trial_007.h5").as_deref(), Some("7"));
        assert_eq!(trial_id_of("hp2q_model_trial_000.h5").as_deref(), Some("0"));
        assert_eq!(trial_id_of("trial_12").as_deref(), Some("12"));
        assert_eq!(
            trial_id_of("hyperparams_trial_3.json").as_deref(),
            Some("3")
        );
        assert_eq!(trial_id_of("model.h5"), None);
    }

    #[test]
    fn keras_tuner_layout_joins_by_name_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("trials_summary.json"),
            r#"[{"trial_id": "003", "model_file": "/abs/path/model_trial_003.h5",
                 "hyperparams_file": "hyperparams_trial_003.json",
                 "hyperparameters": {"units": 32, "dropout": 0.1},
                 "val_accuracy": 0.91, "rank": 1, "total_params": 1234}]"#,
        )
        .unwrap();
        std::fs::write(
            d.join("hyperparams_trial_5.json"),
            r#"{"units": 8, "lr": 0.001}"#,
        )
        .unwrap();
        std::fs::create_dir_all(d.join("tuner/proj/trial_05")).unwrap();
        std::fs::write(
            d.join("tuner/proj/trial_05/trial.json"),
            r#"{"trial_id": "05", "hyperparameters": {"space": [], "values": {"units": 8}},
                "metrics": {"metrics": {"val_accuracy": {"direction": "max",
                  "observations": [{"value": [0.80], "step": 0}, {"value": [0.85], "step": 1},
                                   {"value": [0.84], "step": 2}]}}},
                "best_step": 1, "score": 0.85, "status": "COMPLETED"}"#,
        )
        .unwrap();
        let table = SearchTable::discover(d).unwrap();
        let a = table.lookup("model_trial_003.h5").unwrap();
        assert_eq!(a.trial_id.as_deref(), Some("3"));
        assert_eq!(a.hyperparameters["units"], 32);
        assert_eq!(a.metrics["val_accuracy"], 0.91);
        assert_eq!(a.metrics["total_params"], 1234);
        assert!(!a.metrics.contains_key("model_file"));
        let b = table.lookup("model_trial_005.h5").unwrap();
        assert_eq!(b.hyperparameters["lr"], 0.001);
        assert_eq!(b.metrics["val_accuracy"], 0.85, "the best step's value");
        assert_eq!(b.metrics["status"], "COMPLETED");
        assert!(b.source.contains("hyperparams_trial_5.json"));
        assert!(b.source.contains("trial_05/trial.json"), "{}", b.source);
        assert!(table.lookup("model_trial_009.h5").is_none());
    }

    #[test]
    fn metrics_tables_by_model_name() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("m.csv");
        std::fs::write(
            &csv,
            "file,val_auc,notes\nruns/a.h5,0.93,good\nb.onnx,0.81,\n",
        )
        .unwrap();
        let t = SearchTable::load_metrics(&csv).unwrap();
        assert_eq!(t.lookup("a.h5").unwrap().metrics["val_auc"], 0.93);
        assert_eq!(t.lookup("a.h5").unwrap().metrics["notes"], "good");
        assert!(!t.lookup("b.onnx").unwrap().metrics.contains_key("notes"));
        let json = dir.path().join("m.json");
        std::fs::write(&json, r#"{"a.h5": {"val_accuracy": 0.5}}"#).unwrap();
        let t = SearchTable::load_metrics(&json).unwrap();
        assert_eq!(t.lookup("a.h5").unwrap().metrics["val_accuracy"], 0.5);
        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "x,y\n1,2\n").unwrap();
        let e = SearchTable::load_metrics(&bad).unwrap_err().to_string();
        assert!(e.contains("names no model") && e.contains("x, y"), "{e}");
    }
}
