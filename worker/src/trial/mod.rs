//! One trial, run locally from start to end: convert and emulate (hls4ml), the tool stages
//! (C synthesis, co-simulation, IP export, Vivado synthesis) the way hls4ml 1.3 runs them,
//! the reports parsed, the essential files kept, a tarball, and `result.json`.
//!
//! Both the worker daemon and the one-host run call [`run_trial`]. It never returns an error:
//! whatever happens ends in a [`TrialResult`], failed ones with a classified failure.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::report::log;
use hlsfarm_common::report::project::ProjectReport;
use hlsfarm_common::results::{
    ModelRef, RESULT_SCHEMA, Reports, StageTiming, TrialFailure, TrialResult, TrialStatus,
    now_rfc3339,
};
use hlsfarm_common::settings::{Backend, Settings};
use hlsfarm_common::stage::{Stage, normalize_stages};
use hlsfarm_common::trial_key::{EmulationSpec, ToolVersion, Toolchain};
use tokio_util::sync::CancellationToken;

use crate::driver::{self, DriverEnv, Job, ModelFiles, log_tail};
use crate::tools::DetectedTool;

mod clock;
mod keep;
mod tool_stage;

use keep::{dir_bytes, disk_full, keep_files, write_tarball};
use tool_stage::{ToolFailure, hls_log_name, run_tool_stages};

/// hls4ml's project (and top function) name.
pub const PROJECT_NAME: &str = "myproject";

/// How often a trial looks for the driver's word that the project is written.
const READY_POLL: Duration = Duration::from_millis(50);

/// What a host offers to run trials.
#[derive(Debug, Clone)]
pub struct TrialEnv {
    /// The hls4ml venv's Python, and the time limit of convert + emulate.
    pub driver: DriverEnv,
    /// The Xilinx tools found.
    pub tools: Vec<DetectedTool>,
    /// Time limit of each tool stage.
    pub tool_timeout: Duration,
    /// Write `<folder>.tar.gz` of the kept files.
    pub make_tarball: bool,
    /// Extra environment for the tools (e.g. `XILINXD_LICENSE_FILE`).
    pub tool_env: Vec<(String, String)>,
    /// Start the tool stages as soon as the project is written, beside the emulation (each
    /// under its own time and memory limit), instead of after it. For hosts with a core to
    /// spare per trial: see [`room_beside`].
    pub emulate_beside_tools: bool,
}

/// Whether a host with `cores` running `slots` trials at once has a core to spare for each
/// trial's emulation beside its tools (the Xilinx tools' synthesis and hls4ml's g++ are
/// each mostly one thread).
pub fn room_beside(cores: u32, slots: u32) -> bool {
    cores >= 2 * slots.max(1)
}

/// One trial to run.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    /// The trial key (hex).
    pub trial_key: String,
    /// The model's file name and sha256.
    pub model: ModelRef,
    /// The model's files.
    pub files: ModelFiles,
    /// The settings.
    pub settings: Settings,
    /// The stages.
    pub stages: Vec<Stage>,
    /// Emulation samples.
    pub emulation: EmulationSpec,
    /// Sample inputs (`.npy`) instead of generated ones.
    pub inputs: Option<PathBuf>,
    /// A labelled validation set: the float and emulated accuracy on it.
    pub validation: Option<PathBuf>,
    /// What the hyperparameter search recorded of the model, written into `result.json`.
    pub search: Option<hlsfarm_common::results::SearchInfo>,
    /// Scratch folder for the hls4ml project and the tools.
    pub scratch: PathBuf,
    /// Where the kept files and `result.json` go (created).
    pub output_dir: PathBuf,
    /// Where the tarball goes, when one is made.
    pub tarball: PathBuf,
    /// The trial this one was derived from with a fix (`run --fix`).
    pub derived_from: Option<hlsfarm_common::results::DerivedFrom>,
    /// Time limits learned from history for some tool stages; each stage runs under the
    /// lower of its learned limit and [`TrialEnv::tool_timeout`].
    pub stage_limits: Vec<hlsfarm_common::estimate::StageLimit>,
}

