//! One search record read into a [`SearchInfo`]: trial ids from names, a metrics table's row,
//! a Keras Tuner trial's metrics and hyperparameters.

use std::path::Path;

use serde_json::{Map, Value};

use super::{MODEL_COLUMNS, SearchError};
use crate::results::SearchInfo;

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
pub(super) fn normal_id(id: &str) -> Option<String> {
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

pub(super) fn read_json(path: &Path) -> Result<Value, SearchError> {
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
pub(super) fn cell_value(text: &str) -> Value {
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
pub(super) fn base_name(text: &str) -> String {
    Path::new(text.trim())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| text.trim().to_owned())
}

pub(super) fn stem_of(name: &str) -> String {
    Path::new(name)
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_owned())
}

/// Merges `more` into `into`: fields `into` lacks are taken, sources are listed once.
pub(super) fn merge_info(into: &mut SearchInfo, more: SearchInfo) {
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
pub(super) fn info_from_row(row: &Map<String, Value>, source: &str) -> SearchInfo {
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
pub(super) fn info_from_tuner_trial(v: &Value, source: &str) -> Option<SearchInfo> {
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
