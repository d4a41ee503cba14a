//! One trial, run locally from start to end: convert and emulate (hls4ml), the tool stages
//! (C synthesis, co-simulation, IP export, Vivado synthesis) the way hls4ml 1.3 runs them,
//! the reports parsed, the essential files kept, a tarball, and `result.json`.
//!
//! Both the worker daemon and the one-host run call [`run_trial`]. It never returns an error:
//! whatever happens ends in a [`TrialResult`], failed ones with a classified failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hlsfarm_common::failure::{Failure, FailureClass};
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
use crate::process::{Ending, Limits, run_tree_limited};
use crate::tools::DetectedTool;

/// hls4ml's project (and top function) name.
pub const PROJECT_NAME: &str = "myproject";

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
}

/// `PATH` for the tools: the folders of the tools found first, so that `build_prj.tcl`'s
/// `exec vivado` finds the same Vivado the worker detected.
fn tool_path(tools: &[DetectedTool]) -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for tool in tools {
        if let Some(dir) = tool.path.parent()
            && !dirs.iter().any(|d| d == dir)
        {
            dirs.push(dir.to_owned());
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
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
    /// Scratch folder for the hls4ml project and the tools.
    pub scratch: PathBuf,
    /// Where the kept files and `result.json` go (created).
    pub output_dir: PathBuf,
    /// Where the tarball goes, when one is made.
    pub tarball: PathBuf,
    /// The trial this one was derived from with a fix (`run --fix`).
    pub derived_from: Option<hlsfarm_common::results::DerivedFrom>,
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

/// The log file the HLS tool writes in the project folder.
fn hls_log_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Vitis => "vitis_hls.log",
        Backend::Vivado => "vivado_hls.log",
    }
}

