//! Learning from every accepted result (DESIGN §4.3): the completion records what the trial
//! cost in Redis's bounded history; a loop refits the estimator when the history grew (this
//! coordinator's completions or another's) and gives every queued trial of the active sweeps
//! its predicted duration as its cost (longest first) and, where the sweep left memory at its
//! default, its predicted peak as its reservation. Submits use the latest fit too.

use std::sync::Arc;
use std::time::Duration;

use hlsfarm_common::estimate::{Estimator, Observation, Prediction};
use hlsfarm_common::plan::{DerivedPoint, PlanIndex, SweepPlan};
use hlsfarm_common::queue::NewTrial;
use hlsfarm_common::results::TrialResult;
use hlsfarm_common::store::Reestimate;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, lock};

/// How often the loop looks for new history.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// The latest fit and the history version it was fitted on.
#[derive(Default)]
pub(super) struct Learned {
    pub(super) estimator: Arc<Estimator>,
    version: u64,
}

/// The model, settings and stages a queued trial's payload points at.
fn trial_of<'a>(
    plan: &'a SweepPlan,
    payload: &serde_json::Value,
) -> Option<(
    &'a hlsfarm_common::plan::PlanModel,
    hlsfarm_common::Settings,
    usize,
)> {
    let index: PlanIndex = serde_json::from_value(payload.clone()).ok()?;
    let model = plan.models.get(index.m)?;
    let settings = match DerivedPoint::of(payload) {
        Some(d) => d.settings,
        None => plan.points.get(index.g)?.clone(),
    };
    Some((model, settings, index.p))
}

impl Coordinator {
    /// The prediction for model `model` of `plan` at `settings` in phase `phase`.
    fn predict(
        estimator: &Estimator,
        plan: &SweepPlan,
        model: &hlsfarm_common::plan::PlanModel,
        settings: &hlsfarm_common::Settings,
        phase: usize,
    ) -> Prediction {
        let tool = plan
            .toolchain(settings.backend)
            .map(hlsfarm_common::estimate::tool_label)
            .unwrap_or_default();
        let features = estimator.features(&model.digest.sha256, model.size_bytes, settings, &tool);
        estimator.predict(&features, &plan.stages_for(phase))
    }

    /// The cost and reservation a trial gets from `prediction`: seconds as its cost once
    /// anything was learned (the static formula's units before), memory as
    /// [`Estimator::reservation`] says.
    fn estimated(&self, plan: &SweepPlan, prediction: &Prediction) -> (f64, Option<u64>) {
        let largest = lock(&self.caps).values().map(|c| c.memory_mib).max();
        let memory = prediction.memory_mib.map(|_| {
            Estimator::reservation(
                prediction,
                plan.resources.memory_mib,
                plan.memory_set,
                largest,
            )
        });
        (prediction.seconds, memory)
    }

    /// New trials of `plan` with the latest fit's costs and reservations.
    pub(super) fn estimate_new(&self, plan: &SweepPlan, trials: &mut [NewTrial]) {
        let estimator = lock(&self.learned).estimator.clone();
        if estimator.observations == 0 {
            return;
        }
        for t in trials {
            if let Some((model, settings, phase)) = trial_of(plan, &t.payload) {
                let prediction = Self::predict(&estimator, plan, model, &settings, phase);
                let (cost, memory) = self.estimated(plan, &prediction);
                t.cost = cost;
                if let Some(memory) = memory {
                    t.needs.memory_mib = memory;
                }
            }
        }
    }

    /// Records what an accepted result of `sweep` cost (nothing for a result without a
    /// finished stage).
    pub(super) async fn observe(&self, sweep: &str, result: &TrialResult) {
        let Ok(plan) = self.plan(sweep).await else {
            return;
        };
        let size = plan
            .models
            .iter()
            .find(|m| m.digest.sha256 == result.model.sha256)
            .map_or(0, |m| m.size_bytes);
        if let Some(o) = Observation::from_result(result, size)
            && let Err(e) = self.queue.push_observation(&o).await
        {
            tracing::warn!(error = %e, trial = %result.trial_key, "cannot record what the trial cost");
        }
    }

