//! The slots of a one-host run: N in-process workers leasing trials from the embedded queue
//! (longest first), each trial under its memory reservation, retried by its failure's class,
//! and what a final result leads to (a derived trial with a fix, a funnel's promoted backup).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::bail;
use hlsfarm_common::job::TrialState;
use hlsfarm_common::queue::embedded::EmbeddedQueue;
use hlsfarm_common::queue::{Outcome, Queue, QueueConfig};
use hlsfarm_common::results::{TrialResult, TrialStatus};
use hlsfarm_common::sync::lock;
use hlsfarm_worker::trial::{TrialEnv, run_trial};
use tokio_util::sync::CancellationToken;

use super::funnel::Funnel;
use super::memory::MemoryBudget;
use super::planned::{Planned, line_for};
use super::{ONE_HOST_SWEEP, one_host_sweep};
use crate::progress::Progress;

/// Everything the slots share.
pub(super) struct Runner {
    pub(super) queue: EmbeddedQueue,
    pub(super) queue_config: QueueConfig,
    pub(super) env: Arc<TrialEnv>,
    pub(super) trial_limit: u64,
    pub(super) memory: MemoryBudget,
    pub(super) progress: Progress,
    pub(super) cancel: CancellationToken,
    pub(super) keep_scratch: bool,
    pub(super) apply_fix: bool,
    /// The trials, their phases and the gates' decisions.
    pub(super) funnel: Mutex<Funnel>,
    /// True while more trials may still be submitted (`--follow`): slots wait instead of
    /// ending when the queue is empty.
    pub(super) open: AtomicBool,
    by_key: Mutex<HashMap<String, Planned>>,
    /// What earlier trials in this output folder cost, and the estimates fitted on it.
    pub(super) learned: Mutex<super::history::Learned>,
    tally: Mutex<(usize, usize)>,
    total: AtomicUsize,
    deciding: AtomicUsize,
}

