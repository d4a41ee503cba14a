//! The scale benchmark by simulation: N simulated workers in this process, each with its own
//! gRPC connection, registering, heartbeating and leasing as `hlsfarm worker` does (idle: a
//! parked 20 s lease call and a heartbeat once a lease period; busy: a heartbeat a second),
//! against one or more coordinators on one Redis. Trials are sleeps of log-normal durations
//! (drawn from each trial's key), completed with a staged `result.json`, so the coordinator
//! commits them as it commits real ones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hlsfarm_common::sync::lock;
use hlsfarm_proto::client::channel;
use hlsfarm_proto::v1::{self, worker_client::WorkerClient};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::dispatch::process_cpu_s;
use super::lifecycle::{lease_request, minimal_result};
use super::makespan::lognormal_ms;
use super::{Rig, WORKER, info_field, model, redis_info, sweep};

/// What one run is asked to do.
#[derive(Debug, Clone, Copy)]
pub(super) struct ScaleRun {
    pub workers: u32,
    pub slots: u32,
    pub coordinators: u32,
    pub trials: u32,
    pub trial_ms: u64,
    pub sigma: f64,
    pub idle_s: u64,
}

/// What the simulated fleet shares with the driver.
struct Fleet {
    stop: CancellationToken,
    registered: AtomicU64,
    completed: AtomicU64,
    /// When the sweep was submitted; each worker's first lease after it is timed.
    submitted: Mutex<Option<Instant>>,
    first_leases: Mutex<Vec<Duration>>,
    last_completion: Mutex<Option<Instant>>,
    /// Failed calls by what failed (`<call> <gRPC code or kind>`).
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
    /// The trials' simulated durations, ms: their sum and the longest.
    slept_ms: AtomicU64,
    longest_ms: AtomicU64,
    store: std::path::PathBuf,
    trial_ms: u64,
    sigma: f64,
}

impl Fleet {
    /// Counts a failed call: `call` and, from its status, the code and the error kind.
    fn error(&self, call: &str, status: Option<&tonic::Status>) {
        let what = match status {
            Some(s) => match hlsfarm_proto::error_kind(s) {
                Some(kind) => format!("{call} {:?} {kind}", s.code()),
                None => format!("{call} {:?}", s.code()),
            },
            None => call.to_owned(),
        };
        *lock(&self.errors).entry(what).or_default() += 1;
    }

    /// The failed calls: `0`, or their count with the counts by what failed.
    fn errors(&self) -> String {
        let errors = lock(&self.errors);
        let total: u64 = errors.values().sum();
        if total == 0 {
            return "0".to_owned();
        }
        let each: Vec<String> = errors
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        format!("{total} ({})", each.join(", "))
    }
}

type Client = WorkerClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        hlsfarm_proto::client::Bearer,
    >,
>;

/// A trial's simulated duration, drawn from its key.
fn duration_of(key: &str, median_ms: u64, sigma: f64) -> Duration {
    let seed = u64::from_str_radix(&key[..key.len().min(16)], 16).unwrap_or(7);
    let ms = lognormal_ms(1, median_ms, sigma, seed)
        .first()
        .copied()
        .unwrap_or(0.0);
    Duration::from_secs_f64(ms / 1000.0)
}

