//! A sweep's outputs: `synthesis_results.json` in the original script's schema (total,
//! successful, failed, results[] with h5_file, status, output_dir, kept_files, tarball,
//! start_time, end_time, error), extended with the figures, and `results.csv`, one row per
//! trial, ready for pandas.

use std::path::Path;

use serde::Serialize;

use crate::results::{Fidelity, TrialResult, TrialStatus};
use crate::select::Decision;

/// One trial in `synthesis_results.json`: the seed's keys first, then the figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedEntry {
    /// The model file (absolute path), as the original wrote it.
    pub h5_file: String,
    /// `success`, `failed` or `cancelled`.
    pub status: String,
    /// The trial's output folder (absolute path).
    pub output_dir: String,
    /// The kept files (absolute paths).
    pub kept_files: Vec<String>,
    /// The tarball (absolute path), when made.
    pub tarball: Option<String>,
    /// When the trial started.
    pub start_time: String,
    /// When it ended.
    pub end_time: String,
    /// Why it failed (`class: reason`), else null.
    pub error: Option<String>,
    /// The trial key.
    pub trial_key: String,
    /// True when the result came from an earlier run with the same key.
    pub reused: bool,
    /// The whole result: settings, timings, reports, fidelity, failure.
    pub result: TrialResult,
    /// What each selection gate decided for it (a funnel's sweep).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub selection: Vec<Decision>,
}

/// `synthesis_results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedSummary {
    /// Trials.
    pub total: usize,
    /// Trials that succeeded.
    pub successful: usize,
    /// Trials that did not.
    pub failed: usize,
    /// One entry per trial.
    pub results: Vec<SeedEntry>,
}

impl SeedEntry {
    /// The entry of a trial whose files are in `output_dir`.
    pub fn new(h5_file: &Path, output_dir: &Path, result: TrialResult, reused: bool) -> SeedEntry {
        let abs = |name: &str| output_dir.join(name).display().to_string();
        let tarball = result.tarball.as_ref().and_then(|name| {
            output_dir
                .parent()
                .map(|parent| parent.join(name).display().to_string())
        });
        SeedEntry {
            h5_file: h5_file.display().to_string(),
            status: match result.status {
                TrialStatus::Success => "success",
                TrialStatus::Failed => "failed",
                TrialStatus::Cancelled => "cancelled",
            }
            .to_owned(),
            output_dir: output_dir.display().to_string(),
            kept_files: result.kept_files.iter().map(|f| abs(f)).collect(),
            tarball,
            start_time: result.start_time.clone(),
            end_time: result.end_time.clone(),
            error: result
                .failure
                .as_ref()
                .map(|f| format!("{}: {}", f.class, f.reason)),
            trial_key: result.trial_key.clone(),
            reused,
            result,
            selection: Vec::new(),
        }
    }
}

impl SeedSummary {
    /// The summary of these entries.
    pub fn new(results: Vec<SeedEntry>) -> SeedSummary {
        let successful = results.iter().filter(|r| r.status == "success").count();
        SeedSummary {
            total: results.len(),
            successful,
            failed: results.len() - successful,
            results,
        }
    }

