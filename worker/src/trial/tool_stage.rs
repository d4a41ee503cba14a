//! One tool stage as hls4ml 1.3 runs it: `build_opt.tcl` with the chosen steps, the tool on
//! `build_prj.tcl` as its own process group under the trial's time and memory limits, its log
//! kept across stages and read for the failure class, fix and peak memory.

use std::path::{Path, PathBuf};

use hlsfarm_common::failure::{Failure, FailureClass};
use hlsfarm_common::report::log;
use hlsfarm_common::results::StageTiming;
use hlsfarm_common::settings::Backend;
use hlsfarm_common::stage::Stage;
use tokio_util::sync::CancellationToken;

use crate::driver::log_tail;
use crate::process::{Ending, Limits, run_tree_limited};
use crate::tools::DetectedTool;

use super::{TrialEnv, tool_command};

/// `PATH` for the tools: the folders of the tools found first, so that `build_prj.tcl`'s
/// `exec vivado` finds the same Vivado the worker detected.
pub(super) fn tool_path(tools: &[DetectedTool]) -> std::ffi::OsString {
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

/// The log file the HLS tool writes in the project folder.
pub(super) fn hls_log_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Vitis => "vitis_hls.log",
        Backend::Vivado => "vivado_hls.log",
    }
}

/// The `build_prj.tcl` steps for one stage. Co-simulation needs C simulation's results to
/// validate against, so it runs csim and validation too.
pub(super) fn steps(stage: Stage) -> [(&'static str, u8); 7] {
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

pub(super) fn build_opt_tcl(stage: Stage) -> String {
    let mut text = String::from("array set opt {\n    reset      0\n");
    for (name, value) in steps(stage) {
        text.push_str(&format!("    {name:<10} {value}\n"));
    }
    text.push_str("}\n");
    text
}

pub(super) fn fail(
    class: FailureClass,
    reason: impl Into<String>,
    suggestion: Option<String>,
) -> Failure {
    Failure {
        class,
        reason: reason.into(),
        suggestion,
    }
}

/// A tool stage's failure: what went wrong, the end of its log and its peak memory (MiB).
pub(super) struct ToolFailure {
    pub(super) failure: Failure,
    pub(super) log_tail: String,
    pub(super) peak_memory_mib: Option<u64>,
    /// Settings that get past it, where the log says (the partition size it needs).
    pub(super) fix: Option<std::collections::BTreeMap<String, serde_json::Value>>,
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
pub(super) async fn run_tool_stage(
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