async fn sim_worker(fleet: Arc<Fleet>, url: String, i: u32, slots: u32) {
    let id = format!("sim-{i:05}");
    let Ok((c, b)) = channel(&url, WORKER, None) else {
        fleet.error("connect", None);
        return;
    };
    let mut w: Client = WorkerClient::with_interceptor(c, b);
    let registered = w
        .register(v1::RegisterRequest {
            worker_id: id.clone(),
            hostname: "scale".into(),
            capabilities: Some(v1::Capabilities {
                hls4ml_version: "1.3.0".into(),
                slots,
                memory_mib: 1 << 20,
                cores: slots,
                formats: vec!["keras_h5".into()],
                ..Default::default()
            }),
            version: "bench".into(),
        })
        .await;
    let registered = match registered {
        Ok(r) => r,
        Err(s) => {
            fleet.error("register", Some(&s));
            return;
        }
    };
    let registered = registered.into_inner();
    fleet.registered.fetch_add(1, Ordering::Relaxed);
    let running: Arc<Mutex<HashMap<String, v1::LeaseToken>>> = Arc::default();
    let freed = Arc::new(Notify::new());
    let heartbeat = tokio::spawn(heartbeats(
        fleet.clone(),
        w.clone(),
        id.clone(),
        u64::from(i),
        running.clone(),
        Duration::from_millis(registered.heartbeat_ms),
        Duration::from_millis(registered.lease_ms),
    ));
    let mut first = true;
    while !fleet.stop.is_cancelled() {
        let busy = running.lock().map_or(0, |r| r.len()) as u32;
        if busy >= slots {
            tokio::select! {
                _ = freed.notified() => {}
                _ = fleet.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut request = lease_request(&id, slots - busy, if busy > 0 { 1_000 } else { 20_000 });
        request.free_cores = slots - busy;
        let answer = tokio::select! {
            _ = fleet.stop.cancelled() => break,
            a = w.lease(request) => a,
        };
        let trials = match answer {
            Ok(a) => a.into_inner().trials,
            Err(s) => {
                fleet.error("lease", Some(&s));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if first
            && !trials.is_empty()
            && let Some(at) = *lock(&fleet.submitted)
        {
            first = false;
            lock(&fleet.first_leases).push(at.elapsed());
        }
        for t in trials {
            let Some(token) = t.token.clone() else {
                continue;
            };
            if let Ok(mut r) = running.lock() {
                r.insert(token.trial_key.clone(), token.clone());
            }
            let (fleet, running, freed, mut w, id) = (
                fleet.clone(),
                running.clone(),
                freed.clone(),
                w.clone(),
                id.clone(),
            );
            tokio::spawn(async move {
                let d = duration_of(&token.trial_key, fleet.trial_ms, fleet.sigma);
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                fleet.slept_ms.fetch_add(ms, Ordering::Relaxed);
                fleet.longest_ms.fetch_max(ms, Ordering::Relaxed);
                tokio::time::sleep(d).await;
                let result = minimal_result(
                    &token.trial_key,
                    t.model.as_ref().map_or("", |m| m.name.as_str()),
                );
                let dir = fleet.store.join(&t.staging_prefix);
                let staged = tokio::fs::create_dir_all(&dir).await.is_ok()
                    && tokio::fs::write(dir.join("result.json"), &result)
                        .await
                        .is_ok();
                let done = w
                    .complete(v1::CompleteRequest {
                        worker_id: id,
                        token: Some(token.clone()),
                        result: Some(v1::TrialResult {
                            result_json: result,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await;
                match (staged, done) {
                    (true, Ok(_)) => {
                        fleet.completed.fetch_add(1, Ordering::Relaxed);
                        *lock(&fleet.last_completion) = Some(Instant::now());
                    }
                    (false, _) => fleet.error("upload", None),
                    (true, Err(s)) => fleet.error("complete", Some(&s)),
                }
                if let Ok(mut r) = running.lock() {
                    r.remove(&token.trial_key);
                }
                freed.notify_one();
            });
        }
    }
    heartbeat.abort();
}

/// Heartbeats as the worker daemon sends them: every `period` while trials run, once a
/// lease period (at most 5 s) while idle.
async fn heartbeats(
    fleet: Arc<Fleet>,
    mut w: Client,
    id: String,
    i: u64,
    running: Arc<Mutex<HashMap<String, v1::LeaseToken>>>,
    period: Duration,
    lease: Duration,
) {
    let idle_period = lease.min(Duration::from_secs(5)).max(period);
    let mut sent: Option<Instant> = None;
    // Spread the fleet's heartbeats over a period, as workers started at different times.
    let period_ms = u64::try_from(period.as_millis()).unwrap_or(1000).max(1);
    tokio::time::sleep(Duration::from_millis(i * 37 % period_ms)).await;
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = fleet.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let trials: Vec<v1::TrialProgress> = running
            .lock()
            .map(|r| {
                r.values()
                    .map(|token| v1::TrialProgress {
                        token: Some(token.clone()),
                        stage: v1::Stage::Convert as i32,
                        phase: String::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if trials.is_empty() && sent.is_some_and(|at| at.elapsed() + period / 2 < idle_period) {
            continue;
        }
        sent = Some(Instant::now());
        let request = v1::HeartbeatRequest {
            worker_id: id.clone(),
            trials,
            free_memory_mib: 1 << 20,
            free_disk_mib: 1 << 20,
            draining: false,
        };
        if let Err(s) = w.heartbeat(request).await {
            fleet.error("heartbeat", Some(&s));
        }
    }
}

async fn redis_commands(url: &str) -> f64 {
    let info = redis_info(url, "stats").await.unwrap_or_default();
    info_field(&info, "total_commands_processed").unwrap_or(0.0)
}

async fn redis_cpu(url: &str) -> f64 {
    let info = redis_info(url, "cpu").await.unwrap_or_default();
    info_field(&info, "used_cpu_user").unwrap_or(0.0)
        + info_field(&info, "used_cpu_sys").unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One run: the fleet starts, idles, takes a sweep, and stops. Prints one line of figures.
pub(super) async fn scale(run: ScaleRun) -> anyhow::Result<()> {
    let mut rig = Rig::start(&[])?;
    for _ in 1..run.coordinators.max(1) {
        rig.add_coordinator()?;
    }
    let urls = rig.urls();
    let fleet = Arc::new(Fleet {
        stop: CancellationToken::new(),
        registered: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        submitted: Mutex::new(None),
        first_leases: Mutex::new(Vec::new()),
        last_completion: Mutex::new(None),
        errors: Mutex::default(),
        slept_ms: AtomicU64::new(0),
        longest_ms: AtomicU64::new(0),
        store: rig.store.clone(),
        trial_ms: run.trial_ms,
        sigma: run.sigma,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..run.workers {
        let url = urls[i as usize % urls.len()].clone();
        tasks.spawn(sim_worker(fleet.clone(), url, i, run.slots));
        if i % 100 == 99 {
            // Connections opened in waves, as a fleet comes up.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while fleet.registered.load(Ordering::Relaxed) < u64::from(run.workers) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {} of {} simulated workers registered within 2 minutes (errors: {})",
                fleet.registered.load(Ordering::Relaxed),
                run.workers,
                fleet.errors()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle: every worker parked and past its first heartbeats.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pids = rig.coordinator_pids();
    let coordinator_cpu = || pids.iter().map(|p| process_cpu_s(*p)).sum::<f64>();
    let (c0, r0, k0) = (
        redis_commands(&rig.redis_url).await,
        redis_cpu(&rig.redis_url).await,
        coordinator_cpu(),
    );
    tokio::time::sleep(Duration::from_secs(run.idle_s.max(1))).await;
    let idle_s = run.idle_s.max(1) as f64;
    let (c1, r1, k1) = (
        redis_commands(&rig.redis_url).await,
        redis_cpu(&rig.redis_url).await,
        coordinator_cpu(),
    );
    let idle_per_worker = (c1 - c0) / idle_s / f64::from(run.workers);

    // Busy: one sweep; each worker's first lease is timed from the submit call.
    let mut op = rig.operator()?;
    let m = model(
        &mut op,
        &format!("scale-{}-{}", run.workers, run.coordinators),
    )
    .await?;
    let (r2, k2) = (redis_cpu(&rig.redis_url).await, coordinator_cpu());
    let started = Instant::now();
    *lock(&fleet.submitted) = Some(started);
    op.submit_sweep(v1::SubmitSweepRequest {
        spec: Some(sweep(m, run.trials)),
    })
    .await?;
    let submit_s = started.elapsed().as_secs_f64();
    let target = u64::from(run.trials);
    let mut last_seen = (0, Instant::now());
    while fleet.completed.load(Ordering::Relaxed) < target {
        let done = fleet.completed.load(Ordering::Relaxed);
        if done != last_seen.0 {
            last_seen = (done, Instant::now());
        } else if last_seen.1.elapsed() > Duration::from_secs(60) {
            anyhow::bail!("the sweep stopped at {done} of {target} completions");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = lock(&fleet.last_completion).unwrap_or_else(Instant::now);
    let busy_s = (end - started).as_secs_f64();
    let (r3, k3) = (redis_cpu(&rig.redis_url).await, coordinator_cpu());
    fleet.stop.cancel();
    while tasks.join_next().await.is_some() {}
    let mut firsts = lock(&fleet.first_leases).clone();
    firsts.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let slots = run.workers * run.slots;
    let mean_ms = run.trial_ms as f64 * (run.sigma * run.sigma / 2.0).exp();
    // No schedule ends sooner than the work over the slots, or than the longest trial.
    let lower = (fleet.slept_ms.load(Ordering::Relaxed) as f64 / f64::from(slots))
        .max(fleet.longest_ms.load(Ordering::Relaxed) as f64)
        / 1000.0;
    println!(
        "scale: {} workers × {} slots, {} coordinator{}: idle {:.2} Redis commands/s per worker ({:.0}/s in all; coordinators {:.1}% CPU, Redis {:.1}%); first lease after a submit p50 {:.1} ms, p99 {:.1} ms ({} workers; the submit of {} trials took {:.0} ms); {} trials of {} ms median in {:.2} s: {:.0} trials/s (the slots could take about {:.0}/s; makespan lower bound {:.2} s); CPU µs per trial: coordinators {:.0}, Redis {:.0}; errors: {}",
        run.workers,
        run.slots,
        run.coordinators,
        if run.coordinators == 1 { "" } else { "s" },
        idle_per_worker,
        (c1 - c0) / idle_s,
        (k1 - k0) / idle_s * 100.0,
        (r1 - r0) / idle_s * 100.0,
        ms(percentile(&firsts, 0.5)),
        ms(percentile(&firsts, 0.99)),
        firsts.len(),
        run.trials,
        submit_s * 1000.0,
        run.trials,
        run.trial_ms,
        busy_s,
        f64::from(run.trials) / busy_s.max(1e-9),
        f64::from(slots) / (mean_ms / 1000.0),
        lower,
        (k3 - k2) * 1e6 / f64::from(run.trials),
        (r3 - r2) * 1e6 / f64::from(run.trials),
        fleet.errors(),
    );
    Ok(())
}
