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
