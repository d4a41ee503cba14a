//! The sweep spec: models × settings grid × stages, as users write it in TOML or JSON.
//!
//! ```toml
//! name = "model2 4w0i"
//! stages = ["convert", "emulate", "csynth"]
//!
//! [models]
//! dir = "results/"
//! pattern = "model_trial_*.h5"
//!
//! [grid]
//! io_type = "io_stream"          # one value or a list
//! strategy = "resource"
//! reuse_factor = [1, 2, 4]
//! precision = "ap_fixed<16,6>"
//!
//! [grid.layers.conv1]
//! reuse_factor = 3
//! ```
//! Unknown keys are rejected, and [`SweepSpec::validate`] names every bad field with the
//! values it allows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::select::Gate;
use crate::settings::{
    Backend, IoType, LayerOverride, Settings, Strategy, check_clock_period, check_precision,
    check_reuse_factor, part_family, validate_layers,
};
use crate::stage::{Stage, normalize_stages};
use crate::trial_key::EmulationSpec;
use crate::validation::ValidationErrors;

mod models;

pub use models::{DEFAULT_PATTERN, ModelSelection, SelectionError};

/// A value given once or as a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list of values.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The lists whose cartesian product gives a sweep's settings. A field left out takes the
/// default of [`Settings::default`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsGrid {
    /// `io_parallel` and/or `io_stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_type: Option<OneOrMany<IoType>>,
    /// `latency`, `resource`, `distributed_arithmetic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<OneOrMany<Strategy>>,
    /// Reuse factors (≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_factor: Option<OneOrMany<u32>>,
    /// Default precisions, e.g. `ap_fixed<16,6>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<OneOrMany<String>>,
    /// FPGA parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<OneOrMany<String>>,
    /// Clock periods in ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_period_ns: Option<OneOrMany<f64>>,
    /// `vitis` and/or `vivado`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<OneOrMany<Backend>>,
    /// hls4ml `MaximumSize` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_partition_size: Option<OneOrMany<u32>>,
    /// Per-layer overrides applied to every point.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, LayerOverride>,
}

/// Largest number of settings points one sweep may expand to (per model).
pub const MAX_GRID_POINTS: usize = 100_000;

fn values<T: Clone>(field: &Option<OneOrMany<T>>, default: T) -> Vec<T> {
    field
        .as_ref()
        .map_or_else(|| vec![default], OneOrMany::to_vec)
}

impl SettingsGrid {
    /// Number of points, without building them.
    pub fn len(&self) -> usize {
        let d = Settings::default();
        values(&self.io_type, d.io_type).len()
            * values(&self.strategy, d.strategy).len()
            * values(&self.reuse_factor, d.reuse_factor).len()
            * values(&self.precision, d.precision).len()
            * values(&self.part, d.part).len()
            * values(&self.clock_period_ns, d.clock_period_ns).len()
            * values(&self.backend, d.backend).len()
            * self
                .max_array_partition_size
                .as_ref()
                .map_or(1, |v| v.to_vec().len())
    }

