//! The coordinator (`hlsfarm serve`) as a real process on a real `redis-server`, driven over
//! gRPC by this test acting as workers and operators: lifecycle, expiry, fencing, dead
//! trials, fairness, longest-first order, capability and memory routing, seats, cancel, two
//! coordinators, a restart mid-sweep, a 100k-trial submit, and the tokens.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hlsfarm_common::results::{ModelRef, Reports, TrialResult, TrialStatus};
use hlsfarm_common::trial_key::{Toolchain, sha256_hex};
use hlsfarm_common::{Settings, Stage};
use hlsfarm_proto::client::{Bearer, channel};
use hlsfarm_proto::v1::{self, operator_client::OperatorClient, worker_client::WorkerClient};
use hlsfarm_tests::TestDir;
use hlsfarm_tests::cluster::{Cluster, ClusterOptions, OPERATOR_TOKEN, WORKER_TOKEN};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Op = OperatorClient<InterceptedService<Channel, Bearer>>;
type Wk = WorkerClient<InterceptedService<Channel, Bearer>>;

fn operator(url: &str) -> Op {
    let (c, b) = channel(url, OPERATOR_TOKEN, None).unwrap();
    OperatorClient::with_interceptor(c, b)
}

fn worker_client(url: &str) -> Wk {
    let (c, b) = channel(url, WORKER_TOKEN, None).unwrap();
    WorkerClient::with_interceptor(c, b)
}

fn caps(tools: &[(&str, &str)], families: &[&str]) -> v1::Capabilities {
    v1::Capabilities {
        backends: vec![v1::Backend::Vitis as i32],
        tools: tools
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        hls4ml_version: "1.3.0".into(),
        part_families: families.iter().map(|s| (*s).to_owned()).collect(),
        slots: 4,
        memory_mib: 65536,
        cores: 16,
        free_disk_mib: 100_000,
        formats: vec!["keras_h5".into()],
    }
}

fn full_caps() -> v1::Capabilities {
    caps(&[("vitis_hls", "2023.2"), ("vivado", "2023.2")], &[])
}

async fn register(url: &str, id: &str, c: v1::Capabilities) -> Wk {
    let mut w = worker_client(url);
    w.register(v1::RegisterRequest {
        worker_id: id.into(),
        hostname: "test".into(),
        capabilities: Some(c),
        version: "test".into(),
    })
    .await
    .unwrap();
    w
}

/// Uploads `n` fake model files (sizes grow with the index) and returns their inputs.
async fn upload(op: &mut Op, n: usize, tag: &str) -> Vec<v1::ModelInput> {
    let mut out = Vec::new();
    for i in 0..n {
        let bytes = vec![b'a' + (i % 26) as u8; 2048 * (i + 1)]
            .into_iter()
            .chain(tag.bytes())
            .collect::<Vec<u8>>();
        let sha = sha256_hex(&bytes);
        let name = format!("model_{tag}_{i:03}.h5");
        op.upload_model(tokio_stream::iter(vec![v1::UploadChunk {
            name: name.clone(),
            sha256: sha.clone(),
            data: bytes.clone(),
        }]))
        .await
        .unwrap();
        out.push(v1::ModelInput {
            name,
            sha256: sha,
            size_bytes: bytes.len() as u64,
            companions: Default::default(),
        });
    }
    out
}

fn spec(models: Vec<v1::ModelInput>, reuse: Vec<u32>, stages: &[Stage]) -> v1::SweepSpec {
    v1::SweepSpec {
        name: "test".into(),
        models,
        grid: Some(v1::SettingsGrid {
            reuse_factor: reuse,
            ..Default::default()
        }),
        stages: stages.iter().map(|s| v1::Stage::from(*s) as i32).collect(),
        priority: 1,
        force: false,
        emulation_samples: 10,
        emulation_seed: 0,
        toolchain: Some(v1::ToolchainSpec {
            hls4ml_version: "1.3.0".into(),
            tool: "vitis_hls".into(),
            tool_version: "2023.2".into(),
        }),
        resources: None,
        on_failure: String::new(),
        select_json: String::new(),
        search_json: String::new(),
        follow: false,
    }
}

