//! What trials cost, learned from what they cost before (DESIGN §4.3): every accepted result
//! leaves an [`Observation`] (per stage: wall time and peak memory, with the features that
//! drive them); an [`Estimator`] fitted on them predicts a trial's duration and peak memory
//! per stage, with a spread. One estimator for `run` and `submit`: the one-host run keeps its
//! history in the output folder, the cluster in Redis.
//!
//! The fit, per stage, is a robust regression on log scale: `ln seconds` and `ln MiB` on the
//! log of the parameter count, reuse factor, precision width and clock period, the io type
//! and strategy, and the part families and tools seen. Until a stage has [`MIN_ROWS`]
//! observations its prediction is the static formula ([`crate::plan::cost_estimate`]) in
//! seconds, by the median ratio of measured seconds to it (or the bare formula before any
//! history, which orders but does not forecast).

mod fit;
pub mod synthetic;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::results::{TrialResult, TrialStatus};
use crate::settings::{IoType, Settings, Strategy};
use crate::stage::Stage;

pub use fit::Fit;

/// Observations a stage needs before its own fit replaces the static formula.
pub const MIN_ROWS: usize = 8;
/// Observations kept (the newest); older ones are dropped.
pub const HISTORY_LIMIT: usize = 5000;
/// Part families and tools given their own column, the most frequent first.
const MAX_CATEGORIES: usize = 6;
/// Memory predictions: the fitted value plus this many spreads, times [`MEMORY_MARGIN`].
const MEMORY_SPREADS: f64 = 2.0;
/// Spreads above the log-scale duration estimate a stage's time limit starts from (99.9 %).
const LIMIT_SPREADS: f64 = 3.0;
/// The default multiple of a learned stage's 99.9th-percentile duration it may run.
pub const LIMIT_MULTIPLE: f64 = 4.0;
/// The default least time a learned limit gives a stage, seconds.
pub const LIMIT_FLOOR_S: u64 = 1800;
/// Headroom on a predicted peak.
pub const MEMORY_MARGIN: f64 = 1.25;
/// The smallest reservation a prediction asks for, MiB.
pub const MEMORY_FLOOR_MIB: u64 = 512;

/// What drives a trial's cost and is known before it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Features {
    /// The model file's size, bytes.
    pub size_bytes: u64,
    /// Its parameter count, when a trial of the model has converted (else estimated from
    /// the size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    /// Multiplications per inference, when a trial of the model has converted (else
    /// estimated from the parameters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplications: Option<u64>,
    /// The most weights one layer holds, when a trial of the model has converted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub largest_layer: Option<u64>,
    /// Reuse factor.
    pub reuse_factor: u32,
    /// Width of the default precision, bits.
    pub precision_bits: u32,
    /// `io_stream`.
    pub io_stream: bool,
    /// Strategy (`latency`, `resource`, `distributed_arithmetic`).
    pub strategy: String,
    /// Clock period, ns.
    pub clock_period_ns: f64,
    /// Part family (`zynq`, `virtexuplus`, …; empty when unknown).
    pub family: String,
    /// The HLS tool and version (`vitis_hls 2023.2`; empty without tool stages).
    pub tool: String,
}

impl Features {
    /// The features of `settings` on a model of `size_bytes` with the given parameter count.
    pub fn of(settings: &Settings, size_bytes: u64, parameters: Option<u64>, tool: &str) -> Self {
        Features {
            size_bytes,
            parameters,
            multiplications: None,
            largest_layer: None,
            reuse_factor: settings.reuse_factor.max(1),
            precision_bits: precision_bits(&settings.precision),
            io_stream: settings.io_type == IoType::Stream,
            strategy: settings.strategy.as_str().to_owned(),
            clock_period_ns: settings.clock_period_ns,
            family: settings.part_family().unwrap_or_default().to_owned(),
            tool: tool.to_owned(),
        }
    }
}

