//! A trial's lifecycle driven over gRPC as a worker would (lease, heartbeat, complete), for
//! the Redis cost and recovery benchmarks.

use std::path::Path;
use std::time::Duration;

use hlsfarm_proto::client::{Bearer, channel};
use hlsfarm_proto::v1::{self, worker_client::WorkerClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::WORKER;

/// Leases one trial at a time, heartbeats it once, completes it (a failure: no files), until
/// none is left. Returns how many.
pub(super) async fn lifecycle(
    w: &mut WorkerClient<InterceptedService<Channel, Bearer>>,
    max: u32,
) -> anyhow::Result<u32> {
    let mut n = 0;
    while n < max {
        let got = w
            .lease(lease_request("cost", 1, 200))
            .await?
            .into_inner()
            .trials;
        let Some(t) = got.into_iter().next() else {
            break;
        };
        w.heartbeat(beat("cost", &t.token)).await?;
        w.complete(failed("cost", t.token)).await?;
        n += 1;
    }
    Ok(n)
}

/// Leases everything queued and completes it successfully with a staged result.json.
pub(super) async fn complete_all(
    w: &mut WorkerClient<InterceptedService<Channel, Bearer>>,
    store: &Path,
) -> anyhow::Result<u32> {
    let mut n = 0;
    loop {
        let got = w
            .lease(lease_request("cache", 64, 300))
            .await?
            .into_inner()
            .trials;
        if got.is_empty() {
            return Ok(n);
        }
        for t in got {
            let token = t.token.clone().unwrap_or_default();
            let result = minimal_result(
                &token.trial_key,
                t.model.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
            );
            let dir = store.join(&t.staging_prefix);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("result.json"), &result)?;
            w.complete(v1::CompleteRequest {
                worker_id: "cache".into(),
                token: Some(token),
                result: Some(v1::TrialResult {
                    result_json: result,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
            n += 1;
        }
    }
}

/// A successful `result.json` with nothing in it, for benchmarks of the queue alone.
pub(crate) fn minimal_result(key: &str, model: &str) -> String {
    let r = hlsfarm_common::results::TrialResult::noop(key, model, Default::default());
    serde_json::to_string(&r).unwrap_or_default()
}

/// A lease request from a bench lessee, which has room for anything.
pub(super) fn lease_request(id: &str, max: u32, wait_ms: u64) -> v1::LeaseRequest {
    v1::LeaseRequest {
        worker_id: id.into(),
        max_trials: max,
        free_memory_mib: 1 << 30,
        free_cores: 1 << 16,
        wait_ms,
        ..Default::default()
    }
}

/// A heartbeat for one trial in `convert`.
pub(super) fn beat(id: &str, token: &Option<v1::LeaseToken>) -> v1::HeartbeatRequest {
    v1::HeartbeatRequest {
        worker_id: id.into(),
        trials: vec![v1::TrialProgress {
            token: token.clone(),
            stage: v1::Stage::Convert as i32,
            phase: String::new(),
        }],
        ..Default::default()
    }
}

/// A completion as a failure without files: the cheapest end of a trial.
pub(super) fn failed(id: &str, token: Option<v1::LeaseToken>) -> v1::CompleteRequest {
    v1::CompleteRequest {
        worker_id: id.into(),
        token,
        failure: Some(v1::Failure {
            class: v1::FailureClass::BadInput as i32,
            reason: "bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) async fn lease_one(
    w: &mut WorkerClient<InterceptedService<Channel, Bearer>>,
    id: &str,
) -> anyhow::Result<v1::LeasedTrial> {
    w.lease(lease_request(id, 1, 2000))
        .await?
        .into_inner()
        .trials
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("nothing to lease"))
}

/// The lessee `recovery` kills: leases one trial, prints its key, heartbeats until killed.
pub(super) async fn hold(url: &str) -> anyhow::Result<()> {
    let (c, b) = channel(url, WORKER, None).map_err(anyhow::Error::msg)?;
    let mut w = WorkerClient::with_interceptor(c, b);
    let reg = w
        .register(v1::RegisterRequest {
            worker_id: "holder".into(),
            hostname: "bench".into(),
            capabilities: Some(v1::Capabilities {
                tools: Default::default(),
                hls4ml_version: "1.3.0".into(),
                slots: 1,
                memory_mib: 1 << 30,
                cores: 1 << 16,
                formats: vec!["keras_h5".into()],
                ..Default::default()
            }),
            version: "bench".into(),
        })
        .await?
        .into_inner();
    let t = lease_one(&mut w, "holder").await?;
    println!(
        "{}",
        t.token
            .as_ref()
            .map(|k| k.trial_key.clone())
            .unwrap_or_default()
    );
    loop {
        tokio::time::sleep(Duration::from_millis(reg.heartbeat_ms.max(20))).await;
        w.heartbeat(beat("holder", &t.token)).await?;
    }
}
