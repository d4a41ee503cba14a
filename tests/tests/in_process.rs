//! The coordinator in the test's own process: `serve_on` a listener the test binds, on a real
//! `redis-server`, stopped by a future the test completes. The tier where the coordinator's
//! calls are driven without spawning `hlsfarm serve`.

#![allow(clippy::unwrap_used)]

use hlsfarm_common::config::{Config, Secret};
use hlsfarm_coordinator::server::serve_on;
use hlsfarm_proto::client::channel;
use hlsfarm_proto::v1::{self, operator_client::OperatorClient, worker_client::WorkerClient};
use hlsfarm_tests::{RedisOptions, RedisServer, TestDir};

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_serves_in_process_and_stops_when_told() {
    let dir = TestDir::new("in-process").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let mut config = Config::default();
    config.coordinator.redis_url = Secret::new(redis.url());
    config.coordinator.operator_token = Secret::new("in-process-operator");
    config.coordinator.worker_token = Secret::new("in-process-worker");
    config.store.url = dir.join("store").to_string_lossy().into_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_on(config, listener, async {
        let _ = stopped.await;
    }));

    let (c, b) = channel(&url, "in-process-operator", None).unwrap();
    let mut op = OperatorClient::with_interceptor(c, b);
    let status = op
        .get_status(v1::GetStatusRequest {
            include_finished: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(status.sweeps.is_empty());
    let (c, b) = channel(&url, "in-process-worker", None).unwrap();
    let mut w = WorkerClient::with_interceptor(c, b);
    w.register(v1::RegisterRequest {
        worker_id: "w1".into(),
        hostname: "here".into(),
        capabilities: Some(v1::Capabilities {
            slots: 1,
            memory_mib: 4096,
            cores: 1,
            ..Default::default()
        }),
        version: "test".into(),
    })
    .await
    .unwrap();
    let leased = w
        .lease(v1::LeaseRequest {
            worker_id: "w1".into(),
            max_trials: 1,
            free_memory_mib: 4096,
            free_cores: 1,
            free_disk_mib: 10_000,
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(leased.trials.is_empty());
    // The worker token cannot act as an operator.
    let (c, b) = channel(&url, "in-process-worker", None).unwrap();
    let denied = OperatorClient::with_interceptor(c, b)
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    stop.send(()).unwrap();
    assert_eq!(server.await.unwrap().unwrap(), 0);
}

/// The core without any transport: the same calls the gRPC and HTTP adapters make, on a real
/// `redis-server`, answering typed errors.
#[tokio::test(flavor = "multi_thread")]
async fn the_core_runs_a_trial_through_its_calls_without_a_transport() {
    use hlsfarm_coordinator::server::{Coordinator, Error};
    let dir = TestDir::new("in-process-core").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let mut config = Config::default();
    config.coordinator.redis_url = Secret::new(redis.url());
    config.store.url = dir.join("store").to_string_lossy().into_owned();
    let c = Coordinator::connect(config).await.unwrap();
    let bytes = b"not really a model, but bytes with a sha256".to_vec();
    let sha = hlsfarm_common::trial_key::sha256_hex(&bytes);
    let chunk = v1::UploadChunk {
        name: "core.h5".into(),
        sha256: sha.clone(),
        data: bytes.clone(),
    };
    let stored = c
        .upload_model(tokio_stream::iter(vec![Ok(chunk.clone())]))
        .await
        .unwrap();
    assert!(!stored.already_stored);
    assert!(
        c.upload_model(tokio_stream::iter(vec![Ok(chunk)]))
            .await
            .unwrap()
            .already_stored
    );
    let damaged = c
        .upload_model(tokio_stream::iter(vec![Ok(v1::UploadChunk {
            name: "bad.h5".into(),
            sha256: "0".repeat(64),
            data: bytes.clone(),
        })]))
        .await
        .unwrap_err();
    assert!(
        matches!(&damaged, Error::Invalid(m) if m.contains("damaged")),
        "{damaged:?}"
    );
    let submitted = c
        .submit_sweep(v1::SubmitSweepRequest {
            spec: Some(v1::SweepSpec {
                name: "core".into(),
                models: vec![v1::ModelInput {
                    name: "core.h5".into(),
                    sha256: sha,
                    size_bytes: bytes.len() as u64,
                    companions: Default::default(),
                }],
                grid: Some(v1::SettingsGrid::default()),
                stages: vec![v1::Stage::Convert as i32],
                priority: 1,
                toolchain: Some(v1::ToolchainSpec {
                    hls4ml_version: "1.3.0".into(),
                    tool: String::new(),
                    tool_version: String::new(),
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    assert_eq!(submitted.trials, 1);
    let lease = v1::LeaseRequest {
        worker_id: "w1".into(),
        max_trials: 1,
        free_memory_mib: 8192,
        free_cores: 2,
        free_disk_mib: 10_000,
        wait_ms: 0,
    };
    assert_eq!(
        c.lease(lease.clone()).await.unwrap_err(),
        Error::NotRegistered("w1".into())
    );
    c.register(v1::RegisterRequest {
        worker_id: "w1".into(),
        hostname: "here".into(),
        capabilities: Some(v1::Capabilities {
            backends: vec![v1::Backend::Vitis as i32],
            hls4ml_version: "1.3.0".into(),
            slots: 1,
            memory_mib: 8192,
            cores: 2,
            free_disk_mib: 10_000,
            formats: vec!["keras_h5".into()],
            ..Default::default()
        }),
        version: "test".into(),
    })
    .await
    .unwrap();
    let trial = c.lease(lease.clone()).await.unwrap().trials.pop().unwrap();
    // A completion under another attempt's token finds the lease gone; the trial then fails
    // for good, and a repeat of that completion finds it ended.
    let mut stale = trial.token.clone().unwrap();
    stale.epoch += 1;
    let done = v1::CompleteRequest {
        worker_id: "w1".into(),
        token: trial.token.clone(),
        failure: Some(v1::Failure {
            class: v1::FailureClass::BadInput as i32,
            reason: "not a model".into(),
            stage: v1::Stage::Convert as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let lost = c
        .complete(v1::CompleteRequest {
            token: Some(stale),
            ..done.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(lost, Error::LeaseLost(_)), "{lost:?}");
    c.complete(done.clone()).await.unwrap();
    let again = c.complete(done).await.unwrap_err();
    assert!(matches!(again, Error::Precondition(_)), "{again:?}");
    let results = c
        .get_results(v1::GetResultsRequest {
            sweep_id: submitted.sweep_id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(results.trials.len(), 1);
    assert_eq!(results.trials[0].state, v1::TrialState::Failed as i32);
    assert!(matches!(
        c.get_results(v1::GetResultsRequest {
            sweep_id: "nope".into()
        })
        .await,
        Err(Error::NotFound(_))
    ));
}