/// The tool feature of a toolchain: `vitis_hls 2023.2`, empty without a tool.
pub fn tool_label(toolchain: &crate::trial_key::Toolchain) -> String {
    toolchain
        .tool
        .as_ref()
        .map(|t| format!("{} {}", t.name, t.version))
        .unwrap_or_default()
}

/// The total width of an hls4ml precision (`ap_fixed<16,6>` → 16, `ap_int<8>` → 8, `float`
/// → 32); 16 when it names none.
pub fn precision_bits(precision: &str) -> u32 {
    let lower = precision.to_ascii_lowercase();
    if lower.contains("double") {
        return 64;
    }
    if lower.contains("float") && !lower.contains('<') {
        return 32;
    }
    lower
        .split(|c: char| !c.is_ascii_digit())
        .find(|d| !d.is_empty())
        .and_then(|d| d.parse().ok())
        .filter(|b| *b > 0)
        .unwrap_or(16)
}

/// One stage's measured cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageCost {
    /// The stage.
    pub stage: Stage,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Peak memory of its process tree, MiB (0: not measured).
    pub peak_mib: u64,
    /// CPU time of its process tree, seconds, where measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

/// What one trial cost, with what drove it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The model's sha256.
    pub model: String,
    /// The trial's features.
    pub features: Features,
    /// The stages that finished (a failed trial's failing stage is left out: its time is
    /// where it stopped, not what it costs).
    pub stages: Vec<StageCost>,
}

impl Observation {
    /// The observation a result makes, on a model of `size_bytes`; None when no stage
    /// finished.
    pub fn from_result(result: &TrialResult, size_bytes: u64) -> Option<Observation> {
        let failed_stage = match result.status {
            TrialStatus::Success => None,
            _ => result
                .failure
                .as_ref()
                .and_then(|f| f.stage)
                .or(Some(Stage::Convert)),
        };
        let stages: Vec<StageCost> = result
            .timings
            .iter()
            .filter(|t| t.seconds > 0.0 && Some(t.stage) != failed_stage)
            .filter(|t| failed_stage.is_none_or(|f| t.stage < f))
            .map(|t| StageCost {
                stage: t.stage,
                seconds: t.seconds,
                peak_mib: t.peak_memory_mib,
                cpu_seconds: t.cpu_seconds,
            })
            .collect();
        if stages.is_empty() {
            return None;
        }
        let tool = tool_label(&result.toolchain);
        Some(Observation {
            model: result.model.sha256.clone(),
            features: Features {
                multiplications: result.multiplications.filter(|m| *m > 0),
                largest_layer: result.largest_layer.filter(|m| *m > 0),
                ..Features::of(&result.settings, size_bytes, result.parameters, &tool)
            },
            stages,
        })
    }
}

/// What converting a model showed, for its later trials' features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct ModelCounts {
    parameters: Option<u64>,
    multiplications: Option<u64>,
    largest_layer: Option<u64>,
}

/// A prediction of one trial.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Expected wall time, seconds (the static formula's units while `learned` is false and
    /// there is no history at all).
    pub seconds: f64,
    /// Standard deviation of the wall time, seconds.
    pub sd_seconds: f64,
    /// Peak memory to reserve (with margin), MiB, when every stage's memory is learned.
    pub memory_mib: Option<u64>,
    /// Every stage came from its own fit.
    pub learned: bool,
}

/// One stage's rows to fit: columns with `ln seconds`, and (where measured) with `ln MiB`.
#[derive(Default)]
struct StageRows {
    rows: Vec<Vec<f64>>,
    seconds: Vec<f64>,
    memory_rows: Vec<Vec<f64>>,
    memory: Vec<f64>,
}

/// One stage's fits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StageFit {
    seconds: Fit,
    memory: Option<Fit>,
}