async fn submit(op: &mut Op, spec: v1::SweepSpec) -> v1::SubmitSweepResponse {
    op.submit_sweep(v1::SubmitSweepRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner()
}

async fn lease(w: &mut Wk, id: &str, n: u32, wait_ms: u64) -> Vec<v1::LeasedTrial> {
    w.lease(v1::LeaseRequest {
        worker_id: id.into(),
        max_trials: n,
        free_memory_mib: 65536,
        free_cores: 16,
        free_disk_mib: 100_000,
        wait_ms,
    })
    .await
    .unwrap()
    .into_inner()
    .trials
}

fn failure() -> v1::Failure {
    v1::Failure {
        class: v1::FailureClass::BadInput as i32,
        reason: "test failure".into(),
        ..Default::default()
    }
}

async fn fail(w: &mut Wk, id: &str, t: &v1::LeasedTrial) -> Result<i32, tonic::Status> {
    w.complete(v1::CompleteRequest {
        worker_id: id.into(),
        token: t.token.clone(),
        failure: Some(failure()),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().state)
}

/// Writes a successful result.json into the trial's staging prefix (as a worker uploads it)
/// and completes with it.
async fn succeed(
    w: &mut Wk,
    id: &str,
    t: &v1::LeasedTrial,
    store: &std::path::Path,
) -> Result<i32, tonic::Status> {
    let key = t.token.as_ref().unwrap().trial_key.clone();
    let result = TrialResult {
        schema: hlsfarm_common::results::RESULT_SCHEMA.into(),
        trial_key: key,
        model: ModelRef {
            name: t.model.as_ref().unwrap().name.clone(),
            sha256: t.model.as_ref().unwrap().sha256.clone(),
        },
        settings: Settings::default(),
        stages: vec![Stage::Convert],
        status: TrialStatus::Success,
        start_time: "2026-11-22T00:00:00Z".into(),
        end_time: "2026-11-22T00:00:01Z".into(),
        timings: vec![],
        toolchain: Toolchain {
            hls4ml_version: "1.3.0".into(),
            tool: None,
        },
        fidelity: None,
        warnings: vec![format!("by {id}")],
        rewrites: vec![],
        inputs: vec![],
        outputs: vec![],
        notes: vec![],
        preflight: vec![],
        derived_from: None,
        memory_limit_mib: None,
        parameters: None,
        multiplications: None,
        largest_layer: None,
        tools_beside_emulation: false,
        accuracy: None,
        search: None,
        effective_reuse_factor: Default::default(),
        reports: Reports::default(),
        failure: None,
        kept_files: vec![],
        tarball: None,
        kept_bytes: 0,
    };
    let json = serde_json::to_string(&result).unwrap();
    let dir = store.join(&t.staging_prefix);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("result.json"), &json).unwrap();
    w.complete(v1::CompleteRequest {
        worker_id: id.into(),
        token: t.token.clone(),
        result: Some(v1::TrialResult {
            result_json: json,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().state)
}

async fn counts(op: &mut Op, sweep: &str) -> HashMap<String, u64> {
    op.get_results(v1::GetResultsRequest {
        sweep_id: sweep.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .sweep
    .unwrap()
    .counts
}

fn key(t: &v1::LeasedTrial) -> String {
    t.token.as_ref().unwrap().trial_key.clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_expiry_fencing_dead_and_retry() {
    let dir = TestDir::new("coord-lifecycle").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            lease_ms: 600,
            heartbeat_ms: 200,
            max_attempts: 2,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "life").await;
    let sweep = submit(&mut op, spec(models, vec![], &[Stage::Convert])).await;
    assert_eq!((sweep.trials, sweep.queued), (1, 1));
    let mut w1 = register(&url, "w1", full_caps()).await;
    let mut w2 = register(&url, "w2", full_caps()).await;

    let t1 = lease(&mut w1, "w1", 4, 1000).await.pop().unwrap();
    assert_eq!(t1.token.as_ref().unwrap().attempt, 1);
    assert!(
        t1.staging_prefix.starts_with(&format!(
            "results/{}/attempts/",
            t1.token.as_ref().unwrap().trial_key
        )),
        "{}",
        t1.staging_prefix
    );
    // A heartbeat extends the lease; then w1 goes silent and loses it.
    let hb = w1
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "w1".into(),
            trials: vec![v1::TrialProgress {
                token: t1.token.clone(),
                stage: v1::Stage::Convert as i32,
                phase: String::new(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.extended.len(), 1);
    let silent = Instant::now();
    let t2 = lease(&mut w2, "w2", 1, 5000).await.pop().unwrap();
    let recovery = silent.elapsed();
    println!(
        "lease expiry -> re-lease: {:.2} s (lease 0.6 s)",
        recovery.as_secs_f64()
    );
    assert_eq!(key(&t2), key(&t1));
    assert_eq!(t2.token.as_ref().unwrap().attempt, 2);
    assert!(recovery < Duration::from_secs(3), "{recovery:?}");

    // The stale token: heartbeat says stale, complete and its commit are refused.
    let hb = w1
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "w1".into(),
            trials: vec![v1::TrialProgress {
                token: t1.token.clone(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.stale.len(), 1, "{hb:?}");
    let late = succeed(&mut w1, "w1", &t1, &cluster.store()).await;
    assert_eq!(late.unwrap_err().code(), Code::FailedPrecondition);
    let results = cluster.store().join("results").join(key(&t1));
    assert!(
        !results.join("result.json").exists(),
        "a stale lease's result was committed"
    );
    let left = hlsfarm_tests::walk_files(&cluster.store().join(&t1.staging_prefix));
    assert!(
        left.is_empty(),
        "a stale lease's uploads were kept: {left:?}"
    );

    // w2 goes silent too: attempts run out, the trial is dead.
    hlsfarm_tests::wait_until("the trial to die", Duration::from_secs(10), || {
        let c = futures_block(counts(&mut op, &sweep.sweep_id));
        (c.get("dead") == Some(&1)).then_some(())
    })
    .unwrap();
    let again = op
        .retry(v1::RetryRequest {
            sweep_id: sweep.sweep_id.clone(),
            trial_keys: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.requeued, 1);
    let t3 = lease(&mut w2, "w2", 1, 5000).await.pop().unwrap();
    assert_eq!(
        (
            t3.token.as_ref().unwrap().attempt,
            t3.token.as_ref().unwrap().epoch
        ),
        (1, 1)
    );
    let state = succeed(&mut w2, "w2", &t3, &cluster.store()).await.unwrap();
    assert_eq!(state, v1::TrialState::Succeeded as i32);
    // The winner's result is committed under the key; the aggregate follows.
    let committed = results.join("result.json");
    hlsfarm_tests::wait_until("the commit", Duration::from_secs(10), || {
        committed.is_file().then_some(())
    })
    .unwrap();
    assert!(
        std::fs::read_to_string(&committed)
            .unwrap()
            .contains("by w2")
    );
    let aggregate = cluster
        .store()
        .join(format!("sweeps/{}/synthesis_results.json", sweep.sweep_id));
    // Written when the trial died (one failed entry), then again when its retry succeeded.
    hlsfarm_tests::wait_until("the aggregate", Duration::from_secs(10), || {
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&aggregate).ok()?).ok()?;
        (summary["total"] == 1 && summary["successful"] == 1).then_some(())
    })
    .unwrap();
    // Submitting the same sweep again reuses the result.
    let models = upload(&mut op, 1, "life").await;
    let again = submit(&mut op, spec(models, vec![], &[Stage::Convert])).await;
    assert_eq!((again.queued, again.reused), (0, 1));
}

/// Blocks on a future from inside a multi-threaded runtime (for `wait_until` closures).
fn futures_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread")]
async fn fairness_and_longest_first() {
    let dir = TestDir::new("coord-fair").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let big_models = upload(&mut op, 10, "big").await;
    let big = submit(
        &mut op,
        spec(big_models, (1..=100).collect(), &[Stage::Convert]),
    )
    .await;
    assert_eq!(big.queued, 1000);
    let mut w = register(&url, "w", full_caps()).await;
    // The first lease is the biggest model at the smallest reuse factor.
    let first = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    assert_eq!(first.model.as_ref().unwrap().name, "model_big_009.h5");
    assert_eq!(first.settings.as_ref().unwrap().reuse_factor, 1);
    fail(&mut w, "w", &first).await.unwrap();
    for _ in 0..50 {
        let t = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
        fail(&mut w, "w", &t).await.unwrap();
    }
    let small_models = upload(&mut op, 1, "small").await;
    let small = submit(
        &mut op,
        spec(small_models, (1..=10).collect(), &[Stage::Convert]),
    )
    .await;
    let mut small_rfs = Vec::new();
    let mut n = 0;
    while small_rfs.len() < 10 {
        let t = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
        n += 1;
        if t.sweep_id == small.sweep_id {
            small_rfs.push(t.settings.as_ref().unwrap().reuse_factor);
        }
        fail(&mut w, "w", &t).await.unwrap();
    }
    println!(
        "the 10-trial sweep finished within {n} leases after it arrived behind 949 queued trials"
    );
    assert!(n <= 21, "the small sweep waited {n} leases");
    assert_eq!(
        small_rfs,
        (1..=10).collect::<Vec<_>>(),
        "longest (smallest RF) first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn capability_and_memory_routing() {
    let dir = TestDir::new("coord-routing").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "route").await;
    // Convert only: any worker with hls4ml 1.3.0 and Keras.
    let light = submit(&mut op, spec(models.clone(), vec![], &[Stage::Convert])).await;
    // C synthesis for a Virtex UltraScale+ part: needs vitis_hls 2023.2 and that family.
    let mut heavy_spec = spec(models, vec![], &[Stage::Convert, Stage::Csynth]);
    heavy_spec.grid.as_mut().unwrap().part = vec!["xcvu9p-flga2104-2-e".into()];
    let heavy = submit(&mut op, heavy_spec).await;

    let mut no_tools = register(&url, "no-tools", caps(&[], &[])).await;
    let mut zynq = register(&url, "zynq", caps(&[("vitis_hls", "2023.2")], &["zynq"])).await;
    let mut old = register(&url, "old", caps(&[("vitis_hls", "2022.2")], &[])).await;
    let mut small = register(&url, "small", full_caps()).await;
    // Too little memory: convert-only trials hold 2 GiB, C synthesis 4 GiB.
    let none = small
        .lease(v1::LeaseRequest {
            worker_id: "small".into(),
            max_trials: 4,
            free_memory_mib: 1000,
            free_cores: 4,
            wait_ms: 300,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .trials;
    assert!(
        none.is_empty(),
        "a trial was leased beyond the worker's memory"
    );
    assert!(
        lease(&mut zynq, "zynq", 4, 300)
            .await
            .iter()
            .all(|t| t.sweep_id == light.sweep_id)
    );
    // The light trial is gone now (zynq took it, or nothing was left for it).
    assert!(lease(&mut no_tools, "no-tools", 4, 300).await.is_empty());
    assert!(
        lease(&mut old, "old", 4, 300).await.is_empty(),
        "other tool version"
    );
    let got = lease(&mut small, "small", 4, 1000).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sweep_id, heavy.sweep_id);
    assert_eq!(got[0].resources.unwrap().memory_mib, 4096);
}

#[tokio::test(flavor = "multi_thread")]
async fn seats_are_never_exceeded_with_50_concurrent_lessees() {
    let dir = TestDir::new("coord-seats").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            seats: vec![("vsynth".into(), 3)],
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 6, "seat").await;
    let sweep = submit(&mut op, spec(models, (1..=10).collect(), Stage::FULL_FLOW)).await;
    assert_eq!(sweep.queued, 60);
    let held = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let url = url.clone();
        let (held, peak, done) = (held.clone(), peak.clone(), done.clone());
        tasks.spawn(async move {
            let id = format!("w{i}");
            let mut w = register(&url, &id, full_caps()).await;
            while done.load(Ordering::SeqCst) < 60 {
                let Some(t) = lease(&mut w, &id, 1, 200).await.pop() else {
                    continue;
                };
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                held.fetch_sub(1, Ordering::SeqCst);
                fail(&mut w, &id, &t).await.unwrap();
                done.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    println!("vsynth seats: limit 3, peak held {peak}, 60 trials, 50 lessees");
    assert!(peak <= 3, "seats exceeded: {peak}");
    assert_eq!(peak, 3, "the limit was never reached: nothing was tested");
    assert_eq!(counts(&mut op, &sweep.sweep_id).await["failed"], 60);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_reaches_queued_and_running_trials() {
    let dir = TestDir::new("coord-cancel").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "cancel").await;
    let sweep = submit(&mut op, spec(models, vec![1, 2, 3], &[Stage::Convert])).await;
    let mut w = register(&url, "w", full_caps()).await;
    let t = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    let r = op
        .cancel(v1::CancelRequest {
            sweep_id: sweep.sweep_id.clone(),
            trial_keys: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.dropped, r.stopping), (2, 1));
    let hb = w
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "w".into(),
            trials: vec![v1::TrialProgress {
                token: t.token.clone(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.cancel.len(), 1, "{hb:?}");
    let state = w
        .complete(v1::CompleteRequest {
            worker_id: "w".into(),
            token: t.token.clone(),
            cancelled: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, v1::TrialState::Cancelled as i32);
    assert_eq!(counts(&mut op, &sweep.sweep_id).await["cancelled"], 3);
    assert!(lease(&mut w, "w", 4, 300).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_coordinators_serve_one_cluster_and_aggregate_once() {
    let dir = TestDir::new("coord-two").unwrap();
    let mut cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    cluster.start_coordinator().unwrap();
    let (a, b) = (cluster.url(0), cluster.url(1));
    let mut op = operator(&a);
    let models = upload(&mut op, 4, "two").await;
    let sweep = submit(&mut op, spec(models, (1..=25).collect(), &[Stage::Convert])).await;
    assert_eq!(sweep.queued, 100);
    let store = cluster.store();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, url) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        let store = store.clone();
        tasks.spawn(async move {
            let id = format!("w{i}");
            let mut w = register(&url, &id, full_caps()).await;
            let mut keys = Vec::new();
            loop {
                let got = lease(&mut w, &id, 2, 300).await;
                if got.is_empty() {
                    return keys;
                }
                for t in got {
                    succeed(&mut w, &id, &t, &store).await.unwrap();
                    keys.push(key(&t));
                }
            }
        });
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    while let Some(keys) = tasks.join_next().await {
        let keys = keys.unwrap();
        per_worker.push(keys.len());
        all.extend(keys);
    }
    let unique: HashSet<&String> = all.iter().collect();
    println!(
        "two coordinators: 100 trials leased {} times by 4 workers {per_worker:?}",
        all.len()
    );
    assert_eq!(
        (all.len(), unique.len()),
        (100, 100),
        "a trial ran twice or not at all"
    );
    let mut op_b = operator(&b);
    assert_eq!(counts(&mut op_b, &sweep.sweep_id).await["succeeded"], 100);
    let aggregate = store.join(format!("sweeps/{}/synthesis_results.json", sweep.sweep_id));
    hlsfarm_tests::wait_until("the aggregate", Duration::from_secs(10), || {
        aggregate.is_file().then_some(())
    })
    .unwrap();
    // Both coordinators run the aggregator; the sweep is aggregated exactly once.
    std::thread::sleep(Duration::from_secs(2));
    let queue = hlsfarm_common::store::RedisQueue::connect(
        &cluster.redis.url(),
        "test",
        hlsfarm_common::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    let events = queue
        .events()
        .await
        .unwrap()
        .read("0-0", 100, 100_000)
        .await
        .unwrap();
    let aggregated = events.iter().filter(|e| e.kind == "aggregated").count();
    assert_eq!(aggregated, 1, "aggregated {aggregated} times");
}

#[tokio::test(flavor = "multi_thread")]
async fn parked_lease_calls_cost_redis_nothing_and_wake_on_a_submit_elsewhere() {
    let dir = TestDir::new("coord-parked").unwrap();
    let mut cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    cluster.start_coordinator().unwrap();
    let (a, b) = (cluster.url(0), cluster.url(1));
    let workers = 20;
    let mut parked = tokio::task::JoinSet::new();
    for i in 0..workers {
        let b = b.clone();
        parked.spawn(async move {
            let id = format!("p{i}");
            let mut w = register(&b, &id, full_caps()).await;
            let got = lease(&mut w, &id, 1, 20_000).await;
            (got, Instant::now())
        });
    }
    // Every call parked on coordinator 1: Redis hears only the coordinators' own loops (the
    // reaper once a lease period with nothing leased, the claims every 2 s). Polling once a
    // second each, the 20 calls alone would cost about 500 commands in 3 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cluster.redis.commands_processed().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = cluster.redis.commands_processed().unwrap() - before;
    println!("20 parked lease calls, 2 coordinators: {idle} Redis commands in 3 s");
    assert!(
        idle < 150,
        "{idle} Redis commands in 3 s with every worker parked"
    );

    // Work submitted through coordinator 0 reaches the calls parked on coordinator 1 (the
    // wake channel), each call long before its 20 s wait ends.
    let mut op = operator(&a);
    let models = upload(&mut op, 1, "parked").await;
    let submitted = Instant::now();
    let sweep = submit(&mut op, spec(models, (1..=20).collect(), &[Stage::Convert])).await;
    assert_eq!(sweep.queued, 20);
    let mut leased = HashSet::new();
    let mut waits = Vec::new();
    while let Some(answer) = parked.join_next().await {
        let (got, at) = answer.unwrap();
        assert_eq!(got.len(), 1, "a parked call ended without work");
        leased.insert(key(&got[0]));
        waits.push(at.duration_since(submitted));
    }
    waits.sort();
    println!(
        "first lease after the submit: p50 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits[waits.len() - 1]
    );
    assert_eq!(leased.len(), 20, "a trial was leased twice");
    assert!(
        waits[waits.len() - 1] < Duration::from_secs(15),
        "{waits:?}: the calls waited out their time instead of being woken"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_restart_mid_sweep_loses_nothing() {
    let dir = TestDir::new("coord-restart").unwrap();
    // Leases outlive the restart (the worker's heartbeats fail while the port is closed).
    let mut cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            lease_ms: 15_000,
            heartbeat_ms: 1000,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 2, "restart").await;
    let sweep = submit(&mut op, spec(models, (1..=10).collect(), &[Stage::Convert])).await;
    let mut w = register(&url, "w", full_caps()).await;
    let held = lease(&mut w, "w", 5, 1000).await;
    assert_eq!(held.len(), 5);
    cluster.restart_coordinator(0).unwrap();
    // Same address; the worker's leases, the queue and the sweep are all still there.
    let mut w = worker_client(&url);
    let hb = w
        .heartbeat(v1::HeartbeatRequest {
            worker_id: "w".into(),
            trials: held
                .iter()
                .map(|t| v1::TrialProgress {
                    token: t.token.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.extended.len(), 5, "{hb:?}");
    for t in &held {
        succeed(&mut w, "w", t, &cluster.store()).await.unwrap();
    }
    loop {
        let got = lease(&mut w, "w", 4, 300).await;
        if got.is_empty() {
            break;
        }
        for t in &got {
            succeed(&mut w, "w", t, &cluster.store()).await.unwrap();
        }
    }
    let mut op = operator(&url);
    let c = counts(&mut op, &sweep.sweep_id).await;
    assert_eq!(c["succeeded"], 20, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100k_trial_sweep_is_submitted_in_one_go() {
    let dir = TestDir::new("coord-100k").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "big").await;
    let mut s = spec(models, (1..=1000).collect(), &[Stage::Convert]);
    s.grid.as_mut().unwrap().clock_period_ns =
        (1..=100).map(|c| 2.0 + f64::from(c) / 10.0).collect();
    let started = Instant::now();
    let r = submit(&mut op, s).await;
    let took = started.elapsed();
    println!(
        "100k-trial submit: {:.2} s (debug build)",
        took.as_secs_f64()
    );
    assert_eq!((r.trials, r.queued), (100_000, 100_000));
    let status = op
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let sweep = status
        .sweeps
        .iter()
        .find(|s| s.sweep_id == r.sweep_id)
        .unwrap();
    assert_eq!(sweep.counts["queued"], 100_000);
    let mut w = register(&url, "w", full_caps()).await;
    assert_eq!(lease(&mut w, "w", 4, 1000).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_needs_the_right_token() {
    let dir = TestDir::new("coord-auth").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let (c, b) = channel(&url, "", None).unwrap();
    let mut anonymous = OperatorClient::with_interceptor(c, b);
    let err = anonymous
        .get_status(v1::GetStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let (c, b) = channel(&url, WORKER_TOKEN, None).unwrap();
    let mut as_worker = OperatorClient::with_interceptor(c, b);
    for err in [
        as_worker
            .submit_sweep(v1::SubmitSweepRequest::default())
            .await
            .unwrap_err(),
        as_worker
            .cancel(v1::CancelRequest {
                sweep_id: "x".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let (c, b) = channel(&url, OPERATOR_TOKEN, None).unwrap();
    let mut as_operator = WorkerClient::with_interceptor(c, b);
    let err = as_operator
        .lease(v1::LeaseRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Bad input at the edge: a traversal name, a missing upload, a bad grid.
    let mut op = operator(&url);
    let err = op
        .upload_model(tokio_stream::iter(vec![v1::UploadChunk {
            name: "../evil.h5".into(),
            sha256: sha256_hex(b"x"),
            data: b"x".to_vec(),
        }]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let ghost = v1::ModelInput {
        name: "ghost.h5".into(),
        sha256: sha256_hex(b"never uploaded"),
        size_bytes: 5,
        companions: Default::default(),
    };
    let err = op
        .submit_sweep(v1::SubmitSweepRequest {
            spec: Some(spec(vec![ghost.clone()], vec![], &[Stage::Convert])),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("upload it first"),
        "{}",
        err.message()
    );
    let err = op
        .submit_sweep(v1::SubmitSweepRequest {
            spec: Some(spec(vec![ghost], vec![0], &[Stage::Convert])),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("reuse_factor"), "{}", err.message());
    // The coordinator never logs a token.
    let log = cluster.coordinators[0].0.stderr();
    assert!(!log.contains(OPERATOR_TOKEN) && !log.contains(WORKER_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_events_and_resumes_from_its_cursor_across_a_restart() {
    let dir = TestDir::new("coord-watch").unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            lease_ms: 15_000,
            heartbeat_ms: 1000,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let mut stream = op
        .watch(v1::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let models = upload(&mut op, 1, "watch").await;
    let sweep = submit(&mut op, spec(models, vec![1, 2], &[Stage::Convert])).await;
    let mut w = register(&url, "w", full_caps()).await;
    let held = lease(&mut w, "w", 2, 1000).await;
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|m: &&String| m.starts_with("leased"))
        .count()
        < 2
    {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(e.message.clone());
        if e.message.starts_with("leased") {
            assert_eq!(e.sweep_id, sweep.sweep_id);
            assert_eq!(e.worker_id, "w");
        }
    }
    let cursor = {
        // The last event so far: resume after it.
        let e = op
            .watch(v1::WatchRequest {
                after_cursor: "0-0".into(),
                sweep_id: sweep.sweep_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        assert!(e.message.starts_with("submitted"), "{e:?}");
        e.cursor
    };
    assert!(seen.iter().any(|m| m.starts_with("submitted")), "{seen:?}");
    // The coordinator dies; a trial completes through the new one; a watcher that resumes
    // from its cursor sees everything after it, in order, with nothing lost.
    cluster.restart_coordinator(0).unwrap();
    let mut w = worker_client(&url);
    fail(&mut w, "w", &held[0]).await.unwrap();
    let mut op = operator(&url);
    let mut resumed = op
        .watch(v1::WatchRequest {
            after_cursor: cursor,
            sweep_id: sweep.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut after = Vec::new();
    while !after.iter().any(|m: &String| m.starts_with("completed")) {
        let e = tokio::time::timeout(Duration::from_secs(10), resumed.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        after.push(e.message);
    }
    assert_eq!(
        after.iter().filter(|m| m.starts_with("leased")).count(),
        2,
        "{after:?}"
    );
    assert!(
        !after.iter().any(|m| m.starts_with("submitted")),
        "{after:?}"
    );
}

/// Completes `t` with a failure of `class` in `stage`, with a result.json as a worker writes
/// it: the trial's own settings, `failure_extra` merged into its `failure` (a peak, a fix),
/// and `derived_from` where given.
async fn fail_with_result(
    w: &mut Wk,
    t: &v1::LeasedTrial,
    class: hlsfarm_common::FailureClass,
    stage: Stage,
    failure_extra: serde_json::Value,
    derived_from: Option<serde_json::Value>,
) -> i32 {
    let settings: Settings = t.settings.clone().unwrap().try_into().unwrap();
    let mut failure = serde_json::json!({
        "class": class, "reason": format!("{class} in {stage}"),
        "stage": stage, "log_tail": "", "suggestion": null,
    });
    for (k, v) in failure_extra.as_object().unwrap() {
        failure[k] = v.clone();
    }
    let result = serde_json::json!({
        "schema": hlsfarm_common::results::RESULT_SCHEMA,
        "trial_key": key(t),
        "model": { "name": t.model.as_ref().unwrap().name, "sha256": t.model.as_ref().unwrap().sha256 },
        "settings": settings,
        "stages": [stage],
        "status": "failed",
        "start_time": "2026-12-02T00:00:00Z",
        "end_time": "2026-12-02T00:00:01Z",
        "timings": [],
        "toolchain": { "hls4ml_version": "1.3.0" },
        "warnings": [],
        "effective_reuse_factor": {},
        "reports": {},
        "derived_from": derived_from,
        "failure": failure,
        "kept_files": [],
        "kept_bytes": 0,
    });
    w.complete(v1::CompleteRequest {
        worker_id: "w".into(),
        token: t.token.clone(),
        result: Some(v1::TrialResult {
            result_json: result.to_string(),
            ..Default::default()
        }),
        failure: Some(v1::Failure {
            class: v1::FailureClass::from(class) as i32,
            reason: format!("{class} in {stage}"),
            stage: v1::Stage::from(stage) as i32,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .state
}

/// [`fail_with_result`] with the stage's peak memory recorded.
async fn fail_with(
    w: &mut Wk,
    t: &v1::LeasedTrial,
    class: hlsfarm_common::FailureClass,
    stage: Stage,
    peak_mib: u64,
) -> i32 {
    let extra = serde_json::json!({
        "reason": format!("{class} in {stage} (peak {peak_mib} MiB)"),
        "peak_memory_mib": peak_mib,
    });
    fail_with_result(w, t, class, stage, extra, None).await
}

async fn lease_with_memory(w: &mut Wk, id: &str, free_mib: u64) -> Vec<v1::LeasedTrial> {
    w.lease(v1::LeaseRequest {
        worker_id: id.into(),
        max_trials: 4,
        free_memory_mib: free_mib,
        free_cores: 16,
        free_disk_mib: 100_000,
        wait_ms: 300,
    })
    .await
    .unwrap()
    .into_inner()
    .trials
}

#[tokio::test(flavor = "multi_thread")]
async fn an_out_of_memory_trial_is_retried_with_twice_its_peak_on_a_worker_that_has_it() {
    use hlsfarm_common::FailureClass;
    let dir = TestDir::new("coord-oom").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            max_attempts: 5,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "oom").await;
    let sweep = submit(
        &mut op,
        spec(models, vec![], &[Stage::Convert, Stage::Cosim]),
    )
    .await;
    let mut w = register(&url, "w", full_caps()).await; // offers 65536 MiB
    let t = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    let first = t.resources.unwrap().memory_mib;
    let state = fail_with(&mut w, &t, FailureClass::Oom, Stage::Cosim, 10_000).await;
    assert_eq!(state, v1::TrialState::Queued as i32);
    // Not on a worker with less than twice the peak free...
    assert!(lease_with_memory(&mut w, "w", 16_000).await.is_empty());
    // ...but on one with it, reserving it (the worker's memory limit for the trial).
    let t = lease_with_memory(&mut w, "w", 65_536).await.pop().unwrap();
    assert_eq!(t.token.as_ref().unwrap().attempt, 2);
    assert_eq!(t.resources.unwrap().memory_mib, 20_000, "was {first}");
    // Twice 40 GB is more than any worker offers: the most there is.
    fail_with(&mut w, &t, FailureClass::Oom, Stage::Cosim, 40_000).await;
    let t = lease_with_memory(&mut w, "w", 65_536).await.pop().unwrap();
    assert_eq!(t.resources.unwrap().memory_mib, 65_536);
    // It died with the most there is: retrying cannot help, and the result says why.
    let state = fail_with(&mut w, &t, FailureClass::Oom, Stage::Cosim, 64_000).await;
    assert_eq!(state, v1::TrialState::Failed as i32);
    let results = op
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let failure = results.trials[0].failure.clone().unwrap();
    assert!(
        failure.reason.contains("peaked at 64000 MiB")
            && failure.reason.contains("largest offers 65536 MiB"),
        "{failure:?}"
    );
    assert!(failure.suggestion.contains("reuse_factor"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_licence_refusal_costs_no_attempt_backs_off_and_holds_the_seats_down() {
    use hlsfarm_common::FailureClass;
    let dir = TestDir::new("coord-licence").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            env: vec![
                (
                    "HLSFARM_COORDINATOR__LICENCE_BACKOFF_MS".into(),
                    "300".into(),
                ),
                ("HLSFARM_COORDINATOR__SEAT_HOLD_MS".into(), "60000".into()),
            ],
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 2, "lic").await;
    let sweep = submit(
        &mut op,
        spec(models, vec![], &[Stage::Convert, Stage::Vsynth]),
    )
    .await;
    assert_eq!(sweep.queued, 2);
    let mut w = register(&url, "w", full_caps()).await;
    let both = lease(&mut w, "w", 2, 1000).await;
    assert_eq!(both.len(), 2);
    let (refused, running) = (&both[0], &both[1]);
    let state = fail_with(&mut w, refused, FailureClass::Licence, Stage::Vsynth, 0).await;
    assert_eq!(state, v1::TrialState::Queued as i32);
    // Past its backoff, still not leased: vsynth seats are held at the one in use when the
    // licence server refused (no limit is configured, so nothing else would stop it).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(lease(&mut w, "w", 2, 300).await.is_empty());
    // The running one finishes: one seat free under the hold, and the refused trial goes,
    // still on its first attempt.
    fail(&mut w, "w", running).await.unwrap();
    let again = lease(&mut w, "w", 2, 1000).await;
    assert_eq!(again.len(), 1);
    assert_eq!(key(&again[0]), key(refused));
    let token = again[0].token.as_ref().unwrap();
    assert_eq!(token.attempt, 1, "the refusal spent an attempt");
    assert_ne!(token.epoch, refused.token.as_ref().unwrap().epoch);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_fix_derives_a_trial_with_the_fix_once() {
    use hlsfarm_common::FailureClass;
    let dir = TestDir::new("coord-apply-fix").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "fix").await;
    let mut s = spec(models, vec![], &[Stage::Convert, Stage::Csynth]);
    s.on_failure = "apply-fix".into();
    let sweep = submit(&mut op, s).await;
    assert_eq!(sweep.trials, 1);
    let mut w = register(&url, "w", full_caps()).await;
    let original = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    assert!(original.derived_from_json.is_empty());

    // C synthesis refused a partition; the log named the size it needs.
    let fix = serde_json::json!({ "fix": { "max_array_partition_size": 8192 } });
    let (class, stage) = (FailureClass::ToolError, Stage::Csynth);
    let state = fail_with_result(&mut w, &original, class, stage, fix.clone(), None).await;
    assert_eq!(state, v1::TrialState::Failed as i32);

    // The derived trial: its own key, the fix applied, the original named.
    let fixed = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    assert_ne!(key(&fixed), key(&original));
    assert_eq!(
        fixed.settings.as_ref().unwrap().max_array_partition_size,
        8192
    );
    let from: serde_json::Value = serde_json::from_str(&fixed.derived_from_json).unwrap();
    assert_eq!(from["trial_key"], key(&original));
    assert_eq!(from["fix"]["max_array_partition_size"], 8192);
    // Its own failure is reported, not derived again.
    fail_with_result(&mut w, &fixed, class, stage, fix, Some(from)).await;
    assert!(lease(&mut w, "w", 1, 500).await.is_empty());
    let c = counts(&mut op, &sweep.sweep_id).await;
    assert_eq!(c["failed"], 2, "{c:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_infrastructure_failure_goes_to_another_worker() {
    let dir = TestDir::new("coord-infra").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "infra").await;
    submit(&mut op, spec(models, vec![], &[Stage::Convert])).await;
    let mut w1 = register(&url, "w1", full_caps()).await;
    let mut w2 = register(&url, "w2", full_caps()).await;
    let t = lease(&mut w1, "w1", 1, 1000).await.pop().unwrap();
    // w1's disk was full: not the trial's fault, and not a reason to give it back to w1.
    let state = w1
        .complete(v1::CompleteRequest {
            worker_id: "w1".into(),
            token: t.token.clone(),
            failure: Some(v1::Failure {
                class: v1::FailureClass::Infrastructure as i32,
                reason: "no space left on the scratch disk".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, v1::TrialState::Queued as i32);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the retry backoff
    assert!(lease(&mut w1, "w1", 1, 300).await.is_empty());
    let again = lease(&mut w2, "w2", 1, 1000).await.pop().unwrap();
    assert_eq!(key(&again), key(&t));
    assert_eq!(again.token.unwrap().attempt, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_sharing_a_running_trial_aggregates_once_that_trial_ends() {
    let dir = TestDir::new("coord-shared").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let mut w = register(&url, "w1", full_caps()).await;
    let models = upload(&mut op, 1, "shared").await;
    let first = submit(&mut op, spec(models.clone(), vec![], &[Stage::Convert])).await;
    let running = lease(&mut w, "w1", 1, 5000).await.pop().unwrap();
    // The same trial in a second sweep: shared with the first sweep's run, not run again.
    let second = submit(&mut op, spec(models, vec![], &[Stage::Convert])).await;
    assert_eq!((second.queued, second.reused), (0, 1));
    let aggregate = cluster
        .store()
        .join(format!("sweeps/{}/synthesis_results.json", second.sweep_id));
    // Nothing of its own runs, but its aggregate waits for the shared run (and --wait with
    // it: the sweep is pending).
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hb = w
            .heartbeat(v1::HeartbeatRequest {
                worker_id: "w1".into(),
                trials: vec![v1::TrialProgress {
                    token: running.token.clone(),
                    stage: v1::Stage::Convert as i32,
                    phase: String::new(),
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hb.extended.len(), 1);
    }
    assert!(
        !aggregate.exists(),
        "aggregated before its shared trial ended"
    );
    let pending = op
        .get_results(v1::GetResultsRequest {
            sweep_id: second.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .sweep
        .unwrap()
        .pending;
    assert!(pending);
    succeed(&mut w, "w1", &running, &cluster.store())
        .await
        .unwrap();
    for sweep in [&first.sweep_id, &second.sweep_id] {
        let path = cluster
            .store()
            .join(format!("sweeps/{sweep}/synthesis_results.json"));
        hlsfarm_tests::wait_until("the aggregate", Duration::from_secs(15), || {
            let summary: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
            (summary["total"] == 1 && summary["successful"] == 1).then_some(())
        })
        .unwrap();
    }
}

/// One stage's cost in a seeded history.
fn cost(stage: Stage, seconds: f64, peak_mib: u64) -> hlsfarm_common::estimate::StageCost {
    hlsfarm_common::estimate::StageCost {
        stage,
        seconds,
        peak_mib,
        cpu_seconds: None,
    }
}

/// Earlier runs in the cluster's history: 12 runs of each model (reuse factors 1, 2, 4, 8 in
/// turn), run `i` of model `m` costing `stages(m, i)`. Returns the queue it wrote through.
async fn seed_history(
    cluster: &Cluster,
    models: &[v1::ModelInput],
    stages: impl Fn(usize, u32) -> Vec<hlsfarm_common::estimate::StageCost>,
) -> hlsfarm_common::store::RedisQueue {
    use hlsfarm_common::estimate::{Features, Observation};
    let queue = hlsfarm_common::store::RedisQueue::connect(
        &cluster.redis.url(),
        "test",
        hlsfarm_common::queue::QueueConfig::default(),
    )
    .await
    .unwrap();
    for i in 0..12u32 {
        for (index, m) in models.iter().enumerate() {
            let settings = hlsfarm_common::Settings {
                reuse_factor: 1 << (i % 4),
                ..hlsfarm_common::Settings::default()
            };
            let o = Observation {
                model: m.sha256.clone(),
                features: Features::of(&settings, m.size_bytes, Some(m.size_bytes / 4), ""),
                stages: stages(index, i),
            };
            queue.push_observation(&o).await.unwrap();
        }
    }
    queue
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trial_predicted_not_to_fit_a_worker_is_never_leased_to_it() {
    let dir = TestDir::new("coord-predicted-memory").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    // Two models: earlier runs of the first peaked near 6 GB in conversion, of the second
    // near 500 MB. The sweep leaves memory at its default (2 GiB for conversion alone).
    let models = upload(&mut op, 2, "predicted").await;
    let queue = seed_history(&cluster, &models, |m, i| {
        let peak = if m == 0 { 6000 } else { 500 };
        vec![cost(
            Stage::Convert,
            1.0 + f64::from(i % 3),
            peak + u64::from(i % 3) * 20,
        )]
    })
    .await;
    let sweep = submit(&mut op, spec(models.clone(), vec![1, 2], &[Stage::Convert])).await;
    // Whether the fit came before the submit or after it, the queued trials get the
    // predicted reservation.
    let keys: Vec<(String, String)> = op
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .trials
        .into_iter()
        .map(|t| (t.trial_key, t.model_name))
        .collect();
    assert_eq!(keys.len(), 4);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut settled = true;
        for (key, model) in &keys {
            let mem = queue.trial(key).await.unwrap().memory_mib;
            let big = *model == models[0].name;
            settled &= if big { mem >= 6000 } else { mem < 2048 };
        }
        if settled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reservations never followed the history"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The results carry each trial's prediction.
    let listed = op
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .trials;
    for t in &listed {
        assert!(
            t.predicted_seconds.is_some_and(|s| s > 0.5 && s < 10.0),
            "{t:?}"
        );
        let mib = t.predicted_memory_mib.unwrap();
        assert_eq!(mib >= 6000, t.model_name == models[0].name, "{t:?}");
    }
    // A 4 GiB worker gets only the small model's trials, and reserves the prediction.
    let mut w = register(&url, "small", full_caps()).await;
    let got = lease_with_memory(&mut w, "small", 4096).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for t in &got {
        assert_eq!(t.model.as_ref().unwrap().name, models[1].name);
        let reserved = t.resources.as_ref().unwrap().memory_mib;
        assert!((512..2048).contains(&reserved), "{reserved}");
    }
    assert!(lease_with_memory(&mut w, "small", 4096).await.is_empty());
    // A larger one gets the big model's.
    let mut big = register(&url, "big", full_caps()).await;
    let got = lease_with_memory(&mut big, "big", 65_536).await;
    assert_eq!(got.len(), 2, "{got:?}");
    for t in &got {
        assert_eq!(t.model.as_ref().unwrap().name, models[0].name);
        assert!(t.resources.as_ref().unwrap().memory_mib >= 6000);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_attempt_runs_under_learned_stage_limits_and_its_retry_does_not() {
    use hlsfarm_common::FailureClass;
    let dir = TestDir::new("coord-learned-limits").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "limits").await;
    // Earlier runs: conversion about 2 s, C synthesis about 10 s.
    seed_history(&cluster, &models, |_, i| {
        vec![
            cost(Stage::Convert, 2.0 + f64::from(i % 3) * 0.1, 600),
            cost(Stage::Csynth, 10.0 + f64::from(i % 3), 900),
        ]
    })
    .await;
    let sweep = submit(
        &mut op,
        spec(models.clone(), vec![1], &[Stage::Convert, Stage::Csynth]),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while op
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.sweep_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .trials
        .iter()
        .any(|t| t.predicted_seconds.is_none())
    {
        assert!(std::time::Instant::now() < deadline, "nothing was learned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut w = register(&url, "w", full_caps()).await;
    let t = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    assert_eq!(t.token.as_ref().unwrap().attempt, 1);
    // The tool stage gets a limit (4 × its 99.9th percentile is far below the 30-minute
    // floor here); conversion, held by the driver's limit, gets none.
    assert_eq!(t.stage_limits.len(), 1, "{:?}", t.stage_limits);
    let limit = &t.stage_limits[0];
    assert_eq!(limit.stage, v1::Stage::Csynth as i32);
    assert_eq!(limit.seconds, 1800.0);
    assert!((8.0..14.0).contains(&limit.predicted_seconds), "{limit:?}");
    // It timed out at that limit: the retry runs under the worker's own.
    let state = fail_with(&mut w, &t, FailureClass::Timeout, Stage::Csynth, 900).await;
    assert_eq!(state, v1::TrialState::Queued as i32);
    tokio::time::sleep(Duration::from_millis(300)).await; // past the retry backoff
    let again = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    assert_eq!(again.token.as_ref().unwrap().attempt, 2);
    assert!(again.stage_limits.is_empty(), "{:?}", again.stage_limits);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_error_names_its_kind_and_corrupt_stored_data_is_not_an_outage() {
    let dir = TestDir::new("coord-error-kinds").unwrap();
    let mut cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let second = cluster.start_coordinator().unwrap();
    let url = cluster.url(0);
    let mut op = operator(&url);
    let models = upload(&mut op, 1, "kinds").await;
    let sweep = submit(&mut op, spec(models, vec![1, 2], &[Stage::Convert])).await;
    let kind = |s: &tonic::Status| hlsfarm_proto::error_kind(s).map(str::to_owned);
    // Unknown things are not found.
    let missing = op
        .get_results(v1::GetResultsRequest {
            sweep_id: "no-such-sweep".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert_eq!(kind(&missing).as_deref(), Some("not-found"));
    // A worker nobody registered is told to register, not that its lease was lost.
    let mut ghost = worker_client(&url);
    let forgotten = ghost
        .lease(v1::LeaseRequest {
            worker_id: "ghost".into(),
            max_trials: 1,
            free_memory_mib: 8192,
            free_cores: 4,
            free_disk_mib: 100_000,
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(forgotten.code(), tonic::Code::FailedPrecondition);
    assert_eq!(kind(&forgotten).as_deref(), Some("not-registered"));
    assert!(
        forgotten.message().contains("register again"),
        "{forgotten:?}"
    );
    // A completion under a token that no longer holds the trial: the lease was lost.
    let mut w = register(&url, "w", full_caps()).await;
    let t = lease(&mut w, "w", 1, 1000).await.pop().unwrap();
    let mut stale = t.token.clone().unwrap();
    stale.epoch += 1;
    let lost = w
        .complete(v1::CompleteRequest {
            worker_id: "w".into(),
            token: Some(stale),
            cancelled: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(lost.code(), tonic::Code::FailedPrecondition);
    assert_eq!(kind(&lost).as_deref(), Some("lease-lost"), "{lost:?}");
    // A plan that no longer parses (written by a newer version, or damaged) is data loss,
    // which clients do not retry as they would an outage; the message says what is damaged.
    let key = format!(
        "{}:sw:{}",
        hlsfarm_common::store::keys::Keys::new("test").base(),
        sweep.sweep_id
    );
    let status = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &cluster.redis.port().to_string(),
            "HSET",
            &key,
            "plan",
            "{not json",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    let mut other = operator(&cluster.url(second));
    let corrupt = other
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.sweep_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(corrupt.code(), tonic::Code::DataLoss, "{corrupt:?}");
    assert_eq!(kind(&corrupt).as_deref(), Some("corrupt"));
    assert!(
        corrupt
            .message()
            .contains(&format!("plan of sweep {}", sweep.sweep_id)),
        "{corrupt:?}"
    );
}
