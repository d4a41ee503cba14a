//! Choosing among a sweep's trials by named metrics: the figures a trial has (accuracy,
//! parameters, resources, latency, anything its search recorded), Pareto tiers over
//! objectives, the gates of a funnel (only the selected trials go on to the tool stages; a
//! primary that fails promotes its backup) and the ranking of a finished sweep.
//!
//! ```toml
//! [[select]]                       # one table per gate, applied in order
//! after = "emulate"                # the stage the gate waits for
//! objectives = ["val_accuracy:max", "parameters:min"]
//! min = { val_accuracy = 0.85 }    # and/or max = { ... }
//! tiers = 2                        # primaries, then backups (default 2)
//! top = 10                         # at most this many primaries (optional)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::results::TrialResult;
use crate::stage::Stage;

/// The metrics every trial may have, with what they mean; a search's own metrics and
/// hyperparameters (by their names) come on top.
pub const METRICS: &[(&str, &str)] = &[
    (
        "accuracy",
        "fixed-point accuracy on the validation set (float where there is no emulation)",
    ),
    (
        "float_accuracy",
        "float model's accuracy on the validation set",
    ),
    (
        "hls_accuracy",
        "emulated model's accuracy on the validation set",
    ),
    ("accuracy_drop", "float minus fixed-point accuracy"),
    ("auc", "ROC AUC of the emulated (else float) binary output"),
    ("float_auc", "ROC AUC of the float binary output"),
    ("parameters", "the model's weights"),
    ("max_abs_diff", "emulation's largest |float - fixed|"),
    ("agreement", "emulation's agreement with the float model"),
    (
        "lut",
        "LUTs (Vivado synthesis where it ran, else the HLS estimate)",
    ),
    ("ff", "flip-flops (Vivado where it ran, else HLS)"),
    ("dsp", "DSPs (Vivado where it ran, else HLS)"),
    (
        "bram",
        "BRAM (Vivado tiles where it ran, else HLS 18k blocks)",
    ),
    ("hls_lut", "LUTs, HLS estimate"),
    ("hls_ff", "flip-flops, HLS estimate"),
    ("hls_dsp", "DSPs, HLS estimate"),
    ("latency_cycles", "worst-case latency, cycles"),
    ("latency_ns", "worst-case latency, ns"),
    ("interval_cycles", "largest initiation interval, cycles"),
    ("fmax_mhz", "1000 / the HLS estimated clock period"),
    ("reuse_factor", "the trial's reuse factor"),
    ("clock_period_ns", "the trial's target clock"),
];

/// One objective: a metric and whether more is better.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Objective {
    /// The metric's name.
    pub metric: String,
    /// True for `:max`.
    pub maximize: bool,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Objective, String> {
        let (metric, direction) = s.trim().rsplit_once(':').ok_or_else(|| {
            format!("`{s}` names no direction: write METRIC:max or METRIC:min (e.g. val_accuracy:max, lut:min)")
        })?;
        let maximize = match direction.trim() {
            "max" => true,
            "min" => false,
            other => {
                return Err(format!(
                    "`{s}`: the direction is `{other}`; write METRIC:max or METRIC:min"
                ));
            }
        };
        let metric = metric.trim();
        if metric.is_empty() {
            return Err(format!("`{s}` names no metric"));
        }
        Ok(Objective {
            metric: metric.to_owned(),
            maximize,
        })
    }
}

impl TryFrom<String> for Objective {
    type Error = String;
    fn try_from(s: String) -> Result<Objective, String> {
        s.parse()
    }
}

impl From<Objective> for String {
    fn from(o: Objective) -> String {
        o.to_string()
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}",
            self.metric,
            if self.maximize { "max" } else { "min" }
        )
    }
}

/// Objectives written `a:max,b:min`.
pub fn parse_objectives(text: &str) -> Result<Vec<Objective>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(str::parse)
        .collect()
}

fn default_tiers() -> u32 {
    2
}

fn default_after() -> Stage {
    Stage::Emulate
}

/// One gate of a funnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// The stage every trial runs before the gate decides (default `emulate`).
    #[serde(default = "default_after")]
    pub after: Stage,
    /// The Pareto objectives; none: every trial within the bounds is a primary.
    #[serde(default)]
    pub objectives: Vec<Objective>,
    /// Lower bounds on metrics.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min: BTreeMap<String, f64>,
    /// Upper bounds on metrics.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max: BTreeMap<String, f64>,
    /// Pareto tiers kept: the first goes on, the later ones are backups (default 2).
    #[serde(default = "default_tiers")]
    pub tiers: u32,
    /// At most this many primaries (the rest of the first tier become backups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
}

