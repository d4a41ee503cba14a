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
}

/// How the emulated design compares with the float model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Samples compared.
    pub samples: u32,
    /// Mean absolute difference over all outputs.
    pub mean_abs_diff: f64,
    /// Largest absolute difference.
    pub max_abs_diff: f64,
    /// Share of samples whose argmax agrees (0..1).
    pub argmax_agreement: f64,
    /// Every emulated output equal while the float outputs differ.
    pub collapsed: bool,
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
