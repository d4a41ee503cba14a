//! `complete`, the core's longest call: a worker ends an attempt. Each step is its own
//! function: the result read and checked against the token, the outcome the failure class
//! gives (retry, a larger memory reservation, a licence refusal, another worker), the uploads
//! checked, the summary kept in Redis, the state machine's move, then what follows an accepted
//! completion (the estimates, metrics, the commit, the wake, a funnel's backup).

use std::time::Duration;

use hlsfarm_common::FailureClass;
use hlsfarm_common::blob::Blobs;
use hlsfarm_common::failure::{OomRetry, oom_retry};
use hlsfarm_common::job::{TransitionError, TrialState};
use hlsfarm_common::queue::{Error as QueueError, Outcome};
use hlsfarm_common::results::{ResultSummary, TrialResult, TrialStatus};
use hlsfarm_common::store::Completion;
use hlsfarm_proto::FromWire;
use hlsfarm_proto::v1;

use super::workers::token;
use super::{Coordinator, Error};

/// How long a worker whose infrastructure failed a trial does not get it back while another
/// worker is about (a lone worker takes it back at once): long enough for another to take it.
const AVOID_WORKER_AFTER_INFRASTRUCTURE: Duration = Duration::from_secs(120);

/// What a completion asks of the state machine, from its failure class.
struct Verdict {
    outcome: Outcome,
    /// Memory to reserve from now on (MiB; 0 keeps it): raised after an out-of-memory failure.
    memory_mib: u64,
    /// The stage whose licence seat was refused.
    refused_feature: String,
    /// How long this worker should not get the trial back.
    avoid_worker_for: Duration,
    /// An out-of-memory failure that no worker has room to retry.
    hopeless: Option<OomRetry>,
}

/// The completion's `result.json`, checked to be one and to be this trial's.
fn parsed_result(key: &str, r: &v1::CompleteRequest) -> Result<Option<TrialResult>, Error> {
    let json = r.result.as_ref().map_or("", |x| x.result_json.as_str());
    if json.is_empty() {
        return Ok(None);
    }
    let parsed: TrialResult = serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("result_json is not a result.json: {e}")))?;
    if parsed.trial_key != key {
        return Err(Error::invalid(format!(
            "result.json is for trial {}, not {key}",
            parsed.trial_key
        )));
    }
    Ok(Some(parsed))
}

/// The summary kept in the trial's record: the result's, or one made from the failure, with
/// the failure's reason and a hopeless out-of-memory failure's note and fix.
fn summary_of(
    parsed: Option<&TrialResult>,
    failure: Option<&v1::Failure>,
    hopeless: Option<OomRetry>,
) -> Option<ResultSummary> {
    let mut summary = parsed.map(ResultSummary::from);
    if let (Some(s), Some(f)) = (summary.as_mut(), failure)
        && s.reason.is_none()
    {
        s.reason = Some(f.reason.clone());
    }
    if summary.is_none()
        && let Some(f) = failure
    {
        summary = Some(ResultSummary {
            status: "failed".into(),
            class: FailureClass::from_wire(f.class).ok(),
            reason: Some(f.reason.clone()),
            suggestion: (!f.suggestion.is_empty()).then(|| f.suggestion.clone()),
            ..ResultSummary::default()
        });
    }
    if let (Some(s), Some(OomRetry::GiveUp { note, fix })) = (summary.as_mut(), hopeless) {
        s.reason = Some(format!("{}{note}", s.reason.as_deref().unwrap_or_default()));
        s.suggestion = Some(fix);
    }
    summary
}

