//! Learning from every accepted result (DESIGN §4.3): the completion records what the trial
//! cost in Redis's bounded history; a loop refits the estimator when the history grew (this
//! coordinator's completions or another's) and gives every queued trial of the active sweeps
//! its predicted duration as its cost (longest first) and, where the sweep left memory at its
//! default, its predicted peak as its reservation. Submits use the latest fit too.

use std::sync::Arc;
use std::time::Duration;

use hlsfarm_common::estimate::{Estimator, Features, Observation, Prediction, StageLimit};
use hlsfarm_common::plan::{DerivedPoint, PlanIndex, SweepPlan};
use hlsfarm_common::queue::NewTrial;
use hlsfarm_common::results::TrialResult;
use hlsfarm_common::store::Reestimate;
use tokio_util::sync::CancellationToken;

use super::{Coordinator, lock, seconds_since};

/// How often the loop looks for new history.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long a sweep's predictions are reused for its ETA while none of its trials ends
/// (status pages poll every second or two; the ETA itself moves with the clock).
const ETA_FRESH: Duration = Duration::from_secs(2);

/// A sweep's unfinished trials' predictions, for its ETA: the queued ones, and the leased
/// ones with when they were leased (ms since the Unix epoch).
#[derive(Default)]
struct Unfinished {
    left: Vec<Prediction>,
    running: Vec<(Prediction, i64)>,
}

/// The latest fit and the history version it was fitted on.
#[derive(Default)]
pub(super) struct Learned {
    pub(super) estimator: Arc<Estimator>,
    version: u64,
    /// Sweeps' unfinished trials' predictions and when they were read; emptied when a
    /// trial ends or the fit changes.
    unfinished: std::collections::HashMap<String, (std::time::Instant, Arc<Unfinished>)>,
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
    /// The features of model `model` of `plan` at `settings`.
    fn features(
        estimator: &Estimator,
        plan: &SweepPlan,
        model: &hlsfarm_common::plan::PlanModel,
        settings: &hlsfarm_common::Settings,
    ) -> Features {
        let tool = plan
            .toolchain(settings.backend)
            .map(hlsfarm_common::estimate::tool_label)
            .unwrap_or_default();
        estimator.features(&model.digest.sha256, model.size_bytes, settings, &tool)
    }

    /// The prediction for model `model` of `plan` at `settings` in phase `phase`.
    fn predict(
        estimator: &Estimator,
        plan: &SweepPlan,
        model: &hlsfarm_common::plan::PlanModel,
        settings: &hlsfarm_common::Settings,
        phase: usize,
    ) -> Prediction {
        let features = Self::features(estimator, plan, model, settings);
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
        let Some(estimator) = self.estimator() else {
            return;
        };
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
            learned.unfinished.clear();
        }
        let mut estimates = Vec::new();
        for sweep in self.queue.active_sweeps().await? {
            let Ok(plan) = self.plan(&sweep).await else {
                continue;
            };
            for (record, prediction) in self.sweep_estimates(&sweep, &estimator, &plan).await? {
                if record.state == "queued" {
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

    /// The latest fit, once anything was learned.
    pub(super) fn estimator(&self) -> Option<Arc<Estimator>> {
        let estimator = lock(&self.learned).estimator.clone();
        (estimator.observations > 0).then_some(estimator)
    }

    /// The prediction by `estimator` for the trial of `plan` whose queue payload is
    /// `payload`.
    pub(super) fn prediction_of(
        estimator: &Estimator,
        plan: &SweepPlan,
        payload: &str,
    ) -> Option<Prediction> {
        let payload: serde_json::Value = serde_json::from_str(payload).ok()?;
        let (model, settings, phase) = trial_of(plan, &payload)?;
        Some(Self::predict(estimator, plan, model, &settings, phase))
    }

    /// The learned time limits of the trial of `plan` whose queue payload is `payload`, on
    /// its first attempt (`coordinator.learned_limit_multiple`); none on a retry, which may
    /// be one because a learned limit was too tight.
    pub(super) fn stage_limits(
        &self,
        plan: &SweepPlan,
        payload: &serde_json::Value,
        attempt: u32,
    ) -> Vec<StageLimit> {
        let c = &self.config.coordinator;
        if attempt > 1 || c.learned_limit_multiple <= 0.0 {
            return Vec::new();
        }
        let (Some(estimator), Some((model, settings, phase))) =
            (self.estimator(), trial_of(plan, payload))
        else {
            return Vec::new();
        };
        let features = Self::features(&estimator, plan, model, &settings);
        estimator.stage_limits(
            &features,
            &plan.stages_for(phase),
            c.learned_limit_multiple,
            c.learned_limit_floor_s as f64,
        )
    }

    /// A trial ended: the sweeps' ETAs are read afresh.
    pub(super) fn trial_ended(&self) {
        lock(&self.learned).unfinished.clear();
    }

    /// Seconds left in sweep `s` by the learned estimates, with their standard deviation:
    /// its queued trials' predictions and its leased trials' remainders spread over the
    /// trials it runs at once. None before anything was learned, or when it is unreadable
    /// (the mean-based ETA stands then). The predictions are reused for [`ETA_FRESH`] while
    /// no trial ends and the fit stays.
    pub(super) async fn learned_eta(
        &self,
        s: &hlsfarm_common::store::SweepRecord,
    ) -> Option<(f64, f64)> {
        if s.counts.unfinished() == 0 {
            return None;
        }
        let estimator = self.estimator()?;
        let cached = lock(&self.learned)
            .unfinished
            .get(&s.id)
            .filter(|(at, _)| at.elapsed() < ETA_FRESH)
            .map(|(_, u)| u.clone());
        let unfinished = match cached {
            Some(u) => u,
            None => {
                let plan = self.plan(&s.id).await.ok()?;
                let mut u = Unfinished::default();
                for (record, p) in self.sweep_estimates(&s.id, &estimator, &plan).await.ok()? {
                    if record.state == "queued" {
                        u.left.push(p);
                    } else {
                        u.running.push((p, record.leased_at_ms));
                    }
                }
                let u = Arc::new(u);
                lock(&self.learned)
                    .unfinished
                    .insert(s.id.clone(), (std::time::Instant::now(), u.clone()));
                u
            }
        };
        let running: Vec<(Prediction, f64)> = unfinished
            .running
            .iter()
            .map(|(p, at)| (*p, seconds_since(*at)))
            .collect();
        let slots = running.len().max(1);
        Some(hlsfarm_common::estimate::eta(
            &unfinished.left,
            &running,
            slots,
        ))
    }

    /// The sweep's own queued and leased trials, each with its prediction by `estimator`.
    async fn sweep_estimates(
        &self,
        sweep: &str,
        estimator: &Estimator,
        plan: &SweepPlan,
    ) -> anyhow::Result<Vec<(hlsfarm_common::store::TrialRecord, Prediction)>> {
        let mut out = Vec::new();
        for (record, shared) in self.queue.sweep_trials(sweep).await? {
            if shared || (record.state != "queued" && record.state != "leased") {
                continue;
            }
            if let Some(p) = Self::prediction_of(estimator, plan, &record.payload) {
                out.push((record, p));
            }
        }
        Ok(out)
    }
}
