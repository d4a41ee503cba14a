//! `hlsfarm run`: the one-host run, successor of `parallel_hls_synthesis.py`.
//!
//! The same pieces as the cluster: the sweep is expanded into trials with their keys, the
//! trials go through the embedded queue (longest first), and N in-process slots lease them and
//! run each with the worker's trial runner. Output keeps the original layout:
//! `OUTPUT_DIR/hls_<model stem>[_<settings>]/` with the kept files and `result.json`,
//! `hls_<...>.tar.gz` beside it, and `synthesis_results.json` plus `results.csv` at the top.
//! A trial whose folder already holds a successful `result.json` with the same trial key is
//! reused, so running again after an interruption resumes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_common::aggregate::{SeedEntry, SeedSummary};
use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::job::TrialState;
use hlsfarm_common::queue::embedded::EmbeddedQueue;
use hlsfarm_common::queue::{NewTrial, Outcome, Queue, QueueConfig, SweepMeta};
use hlsfarm_common::results::{ModelRef, TrialResult, TrialStatus};
use hlsfarm_common::settings::Settings;
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::{ModelDigest, ToolVersion, Toolchain, TrialKeyInput};
use hlsfarm_worker::driver::DriverEnv;
use hlsfarm_worker::tools::detect_tools;
use hlsfarm_worker::trial::{TrialEnv, TrialSpec, run_trial, tool_command};
use tokio_util::sync::CancellationToken;

mod memory;
mod planned;

use crate::sweep_args::{SweepArgs, file_sha256, model_files, sweep_spec};
use memory::MemoryBudget;
use planned::{Planned, finished_result, line_for, suffix};

/// Flags of `hlsfarm run`. The original script's spellings (`--input_dir`, `--num_workers`,
/// ...) are accepted too.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Which models, settings and stages.
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Where results go [default: INPUT_DIR/hls_outputs].
    #[arg(long = "output-dir", alias = "output_dir", value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Trials run at once.
    #[arg(long = "num-workers", alias = "num_workers", default_value_t = 4)]
    pub num_workers: usize,
    /// Do not write a tarball per trial.
    #[arg(long = "no-tarball", alias = "no_tarball")]
    pub no_tarball: bool,
    /// Python of the hls4ml venv [default: $HLSFARM_PYTHON, else the venv `make setup` made].
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Time limit of convert + emulate, seconds.
    #[arg(long = "convert-timeout", default_value_t = 3600)]
    pub convert_timeout: u64,
    /// Time limit of each tool stage, seconds.
    #[arg(long = "stage-timeout", default_value_t = 24 * 3600)]
    pub stage_timeout: u64,
    /// Keep each trial's scratch project after it succeeds (it is always kept on failure).
    #[arg(long = "keep-scratch")]
    pub keep_scratch: bool,
    /// Memory limit of one trial's processes (hls4ml's Python and g++, the Xilinx tools), MiB:
    /// past it they are killed and the trial fails as `oom` with its peak [default: the
    /// machine's memory / --num-workers].
    #[arg(long = "trial-memory-mib", value_name = "MIB")]
    pub trial_memory_mib: Option<u64>,
    /// Emulation: the largest difference on an output, as a share of its scale (1 for
    /// probabilities, the float values' range otherwise), before a trial gets a fidelity
    /// warning and the layer where it departs is traced.
    #[arg(long = "fidelity-max-error", default_value_t = 0.1)]
    pub fidelity_max_error: f64,
    /// Emulation: the smallest agreement of a binary (same side of 0.5) or multiclass (same
    /// argmax) output before a fidelity warning.
    #[arg(long = "fidelity-min-agreement", default_value_t = 0.9)]
    pub fidelity_min_agreement: f64,
    /// Refuse a trial (as `bad_input`, before any tool stage) when preflight predicts that the
    /// tools will refuse it, e.g. an array partitioned above max_array_partition_size; without
    /// it the finding is reported and the tools run.
    #[arg(long)]
    pub strict: bool,
    /// Before anything runs, preflight every trial; one the tools would refuse with a known
    /// fix (an array partitioned above max_array_partition_size: the size it needs; for
    /// Vivado HLS, a layer unrolling more than 4,096 multiplications: its reuse factor) runs
    /// as a derived
    /// trial with the fix applied: its own key, its folder ending in `_fixed`, the original
    /// named in result.json `derived_from`.
    #[arg(long)]
    pub fix: bool,
}