/// Estimates fitted on a history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimator {
    stages: BTreeMap<Stage, StageFit>,
    /// Measured seconds per unit of the static formula (median), once anything was measured.
    seconds_per_cost: Option<f64>,
    /// Parameters per byte of model file (median), for models not converted yet.
    parameters_per_byte: Option<f64>,
    /// Multiplications per parameter (median), for models whose count is not known.
    #[serde(default)]
    multiplications_per_parameter: Option<f64>,
    /// The largest layer's share of the parameters (median), likewise.
    #[serde(default)]
    largest_per_parameter: Option<f64>,
    /// What converting showed of the models seen, by sha256.
    models: HashMap<String, ModelCounts>,
    families: Vec<String>,
    tools: Vec<String>,
    /// Observations fitted on.
    pub observations: usize,
}

impl Estimator {
    /// Fits the estimates on `history` (oldest first).
    pub fn fit(history: &[Observation]) -> Estimator {
        let mut models: HashMap<String, ModelCounts> = HashMap::new();
        let mut per_byte = Vec::new();
        let (mut mults_per_p, mut largest_per_p) = (Vec::new(), Vec::new());
        let mut ratios = Vec::new();
        for o in history {
            let f = &o.features;
            if let Some(p) = f.parameters {
                if f.size_bytes > 0 {
                    per_byte.push(p as f64 / f.size_bytes as f64);
                }
                if p > 0 {
                    mults_per_p.extend(f.multiplications.map(|m| m as f64 / p as f64));
                    largest_per_p.extend(f.largest_layer.map(|l| l as f64 / p as f64));
                }
            }
            let counts = models.entry(o.model.clone()).or_default();
            counts.parameters = f.parameters.or(counts.parameters);
            counts.multiplications = f.multiplications.or(counts.multiplications);
            counts.largest_layer = f.largest_layer.or(counts.largest_layer);
            let stages: Vec<Stage> = o.stages.iter().map(|s| s.stage).collect();
            let cost =
                crate::plan::static_cost(o.features.size_bytes, o.features.reuse_factor, &stages);
            let seconds: f64 = o.stages.iter().map(|s| s.seconds).sum();
            if cost > 0.0 && seconds > 0.0 {
                ratios.push(seconds / cost);
            }
        }
        let mut estimator = Estimator {
            stages: BTreeMap::new(),
            seconds_per_cost: (!ratios.is_empty()).then(|| fit::median(ratios)),
            parameters_per_byte: (!per_byte.is_empty()).then(|| fit::median(per_byte)),
            multiplications_per_parameter: (!mults_per_p.is_empty())
                .then(|| fit::median(mults_per_p)),
            largest_per_parameter: (!largest_per_p.is_empty()).then(|| fit::median(largest_per_p)),
            models,
            families: frequent(history.iter().map(|o| o.features.family.as_str())),
            tools: frequent(history.iter().map(|o| o.features.tool.as_str())),
            observations: history.len(),
        };
        let mut by_stage: BTreeMap<Stage, StageRows> = BTreeMap::new();
        for o in history {
            let row = estimator.row(&o.features);
            for s in &o.stages {
                let entry = by_stage.entry(s.stage).or_default();
                entry.rows.push(row.clone());
                entry.seconds.push(s.seconds.max(1e-3).ln());
                if s.peak_mib > 0 {
                    entry.memory_rows.push(row.clone());
                    entry.memory.push((s.peak_mib as f64).ln());
                }
            }
        }
        for (stage, r) in by_stage {
            if r.rows.len() < MIN_ROWS {
                continue;
            }
            let Some(seconds) = Fit::robust(&r.rows, &r.seconds) else {
                continue;
            };
            let memory = if r.memory_rows.len() >= MIN_ROWS {
                Fit::robust(&r.memory_rows, &r.memory)
            } else {
                None
            };
            estimator.stages.insert(stage, StageFit { seconds, memory });
        }
        estimator
    }

    /// The stages with their own fit.
    pub fn learned_stages(&self) -> Vec<Stage> {
        self.stages.keys().copied().collect()
    }

