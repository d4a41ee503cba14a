//! A cluster sweep's funnel: the coordinator decides at each gate, with the same semantics as
//! one host (`hlsfarm_common::select`). A sweep with gates is queued cut to its first gate's
//! stage (phase 0); once every phase-`g` trial is final, gate `g` decides and its primaries'
//! next phase is queued in the same sweep; a primary whose next phase fails promotes the
//! waiting backup nearest to it at once. A phase is found by its trial key (computed from the
//! plan, so a trial shared with another sweep is placed right). The decisions are kept in the
//! store (`sweeps/<id>/funnel.json`) before anything they imply is queued, and every step is
//! idempotent: another coordinator (or a restarted one) goes on from them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use hlsfarm_common::blob::{Blobs, RetryBudget};
use hlsfarm_common::job::TrialState;
use hlsfarm_common::plan::{PlanIndex, SweepPlan};
use hlsfarm_common::queue::NewTrial;
use hlsfarm_common::results::{TrialResult, TrialStatus};
use hlsfarm_common::select::{Candidate, Decision, Role};
use hlsfarm_common::store::SweepSubmit;
use hlsfarm_common::store::TrialRecord;
use serde::{Deserialize, Serialize};

use super::{Coordinator, Error, lock};

/// What the gates decided.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct FunnelState {
    /// How many gates have decided.
    #[serde(default)]
    pub(super) decided: usize,
    /// Each grid trial's decisions (by `m:g`, model and point), one per gate it reached.
    #[serde(default)]
    pub(super) decisions: BTreeMap<String, Vec<Decision>>,
    /// Failed primaries whose failure was handled (a backup promoted, or none left).
    #[serde(default)]
    pub(super) handled: BTreeSet<String>,
    /// What happened, in lines: each gate's decision, each promotion.
    #[serde(default)]
    pub(super) notes: Vec<String>,
}

/// Where a sweep's funnel state lives in the store.
pub(super) fn state_path(sweep: &str) -> String {
    format!("sweeps/{sweep}/funnel.json")
}

/// A grid trial's id in the funnel state: `m:g`.
fn id(index: &PlanIndex) -> String {
    format!("{}:{}", index.m, index.g)
}

pub(super) fn is_final(state: &str) -> bool {
    state
        .parse::<TrialState>()
        .is_ok_and(TrialState::is_terminal)
}

/// The trial key of every phase of every grid trial of a plan.
pub(super) type PhaseKeys = HashMap<String, PlanIndex>;

fn phase_keys(plan: &SweepPlan) -> PhaseKeys {
    let mut out = HashMap::new();
    for m in 0..plan.models.len() {
        for g in 0..plan.points.len() {
            for p in 0..=plan.gates.len() {
                if let Ok((trial, _)) = plan.phase_trial(m, g, p) {
                    out.entry(trial.key).or_insert(PlanIndex { m, g, p });
                }
            }
        }
    }
    out
}

/// A sweep's records by grid trial (`m:g`) and phase; derived trials are not in the funnel.
fn by_phase<'a>(
    trials: &'a [(TrialRecord, bool)],
    keys: &PhaseKeys,
) -> BTreeMap<String, BTreeMap<usize, (PlanIndex, &'a TrialRecord)>> {
    let mut out: BTreeMap<String, BTreeMap<usize, (PlanIndex, &TrialRecord)>> = BTreeMap::new();
    for (record, _) in trials {
        if let Some(index) = keys.get(&record.key) {
            out.entry(id(index))
                .or_default()
                .insert(index.p, (*index, record));
        }
    }
    out
}

/// The trials a funnel's sweep lists: each grid trial's latest phase with the gates'
/// decisions, then every trial outside the funnel (derived ones) with none.
pub(super) fn latest_phases(
    trials: &[(TrialRecord, bool)],
    keys: &PhaseKeys,
    state: &FunnelState,
) -> Vec<(TrialRecord, bool, Vec<Decision>)> {
    let phases = by_phase(trials, keys);
    let mut out = Vec::new();
    for (record, reused) in trials {
        match keys.get(&record.key) {
            Some(index) => {
                let latest = phases
                    .get(&id(index))
                    .and_then(|p| p.keys().max().copied())
                    .unwrap_or(0);
                if index.p == latest {
                    out.push((
                        record.clone(),
                        *reused,
                        state.decisions.get(&id(index)).cloned().unwrap_or_default(),
                    ));
                }
            }
            None => out.push((record.clone(), *reused, Vec::new())),
        }
    }
    out
}

