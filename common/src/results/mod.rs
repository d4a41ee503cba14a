//! `result.json`: everything one trial produced (DESIGN §5).
//!
//! The worker writes it; the coordinator and the one-host run aggregate it into
//! `synthesis_results.json` and `results.csv`. Numbers are JSON numbers; absent figures are
//! `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::failure::FailureClass;
use crate::report::log::LogDigest;
use crate::report::{CosimReport, CsynthReport, VivadoSynthReport};
use crate::settings::Settings;
use crate::stage::Stage;
use crate::trial_key::Toolchain;

mod fidelity;

pub use fidelity::{Accuracy, Divergence, Fidelity, OutputAccuracy, OutputFidelity, OutputKind};

/// The schema tag of `result.json`.
pub const RESULT_SCHEMA: &str = "hlsfarm.result/v1";

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Every stage ran through.
    Success,
    /// A stage failed; `failure` says why.
    Failed,
    /// An operator stopped it.
    Cancelled,
}

/// One stage's time and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    /// The stage.
    pub stage: Stage,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Peak resident memory of its process tree, MiB.
    pub peak_memory_mib: u64,
    /// CPU time of its process tree (user + system, children included), seconds, where
    /// measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

/// A change made to the model before hls4ml read it, whose meaning is plain (a `QActivation`
/// that quantizes nothing, a pruning wrapper, a reshape of an input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    /// The layer (or node) rewritten.
    pub layer: String,
    /// What it was.
    pub from: String,
    /// What it became.
    pub to: String,
    /// Why the change keeps the model's meaning.
    pub why: String,
}

/// What the tools will refuse or struggle with, predicted from hls4ml's layer list before any
/// synthesis (a partition above the limit, a reuse factor hls4ml changes, an io_parallel design
/// too large to compile in reasonable time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreflightFinding {
    /// The rule: `array_partition`, `unroll_limit`, `reuse_factor`, `io_parallel_size`.
    pub rule: String,
    /// The layer, where the finding is about one.
    #[serde(default)]
    pub layer: Option<String>,
    /// `error` (the tools will refuse it) or `warning`.
    pub severity: String,
    /// One line saying what and why.
    pub message: String,
    /// Settings that would avoid it, where known (e.g. `max_array_partition_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<BTreeMap<String, serde_json::Value>>,
    /// What to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl PreflightFinding {
    /// The tools will refuse it.
    pub fn is_error(&self) -> bool {
        self.severity == "error"
    }
}

/// The trial a derived trial was made from (`run --fix`): its key and settings, and what
/// preflight found that the fix answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivedFrom {
    /// The original trial's key.
    pub trial_key: String,
    /// The original settings.
    pub settings: Settings,
    /// The settings changed, and to what.
    pub fix: BTreeMap<String, serde_json::Value>,
    /// The findings the fix answers.
    pub findings: Vec<String>,
}

/// A model input or output as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorInfo {
    /// Its name in the model.
    pub name: String,
    /// Its shape without the batch dimension, where known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shape: Vec<u64>,
}

/// A failure as a result records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialFailure {
    /// The class.
    pub class: FailureClass,
    /// One line saying what went wrong.
    pub reason: String,
    /// The stage that failed.
    pub stage: Option<Stage>,
    /// The last lines of the relevant log.
    pub log_tail: String,
    /// A fix, where one is known.
    pub suggestion: Option<String>,
    /// Peak resident memory of the failed stage's processes, MiB (the larger of what the
    /// worker sampled and what the tool printed), where known. An `oom` retry reserves more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<u64>,
    /// Settings that should get the trial past this failure (merged into its settings): from
    /// the tool's log (the partition size it needs) or preflight's findings the tools refused.
    /// A sweep with `on_failure = "apply-fix"` runs them as a derived trial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<BTreeMap<String, serde_json::Value>>,
}

/// What a hyperparameter search recorded of a model (Keras Tuner's files or a metrics table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchInfo {
    /// The file(s) it came from.
    pub source: String,
    /// The search's trial id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_id: Option<String>,
    /// The hyperparameters the search chose.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    /// Its metrics (`val_accuracy`, `rank`, parameter counts, any column of a table).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, serde_json::Value>,
}