    /// Refits when the history grew and re-estimates the queued trials, until `stop`.
    pub(super) async fn learn_loop(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
            if let Err(e) = self.learn_once().await {
                tracing::warn!(error = %e, "cannot refit the estimates");
            }
        }
    }

    /// One refit and re-estimate, when the history changed since the last.
    pub(super) async fn learn_once(&self) -> anyhow::Result<bool> {
        let version = self.queue.history_version().await?;
        if version == lock(&self.learned).version {
            return Ok(false);
        }
        let history = self.queue.observations().await?;
        let estimator = Arc::new(Estimator::fit(&history));
        {
            let mut learned = lock(&self.learned);
            learned.estimator = estimator.clone();
            learned.version = version;
        }
        let mut estimates = Vec::new();
        for sweep in self.queue.active_sweeps().await? {
            let Ok(plan) = self.plan(&sweep).await else {
                continue;
            };
            for (record, shared) in self.queue.sweep_trials(&sweep).await? {
                if shared || record.state != "queued" {
                    continue;
                }
                let Ok(payload) = serde_json::from_str::<serde_json::Value>(&record.payload) else {
                    continue;
                };
                if let Some((model, settings, phase)) = trial_of(&plan, &payload) {
                    let prediction = Self::predict(&estimator, &plan, model, &settings, phase);
                    let (cost, memory_mib) = self.estimated(&plan, &prediction);
                    estimates.push(Reestimate {
                        key: record.key,
                        cost,
                        memory_mib,
                    });
                }
            }
        }
        let changed = self.queue.reestimate(&estimates).await?;
        tracing::debug!(observations = history.len(), stages = ?estimator.learned_stages(), changed, "estimates refitted");
        Ok(true)
    }

    /// The prediction for the trial of `plan` whose queue payload is `payload`, once
    /// anything was learned.
    pub(super) fn prediction_of(&self, plan: &SweepPlan, payload: &str) -> Option<Prediction> {
        let estimator = lock(&self.learned).estimator.clone();
        if estimator.observations == 0 {
            return None;
        }
        let payload: serde_json::Value = serde_json::from_str(payload).ok()?;
        let (model, settings, phase) = trial_of(plan, &payload)?;
        Some(Self::predict(&estimator, plan, model, &settings, phase))
    }

    /// Seconds left in sweep `s` by the learned estimates: its queued trials' predictions and
    /// its leased trials' remainders spread over the trials it runs at once. None before
    /// anything was learned, or when it is unreadable (the mean-based ETA stands then).
    pub(super) async fn learned_eta(&self, s: &hlsfarm_common::store::SweepRecord) -> Option<f64> {
        if s.counts.unfinished() == 0 || lock(&self.learned).estimator.observations == 0 {
            return None;
        }
        let (left, running) = self.sweep_predictions(&s.id).await.ok()?;
        let slots = running.len().max(1);
        Some(hlsfarm_common::estimate::eta(&left, &running, slots).0)
    }

    /// Predictions for a sweep's unfinished trials: (queued ones, leased ones with the
    /// seconds they have run), for its ETA.
    async fn sweep_predictions(
        &self,
        sweep: &str,
    ) -> anyhow::Result<(Vec<Prediction>, Vec<(Prediction, f64)>)> {
        let estimator = lock(&self.learned).estimator.clone();
        let plan = self
            .plan(sweep)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let mut left = Vec::new();
        let mut running = Vec::new();
        for (record, shared) in self.queue.sweep_trials(sweep).await? {
            if shared || (record.state != "queued" && record.state != "leased") {
                continue;
            }
            let Ok(payload) = serde_json::from_str::<serde_json::Value>(&record.payload) else {
                continue;
            };
            if let Some((model, settings, phase)) = trial_of(&plan, &payload) {
                let p = Self::predict(&estimator, &plan, model, &settings, phase);
                if record.state == "queued" {
                    left.push(p);
                } else {
                    running.push((p, (now_ms - record.leased_at_ms).max(0) as f64 / 1000.0));
                }
            }
        }
        Ok((left, running))
    }
}
