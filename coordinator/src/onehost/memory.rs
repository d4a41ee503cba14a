//! The host's memory shared among a one-host run's trials, and the retry of a trial that ran
//! out of it with a larger reservation.

use std::collections::HashMap;
use std::path::Path;

use hlsfarm_common::failure::{FailureClass, OomRetry, oom_retry};
use hlsfarm_common::queue::Outcome;
use hlsfarm_common::results::TrialResult;
use hlsfarm_common::sync::lock;
use hlsfarm_worker::trial::write_result;
use tokio_util::sync::CancellationToken;

/// The host's memory as the one-host run shares it among trials: each trial reserves its
/// memory limit before it runs (the default per-slot share, or more after it ran out of
/// memory), so a trial retried with twice its peak runs with fewer beside it.
pub(super) struct MemoryBudget {
    pub(super) total_mib: u64,
    pub(super) permits: tokio::sync::Semaphore,
    pub(super) raised: std::sync::Mutex<HashMap<String, u64>>,
}

impl MemoryBudget {
    pub(super) fn new(total_mib: u64) -> MemoryBudget {
        MemoryBudget {
            total_mib,
            permits: tokio::sync::Semaphore::new(total_mib.min(u64::from(u32::MAX)) as usize),
            raised: Default::default(),
        }
    }

    /// The memory limit of the trial's next run.
    pub(super) fn reservation(&self, key: &str, default: u64) -> u64 {
        let raised = lock(&self.raised);
        raised
            .get(key)
            .copied()
            .unwrap_or(default)
            .min(self.total_mib)
    }

    /// The reservation an out-of-memory failure raised the trial to, if any.
    pub(super) fn raised_to(&self, key: &str) -> Option<u64> {
        let raised = lock(&self.raised);
        raised.get(key).copied()
    }

    /// Waits until `mib` is free (None when cancelled first).
    pub(super) async fn reserve(
        &self,
        mib: u64,
        cancel: &CancellationToken,
    ) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let n = mib.min(u64::from(u32::MAX)) as u32;
        tokio::select! {
            permit = self.permits.acquire_many(n) => permit.ok(),
            () = cancel.cancelled() => None,
        }
    }

    /// How a failed trial is reported to the queue. `oom` with a measured peak is retried
    /// with twice the peak reserved when the host has that much, else ends with the peak
    /// named (its `result.json` is written again to say so); `licence` is a refusal, not the
    /// trial's fault.
    pub(super) fn outcome(
        &self,
        key: &str,
        result: &mut TrialResult,
        output_dir: &Path,
    ) -> Outcome {
        let Some(failure) = result.failure.as_mut() else {
            return Outcome::Failed { retryable: false };
        };
        match failure.class {
            FailureClass::Licence => Outcome::Refused,
            FailureClass::Oom => match oom_retry(
                failure.peak_memory_mib,
                self.total_mib,
                &format!("this host has {} MiB", self.total_mib),
                "run it on a host with more memory",
            ) {
                OomRetry::Again => Outcome::Failed { retryable: true },
                OomRetry::Reserve(reserve) => {
                    lock(&self.raised).insert(key.to_owned(), reserve);
                    Outcome::Failed { retryable: true }
                }
                OomRetry::GiveUp { note, fix } => {
                    failure.reason.push_str(&note);
                    failure.suggestion = Some(fix);
                    write_result(result, output_dir);
                    Outcome::Failed { retryable: false }
                }
            },
            class => Outcome::Failed {
                retryable: class.is_retryable(),
            },
        }
    }
}
