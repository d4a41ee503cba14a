//! One leased trial on this worker: fetch its inputs, run it (or the no-op of the
//! benchmarks), upload the result and the tarball to the lease's staging prefix, report.

use std::path::Path;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hlsfarm_common::FailureClass;
use hlsfarm_common::Stage;
use hlsfarm_common::job::Fence;
use hlsfarm_common::results::ModelRef;
use hlsfarm_common::results::{TrialResult, TrialStatus};
use hlsfarm_common::settings::Settings;
use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_proto::stages_from_wire;
use hlsfarm_proto::v1;
use tokio_util::sync::CancellationToken;

use crate::trial::{TrialEnv, TrialSpec, run_trial};

use super::lease::fetch_inputs;
use super::report::{complete, hand_back};
use super::{Ending, trial_work_dir};
use super::{Shared, lock};

pub(super) fn wire_failure(
    class: FailureClass,
    reason: String,
    stage: Option<Stage>,
    tail: String,
) -> v1::Failure {
    v1::Failure {
        class: v1::FailureClass::from(class) as i32,
        reason,
        stage: stage.map_or(0, |s| v1::Stage::from(s) as i32),
        log_tail: tail,
        suggestion: String::new(),
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn run_one(
    shared: &Arc<Shared>,
    key: &str,
    fence: Fence,
    trial: v1::LeasedTrial,
    scratch: PathBuf,
    cancel: CancellationToken,
    stage: Arc<Mutex<Option<Stage>>>,
) {
    let token = v1::LeaseToken {
        trial_key: key.to_owned(),
        attempt: fence.attempt,
        epoch: fence.epoch,
    };
    let ending = || {
        lock(&shared.running)
            .get(key)
            .map_or(Ending::Normal, |r| r.ending)
    };
    let model = trial.model.clone().unwrap_or_default();
    if let Some(noop) = &shared.noop {
        noop_trial(shared, noop, token, &trial, &model.name).await;
        return;
    }
    let settings = trial
        .settings
        .clone()
        .map(Settings::try_from)
        .transpose()
        .ok()
        .flatten();
    let stages = stages_from_wire(&trial.stages).unwrap_or_default();
    let (Some(settings), false) = (settings, stages.is_empty()) else {
        complete(
            shared,
            token,
            None,
            Some(wire_failure(
                FailureClass::BadInput,
                "the lease carries no valid settings or stages (coordinator and worker versions differ?)".into(),
                None,
                String::new(),
            )),
            false,
        )
        .await;
        return;
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let fetched = match fetch_inputs(&shared.blobs, &model, &scratch.join("inputs")).await {
        Ok(f) => f,
        Err(reason) => {
            let class = if reason.contains("is not a model file") {
                FailureClass::BadInput
            } else {
                FailureClass::Infrastructure
            };
            tracing::warn!(%reason, "cannot fetch the inputs");
            complete(
                shared,
                token,
                None,
                Some(wire_failure(
                    class,
                    reason,
                    Some(Stage::Convert),
                    String::new(),
                )),
                false,
            )
            .await;
            return;
        }
    };
    let spec = TrialSpec {
        trial_key: key.to_owned(),
        model: ModelRef {
            name: model.name.clone(),
            sha256: model.sha256.clone(),
        },
        files: fetched.files,
        settings,
        stages,
        emulation: EmulationSpec {
            samples: trial.emulation_samples,
            seed: trial.emulation_seed,
        },
        inputs: fetched.inputs,
        validation: fetched.validation,
        search: None,
        scratch: trial_work_dir(&scratch),
        output_dir: scratch.join("out").join(format!(
            "hls_{}",
            Path::new(&model.name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        )),
        tarball: scratch.join("out").join("artifacts.tar.gz"),
        derived_from: (!trial.derived_from_json.is_empty())
            .then(|| serde_json::from_str(&trial.derived_from_json).ok())
            .flatten(),
        // A limit for a stage this worker does not know (a newer coordinator) is left out.
        stage_limits: trial
            .stage_limits
            .iter()
            .filter_map(|l| l.try_into().ok())
            .collect(),
    };
    tracing::info!(model = %model.name, "trial started");
    // The memory limit: the worker's share per slot, or the lease's reservation if larger.
    let reserved = lock(&shared.running).get(key).map_or(0, |r| r.memory_mib);
    let mut env = TrialEnv::clone(&shared.env);
    env.driver.memory_limit_mib = env.driver.memory_limit_mib.map(|m| m.max(reserved));
    let result = run_trial(&env, &spec, &cancel, &|s| {
        *lock(&stage) = Some(s);
    })
    .await;
    match ending() {
        Ending::Discard => {
            tracing::warn!("lease lost while running: work discarded");
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        Ending::HandBack => {
            hand_back(shared, token, "drain deadline").await;
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        Ending::Cancel => {
            tracing::info!("cancelled by an operator");
            complete(shared, token, None, None, true).await;
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        Ending::Normal => {}
    }
    if let Some(r) = lock(&shared.running).get_mut(key) {
        r.reporting = true;
    }
    // Upload result.json and the tarball to the staging prefix, then report.
    tracing::info!("trial ended: uploading its results and reporting");
    let staging = trial.staging_prefix.clone();
    let budget = shared.upload_budget();
    let mut uploaded = Ok(());
    let result_json = serde_json::to_string_pretty(&result).unwrap_or_default();
    if spec.tarball.is_file() {
        match std::fs::read(&spec.tarball) {
            Ok(bytes) => {
                if let Err(e) = shared
                    .blobs
                    .put_checked(&format!("{staging}/artifacts.tar.gz"), bytes, budget)
                    .await
                {
                    uploaded = Err(e.to_string());
                }
            }
            Err(e) => uploaded = Err(format!("cannot read {}: {e}", spec.tarball.display())),
        }
    }
    if uploaded.is_ok()
        && let Err(e) = shared
            .blobs
            .put_checked(
                &format!("{staging}/result.json"),
                result_json.clone().into_bytes(),
                budget,
            )
            .await
    {
        uploaded = Err(e.to_string());
    }
    if let Err(reason) = uploaded {
        tracing::warn!(%reason, "upload failed past its retry budget");
        complete(
            shared,
            token,
            None,
            Some(wire_failure(
                FailureClass::Infrastructure,
                format!("cannot upload the results to the store: {reason}"),
                None,
                String::new(),
            )),
            false,
        )
        .await;
        return;
    }
    let failure = result.failure.as_ref().map(|f| v1::Failure {
        class: v1::FailureClass::from(f.class) as i32,
        reason: f.reason.clone(),
        stage: f.stage.map_or(0, |s| v1::Stage::from(s) as i32),
        log_tail: f.log_tail.clone(),
        suggestion: f.suggestion.clone().unwrap_or_default(),
    });
    let wire_result = v1::TrialResult {
        result_json,
        artifacts: if spec.tarball.is_file() {
            vec!["artifacts.tar.gz".into(), "result.json".into()]
        } else {
            vec!["result.json".into()]
        },
        ..v1::TrialResult::default()
    };
    let accepted = complete(shared, token, Some(wire_result), failure, false).await;
    if accepted && result.status == TrialStatus::Success && !shared.config.keep_scratch {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    log_result(&result);
}

/// The no-op mode's knobs ([`Options::noop`]).
pub(super) struct Noop {
    pub(super) ms: u64,
    pub(super) fail_percent: u32,
}

/// Where each no-op execution leaves an empty object (`<prefix>/<trial>/<attempt>-<epoch>`).
pub const NOOP_EXECUTIONS: &str = "noop-executions";

/// A no-op trial ([`Options::noop`]): an empty marker under [`NOOP_EXECUTIONS`], an empty
/// `result.json` uploaded to the staging prefix, and the usual completion.
pub(super) async fn noop_trial(
    shared: &Arc<Shared>,
    noop: &Noop,
    token: v1::LeaseToken,
    trial: &v1::LeasedTrial,
    model: &str,
) {
    let failure = |reason: String| {
        Some(wire_failure(
            FailureClass::Infrastructure,
            reason,
            None,
            String::new(),
        ))
    };
    tokio::time::sleep(Duration::from_millis(noop.ms)).await;
    let draw = hlsfarm_common::trial_key::sha256_hex(
        format!("{}/{}", token.trial_key, token.attempt).as_bytes(),
    );
    let draw = u32::from_str_radix(&draw[..8], 16).unwrap_or(0) % 100;
    if draw < noop.fail_percent {
        // Half as a tool error (final), half as the OOM killer's (retried, within
        // max_attempts).
        let (class, what) = if draw < noop.fail_percent / 2 {
            (FailureClass::ToolError, "a tool error")
        } else {
            (FailureClass::Oom, "the tool killed by the OOM killer")
        };
        let failed = wire_failure(
            class,
            format!("no-op trial: injected failure, {what}"),
            Some(Stage::Csynth),
            String::new(),
        );
        complete(shared, token, None, Some(failed), false).await;
        return;
    }
    let settings = trial
        .settings
        .clone()
        .and_then(|s| Settings::try_from(s).ok())
        .unwrap_or_default();
    let result_json = serde_json::to_string(&TrialResult::noop(&token.trial_key, model, settings))
        .unwrap_or_default();
    // The no-op's one side effect, as the peer benchmarks' tasks have theirs: an empty
    // object per execution, so executions can be counted (exactly once, or re-runs after
    // faults) apart from the results committed.
    let marker = format!(
        "{NOOP_EXECUTIONS}/{}/{}-{}",
        token.trial_key, token.attempt, token.epoch
    );
    let path = format!("{}/result.json", trial.staging_prefix);
    for (path, bytes) in [
        (marker, Vec::new()),
        (path, result_json.clone().into_bytes()),
    ] {
        if let Err(e) = shared
            .blobs
            .put_checked(&path, bytes, shared.upload_budget())
            .await
        {
            complete(shared, token, None, failure(e.to_string()), false).await;
            return;
        }
    }
    let result = v1::TrialResult {
        result_json,
        artifacts: vec!["result.json".into()],
        ..v1::TrialResult::default()
    };
    complete(shared, token, Some(result), None, false).await;
}

pub(super) fn log_result(result: &TrialResult) {
    let seconds: f64 = result.timings.iter().map(|t| t.seconds).sum();
    match &result.failure {
        None => tracing::info!(seconds, "trial succeeded"),
        Some(f) => tracing::warn!(seconds, class = %f.class, reason = %f.reason, "trial failed"),
    }
}
