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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_common::aggregate::{SeedEntry, SeedSummary};
use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::job::TrialState;
use hlsfarm_common::queue::embedded::EmbeddedQueue;
use hlsfarm_common::queue::{NewTrial, Outcome, Queue, QueueConfig, SweepMeta};
use hlsfarm_common::results::{ModelRef, TrialFailure, TrialResult, TrialStatus};
use hlsfarm_common::settings::{Backend, IoType, Settings, Strategy};
use hlsfarm_common::stage::Stage;
use hlsfarm_common::sweep::{ModelSelection, OneOrMany, SettingsGrid, SweepSpec};
use hlsfarm_common::trial_key::{
    EmulationSpec, ModelDigest, ToolVersion, Toolchain, TrialKeyInput, sha256_hex,
};
use hlsfarm_worker::driver::{DriverEnv, ModelFiles};
use hlsfarm_worker::tools::detect_tools;
use hlsfarm_worker::trial::{TrialEnv, TrialSpec, run_trial, tool_command};
use tokio_util::sync::CancellationToken;

/// The flags that describe a sweep, shared by `hlsfarm run` and `hlsfarm submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Folder with the model files (required unless --sweep names one).
    #[arg(long = "input-dir", alias = "input_dir", value_name = "DIR")]
    pub input_dir: Option<PathBuf>,
    /// Glob over file names in the input folder [default: model_trial_*.h5].
    #[arg(long)]
    pub pattern: Option<String>,
    /// FPGA part(s), comma-separated [default: xc7z020clg400-1].
    #[arg(long = "fpga-part", aliases = ["fpga_part", "part"], value_delimiter = ',')]
    pub fpga_part: Vec<String>,
    /// At most this many models (in name order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// io_parallel and/or io_stream, comma-separated [default: io_parallel].
    #[arg(long = "io-type", value_delimiter = ',')]
    pub io_type: Vec<IoType>,
    /// latency, resource, distributed_arithmetic [default: latency].
    #[arg(long, value_delimiter = ',')]
    pub strategy: Vec<Strategy>,
    /// Reuse factor(s), comma-separated [default: 1].
    #[arg(long = "reuse-factor", value_delimiter = ',')]
    pub reuse_factor: Vec<u32>,
    /// Default precision(s), e.g. 'ap_fixed<16,6>' [default: ap_fixed<16,6>]; separate
    /// several with `;`.
    #[arg(long, value_delimiter = ';')]
    pub precision: Vec<String>,
    /// Clock period(s) in ns [default: 5].
    #[arg(long = "clock-period", value_delimiter = ',')]
    pub clock_period: Vec<f64>,
    /// vitis and/or vivado [default: vitis].
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<Backend>,
    /// hls4ml MaximumSize value(s) [default: hls4ml's 4096].
    #[arg(long = "max-array-partition-size", value_delimiter = ',')]
    pub max_array_partition_size: Vec<u32>,
    /// Stages, comma-separated: convert, emulate, csynth, cosim, export, vsynth
    /// [default: all when the tools are found, else convert,emulate].
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<Stage>,
    /// A sweep file (TOML or JSON) with models, grid and stages, instead of the flags above.
    #[arg(long, value_name = "FILE")]
    pub sweep: Option<PathBuf>,
    /// Run every trial even where a finished result with the same key is there.
    #[arg(long)]
    pub force: bool,
    /// Samples for emulation.
    #[arg(long = "emulation-samples", default_value_t = 100)]
    pub emulation_samples: u32,
    /// Sample inputs for the emulation of every model: an .npz with one array per input name
    /// (or an .npy for one-input models), each of shape (samples, ...) [default: each model's
    /// `<stem>_inputs.npz` / `<stem>_inputs.npy` beside it, else generated from each input's
    /// shape, uniform in (-1, 1)].
    #[arg(long = "emulation-inputs", value_name = "FILE")]
    pub emulation_inputs: Option<PathBuf>,
    /// Seed for the generated emulation samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// What a trial the tools refused with a known fix leads to: `report` (it is reported
    /// with the fix) or `apply-fix` (a derived trial with the fix applied runs too: its own
    /// key, its folder ending in `_fixed`) [default: report, or the sweep file's on_failure].
    #[arg(long = "on-failure", value_name = "POLICY")]
    pub on_failure: Option<hlsfarm_common::sweep::OnFailure>,
}

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

/// One planned trial.
#[derive(Debug, Clone)]
struct Planned {
    key: String,
    model_path: PathBuf,
    spec: TrialSpec,
    reused: bool,
    /// What its key is made of besides the settings: a derived trial's key needs them too.
    digest: ModelDigest,
    toolchain: Toolchain,
}

