//! Generated sweeps whose true costs depend on their features, with noise, and not on any
//! estimate: what the estimator's benchmarks and tests learn from. The law is not the static
//! formula's: the reuse factor divides the work almost linearly (the static formula takes
//! its square root), `io_stream`, narrow precision and the `Resource` strategy cut it, and
//! the parameter count enters sub-linearly.

use crate::settings::{IoType, Settings, Strategy};
use crate::stage::Stage;

use super::{Features, Observation, StageCost};

/// A seeded generator (splitmix64), for reproducible benchmarks.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[((self.uniform() * items.len() as f64) as usize).min(items.len() - 1)]
    }
}

/// One generated trial: its settings, model, true per-stage costs.
#[derive(Debug, Clone)]
pub struct SyntheticTrial {
    /// Index of its model.
    pub model: usize,
    /// The model's parameter count.
    pub parameters: u64,
    /// The model file's size, bytes (4 per parameter, 12 for a file saved with its
    /// optimizer's state, plus a header).
    pub size_bytes: u64,
    /// Its settings.
    pub settings: Settings,
    /// What each stage truly costs.
    pub stages: Vec<StageCost>,
}

impl SyntheticTrial {
    /// Its features, the parameter count known when `converted`.
    pub fn features(&self, converted: bool) -> Features {
        Features::of(
            &self.settings,
            self.size_bytes,
            converted.then_some(self.parameters),
            "vitis_hls 2023.2",
        )
    }

    /// The observation its run leaves.
    pub fn observation(&self) -> Observation {
        Observation {
            model: format!("model-{}", self.model),
            features: self.features(true),
            stages: self.stages.clone(),
        }
    }

    /// Its true total, seconds.
    pub fn seconds(&self) -> f64 {
        self.stages.iter().map(|s| s.seconds).sum()
    }
}

/// The settings points of a generated sweep's grid: reuse factor × io type × precision ×
/// strategy.
pub fn grid() -> Vec<Settings> {
    let mut out = Vec::new();
    for rf in [1, 4, 16] {
        for io in [IoType::Parallel, IoType::Stream] {
            for precision in ["ap_fixed<8,3>", "ap_fixed<16,6>"] {
                for strategy in [Strategy::Latency, Strategy::Resource] {
                    out.push(Settings {
                        reuse_factor: rf,
                        io_type: io,
                        precision: precision.into(),
                        strategy,
                        ..Settings::default()
                    });
                }
            }
        }
    }
    out
}

/// Model parameter counts: log-normal around 20,000 (the heavy tail of a search's sizes).
pub fn model_parameters(models: usize, rng: &mut Rng) -> Vec<u64> {
    (0..models)
        .map(|_| (20_000.0 * (1.1 * rng.normal()).exp()).max(200.0) as u64)
        .collect()
}

/// The true cost of `settings` on a model of `parameters`, with noise of log-sd `noise`.
pub fn true_costs(
    parameters: u64,
    settings: &Settings,
    noise: f64,
    rng: &mut Rng,
) -> Vec<StageCost> {
    let p = parameters as f64;
    let rf = f64::from(settings.reuse_factor.max(1));
    let bits = f64::from(super::precision_bits(&settings.precision));
    let stream = if settings.io_type == IoType::Stream {
        0.45
    } else {
        1.0
    };
    let resource = if settings.strategy == Strategy::Resource {
        0.6
    } else {
        1.0
    };
    let work = p.powf(0.8) * rf.powf(-0.9) * stream * resource * (bits / 16.0).powf(1.5);
    let mut stage = |stage: Stage, seconds: f64, mib: f64| StageCost {
        stage,
        seconds: seconds * (noise * rng.normal()).exp(),
        peak_mib: (mib * (0.5 * noise * rng.normal()).exp()) as u64,
        cpu_seconds: None,
    };
    vec![
        stage(Stage::Convert, 2.0 + p.powf(0.5) * 0.01, 400.0 + p / 500.0),
        stage(Stage::Csynth, 0.05 * work, 600.0 + 0.3 * work),
    ]
}

/// A sweep of `models` models over [`grid`], shuffled, with true costs.
pub fn sweep(models: usize, noise: f64, seed: u64) -> Vec<SyntheticTrial> {
    let mut rng = Rng::new(seed);
    let parameters = model_parameters(models, &mut rng);
    let points = grid();
    let mut out = Vec::with_capacity(models * points.len());
    for (m, p) in parameters.iter().enumerate() {
        // A third of the files were saved with the optimizer's state (Adam's two moments
        // beside each weight): three times the bytes for the same parameters.
        let copies = *rng.pick(&[1, 1, 3]);
        for settings in &points {
            out.push(SyntheticTrial {
                model: m,
                parameters: *p,
                size_bytes: copies * 4 * p + 2048,
                settings: settings.clone(),
                stages: true_costs(*p, settings, noise, &mut rng),
            });
        }
    }
    // Shuffled (Fisher–Yates): a search's models arrive in no useful order.
    for i in (1..out.len()).rev() {
        let j = ((rng.uniform() * (i + 1) as f64) as usize).min(i);
        out.swap(i, j);
    }
    out
}

/// The estimator's error on a generated history: fitted on the first `train` of `trials`
/// generated ones, asked about the rest (their models' parameter counts known from the
/// training rows where they were seen). Returns the median and 90th-percentile relative
/// error of the trial duration, and the share of the rest whose true peak memory was within
/// the predicted reservation.
pub fn error_on_generated(models: usize, train: usize, noise: f64, seed: u64) -> (f64, f64, f64) {
    let all = sweep(models, noise, seed);
    let train = train.min(all.len().saturating_sub(1));
    let (fit_on, ask) = all.split_at(train);
    let history: Vec<Observation> = fit_on.iter().map(SyntheticTrial::observation).collect();
    let estimator = super::Estimator::fit(&history);
    let mut errors = Vec::new();
    let mut covered = 0usize;
    for t in ask {
        let stages: Vec<Stage> = t.stages.iter().map(|s| s.stage).collect();
        let features = estimator.features(
            &format!("model-{}", t.model),
            t.size_bytes,
            &t.settings,
            "vitis_hls 2023.2",
        );
        let p = estimator.predict(&features, &stages);
        errors.push((p.seconds - t.seconds()).abs() / t.seconds());
        let peak = t.stages.iter().map(|s| s.peak_mib).max().unwrap_or(0);
        if p.memory_mib.is_some_and(|m| m >= peak) {
            covered += 1;
        }
    }
    errors.sort_by(f64::total_cmp);
    let at = |q: f64| {
        errors
            .get(((errors.len() as f64 * q) as usize).min(errors.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    (at(0.5), at(0.9), covered as f64 / ask.len().max(1) as f64)
}
