//! The convert and emulate stages: hls4ml, through the Python driver shipped in this crate
//! (`worker/python/hlsfarm_driver.py`), one JSON request in and one JSON result out.
//!
//! The driver is compiled into the binary and written next to the request, so an installed
//! `hlsfarm` needs only a Python venv with hls4ml. Its stdout and stderr go to
//! `hls4ml.log`; nothing is scraped from them here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hlsfarm_common::failure::{Failure, FailureClass};
pub use hlsfarm_common::results::{Accuracy, Fidelity, PreflightFinding, Rewrite, TensorInfo};
use hlsfarm_common::settings::Settings;
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::EmulationSpec;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::process::{Ending, Limits, run_tree_limited};

mod model;
mod preflight;

pub use model::{ModelFiles, companions};
pub use preflight::{PreflightItem, preflight_batch};

/// The driver's source, shipped inside the binary.
pub const DRIVER_SOURCE: &str = include_str!("../../python/hlsfarm_driver.py");

/// The driver's log file inside the work folder.
pub const LOG_FILE: &str = "hls4ml.log";

/// The file the driver writes in the work folder once the project is written and will not
/// change (after conversion and preflight, before emulation): the tool stages may start.
pub const READY_FILE: &str = "project.ready";

#[derive(Debug, Serialize)]
struct Emulation<'a> {
    samples: u32,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    inputs: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    validation: Option<&'a Path>,
    max_error: f64,
    min_agreement: f64,
}

/// When an emulation departs from the float model: a fidelity warning, with the layer where
/// it departs traced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Largest difference on an output, as a share of its scale (1 for probabilities, the
    /// float values' range otherwise). Default 0.1.
    pub max_error: f64,
    /// Smallest agreement of a binary (same side of 0.5) or multiclass (same argmax) output.
    /// Default 0.9.
    pub min_agreement: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Tolerance {
            max_error: 0.1,
            min_agreement: 0.9,
        }
    }
}

#[derive(Debug, Serialize)]
struct Request<'a> {
    model: &'a ModelFiles,
    settings: &'a Settings,
    output_dir: &'a Path,
    project_name: &'a str,
    emulate: bool,
    strict: bool,
    emulation: Emulation<'a>,
    /// Written by the driver once the project is written for good (before emulation).
    ready: &'a Path,
}

/// One layer as hls4ml converted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Its name.
    pub name: String,
    /// hls4ml's layer class.
    pub class: String,
    /// The reuse factor it really got (hls4ml may change the requested one).
    pub reuse_factor: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct DriverFailure {
    class: String,
    reason: String,
    #[serde(default)]
    stage: Option<String>,
    suggestion: Option<String>,
}