/// The command that runs `build_prj.tcl` for this backend, as hls4ml 1.3 does, and the tool's
/// log file name. Vitis: `vitis-run --tcl build_prj.tcl --mode hls` (2024.2+), else
/// `vitis_hls -f build_prj.tcl`; Vivado: `vivado_hls -f build_prj.tcl "k=v ..."`.
pub fn tool_command(
    backend: Backend,
    tools: &[DetectedTool],
) -> Option<(&DetectedTool, Vec<String>)> {
    let find = |name: &str| tools.iter().find(|t| t.name == name);
    match backend {
        Backend::Vitis => {
            if let Some(t) = find("vitis-run") {
                Some((
                    t,
                    vec![
                        "--tcl".into(),
                        "build_prj.tcl".into(),
                        "--mode".into(),
                        "hls".into(),
                    ],
                ))
            } else {
                find("vitis_hls").map(|t| (t, vec!["-f".into(), "build_prj.tcl".into()]))
            }
        }
        Backend::Vivado => {
            find("vivado_hls").map(|t| (t, vec!["-f".into(), "build_prj.tcl".into()]))
        }
    }
}

/// Runs the whole trial and returns its result, also written to `output_dir/result.json`;
/// `on_stage` hears each stage as it starts (convert and emulate run as one step).
pub async fn run_trial(
    env: &TrialEnv,
    spec: &TrialSpec,
    cancel: &CancellationToken,
    on_stage: &(dyn Fn(Stage) + Send + Sync),
) -> TrialResult {
    let start_time = now_rfc3339();
    let stages = normalize_stages(&spec.stages);
    let mut timings = Vec::new();
    let mut failure: Option<TrialFailure> = None;
    let mut warnings = Vec::new();
    let mut effective_reuse_factor = Default::default();
    let mut fidelity = None;
    let mut rewrites = Vec::new();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut notes = Vec::new();
    let mut preflight = Vec::new();
    let mut parameters = None;
    let mut multiplications = None;
    let mut largest_layer = None;
    let mut accuracy = None;
    let mut hls4ml_version = String::new();
    let project = driver::project_dir(&spec.scratch, PROJECT_NAME);

    // Convert always runs: every later stage needs the project.
    let emulate = stages.contains(&Stage::Emulate);
    let job = Job {
        model: &spec.files,
        settings: &spec.settings,
        emulate,
        emulation: &spec.emulation,
        inputs: spec.inputs.as_deref(),
        validation: spec.validation.as_deref(),
        work_dir: &spec.scratch,
        project_name: PROJECT_NAME,
    };
    let tool_stages: Vec<Stage> = stages
        .iter()
        .copied()
        .filter(|s| s.needs_xilinx_tools())
        .collect();
    // Nothing the tools read changes once the driver says the project is written, so where
    // the host has a core for it the tool stages start then, beside the emulation.
    let beside = emulate && env.emulate_beside_tools && !tool_stages.is_empty();
    let tools_cancel = cancel.child_token();
    let ready = spec.scratch.join(driver::READY_FILE);
    let driver_done = AtomicBool::new(false);
    // The tools' token is the trial's own but for one more cause: a failed driver.
    let run_tools = || {
        run_tool_stages(
            env,
            spec.settings.backend,
            &tool_stages,
            &project,
            &tools_cancel,
            on_stage,
            &spec.stage_limits,
        )
    };
    on_stage(Stage::Convert);
    let converting = async {
        let converted = driver::convert(&env.driver, &job, cancel).await;
        if converted.is_err() {
            // The driver failed: tools beside its emulation stop, as they would never have
            // started; before the project was written none had started.
            tools_cancel.cancel();
        }
        driver_done.store(true, Ordering::SeqCst);
        converted
    };
    let tools_beside = async {
        if !beside {
            return None;
        }
        while !ready.is_file() {
            if driver_done.load(Ordering::SeqCst) || tools_cancel.is_cancelled() {
                return None;
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Some(run_tools().await)
    };
    let (converted, early) = tokio::join!(converting, tools_beside);
    let tools_beside_emulation = early.is_some();
    match converted {
        Ok(converted) => {
            hls4ml_version = converted.hls4ml_version.clone();
            let t = |k: &str| converted.timings.get(k).copied().unwrap_or(0.0);
            let emulate_seconds = t("samples")
                + t("compile")
                + t("reference")
                + t("predict")
                + t("trace")
                + t("validate");
            let cpu = |k: &str| converted.cpu.get(k).copied();
            timings.push(StageTiming {
                stage: Stage::Convert,
                seconds: converted.seconds - emulate_seconds,
                peak_memory_mib: converted.peak_memory_mib,
                cpu_seconds: cpu("convert"),
            });
            if emulate {
                timings.push(StageTiming {
                    stage: Stage::Emulate,
                    seconds: emulate_seconds,
                    peak_memory_mib: converted.peak_memory_mib,
                    cpu_seconds: cpu("emulate"),
                });
            }
            warnings = converted.warnings;
            effective_reuse_factor = converted.effective_reuse_factor;
            fidelity = converted.fidelity;
            rewrites = converted.rewrites;
            inputs = converted.inputs;
            outputs = converted.outputs;
            notes.extend(converted.emulation_note);
            preflight = converted.preflight;
            parameters = converted.parameters;
            multiplications = converted.multiplications;
            largest_layer = converted.largest_layer;
            accuracy = converted.accuracy;
        }
        Err(e) => {
            let stage = e.stage;
            let f = e.failure;
            failure = Some(TrialFailure {
                class: f.class,
                reason: f.reason,
                stage: Some(stage),
                log_tail: log_tail(&spec.scratch.join(driver::LOG_FILE), 20),
                suggestion: f.suggestion,
                peak_memory_mib: e.peak_memory_mib,
                fix: None,
            });
        }
    }

    let mut tool_used: Option<ToolVersion> = None;
    let run = match early {
        Some(run) => Some(run),
        None if !tool_stages.is_empty() && failure.is_none() && !cancel.is_cancelled() => {
            Some(run_tools().await)
        }
        None => None,
    };
    if let Some(run) = run {
        if let Some((tool, _)) = tool_command(spec.settings.backend, &env.tools) {
            tool_used = Some(ToolVersion {
                name: tool.name.clone(),
                version: tool.version.clone(),
            });
        }
        timings.extend(run.timings);
        // Beside a failed emulation the tools were stopped: the trial failed there, and the
        // stages they finished keep their timings.
        if failure.is_none()
            && let Some((
                stage,
                ToolFailure {
                    failure: f,
                    log_tail,
                    peak_memory_mib,
                    fix,
                },
            )) = run.failed
        {
            failure = Some(TrialFailure {
                class: f.class,
                reason: f.reason,
                stage: Some(stage),
                log_tail,
                suggestion: f.suggestion,
                peak_memory_mib,
                fix,
            });
        }
    }

    // A deterministic failure the tools or preflight know the fix of: the fix, for a sweep
    // that applies it (`on_failure = "apply-fix"`).
    if let Some(f) = failure
        .as_mut()
        .filter(|f| matches!(f.class, FailureClass::ToolError | FailureClass::BadInput))
    {
        let mut fix = f.fix.take().unwrap_or_default();
        for finding in preflight.iter().filter(|p| p.is_error()) {
            if let Some(changes) = &finding.fix {
                hlsfarm_common::settings::merge_fixes(&mut fix, changes);
            }
        }
        f.fix = (!fix.is_empty()).then_some(fix);
    }

    let mut reports = Reports::default();
    if project.is_dir()
        && let Ok((report, _warnings)) = ProjectReport::read(&project)
    {
        reports.csynth = report.csynth;
        reports.vivado_synth = report.vivado_synth;
        reports.cosim = report.cosim;
        let kept_log = project.join(format!("{}.all", hls_log_name(spec.settings.backend)));
        if let Ok(text) = std::fs::read(&kept_log) {
            let digest = log::parse(&String::from_utf8_lossy(&text));
            notes.extend(digest.notes.iter().cloned());
            reports.hls_log = Some(digest);
        }
    }

    let status = if cancel.is_cancelled() {
        TrialStatus::Cancelled
    } else if failure.is_some() {
        TrialStatus::Failed
    } else {
        TrialStatus::Success
    };
    let mut result = TrialResult {
        schema: RESULT_SCHEMA.to_owned(),
        trial_key: spec.trial_key.clone(),
        model: spec.model.clone(),
        settings: spec.settings.clone(),
        stages,
        status,
        start_time,
        end_time: String::new(),
        timings,
        toolchain: Toolchain {
            hls4ml_version,
            tool: tool_used,
        },
        fidelity,
        warnings,
        rewrites,
        inputs,
        outputs,
        notes,
        preflight,
        derived_from: spec.derived_from.clone(),
        memory_limit_mib: env.driver.memory_limit_mib,
        parameters,
        multiplications,
        largest_layer,
        tools_beside_emulation,
        accuracy,
        search: spec.search.clone(),
        effective_reuse_factor,
        reports,
        failure,
        kept_files: Vec::new(),
        tarball: None,
        kept_bytes: 0,
    };
    let kept = keep_files(
        &project,
        &spec.scratch,
        spec.settings.backend,
        &spec.output_dir,
    );
    match kept {
        Ok(files) => {
            result.kept_bytes = dir_bytes(&spec.output_dir, &files);
            if env.make_tarball && !files.is_empty() {
                match write_tarball(&spec.output_dir, &files, &spec.tarball) {
                    Ok(()) => {
                        result.tarball = spec
                            .tarball
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned());
                        result.kept_bytes += std::fs::metadata(&spec.tarball)
                            .map(|m| m.len())
                            .unwrap_or(0);
                    }
                    Err(e) => tracing::warn!(error = %e, "failed to write tarball"),
                }
            }
            result.kept_files = files;
        }
        Err(e) => {
            tracing::warn!(error = %e, output = %spec.output_dir.display(), "failed to keep files");
            if result.failure.is_none() {
                result.status = TrialStatus::Failed;
                result.failure = Some(TrialFailure {
                    class: FailureClass::Infrastructure,
                    reason: format!(
                        "cannot copy the kept files to {}: {e}",
                        spec.output_dir.display()
                    ),
                    stage: None,
                    log_tail: String::new(),
                    suggestion: Some("check the output folder's disk space and permissions".into()),
                    peak_memory_mib: None,
                    fix: None,
                });
            }
        }
    }
    if let Some(f) = result.failure.as_mut() {
        disk_full(f, &spec.scratch);
    }
    result.end_time = now_rfc3339();
    write_result(&result, &spec.output_dir);
    result
}

/// Writes `result` as `output_dir/result.json` (best effort: the caller has it in memory).
pub fn write_result(result: &TrialResult, output_dir: &Path) {
    if let Ok(bytes) = serde_json::to_vec_pretty(result) {
        let _ = std::fs::create_dir_all(output_dir);
        let _ = std::fs::write(output_dir.join("result.json"), bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_files_and_tarball_hold_only_regular_files_inside_their_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let project = dir.path().join("prj");
        std::fs::create_dir_all(&project).expect("mkdir");
        std::fs::write(project.join("project.tcl"), "set myproject \"myproject\"\n")
            .expect("write");
        std::fs::write(dir.path().join("secret"), "not yours").expect("write");
        // A link where the tool's log would be: not followed, not kept.
        std::os::unix::fs::symlink(dir.path().join("secret"), project.join("vitis_hls.log"))
            .expect("symlink");
        let out = dir.path().join("out").join("hls_model");
        let kept = keep_files(&project, dir.path(), Backend::Vitis, &out).expect("keep");
        assert_eq!(kept, vec!["project.tcl".to_owned()]);
        let tarball = dir.path().join("out").join("artifacts.tar.gz");
        write_tarball(&out, &kept, &tarball).expect("tarball");
        let file = std::fs::File::open(&tarball).expect("open");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut names = Vec::new();
        for entry in archive.entries().expect("entries") {
            let entry = entry.expect("entry");
            assert!(entry.header().entry_type().is_file());
            let path = entry.path().expect("path").into_owned();
            assert!(path.is_relative());
            assert!(
                path.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)))
            );
            names.push(path.display().to_string());
        }
        assert_eq!(names, vec!["hls_model/project.tcl"]);
    }
}