    /// `results.csv`: one row per trial, flat columns: [`CSV_COLUMNS`], then the search's
    /// metrics (by name; `search_<name>` where a fixed column has it) and hyperparameters
    /// (`hp_<name>`) that any trial has.
    pub fn csv(&self) -> std::io::Result<Vec<u8>> {
        let mut metrics = std::collections::BTreeSet::new();
        let mut hyperparameters = std::collections::BTreeSet::new();
        for s in self.results.iter().filter_map(|e| e.result.search.as_ref()) {
            metrics.extend(s.metrics.keys().cloned());
            hyperparameters.extend(s.hyperparameters.keys().cloned());
        }
        let mut header: Vec<String> = CSV_COLUMNS.iter().map(|c| (*c).to_owned()).collect();
        header.push("search_trial_id".to_owned());
        header.extend(metrics.iter().map(|m| {
            if CSV_COLUMNS.contains(&m.as_str()) || m == "search_trial_id" {
                format!("search_{m}")
            } else {
                m.clone()
            }
        }));
        header.extend(hyperparameters.iter().map(|h| format!("hp_{h}")));
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer
            .write_record(&header)
            .map_err(std::io::Error::other)?;
        let text = |v: Option<&serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        for entry in &self.results {
            let mut row = csv_row(entry);
            let search = entry.result.search.as_ref();
            row.push(search.and_then(|s| s.trial_id.clone()).unwrap_or_default());
            row.extend(
                metrics
                    .iter()
                    .map(|m| text(search.and_then(|s| s.metrics.get(m)))),
            );
            row.extend(
                hyperparameters
                    .iter()
                    .map(|h| text(search.and_then(|s| s.hyperparameters.get(h)))),
            );
            writer.write_record(row).map_err(std::io::Error::other)?;
        }
        writer
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// The columns of `results.csv`.
pub const CSV_COLUMNS: &[&str] = &[
    "model",
    "trial_key",
    "status",
    "reused",
    "io_type",
    "strategy",
    "reuse_factor",
    "precision",
    "part",
    "clock_period_ns",
    "backend",
    "max_array_partition_size",
    "hls_lut",
    "hls_ff",
    "hls_dsp",
    "hls_bram_18k",
    "hls_uram",
    "latency_best_cycles",
    "latency_worst_cycles",
    "interval_min_cycles",
    "interval_max_cycles",
    "estimated_clock_ns",
    "latency_ns",
    "vivado_lut",
    "vivado_ff",
    "vivado_dsp",
    "vivado_bram_tiles",
    "vivado_uram",
    "cosim_status",
    "mean_abs_diff",
    "max_abs_diff",
    "argmax_agreement",
    "fidelity",
    "fidelity_warning",
    "rewrites",
    "parameters",
    "float_accuracy",
    "hls_accuracy",
    "accuracy_drop",
    "float_auc",
    "hls_auc",
    "selection",
    "seconds",
    "failure_class",
    "failure_reason",
    "output_dir",
];

fn csv_row(entry: &SeedEntry) -> Vec<String> {
    let r = &entry.result;
    let s = &r.settings;
    let num = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let int = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let csynth = r.reports.csynth.as_ref();
    let vivado = r.reports.vivado_synth.as_ref();
    let fidelity = r.fidelity.as_ref();
    let seconds = r.timings.iter().fold(0.0, |sum, t| sum + t.seconds);
    let acc = r.accuracy.as_ref().map(|a| &a.first);
    vec![
        r.model.name.clone(),
        r.trial_key.clone(),
        entry.status.clone(),
        entry.reused.to_string(),
        s.io_type.to_string(),
        s.strategy.to_string(),
        s.reuse_factor.to_string(),
        s.precision.clone(),
        s.part.clone(),
        s.clock_period_ns.to_string(),
        s.backend.to_string(),
        s.max_array_partition_size
            .map(|v| v.to_string())
            .unwrap_or_default(),
        num(csynth.and_then(|c| c.used.lut)),
        num(csynth.and_then(|c| c.used.ff)),
        num(csynth.and_then(|c| c.used.dsp)),
        num(csynth.and_then(|c| c.used.bram_18k)),
        num(csynth.and_then(|c| c.used.uram)),
        int(csynth.and_then(|c| c.latency_best_cycles)),
        int(csynth.and_then(|c| c.latency_worst_cycles)),
        int(csynth.and_then(|c| c.interval_min_cycles)),
        int(csynth.and_then(|c| c.interval_max_cycles)),
        num(csynth.and_then(|c| c.estimated_clock_ns)),
        num(r.latency_ns()),
        num(vivado.and_then(|v| v.used.lut)),
        num(vivado.and_then(|v| v.used.ff)),
        num(vivado.and_then(|v| v.used.dsp)),
        num(vivado.and_then(|v| v.used.bram_tiles)),
        num(vivado.and_then(|v| v.used.uram)),
        r.reports
            .cosim
            .as_ref()
            .map(|c| format!("{:?}", c.status).to_lowercase())
            .unwrap_or_default(),
        num(fidelity.map(|f| f.mean_abs_diff)),
        num(fidelity.map(|f| f.max_abs_diff)),
        num(fidelity.and_then(|f| f.argmax_agreement)),
        fidelity.map(Fidelity::headline).unwrap_or_default(),
        fidelity.is_some_and(Fidelity::warning).to_string(),
        r.rewrites
            .iter()
            .map(|w| format!("{}: {} -> {}", w.layer, w.from, w.to))
            .collect::<Vec<_>>()
            .join("; "),
        int(r.parameters),
        num(acc.map(|a| a.float)),
        num(acc.and_then(|a| a.hls)),
        num(acc.and_then(|a| a.drop)),
        num(acc.and_then(|a| a.float_auc)),
        num(acc.and_then(|a| a.hls_auc)),
        entry
            .selection
            .iter()
            .map(|d| {
                let role = match (d.role, &d.promoted_for) {
                    (crate::select::Role::Primary, Some(_)) => "promoted".to_owned(),
                    (role, _) => format!("{role:?}").to_lowercase(),
                };
                format!("gate {}: {role} ({})", d.gate + 1, d.reason)
            })
            .collect::<Vec<_>>()
            .join("; "),
        format!("{seconds:.3}"),
        r.failure
            .as_ref()
            .map(|f| f.class.to_string())
            .unwrap_or_default(),
        r.failure
            .as_ref()
            .map(|f| f.reason.clone())
            .unwrap_or_default(),
        entry.output_dir.clone(),
    ]
}