impl Planned {
    /// `on_failure = "apply-fix"`: this failed trial's settings with `fix` applied, as a
    /// derived trial (its own key, its folder ending in `_fixed`, `derived_from` naming this
    /// one), or why the fix does not apply.
    fn derive(
        &self,
        fix: &std::collections::BTreeMap<String, serde_json::Value>,
        reason: &str,
    ) -> Result<Planned, String> {
        let settings = self.spec.settings.with_fix(fix)?;
        let key = TrialKeyInput {
            model: &self.digest,
            settings: &settings,
            stages: &self.spec.stages,
            emulation: &self.spec.emulation,
            toolchain: &self.toolchain,
        }
        .key()
        .to_hex();
        let name = format!(
            "{}_fixed",
            self.spec
                .output_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
        let parent = self.spec.output_dir.parent().unwrap_or(Path::new("."));
        let scratch_root = self.spec.scratch.parent().unwrap_or(Path::new("."));
        let mut spec = self.spec.clone();
        spec.derived_from = Some(hlsfarm_common::results::DerivedFrom {
            trial_key: self.key.clone(),
            settings: self.spec.settings.clone(),
            fix: fix.clone(),
            findings: vec![reason.to_owned()],
        });
        spec.settings = settings;
        spec.trial_key = key.clone();
        spec.scratch = scratch_root.join(&key[..16]);
        spec.tarball = parent.join(format!("{name}.tar.gz"));
        spec.output_dir = parent.join(&name);
        Ok(Planned {
            key,
            model_path: self.model_path.clone(),
            spec,
            reused: false,
            digest: self.digest.clone(),
            toolchain: self.toolchain.clone(),
        })
    }
}

fn grid_from_flags(args: &SweepArgs) -> SettingsGrid {
    fn list<T: Clone>(v: &[T]) -> Option<OneOrMany<T>> {
        (!v.is_empty()).then(|| OneOrMany::Many(v.to_vec()))
    }
    SettingsGrid {
        io_type: list(&args.io_type),
        strategy: list(&args.strategy),
        reuse_factor: list(&args.reuse_factor),
        precision: list(&args.precision),
        part: list(&args.fpga_part),
        clock_period_ns: list(&args.clock_period),
        backend: list(&args.backend),
        max_array_partition_size: list(&args.max_array_partition_size),
        layers: Default::default(),
    }
}

/// The sweep the flags (or the sweep file) describe, and the folder relative paths start from.
pub(crate) fn sweep_spec(args: &SweepArgs) -> anyhow::Result<(SweepSpec, PathBuf)> {
    let grid_flags = grid_from_flags(args) != SettingsGrid::default();
    let (mut spec, base) = match &args.sweep {
        Some(file) => {
            if grid_flags || !args.stages.is_empty() {
                bail!(
                    "give the settings and stages either in --sweep {} or as flags, not both",
                    file.display()
                );
            }
            let spec = SweepSpec::load(file)?;
            let base = file
                .parent()
                .map(Path::to_owned)
                .unwrap_or_else(|| PathBuf::from("."));
            (spec, base)
        }
        None => {
            let Some(dir) = &args.input_dir else {
                bail!("--input-dir is required (or --sweep FILE naming the models)");
            };
            let spec = SweepSpec {
                name: String::new(),
                models: ModelSelection {
                    dir: Some(dir.clone()),
                    ..ModelSelection::default()
                },
                grid: grid_from_flags(args),
                stages: args.stages.clone(),
                priority: 1,
                force: args.force,
                emulation: EmulationSpec {
                    samples: args.emulation_samples,
                    seed: args.seed,
                },
                toolchain: None,
                resources: None,
                on_failure: args.on_failure.unwrap_or_default(),
            };
            (spec, PathBuf::from("."))
        }
    };
    if args.sweep.is_some() && args.input_dir.is_some() {
        spec.models.dir = args.input_dir.clone();
        spec.models.paths.clear();
    }
    if args.pattern.is_some() {
        spec.models.pattern = args.pattern.clone();
    }
    if args.limit.is_some() {
        spec.models.limit = args.limit;
    }
    spec.force |= args.force;
    if let Some(policy) = args.on_failure {
        spec.on_failure = policy;
    }
    if let Err(errors) = spec.validate() {
        bail!("{errors}");
    }
    Ok((spec, base))
}

/// Each setting as it appears in a folder name.
fn labels(s: &Settings) -> [String; 8] {
    let digits: Vec<&str> = s
        .precision
        .split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty())
        .collect();
    [
        s.io_type.as_str().trim_start_matches("io_").to_owned(),
        s.strategy.to_string(),
        format!("rf{}", s.reuse_factor),
        format!("p{}", digits.join("-")),
        s.part.to_ascii_lowercase(),
        format!("clk{}", s.clock_period_ns),
        s.backend.to_string(),
        format!("max{}", s.max_array_partition_size.unwrap_or(4096)),
    ]
}