impl DriverFailure {
    /// The failure as the worker records it (an unknown class is a tool error).
    fn failure(&self) -> Failure {
        Failure {
            class: self.class.parse().unwrap_or(FailureClass::ToolError),
            reason: self.reason.clone(),
            suggestion: self.suggestion.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawResult {
    ok: bool,
    #[serde(default)]
    hls4ml_version: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    timings: BTreeMap<String, f64>,
    #[serde(default)]
    cpu: BTreeMap<String, f64>,
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    layers: Vec<LayerInfo>,
    #[serde(default)]
    effective_reuse_factor: BTreeMap<String, u32>,
    #[serde(default)]
    fidelity: Option<Fidelity>,
    #[serde(default)]
    rewrites: Vec<Rewrite>,
    #[serde(default)]
    inputs: Vec<TensorInfo>,
    #[serde(default)]
    outputs: Vec<TensorInfo>,
    #[serde(default)]
    emulation_note: Option<String>,
    #[serde(default)]
    preflight: Vec<PreflightFinding>,
    #[serde(default)]
    parameters: Option<u64>,
    #[serde(default)]
    multiplications: Option<u64>,
    #[serde(default)]
    largest_layer: Option<u64>,
    #[serde(default)]
    accuracy: Option<Accuracy>,
    #[serde(default)]
    failure: Option<DriverFailure>,
}

/// What convert (and emulate) produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Converted {
    /// The hls4ml version that ran.
    pub hls4ml_version: String,
    /// The model format detected.
    pub format: String,
    /// Seconds per step (`load`, `convert`, `write`, `compile`, `predict`).
    pub timings: BTreeMap<String, f64>,
    /// CPU seconds of the driver and its compiler, `convert` and `emulate`.
    pub cpu: BTreeMap<String, f64>,
    /// hls4ml's warnings, e.g. an adjusted ReuseFactor.
    pub warnings: Vec<String>,
    /// The layers.
    pub layers: Vec<LayerInfo>,
    /// The reuse factor each layer got.
    pub effective_reuse_factor: BTreeMap<String, u32>,
    /// Emulation figures, when emulate ran.
    pub fidelity: Option<Fidelity>,
    /// Changes made to the model before conversion.
    pub rewrites: Vec<Rewrite>,
    /// The model's inputs.
    pub inputs: Vec<TensorInfo>,
    /// The model's outputs.
    pub outputs: Vec<TensorInfo>,
    /// How emulation ran, when not as usual (cheaper compile flags, skipped).
    pub emulation_note: Option<String>,
    /// What preflight predicted from the converted model.
    pub preflight: Vec<PreflightFinding>,
    /// The model's weights, as its framework counts them.
    pub parameters: Option<u64>,
    /// Multiplications per inference, summed over the converted model's layers.
    pub multiplications: Option<u64>,
    /// The most weights one layer holds.
    pub largest_layer: Option<u64>,
    /// Float and fixed-point accuracy on the validation set, when one was given.
    pub accuracy: Option<Accuracy>,
    /// Peak memory of the driver's process tree (Python and g++), MiB.
    pub peak_memory_mib: u64,
    /// Wall time of the whole driver run, seconds.
    pub seconds: f64,
}

/// What the driver needs from the host.
#[derive(Debug, Clone)]
pub struct DriverEnv {
    /// The venv's Python.
    pub python: PathBuf,
    /// Pythons of other venvs by model format (`onnx`, `pytorch`), where one venv does not
    /// hold every framework.
    pub by_format: std::collections::BTreeMap<String, PathBuf>,
    /// Time limit for one run.
    pub timeout: Duration,
    /// Memory limit of the driver's process tree (Python and g++), MiB; `None`: none.
    pub memory_limit_mib: Option<u64>,
    /// When the emulation counts as departing from the float model.
    pub tolerance: Tolerance,
    /// Refuse a trial (as `bad_input`, before any tool stage) when preflight finds something
    /// the tools will refuse.
    pub strict: bool,
    /// Warm interpreters to run trials through (frameworks imported once, a fork per trial);
    /// `None`: a fresh Python per trial.
    pub warm: Option<std::sync::Arc<crate::warm::WarmPool>>,
}

/// One convert (and emulate) job.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    /// The model.
    pub model: &'a ModelFiles,
    /// The settings.
    pub settings: &'a Settings,
    /// Run emulation after conversion.
    pub emulate: bool,
    /// Emulation samples.
    pub emulation: &'a EmulationSpec,
    /// Sample inputs (`.npy`) to use instead of generated ones.
    pub inputs: Option<&'a Path>,
    /// A labelled validation set (`.npz`: inputs by name, or `x`, plus `y`): the float and
    /// the emulated model's accuracy on it.
    pub validation: Option<&'a Path>,
    /// The work folder: the project goes to `work_dir/project_name`, with the request,
    /// result and log beside it.
    pub work_dir: &'a Path,
    /// hls4ml's project name (the top function).
    pub project_name: &'a str,
}

/// The hls4ml project folder of a job.
pub fn project_dir(work_dir: &Path, project_name: &str) -> PathBuf {
    work_dir.join(project_name)
}

fn failure(class: FailureClass, reason: impl Into<String>, suggestion: Option<&str>) -> Failure {
    Failure {
        class,
        reason: reason.into(),
        suggestion: suggestion.map(str::to_owned),
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A failure of the driver with the stage it happened in (convert or emulate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageFailure {
    /// What went wrong.
    pub failure: Failure,
    /// Where: [`Stage::Convert`] unless the driver says emulation failed.
    pub stage: Stage,
    /// Peak resident memory of the driver's processes (Python, g++), MiB, where measured.
    pub peak_memory_mib: Option<u64>,
}

impl std::ops::Deref for StageFailure {
    type Target = Failure;
    fn deref(&self) -> &Failure {
        &self.failure
    }
}

impl From<Failure> for StageFailure {
    fn from(failure: Failure) -> Self {
        StageFailure {
            failure,
            stage: Stage::Convert,
            peak_memory_mib: None,
        }
    }
}

impl DriverEnv {
    /// The limits of one driver run.
    fn limits(&self) -> Limits {
        Limits {
            timeout: self.timeout,
            memory_mib: self.memory_limit_mib,
        }
    }
}

/// Writes the driver into `work_dir` (created) and returns its path.
fn write_driver(work_dir: &Path) -> Result<PathBuf, Failure> {
    let infra = |what: &str, e: std::io::Error| {
        failure(
            FailureClass::Infrastructure,
            format!("{what} {}: {e}", work_dir.display()),
            Some("check the scratch folder's disk space and permissions"),
        )
    };
    std::fs::create_dir_all(work_dir).map_err(|e| infra("cannot create the work folder", e))?;
    let driver = work_dir.join("hlsfarm_driver.py");
    std::fs::write(&driver, DRIVER_SOURCE).map_err(|e| infra("cannot write the driver into", e))?;
    Ok(driver)
}

/// The venv's Python for a model's format (one venv per framework family).
fn model_python<'a>(env: &'a DriverEnv, model: &ModelFiles) -> &'a PathBuf {
    env.by_format
        .get(resolved_format(model))
        .unwrap_or(&env.python)
}

/// A model's format, `auto` resolved from its file name (empty when the name says nothing).
pub fn resolved_format(model: &ModelFiles) -> &str {
    if model.format == "auto" {
        model
            .path
            .file_name()
            .and_then(|n| hlsfarm_common::plan::model_format(&n.to_string_lossy()).ok())
            .unwrap_or("")
    } else {
        model.format.as_str()
    }
}

/// `python` with the environment TensorFlow and hls4ml need.
pub(crate) fn python_command(python: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(python);
    command
        .env("TF_USE_LEGACY_KERAS", "1")
        .env("TF_CPP_MIN_LOG_LEVEL", "2")
        .env("CUDA_VISIBLE_DEVICES", "")
        .env("PYTHONUNBUFFERED", "1");
    command
}

/// `python hlsfarm_driver.py REQUEST` with the environment TensorFlow and hls4ml need; the
/// caller adds the result path and the folder.
fn driver_command(python: &Path, driver: &Path, request: &Path) -> tokio::process::Command {
    let mut command = python_command(python);
    command.arg(driver).arg(request);
    command
}

/// Runs the driver for `job`; a failure is classified (bad input, tool error, timeout, oom,
/// infrastructure), names the fix where one is known, and the stage it happened in.
pub async fn convert(
    env: &DriverEnv,
    job: &Job<'_>,
    cancel: &CancellationToken,
) -> Result<Converted, StageFailure> {
    let infra = |what: &str, e: std::io::Error| {
        failure(
            FailureClass::Infrastructure,
            format!("{what}: {e}"),
            Some("check the scratch folder's disk space and permissions"),
        )
    };
    let driver = write_driver(job.work_dir)?;
    let request_path = job.work_dir.join("convert_request.json");
    let result_path = job.work_dir.join("convert_result.json");
    let _ = std::fs::remove_file(&result_path);
    let ready = job.work_dir.join(READY_FILE);
    let _ = std::fs::remove_file(&ready);
    let request = Request {
        ready: &ready,
        model: job.model,
        settings: job.settings,
        output_dir: &project_dir(job.work_dir, job.project_name),
        project_name: job.project_name,
        emulate: job.emulate,
        strict: env.strict,
        emulation: Emulation {
            samples: job.emulation.samples,
            seed: job.emulation.seed,
            inputs: job.inputs,
            validation: job.validation,
            max_error: env.tolerance.max_error,
            min_agreement: env.tolerance.min_agreement,
        },
    };
    let bytes = serde_json::to_vec_pretty(&request)
        .map_err(|e| failure(FailureClass::Infrastructure, e.to_string(), None))?;
    std::fs::write(&request_path, bytes).map_err(|e| infra("cannot write the request", e))?;

    let python = model_python(env, job.model);
    let warm = match (&env.warm, crate::warm::family(resolved_format(job.model))) {
        (Some(pool), Some(family)) => pool.warm(python, family, cancel).await,
        _ => None,
    };
    let mut command = match &warm {
        // The client stands in for the driver; it runs the cold one itself if the server
        // is gone.
        Some(warm) => {
            let mut command = python_command(python);
            command
                .args(["-I", "-S"])
                .arg(&warm.client)
                .arg(&warm.socket)
                .arg(python)
                .arg(&driver)
                .arg(&request_path);
            command
        }
        None => driver_command(python, &driver, &request_path),
    };
    command.arg(&result_path).current_dir(job.work_dir);
    let log = job.work_dir.join(LOG_FILE);
    let outcome = run_tree_limited(command, &log, env.limits(), cancel)
        .await
        .map_err(|e| {
            failure(
                FailureClass::Infrastructure,
                e.to_string(),
                Some("check that the hls4ml venv's python exists (worker.python / HLSFARM_PYTHON)"),
            )
        })?;
    let status = match outcome.ending {
        Ending::Exited(status) => status,
        Ending::TimedOut => {
            return Err(failure(
                FailureClass::Timeout,
                format!("hls4ml ran past its limit of {} s", env.timeout.as_secs()),
                Some("raise the convert/emulate timeout, or emulate fewer samples"),
            )
            .into());
        }
        Ending::Cancelled => {
            return Err(failure(FailureClass::Infrastructure, "cancelled", None).into());
        }
        Ending::MemoryLimit(limit) => {
            return Err(StageFailure {
                failure: failure(
                    FailureClass::Oom,
                    format!(
                        "hls4ml (Python and g++) passed the trial's memory limit of {limit} MiB (peak {} MiB) and was killed",
                        outcome.peak_memory_mib
                    ),
                    Some(
                        "give trials more memory (worker.trial_memory_mib / --trial-memory-mib, or fewer slots), or use io_stream or a larger reuse factor to shrink the emulation",
                    ),
                ),
                stage: if job.emulate
                    && project_dir(job.work_dir, job.project_name)
                        .join("build_lib.sh")
                        .is_file()
                {
                    Stage::Emulate
                } else {
                    Stage::Convert
                },
                peak_memory_mib: Some(outcome.peak_memory_mib),
            });
        }
    };
    let raw: Option<RawResult> = std::fs::read(&result_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(raw) = raw else {
        use std::os::unix::process::ExitStatusExt;
        let tail = log_tail(&log, 5);
        return Err(if status.signal() == Some(9) {
            StageFailure {
                peak_memory_mib: Some(outcome.peak_memory_mib),
                ..failure(
                    FailureClass::Oom,
                    format!(
                        "hls4ml was killed (SIGKILL), most likely by the OOM killer (peak {} MiB)",
                        outcome.peak_memory_mib
                    ),
                    Some("give the trial more memory: fewer slots on this host"),
                )
                .into()
            }
        } else {
            failure(
                FailureClass::ToolError,
                format!(
                    "the hls4ml driver exited with {status} without a result; log ends:\n{tail}"
                ),
                None,
            )
            .into()
        });
    };
    if !raw.ok {
        let f = raw.failure.unwrap_or(DriverFailure {
            class: "tool_error".into(),
            reason: "the driver reported a failure without a reason".into(),
            stage: None,
            suggestion: None,
        });
        return Err(StageFailure {
            failure: f.failure(),
            stage: match f.stage.as_deref() {
                Some("emulate") => Stage::Emulate,
                _ => Stage::Convert,
            },
            peak_memory_mib: Some(outcome.peak_memory_mib),
        });
    }
    Ok(Converted {
        hls4ml_version: raw.hls4ml_version.unwrap_or_default(),
        format: raw.format.unwrap_or_default(),
        timings: raw.timings,
        cpu: raw.cpu,
        warnings: raw.warnings,
        layers: raw.layers,
        effective_reuse_factor: raw.effective_reuse_factor,
        fidelity: raw.fidelity,
        rewrites: raw.rewrites,
        inputs: raw.inputs,
        outputs: raw.outputs,
        emulation_note: raw.emulation_note,
        preflight: raw.preflight,
        parameters: raw.parameters,
        multiplications: raw.multiplications,
        largest_layer: raw.largest_layer,
        accuracy: raw.accuracy,
        peak_memory_mib: outcome.peak_memory_mib,
        seconds: outcome.elapsed.as_secs_f64(),
    })
}