    /// True when the grid has no point (a field given as an empty list).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every point, in a fixed order (the last field varies fastest).
    pub fn expand(&self) -> Vec<Settings> {
        let d = Settings::default();
        let max_sizes: Vec<Option<u32>> = self.max_array_partition_size.as_ref().map_or_else(
            || vec![None],
            |v| v.to_vec().into_iter().map(Some).collect(),
        );
        let mut points = Vec::with_capacity(self.len());
        for io_type in values(&self.io_type, d.io_type) {
            for strategy in values(&self.strategy, d.strategy) {
                for reuse_factor in values(&self.reuse_factor, d.reuse_factor) {
                    for precision in values(&self.precision, d.precision.clone()) {
                        for part in values(&self.part, d.part.clone()) {
                            for clock_period_ns in values(&self.clock_period_ns, d.clock_period_ns)
                            {
                                for backend in values(&self.backend, d.backend) {
                                    for max_size in &max_sizes {
                                        points.push(Settings {
                                            io_type,
                                            strategy,
                                            reuse_factor,
                                            precision: precision.clone(),
                                            part: part.clone(),
                                            clock_period_ns,
                                            backend,
                                            max_array_partition_size: *max_size,
                                            layers: self.layers.clone(),
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        points
    }

    /// Checks every value of every field.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let empty = |errors: &mut ValidationErrors, field: &str, len: usize| {
            if len == 0 {
                errors.push(field, "is an empty list; leave it out for the default");
            }
        };
        if let Some(v) = &self.io_type {
            empty(&mut errors, "io_type", v.to_vec().len());
        }
        if let Some(v) = &self.strategy {
            empty(&mut errors, "strategy", v.to_vec().len());
        }
        if let Some(v) = &self.backend {
            empty(&mut errors, "backend", v.to_vec().len());
        }
        if let Some(v) = &self.reuse_factor {
            let v = v.to_vec();
            empty(&mut errors, "reuse_factor", v.len());
            for (i, rf) in v.iter().enumerate() {
                check_reuse_factor(&mut errors, &format!("reuse_factor[{i}]"), *rf);
            }
        }
        if let Some(v) = &self.precision {
            let v = v.to_vec();
            empty(&mut errors, "precision", v.len());
            for (i, p) in v.iter().enumerate() {
                if let Err(msg) = check_precision(p) {
                    errors.push(format!("precision[{i}]"), msg);
                }
            }
        }
        if let Some(v) = &self.part {
            let v = v.to_vec();
            empty(&mut errors, "part", v.len());
            for (i, p) in v.iter().enumerate() {
                if let Err(msg) = part_family(p) {
                    errors.push(format!("part[{i}]"), msg);
                }
            }
        }
        if let Some(v) = &self.clock_period_ns {
            let v = v.to_vec();
            empty(&mut errors, "clock_period_ns", v.len());
            for (i, c) in v.iter().enumerate() {
                check_clock_period(&mut errors, &format!("clock_period_ns[{i}]"), *c);
            }
        }
        if let Some(v) = &self.max_array_partition_size {
            let v = v.to_vec();
            empty(&mut errors, "max_array_partition_size", v.len());
            for (i, s) in v.iter().enumerate() {
                if *s == 0 {
                    errors.push(
                        format!("max_array_partition_size[{i}]"),
                        "must be at least 1 (leave it out for hls4ml's default of 4096)",
                    );
                }
            }
        }
        validate_layers(&mut errors, "layers", &self.layers);
        if self.len() > MAX_GRID_POINTS {
            errors.push(
                "grid",
                format!(
                    "expands to {} points per model; at most {MAX_GRID_POINTS} are allowed",
                    self.len()
                ),
            );
        }
        errors.into_result()
    }
}

/// Memory and cores one trial holds on its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialResources {
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Cores.
    pub cores: u32,
}

impl TrialResources {
    /// The default for a trial running `stages`: 2 GiB for hls4ml alone, 4 GiB with HLS,
    /// 8 GiB and 2 cores with Vivado synthesis.
    pub fn default_for(stages: &[Stage]) -> TrialResources {
        if stages.contains(&Stage::Vsynth) {
            TrialResources {
                memory_mib: 8192,
                cores: 2,
            }
        } else if stages.iter().any(|s| s.needs_xilinx_tools()) {
            TrialResources {
                memory_mib: 4096,
                cores: 1,
            }
        } else {
            TrialResources {
                memory_mib: 2048,
                cores: 1,
            }
        }
    }
}

/// What a user submits: which models, which settings, which stages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// A human name, shown in status and used in output paths.
    #[serde(default)]
    pub name: String,
    /// The model files.
    pub models: ModelSelection,
    /// The settings grid.
    #[serde(default)]
    pub grid: SettingsGrid,
    /// The stages, run in pipeline order. Empty (the default): every stage where the tools
    /// are found, else `convert` and `emulate`.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// Share of workers against other sweeps (≥ 1).
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Run every trial even where a result for its key is stored.
    #[serde(default)]
    pub force: bool,
    /// How emulation samples are generated.
    #[serde(default)]
    pub emulation: EmulationSpec,
    /// The toolchain the trial keys name (cluster): default, the one most live workers have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toolchain: Option<ToolchainSpec>,
    /// Memory and cores each trial holds on its worker (cluster): default by stages (2 GiB
    /// for hls4ml alone, 4 GiB with HLS, 8 GiB and 2 cores with Vivado).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<TrialResources>,
    /// What a trial's deterministic failure with a known fix leads to: `report` (the
    /// default: it is reported with the fix) or `apply-fix` (a derived trial with the fix
    /// applied runs too, keyed as a new trial and linked to the failed one).
    #[serde(default, skip_serializing_if = "OnFailure::is_report")]
    pub on_failure: OnFailure,
    /// A labelled validation set (`.npz`: one array per model input name, or `x`, plus `y`):
    /// each trial's float and fixed-point accuracy on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<PathBuf>,
    /// What the search recorded of each model, beyond what is found beside the models: a
    /// CSV or JSON table keyed by model file name, or a Keras Tuner directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<PathBuf>,
    /// The funnel's gates, in stage order: every trial runs up to a gate's stage, and only
    /// the trials it selects go on (see [`crate::select`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub select: Vec<Gate>,
}

string_enum!(
    /// What a sweep does with a deterministic failure whose fix is known (an array
    /// partitioned above `max_array_partition_size`, a layer over the unroll limit).
    #[derive(Default)]
    OnFailure, "on_failure", {
        /// Report it, with the fix in `result.json` `failure.fix`.
        #[default]
        Report => "report",
        /// Also run a derived trial with the fix applied (once: a derived trial's own
        /// failure is only reported).
        ApplyFix => "apply-fix" | "apply_fix",
    }
);

impl OnFailure {
    /// The default, left out of files.
    pub fn is_report(&self) -> bool {
        *self == OnFailure::Report
    }
}

/// A toolchain named by a sweep, for submitting before any worker has registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolchainSpec {
    /// hls4ml version, e.g. `1.3.0`.
    pub hls4ml_version: String,
    /// HLS tool command (`vitis-run`, `vitis_hls`, `vivado_hls`); empty with no tool stages.
    #[serde(default)]
    pub tool: String,
    /// Its version, e.g. `2023.2`.
    #[serde(default)]
    pub tool_version: String,
}

fn default_priority() -> u32 {
    1
}

/// Why a sweep file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("cannot read sweep file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's extension is neither `.toml` nor `.json`.
    #[error("sweep file {0} must end in .toml or .json")]
    Format(PathBuf),
    /// The TOML does not parse or has unknown keys.
    #[error("sweep file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// The values are invalid.
    #[error("sweep file {path}: {errors}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every bad field.
        errors: ValidationErrors,
    },
}

impl SweepSpec {
    /// Parses a sweep from TOML text.
    pub fn from_toml(text: &str) -> Result<SweepSpec, String> {
        toml::from_str(text).map_err(|err| err.to_string())
    }

    /// Parses a sweep from JSON text.
    pub fn from_json(text: &str) -> Result<SweepSpec, String> {
        serde_json::from_str(text).map_err(|err| err.to_string())
    }

    /// Reads and validates a `.toml` or `.json` sweep file.
    pub fn load(path: &Path) -> Result<SweepSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let parsed = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => SweepSpec::from_toml(&text),
            Some("json") => SweepSpec::from_json(&text),
            _ => return Err(SpecError::Format(path.to_owned())),
        };
        let spec = parsed.map_err(|message| SpecError::Parse {
            path: path.to_owned(),
            message,
        })?;
        spec.validate().map_err(|errors| SpecError::Invalid {
            path: path.to_owned(),
            errors,
        })?;
        Ok(spec)
    }

    /// Checks every field and reports all bad ones.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        if self.name.len() > 200 || self.name.contains(['/', '\\', '\0']) {
            errors.push(
                "name",
                "must be at most 200 characters without `/`, `\\` or NUL",
            );
        }
        if self.priority == 0 || self.priority > 1000 {
            errors.push(
                "priority",
                format!("must be between 1 and 1000, got {}", self.priority),
            );
        }
        if self.emulation.samples == 0 || self.emulation.samples > 1_000_000 {
            errors.push(
                "emulation.samples",
                format!(
                    "must be between 1 and 1000000, got {}",
                    self.emulation.samples
                ),
            );
        }
        if let Some(pattern) = &self.models.pattern
            && let Err(err) = glob::Pattern::new(pattern)
        {
            errors.push(
                "models.pattern",
                format!("`{pattern}` is not a valid glob: {}", err.msg),
            );
        }
        if let Err(grid) = self.grid.validate() {
            errors.extend_prefixed("grid", grid);
        }
        for (i, gate) in self.select.iter().enumerate() {
            if let Err(e) = gate.validate() {
                errors.push(format!("select[{i}]"), e);
            }
            if i > 0 && gate.after <= self.select[i - 1].after {
                errors.push(
                    format!("select[{i}].after"),
                    format!(
                        "is `{}`, not after the previous gate's `{}`: gates go in stage order",
                        gate.after,
                        self.select[i - 1].after
                    ),
                );
            }
            if !self.stages.is_empty() && !self.stages.contains(&gate.after) {
                errors.push(
                    format!("select[{i}].after"),
                    format!("is `{}`, a stage the sweep does not run", gate.after),
                );
            }
        }
        errors.into_result()
    }

    /// The stages in pipeline order without repeats.
    pub fn normalized_stages(&self) -> Vec<Stage> {
        normalize_stages(&self.stages)
    }
}

#[cfg(test)]
mod tests;