impl Coordinator {
    /// Ends an attempt: checks the result against the token and the uploads, classifies a
    /// failure (retry, oom raise, licence refusal), commits through the state machine, and
    /// records what it cost.
    pub async fn complete(&self, r: v1::CompleteRequest) -> Result<v1::CompleteResponse, Error> {
        let (key, fence) = token(r.token.clone())?;
        let staging = Blobs::attempt_prefix(&key, fence);
        let parsed = parsed_result(&key, &r)?;
        let verdict = self.verdict(&r, parsed.as_ref()).await?;
        let has_files = if parsed.is_some() {
            self.uploaded(&staging, &r).await?
        } else {
            false
        };
        if parsed.is_some() && !has_files && verdict.outcome == Outcome::Succeeded {
            return Err(Error::precondition(format!(
                "{staging}/result.json is not in the store: upload the results before completing"
            )));
        }
        let summary = summary_of(parsed.as_ref(), r.failure.as_ref(), verdict.hopeless);
        let completion = Completion {
            seconds: summary.as_ref().map_or(0.0, |s| s.seconds),
            summary: summary
                .as_ref()
                .map(|s| serde_json::to_string(s).unwrap_or_default())
                .unwrap_or_default(),
            prefix: if has_files {
                staging.clone()
            } else {
                String::new()
            },
            memory_mib: verdict.memory_mib,
            refused_feature: verdict.refused_feature,
            avoid_worker_for: verdict.avoid_worker_for,
        };
        // Derived before the failure is recorded, so the sweep never looks finished between.
        if verdict.outcome == (Outcome::Failed { retryable: false })
            && let Some(p) = &parsed
        {
            self.derive_fixed(p).await?;
        }
        let state = match self
            .queue
            .complete_with(&key, fence, verdict.outcome, &completion)
            .await
        {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(trial = %&key[..key.len().min(12)], worker = %r.worker_id, error = %e, "completion refused");
                if has_files
                    && matches!(
                        e,
                        QueueError::Transition(TransitionError::StaleFence { .. })
                    )
                {
                    // This token lost the trial: its uploads are never committed.
                    self.collect_attempt(&key, &staging).await;
                }
                return Err(e.into());
            }
        };
        tracing::info!(trial = %&key[..key.len().min(12)], worker = %r.worker_id, state = %state, "completed");
        self.after_completion(&key, &r, parsed.as_ref(), has_files, state)
            .await;
        Ok(v1::CompleteResponse {
            state: v1::TrialState::from(state) as i32,
        })
    }

    /// What the completion asks of the state machine: cancelled, succeeded, or failed, and
    /// how a failure's class changes the retry.
    async fn verdict(
        &self,
        r: &v1::CompleteRequest,
        parsed: Option<&TrialResult>,
    ) -> Result<Verdict, Error> {
        let mut verdict = Verdict {
            outcome: Outcome::Cancelled,
            memory_mib: 0,
            refused_feature: String::new(),
            avoid_worker_for: Duration::ZERO,
            hopeless: None,
        };
        verdict.outcome = if r.cancelled {
            Outcome::Cancelled
        } else if let Some(f) = &r.failure {
            let class =
                FailureClass::from_wire(f.class).map_err(|e| Error::invalid(e.to_string()))?;
            match class {
                // Not the trial's fault: queued again without spending an attempt.
                FailureClass::Licence => {
                    verdict.refused_feature = hlsfarm_common::Stage::from_wire(f.stage)
                        .map(|s| s.as_str().to_owned())
                        .unwrap_or_default();
                    Outcome::Refused
                }
                // Retried with room above the measured peak, on a worker that has it.
                FailureClass::Oom => {
                    let peak = parsed
                        .and_then(|p| p.failure.as_ref())
                        .and_then(|f| f.peak_memory_mib);
                    let largest = self.largest_worker_memory(&r.worker_id).await;
                    match oom_retry(
                        peak,
                        largest,
                        &format!(
                            "no worker offers clearly more (the largest offers {largest} MiB)"
                        ),
                        "give a worker more memory (worker.memory_mib)",
                    ) {
                        OomRetry::Again => Outcome::Failed { retryable: true },
                        OomRetry::Reserve(reserve) => {
                            verdict.memory_mib = reserve;
                            Outcome::Failed { retryable: true }
                        }
                        give_up @ OomRetry::GiveUp { .. } => {
                            verdict.hopeless = Some(give_up);
                            Outcome::Failed { retryable: false }
                        }
                    }
                }
                // The worker's own trouble (disk, network, store): another worker tries.
                FailureClass::Infrastructure => {
                    verdict.avoid_worker_for = AVOID_WORKER_AFTER_INFRASTRUCTURE;
                    Outcome::Failed { retryable: true }
                }
                _ => Outcome::Failed {
                    retryable: class.is_retryable(),
                },
            }
        } else if parsed.is_some_and(|p| p.status == TrialStatus::Success) {
            Outcome::Succeeded
        } else {
            return Err(Error::invalid(
                "a completion carries a successful result, a failure, or cancelled",
            ));
        };
        Ok(verdict)
    }

    /// True when the attempt's `result.json` is in the store (the commit copies it, so it must
    /// be); counts the bytes the worker uploaded. HEADs, not a LIST: some servers list by
    /// walking everything under the bucket.
    async fn uploaded(&self, staging: &str, r: &v1::CompleteRequest) -> Result<bool, Error> {
        let names = r
            .result
            .as_ref()
            .map(|x| x.artifacts.clone())
            .unwrap_or_default();
        let mut bytes = 0;
        for name in std::iter::once("result.json".to_owned())
            .chain(names.into_iter().filter(|n| n != "result.json"))
        {
            let size = self
                .blobs
                .size(&format!("{staging}/{name}"))
                .await
                .map_err(Error::backend)?;
            match size {
                Some(size) => bytes += size,
                None if name == "result.json" => return Ok(false),
                None => {}
            }
        }
        self.metrics
            .store_bytes
            .get_or_create(&super::metrics::Writer {
                by: "worker".into(),
            })
            .inc_by(bytes);
        Ok(true)
    }

    /// What follows a completion the state machine took: the cost for the estimates, the
    /// metrics, the commit of an accepted result, the wake of parked lease calls, and a
    /// failed funnel primary's backup.
    async fn after_completion(
        &self,
        key: &str,
        r: &v1::CompleteRequest,
        parsed: Option<&TrialResult>,
        has_files: bool,
        state: TrialState,
    ) {
        self.trial_ended();
        if let Some(p) = parsed {
            // What it cost, for the estimates (whichever sweep runs the trial now).
            if !p.timings.is_empty()
                && let Ok(record) = self.queue.trial(key).await
            {
                self.observe(&record.sweep, p).await;
            }
            for t in &p.timings {
                self.metrics
                    .stage_seconds
                    .get_or_create(&super::metrics::StageLabel {
                        stage: t.stage.to_string(),
                    })
                    .observe(t.seconds);
            }
        }
        if r.failure.as_ref().is_some_and(|f| {
            f.class == v1::FailureClass::Infrastructure as i32
                && f.reason.starts_with("cannot upload")
        }) {
            self.metrics
                .store_errors
                .get_or_create(&super::metrics::Writer {
                    by: "worker".into(),
                })
                .inc();
        }
        if has_files {
            // Accepted: this token won. Copy its files now; the committer loop retries if
            // this fails or the coordinator dies here.
            self.commit_result(key).await;
        }
        // Queued again, or ended: its seats, and any trial waiting on the sweep's end, are
        // free for parked lease calls.
        self.wake().await;
        if matches!(state, TrialState::Failed | TrialState::Dead) {
            // A funnel's primary that failed promotes its backup now, not at the sweep's end.
            self.after_failure(key).await;
        }
    }
}