    /// The features of a trial of the model `sha256` (of `size_bytes`) at `settings`, its
    /// parameter count filled in from an earlier trial of the same model when there was one.
    pub fn features(
        &self,
        sha256: &str,
        size_bytes: u64,
        settings: &Settings,
        tool: &str,
    ) -> Features {
        let counts = self.models.get(sha256).copied().unwrap_or_default();
        Features {
            multiplications: counts.multiplications,
            largest_layer: counts.largest_layer,
            ..Features::of(settings, size_bytes, counts.parameters, tool)
        }
    }

    /// The columns of `features` (their order fixed at fit time).
    fn row(&self, f: &Features) -> Vec<f64> {
        let parameters = f
            .parameters
            .map_or_else(
                || f.size_bytes.max(1) as f64 * self.parameters_per_byte.unwrap_or(0.25),
                |p| p as f64,
            )
            .max(1.0);
        let multiplications = f.multiplications.map_or_else(
            || parameters * self.multiplications_per_parameter.unwrap_or(1.0),
            |m| m as f64,
        );
        let largest = f.largest_layer.map_or_else(
            || parameters * self.largest_per_parameter.unwrap_or(0.5),
            |l| l as f64,
        );
        let mut row = vec![
            parameters.ln(),
            multiplications.max(1.0).ln(),
            largest.max(1.0).ln(),
            f64::from(f.reuse_factor.max(1)).ln(),
            f64::from(f.precision_bits.max(1)).ln(),
            f64::from(u8::from(f.io_stream)),
            f64::from(u8::from(f.strategy == Strategy::Resource.as_str())),
            f64::from(u8::from(
                f.strategy == Strategy::DistributedArithmetic.as_str(),
            )),
            f.clock_period_ns.max(0.1).ln(),
        ];
        row.extend(
            self.families
                .iter()
                .map(|c| f64::from(u8::from(*c == f.family))),
        );
        row.extend(self.tools.iter().map(|c| f64::from(u8::from(*c == f.tool))));
        row
    }

    /// The prediction for a trial with `features` running `stages`.
    pub fn predict(&self, features: &Features, stages: &[Stage]) -> Prediction {
        let row = self.row(features);
        let mut seconds = 0.0;
        let mut variance = 0.0;
        let mut memory: Option<f64> = Some(0.0);
        let mut learned = !stages.is_empty();
        for stage in stages {
            match self.stages.get(stage) {
                Some(fit) => {
                    let (mu, sigma) = (fit.seconds.predict(&row), fit.seconds.sigma);
                    let mean = lognormal_mean(mu, sigma);
                    seconds += mean;
                    variance += ((sigma * sigma).exp() - 1.0) * mean * mean;
                    memory = match (memory, &fit.memory) {
                        (Some(m), Some(f)) => {
                            Some(m.max((f.predict(&row) + MEMORY_SPREADS * f.sigma).exp()))
                        }
                        _ => None,
                    };
                }
                None => {
                    learned = false;
                    memory = None;
                    let cost = crate::plan::static_cost(
                        features.size_bytes,
                        features.reuse_factor,
                        &[*stage],
                    );
                    let s = cost * self.seconds_per_cost.unwrap_or(1.0);
                    seconds += s;
                    // Unfitted: a spread as wide as a factor of e.
                    variance += s * s;
                }
            }
        }
        Prediction {
            seconds,
            sd_seconds: variance.sqrt(),
            memory_mib: memory.filter(|m| *m > 0.0).map(|m| {
                let mib = (m * MEMORY_MARGIN).ceil() as u64;
                mib.div_ceil(64).saturating_mul(64).max(MEMORY_FLOOR_MIB)
            }),
            learned,
        }
    }

    /// The reservation a trial asks for: the prediction when every stage's memory is learned
    /// and the sweep left memory at its default, else `default`; never above the larger of
    /// `largest` (the largest worker's offer, when known) and `default`, as a trial nobody
    /// may lease waits for ever.
    pub fn reservation(
        prediction: &Prediction,
        default: u64,
        explicit: bool,
        largest: Option<u64>,
    ) -> u64 {
        match prediction.memory_mib {
            Some(mib) if !explicit => mib.min(largest.unwrap_or(u64::MAX).max(default)),
            _ => default,
        }
    }
}

