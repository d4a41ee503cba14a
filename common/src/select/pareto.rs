//! Pareto tiers over objectives and the ranking of a finished sweep.

use super::{Objective, metric};
use crate::results::{TrialResult, TrialStatus};
/// True when `a` is at least as good as `b` in every objective and better in one.
pub(super) fn dominates(a: &[f64], b: &[f64], objectives: &[Objective]) -> bool {
    let mut better = false;
    for ((x, y), o) in a.iter().zip(b).zip(objectives) {
        let (x, y) = if o.maximize { (*x, *y) } else { (-*x, -*y) };
        if x < y {
            return false;
        }
        if x > y {
            better = true;
        }
    }
    better
}

/// Non-dominated sorting: each point's Pareto tier (1 = the front, 2 = the front of what is
/// left, ...).
pub fn pareto_tiers(points: &[Vec<f64>], objectives: &[Objective]) -> Vec<u32> {
    let mut tier = vec![0u32; points.len()];
    let mut left: Vec<usize> = (0..points.len()).collect();
    let mut t = 1;
    while !left.is_empty() {
        let front: Vec<usize> = left
            .iter()
            .copied()
            .filter(|&i| {
                !left
                    .iter()
                    .any(|&j| j != i && dominates(&points[j], &points[i], objectives))
            })
            .collect();
        for &i in &front {
            tier[i] = t;
        }
        left.retain(|i| !front.contains(i));
        t += 1;
    }
    tier
}

/// A finished sweep ranked by objectives: `(index, tier)` in rank order (successful trials
/// with every objective, by Pareto tier, then by the first objective), and the indices left
/// out (failed, or missing an objective).
pub fn rank(results: &[&TrialResult], objectives: &[Objective]) -> (Vec<(usize, u32)>, Vec<usize>) {
    let mut inside = Vec::new();
    let mut out = Vec::new();
    for (i, r) in results.iter().enumerate() {
        let values: Option<Vec<f64>> = objectives.iter().map(|o| metric(r, &o.metric)).collect();
        match values {
            Some(v) if r.status == TrialStatus::Success => inside.push((i, v)),
            _ => out.push(i),
        }
    }
    let points: Vec<Vec<f64>> = inside.iter().map(|(_, v)| v.clone()).collect();
    let tiers = pareto_tiers(&points, objectives);
    let mut order: Vec<usize> = (0..inside.len()).collect();
    order.sort_by(|&a, &b| {
        tiers[a].cmp(&tiers[b]).then_with(|| {
            objectives
                .iter()
                .enumerate()
                .map(|(k, o)| {
                    let (x, y) = (points[a][k], points[b][k]);
                    if o.maximize {
                        y.total_cmp(&x)
                    } else {
                        x.total_cmp(&y)
                    }
                })
                .find(|c| c.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    });
    (
        order.into_iter().map(|k| (inside[k].0, tiers[k])).collect(),
        out,
    )
}

/// The objectives a ranking uses when none are given: accuracy (the validation set's, else
/// the search's `val_accuracy`) where known, then LUT and latency where synthesized, else the
/// model's parameters.
pub fn default_objectives(results: &[&TrialResult]) -> Vec<Objective> {
    let has = |name: &str| results.iter().any(|r| metric(r, name).is_some());
    let mut out = Vec::new();
    let obj = |m: &str, maximize| Objective {
        metric: m.to_owned(),
        maximize,
    };
    if has("accuracy") {
        out.push(obj("accuracy", true));
    } else if has("val_accuracy") {
        out.push(obj("val_accuracy", true));
    }
    if has("lut") {
        out.push(obj("lut", false));
        if has("latency_ns") {
            out.push(obj("latency_ns", false));
        }
    } else if has("parameters") {
        out.push(obj("parameters", false));
    }
    out
}
