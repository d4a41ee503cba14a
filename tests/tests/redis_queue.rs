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

#[tokio::test(flavor = "multi_thread")]
async fn one_script_call_leases_for_many_workers_each_by_its_own_fit() {
    use hlsfarm_common::queue::{Fit, Needs};
    use hlsfarm_common::store::SweepSubmit;
    let dir = TestDir::new("redis-batch").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let q = RedisQueue::connect(&redis.url(), "batch", QueueConfig::default())
        .await
        .unwrap();
    let trial = |key: &str, class: &str, memory_mib: u64| NewTrial {
        key: key.to_owned(),
        cost: memory_mib as f64,
        payload: serde_json::json!({ "k": key }),
        needs: Needs {
            class: class.to_owned(),
            memory_mib,
            ..Needs::default()
        },
    };
    q.submit_sweep(
        &SweepSubmit {
            id: "s".into(),
            priority: 1,
            ..SweepSubmit::default()
        },
        &[
            trial("a1", "a", 100),
            trial("a2", "a", 200),
            trial("b1", "b", 5000),
        ],
    )
    .await
    .unwrap();
    let fit = |classes: &[&str], memory_mib: u64| Fit {
        classes: Some(classes.iter().map(|c| (*c).to_owned()).collect()),
        memory_mib,
        cores: 8,
        seat_limits: Default::default(),
    };
    let (small, big_a, big_b, other) = (
        fit(&["a"], 50),
        fit(&["a"], 1000),
        fit(&["b"], 10_000),
        fit(&["c"], 10_000),
    );
    let answers = q
        .lease_batch(&[
            ("small", 2, &small),
            ("big-a", 2, &big_a),
            ("big-b", 2, &big_b),
            ("other", 2, &other),
        ])
        .await
        .unwrap();
    let keys =
        |i: usize| -> Vec<String> { answers[i].leases.iter().map(|l| l.key.clone()).collect() };
    assert_eq!(answers.len(), 4);
    // Too small for either `a` trial, which it saw.
    assert!(keys(0).is_empty());
    assert!(answers[0].queued_seen);
    // The costliest first, both within its memory.
    assert_eq!(keys(1), ["a2", "a1"]);
    assert_eq!(keys(2), ["b1"]);
    // A class with nothing queued: nothing seen, so nothing to look at until a submit.
    assert!(keys(3).is_empty());
    assert!(!answers[3].queued_seen);
    assert_eq!(answers[3].retry_in, None);
    for (i, worker) in ["big-a", "big-a", "big-b"].iter().enumerate() {
        let key = ["a2", "a1", "b1"][i];
        assert_eq!(
            q.trial(key).await.unwrap().state,
            "leased",
            "{key} for {worker}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_estimates_reorder_queued_trials_and_set_reservations_the_lease_honours() {
    use hlsfarm_common::estimate::{Observation, synthetic};
    use hlsfarm_common::queue::{Fit, Needs};
    use hlsfarm_common::store::{Reestimate, SweepSubmit};
    let dir = TestDir::new("redis-estimates").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let q = RedisQueue::connect(&redis.url(), "est", QueueConfig::default())
        .await
        .unwrap();
    let trial = |key: &str, cost: f64| NewTrial {
        key: key.to_owned(),
        cost,
        payload: serde_json::Value::Null,
        needs: Needs {
            class: "c".into(),
            memory_mib: 1000,
            ..Needs::default()
        },
    };
    q.submit_sweep(
        &SweepSubmit {
            id: "s".into(),
            priority: 1,
            ..SweepSubmit::default()
        },
        &[trial("a", 3.0), trial("b", 2.0), trial("c", 1.0)],
    )
    .await
    .unwrap();
    let fit = |memory_mib: u64| Fit {
        classes: Some(vec!["c".into()]),
        memory_mib,
        cores: 8,
        seat_limits: Default::default(),
    };
    // `a` leases first by the static cost; then `c` is predicted the longest and to need
    // more memory than the small worker has; `a`, leased, is not touched.
    let first = q.lease_batch(&[("w", 1, &fit(4000))]).await.unwrap();
    assert_eq!(first[0].leases[0].key, "a");
    let estimate = |key: &str, cost: f64, memory_mib: Option<u64>| Reestimate {
        key: key.into(),
        cost,
        memory_mib,
    };
    let changed = q
        .reestimate(&[
            estimate("a", 0.1, Some(1)),
            estimate("b", 5.0, None),
            estimate("c", 9.0, Some(3000)),
            estimate("gone", 1.0, None),
        ])
        .await
        .unwrap();
    assert_eq!(changed, 2, "the queued b and c only");
    assert_eq!(q.trial("a").await.unwrap().state, "leased");
    // The 2000 MiB worker may not take c (3000 predicted), and gets b.
    let small = q.lease_batch(&[("small", 2, &fit(2000))]).await.unwrap();
    let keys: Vec<&str> = small[0].leases.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["b"]);
    assert_eq!(
        small[0].leases[0].memory_mib, 1000,
        "b kept its reservation"
    );
    let big = q.lease_batch(&[("big", 2, &fit(8000))]).await.unwrap();
    assert_eq!(big[0].leases[0].key, "c");
    assert_eq!(big[0].leases[0].memory_mib, 3000);

    // The history: bounded, oldest first.
    let observations: Vec<Observation> = synthetic::sweep(1, 0.1, 5)
        .iter()
        .map(synthetic::SyntheticTrial::observation)
        .collect();
    for o in &observations {
        q.push_observation(o).await.unwrap();
    }
    assert_eq!(q.observations().await.unwrap(), observations);
}

/// The aggregator's race: while it holds a finished sweep's claim, a retry runs the sweep's
/// trial again and it ends again. Releasing the old claim must not erase the new signal.
#[tokio::test(flavor = "multi_thread")]
async fn releasing_a_claim_keeps_a_sweep_that_finished_again_meanwhile() {
    use hlsfarm_common::store::ClaimSet;
    let dir = TestDir::new("redis-claims").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let q = RedisQueue::connect(
        &redis.url(),
        "claims",
        QueueConfig {
            lease: Duration::from_secs(60),
            retry_backoff: Duration::ZERO,
            ..QueueConfig::default()
        },
    )
    .await
    .unwrap();
    let trial = NewTrial {
        key: "t".into(),
        cost: 1.0,
        payload: serde_json::json!({}),
        needs: Default::default(),
    };
    let meta = SweepMeta {
        id: "s".into(),
        priority: 1,
        force: false,
    };
    q.submit(meta, vec![trial]).await.unwrap();
    let hold = Duration::from_secs(30);
    let run = |outcome| {
        let q = &q;
        async move {
            let lease = q.lease("w", 1).await.unwrap().pop().unwrap();
            q.complete("t", lease.fence, outcome).await.unwrap()
        }
    };
    let failed = hlsfarm_common::queue::Outcome::Failed { retryable: false };
    assert_eq!(run(failed).await, TrialState::Failed);
    assert_eq!(q.claim(ClaimSet::Finished, 10, hold).await.unwrap(), ["s"]);
    // Nothing else to claim while it is held.
    assert!(
        q.claim(ClaimSet::Finished, 10, hold)
            .await
            .unwrap()
            .is_empty()
    );
    // Meanwhile: retried and succeeded, so the sweep finished again.
    assert_eq!(q.retry("s", &[]).await.unwrap(), 1);
    let succeeded = hlsfarm_common::queue::Outcome::Succeeded;
    assert_eq!(run(succeeded).await, TrialState::Succeeded);
    // The first claimer, done with its stale view, releases.
    q.release(ClaimSet::Finished, "s").await.unwrap();
    assert_eq!(
        q.claim(ClaimSet::Finished, 10, hold).await.unwrap(),
        ["s"],
        "the second finish was lost"
    );
    // A release of a claim nothing touched does remove it.
    q.release(ClaimSet::Finished, "s").await.unwrap();
    assert!(
        q.claim(ClaimSet::Finished, 10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}
