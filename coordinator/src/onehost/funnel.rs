//! The trials of a one-host run through a funnel's phases: every trial runs up to the first
//! gate's stage, the gate keeps its Pareto tiers (primaries go on, backups wait, the rest
//! stop), and so on to the full flow; a primary that fails after a gate promotes the nearest
//! backup of that gate at once. With no gate there is one phase: every trial, every stage.

use std::collections::HashMap;

use hlsfarm_common::results::{SearchInfo, TrialResult, TrialStatus};
use hlsfarm_common::select::{Candidate, Decision, Gate, Role};

use super::planned::{Planned, finished_result};

/// The funnel's state.
pub(super) struct Funnel {
    gates: Vec<Gate>,
    /// Full keys in plan order.
    order: Vec<String>,
    /// Each trial's full plan (every stage), by full key.
    trials: HashMap<String, Planned>,
    /// A queued key: its trial's full key and phase.
    phase_of: HashMap<String, (String, usize)>,
    /// Each trial's latest final result and the phase it ran.
    results: HashMap<String, (usize, TrialResult)>,
    /// True for results found from an earlier run.
    reused: HashMap<String, bool>,
    /// Each trial's decisions, one per gate it reached.
    decisions: HashMap<String, Vec<Decision>>,
    /// Trials derived with a fix while running (`--on-failure apply-fix`).
    derived: Vec<Planned>,
}

/// One trial as the run's outputs take it.
pub(super) struct Outcome<'a> {
    pub(super) plan: &'a Planned,
    pub(super) result: Option<&'a TrialResult>,
    pub(super) reused: bool,
    pub(super) decisions: &'a [Decision],
}

impl Funnel {
    pub(super) fn new(gates: Vec<Gate>) -> Funnel {
        Funnel {
            gates,
            order: Vec::new(),
            trials: HashMap::new(),
            phase_of: HashMap::new(),
            results: HashMap::new(),
            reused: HashMap::new(),
            decisions: HashMap::new(),
            derived: Vec::new(),
        }
    }

    /// Number of trials (full plans).
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// The plan of trial `full` for `phase` (the last phase is the full flow).
    fn plan_for(&self, full: &str, phase: usize) -> Option<Planned> {
        let plan = self.trials.get(full)?;
        Some(match self.gates.get(phase) {
            Some(gate) => plan.up_to(gate.after),
            None => plan.clone(),
        })
    }

    /// Registers a trial; returns its first phase's plan to run, or None when an earlier
    /// run's successful result (of the full flow or of a phase) is there to go on from.
    /// `force`: run it again whatever is there.
    pub(super) fn add(&mut self, plan: Planned, force: bool) -> Option<Planned> {
        let full = plan.key.clone();
        if self.trials.contains_key(&full) {
            return None;
        }
        self.order.push(full.clone());
        self.trials.insert(full.clone(), plan);
        let phases = self.gates.len();
        let mut found = None;
        if !force {
            for phase in (0..=phases).rev() {
                let Some(p) = self.plan_for(&full, phase) else {
                    continue;
                };
                if let Some(result) = finished_result(&p.spec.output_dir, &p.key) {
                    found = Some((phase, result));
                    break;
                }
            }
        }
        let first = self.plan_for(&full, 0)?;
        self.phase_of.insert(first.key.clone(), (full.clone(), 0));
        match found {
            Some((phase, result)) => {
                self.results.insert(full.clone(), (phase, result));
                self.reused.insert(full, true);
                None
            }
            None => Some(first),
        }
    }

    /// A trial derived with a fix: reported with the others.
    pub(super) fn add_derived(&mut self, plan: Planned) {
        self.derived.push(plan);
    }

    pub(super) fn derived(&self) -> &[Planned] {
        &self.derived
    }

    /// ` (to emulate)` on a trial's line while it runs a phase short of the full flow.
    pub(super) fn phase_label(&self, key: &str) -> String {
        match self.phase_of.get(key) {
            Some((_, phase)) if *phase < self.gates.len() => {
                format!(" (up to {}, gate {})", self.gates[*phase].after, phase + 1)
            }
            _ => String::new(),
        }
    }

