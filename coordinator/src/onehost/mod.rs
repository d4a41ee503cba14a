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
use hlsfarm_common::queue::{QueueConfig, SweepMeta};
use hlsfarm_common::stage::Stage;
use hlsfarm_worker::driver::DriverEnv;
use hlsfarm_worker::tools::detect_tools;
use hlsfarm_worker::trial::{TrialEnv, tool_command};
use tokio_util::sync::CancellationToken;

mod follow;
mod funnel;
mod history;
mod memory;
mod planned;
mod planner;
mod runner;

use crate::cli::sweep_args::{SearchSource, SweepArgs, model_files, sweep_spec, validation_path};
use funnel::Funnel;
use memory::MemoryBudget;
use planner::{Planner, finished_or_failed};
use runner::Runner;

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
    /// Time limits learned from this output folder's history: on a trial's first attempt, a
    /// tool stage the estimates have learned is stopped past this multiple of its
    /// 99.9th-percentile duration (at least 30 minutes, at most --stage-timeout); its retry
    /// runs under --stage-timeout. 0 turns them off.
    #[arg(long = "learned-limit-multiple", default_value_t = hlsfarm_common::estimate::LIMIT_MULTIPLE, value_name = "X")]
    pub learned_limit_multiple: f64,
    /// Keep each trial's scratch project after it succeeds (it is always kept on failure).
    #[arg(long = "keep-scratch")]
    pub keep_scratch: bool,
    /// Start a fresh Python for every trial instead of running trials through warm
    /// interpreters (one per model family, its frameworks imported once, a fork per trial).
    #[arg(long = "no-warm-python")]
    pub no_warm_python: bool,
    /// Run a trial's tool stages after its emulation, never beside it. By default they start
    /// as soon as the project is written, beside the emulation, when the machine has two
    /// cores per --num-workers (each process keeps its own time and memory limit).
    #[arg(long = "no-emulate-beside-synthesis")]
    pub no_emulate_beside_synthesis: bool,
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
    /// Keep watching the model folder and take each new model that matches the pattern
    /// once its file is complete (its size unchanged for 2 s), so synthesis overlaps the
    /// search writing them; ends when trials_summary.json appears, after --follow-count
    /// models, or on Ctrl-C, and a selection gate applies to what arrived.
    #[arg(long)]
    pub follow: bool,
    /// With --follow: stop following after this many models.
    #[arg(long = "follow-count", value_name = "N", requires = "follow")]
    pub follow_count: Option<usize>,
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
    let input_dir = spec.models.dir.as_ref().map(|d| base.join(d));
    if args.follow && input_dir.is_none() {
        bail!(
            "--follow watches a model folder: give --input-dir (or models.dir in the sweep file)"
        );
    }
    // Absolute paths: each trial's tools run in their own scratch folder.
    let models = if args.follow {
        Vec::new()
    } else {
        spec.models
            .resolve(&base)?
            .into_iter()
            .map(|p| {
                p.canonicalize()
                    .with_context(|| format!("cannot resolve {}", p.display()))
            })
            .collect::<anyhow::Result<Vec<PathBuf>>>()?
    };
    let output_dir = match (&args.output_dir, &input_dir) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dir)) => dir.join("hls_outputs"),
        (None, None) => base.join("hls_outputs"),
    };
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("cannot create the output folder {}", output_dir.display()))?;
    let output_dir = output_dir.canonicalize()?;
    let validation = validation_path(&spec, &base)?;
    let search = SearchSource {
        dir: input_dir.clone(),
        metrics: spec.metrics.as_ref().map(|m| base.join(m)),
    };
    let table = search.load()?;

    let python =
        hlsfarm_worker::venv::find_python(args.python.as_deref()).map_err(anyhow::Error::msg)?;
    let by_format = hlsfarm_worker::venv::format_pythons();
    // The warm interpreters import their frameworks (seconds) while the venv and the tools
    // are asked for their versions; a run with nothing left to do drops them below.
    let mut warm = if args.no_warm_python || models.is_empty() && !args.follow {
        None
    } else {
        let pool =
            Arc::new(hlsfarm_worker::warm::WarmPool::new().context(
                "cannot create the warm interpreters' folder (or pass --no-warm-python)",
            )?);
        pool.prewarm(hlsfarm_worker::warm::families(&models, &python, &by_format));
        Some(pool)
    };
    let probing = {
        let python = python.clone();
        tokio::task::spawn_blocking(move || hlsfarm_worker::venv::probe(&python))
    };
    let (tools, tool_errors) = detect_tools(
        &std::env::var_os("PATH").unwrap_or_default(),
        Duration::from_secs(60),
    )
    .await;
    let hls4ml = probing.await?.map_err(anyhow::Error::msg)?.hls4ml_version;
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
    for gate in &spec.select {
        if !stages.contains(&gate.after) {
            bail!(
                "the selection gate runs after `{}`, a stage this run does not run (stages {}): give --select-after one of them",
                gate.after,
                stages
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        if !stages.iter().any(|s| *s > gate.after) {
            eprintln!(
                "hlsfarm: warning: nothing runs after the gate's stage `{}`: the gate only marks the selection",
                gate.after
            );
        }
    }
    if validation.is_some() && !stages.contains(&Stage::Emulate) {
        eprintln!(
            "hlsfarm: warning: --validation without the emulate stage gives the float accuracy only"
        );
    }

    let scratch_root = output_dir.join(".hlsfarm/scratch");
    let fixes = if args.fix && !models.is_empty() {
        let files = models
            .iter()
            .map(|m| model_files(m, &args.sweep).map(|(f, _)| f))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fixes = crate::cli::check::preflight_fixes(
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
    let planner = Arc::new(Planner {
        args: args.sweep.clone(),
        points: points.clone(),
        stages: stages.clone(),
        emulation: spec.emulation.clone(),
        hls4ml,
        tools: tools.clone(),
        output_dir: output_dir.clone(),
        scratch_root,
        validation,
        fixes,
    });

    // Plan every trial: key, folders, reuse.
    let mut funnel = Funnel::new(spec.select.clone());
    let mut to_run = Vec::new();
    for (index, model) in models.iter().enumerate() {
        for plan in planner.plan(index, model, &table)? {
            to_run.extend(funnel.add(plan, spec.force));
        }
    }
    let planned = funnel.len();
    if !args.follow {
        eprintln!(
            "hlsfarm: {} models x {} settings = {} trials ({} already done, {} to run) with {} slots; stages {}{}; output {}",
            models.len(),
            points.len(),
            planned,
            planned - to_run.len(),
            to_run.len(),
            args.num_workers.max(1),
            stages
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            match models
                .iter()
                .filter(|m| {
                    m.file_name()
                        .is_some_and(|n| table.lookup(&n.to_string_lossy()).is_some())
                })
                .count()
            {
                0 => String::new(),
                n => format!("; the search's records of {n} models joined"),
            },
            output_dir.display()
        );
    }
    for (i, gate) in spec.select.iter().enumerate() {
        eprintln!("hlsfarm: gate {}: {}", i + 1, gate.describe());
    }

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
    // Memory: each trial reserves its limit from the host's; a trial that ran out of memory
    // is retried with a reservation above its peak, so fewer run beside it.
    let host_mib = hlsfarm_worker::host::meminfo_mib("MemTotal:").unwrap_or(8192);
    let slots = args.num_workers.max(1);
    let trial_limit = args
        .trial_memory_mib
        .unwrap_or_else(|| (host_mib / slots as u64).max(1024));
    let memory = MemoryBudget::new(host_mib.max(trial_limit * slots as u64));
    if to_run.is_empty() && !args.follow {
        warm = None;
    }
    let env = Arc::new(TrialEnv {
        driver: DriverEnv {
            python,
            by_format,
            warm,
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
        emulate_beside_tools: !args.no_emulate_beside_synthesis
            && hlsfarm_worker::trial::room_beside(
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                slots as u32,
            ),
    });
    let cancel = CancellationToken::new();
    let stop_following = CancellationToken::new();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        let interrupted = interrupted.clone();
        let stop_following = stop_following.clone();
        let follow = args.follow;
        tokio::spawn(async move {
            if follow && tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\nhlsfarm: no longer following the folder: the models that arrived run to the end (Ctrl-C again to stop them)"
                );
                stop_following.cancel();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
                eprintln!(
                    "\nhlsfarm: interrupted: stopping the running tools; run the same command again to resume"
                );
                stop_following.cancel();
                cancel.cancel();
            }
        });
    }
    let runner = Arc::new(Runner::new(
        queue_config,
        env,
        trial_limit,
        memory,
        cancel.clone(),
        args.keep_scratch,
        spec.on_failure == hlsfarm_common::sweep::OnFailure::ApplyFix,
        funnel,
        {
            let mut learned = history::Learned::load(&output_dir.join(".hlsfarm/history.jsonl"));
            learned.limit_multiple = args.learned_limit_multiple;
            learned.memory_explicit = args.trial_memory_mib.is_some();
            learned
        },
    ));
    let started = Instant::now();
    runner.submit(to_run).await?;
    let follower = if args.follow {
        runner.open.store(true, std::sync::atomic::Ordering::SeqCst);
        let follow = follow::Follow {
            dir: input_dir.clone().unwrap_or_default(),
            pattern: spec
                .models
                .pattern
                .clone()
                .unwrap_or_else(|| hlsfarm_common::sweep::DEFAULT_PATTERN.to_owned()),
            count: args.follow_count,
            stop: stop_following.clone(),
            taken: std::sync::atomic::AtomicUsize::new(0),
        };
        eprintln!(
            "hlsfarm: following {} for `{}` ({} settings per model, stages {}; ends when trials_summary.json appears{}, or on Ctrl-C); output {}",
            follow.dir.display(),
            follow.pattern,
            points.len(),
            stages
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(","),
            args.follow_count
                .map(|n| format!(", after {n} models"))
                .unwrap_or_default(),
            output_dir.display()
        );
        Some(tokio::spawn(follow.run(
            runner.clone(),
            planner.clone(),
            search.clone(),
            spec.force,
        )))
    } else {
        None
    };
    runner.run(slots).await?;
    if let Some(follower) = follower {
        follower.await.context("the folder follower panicked")??;
    }
    for gate in 0..spec.select.len() {
        if cancel.is_cancelled() {
            break;
        }
        let table = search.load_or_warn();
        let (next, lines) = {
            let mut funnel = runner.funnel();
            funnel.refresh_search(|p| planner.search_of(p, &table));
            funnel.decide(gate)
        };
        for line in lines {
            runner.progress.println(&line);
        }
        runner.submit(next).await?;
        runner.run(slots).await?;
    }
    runner.progress.done();

    // The sweep's outputs, from every trial's latest result (run now or reused).
    let table = search.load_or_warn();
    let mut entries = Vec::new();
    let mut not_run = 0;
    let (saved, all_tool_stages) = {
        let mut funnel = runner.funnel();
        funnel.refresh_search(|p| planner.search_of(p, &table));
        for outcome in funnel.outcomes() {
            match outcome.result {
                Some(result) => {
                    let mut entry = SeedEntry::new(
                        &outcome.plan.model_path,
                        &outcome.plan.spec.output_dir,
                        result.clone(),
                        outcome.reused,
                    );
                    entry.selection = outcome.decisions.to_vec();
                    entries.push(entry);
                }
                None => not_run += 1,
            }
        }
        for plan in funnel.derived() {
            match finished_or_failed(&plan.spec.output_dir, &plan.key) {
                Some(mut result) => {
                    if result.search.is_none() {
                        result.search = planner.search_of(plan, &table);
                    }
                    entries.push(SeedEntry::new(
                        &plan.model_path,
                        &plan.spec.output_dir,
                        result,
                        false,
                    ))
                }
                None => not_run += 1,
            }
        }
        funnel.saved_tool_stages()
    };
    let total = entries.len() + not_run;
    let summary = SeedSummary::new(entries);
    let (files, plot_warning) =
        crate::pareto::sweep_outputs(&summary, None).context("cannot make the sweep's results")?;
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
    if !spec.select.is_empty() {
        eprintln!(
            "hlsfarm: the funnel ran {} of {} tool-stage runs ({saved} saved)",
            all_tool_stages - saved,
            all_tool_stages
        );
    }
    let failed_classes: Vec<String> = summary
        .results
        .iter()
        .filter_map(|e| e.result.failure.as_ref().map(|f| f.class))
        .map(|c: FailureClass| c.to_string())
        .collect();
    let reused = summary.results.iter().filter(|e| e.reused).count();
    eprintln!(
        "hlsfarm: {} trials: {} succeeded, {} failed{}{} ({} reused) in {:.1} s; results in {}",
        total,
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
