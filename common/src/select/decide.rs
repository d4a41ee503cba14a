//! A gate's decisions: which trials go on, wait as backups or are held back, and the
//! summary of them in words.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Gate, Objective, metric, pareto_tiers};
use crate::results::{TrialResult, TrialStatus};

/// What a gate decided for one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The gate (0 = the first).
    pub gate: usize,
    /// The trial's Pareto tier among those within the bounds (1 = front), where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u32>,
    /// `primary` (goes on), `backup` (goes on if a primary fails), `held` (stops here).
    pub role: Role,
    /// Why, in words.
    pub reason: String,
    /// For a promoted backup: the primary whose failure promoted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_for: Option<String>,
}

/// A trial's part at a gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Goes on to the next stages.
    Primary,
    /// Waits; goes on when a primary fails.
    Backup,
    /// Stops at the gate.
    Held,
}

/// One trial before a gate: its key and its result so far (None when it failed before).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The trial key.
    pub key: &'a str,
    /// Its result up to the gate's stage.
    pub result: Option<&'a TrialResult>,
}

fn fmt_value(v: f64) -> String {
    let shortest = v.to_string();
    if shortest.len() <= 8 {
        shortest
    } else {
        format!("{v:.4}")
    }
}

impl Gate {
    /// The gate's decision for every candidate (by key); a candidate that failed before the
    /// gate is not in it.
    pub fn decide(&self, gate: usize, candidates: &[Candidate<'_>]) -> BTreeMap<String, Decision> {
        let mut out = BTreeMap::new();
        let held = |reason: String| Decision {
            gate,
            tier: None,
            role: Role::Held,
            reason,
            promoted_for: None,
        };
        let mut inside: Vec<(&str, Vec<f64>)> = Vec::new();
        for c in candidates {
            let Some(r) = c.result.filter(|r| r.status == TrialStatus::Success) else {
                continue;
            };
            let mut why = None;
            for (name, bound) in &self.min {
                match metric(r, name) {
                    None => why = Some(format!("it has no {name}")),
                    Some(v) if v < *bound => {
                        why = Some(format!("{name} {} is below {}", fmt_value(v), bound))
                    }
                    _ => {}
                }
            }
            for (name, bound) in &self.max {
                match metric(r, name) {
                    None => why = Some(format!("it has no {name}")),
                    Some(v) if v > *bound => {
                        why = Some(format!("{name} {} is above {}", fmt_value(v), bound))
                    }
                    _ => {}
                }
            }
            let values: Vec<Option<f64>> = self
                .objectives
                .iter()
                .map(|o| metric(r, &o.metric))
                .collect();
            if why.is_none()
                && let Some((o, _)) = self
                    .objectives
                    .iter()
                    .zip(&values)
                    .find(|(_, v)| v.is_none())
            {
                why = Some(format!("it has no {}", o.metric));
            }
            match why {
                Some(reason) => {
                    out.insert(c.key.to_owned(), held(reason));
                }
                None => inside.push((c.key, values.into_iter().flatten().collect())),
            }
        }
        if self.objectives.is_empty() {
            for (key, _) in inside {
                out.insert(
                    key.to_owned(),
                    Decision {
                        gate,
                        tier: None,
                        role: Role::Primary,
                        reason: "within the bounds".to_owned(),
                        promoted_for: None,
                    },
                );
            }
            return out;
        }
        let points: Vec<Vec<f64>> = inside.iter().map(|(_, v)| v.clone()).collect();
        let tiers = pareto_tiers(&points, &self.objectives);
        // Primaries in order: the front first, each tier by its first objective.
        let mut order: Vec<usize> = (0..inside.len()).collect();
        let first = &self.objectives[0];
        order.sort_by(|&a, &b| {
            tiers[a].cmp(&tiers[b]).then_with(|| {
                let (x, y) = (points[a][0], points[b][0]);
                if first.maximize {
                    y.total_cmp(&x)
                } else {
                    x.total_cmp(&y)
                }
            })
        });
        let mut primaries = 0usize;
        for i in order {
            let tier = tiers[i];
            let (role, reason) = if tier == 1 && self.top.is_none_or(|k| primaries < k) {
                primaries += 1;
                (Role::Primary, "on the Pareto front".to_owned())
            } else if tier == 1 {
                (
                    Role::Backup,
                    format!("on the front but past the top {}", self.top.unwrap_or(0)),
                )
            } else if tier <= self.tiers {
                (Role::Backup, format!("Pareto tier {tier} (a backup)"))
            } else {
                (
                    Role::Held,
                    format!(
                        "dominated: Pareto tier {tier}, past the {} kept",
                        self.tiers
                    ),
                )
            };
            out.insert(
                inside[i].0.to_owned(),
                Decision {
                    gate,
                    tier: Some(tier),
                    role,
                    reason,
                    promoted_for: None,
                },
            );
        }
        out
    }

    /// The backup to promote when `failed` (a primary) failed after the gate: the waiting
    /// backup nearest to it in the objectives (each scaled by its range), of the lowest tier.
    pub fn backup_for<'a>(
        &self,
        failed: &TrialResult,
        waiting: &[(&'a str, &TrialResult, u32)],
    ) -> Option<&'a str> {
        if waiting.is_empty() {
            return None;
        }
        if self.objectives.is_empty() {
            return waiting.first().map(|w| w.0);
        }
        let value = |r: &TrialResult, o: &Objective| metric(r, &o.metric).unwrap_or(0.0);
        let ranges: Vec<f64> = self
            .objectives
            .iter()
            .map(|o| {
                let vs = waiting
                    .iter()
                    .map(|w| value(w.1, o))
                    .chain([value(failed, o)]);
                let (lo, hi) = vs.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
                (hi - lo).max(1e-12)
            })
            .collect();
        waiting
            .iter()
            .map(|(key, r, tier)| {
                let d: f64 = self
                    .objectives
                    .iter()
                    .zip(&ranges)
                    .map(|(o, range)| ((value(r, o) - value(failed, o)) / range).powi(2))
                    .sum();
                (*tier, d, *key)
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)))
            .map(|(_, _, key)| key)
    }
}

impl Gate {
    /// What gate number `gate` (0 = the first) decided, in lines: how many of the `reached`
    /// trials go on, wait or are held back (and how many of them had `failed_before` the
    /// gate), then one line per reason for holding back.
    pub fn summary(
        &self,
        gate: usize,
        decisions: &BTreeMap<String, Decision>,
        reached: usize,
        failed_before: usize,
    ) -> Vec<String> {
        let count = |role: Role| decisions.values().filter(|d| d.role == role).count();
        let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
        for d in decisions.values().filter(|d| d.role == Role::Held) {
            let why = if d.reason.starts_with("dominated") {
                "dominated"
            } else {
                d.reason.as_str()
            };
            *reasons.entry(why).or_default() += 1;
        }
        let mut lines = vec![format!(
            "gate {} ({}): {} of {reached} trials go on, {} wait as backups, {} held back{}",
            gate + 1,
            self.describe(),
            count(Role::Primary),
            count(Role::Backup),
            count(Role::Held),
            if failed_before > 0 {
                format!(" ({failed_before} failed before the gate)")
            } else {
                String::new()
            }
        )];
        for (why, n) in reasons {
            lines.push(format!("  held back: {n} x {why}"));
        }
        lines
    }
}
