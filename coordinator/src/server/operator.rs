//! The core's operator calls: upload, submit, status, watch, results, cancel, retry, drain
//! (the gRPC service of [`super::grpc`] and the HTTP API of [`super::http`] only adapt them).

use std::pin::Pin;

use hlsfarm_common::blob::{Blobs, RetryBudget};
use hlsfarm_common::job::TrialState;
use hlsfarm_common::results::ResultSummary;
use hlsfarm_common::store::{SweepRecord, TrialRecord};
use hlsfarm_common::trial_key::sha256_hex;
use hlsfarm_proto::v1;
use tokio_stream::{Stream, StreamExt};

use super::validate::{check_name, check_sha};
use super::{Coordinator, Error};

fn wire_state(state: &str) -> i32 {
    state
        .parse::<TrialState>()
        .map_or(0, |s| v1::TrialState::from(s) as i32)
}

/// A sweep's counts and ETA as the wire shows them.
pub(super) fn sweep_status(s: &SweepRecord) -> v1::SweepStatus {
    let c = &s.counts;
    let counts = [
        ("queued", c.queued),
        ("leased", c.leased),
        ("succeeded", c.succeeded),
        ("failed", c.failed),
        ("cancelled", c.cancelled),
        ("dead", c.dead),
        ("reused", s.reused),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    v1::SweepStatus {
        sweep_id: s.id.clone(),
        name: s.name.clone(),
        priority: s.priority,
        counts,
        eta_seconds: eta(s),
        eta_sd_seconds: None,
        submitted_unix_ms: s.submitted_ms,
        gates: Vec::new(),
        pending: s.pending,
    }
}

/// Seconds left: the mean attempt's duration times the trials left, over the trials running
/// at once. Unknown until one attempt has finished. (Once the estimates have learned
/// anything, [`Coordinator::learned_eta`] replaces it.)
pub(super) fn eta(s: &SweepRecord) -> Option<f64> {
    let c = &s.counts;
    if c.unfinished() == 0 {
        return Some(0.0);
    }
    if s.attempts_finished == 0 {
        return None;
    }
    let mean = s.seconds_total / s.attempts_finished as f64;
    let parallel = c.leased.max(1) as f64;
    Some(mean * (c.queued as f64 + c.leased as f64 * 0.5) / parallel)
}

pub(super) fn trial_info(r: &TrialRecord, reused: bool, model: &str) -> v1::TrialInfo {
    let summary: Option<ResultSummary> = serde_json::from_str(&r.summary).ok();
    let failure = summary.as_ref().and_then(|s| {
        s.class.map(|class| v1::Failure {
            class: v1::FailureClass::from(class) as i32,
            reason: s.reason.clone().unwrap_or_default(),
            stage: s.stage.map_or(0, |st| v1::Stage::from(st) as i32),
            log_tail: String::new(),
            suggestion: s.suggestion.clone().unwrap_or_default(),
        })
    });
    let result = summary.as_ref().map(|s| v1::TrialResult {
        hls_resources: Some(v1::Resources {
            lut: s.lut,
            ff: s.ff,
            dsp: s.dsp,
            bram: s.bram,
            uram: None,
        }),
        latency_max_cycles: s.latency_cycles,
        interval_max_cycles: s.interval_cycles,
        fidelity: s.max_abs_diff.map(|d| v1::Fidelity {
            max_abs_diff: d,
            argmax_agreement: s.argmax_agreement.unwrap_or(0.0),
            ..v1::Fidelity::default()
        }),
        result_json: r.summary.clone(),
        ..v1::TrialResult::default()
    });
    v1::TrialInfo {
        trial_key: r.key.clone(),
        sweep_id: r.sweep.clone(),
        model_name: model.to_owned(),
        settings: None,
        state: wire_state(&r.state),
        attempt: r.attempt,
        worker_id: r.worker.clone(),
        current_stage: r
            .stage
            .parse::<hlsfarm_common::Stage>()
            .map_or(0, |s| v1::Stage::from(s) as i32),
        result,
        failure,
        reused,
        phase: r.phase.clone(),
        selection: String::new(),
        search_json: String::new(),
        predicted_seconds: None,
        predicted_memory_mib: None,
        running_seconds: (r.state == "leased" && r.leased_at_ms > 0)
            .then(|| super::seconds_since(r.leased_at_ms)),
    }
}

/// `info` with the prediction by `estimator` of the trial of `plan` whose queue payload is
/// `payload`.
fn predicted(
    info: &mut v1::TrialInfo,
    estimator: &hlsfarm_common::estimate::Estimator,
    plan: &hlsfarm_common::plan::SweepPlan,
    payload: &str,
) {
    if let Some(p) = Coordinator::prediction_of(estimator, plan, payload) {
        info.predicted_seconds = Some(p.seconds);
        info.predicted_memory_mib = p.memory_mib;
    }
}

/// Events as the core streams them.
pub(super) type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Error>> + Send>>;

impl Coordinator {
    /// Stores a model file streamed in chunks (the first names it), checked against its announced
    /// sha256 and the upload limit; a file already stored is not sent again.
    pub async fn upload_model(
        &self,
        mut stream: impl Stream<Item = Result<v1::UploadChunk, Error>> + Unpin + Send,
    ) -> Result<v1::UploadModelResponse, Error> {
        let first = stream
            .next()
            .await
            .transpose()?
            .ok_or_else(|| Error::invalid("empty upload"))?;
        check_name(&first.name).map_err(|e| Error::invalid(format!("file name {e}")))?;
        check_sha(&first.sha256).map_err(|e| Error::invalid(format!("sha256: {e}")))?;
        let path = Blobs::input_path(&first.sha256);
        if self.blobs.exists(&path).await.map_err(Error::backend)? {
            return Ok(v1::UploadModelResponse {
                model: Some(v1::ModelInput {
                    name: first.name,
                    sha256: first.sha256,
                    size_bytes: 0,
                    companions: Default::default(),
                }),
                already_stored: true,
            });
        }
        let limit = self.config.coordinator.max_upload_mib * 1024 * 1024;
        let mut bytes = first.data;
        while let Some(chunk) = stream.next().await.transpose()? {
            bytes.extend_from_slice(&chunk.data);
            if bytes.len() as u64 > limit {
                return Err(Error::invalid(format!(
                    "`{}` is larger than the upload limit of {} MiB (coordinator.max_upload_mib)",
                    first.name, self.config.coordinator.max_upload_mib
                )));
            }
        }
        let sha = sha256_hex(&bytes);
        if sha != first.sha256 {
            return Err(Error::invalid(format!(
                "`{}` arrived with sha256 {sha}, not the {} announced: the upload was damaged; send it again",
                first.name, first.sha256
            )));
        }
        let size = bytes.len() as u64;
        let writer = super::metrics::Writer {
            by: "coordinator".into(),
        };
        if let Err(e) = self
            .blobs
            .put_checked(&path, bytes, RetryBudget::default())
            .await
        {
            self.metrics.store_errors.get_or_create(&writer).inc();
            return Err(Error::backend(e));
        }
        self.metrics.store_bytes.get_or_create(&writer).inc_by(size);
        Ok(v1::UploadModelResponse {
            model: Some(v1::ModelInput {
                name: first.name,
                sha256: sha,
                size_bytes: size,
                companions: Default::default(),
            }),
            already_stored: false,
        })
    }

    /// Expands a sweep into trials and queues them.
    pub async fn submit_sweep(
        &self,
        request: v1::SubmitSweepRequest,
    ) -> Result<v1::SubmitSweepResponse, Error> {
        let spec = request.spec.ok_or_else(|| Error::invalid("missing spec"))?;
        let (sweep_id, trials, submitted) = self.submit(spec).await?;
        Ok(v1::SubmitSweepResponse {
            sweep_id,
            trials,
            queued: submitted.added,
            reused: submitted.reused,
        })
    }

    /// Adds models to an open sweep (`submit --follow`).
    pub async fn add_models(
        &self,
        r: v1::AddModelsRequest,
    ) -> Result<v1::SubmitSweepResponse, Error> {
        let sweep_id = r.sweep_id.clone();
        let (trials, submitted) = self.extend_sweep(r).await?;
        Ok(v1::SubmitSweepResponse {
            sweep_id,
            trials,
            queued: submitted.added,
            reused: submitted.reused,
        })
    }

    /// The cluster snapshot: sweeps with their ETAs, workers with their running trials, seats,
    /// recent failures.
    pub async fn get_status(
        &self,
        r: v1::GetStatusRequest,
    ) -> Result<v1::GetStatusResponse, Error> {
        let snap = self.queue.snapshot(r.include_finished, 200).await?;
        let estimator = self.estimator();
        let mut running: Vec<v1::TrialInfo> = Vec::with_capacity(snap.leased.len());
        for t in &snap.leased {
            let mut info = trial_info(t, false, "");
            if let Some(e) = &estimator
                && let Ok(plan) = self.plan(&t.sweep).await
            {
                predicted(&mut info, e, &plan, &t.payload);
            }
            running.push(info);
        }
        let mut workers = Vec::new();
        for w in &snap.workers {
            let caps: hlsfarm_common::plan::WorkerCaps =
                serde_json::from_str(&w.capabilities).unwrap_or_default();
            workers.push(v1::WorkerStatus {
                worker_id: w.id.clone(),
                hostname: caps.hostname.clone(),
                capabilities: Some((&caps).into()),
                trials: running
                    .iter()
                    .filter(|t| t.worker_id == w.id)
                    .cloned()
                    .collect(),
                heartbeat_age_seconds: (snap.now_ms - w.seen_ms).max(0) as f64 / 1000.0,
                draining: w.draining,
            });
        }
        let limits = &self.config.coordinator.seats;
        let mut features: Vec<&String> = limits.keys().chain(snap.seats.keys()).collect();
        features.sort();
        features.dedup();
        let mut sweeps = Vec::with_capacity(snap.sweeps.len());
        for s in &snap.sweeps {
            let mut status = sweep_status(s);
            status.gates = self.gate_lines(&s.id).await;
            if let Some((eta, sd)) = self.learned_eta(s).await {
                status.eta_seconds = Some(eta);
                status.eta_sd_seconds = Some(sd);
            }
            sweeps.push(status);
        }
        Ok(v1::GetStatusResponse {
            sweeps,
            workers,
            seats: features
                .into_iter()
                .map(|f| v1::SeatStatus {
                    feature: f.clone(),
                    in_use: snap.seats.get(f).copied().unwrap_or(0),
                    limit: limits.get(f).copied().unwrap_or(0),
                })
                .collect(),
            recent_failures: snap
                .failures
                .iter()
                .map(|t| trial_info(t, false, ""))
                .collect(),
        })
    }

    /// Events from `after_cursor` on (new ones only when empty), of one sweep or all.
    pub async fn watch(&self, r: v1::WatchRequest) -> Result<EventStream, Error> {
        let mut reader = self.queue.events().await?;
        let mut cursor = if r.after_cursor.is_empty() {
            self.queue.last_event_id().await?
        } else {
            r.after_cursor
        };
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                let events = tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tx.closed() => return,
                    events = reader.read(&cursor, 5000, 500) => events,
                };
                let events = match events {
                    Ok(events) => events,
                    Err(e) => {
                        // Redis restarting: keep the cursor and try again.
                        tracing::warn!(error = %e, "watch: cannot read events, retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                        continue;
                    }
                };
                for e in events {
                    cursor = e.id.clone();
                    if !r.sweep_id.is_empty() && e.sweep != r.sweep_id {
                        continue;
                    }
                    let event = v1::Event {
                        time_unix_ms: e.time_ms(),
                        cursor: e.id,
                        sweep_id: e.sweep,
                        trial_key: e.trial,
                        worker_id: e.worker,
                        state: wire_state(&e.state),
                        message: if e.message.is_empty() {
                            e.kind
                        } else {
                            format!("{} {}", e.kind, e.message)
                        },
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// A sweep's trials with their results, predictions and funnel decisions.
    pub async fn get_results(
        &self,
        request: v1::GetResultsRequest,
    ) -> Result<v1::GetResultsResponse, Error> {
        let id = request.sweep_id;
        let sweep = self.queue.sweep(&id).await?;
        let plan = self.plan(&id).await?;
        let trials = self.queue.sweep_trials(&id).await?;
        let listed = self.listed_trials(&id, &plan, trials).await?;
        let estimator = self.estimator();
        let infos = listed
            .iter()
            .map(|(t, reused, decisions)| {
                let index: Option<hlsfarm_common::plan::PlanIndex> =
                    serde_json::from_str(&t.payload).ok();
                let (model, settings) = index
                    .and_then(|i| Some((plan.models.get(i.m)?, plan.points.get(i.g)?)))
                    .map_or((String::new(), None), |(m, s)| (m.name.clone(), Some(s)));
                let mut info = trial_info(t, *reused, &model);
                if let Some(e) = &estimator {
                    predicted(&mut info, e, &plan, &t.payload);
                }
                info.settings = settings.map(Into::into);
                info.selection = super::funnel::selection_text(decisions);
                info.search_json = plan
                    .search
                    .get(&model)
                    .and_then(|s| serde_json::to_string(s).ok())
                    .unwrap_or_default();
                info
            })
            .collect();
        let mut status = sweep_status(&sweep);
        status.gates = self.gate_lines(&id).await;
        if let Some((eta, sd)) = self.learned_eta(&sweep).await {
            status.eta_seconds = Some(eta);
            status.eta_sd_seconds = Some(sd);
        }
        // An open sweep's follower may add models yet.
        status.pending |= plan.open;
        Ok(v1::GetResultsResponse {
            sweep: Some(status),
            trials: infos,
        })
    }

    /// Cancels a sweep, or some of its trials.
    pub async fn cancel(&self, r: v1::CancelRequest) -> Result<v1::CancelResponse, Error> {
        if r.sweep_id.is_empty() {
            return Err(Error::invalid(
                "name the sweep (and optionally trial keys within it)",
            ));
        }
        let (dropped, stopping) = self.queue.cancel(&r.sweep_id, &r.trial_keys).await?;
        tracing::info!(sweep = %r.sweep_id, dropped, stopping, "cancelled");
        Ok(v1::CancelResponse { dropped, stopping })
    }

    /// Queues a sweep's failed (or named) trials again.
    pub async fn retry(&self, r: v1::RetryRequest) -> Result<v1::RetryResponse, Error> {
        if r.sweep_id.is_empty() {
            return Err(Error::invalid(
                "name the sweep (and optionally trial keys within it)",
            ));
        }
        let requeued = self.queue.retry(&r.sweep_id, &r.trial_keys).await?;
        self.wake().await;
        Ok(v1::RetryResponse { requeued })
    }

    /// Asks a worker to take no more trials.
    pub async fn drain_worker(
        &self,
        request: v1::DrainWorkerRequest,
    ) -> Result<v1::DrainWorkerResponse, Error> {
        let id = request.worker_id;
        if !self.queue.drain(&id).await? {
            return Err(Error::not_found(format!("no worker `{id}` is registered")));
        }
        Ok(v1::DrainWorkerResponse {})
    }
}
