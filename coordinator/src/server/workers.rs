//! The core's worker calls: register, lease (long-poll), heartbeat, complete, hand back.
//! Every call about a trial presents its lease token; a stale one gets [`Error::LeaseLost`]
//! (`FAILED_PRECONDITION`, kind `lease-lost`) and changes nothing (DESIGN §3). The gRPC
//! service of [`super::grpc`] only adapts them.

use std::sync::Arc;
use std::time::Duration;

use hlsfarm_common::blob::Blobs;
use hlsfarm_common::job::{Fence, TrialState};
use hlsfarm_common::plan::{DerivedPoint, PlanIndex, WorkerCaps};
use hlsfarm_common::queue::{Error as QueueError, Lease};
use hlsfarm_common::store::Progress;
use hlsfarm_proto::FromWire;
use hlsfarm_proto::v1;

use super::matcher::{Ask, served};
use super::{Coordinator, Error, lock};

/// The longest a lease call waits for work.
const MAX_WAIT: Duration = Duration::from_secs(20);

pub(super) fn token(t: Option<v1::LeaseToken>) -> Result<(String, Fence), Error> {
    let t = t.ok_or_else(|| Error::invalid("missing lease token"))?;
    Ok((
        t.trial_key,
        Fence {
            attempt: t.attempt,
            epoch: t.epoch,
        },
    ))
}

fn wire_token(key: &str, fence: Fence) -> v1::LeaseToken {
    v1::LeaseToken {
        trial_key: key.to_owned(),
        attempt: fence.attempt,
        epoch: fence.epoch,
    }
}

impl Coordinator {
    async fn leased_trial(&self, lease: Lease) -> Result<v1::LeasedTrial, Error> {
        let mut plan = self.plan(&lease.sweep_id).await?;
        let index: PlanIndex = serde_json::from_value(lease.payload.clone())
            .map_err(|e| Error::corrupt(format!("queue entry of trial {}", lease.key), e))?;
        if index.m >= plan.models.len() {
            // A model added to an open sweep since this process read its plan.
            plan = Arc::new(self.fresh_plan(&lease.sweep_id).await?);
        }
        let (Some(model), Some(settings)) = (plan.models.get(index.m), plan.points.get(index.g))
        else {
            return Err(Error::Corrupt(format!(
                "trial {} points outside its sweep's plan",
                lease.key
            )));
        };
        let derived = DerivedPoint::of(&lease.payload);
        let settings = derived.as_ref().map_or(settings, |d| &d.settings);
        let stage_limits = self
            .stage_limits(&plan, &lease.payload, lease.fence.attempt)
            .iter()
            .map(Into::into)
            .collect();
        Ok(v1::LeasedTrial {
            stage_limits,
            derived_from_json: derived
                .as_ref()
                .and_then(|d| serde_json::to_string(&d.from).ok())
                .unwrap_or_default(),
            token: Some(wire_token(&lease.key, lease.fence)),
            sweep_id: lease.sweep_id.clone(),
            model: Some(v1::ModelInput {
                name: model.name.clone(),
                sha256: model.digest.sha256.clone(),
                size_bytes: model.size_bytes,
                companions: model.digest.companions.clone().into_iter().collect(),
            }),
            settings: Some(settings.into()),
            stages: plan
                .stages_for(index.p)
                .iter()
                .map(|s| v1::Stage::from(*s) as i32)
                .collect(),
            emulation_samples: plan.emulation.samples,
            emulation_seed: plan.emulation.seed,
            staging_prefix: Blobs::attempt_prefix(&lease.key, lease.fence),
            resources: Some(v1::TrialResources {
                // What the lease reserved: a prediction where the sweep left memory at its
                // default, the sweep's own figure where it named one (raised above it after
                // an out-of-memory failure). A trial queued without a reservation (by an older
                // coordinator) gets the sweep's.
                memory_mib: if plan.memory_set || lease.memory_mib == 0 {
                    plan.resources.memory_mib.max(lease.memory_mib)
                } else {
                    lease.memory_mib
                },
                cores: plan.resources.cores,
            }),
        })
    }

    /// Records a worker and what it can run.
    pub async fn register(&self, r: v1::RegisterRequest) -> Result<v1::RegisterResponse, Error> {
        if r.worker_id.is_empty()
            || r.worker_id.len() > 200
            || r.worker_id.contains(char::is_whitespace)
        {
            return Err(Error::invalid(
                "worker_id must be 1-200 characters without spaces",
            ));
        }
        let mut caps = WorkerCaps::try_from(r.capabilities.unwrap_or_default())
            .map_err(|e| Error::invalid(format!("capabilities: {e}")))?;
        caps.hostname = r.hostname;
        let json = serde_json::to_string(&caps).map_err(Error::internal)?;
        self.queue.register(&r.worker_id, &json).await?;
        lock(&self.caps).insert(r.worker_id.clone(), caps.clone());
        tracing::info!(worker = %r.worker_id, host = %caps.hostname, slots = caps.slots, hls4ml = %caps.hls4ml_version, tools = ?caps.tools, "worker registered");
        let c = &self.config.coordinator;
        Ok(v1::RegisterResponse {
            lease_ms: c.lease_ms,
            heartbeat_ms: c.heartbeat_ms,
        })
    }