/// The readable suffix naming a settings point among the others of its grid: only the
/// fields that vary, e.g. `_stream_rf4`.
fn suffix(point: &Settings, points: &[Settings]) -> String {
    let mine = labels(point);
    let all: Vec<[String; 8]> = points.iter().map(labels).collect();
    let parts: Vec<&str> = (0..mine.len())
        .filter(|&i| all.iter().any(|l| l[i] != mine[i]))
        .map(|i| mine[i].as_str())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("_{}", parts.join("_"))
    }
}

/// A model's companions: those found beside it (see `driver::companions`), the sample
/// inputs replaced by `--emulation-inputs` when given.
pub(crate) fn model_companions(
    path: &Path,
    args: &SweepArgs,
) -> anyhow::Result<std::collections::BTreeMap<String, PathBuf>> {
    let mut companions = hlsfarm_worker::driver::companions(path);
    if let Some(inputs) = &args.emulation_inputs {
        let inputs = inputs.canonicalize().with_context(|| {
            format!(
                "--emulation-inputs {}: no such file (give an .npz with one array per input name, or an .npy)",
                inputs.display()
            )
        })?;
        companions.insert("inputs".to_owned(), inputs);
    }
    Ok(companions)
}

/// A model's files: the model and its companions (a Keras JSON's `<stem>_weights.h5`, a
/// PyTorch file's `<stem>.py`, sample inputs).
pub(crate) fn model_files(
    path: &Path,
    args: &SweepArgs,
) -> anyhow::Result<(ModelFiles, std::collections::BTreeMap<String, PathBuf>)> {
    let mut files = ModelFiles::auto(path);
    let companions = model_companions(path, args)?;
    files.weights = companions.get("weights").cloned();
    files.class_file = companions.get("class").cloned();
    Ok((files, companions))
}

fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}

/// A previous successful result with this key in `output_dir`, if any.
fn finished_result(output_dir: &Path, key: &str) -> Option<TrialResult> {
    let bytes = std::fs::read(output_dir.join("result.json")).ok()?;
    let result: TrialResult = serde_json::from_slice(&bytes).ok()?;
    (result.trial_key == key && result.status == TrialStatus::Success).then_some(result)
}

fn line_for(result: &TrialResult) -> String {
    let mut parts = vec![format!("{:?}", result.status).to_lowercase()];
    let seconds = result.timings.iter().fold(0.0, |sum, t| sum + t.seconds);
    parts.push(format!("in {seconds:.1} s"));
    if let Some(c) = &result.reports.csynth {
        if let Some(lut) = c.used.lut {
            parts.push(format!("LUT {lut}"));
        }
        if let Some(lat) = c.latency_worst_cycles {
            parts.push(format!("latency {lat} cycles"));
        }
    }
    if let Some(f) = &result.fidelity {
        parts.push(f.headline());
    }
    for note in &result.notes {
        parts.push(format!("({note})"));
    }
    for finding in &result.preflight {
        parts.push(format!(
            "preflight {}: {}",
            finding.severity, finding.message
        ));
    }
    if let Some(f) = &result.failure {
        parts.push(format!("{}: {}", f.class, f.reason));
    }
    parts.join("  ")
}

/// The host's memory as the one-host run shares it among trials: each trial reserves its
/// memory limit before it runs (the default per-slot share, or more after it ran out of
/// memory), so a trial retried with twice its peak runs with fewer beside it.
struct MemoryBudget {
    total_mib: u64,
    permits: tokio::sync::Semaphore,
    raised: std::sync::Mutex<HashMap<String, u64>>,
}

impl MemoryBudget {
    fn new(total_mib: u64) -> MemoryBudget {
        MemoryBudget {
            total_mib,
            permits: tokio::sync::Semaphore::new(total_mib.min(u64::from(u32::MAX)) as usize),
            raised: Default::default(),
        }
    }

    /// The memory limit of the trial's next run.
    fn reservation(&self, key: &str, default: u64) -> u64 {
        let raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        raised
            .get(key)
            .copied()
            .unwrap_or(default)
            .min(self.total_mib)
    }

    /// The reservation an out-of-memory failure raised the trial to, if any.
    fn raised_to(&self, key: &str) -> Option<u64> {
        let raised = self.raised.lock().unwrap_or_else(|p| p.into_inner());
        raised.get(key).copied()
    }

    /// Waits until `mib` is free (None when cancelled first).
    async fn reserve(
        &self,
        mib: u64,
        cancel: &CancellationToken,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let n = mib.min(u64::from(u32::MAX)) as u32;
        tokio::select! {
            permit = self.permits.acquire_many(n) => permit.ok(),
            () = cancel.cancelled() => None,
        }
    }

