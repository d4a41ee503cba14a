//! One tool stage as hls4ml 1.3 runs it: `build_opt.tcl` with the chosen steps, the tool on
//! `build_prj.tcl` as its own process group under the trial's time and memory limits, its log
//! kept across stages and read for the failure class, fix and peak memory.

use std::path::{Path, PathBuf};

use hlsfarm_common::estimate::StageLimit;
use hlsfarm_common::failure::{Failure, FailureClass};
use hlsfarm_common::report::log;
use hlsfarm_common::results::StageTiming;
use hlsfarm_common::settings::Backend;
use hlsfarm_common::stage::Stage;
use tokio_util::sync::CancellationToken;

use crate::driver::log_tail;
use crate::process::{Ending, Limits, run_tree_watched};
use crate::tools::DetectedTool;

use super::clock::{StageClock, StageLimits};
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

/// The `build_prj.tcl` steps for these stages. Co-simulation needs C simulation's results to
/// validate against, so it runs csim and validation too.
pub(super) fn steps(stages: &[Stage]) -> [(&'static str, u8); 7] {
    let on = |stage: Stage| u8::from(stages.contains(&stage));
    [
        ("csim", on(Stage::Cosim)),
        ("synth", on(Stage::Csynth)),
        ("cosim", on(Stage::Cosim)),
        ("validation", on(Stage::Cosim)),
        ("export", on(Stage::Export)),
        ("vsynth", on(Stage::Vsynth)),
        ("fifo_opt", 0),
    ]
}

pub(super) fn build_opt_tcl(stages: &[Stage]) -> String {
    let mut text = String::from("array set opt {\n    reset      0\n");
    for (name, value) in steps(stages) {
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

/// What a run of the tool stages gave: the timings of the stages that finished, and the
/// stage that failed with its failure.
pub(super) struct ToolRun {
    pub(super) timings: Vec<StageTiming>,
    pub(super) failed: Option<(Stage, ToolFailure)>,
}

/// Runs the tool stages `stages` (in [`Stage`] order) in `project` in one tool invocation, as
/// hls4ml's `build()` does: the tool starts once, not once per stage (seconds each with the
/// real tools). `on_stage` hears each stage as the tool's output shows it starting (C
/// simulation, which co-simulation validates against, runs before C synthesis and counts as
/// co-simulation), and each stage is held to the tool stage time limit on its own. The tool's
/// log is appended to `project/<hls log>.all` (the tools overwrite theirs on every run), so the
/// kept log covers retries too.
pub(super) async fn run_tool_stages(
    env: &TrialEnv,
    backend: Backend,
    stages: &[Stage],
    project: &Path,
    cancel: &CancellationToken,
    on_stage: &(dyn Fn(Stage) + Send + Sync),
    learned: &[StageLimit],
) -> ToolRun {
    let mut stages: Vec<Stage> = stages.to_vec();
    // Without Vivado the stages before vsynth still run; vsynth then fails with the fix.
    let no_vivado =
        stages.contains(&Stage::Vsynth) && !env.tools.iter().any(|t| t.name == "vivado");
    if no_vivado {
        stages.retain(|&s| s != Stage::Vsynth);
    }
    let mut run = if stages.is_empty() {
        ToolRun {
            timings: Vec::new(),
            failed: None,
        }
    } else {
        match one_tool_run(env, backend, &stages, project, cancel, on_stage, learned).await {
            Ok(timings) => ToolRun {
                timings,
                failed: None,
            },
            Err((timings, stage, failure)) => ToolRun {
                timings,
                failed: Some((stage, failure)),
            },
        }
    };
    if no_vivado && run.failed.is_none() && !cancel.is_cancelled() {
        on_stage(Stage::Vsynth);
        run.failed = Some((
            Stage::Vsynth,
            (
                fail(
                    FailureClass::BadInput,
                    "stage vsynth needs vivado on PATH, and this host has none",
                    Some(
                        "install Vivado (or source its settings64.sh), or leave out vsynth".into(),
                    ),
                ),
                String::new(),
            )
                .into(),
        ));
    }
    run
}

type StagesFailure = (Vec<StageTiming>, Stage, ToolFailure);

async fn one_tool_run(
    env: &TrialEnv,
    backend: Backend,
    stages: &[Stage],
    project: &Path,
    cancel: &CancellationToken,
    on_stage: &(dyn Fn(Stage) + Send + Sync),
    learned: &[StageLimit],
) -> Result<Vec<StageTiming>, StagesFailure> {
    // The step build_prj.tcl runs first: C simulation when co-simulation is asked for.
    let first = if stages.contains(&Stage::Cosim) {
        Stage::Cosim
    } else {
        stages[0]
    };
    let early = |failure: ToolFailure| (Vec::new(), first, failure);
    let no_tool = || {
        let wanted = match backend {
            Backend::Vitis => "vitis-run or vitis_hls",
            Backend::Vivado => "vivado_hls",
        };
        let stage = stages[0];
        (
            Vec::new(),
            stage,
            ToolFailure::from((
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
            )),
        )
    };
    let (tool, mut args) = tool_command(backend, &env.tools).ok_or_else(no_tool)?;
    let infra = |what: String| {
        early(
            (
                fail(FailureClass::Infrastructure, what, None),
                String::new(),
            )
                .into(),
        )
    };
    std::fs::write(project.join("build_opt.tcl"), build_opt_tcl(stages))
        .map_err(|e| infra(format!("cannot write build_opt.tcl: {e}")))?;
    if backend == Backend::Vivado {
        // Vivado HLS's build_prj.tcl takes its steps as arguments.
        let steps: Vec<String> = steps(stages)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        args.push(format!("reset=0 {}", steps.join(" ")));
    }
    let log_name = hls_log_name(backend);
    let output = project.join("build.tool.log");
    let _ = std::fs::remove_file(&output);
    let mut command = tokio::process::Command::new(&tool.path);
    command
        .args(&args)
        .current_dir(project)
        .envs(env.tool_env.iter().map(|(k, v)| (k, v)))
        .env("PATH", tool_path(&env.tools))
        // Parallel Vivado runs otherwise collide in ~/.Xilinx.
        .env("XILINX_LOCAL_USER_DATA", "no");
    // Each stage is held to its limit by the clock; the whole run to all of them.
    let stage_limits = StageLimits::new(env.tool_timeout, learned);
    let limits = Limits {
        timeout: stages
            .iter()
            .map(|s| stage_limits.of(*s))
            .fold(std::time::Duration::ZERO, |a, b| a.saturating_add(b)),
        memory_mib: env.driver.memory_limit_mib,
    };
    on_stage(first);
    let mut clock = StageClock::new(output.clone(), first, stage_limits);
    let outcome = run_tree_watched(command, &output, limits, cancel, &mut |sample| {
        clock.tick(sample, on_stage)
    })
    .await
    .map_err(|e| infra(e.to_string()))?;
    let stage = clock.current;
    // The stages before the one the run ended in, in stage order, finished.
    let finished = |upto: Option<Stage>| -> Vec<StageTiming> {
        stages
            .iter()
            .filter(|&&s| upto.is_none_or(|u| s < u))
            .map(|&s| clock.timing(s))
            .collect()
    };
    // Keep the tool's own log across runs: append this run's to the kept one.
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
        std::fs::read(&output).unwrap_or_default()
    } else {
        this_run
    };
    let mut tail_source = if tool_log.is_file() {
        tool_log
    } else {
        output.clone()
    };
    if stages.contains(&Stage::Vsynth) {
        // Vivado writes its own log; its errors (a licence, say) are vsynth's.
        let vivado_log = project.join("vivado.log");
        if let Ok(text) = std::fs::read(&vivado_log) {
            digest_text.push(b'\n');
            digest_text.extend_from_slice(&text);
            if stage == Stage::Vsynth {
                tail_source = vivado_log;
            }
        }
    }
    let digest = log::parse(&String::from_utf8_lossy(&digest_text));
    let tail = log_tail(&tail_source, 20);
    // The stage's peak: what the worker sampled, or what the tool printed if more.
    let peak = clock
        .timing(stage)
        .peak_memory_mib
        .max(digest.peak_memory_mib.unwrap_or(0));
    let failed = |(failure, log_tail): (Failure, String)| {
        (
            finished(Some(stage)),
            stage,
            ToolFailure {
                failure,
                log_tail,
                peak_memory_mib: (peak > 0).then_some(peak),
                fix: digest.fix.clone(),
            },
        )
    };
    let status = match outcome.ending {
        Ending::Exited(status) => status,
        Ending::TimedOut => {
            let (reason, fix) = clock.limits.timeout(stage);
            return Err(failed((
                fail(FailureClass::Timeout, reason, Some(fix)),
                tail,
            )));
        }
        Ending::Cancelled => {
            return Err(failed((
                fail(FailureClass::Infrastructure, "cancelled", None),
                tail,
            )));
        }
        Ending::MemoryLimit(limit) => {
            return Err(failed((
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
        return Err(failed((failure, tail)));
    }
    if status.signal() == Some(9) {
        return Err(failed((
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
        return Err(failed((
            fail(
                FailureClass::ToolError,
                format!("{} exited with {status} in stage {stage}", tool.name),
                None,
            ),
            tail,
        )));
    }
    Ok(finished(None))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_steps_of_several_stages_are_one_build_opt() {
        let text = build_opt_tcl(&[Stage::Csynth, Stage::Export]);
        assert!(text.contains("synth      1"), "{text}");
        assert!(text.contains("export     1"), "{text}");
        assert!(text.contains("cosim      0"), "{text}");
        assert!(text.contains("csim       0"), "{text}");
        let text = build_opt_tcl(&[Stage::Cosim]);
        for step in [
            "csim       1",
            "cosim      1",
            "validation 1",
            "synth      0",
        ] {
            assert!(text.contains(step), "{text}");
        }
    }
}