impl Gate {
    /// Checks the gate: a stage before the tool stages end, tiers ≥ 1, a top of at least 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.after == Stage::Vsynth {
            return Err("after = \"vsynth\": nothing runs after the last stage; gate after convert, emulate, csynth, cosim or export".to_owned());
        }
        if self.tiers == 0 {
            return Err("tiers = 0 keeps nothing; give 1 (primaries only) or more".to_owned());
        }
        if self.top == Some(0) {
            return Err("top = 0 keeps nothing".to_owned());
        }
        if self.objectives.is_empty() && self.min.is_empty() && self.max.is_empty() {
            return Err(
                "a gate needs objectives (e.g. val_accuracy:max,parameters:min) or bounds (min/max)"
                    .to_owned(),
            );
        }
        if self.top.is_some() && self.objectives.is_empty() {
            return Err("top needs objectives to order the trials by".to_owned());
        }
        Ok(())
    }

    /// Every metric the gate reads.
    pub fn metrics(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.objectives.iter().map(|o| o.metric.as_str()).collect();
        out.extend(self.min.keys().map(String::as_str));
        out.extend(self.max.keys().map(String::as_str));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// One line saying what the gate does.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.objectives.is_empty() {
            parts.push(format!(
                "Pareto over {} ({} tier{})",
                self.objectives
                    .iter()
                    .map(Objective::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                self.tiers,
                if self.tiers == 1 { "" } else { "s" }
            ));
        }
        for (k, v) in &self.min {
            parts.push(format!("{k} >= {v}"));
        }
        for (k, v) in &self.max {
            parts.push(format!("{k} <= {v}"));
        }
        if let Some(top) = self.top {
            parts.push(format!("top {top}"));
        }
        format!("after {}: {}", self.after, parts.join(", "))
    }
}

/// A metric of a trial, by name: the figures of [`METRICS`], then the search's metrics and
/// hyperparameters (numbers, or booleans as 0/1).
pub fn metric(result: &TrialResult, name: &str) -> Option<f64> {
    let acc = result.accuracy.as_ref().map(|a| &a.first);
    let csynth = result.reports.csynth.as_ref();
    let vivado = result.reports.vivado_synth.as_ref();
    let figure = match name {
        "accuracy" => acc.and_then(|a| a.hls.or(Some(a.float))),
        "float_accuracy" => acc.map(|a| a.float),
        "hls_accuracy" => acc.and_then(|a| a.hls),
        "accuracy_drop" => acc.and_then(|a| a.drop),
        "auc" => acc.and_then(|a| a.hls_auc.or(a.float_auc)),
        "float_auc" => acc.and_then(|a| a.float_auc),
        "hls_auc" => acc.and_then(|a| a.hls_auc),
        "parameters" => result.parameters.map(|p| p as f64).or_else(|| {
            let s = result.search.as_ref()?;
            [
                "parameters",
                "total_params",
                "num_params",
                "params",
                "n_params",
            ]
            .iter()
            .find_map(|k| s.metrics.get(*k).and_then(serde_json::Value::as_f64))
        }),
        "max_abs_diff" => result.fidelity.as_ref().map(|f| f.max_abs_diff),
        "agreement" => result.fidelity.as_ref().and_then(|f| {
            f.argmax_agreement.or_else(|| {
                f.outputs
                    .iter()
                    .filter_map(|o| o.agreement)
                    .reduce(f64::min)
            })
        }),
        "lut" => vivado
            .and_then(|v| v.used.lut)
            .or_else(|| csynth.and_then(|c| c.used.lut)),
        "ff" => vivado
            .and_then(|v| v.used.ff)
            .or_else(|| csynth.and_then(|c| c.used.ff)),
        "dsp" => vivado
            .and_then(|v| v.used.dsp)
            .or_else(|| csynth.and_then(|c| c.used.dsp)),
        "bram" => vivado
            .and_then(|v| v.used.bram_tiles)
            .or_else(|| csynth.and_then(|c| c.used.bram_18k)),
        "hls_lut" => csynth.and_then(|c| c.used.lut),
        "hls_ff" => csynth.and_then(|c| c.used.ff),
        "hls_dsp" => csynth.and_then(|c| c.used.dsp),
        "latency_cycles" => csynth.and_then(|c| c.latency_worst_cycles.map(|v| v as f64)),
        "latency_ns" => result.latency_ns(),
        "interval_cycles" => csynth.and_then(|c| c.interval_max_cycles.map(|v| v as f64)),
        "fmax_mhz" => csynth
            .and_then(|c| c.estimated_clock_ns)
            .filter(|ns| *ns > 0.0)
            .map(|ns| 1000.0 / ns),
        "reuse_factor" => Some(f64::from(result.settings.reuse_factor)),
        "clock_period_ns" => Some(result.settings.clock_period_ns),
        _ => None,
    };
    figure.or_else(|| {
        let s = result.search.as_ref()?;
        let v = s
            .metrics
            .get(name)
            .or_else(|| s.hyperparameters.get(name))?;
        v.as_f64()
            .or_else(|| v.as_bool().map(|b| f64::from(u8::from(b))))
    })
}

mod decide;
mod pareto;