impl Runner {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        queue_config: QueueConfig,
        env: Arc<TrialEnv>,
        trial_limit: u64,
        memory: MemoryBudget,
        cancel: CancellationToken,
        keep_scratch: bool,
        apply_fix: bool,
        funnel: Funnel,
        learned: super::history::Learned,
    ) -> Runner {
        Runner {
            queue: EmbeddedQueue::new(queue_config),
            queue_config,
            env,
            trial_limit,
            memory,
            progress: Progress::new(0),
            cancel,
            keep_scratch,
            apply_fix,
            funnel: Mutex::new(funnel),
            open: AtomicBool::new(false),
            by_key: Mutex::new(HashMap::new()),
            learned: Mutex::new(learned),
            tally: Mutex::new((0, 0)),
            total: AtomicUsize::new(0),
            deciding: AtomicUsize::new(0),
        }
    }

    /// The funnel, locked.
    pub(super) fn funnel(&self) -> MutexGuard<'_, Funnel> {
        lock(&self.funnel)
    }

    /// Queues trials to run.
    pub(super) async fn submit(&self, trials: Vec<Planned>) -> anyhow::Result<()> {
        if trials.is_empty() {
            return Ok(());
        }
        let new = {
            let learned = lock(&self.learned);
            trials
                .iter()
                .map(|t| t.queued(&learned.estimator))
                .collect()
        };
        {
            let mut by_key = lock(&self.by_key);
            for t in &trials {
                by_key.insert(t.key.clone(), t.clone());
            }
        }
        self.progress.grow(trials.len() as u64);
        self.total.fetch_add(trials.len(), Ordering::SeqCst);
        self.queue.submit(one_host_sweep(), new).await?;
        Ok(())
    }

    /// Runs what is queued (and whatever is queued meanwhile) on `slots` slots, until the
    /// queue holds nothing unfinished and no more may come.
    pub(super) async fn run(self: &Arc<Self>, slots: usize) -> anyhow::Result<()> {
        let mut set = tokio::task::JoinSet::new();
        for slot in 0..slots.max(1) {
            let me = self.clone();
            set.spawn(async move { me.slot(slot).await });
        }
        while let Some(joined) = set.join_next().await {
            joined.map_err(|e| anyhow::anyhow!("a trial slot panicked: {e}"))??;
        }
        Ok(())
    }

    /// Trials of the run not final yet; none when nothing was ever queued (every trial's
    /// result was already there).
    async fn unfinished(&self) -> anyhow::Result<u64> {
        match self.queue.counts(ONE_HOST_SWEEP).await {
            Ok(counts) => Ok(counts.unfinished()),
            Err(hlsfarm_common::queue::Error::UnknownSweep(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    async fn slot(&self, slot: usize) -> anyhow::Result<()> {
        let worker = format!("slot-{slot}");
        loop {
            if self.cancel.is_cancelled() {
                return Ok(());
            }
            let Some(lease) = self.queue.lease(&worker, 1).await?.pop() else {
                if !self.open.load(Ordering::SeqCst)
                    && self.deciding.load(Ordering::SeqCst) == 0
                    && self.unfinished().await? == 0
                {
                    return Ok(());
                }
                // Another slot's trial may still come back for a retry, or a model arrive.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let Some(plan) = lock(&self.by_key).get(&lease.key).cloned() else {
                bail!("leased an unknown trial {}", lease.key);
            };
            let name = plan.name();
            // The estimates' say: a predicted peak above the per-slot share reserves more
            // (fewer run beside it), and learned limits hold the tool stages of a first try.
            let admission = {
                let learned = lock(&self.learned);
                learned.admit(
                    &plan.features(&learned.estimator),
                    &plan.spec.stages,
                    lease.fence.attempt,
                    self.trial_limit,
                    self.memory.total_mib,
                )
            };
            let limit = self.memory.reservation(&lease.key, admission.memory_mib);
            let Some(_reserved) = self.memory.reserve(limit, &self.cancel).await else {
                let _ = self.queue.hand_back(&lease.key, lease.fence).await;
                return Ok(());
            };
            let line = self.progress.start(&name, lease.fence.attempt);
            let trial_env = if limit == self.trial_limit {
                self.env.clone()
            } else {
                let mut raised = TrialEnv::clone(&self.env);
                raised.driver.memory_limit_mib = Some(limit);
                Arc::new(raised)
            };
            let mut spec = plan.spec.clone();
            spec.stage_limits = admission.stage_limits;
            let mut result = run_trial(&trial_env, &spec, &self.cancel, &|stage| {
                self.progress.stage(&line, stage)
            })
            .await;
            lock(&self.learned).observe(&result, plan.model_size());
            let outcome = match result.status {
                TrialStatus::Success => Outcome::Succeeded,
                TrialStatus::Cancelled => Outcome::Cancelled,
                TrialStatus::Failed => {
                    self.memory
                        .outcome(&lease.key, &mut result, &plan.spec.output_dir)
                }
            };
            if outcome == Outcome::Cancelled {
                // Nothing to record: the trial runs again next time.
                let _ = self.queue.hand_back(&lease.key, lease.fence).await;
                return Ok(());
            }
            // Counted from before the result is recorded until what it leads to is queued,
            // so no slot sees the run finished between.
            self.deciding.fetch_add(1, Ordering::SeqCst);
            let state = self.queue.complete(&lease.key, lease.fence, outcome).await;
            let next = match &state {
                Ok(TrialState::Succeeded | TrialState::Failed) => self.after_final(&plan, &result),
                _ => Vec::new(),
            };
            for text in next.iter().map(|(_, text)| text) {
                self.progress.println(text);
            }
            let submitted = self
                .submit(next.into_iter().map(|(p, _)| p).collect())
                .await;
            self.deciding.fetch_sub(1, Ordering::SeqCst);
            let state = state?;
            submitted?;
            if state == TrialState::Queued {
                let raised = self.memory.raised_to(&lease.key).filter(|r| *r > limit);
                let text = match (outcome, raised) {
                    (Outcome::Refused, _) => format!(
                        "hlsfarm: {name}: the licence server refused a seat; queued again without spending an attempt (waits at most {} s): {}",
                        self.queue_config
                            .refusal_wait(self.queue_config.max_refusals)
                            .as_secs(),
                        line_for(&result)
                    ),
                    (_, Some(r)) => format!(
                        "hlsfarm: retry {name} with {r} MiB reserved: {}",
                        line_for(&result)
                    ),
                    _ => format!("hlsfarm: retry {name}: {}", line_for(&result)),
                };
                self.progress.finish(line, &text, "");
                continue;
            }
            if result.status == TrialStatus::Success && !self.keep_scratch {
                let _ = std::fs::remove_dir_all(&plan.spec.scratch);
            }
            let (n, counts) = {
                let mut t = lock(&self.tally);
                if result.status == TrialStatus::Success {
                    t.0 += 1;
                } else {
                    t.1 += 1;
                }
                (t.0 + t.1, format!("{} succeeded, {} failed", t.0, t.1))
            };
            self.progress.finish(
                line,
                &format!(
                    "hlsfarm: [{n}/{}] {name}{}: {}",
                    self.total.load(Ordering::SeqCst),
                    self.funnel().phase_label(&plan.key),
                    line_for(&result)
                ),
                &counts,
            );
        }
    }

    /// A trial's final result: recorded in the funnel; with `on_failure = "apply-fix"` a
    /// deterministic failure with a known fix derives the fixed trial; a failed primary of a
    /// funnel promotes its backup. Returns the trials to queue with a line on each.
    fn after_final(&self, plan: &Planned, result: &TrialResult) -> Vec<(Planned, String)> {
        let mut next = Vec::new();
        let name = plan.name();
        if self.apply_fix
            && result.status == TrialStatus::Failed
            && plan.spec.derived_from.is_none()
            && let Some(f) = &result.failure
            && let Some(fix) = &f.fix
        {
            match plan.derive(fix, &f.reason) {
                Ok(fixed) => {
                    let text = format!(
                        "hlsfarm: {name}: deriving {} with {} (--on-failure apply-fix)",
                        fixed.name(),
                        serde_json::to_string(fix).unwrap_or_default()
                    );
                    self.funnel().add_derived(fixed.clone());
                    next.push((fixed, text));
                }
                Err(e) => self
                    .progress
                    .println(&format!("hlsfarm: {name}: its fix does not apply: {e}")),
            }
        }
        next.extend(self.funnel().on_final(&plan.key, result));
        next
    }
}
