#![allow(clippy::unwrap_used)]

use super::synthetic::{self, SyntheticTrial};
use super::*;
use crate::results::{StageTiming, TrialFailure};

fn stages_of(t: &SyntheticTrial) -> Vec<Stage> {
    t.stages.iter().map(|s| s.stage).collect()
}

#[test]
fn precision_widths() {
    assert_eq!(precision_bits("ap_fixed<16,6>"), 16);
    assert_eq!(precision_bits("ap_int<8>"), 8);
    assert_eq!(precision_bits("float"), 32);
    assert_eq!(precision_bits("fixed<12,4,RND,SAT>"), 12);
    assert_eq!(precision_bits("nonsense"), 16);
}

#[test]
fn without_history_the_static_formula_orders() {
    let e = Estimator::fit(&[]);
    let big = Features::of(&Settings::default(), 1 << 20, None, "");
    let small = Features::of(&Settings::default(), 1 << 12, None, "");
    let stages = [Stage::Convert, Stage::Csynth];
    let (pb, ps) = (e.predict(&big, &stages), e.predict(&small, &stages));
    assert!(!pb.learned && pb.memory_mib.is_none());
    assert!(pb.seconds > ps.seconds);
    assert_eq!(
        pb.seconds,
        crate::plan::static_cost(1 << 20, 1, &stages),
        "no history: the bare formula"
    );
}

#[test]
fn a_learned_fit_predicts_held_out_trials_better_than_the_static_formula() {
    let all = synthetic::sweep(40, 0.2, 7);
    let (train, test) = all.split_at(300);
    let history: Vec<Observation> = train.iter().map(SyntheticTrial::observation).collect();
    let learned = Estimator::fit(&history);
    assert_eq!(learned.learned_stages(), [Stage::Convert, Stage::Csynth]);
    // The static formula scaled to seconds: history without any stage fit.
    let few: Vec<Observation> = history.iter().take(MIN_ROWS - 1).cloned().collect();
    let scaled = Estimator::fit(&few);
    let error = |e: &Estimator| {
        let mut errors: Vec<f64> = test
            .iter()
            .map(|t| {
                let f = e.features(
                    &format!("model-{}", t.model),
                    t.size_bytes,
                    &t.settings,
                    "vitis_hls 2023.2",
                );
                let p = e.predict(&f, &stages_of(t));
                (p.seconds.ln() - t.seconds().ln()).abs()
            })
            .collect();
        fit::median(std::mem::take(&mut errors))
    };
    let (learned_error, static_error) = (error(&learned), error(&scaled));
    assert!(
        learned_error < 0.25,
        "learned: median log error {learned_error}"
    );
    assert!(
        learned_error * 2.0 < static_error,
        "learned {learned_error} against static {static_error}"
    );
}

#[test]
fn memory_reservations_cover_the_true_peaks_and_respect_an_explicit_setting() {
    let (median, p90, covered) = synthetic::error_on_generated(40, 300, 0.2, 11);
    assert!(median < 0.25 && p90 < 0.8, "median {median}, p90 {p90}");
    assert!(covered > 0.9, "covered {covered}");
    let p = Prediction {
        seconds: 1.0,
        sd_seconds: 0.1,
        memory_mib: Some(20_000),
        learned: true,
    };
    assert_eq!(
        Estimator::reservation(&p, 4096, false, Some(16_384)),
        16_384
    );
    assert_eq!(Estimator::reservation(&p, 4096, false, None), 20_000);
    assert_eq!(Estimator::reservation(&p, 4096, true, None), 4096);
    let unknown = Prediction {
        memory_mib: None,
        ..p
    };
    assert_eq!(Estimator::reservation(&unknown, 4096, false, None), 4096);
}

#[test]
fn a_model_seen_before_is_predicted_with_its_parameter_count() {
    let all = synthetic::sweep(30, 0.0, 3);
    let history: Vec<Observation> = all
        .iter()
        .take(200)
        .map(SyntheticTrial::observation)
        .collect();
    let e = Estimator::fit(&history);
    let seen = &all[0];
    let f = e.features(
        &format!("model-{}", seen.model),
        seen.size_bytes,
        &seen.settings,
        "",
    );
    assert_eq!(f.parameters, Some(seen.parameters));
    let f = e.features("never-seen", seen.size_bytes, &seen.settings, "");
    assert_eq!(f.parameters, None);
}

#[test]
fn a_failed_result_observes_only_the_stages_before_its_failure() {
    let mut r = TrialResult::noop("k", "m.h5", Settings::default());
    r.status = TrialStatus::Failed;
    r.parameters = Some(1234);
    r.timings = [
        (Stage::Convert, 3.0),
        (Stage::Csynth, 60.0),
        (Stage::Cosim, 1.0),
    ]
    .into_iter()
    .map(|(stage, seconds)| StageTiming {
        stage,
        seconds,
        peak_memory_mib: 900,
        cpu_seconds: None,
    })
    .collect();
    r.failure = Some(TrialFailure {
        class: crate::failure::FailureClass::Timeout,
        reason: String::new(),
        stage: Some(Stage::Csynth),
        log_tail: String::new(),
        suggestion: None,
        peak_memory_mib: None,
        fix: None,
    });
    let o = Observation::from_result(&r, 5000).unwrap();
    assert_eq!(o.stages.len(), 1);
    assert_eq!(o.stages[0].stage, Stage::Convert);
    assert_eq!(o.features.parameters, Some(1234));
    r.failure.as_mut().unwrap().stage = Some(Stage::Convert);
    assert!(Observation::from_result(&r, 5000).is_none());
    r.status = TrialStatus::Success;
    r.failure = None;
    assert_eq!(Observation::from_result(&r, 5000).unwrap().stages.len(), 3);
}