/// The `build_prj.tcl` steps for one stage. Co-simulation needs C simulation's results to
/// validate against, so it runs csim and validation too.
fn steps(stage: Stage) -> [(&'static str, u8); 7] {
    let on = |yes: bool| u8::from(yes);
    [
        ("csim", on(stage == Stage::Cosim)),
        ("synth", on(stage == Stage::Csynth)),
        ("cosim", on(stage == Stage::Cosim)),
        ("validation", on(stage == Stage::Cosim)),
        ("export", on(stage == Stage::Export)),
        ("vsynth", on(stage == Stage::Vsynth)),
        ("fifo_opt", 0),
    ]
}

fn build_opt_tcl(stage: Stage) -> String {
    let mut text = String::from("array set opt {\n    reset      0\n");
    for (name, value) in steps(stage) {
        text.push_str(&format!("    {name:<10} {value}\n"));
    }
    text.push_str("}\n");
    text
}

fn fail(class: FailureClass, reason: impl Into<String>, suggestion: Option<String>) -> Failure {
    Failure {
        class,
        reason: reason.into(),
        suggestion,
    }
}

/// A tool stage's failure: what went wrong, the end of its log and its peak memory (MiB).
struct ToolFailure {
    failure: Failure,
    log_tail: String,
    peak_memory_mib: Option<u64>,
    /// Settings that get past it, where the log says (the partition size it needs).
    fix: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

impl From<(Failure, String)> for ToolFailure {
    fn from((failure, log_tail): (Failure, String)) -> ToolFailure {
        ToolFailure {
            failure,
            log_tail,
            peak_memory_mib: None,
            fix: None,
        }
    }
}

/// Runs one tool stage in `project`; the tool's log is appended to `project/<hls log>` after
/// each run (the tools overwrite it), so the kept log covers every stage.
async fn run_tool_stage(
    env: &TrialEnv,
    backend: Backend,
    stage: Stage,
    project: &Path,
    cancel: &CancellationToken,
) -> Result<StageTiming, ToolFailure> {
    let no_tool = || {
        let wanted = match backend {
            Backend::Vitis => "vitis-run or vitis_hls",
            Backend::Vivado => "vivado_hls",
        };
        (
            fail(
                FailureClass::BadInput,
                format!(
                    "stage {stage} needs {wanted} for the {backend} backend, and this host has none"
                ),
                Some(format!(
                    "put {wanted} on PATH (source the Xilinx settings64.sh), or leave out the tool stages"
                )),
            ),
            String::new(),
        )
    };
    let (tool, mut args) = tool_command(backend, &env.tools).ok_or_else(no_tool)?;
    if stage == Stage::Vsynth && !env.tools.iter().any(|t| t.name == "vivado") {
        return Err((
            fail(
                FailureClass::BadInput,
                "stage vsynth needs vivado on PATH, and this host has none",
                Some("install Vivado (or source its settings64.sh), or leave out vsynth".into()),
            ),
            String::new(),
        )
            .into());
    }
    let infra = |e: std::io::Error| {
        (
            fail(
                FailureClass::Infrastructure,
                format!("cannot write build_opt.tcl: {e}"),
                None,
            ),
            String::new(),
        )
    };
    std::fs::write(project.join("build_opt.tcl"), build_opt_tcl(stage)).map_err(infra)?;
    if backend == Backend::Vivado {
        // Vivado HLS's build_prj.tcl takes its steps as arguments.
        let steps: Vec<String> = steps(stage)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        args.push(format!("reset=0 {}", steps.join(" ")));
    }
    let log_name = hls_log_name(backend);
    let stage_log = project.join(format!("{stage}.tool.log"));
    let mut command = tokio::process::Command::new(&tool.path);
    command
        .args(&args)
        .current_dir(project)
        .envs(env.tool_env.iter().map(|(k, v)| (k, v)))
        .env("PATH", tool_path(&env.tools))
        // Parallel Vivado runs otherwise collide in ~/.Xilinx.
        .env("XILINX_LOCAL_USER_DATA", "no");
    let limits = Limits {
        timeout: env.tool_timeout,
        memory_mib: env.driver.memory_limit_mib,
    };
    let outcome = run_tree_limited(command, &stage_log, limits, cancel)
        .await
        .map_err(|e| {
            (
                fail(FailureClass::Infrastructure, e.to_string(), None),
                String::new(),
            )
        })?;
    // Keep the tool's own log across stages: append this run's to the kept one.
    let tool_log = project.join(log_name);
    let this_run = std::fs::read(&tool_log).unwrap_or_default();
    let kept = project.join(format!("{log_name}.all"));
    if let Ok(mut all) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&kept)
    {
        use std::io::Write;
        let _ = all.write_all(&this_run);
    }
    let mut digest_text = if this_run.is_empty() {
        std::fs::read(&stage_log).unwrap_or_default()
    } else {
        this_run
    };
    let mut tail_source = if tool_log.is_file() {
        tool_log
    } else {
        stage_log
    };
    if stage == Stage::Vsynth {
        // Vivado writes its own log; its errors (a licence, say) are the stage's.
        let vivado_log = project.join("vivado.log");
        if let Ok(text) = std::fs::read(&vivado_log) {
            digest_text.push(b'\n');
            digest_text.extend_from_slice(&text);
            tail_source = vivado_log;
        }
    }
    let digest = log::parse(&String::from_utf8_lossy(&digest_text));
    let tail = log_tail(&tail_source, 20);
    // The stage's peak: what the worker sampled, or what the tool printed if more.
    let peak = outcome
        .peak_memory_mib
        .max(digest.peak_memory_mib.unwrap_or(0));
    let with_peak = |(failure, log_tail): (Failure, String)| ToolFailure {
        failure,
        log_tail,
        peak_memory_mib: (peak > 0).then_some(peak),
        fix: digest.fix.clone(),
    };
    let status = match outcome.ending {
        Ending::Exited(status) => status,
        Ending::TimedOut => {
            return Err(with_peak((
                fail(
                    FailureClass::Timeout,
                    format!(
                        "stage {stage} ran past its limit of {} s",
                        env.tool_timeout.as_secs()
                    ),
                    Some(
                        "raise the tool stage timeout, or raise reuse_factor to shrink the design"
                            .into(),
                    ),
                ),
                tail,
            )));
        }
        Ending::Cancelled => {
            return Err(with_peak((
                fail(FailureClass::Infrastructure, "cancelled", None),
                tail,
            )));
        }
        Ending::MemoryLimit(limit) => {
            return Err(with_peak((
                fail(
                    FailureClass::Oom,
                    format!(
                        "{} passed the trial's memory limit of {limit} MiB in stage {stage} (peak {} MiB) and was killed",
                        tool.name, outcome.peak_memory_mib
                    ),
                    Some(
                        "give trials more memory (worker.trial_memory_mib / --trial-memory-mib, or fewer slots)"
                            .into(),
                    ),
                ),
                tail,
            )));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    if let Some(mut failure) = digest
        .failure
        .clone()
        .filter(|_| !digest.completed || !status.success())
    {
        // A tool that died of a signal says nothing of it in its log: name the signal.
        if let Some(signal) = status
            .signal()
            .filter(|&s| s != 9)
            .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        {
            failure.reason = format!(
                "{} died of {} in stage {stage}: {}",
                tool.name,
                signal.as_str(),
                failure.reason
            );
        }
        return Err(with_peak((failure, tail)));
    }
    if status.signal() == Some(9) {
        return Err(with_peak((
            fail(
                FailureClass::Oom,
                format!(
                    "{} was killed (SIGKILL), most likely by the OOM killer",
                    tool.name
                ),
                Some("give the trial more memory: fewer slots on this host".into()),
            ),
            tail,
        )));
    }
    if !status.success() || !digest.completed {
        return Err(with_peak((
            fail(
                FailureClass::ToolError,
                format!("{} exited with {status} in stage {stage}", tool.name),
                None,
            ),
            tail,
        )));
    }
    Ok(StageTiming {
        stage,
        seconds: outcome.elapsed.as_secs_f64(),
        peak_memory_mib: outcome.peak_memory_mib,
    })
}

/// The files kept from a project folder: (path in the project, name in the kept folder).
fn keep_list(backend: Backend) -> Vec<(String, String)> {
    let top = PROJECT_NAME;
    let log = hls_log_name(backend);
    let mut list: Vec<(String, String)> = [
        "project.tcl",
        "vivado_synth.rpt",
        "vivado_synth.tcl",
        "vivado.jou",
        "vivado.log",
        "hls4ml_config.yml",
    ]
    .iter()
    .map(|f| ((*f).to_owned(), (*f).to_owned()))
    .collect();
    list.push((format!("{log}.all"), log.to_owned()));
    for report in [
        format!("{top}_prj/solution1/syn/report/{top}_csynth.rpt"),
        format!("{top}_prj/solution1/syn/report/{top}_csynth.xml"),
        format!("{top}_prj/solution1/sim/report/{top}_cosim.rpt"),
    ] {
        let name = report.rsplit('/').next().unwrap_or_default().to_owned();
        list.push((report, name));
    }
    list
}

/// Below this much free space on the scratch disk, a failure is blamed on the disk.
const DISK_FULL_BYTES: u64 = 16 << 20;

/// A failure on a full scratch disk is the host's, not the trial's: it becomes
/// `infrastructure` (retried, elsewhere if this host stays full), whatever the tool made of
/// its `No space left on device`.
fn disk_full(failure: &mut TrialFailure, scratch: &Path) {
    if !matches!(
        failure.class,
        FailureClass::BadInput | FailureClass::ToolError | FailureClass::Oom
    ) {
        return;
    }
    let dir = scratch.ancestors().find(|d| d.exists()).unwrap_or(scratch);
    let free = crate::daemon::free_disk_bytes(dir).unwrap_or(u64::MAX);
    let says_so = failure.reason.contains("No space left on device")
        || failure.log_tail.contains("No space left on device");
    if free >= DISK_FULL_BYTES && !says_so {
        return;
    }
    failure.reason = format!(
        "the scratch disk is full ({} MiB free at {}): {}",
        free / (1 << 20),
        dir.display(),
        failure.reason
    );
    failure.class = FailureClass::Infrastructure;
    failure.suggestion = Some(
        "free space on the worker's scratch disk (worker.scratch); the trial is retried".into(),
    );
}

/// True for a regular file, not through a symbolic link: a link in a project (to
/// `/etc/shadow`, say) must not carry another file's bytes into the kept files and tarball.
fn is_regular_file(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            tracing::warn!(path = %path.display(), "not kept: a symbolic link");
            false
        }
        Ok(m) => m.is_file(),
        Err(_) => false,
    }
}

/// Copies the essential files into `output_dir` and returns their names (sorted).
fn keep_files(
    project: &Path,
    work_dir: &Path,
    backend: Backend,
    output_dir: &Path,
) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(output_dir)?;
    let mut kept = Vec::new();
    for (from, to) in keep_list(backend) {
        let source = project.join(&from);
        if is_regular_file(&source) {
            std::fs::copy(&source, output_dir.join(&to))?;
            kept.push(to);
        }
    }
    let driver_log = work_dir.join(driver::LOG_FILE);
    if is_regular_file(&driver_log) {
        std::fs::copy(&driver_log, output_dir.join(driver::LOG_FILE))?;
        kept.push(driver::LOG_FILE.to_owned());
    }
    kept.sort();
    Ok(kept)
}