    /// Records a final result; a failed primary past a gate promotes that gate's nearest
    /// waiting backup, whose plan is returned with a line saying so.
    pub(super) fn on_final(&mut self, key: &str, result: &TrialResult) -> Vec<(Planned, String)> {
        let Some((full, phase)) = self.phase_of.get(key).cloned() else {
            return Vec::new();
        };
        self.results.insert(full.clone(), (phase, result.clone()));
        self.reused.insert(full.clone(), false);
        if result.status != TrialStatus::Failed || phase == 0 {
            return Vec::new();
        }
        let gate = phase - 1;
        let is_primary = self
            .decisions
            .get(&full)
            .and_then(|d| d.get(gate))
            .is_some_and(|d| d.role == Role::Primary);
        if !is_primary {
            return Vec::new();
        }
        let waiting: Vec<(&str, &TrialResult, u32)> = self
            .order
            .iter()
            .filter_map(|k| {
                let d = self.decisions.get(k)?.get(gate)?;
                (d.role == Role::Backup).then_some(())?;
                let (_, r) = self.results.get(k)?;
                Some((k.as_str(), r, d.tier.unwrap_or(u32::MAX)))
            })
            .collect();
        let Some(pick) = self.gates[gate]
            .backup_for(result, &waiting)
            .map(str::to_owned)
        else {
            return vec![];
        };
        let failed_name = self.trials[&full].name();
        let stage = result
            .failure
            .as_ref()
            .and_then(|f| f.stage)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "a stage".to_owned());
        if let Some(d) = self.decisions.get_mut(&pick).and_then(|d| d.get_mut(gate)) {
            d.role = Role::Primary;
            d.promoted_for = Some(failed_name.clone());
            d.reason = format!(
                "{}; promoted: primary {failed_name} failed at {stage}",
                d.reason
            );
        }
        let Some(plan) = self.plan_for(&pick, phase) else {
            return vec![];
        };
        self.phase_of
            .insert(plan.key.clone(), (pick.clone(), phase));
        let text = format!(
            "hlsfarm: {failed_name} failed at {stage}: its backup {} goes on in its place (gate {})",
            plan.name(),
            gate + 1
        );
        vec![(plan, text)]
    }

    /// Sets each trial's search record (the search's files may have grown while it ran).
    pub(super) fn refresh_search(&mut self, lookup: impl Fn(&Planned) -> Option<SearchInfo>) {
        for (full, (_, result)) in self.results.iter_mut() {
            if let Some(plan) = self.trials.get(full)
                && let Some(info) = lookup(plan)
            {
                result.search = Some(info);
            }
        }
    }

    /// Applies gate `gate` to the trials that ran its phase; returns the plans of the
    /// primaries that still have to run the next phase, and a line per role and reason.
    pub(super) fn decide(&mut self, gate: usize) -> (Vec<Planned>, Vec<String>) {
        let reached: Vec<(String, Option<TrialResult>)> = self
            .order
            .iter()
            .filter_map(|k| {
                let (phase, r) = self.results.get(k)?;
                // A trial that failed in an earlier phase never reached this gate.
                (*phase >= gate).then(|| (k.clone(), Some(r.clone())))
            })
            .collect();
        let candidates: Vec<Candidate<'_>> = reached
            .iter()
            .map(|(k, r)| Candidate {
                key: k,
                result: r.as_ref(),
            })
            .collect();
        let decided = self.gates[gate].decide(gate, &candidates);
        let mut next = Vec::new();
        for key in &self.order {
            let Some(d) = decided.get(key) else { continue };
            let list = self.decisions.entry(key.clone()).or_default();
            list.truncate(gate);
            list.push(d.clone());
            let done = self
                .results
                .get(key)
                .is_some_and(|(phase, r)| *phase > gate && r.status == TrialStatus::Success);
            if d.role == Role::Primary
                && !done
                && let Some(plan) = self.plan_for(key, gate + 1)
            {
                self.phase_of
                    .insert(plan.key.clone(), (key.clone(), gate + 1));
                next.push(plan);
            }
        }
        let failed_before = reached
            .iter()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.status != TrialStatus::Success))
            .count();
        let lines = self.gates[gate]
            .summary(gate, &decided, reached.len(), failed_before)
            .into_iter()
            .map(|line| format!("hlsfarm: {line}"))
            .collect();
        (next, lines)
    }

    /// Every trial with its latest result and decisions, in plan order.
    pub(super) fn outcomes(&self) -> Vec<Outcome<'_>> {
        self.order
            .iter()
            .map(|k| Outcome {
                plan: &self.trials[k],
                result: self.results.get(k).map(|(_, r)| r),
                reused: self.reused.get(k).copied().unwrap_or(false),
                decisions: self.decisions.get(k).map_or(&[][..], Vec::as_slice),
            })
            .collect()
    }

    /// How many tool-stage runs the gates saved: for each trial that did not run the full
    /// flow, the tool stages it skipped.
    pub(super) fn saved_tool_stages(&self) -> (usize, usize) {
        let mut saved = 0;
        let mut all = 0;
        for (key, plan) in &self.trials {
            let tools = plan
                .spec
                .stages
                .iter()
                .filter(|s| s.needs_xilinx_tools())
                .count();
            all += tools;
            let ran = self.results.get(key).map_or(0, |(_, r)| {
                r.stages.iter().filter(|s| s.needs_xilinx_tools()).count()
            });
            saved += tools.saturating_sub(ran);
        }
        (saved, all)
    }
}