    /// How a failed trial is reported to the queue. `oom` with a measured peak is retried
    /// with twice the peak reserved when the host has that much, else ends with the peak
    /// named (its `result.json` says so); `licence` is a refusal, not the trial's fault.
    fn outcome(&self, key: &str, failure: &mut TrialFailure, output_dir: &Path) -> Outcome {
        match (failure.class, failure.peak_memory_mib) {
            (FailureClass::Licence, _) => Outcome::Refused,
            (FailureClass::Oom, Some(peak)) if peak > 0 => {
                match hlsfarm_common::failure::oom_reservation(peak, self.total_mib) {
                    Some(reserve) => {
                        self.raised
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key.to_owned(), reserve);
                        Outcome::Failed { retryable: true }
                    }
                    None => {
                        failure.reason.push_str(&format!(
                            "; not retried: it peaked at {peak} MiB and this host has {} MiB",
                            self.total_mib
                        ));
                        failure.suggestion = Some(
                            "run it on a host with more memory, or shrink the design: a larger reuse_factor, io_stream, or a Resource strategy".into(),
                        );
                        rewrite_failure(output_dir, failure);
                        Outcome::Failed { retryable: false }
                    }
                }
            }
            (class, _) => Outcome::Failed {
                retryable: class.is_retryable(),
            },
        }
    }
}

/// Writes `failure` into the trial's `result.json` (after the run wrote it).
fn rewrite_failure(output_dir: &Path, failure: &TrialFailure) {
    let path = output_dir.join("result.json");
    let Some(mut result) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<TrialResult>(&b).ok())
    else {
        return;
    };
    result.failure = Some(failure.clone());
    if let Ok(bytes) = serde_json::to_vec_pretty(&result) {
        let _ = std::fs::write(&path, bytes);
    }
}

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

    // Queue the trials to run: longest first by a simple cost (model size over reuse factor).
    let queue = Arc::new(EmbeddedQueue::new(QueueConfig {
        // One process holds every lease: nothing can lose one but the process itself.
        lease: Duration::from_secs(30 * 24 * 3600),
        max_attempts: 3,
        retry_backoff: Duration::ZERO,
        ..QueueConfig::default()
    }));
    let sweep_id = "one-host".to_owned();
    let new: Vec<NewTrial> = to_run
        .iter()
        .map(|p| NewTrial {
            key: p.key.clone(),
            cost: std::fs::metadata(&p.model_path)
                .map(|m| m.len() as f64)
                .unwrap_or(1.0)
                / f64::from(p.spec.settings.reuse_factor.max(1)),
            payload: serde_json::Value::Null,
            needs: Default::default(),
        })
        .collect();
    queue
        .submit(
            SweepMeta {
                id: sweep_id.clone(),
                priority: 1,
            },
            new,
        )
        .await?;

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
    let host_mib = hlsfarm_worker::daemon::meminfo_mib("MemTotal:").unwrap_or(8192);
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
                let outcome = match (&result.status, &mut result.failure) {
                    (TrialStatus::Success, _) => Outcome::Succeeded,
                    (TrialStatus::Cancelled, _) => Outcome::Cancelled,
                    (TrialStatus::Failed, Some(f)) => {
                        memory.outcome(&lease.key, f, &plan.spec.output_dir)
                    }
                    (TrialStatus::Failed, None) => Outcome::Failed { retryable: false },
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
                            queue
                                .submit(
                                    SweepMeta {
                                        id: sweep_id.clone(),
                                        priority: 1,
                                    },
                                    vec![NewTrial {
                                        key: fixed.key.clone(),
                                        cost: 1.0,
                                        payload: serde_json::Value::Null,
                                        needs: Default::default(),
                                    }],
                                )
                                .await?;
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
                    progress.finish(
                        line,
                        &match memory.raised_to(&lease.key).filter(|r| *r > limit) {
                            Some(r) => format!(
                                "hlsfarm: retry {name} with {r} MiB reserved: {}",
                                line_for(&result)
                            ),
                            None => format!("hlsfarm: retry {name}: {}", line_for(&result)),
                        },
                        "",
                    );
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
    summary
        .write(&output_dir)
        .with_context(|| format!("cannot write the results into {}", output_dir.display()))?;
    if let Err(e) = crate::pareto::write(&summary, &output_dir) {
        eprintln!("hlsfarm: warning: cannot draw the Pareto plot: {e}");
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn suffixes_name_only_what_varies() {
        let a = Settings {
            reuse_factor: 1,
            ..Settings::default()
        };
        let b = Settings {
            reuse_factor: 4,
            io_type: IoType::Stream,
            ..Settings::default()
        };
        let points = vec![a.clone(), b.clone()];
        assert_eq!(suffix(&a, &points), "_parallel_rf1");
        assert_eq!(suffix(&b, &points), "_stream_rf4");
        assert_eq!(suffix(&a, std::slice::from_ref(&a)), "");
    }
}