/// Writes `tarball` holding `output_dir`'s files under the folder's name.
fn write_tarball(output_dir: &Path, files: &[String], tarball: &Path) -> std::io::Result<()> {
    let folder = output_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "trial".to_owned());
    let tmp = tarball.with_extension("tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    for name in files {
        builder.append_path_with_name(output_dir.join(name), format!("{folder}/{name}"))?;
    }
    builder.into_inner()?.finish()?;
    std::fs::rename(tmp, tarball)
}

fn dir_bytes(dir: &Path, files: &[String]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
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
        work_dir: &spec.scratch,
        project_name: PROJECT_NAME,
    };
    on_stage(Stage::Convert);
    match driver::convert(&env.driver, &job, cancel).await {
        Ok(converted) => {
            hls4ml_version = converted.hls4ml_version.clone();
            let t = |k: &str| converted.timings.get(k).copied().unwrap_or(0.0);
            let emulate_seconds = t("compile") + t("predict") + t("trace");
            timings.push(StageTiming {
                stage: Stage::Convert,
                seconds: converted.seconds - emulate_seconds,
                peak_memory_mib: converted.peak_memory_mib,
            });
            if emulate {
                timings.push(StageTiming {
                    stage: Stage::Emulate,
                    seconds: emulate_seconds,
                    peak_memory_mib: converted.peak_memory_mib,
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
    for stage in stages.iter().copied().filter(|s| s.needs_xilinx_tools()) {
        if failure.is_some() || cancel.is_cancelled() {
            break;
        }
        if let Some((tool, _)) = tool_command(spec.settings.backend, &env.tools) {
            tool_used = Some(ToolVersion {
                name: tool.name.clone(),
                version: tool.version.clone(),
            });
        }
        on_stage(stage);
        match run_tool_stage(env, spec.settings.backend, stage, &project, cancel).await {
            Ok(timing) => timings.push(timing),
            Err(ToolFailure {
                failure: f,
                log_tail,
                peak_memory_mib,
                fix,
            }) => {
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
    }

    // A deterministic failure the tools or preflight know the fix of: the fix, for a sweep
    // that applies it (`on_failure = "apply-fix"`).
    if let Some(f) = failure
        .as_mut()
        .filter(|f| matches!(f.class, FailureClass::ToolError | FailureClass::BadInput))
    {
        let mut fix = f.fix.take().unwrap_or_default();
        for finding in preflight.iter().filter(|p| p.is_error()) {
            for (k, v) in finding.fix.iter().flatten() {
                hlsfarm_common::settings::merge_fix(
                    fix.entry(k.clone()).or_insert(serde_json::Value::Null),
                    v,
                );
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
    if let Ok(bytes) = serde_json::to_vec_pretty(&result) {
        let _ = std::fs::create_dir_all(&spec.output_dir);
        let _ = std::fs::write(spec.output_dir.join("result.json"), bytes);
    }
    result
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