    /// Leases up to `max_trials` trials that fit the worker, waiting up to `wait_ms` (parked,
    /// DESIGN §2) when none does.
    pub async fn lease(&self, r: v1::LeaseRequest) -> Result<v1::LeaseResponse, Error> {
        let caps = self.worker_caps(&r.worker_id).await?;
        let wait = Duration::from_millis(r.wait_ms).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let max = usize::try_from(r.max_trials).unwrap_or(0).min(64);
        if max == 0 {
            return Ok(v1::LeaseResponse::default());
        }
        let ask = Ask {
            worker: r.worker_id.clone(),
            served: served(&self.classes().await?, &caps),
            caps,
            max,
            memory_mib: r.free_memory_mib,
            cores: r.free_cores,
        };
        let matcher = &self.matcher;
        let epoch = matcher.epoch();
        let mut leases = Vec::new();
        // Classes seen without any queued trial since the last wake: nothing to ask Redis.
        if !matcher.known_empty(&ask.served, epoch) {
            let answer = self.lease_for(&ask).await?;
            matcher.learn(&ask.served, epoch, &answer);
            leases = answer.leases;
        }
        if leases.is_empty() && !wait.is_zero() && !self.stop.is_cancelled() {
            // Parked: a matching pass answers it when work may have appeared (DESIGN §2).
            leases = matcher
                .park(ask, deadline, epoch)
                .wait(deadline, &self.stop)
                .await;
        }
        let mut trials = Vec::with_capacity(leases.len());
        for lease in leases {
            tracing::info!(trial = %&lease.key[..12], sweep = %lease.sweep_id, worker = %r.worker_id, attempt = lease.fence.attempt, "leased");
            trials.push(self.leased_trial(lease).await?);
        }
        Ok(v1::LeaseResponse { trials })
    }

    /// Extends the worker's leases and records where its trials are; answers which leases are stale
    /// and which trials to cancel.
    pub async fn heartbeat(&self, r: v1::HeartbeatRequest) -> Result<v1::HeartbeatResponse, Error> {
        let mut progress = Vec::with_capacity(r.trials.len());
        let mut fences = std::collections::HashMap::new();
        for t in r.trials {
            let (key, fence) = token(t.token)?;
            let stage = if t.stage == 0 {
                String::new()
            } else {
                hlsfarm_common::Stage::from_wire(t.stage)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default()
            };
            fences.insert(key.clone(), fence);
            progress.push(Progress {
                key,
                fence,
                stage,
                phase: t.phase.chars().take(200).collect(),
            });
        }
        let (reply, drain, registered) = self
            .queue
            .heartbeat_progress(&r.worker_id, &progress)
            .await?;
        if !registered {
            // Redis forgot the worker (flushed, or a fresh Redis after a failover): its
            // cached capabilities must not keep it leasing; its next lease is refused and it
            // registers again.
            lock(&self.caps).remove(&r.worker_id);
        }
        let tokens = |keys: Vec<String>| -> Vec<v1::LeaseToken> {
            keys.into_iter()
                .filter_map(|k| fences.get(&k).map(|f| wire_token(&k, *f)))
                .collect()
        };
        if !reply.stale.is_empty() {
            tracing::warn!(worker = %r.worker_id, stale = reply.stale.len(), "heartbeat presented stale leases");
        }
        Ok(v1::HeartbeatResponse {
            extended: tokens(reply.extended),
            stale: tokens(reply.stale),
            cancel: tokens(reply.cancel),
            drain,
        })
    }

    /// Gives a leased trial back unrun (a drain, a worker short of memory).
    pub async fn hand_back(&self, r: v1::HandBackRequest) -> Result<v1::HandBackResponse, Error> {
        let mut requeued = 0;
        for t in r.tokens {
            let (key, fence) = token(Some(t))?;
            match self.queue.hand_back_with(&key, fence, &r.reason).await {
                Ok(TrialState::Queued) => requeued += 1,
                Ok(_) => {}
                // A lease already lost needs no hand-back.
                Err(QueueError::Transition(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if requeued > 0 {
            self.wake().await;
        }
        Ok(v1::HandBackResponse { requeued })
    }
}
