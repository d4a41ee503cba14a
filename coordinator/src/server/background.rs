//! The coordinator's loops. Each step is safe with several coordinators on one Redis: the
//! reaper's script is atomic, and commits and aggregates are claimed (with a hold time, so a
//! coordinator that dies mid-step is replaced).

use std::sync::Arc;
use std::time::Duration;

use hlsfarm_common::FailureClass;
use hlsfarm_common::blob::RetryBudget;
use hlsfarm_common::plan::{PlanIndex, SweepPlan};
use hlsfarm_common::queue::Queue;
use hlsfarm_common::results::{ModelRef, ResultSummary, TrialFailure, TrialResult, TrialStatus};
use hlsfarm_common::store::{ClaimSet, TrialRecord};
use hlsfarm_common::trial_key::Toolchain;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Coordinator;

/// How long a claimed commit or aggregate is held before another coordinator may take it.
const HOLD: Duration = Duration::from_secs(120);

async fn every<F, Fut>(period: Duration, stop: CancellationToken, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => step().await,
        }
    }
}

/// Claims are looked for at least this often with no trial ending to wake the loops (a
/// step deferred after a failure, a claim held by a coordinator that died).
const CLAIMS_FALLBACK: Duration = Duration::from_secs(2);

/// Starts the loops; they end when `stop` is cancelled.
pub(super) fn spawn(c: Arc<Coordinator>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();
    {
        let c = c.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move { c.reap_loop(stop).await }));
    }
    for (set, batch) in [(ClaimSet::Commits, 50), (ClaimSet::Finished, 5)] {
        let c = c.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move {
            c.claims_loop(set, batch, stop).await;
        }));
    }
    {
        let c = c.clone();
        handles.push(tokio::spawn(async move { c.match_loop().await }));
    }
    {
        let c = c.clone();
        let stop = stop.clone();
        handles.push(tokio::spawn(async move { c.learn_loop(stop).await }));
    }
    {
        let c = c.clone();
        handles.push(tokio::spawn(async move { c.listen_for_wakes().await }));
    }
    {
        let c = c.clone();
        handles.push(tokio::spawn(every(
            Duration::from_secs(60),
            stop,
            move || {
                let c = c.clone();
                async move {
                    if let Err(e) = c.queue.forget_workers(Duration::from_secs(3600)).await {
                        tracing::warn!(error = %e, "cannot forget silent workers");
                    }
                }
            },
        )));
    }
    handles
}

/// The result of a trial that left no `result.json`: its state and last known reason.
pub(super) fn unreported(plan: &SweepPlan, record: &TrialRecord) -> TrialResult {
    let index: Option<PlanIndex> = serde_json::from_str(&record.payload).ok();
    let model = index.and_then(|i| plan.models.get(i.m));
    let settings = index
        .and_then(|i| plan.points.get(i.g))
        .cloned()
        .unwrap_or_default();
    let summary: Option<ResultSummary> = serde_json::from_str(&record.summary).ok();
    let cancelled = record.state == "cancelled";
    let reason = summary
        .as_ref()
        .and_then(|s| s.reason.clone())
        .unwrap_or_else(|| match record.state.as_str() {
            "dead" => format!(
                "dead after {} attempts (leases lost: the worker died or was cut off)",
                record.attempt
            ),
            "cancelled" => "cancelled by an operator".to_owned(),
            other => format!("not finished ({other})"),
        });
    TrialResult {
        schema: hlsfarm_common::results::RESULT_SCHEMA.to_owned(),
        trial_key: record.key.clone(),
        model: ModelRef {
            name: model.map(|m| m.name.clone()).unwrap_or_default(),
            sha256: model.map(|m| m.digest.sha256.clone()).unwrap_or_default(),
        },
        toolchain: plan
            .toolchain(settings.backend)
            .cloned()
            .unwrap_or(Toolchain {
                hls4ml_version: String::new(),
                tool: None,
            }),
        settings,
        stages: plan.stages.clone(),
        status: if cancelled {
            TrialStatus::Cancelled
        } else {
            TrialStatus::Failed
        },
        start_time: String::new(),
        end_time: String::new(),
        timings: Vec::new(),
        fidelity: None,
        warnings: Vec::new(),
        rewrites: Vec::new(),
        inputs: Vec::new(),
        outputs: Vec::new(),
        notes: Vec::new(),
        preflight: Vec::new(),
        derived_from: None,
        memory_limit_mib: None,
        parameters: None,
        multiplications: None,
        largest_layer: None,
        tools_beside_emulation: false,
        accuracy: None,
        search: None,
        effective_reuse_factor: Default::default(),
        reports: Default::default(),
        failure: Some(TrialFailure {
            class: summary
                .as_ref()
                .and_then(|s| s.class)
                .unwrap_or(FailureClass::Infrastructure),
            reason,
            stage: summary.as_ref().and_then(|s| s.stage),
            log_tail: String::new(),
            peak_memory_mib: None,
            fix: None,
            suggestion: summary.and_then(|s| s.suggestion),
        }),
        kept_files: Vec::new(),
        tarball: None,
        kept_bytes: 0,
    }
}