/// A gate's decisions in one line per gate: `gate 1: primary (on the Pareto front)`.
pub(super) fn selection_text(decisions: &[Decision]) -> String {
    decisions
        .iter()
        .map(|d| {
            let role = match d.role {
                Role::Primary => "primary",
                Role::Backup => "backup",
                Role::Held => "held back",
            };
            format!("gate {}: {role} ({})", d.gate + 1, d.reason)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `model.h5`, or `model.h5 #g` where the sweep has several settings points.
fn trial_name(plan: &SweepPlan, index: &PlanIndex) -> String {
    let model = plan.models.get(index.m).map_or("?", |m| m.name.as_str());
    if plan.points.len() > 1 {
        format!("{model} #{}", index.g)
    } else {
        model.to_owned()
    }
}

/// How many tool-stage runs the gates saved: (saved, what every trial through every stage
/// would have run).
pub(super) fn saved_tool_stages(
    plan: &SweepPlan,
    trials: &[(TrialRecord, bool)],
    keys: &PhaseKeys,
) -> (usize, usize) {
    let tools =
        |stages: &[hlsfarm_common::Stage]| stages.iter().filter(|s| s.needs_xilinx_tools()).count();
    let all = plan.models.len() * plan.points.len() * tools(&plan.stages);
    let ran: usize = by_phase(trials, keys)
        .values()
        .filter_map(|p| p.keys().max())
        .map(|p| tools(&plan.stages_for(*p)))
        .sum();
    (all.saturating_sub(ran), all)
}

impl Coordinator {
    /// The phase keys of a sweep's plan (cached: a plan only ever gains models, so the
    /// model count says whether they are current).
    pub(super) fn phase_keys(&self, sweep: &str, plan: &SweepPlan) -> Arc<PhaseKeys> {
        if let Some((models, keys)) = lock(&self.funnel_keys).get(sweep)
            && *models == plan.models.len()
        {
            return keys.clone();
        }
        let keys = Arc::new(phase_keys(plan));
        lock(&self.funnel_keys).insert(sweep.to_owned(), (plan.models.len(), keys.clone()));
        keys
    }

    /// The funnel's state of a sweep (empty before its first gate).
    pub(super) async fn funnel_state(&self, sweep: &str) -> anyhow::Result<FunnelState> {
        match self.blobs.get(&state_path(sweep)).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{} is not a funnel state: {e}", state_path(sweep))),
            Err(e) if e.is_not_found() => Ok(FunnelState::default()),
            Err(e) => Err(e.into()),
        }
    }

    /// A trial's result from the store (the committed copy, else the staged one) with the
    /// search's record of its model joined.
    pub(super) async fn stored_result(
        &self,
        plan: &SweepPlan,
        record: &TrialRecord,
    ) -> anyhow::Result<Option<TrialResult>> {
        let committed = format!("{}/result.json", Blobs::result_prefix(&record.key));
        let mut bytes = self.blobs.get(&committed).await.ok();
        if bytes.is_none() && !record.result_prefix.is_empty() {
            bytes = self
                .blobs
                .get(&format!("{}/result.json", record.result_prefix))
                .await
                .ok();
            if bytes.is_none() {
                // A commit of a result staged before attempt folders deletes the staged
                // copy after copying it: read the committed again.
                bytes = self.blobs.get(&committed).await.ok();
            }
        }
        if bytes.is_none() && record.state == "succeeded" {
            anyhow::bail!(
                "the result of trial {} is not readable from the store yet",
                record.key
            );
        }
        let mut result = bytes
            .and_then(|b| serde_json::from_slice::<TrialResult>(&b).ok())
            .filter(|r| r.trial_key == record.key);
        if let Some(r) = result.as_mut()
            && r.search.is_none()
        {
            // By content: a result shared from another sweep may name the model otherwise.
            r.search = plan
                .models
                .iter()
                .filter(|m| m.digest.sha256 == r.model.sha256)
                .find_map(|m| plan.search.get(&m.name))
                .cloned();
        }
        Ok(result)
    }

    /// Moves a sweep's funnel on as far as it can: decides each gate whose phase has ended,
    /// queues the next phase of its primaries, and promotes the backup of each primary that
    /// failed after it. Returns how many trials it queued (0 for a sweep without gates).
    pub(super) async fn advance_funnel(&self, sweep: &str) -> anyhow::Result<usize> {
        let _one_at_a_time = self.funnel_lock.lock().await;
        let plan = self
            .plan(sweep)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s))?;
        if plan.gates.is_empty() || plan.open {
            // An open sweep's gates wait for all its models.
            return Ok(0);
        }
        let keys = self.phase_keys(sweep, &plan);
        let trials = self.queue.sweep_trials(sweep).await?;
        let phases = by_phase(&trials, &keys);
        let before = self.funnel_state(sweep).await?;
        let mut state = before.clone();
        let mut queued: Vec<(PlanIndex, usize)> = Vec::new();
        let mut notes = Vec::new();
        for (gate_no, gate) in plan.gates.iter().enumerate() {
            let at_gate: Vec<(PlanIndex, &TrialRecord)> = phases
                .values()
                .filter_map(|p| p.get(&gate_no))
                .copied()
                .collect();
            if at_gate.is_empty() || at_gate.iter().any(|(_, r)| !is_final(&r.state)) {
                break;
            }
            if state.decided <= gate_no {
                let mut results = Vec::new();
                for (index, record) in &at_gate {
                    results.push((id(index), self.stored_result(&plan, record).await?));
                }
                let candidates: Vec<Candidate<'_>> = results
                    .iter()
                    .map(|(k, r)| Candidate {
                        key: k,
                        result: r.as_ref(),
                    })
                    .collect();
                let decisions = gate.decide(gate_no, &candidates);
                let failed_before = results
                    .iter()
                    .filter(|(_, r)| r.as_ref().is_none_or(|r| r.status != TrialStatus::Success))
                    .count();
                notes.extend(gate.summary(gate_no, &decisions, at_gate.len(), failed_before));
                for (k, d) in decisions {
                    let list = state.decisions.entry(k).or_default();
                    list.truncate(gate_no);
                    list.push(d);
                }
                state.decided = gate_no + 1;
            }
            // Each primary goes on (again, where an earlier call stopped before queueing it).
            for (index, _) in &at_gate {
                let primary = state
                    .decisions
                    .get(&id(index))
                    .and_then(|d| d.get(gate_no))
                    .is_some_and(|d| d.role == Role::Primary);
                let next = phases
                    .get(&id(index))
                    .is_some_and(|p| p.contains_key(&(gate_no + 1)));
                if primary && !next {
                    queued.push((*index, gate_no + 1));
                }
            }
            // Each primary whose next phase failed promotes its nearest waiting backup.
            for (k, per_phase) in &phases {
                let Some((index, next)) = per_phase.get(&(gate_no + 1)) else {
                    continue;
                };
                let primary = state
                    .decisions
                    .get(k)
                    .and_then(|d| d.get(gate_no))
                    .is_some_and(|d| d.role == Role::Primary);
                if !primary
                    || state.handled.contains(k)
                    || !matches!(next.state.as_str(), "failed" | "dead")
                {
                    continue;
                }
                state.handled.insert(k.clone());
                let failed = match self.stored_result(&plan, next).await? {
                    Some(r) => r,
                    None => super::background::unreported(&plan, next),
                };
                let mut waiting = Vec::new();
                for (index, record) in &at_gate {
                    let backup = state
                        .decisions
                        .get(&id(index))
                        .and_then(|d| d.get(gate_no))
                        .filter(|d| d.role == Role::Backup);
                    if let Some(d) = backup
                        && let Some(r) = self.stored_result(&plan, record).await?
                    {
                        waiting.push((id(index), *index, r, d.tier.unwrap_or(u32::MAX)));
                    }
                }
                let refs: Vec<(&str, &TrialResult, u32)> = waiting
                    .iter()
                    .map(|(k, _, r, t)| (k.as_str(), r, *t))
                    .collect();
                let stage = failed
                    .failure
                    .as_ref()
                    .and_then(|f| f.stage)
                    .map_or_else(|| "a stage".to_owned(), |s| s.to_string());
                let failed_name = trial_name(&plan, index);
                let Some(pick) = gate.backup_for(&failed, &refs).map(str::to_owned) else {
                    notes.push(format!(
                        "gate {}: {failed_name} failed at {stage} and no backup is left",
                        gate_no + 1
                    ));
                    continue;
                };
                let Some((_, pick_index, _, _)) = waiting.iter().find(|w| w.0 == pick) else {
                    continue;
                };
                if let Some(d) = state
                    .decisions
                    .get_mut(&pick)
                    .and_then(|d| d.get_mut(gate_no))
                {
                    d.role = Role::Primary;
                    d.promoted_for = Some(failed_name.clone());
                    d.reason = format!(
                        "{}; promoted: primary {failed_name} failed at {stage}",
                        d.reason
                    );
                }
                notes.push(format!(
                    "gate {}: {failed_name} failed at {stage}: its backup {} goes on in its place",
                    gate_no + 1,
                    trial_name(&plan, pick_index)
                ));
                queued.push((*pick_index, gate_no + 1));
            }
            if !queued.is_empty() {
                // The next gate waits for what this one sends on.
                break;
            }
        }
        if notes.is_empty() && queued.is_empty() && state.handled == before.handled {
            return Ok(0);
        }
        state.notes.extend(notes.iter().cloned());
        // The decisions first: what they imply is queued again by the next call if this one
        // stops between.
        self.blobs
            .put_checked(
                &state_path(sweep),
                serde_json::to_vec_pretty(&state)?,
                RetryBudget::default(),
            )
            .await?;
        for note in &notes {
            tracing::info!(sweep, "{note}");
            self.queue.note("gate", sweep, note.trim()).await?;
        }
        self.queue_phases(&plan, sweep, &queued).await
    }

    /// A funnel sweep's gate lines (empty for a sweep without gates, or before its first
    /// gate decided).
    pub(super) async fn gate_lines(&self, sweep: &str) -> Vec<String> {
        if !self.plan(sweep).await.is_ok_and(|p| !p.gates.is_empty()) {
            return Vec::new();
        }
        match self.funnel_state(sweep).await {
            Ok(state) => state.notes,
            Err(e) => vec![format!("the funnel's state cannot be read: {e}")],
        }
    }

    /// The trials a sweep lists with the gates' decisions: every trial, or a funnel's latest
    /// phase of each.
    pub(super) async fn listed_trials(
        &self,
        sweep: &str,
        plan: &SweepPlan,
        trials: Vec<(TrialRecord, bool)>,
    ) -> Result<Vec<(TrialRecord, bool, Vec<Decision>)>, Error> {
        if plan.gates.is_empty() {
            return Ok(trials
                .into_iter()
                .map(|(r, reused)| (r, reused, Vec::new()))
                .collect());
        }
        let keys = self.phase_keys(sweep, plan);
        let state = self.funnel_state(sweep).await.map_err(Error::backend)?;
        Ok(latest_phases(&trials, &keys, &state))
    }

    /// After trial `key` failed for good: moves its sweep's funnel on, if it has one (a
    /// failure here is logged; the sweep's end tries again).
    pub(super) async fn after_failure(&self, key: &str) {
        let sweep = match self.queue.trial(key).await {
            Ok(record) => record.sweep,
            Err(e) => {
                tracing::warn!(trial = %key, error = %e, "funnel: cannot read the failed trial");
                return;
            }
        };
        let gated = self.plan(&sweep).await.is_ok_and(|p| !p.gates.is_empty());
        if gated && let Err(e) = self.advance_funnel(&sweep).await {
            tracing::warn!(sweep, error = %e, "funnel: cannot promote a backup now; retried when the sweep ends");
        }
    }

    /// Queues the given phases of grid trials in `sweep`.
    async fn queue_phases(
        &self,
        plan: &SweepPlan,
        sweep: &str,
        phases: &[(PlanIndex, usize)],
    ) -> anyhow::Result<usize> {
        if phases.is_empty() {
            return Ok(0);
        }
        let mut classes = BTreeMap::new();
        let mut trials = Vec::new();
        for (index, phase) in phases {
            let (trial, requirement) = plan
                .phase_trial(index.m, index.g, *phase)
                .map_err(anyhow::Error::msg)?;
            classes.insert(
                trial.needs.class.clone(),
                serde_json::to_string(&requirement)?,
            );
            trials.push(NewTrial {
                key: trial.key,
                cost: trial.cost,
                payload: serde_json::json!([index.m, index.g, phase]),
                needs: trial.needs,
            });
        }
        self.estimate_new(plan, &mut trials);
        self.queue.put_classes(&classes).await?;
        self.queue
            .submit_sweep(&SweepSubmit::more_of(sweep), &trials)
            .await?;
        self.wake().await;
        Ok(trials.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_phase_of_each_trial_is_listed() {
        let record = |key: &str| TrialRecord {
            key: key.into(),
            state: "succeeded".into(),
            ..TrialRecord::default()
        };
        let keys: PhaseKeys = [
            ("a0", PlanIndex { m: 0, g: 0, p: 0 }),
            ("a1", PlanIndex { m: 0, g: 0, p: 1 }),
            ("b0", PlanIndex { m: 1, g: 0, p: 0 }),
        ]
        .into_iter()
        .map(|(k, i)| (k.to_owned(), i))
        .collect();
        // "d" is outside the funnel (a derived trial); "a0" was shared from another sweep.
        let trials = vec![
            (record("a0"), true),
            (record("a1"), false),
            (record("b0"), false),
            (record("d"), false),
        ];
        let listed: Vec<String> = latest_phases(&trials, &keys, &FunnelState::default())
            .into_iter()
            .map(|(r, _, _)| r.key)
            .collect();
        assert_eq!(listed, ["a1", "b0", "d"]);
        assert!(is_final("failed") && !is_final("leased"));
    }
}
