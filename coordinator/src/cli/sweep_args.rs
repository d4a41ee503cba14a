//! The sweep a command describes: its flags (shared by `run`, `check` and `submit`), or a
//! sweep file with the selection flags over it, and each model's files and companions.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use hlsfarm_common::search::SearchTable;
use hlsfarm_common::select::{Gate, parse_objectives};
use hlsfarm_common::settings::{Backend, IoType, Strategy};
use hlsfarm_common::stage::Stage;
use hlsfarm_common::sweep::{ModelSelection, OneOrMany, SettingsGrid, SweepSpec};
use hlsfarm_common::trial_key::{EmulationSpec, sha256_hex};
use hlsfarm_worker::driver::ModelFiles;

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
    /// A labelled validation set: an .npz with one array per model input name (or `x` for a
    /// one-input model) plus `y` (labels of the first output; `y_<output>` for others): each
    /// trial's float and fixed-point accuracy on it, in result.json `accuracy`.
    #[arg(long, value_name = "FILE.npz")]
    pub validation: Option<PathBuf>,
    /// What the search recorded of each model: a CSV or JSON table keyed by model file name
    /// (column `model`), or a Keras Tuner directory; joined as result.json `search` and as
    /// columns of results.csv [default: what the search left beside the models:
    /// trials_summary.json, hyperparams_trial_<id>.json, <project>/trial_<id>/trial.json].
    #[arg(long, value_name = "FILE|DIR")]
    pub metrics: Option<PathBuf>,
    /// A funnel: every trial runs up to --select-after, then only the Pareto front over these
    /// objectives goes on to the later stages (the next tier waits as backups, promoted when a
    /// primary fails), e.g. `val_accuracy:max,parameters:min`; metrics: accuracy,
    /// float_accuracy, accuracy_drop, auc, parameters, lut, ff, dsp, bram, latency_ns,
    /// latency_cycles, fmax_mhz, max_abs_diff, and any metric or hyperparameter the search
    /// recorded.
    #[arg(long, value_name = "OBJECTIVES")]
    pub select: Option<String>,
    /// A funnel bound: only trials with METRIC >= VALUE go on (comma-separated).
    #[arg(
        long = "select-min",
        value_name = "METRIC=VALUE",
        value_delimiter = ','
    )]
    pub select_min: Vec<String>,
    /// A funnel bound: only trials with METRIC <= VALUE go on (comma-separated).
    #[arg(
        long = "select-max",
        value_name = "METRIC=VALUE",
        value_delimiter = ','
    )]
    pub select_max: Vec<String>,
    /// Pareto tiers the funnel keeps: the first goes on, later ones are backups.
    #[arg(long = "select-tiers", value_name = "N", default_value_t = 2)]
    pub select_tiers: u32,
    /// At most this many primaries go on (the rest of the front become backups).
    #[arg(long = "select-top", value_name = "K")]
    pub select_top: Option<usize>,
    /// The stage every trial runs before the funnel decides.
    #[arg(long = "select-after", value_name = "STAGE", default_value = "emulate")]
    pub select_after: Stage,
}

/// The gate the `--select*` flags describe, if any.
fn gate_from_flags(args: &SweepArgs) -> anyhow::Result<Option<Gate>> {
    if args.select.is_none() && args.select_min.is_empty() && args.select_max.is_empty() {
        return Ok(None);
    }
    let bounds = |flag: &str, items: &[String]| -> anyhow::Result<BTreeMap<String, f64>> {
        items
            .iter()
            .map(|item| {
                let (k, v) = item.split_once('=').with_context(|| {
                    format!("--{flag} {item}: write METRIC=VALUE, e.g. val_accuracy=0.85")
                })?;
                let v: f64 = v
                    .trim()
                    .parse()
                    .with_context(|| format!("--{flag} {item}: `{v}` is not a number"))?;
                Ok((k.trim().to_owned(), v))
            })
            .collect()
    };
    let gate = Gate {
        after: args.select_after,
        objectives: match &args.select {
            Some(text) => parse_objectives(text).map_err(|e| anyhow::anyhow!("--select: {e}"))?,
            None => Vec::new(),
        },
        min: bounds("select-min", &args.select_min)?,
        max: bounds("select-max", &args.select_max)?,
        tiers: args.select_tiers,
        top: args.select_top,
    };
    gate.validate()
        .map_err(|e| anyhow::anyhow!("--select: {e}"))?;
    Ok(Some(gate))
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

/// The sweep's validation file (`validation`, relative to `base`), resolved; an error names
/// the flag and what the file should hold when it is not there.
pub(crate) fn validation_path(spec: &SweepSpec, base: &Path) -> anyhow::Result<Option<PathBuf>> {
    spec.validation
        .as_ref()
        .map(|v| {
            base.join(v).canonicalize().with_context(|| {
                format!(
                    "--validation {}: no such file (give an .npz with one array per model input name, or `x`, plus `y`)",
                    v.display()
                )
            })
        })
        .transpose()
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
                validation: None,
                metrics: None,
                select: Vec::new(),
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
    // Paths given as flags are taken from the working folder, a sweep file's from its folder.
    let here = |p: &PathBuf| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or(p.clone())
    };
    if let Some(v) = &args.validation {
        spec.validation = Some(here(v));
    }
    if let Some(m) = &args.metrics {
        spec.metrics = Some(here(m));
    }
    if let Some(gate) = gate_from_flags(args)? {
        if !spec.select.is_empty() {
            bail!(
                "give the selection either in the sweep file's [[select]] or as --select flags, not both"
            );
        }
        spec.select = vec![gate];
    }
    if let Err(errors) = spec.validate() {
        bail!("{errors}");
    }
    Ok((spec, base))
}

/// Where the search's records come from: the model folder (Keras Tuner's files) and a
/// metrics table or tuner directory given by the user.
#[derive(Debug, Clone)]
pub(crate) struct SearchSource {
    /// The model folder.
    pub(crate) dir: Option<PathBuf>,
    /// `--metrics FILE`.
    pub(crate) metrics: Option<PathBuf>,
}

impl SearchSource {
    /// Reads them; a metrics table given that cannot be read is an error, a search file
    /// found beside the models that cannot be read a warning.
    pub(crate) fn load(&self) -> anyhow::Result<SearchTable> {
        let mut table = SearchTable::default();
        if let Some(m) = &self.metrics {
            table = SearchTable::load_metrics(m).with_context(|| {
                format!(
                    "--metrics {}: cannot read the search's metrics",
                    m.display()
                )
            })?;
        }
        if let Some(dir) = &self.dir {
            match SearchTable::discover(dir) {
                Ok(found) => table.extend(found),
                Err(e) => eprintln!(
                    "hlsfarm: warning: the search's files beside the models are not joined: {e}"
                ),
            }
        }
        Ok(table)
    }

    /// Reads them again (the search may have written more), warning instead of failing.
    pub(crate) fn load_or_warn(&self) -> SearchTable {
        self.load().unwrap_or_else(|e| {
            eprintln!("hlsfarm: warning: {e:#}");
            SearchTable::default()
        })
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

pub(crate) fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(sha256_hex(&bytes))
}