#[test]
fn the_history_keeps_the_newest() {
    let all = synthetic::sweep(1, 0.0, 1);
    let mut h = History::default();
    for i in 0..HISTORY_LIMIT + 10 {
        let mut o = all[i % all.len()].observation();
        o.model = i.to_string();
        h.push(o);
    }
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h.iter().next().unwrap().model, "10");
}

#[test]
fn eta_spreads_the_work_over_the_slots_and_waits_for_the_longest() {
    let p = |s: f64| Prediction {
        seconds: s,
        sd_seconds: s / 2.0,
        memory_mib: None,
        learned: true,
    };
    let (eta4, _) = eta(&[p(10.0), p(10.0), p(10.0), p(10.0)], &[], 2);
    assert!((eta4 - 20.0).abs() < 1e-9);
    let (eta_long, _) = eta(&[p(100.0), p(1.0)], &[], 8);
    assert!((eta_long - 100.0).abs() < 1e-9);
    let (running, _) = eta(&[], &[(p(10.0), 4.0)], 1);
    assert!((running - 6.0).abs() < 1e-9);
}

#[test]
fn learned_stage_limits_cover_held_out_stages_and_respect_the_floor() {
    let all = synthetic::sweep(40, 0.2, 5);
    let (train, test) = all.split_at(300);
    let history: Vec<Observation> = train.iter().map(SyntheticTrial::observation).collect();
    let e = Estimator::fit(&history);
    let (mut within, mut stages) = (0, 0);
    for t in test {
        let f = t.features(true);
        let limits = e.stage_limits(&f, &stages_of(t), 1.0, 0.0);
        let tool: Vec<&StageCost> = t
            .stages
            .iter()
            .filter(|s| s.stage.needs_xilinx_tools())
            .collect();
        assert_eq!(limits.len(), tool.len(), "every tool stage is learned");
        assert!(!tool.is_empty());
        for (limit, truth) in limits.iter().zip(tool) {
            assert_eq!(limit.stage, truth.stage);
            assert!(limit.seconds > limit.predicted_seconds);
            stages += 1;
            within += usize::from(truth.seconds <= limit.seconds);
        }
    }
    let share = within as f64 / stages as f64;
    assert!(share > 0.97, "1× the 99.9th percentile covered {share}");
    let t = &test[0];
    let floored = e.stage_limits(&t.features(true), &stages_of(t), 4.0, 1e9);
    assert!(floored.iter().all(|l| l.seconds == 1e9));
    assert!(
        e.stage_limits(&t.features(true), &stages_of(t), 0.0, 1.0)
            .is_empty()
    );
    let unfitted = Estimator::fit(&history[..MIN_ROWS - 1]);
    assert!(
        unfitted
            .stage_limits(&t.features(true), &stages_of(t), 4.0, 1.0)
            .is_empty(),
        "no limit from the static formula"
    );
}

#[test]
fn multiplications_predict_what_parameters_cannot() {
    // Convolutional models: their weights say little about their work per inference.
    let mut rng = synthetic::Rng::new(9);
    let mut trials = Vec::new();
    for model in 0..30 {
        let parameters = (1e3 * 100f64.powf(rng.uniform())) as u64;
        let multiplications = (parameters as f64 * 1000f64.powf(rng.uniform())) as u64;
        for rf in [1u32, 2, 4, 8] {
            let settings = Settings {
                reuse_factor: rf,
                ..Settings::default()
            };
            let seconds = 1e-3
                * (multiplications as f64).powf(0.8)
                * f64::from(rf).powf(-0.5)
                * (0.1 * rng.normal()).exp();
            let features = Features {
                multiplications: Some(multiplications),
                largest_layer: Some(parameters / 3),
                ..Features::of(&settings, parameters * 4, Some(parameters), "")
            };
            trials.push(Observation {
                model: format!("cnn-{model}"),
                features,
                stages: vec![StageCost {
                    stage: Stage::Csynth,
                    seconds,
                    peak_mib: 1000,
                    cpu_seconds: Some(seconds),
                }],
            });
        }
    }
    let (train, test) = trials.split_at(80);
    let without: Vec<Observation> = train
        .iter()
        .cloned()
        .map(|mut o| {
            o.features.multiplications = None;
            o.features.largest_layer = None;
            o
        })
        .collect();
    let error = |e: &Estimator, strip: bool| {
        let errors: Vec<f64> = test
            .iter()
            .map(|o| {
                let mut f = o.features.clone();
                if strip {
                    f.multiplications = None;
                    f.largest_layer = None;
                }
                let p = e.predict(&f, &[Stage::Csynth]);
                (p.seconds.ln() - o.stages[0].seconds.ln()).abs()
            })
            .collect();
        fit::median(errors)
    };
    let with = error(&Estimator::fit(train), false);
    let blind = error(&Estimator::fit(&without), true);
    eprintln!("median log error: with multiplications {with:.3}, without {blind:.3}");
    assert!(with < 0.2, "with multiplications: median log error {with}");
    assert!(with * 3.0 < blind, "with {with} against without {blind}");
    // A later trial of a model seen converting gets its counts from the history.
    let e = Estimator::fit(train);
    let f = e.features("cnn-0", 1, &Settings::default(), "");
    assert_eq!(f.multiplications, train[0].features.multiplications);
    assert_eq!(f.parameters, train[0].features.parameters);
}