/// The one sweep of a one-host run, as the embedded queue knows it.
fn one_host_sweep() -> SweepMeta {
    SweepMeta {
        id: ONE_HOST_SWEEP.to_owned(),
        priority: 1,
        force: false,
    }
}

/// Its id.
const ONE_HOST_SWEEP: &str = "one-host";

/// Runs the sweep on this host; returns the exit code (0: all succeeded, 1: some failed,
/// 130: interrupted).
pub async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let (spec, base) = sweep_spec(&args.sweep)?;
    // Absolute paths: each trial's tools run in their own scratch folder.
    let models = spec
        .models
        .resolve(&base)?
        .into_iter()
        .map(|p| {
            p.canonicalize()
                .with_context(|| format!("cannot resolve {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<PathBuf>>>()?;
    let input_dir = spec.models.dir.as_ref().map(|d| base.join(d));
    let output_dir = match (&args.output_dir, &input_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.join("hls_outputs"),
        (None, None) => base.join("hls_outputs"),
    };
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("cannot create the output folder {}", output_dir.display()))?;
    let output_dir = output_dir.canonicalize()?;

    let python =
        hlsfarm_worker::venv::find_python(args.python.as_deref()).map_err(anyhow::Error::msg)?;
    let hls4ml = hlsfarm_worker::venv::probe(&python)
        .map_err(anyhow::Error::msg)?
        .hls4ml_version;
    let (tools, tool_errors) = detect_tools(
        &std::env::var_os("PATH").unwrap_or_default(),
        Duration::from_secs(60),
    )
    .await;
    for error in &tool_errors {
        eprintln!("hlsfarm: warning: {error}");
    }
    let points = spec.grid.expand();
    let hls_for_all = points
        .iter()
        .all(|p| tool_command(p.backend, &tools).is_some());
    let vivado = tools.iter().any(|t| t.name == "vivado");
    let stages = if !spec.stages.is_empty() {
        spec.normalized_stages()
    } else {
        if hls_for_all && !vivado {
            eprintln!(
                "hlsfarm: vivado not found on PATH: vsynth skipped; source Vivado's settings64.sh, or pass --stages, to run it"
            );
        } else if !hls_for_all {
            eprintln!(
                "hlsfarm: Vitis HLS / Vivado not found on PATH: running convert and emulate only (csynth, cosim, export, vsynth skipped); source the Xilinx settings64.sh, or pass --stages, to run them"
            );
        }
        Stage::defaults(hls_for_all, vivado)
    };

    // Plan every trial: key, folders, reuse.
    let mut planned: Vec<Planned> = Vec::new();
    let scratch_root = output_dir.join(".hlsfarm/scratch");
    let fixes = if args.fix {
        let files = models
            .iter()
            .map(|m| model_files(m, &args.sweep).map(|(f, _)| f))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fixes = crate::check_cmd::preflight_fixes(
            &files,
            &points,
            &python,
            &scratch_root.join("preflight"),
        )
        .await?;
        eprintln!(
            "hlsfarm: preflight of {} trials: {} derived with a fix (--fix)",
            models.len() * points.len(),
            fixes.len()
        );
        fixes
    } else {
        HashMap::new()
    };
    for (model_index, model) in models.iter().enumerate() {
        let (files, found) = model_files(model, &args.sweep)?;
        let sha = file_sha256(model)?;
        let mut companions = std::collections::BTreeMap::new();
        for (role, path) in &found {
            companions.insert(role.clone(), file_sha256(path)?);
        }
        let digest = ModelDigest {
            sha256: sha.clone(),
            companions,
        };
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned());
        for (point_index, original) in points.iter().enumerate() {
            let toolchain_of = |point: &Settings| Toolchain {
                hls4ml_version: hls4ml.clone(),
                tool: tool_command(point.backend, &tools).map(|(t, _)| ToolVersion {
                    name: t.name.clone(),
                    version: t.version.clone(),
                }),
            };
            let key_of = |point: &Settings| {
                let toolchain = toolchain_of(point);
                TrialKeyInput {
                    model: &digest,
                    settings: point,
                    stages: &stages,
                    emulation: &spec.emulation,
                    toolchain: &toolchain,
                }
                .key()
                .to_hex()
            };
            let (point, derived_from) = match fixes.get(&(model_index, point_index)) {
                Some((fixed, fix, findings)) => (
                    fixed,
                    Some(hlsfarm_common::results::DerivedFrom {
                        trial_key: key_of(original),
                        settings: original.clone(),
                        fix: fix.clone(),
                        findings: findings.clone(),
                    }),
                ),
                None => (original, None),
            };
            let key = key_of(point);
            let name = format!(
                "hls_{stem}{}{}",
                suffix(original, &points),
                if derived_from.is_some() { "_fixed" } else { "" }
            );
            let trial_out = output_dir.join(&name);
            let reused = !spec.force && finished_result(&trial_out, &key).is_some();
            planned.push(Planned {
                key: key.clone(),
                model_path: model.clone(),
                reused,
                spec: TrialSpec {
                    trial_key: key.clone(),
                    model: ModelRef {
                        name: model
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        sha256: sha.clone(),
                    },
                    files: files.clone(),
                    settings: point.clone(),
                    stages: stages.clone(),
                    emulation: spec.emulation.clone(),
                    inputs: found.get("inputs").cloned(),
                    scratch: scratch_root.join(&key[..16]),
                    tarball: output_dir.join(format!("{name}.tar.gz")),
                    output_dir: trial_out,
                    derived_from,
                },
                digest: digest.clone(),
                toolchain: toolchain_of(point),
            });
        }
    }
    let reused = planned.iter().filter(|p| p.reused).count();
    let to_run: Vec<&Planned> = planned.iter().filter(|p| !p.reused).collect();
    eprintln!(
        "hlsfarm: {} models x {} settings = {} trials ({} already done, {} to run) with {} slots; stages {}; output {}",
        models.len(),
        points.len(),
        planned.len(),
        reused,
        to_run.len(),
        args.num_workers.max(1),
        stages
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(","),
        output_dir.display()
    );

    // Queue the trials to run: longest first, by the cluster's cost estimate.
    let queue_config = QueueConfig {
        // One process holds every lease: nothing can lose one but the process itself.
        lease: Duration::from_secs(30 * 24 * 3600),
        max_attempts: 3,
        retry_backoff: Duration::ZERO,
        // A licence seat refused is waited for, but a user at the terminal should not wait
        // an hour for a licence that is not there: 20, 40, 80 s, then it counts.
        max_refusals: 3,
        refusal_backoff: Duration::from_secs(20),
        ..QueueConfig::default()
    };
    let queue = Arc::new(EmbeddedQueue::new(queue_config));
    let sweep_id = ONE_HOST_SWEEP.to_owned();
    let new: Vec<NewTrial> = to_run.iter().map(|p| p.queued()).collect();
    queue.submit(one_host_sweep(), new).await?;

    let cancel = CancellationToken::new();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!(
                    "\nhlsfarm: interrupted: stopping the running tools; run the same command again to resume"
                );
                cancel.cancel();
            }
        });
    }
    // Memory: each trial reserves its limit from the host's; a trial that ran out of memory
    // is retried with a reservation above its peak, so fewer run beside it.
    let host_mib = hlsfarm_worker::host::meminfo_mib("MemTotal:").unwrap_or(8192);
    let slots_n = args.num_workers.max(1) as u64;
    let trial_limit = args
        .trial_memory_mib
        .unwrap_or_else(|| (host_mib / slots_n).max(1024));
    let memory = Arc::new(MemoryBudget::new(host_mib.max(trial_limit * slots_n)));
    let env = Arc::new(TrialEnv {
        driver: DriverEnv {
            python,
            by_format: hlsfarm_worker::venv::format_pythons(),
            timeout: Duration::from_secs(args.convert_timeout),
            memory_limit_mib: Some(trial_limit),
            tolerance: hlsfarm_worker::driver::Tolerance {
                max_error: args.fidelity_max_error,
                min_agreement: args.fidelity_min_agreement,
            },
            strict: args.strict,
        },
        tools,
        tool_timeout: Duration::from_secs(args.stage_timeout),
        make_tarball: !args.no_tarball,
        tool_env: Vec::new(),
    });
    let by_key: Arc<std::sync::Mutex<HashMap<String, Planned>>> = Arc::new(std::sync::Mutex::new(
        planned
            .iter()
            .filter(|p| !p.reused)
            .map(|p| (p.key.clone(), p.clone()))
            .collect(),
    ));
    let apply_fix = spec.on_failure == hlsfarm_common::sweep::OnFailure::ApplyFix;
    let derived: Arc<std::sync::Mutex<Vec<Planned>>> = Default::default();
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(to_run.len()));
    let progress = Arc::new(crate::progress::Progress::new(to_run.len() as u64));
    let tally = Arc::new(std::sync::Mutex::new((0usize, 0usize)));
    let started = Instant::now();
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..args.num_workers.max(1) {
        let queue = queue.clone();
        let env = env.clone();
        let by_key = by_key.clone();
        let cancel = cancel.clone();
        let progress = progress.clone();
        let tally = tally.clone();
        let sweep_id = sweep_id.clone();
        let keep_scratch = args.keep_scratch;
        let memory = memory.clone();
        let derived = derived.clone();
        let total = total.clone();
        slots.spawn(async move {
            let worker = format!("slot-{slot}");
            loop {
                if cancel.is_cancelled() {
                    return Ok::<(), anyhow::Error>(());
                }
                let Some(lease) = queue.lease(&worker, 1).await?.pop() else {
                    if queue.counts(&sweep_id).await?.unfinished() == 0 {
                        return Ok(());
                    }
                    // Another slot's trial may still come back for a retry.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Some(plan) = by_key
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&lease.key)
                    .cloned()
                else {
                    bail!("leased an unknown trial {}", lease.key);
                };
                let name = plan
                    .spec
                    .output_dir
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let limit = memory.reservation(&lease.key, trial_limit);
                let Some(_reserved) = memory.reserve(limit, &cancel).await else {
                    let _ = queue.hand_back(&lease.key, lease.fence).await;
                    return Ok(());
                };
                let line = progress.start(&name, lease.fence.attempt);
                let trial_env = if limit == trial_limit {
                    env.clone()
                } else {
                    let mut raised = TrialEnv::clone(&env);
                    raised.driver.memory_limit_mib = Some(limit);
                    Arc::new(raised)
                };
                let mut result = run_trial(&trial_env, &plan.spec, &cancel, &|stage| {
                    progress.stage(&line, stage)
                })
                .await;
                let outcome = match result.status {
                    TrialStatus::Success => Outcome::Succeeded,
                    TrialStatus::Cancelled => Outcome::Cancelled,
                    TrialStatus::Failed => {
                        memory.outcome(&lease.key, &mut result, &plan.spec.output_dir)
                    }
                };
                if outcome == Outcome::Cancelled {
                    // Nothing to record: the trial runs again next time.
                    let _ = queue.hand_back(&lease.key, lease.fence).await;
                    return Ok(());
                }
                // on_failure = "apply-fix": the fixed trial is queued before this one's
                // failure is recorded, so the run never looks finished between.
                if apply_fix
                    && outcome == (Outcome::Failed { retryable: false })
                    && plan.spec.derived_from.is_none()
                    && let Some(f) = &result.failure
                    && let Some(fix) = &f.fix
                {
                    match plan.derive(fix, &f.reason) {
                        Ok(fixed) => {
                            progress.println(&format!(
                                "hlsfarm: {name}: deriving {} with {} (--on-failure apply-fix)",
                                fixed
                                    .spec
                                    .output_dir
                                    .file_name()
                                    .unwrap_or_default()
                                    .to_string_lossy(),
                                serde_json::to_string(fix).unwrap_or_default()
                            ));
                            queue.submit(one_host_sweep(), vec![fixed.queued()]).await?;
                            by_key
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(fixed.key.clone(), fixed.clone());
                            derived
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(fixed);
                            progress.grow(1);
                            total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        Err(e) => progress
                            .println(&format!("hlsfarm: {name}: its fix does not apply: {e}")),
                    }
                }
                let state = queue.complete(&lease.key, lease.fence, outcome).await?;
                if state == TrialState::Queued {
                    let raised = memory.raised_to(&lease.key).filter(|r| *r > limit);
                    let text = match (outcome, raised) {
                        (Outcome::Refused, _) => format!(
                            "hlsfarm: {name}: the licence server refused a seat; queued again without spending an attempt (waits at most {} s): {}",
                            queue_config.refusal_wait(queue_config.max_refusals).as_secs(),
                            line_for(&result)
                        ),
                        (_, Some(r)) => format!(
                            "hlsfarm: retry {name} with {r} MiB reserved: {}",
                            line_for(&result)
                        ),
                        _ => format!("hlsfarm: retry {name}: {}", line_for(&result)),
                    };
                    progress.finish(line, &text, "");
                    continue;
                }
                if result.status == TrialStatus::Success && !keep_scratch {
                    let _ = std::fs::remove_dir_all(&plan.spec.scratch);
                }
                let (n, counts) = {
                    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                    if result.status == TrialStatus::Success {
                        t.0 += 1;
                    } else {
                        t.1 += 1;
                    }
                    (t.0 + t.1, format!("{} succeeded, {} failed", t.0, t.1))
                };
                progress.finish(
                    line,
                    &format!(
                        "hlsfarm: [{n}/{}] {name}: {}",
                        total.load(std::sync::atomic::Ordering::SeqCst),
                        line_for(&result)
                    ),
                    &counts,
                );
            }
        });
    }
    while let Some(joined) = slots.join_next().await {
        joined.context("a trial slot panicked")??;
    }
    progress.done();
    planned.extend(std::mem::take(
        &mut *derived.lock().unwrap_or_else(|p| p.into_inner()),
    ));

    // The sweep's outputs, from every trial's result.json (run now or reused).
    let mut entries = Vec::new();
    let mut not_run = 0;
    for plan in &planned {
        let path = plan.spec.output_dir.join("result.json");
        let result: Option<TrialResult> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|r: &TrialResult| r.trial_key == plan.key);
        match result {
            Some(result) => entries.push(SeedEntry::new(
                &plan.model_path,
                &plan.spec.output_dir,
                result,
                plan.reused,
            )),
            None => not_run += 1,
        }
    }
    let summary = SeedSummary::new(entries);
    let (files, plot_warning) =
        crate::pareto::sweep_outputs(&summary).context("cannot make the sweep's results")?;
    for (name, bytes) in files {
        let path = output_dir.join(name);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(warning) = plot_warning {
        eprintln!("hlsfarm: warning: {warning}");
    }
    let failed_classes: Vec<String> = summary
        .results
        .iter()
        .filter_map(|e| e.result.failure.as_ref().map(|f| f.class))
        .map(|c: FailureClass| c.to_string())
        .collect();
    eprintln!(
        "hlsfarm: {} trials: {} succeeded, {} failed{}{} ({} reused) in {:.1} s; results in {}",
        planned.len(),
        summary.successful,
        summary.failed,
        if failed_classes.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed_classes.join(", "))
        },
        if not_run > 0 {
            format!(", {not_run} not run")
        } else {
            String::new()
        },
        reused,
        started.elapsed().as_secs_f64(),
        output_dir.join("synthesis_results.json").display()
    );
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(130);
    }
    Ok(if summary.failed == 0 && not_run == 0 {
        0
    } else {
        1
    })
}