pub use decide::{Candidate, Decision, Role};
pub use pareto::{default_objectives, pareto_tiers, rank};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::results::SearchInfo;
    use crate::settings::Settings;
    use pareto::dominates;

    fn with(metrics: &[(&str, f64)]) -> TrialResult {
        let mut r = TrialResult::noop("k", "m.h5", Settings::default());
        r.search = Some(SearchInfo {
            metrics: metrics
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
                .collect(),
            ..SearchInfo::default()
        });
        r
    }

    /// Brute force: a point's tier is 1 + the longest chain of points dominating it.
    fn brute_tiers(points: &[Vec<f64>], objectives: &[Objective]) -> Vec<u32> {
        fn depth(i: usize, p: &[Vec<f64>], o: &[Objective], memo: &mut Vec<Option<u32>>) -> u32 {
            if let Some(d) = memo[i] {
                return d;
            }
            let d = 1
                + (0..p.len())
                    .filter(|&j| dominates(&p[j], &p[i], o))
                    .map(|j| depth(j, p, o, memo))
                    .max()
                    .unwrap_or(0);
            memo[i] = Some(d);
            d
        }
        let mut memo = vec![None; points.len()];
        (0..points.len())
            .map(|i| depth(i, points, objectives, &mut memo))
            .collect()
    }

    #[test]
    fn tiers_match_a_brute_force_count() {
        let objectives = parse_objectives("val_accuracy:max,parameters:min,lut:min").unwrap();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % 20) as f64
        };
        for n in [1, 2, 5, 30, 120] {
            let points: Vec<Vec<f64>> = (0..n).map(|_| vec![next(), next(), next()]).collect();
            assert_eq!(
                pareto_tiers(&points, &objectives),
                brute_tiers(&points, &objectives),
                "{points:?}"
            );
        }
    }

    #[test]
    fn a_gate_keeps_two_tiers_and_holds_the_rest() {
        let gate = Gate {
            after: Stage::Emulate,
            objectives: parse_objectives("val_accuracy:max,parameters:min").unwrap(),
            min: [("val_accuracy".to_owned(), 0.8)].into(),
            max: BTreeMap::new(),
            tiers: 2,
            top: None,
        };
        gate.validate().unwrap();
        let rs = [
            with(&[("val_accuracy", 0.95), ("total_params", 1000.0)]), // front
            with(&[("val_accuracy", 0.90), ("total_params", 100.0)]),  // front
            with(&[("val_accuracy", 0.90), ("total_params", 1000.0)]), // tier 2
            with(&[("val_accuracy", 0.85), ("total_params", 2000.0)]), // tier 3
            with(&[("val_accuracy", 0.70), ("total_params", 10.0)]),   // below min
            with(&[("total_params", 10.0)]),                           // no accuracy
        ];
        let keys = ["a", "b", "c", "d", "e", "f"];
        let candidates: Vec<Candidate> = keys
            .iter()
            .zip(&rs)
            .map(|(k, r)| Candidate {
                key: k,
                result: Some(r),
            })
            .collect();
        let d = gate.decide(0, &candidates);
        let role = |k: &str| d[k].role;
        assert_eq!(role("a"), Role::Primary);
        assert_eq!(role("b"), Role::Primary);
        assert_eq!(role("c"), Role::Backup);
        assert_eq!(d["c"].tier, Some(2));
        assert_eq!(role("d"), Role::Held);
        assert!(d["d"].reason.contains("tier 3"), "{}", d["d"].reason);
        assert!(d["e"].reason.contains("below 0.8"), "{}", d["e"].reason);
        assert!(
            d["f"].reason.contains("no val_accuracy"),
            "{}",
            d["f"].reason
        );
        // A failed primary promotes the backup nearest to it.
        let waiting = vec![("c", &rs[2], 2), ("d", &rs[3], 3)];
        assert_eq!(gate.backup_for(&rs[0], &waiting), Some("c"));
        let top1 = Gate {
            top: Some(1),
            ..gate.clone()
        };
        let d = top1.decide(0, &candidates);
        assert_eq!(d["a"].role, Role::Primary, "best accuracy first");
        assert_eq!(d["b"].role, Role::Backup);
    }

    #[test]
    fn objectives_parse_and_name_their_mistakes() {
        assert_eq!(
            parse_objectives("accuracy:max, lut:min").unwrap(),
            vec![
                Objective {
                    metric: "accuracy".into(),
                    maximize: true
                },
                Objective {
                    metric: "lut".into(),
                    maximize: false
                }
            ]
        );
        assert!(parse_objectives("lut").unwrap_err().contains("METRIC:max"));
        assert!(
            parse_objectives("lut:smallest")
                .unwrap_err()
                .contains("smallest")
        );
    }

    #[test]
    fn ranking_by_tier_then_first_objective() {
        let rs = [
            with(&[("val_accuracy", 0.90), ("total_params", 100.0)]),
            with(&[("val_accuracy", 0.95), ("total_params", 1000.0)]),
            with(&[("val_accuracy", 0.80), ("total_params", 5000.0)]),
            with(&[("total_params", 5.0)]),
        ];
        let refs: Vec<&TrialResult> = rs.iter().collect();
        let objectives = default_objectives(&refs);
        assert_eq!(
            objectives
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["val_accuracy:max", "parameters:min"]
        );
        let (ranked, out) = rank(&refs, &objectives);
        assert_eq!(ranked, vec![(1, 1), (0, 1), (2, 2)]);
        assert_eq!(out, vec![3]);
    }
}
