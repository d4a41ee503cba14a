//! The coordinator's loops. Each step is safe with several coordinators on one Redis: the
//! reaper's script is atomic, and commits and aggregates are claimed (with a hold time, so a
//! coordinator that dies mid-step is replaced).

use std::sync::Arc;
use std::time::Duration;

use hlsfarm_common::aggregate::{SeedEntry, SeedSummary};
use hlsfarm_common::blob::{Blobs, RetryBudget};
use hlsfarm_common::queue::Queue;
use hlsfarm_common::results::TrialResult;
use hlsfarm_common::store::ClaimSet;
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

/// Starts the loops; they end when `stop` is cancelled.
pub(super) fn spawn(c: Arc<Coordinator>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
    let lease = Duration::from_millis(c.config.coordinator.lease_ms);
    let reap_period = (lease / 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
    let mut handles = Vec::new();
    {
        let c = c.clone();
        handles.push(tokio::spawn(every(reap_period, stop.clone(), move || {
            let c = c.clone();
            async move {
                match c.queue.reap_expired().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(trials = n, "leases expired: trials queued again");
                        c.work.notify_waiters();
                    }
                    Err(e) => tracing::warn!(error = %e, "reaper: Redis unreachable, retrying"),
                }
            }
        })));
    }
    {
        let c = c.clone();
        handles.push(tokio::spawn(every(
            Duration::from_millis(500),
            stop.clone(),
            move || {
                let c = c.clone();
                async move {
                    match c.queue.claim(ClaimSet::Commits, 50, HOLD).await {
                        Ok(keys) => {
                            for key in keys {
                                c.commit_result(&key).await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "committer: Redis unreachable"),
                    }
                }
            },
        )));
    }
    {
        let c = c.clone();
        handles.push(tokio::spawn(every(
            Duration::from_millis(500),
            stop.clone(),
            move || {
                let c = c.clone();
                async move {
                    match c.queue.claim(ClaimSet::Finished, 5, HOLD).await {
                        Ok(sweeps) => {
                            for sweep in sweeps {
                                c.aggregate(&sweep).await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "aggregator: Redis unreachable"),
                    }
                }
            },
        )));
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

impl Coordinator {
    /// Copies an accepted result from its staging prefix into `results/<key>/`. The trial's
    /// record names the prefix Redis accepted, so a stale lease's files are never copied.
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
        match self.blobs.promote(&record.result_prefix, key).await {
            Ok(files) => {
                tracing::debug!(trial = %key, files = files.len(), "result committed");
                let _ = self.queue.release(ClaimSet::Commits, key).await;
            }
            Err(e) => tracing::warn!(trial = %key, error = %e, "commit failed; retrying later"),
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
            Err(e) => tracing::warn!(sweep, error = %e, "aggregate failed; retrying later"),
        }
    }

    async fn try_aggregate(&self, sweep: &str) -> anyhow::Result<bool> {
        let counts = self.queue.counts(sweep).await?;
        if counts.unfinished() > 0 {
            // Retried since it finished: it ends again later.
            self.queue.release(ClaimSet::Finished, sweep).await?;
            return Ok(false);
        }
        let trials = self.queue.sweep_trials(sweep).await?;
        let mut entries = Vec::new();
        for (record, reused) in &trials {
            let committed = format!("{}/result.json", Blobs::result_prefix(&record.key));
            let bytes = match self.blobs.get(&committed).await {
                Ok(b) => b,
                Err(_) if !record.result_prefix.is_empty() => {
                    match self
                        .blobs
                        .get(&format!("{}/result.json", record.result_prefix))
                        .await
                    {
                        Ok(b) => b,
                        Err(_) => continue,
                    }
                }
                Err(_) => continue,
            };
            let Ok(result) = serde_json::from_slice::<TrialResult>(&bytes) else {
                continue;
            };
            let dir = Blobs::result_prefix(&record.key);
            let mut entry = SeedEntry::new(
                std::path::Path::new(&result.model.name.clone()),
                std::path::Path::new(&dir),
                result,
                *reused,
            );
            entry.tarball = entry
                .tarball
                .as_ref()
                .map(|_| format!("{dir}/artifacts.tar.gz"));
            entries.push(entry);
        }
        let summary = SeedSummary::new(entries);
        let json = serde_json::to_vec_pretty(&summary)?;
        let csv = summary.csv()?;
        self.blobs
            .put_checked(
                &format!("sweeps/{sweep}/synthesis_results.json"),
                json,
                RetryBudget::default(),
            )
            .await?;
        self.blobs
            .put_checked(
                &format!("sweeps/{sweep}/results.csv"),
                csv,
                RetryBudget::default(),
            )
            .await?;
        self.queue
            .note(
                "aggregated",
                sweep,
                &format!(
                    "{} trials: {} succeeded, {} failed",
                    summary.total, summary.successful, summary.failed
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