impl Coordinator {
    /// Ends expired leases, each at its deadline: the loop sleeps until the soonest lease
    /// expires, or a whole lease period when none is held (a lease granted meanwhile expires
    /// no sooner than that).
    async fn reap_loop(&self, stop: CancellationToken) {
        let lease = Duration::from_millis(self.config.coordinator.lease_ms);
        loop {
            let pause = match self.queue.reap().await {
                Ok((n, next)) => {
                    if n > 0 {
                        tracing::warn!(trials = n, "leases expired: trials queued again");
                        self.wake().await;
                    }
                    next.map_or(lease, |d| {
                        (d + Duration::from_millis(5)).clamp(Duration::from_millis(10), lease)
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reaper: Redis unreachable, retrying");
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Takes the claims of `set` (result copies, aggregates) when a trial ends here or in
    /// another coordinator (the wake channel), and every [`CLAIMS_FALLBACK`].
    async fn claims_loop(&self, set: ClaimSet, batch: usize, stop: CancellationToken) {
        let mut woken = self.claims.subscribe();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = woken.changed() => {}
                _ = tokio::time::sleep(CLAIMS_FALLBACK) => {}
            }
            loop {
                let members = match self.queue.claim(set, batch, HOLD).await {
                    Ok(members) => members,
                    Err(e) => {
                        tracing::warn!(error = %e, ?set, "claims: Redis unreachable");
                        break;
                    }
                };
                let full = members.len() == batch;
                for member in members {
                    match set {
                        ClaimSet::Commits => self.commit_result(&member).await,
                        ClaimSet::Finished => self.aggregate(&member).await,
                    }
                }
                if !full {
                    break;
                }
            }
            // Trials ending together are taken together.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Commits an accepted result: its attempt folder's `result.json` copied to
    /// `results/<key>/`, earlier attempts' files deleted. The trial's record names the
    /// prefix Redis accepted, so a stale lease's files are never committed.
    pub(super) async fn commit_result(&self, key: &str) {
        let record = match self.queue.trial(key).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(trial = %key, error = %e, "commit: cannot read the trial");
                return;
            }
        };
        if record.result_prefix.is_empty() {
            let _ = self.queue.release(ClaimSet::Commits, key).await;
            return;
        }
        match self.blobs.commit_attempt(&record.result_prefix, key).await {
            Ok(collected) => {
                tracing::debug!(trial = %key, prefix = %record.result_prefix, collected, "result committed");
                let _ = self.queue.release(ClaimSet::Commits, key).await;
            }
            Err(e) => {
                self.metrics
                    .store_errors
                    .get_or_create(&super::metrics::Writer {
                        by: "coordinator".into(),
                    })
                    .inc();
                tracing::warn!(trial = %key, error = %e, "commit failed; retrying in 2 s");
                let _ = self
                    .queue
                    .defer(ClaimSet::Commits, key, Duration::from_secs(2))
                    .await;
            }
        }
    }

    /// Deletes the uploads of an attempt that lost its trial (a completion refused as stale),
    /// unless the trial's record names it (it cannot, but a commit must never lose its files).
    pub(super) async fn collect_attempt(&self, key: &str, prefix: &str) {
        match self.queue.trial(key).await {
            Ok(record) if record.result_prefix != prefix => {
                if let Err(e) = self.blobs.delete_prefix(prefix).await {
                    tracing::warn!(trial = %key, %prefix, error = %e, "cannot delete a stale attempt's uploads");
                }
            }
            _ => {}
        }
    }

    /// Writes a finished sweep's `synthesis_results.json` and `results.csv` under
    /// `sweeps/<id>/`.
    pub(super) async fn aggregate(&self, sweep: &str) {
        match self.try_aggregate(sweep).await {
            Ok(true) => {
                let _ = self.queue.release(ClaimSet::Finished, sweep).await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(sweep, error = %e, "aggregate failed; retrying in 2 s");
                let _ = self
                    .queue
                    .defer(ClaimSet::Finished, sweep, Duration::from_secs(2))
                    .await;
            }
        }
    }

    async fn try_aggregate(&self, sweep: &str) -> anyhow::Result<bool> {
        let counts = self.queue.counts(sweep).await?;
        if counts.unfinished() > 0 {
            // Retried since it finished: it ends again later.
            self.queue.release(ClaimSet::Finished, sweep).await?;
            return Ok(false);
        }
        let plan = self
            .plan(sweep)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s))?;
        if plan.open {
            // Its follower adds more models: looked at again until it closes.
            self.queue
                .defer(ClaimSet::Finished, sweep, Duration::from_secs(2))
                .await?;
            return Ok(false);
        }
        // A trial shared with another sweep that still runs it: this sweep's counters do
        // not count it, so its end would not wake this sweep again; its gate and aggregate
        // wait for it here.
        let shared_running = self
            .queue
            .sweep_trials(sweep)
            .await?
            .iter()
            .any(|(r, shared)| *shared && !super::funnel::is_final(&r.state));
        if shared_running {
            self.queue
                .defer(ClaimSet::Finished, sweep, Duration::from_secs(2))
                .await?;
            return Ok(false);
        }
        if !plan.gates.is_empty() && self.advance_funnel(sweep).await? > 0 {
            // The funnel sent trials on: the sweep ends again when they do.
            return Ok(false);
        }
        let super::summary::SweepSummary { summary, saved } =
            self.sweep_summary(sweep, &plan).await?;
        // The same files as one host writes, the Pareto plot included.
        let (files, plot_warning) = crate::pareto::sweep_outputs(&summary, None)?;
        if let Some(warning) = plot_warning {
            tracing::warn!(sweep, %warning, "sweep aggregated without its plot");
        }
        for (name, bytes) in files {
            self.blobs
                .put_checked(
                    &format!("sweeps/{sweep}/{name}"),
                    bytes,
                    RetryBudget::default(),
                )
                .await?;
        }
        self.queue
            .note(
                "aggregated",
                sweep,
                &format!(
                    "{} trials: {} succeeded, {} failed{}",
                    summary.total,
                    summary.successful,
                    summary.failed,
                    saved.map_or_else(String::new, |(saved, all)| format!(
                        "; the gates saved {saved} of {all} tool-stage runs"
                    ))
                ),
            )
            .await?;
        tracing::info!(
            sweep,
            total = summary.total,
            succeeded = summary.successful,
            "sweep finished; results aggregated"
        );
        Ok(true)
    }
}
