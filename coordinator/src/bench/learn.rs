//! Makespan with estimates learned online: a generated sweep whose true durations follow its
//! features with noise (`estimate::synthetic`, not any estimate) runs through a coordinator
//! whose estimator starts with no history; lessees sleep each trial's true duration and
//! complete with a `result.json` saying what it cost, so the coordinator learns as it goes.
//! Beside it, the same durations list-scheduled in static-formula and FIFO order, and the
//! error of the sweep's ETA once 20 % had finished.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hlsfarm_common::estimate::synthetic;
use hlsfarm_common::plan::static_cost;
use hlsfarm_common::results::{StageTiming, TrialResult};
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::{ToolVersion, Toolchain};
use hlsfarm_proto::v1;

use super::makespan::list_schedule;
use super::{Rig, lease_request};

/// The settings that tell a grid point apart, as a lookup key.
fn point_key(model: &str, s: &hlsfarm_common::Settings) -> String {
    format!(
        "{model}|{}|{}|{}|{}",
        s.reuse_factor,
        s.io_type.as_str(),
        s.precision,
        s.strategy.as_str()
    )
}

pub(super) async fn learn(
    models: usize,
    slots: u32,
    median_ms: u64,
    noise: f64,
    seed: u64,
) -> anyhow::Result<()> {
    // The estimator's own error on a generated history, first.
    for train in [50, 200, 1000] {
        let (median, p90, covered) = synthetic::error_on_generated(60, train, noise, seed);
        println!(
            "estimator: trained on {train} generated trials, asked about the rest: duration error median {:.1} %, p90 {:.1} %; true peak within the reservation for {:.1} %",
            median * 100.0,
            p90 * 100.0,
            covered * 100.0
        );
    }
    let trials = synthetic::sweep(models, noise, seed);
    // True seconds scaled so the median trial takes `median_ms`.
    let mut totals: Vec<f64> = trials
        .iter()
        .map(synthetic::SyntheticTrial::seconds)
        .collect();
    totals.sort_by(f64::total_cmp);
    let scale = median_ms as f64 / 1000.0 / totals[totals.len() / 2].max(1e-9);
    let rig = Rig::start(&[])?;
    let mut op = rig.operator()?;
    let mut inputs = Vec::new();
    let mut names = HashMap::new();
    let mut by_point = HashMap::new();
    for m in 0..models {
        let Some(t) = trials.iter().find(|t| t.model == m) else {
            continue;
        };
        let name = format!("m{m:03}.h5");
        let input = super::rig::upload_model(
            &mut op,
            &name,
            &format!("learn {seed} {m} "),
            t.size_bytes as usize,
        )
        .await?;
        names.insert(m, name);
        inputs.push(input);
    }
    for t in &trials {
        let name = &names[&t.model];
        by_point.insert(point_key(name, &t.settings), t.clone());
    }
    let spec = v1::SweepSpec {
        name: "learn".into(),
        models: inputs,
        grid: Some(v1::SettingsGrid {
            reuse_factor: vec![1, 4, 16],
            io_type: vec![v1::IoType::Parallel as i32, v1::IoType::Stream as i32],
            precision: vec!["ap_fixed<8,3>".into(), "ap_fixed<16,6>".into()],
            strategy: vec![v1::Strategy::Latency as i32, v1::Strategy::Resource as i32],
            ..Default::default()
        }),
        stages: vec![v1::Stage::Convert as i32, v1::Stage::Csynth as i32],
        priority: 1,
        toolchain: Some(v1::ToolchainSpec {
            hls4ml_version: "1.3.0".into(),
            tool: "vitis_hls".into(),
            tool_version: "2023.2".into(),
        }),
        ..Default::default()
    };
    let by_point = Arc::new(by_point);
    let store = rig.store.clone();
    let mut lessees = Vec::new();
    for slot in 0..slots {
        lessees.push(rig.worker(&format!("slot-{slot}")).await?);
    }
    let submitted = op
        .submit_sweep(v1::SubmitSweepRequest { spec: Some(spec) })
        .await?
        .into_inner();
    let sweep_id = submitted.sweep_id.clone();
    let total = trials.len();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The true durations in the order the coordinator leased them.
    let leased: Arc<Mutex<Vec<f64>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, mut w) in lessees.into_iter().enumerate() {
        let (by_point, store, done) = (by_point.clone(), store.clone(), done.clone());
        let leased = leased.clone();
        tasks.spawn(async move {
            let id = format!("slot-{slot}");
            loop {
                let got = w
                    .lease(lease_request(&id, 1, 300))
                    .await?
                    .into_inner()
                    .trials;
                let Some(t) = got.into_iter().next() else {
                    return Ok::<(), anyhow::Error>(());
                };
                let model = t.model.clone().unwrap_or_default();
                let settings: hlsfarm_common::Settings = t
                    .settings
                    .clone()
                    .unwrap_or_default()
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let truth = by_point
                    .get(&point_key(&model.name, &settings))
                    .ok_or_else(|| anyhow::anyhow!("no true cost for {}", model.name))?;
                let seconds = truth.seconds() * scale;
                if let Ok(mut l) = leased.lock() {
                    l.push(seconds);
                }
                tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
                let key = t
                    .token
                    .as_ref()
                    .map(|k| k.trial_key.clone())
                    .unwrap_or_default();
                let mut result = TrialResult::noop(&key, &model.name, settings);
                result.model.sha256 = model.sha256.clone();
                result.stages = vec![Stage::Convert, Stage::Csynth];
                result.parameters = Some(truth.parameters);
                result.toolchain = Toolchain {
                    hls4ml_version: "1.3.0".into(),
                    tool: Some(ToolVersion {
                        name: "vitis_hls".into(),
                        version: "2023.2".into(),
                    }),
                };
                result.timings = truth
                    .stages
                    .iter()
                    .map(|s| StageTiming {
                        stage: s.stage,
                        seconds: s.seconds * scale,
                        peak_memory_mib: s.peak_mib,
                        cpu_seconds: None,
                    })
                    .collect();
                let json = serde_json::to_string(&result)?;
                let folder = store.join(&t.staging_prefix);
                std::fs::create_dir_all(&folder)?;
                std::fs::write(folder.join("result.json"), &json)?;
                w.complete(v1::CompleteRequest {
                    worker_id: id.clone(),
                    token: t.token,
                    result: Some(v1::TrialResult {
                        result_json: json,
                        artifacts: vec!["result.json".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await?;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    // The ETA, read as each tenth of the sweep from 20 % finishes.
    let etas: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
    let watcher = {
        let (etas, done) = (etas.clone(), done.clone());
        let mut op = rig.operator()?;
        let sweep_id = sweep_id.clone();
        tokio::spawn(async move {
            let mut next = 2;
            while next < 10 {
                if done.load(std::sync::atomic::Ordering::Relaxed) * 10 >= total * next {
                    let at = started.elapsed().as_secs_f64();
                    if let Ok(status) = op.get_status(v1::GetStatusRequest::default()).await
                        && let Some(eta) = status
                            .into_inner()
                            .sweeps
                            .iter()
                            .find(|s| s.sweep_id == sweep_id)
                            .and_then(|s| s.eta_seconds)
                        && let Ok(mut e) = etas.lock()
                    {
                        e.push((at, eta));
                    }
                    next += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    watcher.abort();
    // The last lease call of each lessee waits out its 300 ms poll for nothing: not work.
    let measured = started.elapsed().as_secs_f64() - 0.3;
    let durations: Vec<f64> = trials.iter().map(|t| t.seconds() * scale).collect();
    let sum: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    let bound = (sum / f64::from(slots)).max(longest);
    // Static order: the formula's cost, costliest first (what the queue does unlearned).
    let mut by_static: Vec<(f64, f64)> = trials
        .iter()
        .zip(&durations)
        .map(|(t, d)| {
            let stages = [Stage::Convert, Stage::Csynth];
            (
                static_cost(t.size_bytes, t.settings.reuse_factor, &stages),
                *d,
            )
        })
        .collect();
    by_static.sort_by(|a, b| b.0.total_cmp(&a.0));
    let static_order: Vec<f64> = by_static.iter().map(|(_, d)| *d).collect();
    let mut sorted = durations.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    println!(
        "learned makespan: {total} trials ({models} models × 24 points, true durations from features with noise {noise}, median {median_ms} ms, total {:.1} s, longest {:.2} s) on {slots} slots, estimator starting empty: {:.2} s measured, lower bound {:.2} s, ratio {:.3} (target ≤ 1.05)",
        sum,
        longest,
        measured,
        bound,
        measured / bound
    );
    let learned_order = leased.lock().map(|l| l.clone()).unwrap_or_default();
    println!(
        "learned makespan: same durations simulated (no dispatch overhead): the order leased {:.3}, static-formula order {:.3}, FIFO order {:.3}, true longest-first {:.3}",
        list_schedule(&learned_order, slots) / bound,
        list_schedule(&static_order, slots) / bound,
        list_schedule(&durations, slots) / bound,
        list_schedule(&sorted, slots) / bound
    );
    let etas = etas.lock().map(|e| e.clone()).unwrap_or_default();
    let mut errors: Vec<f64> = etas
        .iter()
        .map(|(at, eta)| {
            let actual = (measured - at).max(1e-3);
            (eta - actual).abs() / actual
        })
        .collect();
    errors.sort_by(f64::total_cmp);
    if errors.is_empty() {
        println!("learned makespan: no ETA was read");
    } else {
        println!(
            "learned makespan: ETA error from 20 % finished ({} readings, at each further tenth): median {:.1} %, p90 {:.1} %",
            errors.len(),
            errors[errors.len() / 2] * 100.0,
            errors[((errors.len() as f64 * 0.9) as usize).min(errors.len() - 1)] * 100.0
        );
    }
    Ok(())
}
