//! Makespan of heavy-tailed trials against its lower bound, and FIFO order's beside it.

use std::time::{Duration, Instant};

use hlsfarm_proto::v1;

use super::{Rig, failed, lease_request, sweep};

/// Log-normal durations from a seeded generator (splitmix64 + Box-Muller), in ms.
pub(super) fn lognormal_ms(n: u32, median_ms: u64, sigma: f64, seed: u64) -> Vec<f64> {
    let mut rng = hlsfarm_common::estimate::synthetic::Rng::new(seed);
    (0..n)
        .map(|_| median_ms as f64 * (sigma * rng.normal()).exp())
        .collect()
}

/// List scheduling of `durations`, in the order given, on `slots`: the makespan.
pub(super) fn list_schedule(durations: &[f64], slots: u32) -> f64 {
    let mut free = vec![0.0f64; slots.max(1) as usize];
    for d in durations {
        if let Some(earliest) = free.iter_mut().min_by(|a, b| a.total_cmp(b)) {
            *earliest += d;
        }
    }
    free.into_iter().fold(0.0, f64::max)
}

pub(super) async fn makespan(
    trials: u32,
    slots: u32,
    median_ms: u64,
    sigma: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let rig = Rig::start(&[])?;
    let mut op = rig.operator()?;
    let durations = lognormal_ms(trials, median_ms, sigma, seed);
    let mut by_name = std::collections::HashMap::new();
    let mut models = Vec::new();
    for (i, d) in durations.iter().enumerate() {
        // The model's size tracks its duration: the coordinator's cost estimate sees it.
        let size = 1024 + (*d * 100.0) as usize;
        let name = format!("m{i:04}.h5");
        let input =
            super::rig::upload_model(&mut op, &name, &format!("makespan {seed} {i} "), size)
                .await?;
        by_name.insert(name, *d);
        models.push(input);
    }
    let mut spec = sweep(models.remove(0), 1);
    spec.models.extend(models);
    spec.grid = Some(v1::SettingsGrid::default());
    let by_name = std::sync::Arc::new(by_name);
    let mut lessees = Vec::new();
    for slot in 0..slots {
        lessees.push(rig.worker(&format!("slot-{slot}")).await?);
    }
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(slots as usize + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, mut w) in lessees.into_iter().enumerate() {
        let by_name = by_name.clone();
        let go = go.clone();
        tasks.spawn(async move {
            let id = format!("slot-{slot}");
            go.wait().await;
            loop {
                let got = w
                    .lease(lease_request(&id, 1, 300))
                    .await?
                    .into_inner()
                    .trials;
                let Some(t) = got.into_iter().next() else {
                    return Ok::<(), anyhow::Error>(());
                };
                let d = t
                    .model
                    .as_ref()
                    .and_then(|m| by_name.get(&m.name))
                    .copied()
                    .unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(d / 1000.0)).await;
                w.complete(failed(&id, t.token)).await?;
            }
        });
    }
    // The clock starts when the sweep is accepted and the lessees are polling.
    op.submit_sweep(v1::SubmitSweepRequest { spec: Some(spec) })
        .await?;
    let started = Instant::now();
    go.wait().await;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // The last lease call of each lessee waits out its 300 ms poll for nothing: not work.
    let measured = started.elapsed().as_secs_f64() * 1000.0 - 300.0;
    let total: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    let bound = (total / f64::from(slots)).max(longest);
    let fifo = list_schedule(&durations, slots);
    let mut sorted = durations.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let lpt = list_schedule(&sorted, slots);
    println!(
        "makespan: {trials} trials (log-normal, median {median_ms} ms, sigma {sigma}, total {:.1} s, longest {:.2} s) on {slots} slots: {:.2} s measured, lower bound {:.2} s, ratio {:.3} (target ≤ 1.05)",
        total / 1000.0,
        longest / 1000.0,
        measured / 1000.0,
        bound / 1000.0,
        measured / bound
    );
    println!(
        "makespan: same durations simulated: FIFO order ratio {:.3}, longest-first ratio {:.3}",
        fifo / bound,
        lpt / bound
    );
    Ok(())
}