/// The model a trial ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// The file's name.
    pub name: String,
    /// Its sha256.
    pub sha256: String,
}

/// What the tools reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reports {
    /// C synthesis.
    pub csynth: Option<CsynthReport>,
    /// Vivado synthesis.
    pub vivado_synth: Option<VivadoSynthReport>,
    /// Co-simulation.
    pub cosim: Option<CosimReport>,
    /// The HLS tool's log digest.
    pub hls_log: Option<LogDigest>,
}

/// Everything one trial produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialResult {
    /// Always [`RESULT_SCHEMA`].
    pub schema: String,
    /// The trial key.
    pub trial_key: String,
    /// The model.
    pub model: ModelRef,
    /// The settings.
    pub settings: Settings,
    /// The stages asked for, in order.
    pub stages: Vec<Stage>,
    /// How it ended.
    pub status: TrialStatus,
    /// When it started (RFC 3339, UTC).
    pub start_time: String,
    /// When it ended (RFC 3339, UTC).
    pub end_time: String,
    /// Time and memory per stage run.
    pub timings: Vec<StageTiming>,
    /// hls4ml and the tool that ran.
    pub toolchain: Toolchain,
    /// Emulation figures.
    pub fidelity: Option<Fidelity>,
    /// hls4ml's warnings (an adjusted ReuseFactor, say).
    pub warnings: Vec<String>,
    /// Changes made to the model before conversion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<Rewrite>,
    /// The model's inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<TensorInfo>,
    /// The model's outputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<TensorInfo>,
    /// Notes on how a stage ran (an emulation compiled with cheaper flags, or skipped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// What preflight predicted from the converted model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preflight: Vec<PreflightFinding>,
    /// The trial this one was derived from with a fix (`run --fix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<DerivedFrom>,
    /// The memory limit its processes ran under, MiB: the worker's share per slot, or the
    /// larger reservation an out-of-memory retry got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mib: Option<u64>,
    /// The model's weights, as its framework counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// Multiplications per inference, summed over the converted model's layers (dense:
    /// inputs × outputs; convolution: kernel × channels × filters × output pixels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplications: Option<u64>,
    /// The most weights any one layer of the converted model holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_layer: Option<u64>,
    /// The tool stages started beside the emulation (once the project was written), so the
    /// stage timings overlap: the trial took convert plus the longer of emulate and the tool
    /// stages, not their sum.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tools_beside_emulation: bool,
    /// Accuracy of the float and the fixed-point model on the user's validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<Accuracy>,
    /// What the hyperparameter search that made the model recorded of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchInfo>,
    /// The reuse factor each layer got.
    pub effective_reuse_factor: BTreeMap<String, u32>,
    /// What the tools reported.
    pub reports: Reports,
    /// Why it failed.
    pub failure: Option<TrialFailure>,
    /// Files kept, relative to the trial's folder.
    pub kept_files: Vec<String>,
    /// The tarball of the kept files, relative to the trial's folder, when made.
    pub tarball: Option<String>,
    /// Bytes kept (files plus tarball).
    pub kept_bytes: u64,
}

impl TrialResult {
    /// A successful result of a trial that ran nothing (convert stage, no reports): what a
    /// worker's no-op mode (`hlsfarm bench dispatch`) and the queue benchmarks complete with.
    pub fn noop(trial_key: &str, model: &str, settings: Settings) -> TrialResult {
        let now = now_rfc3339();
        TrialResult {
            schema: RESULT_SCHEMA.into(),
            trial_key: trial_key.into(),
            model: ModelRef {
                name: model.into(),
                sha256: String::new(),
            },
            settings,
            stages: vec![Stage::Convert],
            status: TrialStatus::Success,
            start_time: now.clone(),
            end_time: now,
            timings: Vec::new(),
            toolchain: Toolchain {
                hls4ml_version: String::new(),
                tool: None,
            },
            fidelity: None,
            warnings: Vec::new(),
            rewrites: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            notes: Vec::new(),
            preflight: Vec::new(),
            derived_from: None,
            memory_limit_mib: None,
            parameters: None,
            multiplications: None,
            largest_layer: None,
            tools_beside_emulation: false,
            accuracy: None,
            search: None,
            effective_reuse_factor: BTreeMap::new(),
            reports: Reports::default(),
            failure: None,
            kept_files: Vec::new(),
            tarball: None,
            kept_bytes: 0,
        }
    }

