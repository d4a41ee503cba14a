//! The Redis queue passes the same conformance suite as the embedded queue, on a real
//! `redis-server` (each scenario under its own key prefix), and keeps its state across a
//! Redis restart with AOF.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hlsfarm_common::job::TrialState;
use hlsfarm_common::queue::{NewTrial, Queue, QueueConfig, SweepMeta, conformance};
use hlsfarm_common::store::RedisQueue;
use hlsfarm_tests::{RedisOptions, RedisServer, TestDir};

#[tokio::test(flavor = "multi_thread")]
async fn conformance_suite_on_real_redis() {
    let dir = TestDir::new("redis-conformance").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let url = redis.url();
    let n = AtomicU32::new(0);
    conformance::run_all(|lease| {
        let prefix = format!("conformance-{}", n.fetch_add(1, Ordering::SeqCst));
        let url = url.clone();
        async move {
            RedisQueue::connect(
                &url,
                &prefix,
                QueueConfig {
                    lease,
                    max_attempts: 3,
                    retry_backoff: Duration::ZERO,
                    refusal_backoff: Duration::ZERO,
                    ..QueueConfig::default()
                },
            )
            .await
            .unwrap()
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_and_leased_trials_survive_a_redis_restart_with_aof() {
    let dir = TestDir::new("redis-restart").unwrap();
    let mut redis = RedisServer::start(dir.path(), RedisOptions { aof: true }).unwrap();
    let config = QueueConfig {
        lease: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let q = RedisQueue::connect(&redis.url(), "restart", config)
        .await
        .unwrap();
    let trials = (0..3)
        .map(|i| NewTrial {
            key: format!("t{i}"),
            cost: f64::from(i),
            payload: serde_json::json!({ "i": i }),
            needs: Default::default(),
        })
        .collect();
    q.submit(
        SweepMeta {
            id: "s".into(),
            priority: 1,
            force: false,
        },
        trials,
    )
    .await
    .unwrap();
    let lease = q.lease("w1", 1).await.unwrap().pop().unwrap();
    assert_eq!(lease.key, "t2");
    let _redis = tokio::task::spawn_blocking(move || {
        redis.restart().unwrap();
        redis
    })
    .await
    .unwrap();
    // The same queue reconnects; the lease and the queued trials are still there.
    let counts = loop {
        match q.counts("s").await {
            Ok(counts) => break counts,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_eq!((counts.queued, counts.leased), (2, 1), "{counts:?}");
    assert_eq!(q.state("t2").await.unwrap(), TrialState::Leased);
    let state = q
        .complete("t2", lease.fence, hlsfarm_common::queue::Outcome::Succeeded)
        .await
        .unwrap();
    assert_eq!(state, TrialState::Succeeded);
    let next = q.lease("w1", 1).await.unwrap().pop().unwrap();
    assert_eq!(
        (next.key.as_str(), &next.payload),
        ("t1", &serde_json::json!({ "i": 1 }))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_that_does_not_exist_is_an_unknown_trial() {
    let dir = TestDir::new("redis-unknown").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let q = RedisQueue::connect(
        &redis.url(),
        "unknown",
        QueueConfig {
            lease: Duration::from_secs(5),
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(matches!(
        q.state("nope").await,
        Err(hlsfarm_common::queue::Error::UnknownTrial(_))
    ));
    assert!(matches!(
        q.counts("nope").await,
        Err(hlsfarm_common::queue::Error::UnknownSweep(_))
    ));
}