/// The mean of a log-normal whose log has mean `mu` and standard deviation `sigma`.
fn lognormal_mean(mu: f64, sigma: f64) -> f64 {
    (mu + sigma * sigma / 2.0).exp()
}

/// A stage's time limit from its fit (see [`Estimator::stage_limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageLimit {
    /// The stage.
    pub stage: Stage,
    /// The limit, seconds.
    pub seconds: f64,
    /// The fit's expected duration, seconds.
    pub predicted_seconds: f64,
}

impl Estimator {
    /// Time limits for the tool stages of a trial with `features` that have their own fit
    /// (convert and emulate are held by the driver's one limit):
    /// `multiple` × the duration the fit puts at its 99.9th percentile (3 spreads above its
    /// log-scale estimate), never below `floor_seconds`. None when `multiple` is not positive.
    pub fn stage_limits(
        &self,
        features: &Features,
        stages: &[Stage],
        multiple: f64,
        floor_seconds: f64,
    ) -> Vec<StageLimit> {
        if multiple.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Vec::new();
        }
        let row = self.row(features);
        stages
            .iter()
            .filter(|s| s.needs_xilinx_tools())
            .filter_map(|stage| {
                let fit = &self.stages.get(stage)?.seconds;
                let mu = fit.predict(&row);
                let upper = (mu + LIMIT_SPREADS * fit.sigma).exp();
                Some(StageLimit {
                    stage: *stage,
                    seconds: (multiple * upper).max(floor_seconds),
                    predicted_seconds: lognormal_mean(mu, fit.sigma),
                })
            })
            .collect()
    }
}

/// The most frequent non-empty values, at most [`MAX_CATEGORIES`], sorted.
fn frequent<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in values.filter(|v| !v.is_empty()) {
        *counts.entry(v).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out: Vec<String> = by_count
        .into_iter()
        .take(MAX_CATEGORIES)
        .map(|(v, _)| v.to_owned())
        .collect();
    out.sort();
    out
}

/// A bounded history, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    observations: std::collections::VecDeque<Observation>,
}

impl History {
    /// A history of `observations` (the newest [`HISTORY_LIMIT`] kept).
    pub fn new(observations: impl IntoIterator<Item = Observation>) -> History {
        let mut h = History::default();
        for o in observations {
            h.push(o);
        }
        h
    }

    /// Adds one, dropping the oldest beyond the limit.
    pub fn push(&mut self, o: Observation) {
        self.observations.push_back(o);
        while self.observations.len() > HISTORY_LIMIT {
            self.observations.pop_front();
        }
    }

    /// How many it holds.
    pub fn len(&self) -> usize {
        self.observations.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.observations.is_empty()
    }

    /// Fits an estimator on it.
    pub fn fit(&mut self) -> Estimator {
        Estimator::fit(self.observations.make_contiguous())
    }

    /// Its observations, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Observation> {
        self.observations.iter()
    }
}

/// Seconds until the trials `left` (not started) and `running` (each with its prediction
/// and the seconds it has run) are done on `slots` at once, with the standard deviation.
pub fn eta(left: &[Prediction], running: &[(Prediction, f64)], slots: usize) -> (f64, f64) {
    let slots = slots.max(1) as f64;
    let mut work = 0.0;
    let mut variance = 0.0;
    let mut longest: f64 = 0.0;
    for p in left {
        work += p.seconds;
        variance += p.sd_seconds * p.sd_seconds;
        longest = longest.max(p.seconds);
    }
    for (p, ran) in running {
        // A trial past its mean is expected to need a little more, not nothing.
        let rest = (p.seconds - ran).max(p.seconds * 0.1);
        work += rest;
        variance += p.sd_seconds * p.sd_seconds;
        longest = longest.max(rest);
    }
    ((work / slots).max(longest), variance.sqrt() / slots.sqrt())
}

#[cfg(test)]
mod tests;