    /// Latency in ns (worst case × target clock), where both are known.
    pub fn latency_ns(&self) -> Option<f64> {
        let c = self.reports.csynth.as_ref()?;
        Some(c.latency_worst_cycles? as f64 * c.target_clock_ns?)
    }
}

/// Now, as RFC 3339 in UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// A trial's result in a few figures: what the queue keeps per finished trial for status,
/// results listings and the web page (the whole `result.json` stays in the store).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultSummary {
    /// `success`, `failed` or `cancelled`.
    pub status: String,
    /// The failure class, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<FailureClass>,
    /// One line saying what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A known fix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
    /// The stage that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// Seconds over all stages.
    pub seconds: f64,
    /// LUTs (Vivado synthesis where run, else C synthesis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lut: Option<f64>,
    /// Flip-flops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ff: Option<f64>,
    /// DSP slices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dsp: Option<f64>,
    /// Block RAM (18K units from HLS, tiles from Vivado).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bram: Option<f64>,
    /// Worst-case latency, cycles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_cycles: Option<u64>,
    /// Worst-case latency, ns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<f64>,
    /// Largest initiation interval, cycles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_cycles: Option<u64>,
    /// Emulation: largest absolute difference from the float model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_abs_diff: Option<f64>,
    /// Emulation: share of samples whose argmax agrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argmax_agreement: Option<f64>,
    /// Emulation: the figure that fits each output (see [`Fidelity::headline`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fidelity: Option<String>,
    /// Emulation departs from the float model beyond tolerance.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fidelity_warning: bool,
    /// hls4ml warnings.
    pub warnings: usize,
    /// Bytes kept (tarball).
    pub kept_bytes: u64,
    /// The float model's accuracy on the validation set (first labelled output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_accuracy: Option<f64>,
    /// The emulated (fixed-point) model's accuracy on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

impl From<&TrialResult> for ResultSummary {
    fn from(r: &TrialResult) -> Self {
        let csynth = r.reports.csynth.as_ref();
        let vivado = r.reports.vivado_synth.as_ref();
        let pick = |v: Option<f64>, h: Option<f64>| v.or(h);
        ResultSummary {
            status: match r.status {
                TrialStatus::Success => "success",
                TrialStatus::Failed => "failed",
                TrialStatus::Cancelled => "cancelled",
            }
            .to_owned(),
            class: r.failure.as_ref().map(|f| f.class),
            reason: r.failure.as_ref().map(|f| f.reason.clone()),
            suggestion: r.failure.as_ref().and_then(|f| f.suggestion.clone()),
            stage: r.failure.as_ref().and_then(|f| f.stage),
            seconds: r.timings.iter().map(|t| t.seconds).sum(),
            lut: pick(
                vivado.and_then(|v| v.used.lut),
                csynth.and_then(|c| c.used.lut),
            ),
            ff: pick(
                vivado.and_then(|v| v.used.ff),
                csynth.and_then(|c| c.used.ff),
            ),
            dsp: pick(
                vivado.and_then(|v| v.used.dsp),
                csynth.and_then(|c| c.used.dsp),
            ),
            bram: pick(
                vivado.and_then(|v| v.used.bram_tiles),
                csynth.and_then(|c| c.used.bram_18k),
            ),
            latency_cycles: csynth.and_then(|c| c.latency_worst_cycles),
            latency_ns: r.latency_ns(),
            interval_cycles: csynth.and_then(|c| c.interval_max_cycles),
            max_abs_diff: r.fidelity.as_ref().map(|f| f.max_abs_diff),
            argmax_agreement: r.fidelity.as_ref().and_then(|f| f.argmax_agreement),
            fidelity: r.fidelity.as_ref().map(Fidelity::headline),
            fidelity_warning: r.fidelity.as_ref().is_some_and(Fidelity::warning),
            warnings: r.warnings.len(),
            kept_bytes: r.kept_bytes,
            float_accuracy: r.accuracy.as_ref().map(|a| a.first.float),
            accuracy: r.accuracy.as_ref().and_then(|a| a.first.hls),
        }
    }
}
