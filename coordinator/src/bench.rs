//! `hlsfarm bench NAME`: figures users care about, printed one per line. Each run starts
//! its own `redis-server` (from `$REDIS_SERVER` or `PATH`) on a free port and its own
//! coordinator (this binary's `serve`) in a temporary folder, and removes them at the end.
//! Benchmarks print; they never fail on a slow machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_common::trial_key::sha256_hex;
use hlsfarm_proto::v1::{self, operator_client::OperatorClient, worker_client::WorkerClient};
use hlsfarm_worker::daemon::{Bearer, channel};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const OPERATOR: &str = "bench-operator";
const WORKER: &str = "bench-worker";

/// The benchmarks.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Bench {
    /// Time to accept a sweep of N trials (one pipelined submit), and the coordinator's and
    /// Redis's memory with them queued. Target: 100k in ≤ 2 s, coordinator ≤ 200 MB.
    Submit {
        /// Trials per sweep (a multiple of 100).
        #[arg(long, default_value_t = 100_000)]
        trials: u32,
        /// Runs (the median is printed too).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Redis commands per trial lifecycle (submit, lease, heartbeat, complete) from INFO
    /// commandstats: round trips (script calls and plain commands the coordinator sends)
    /// and every command including those run inside the Lua scripts. Target ≤ 4 round trips.
    RedisCost {
        /// Trials.
        #[arg(long, default_value_t = 2000)]
        trials: u32,
    },
    /// Resubmitting an identical sweep of N trials whose results are stored: reruns (target
    /// 0) and time (target ≤ 1 s for 1,000).
    Cache {
        /// Trials.
        #[arg(long, default_value_t = 1000)]
        trials: u32,
    },
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on port {port} within 30 s")
}

/// A Redis and a coordinator of our own.
pub(crate) struct Rig {
    _dir: tempfile::TempDir,
    _redis: Proc,
    coordinator: Proc,
    /// The Redis URL.
    pub redis_url: String,
    /// The coordinator's URL.
    pub url: String,
    /// The store folder.
    pub store: PathBuf,
}

impl Rig {
    pub(crate) fn start(extra_env: &[(&str, &str)]) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let redis_port = free_port()?;
        let redis_bin = std::env::var_os("REDIS_SERVER")
            .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from);
        let redis = Proc(
            Command::new(&redis_bin)
                .args([
                    "--port",
                    &redis_port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start {} (install redis-server, or `make setup`)",
                        redis_bin.display()
                    )
                })?,
        );
        wait_port(redis_port, "redis-server")?;
        let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
        let port = free_port()?;
        let store = dir.path().join("store");
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--redis-url",
                &redis_url,
            ])
            .arg("--store")
            .arg(&store)
            .env("HLSFARM_COORDINATOR__OPERATOR_TOKEN", OPERATOR)
            .env("HLSFARM_COORDINATOR__WORKER_TOKEN", WORKER)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("HLSFARM_BENCH_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for (k, v) in extra_env {
            command.env(k, v);
        }
        let coordinator = Proc(command.spawn()?);
        wait_port(port, "the coordinator")?;
        Ok(Rig {
            _dir: dir,
            _redis: redis,
            coordinator,
            redis_url,
            url: format!("http://127.0.0.1:{port}"),
            store,
        })
    }

    pub(crate) fn operator(
        &self,
    ) -> anyhow::Result<OperatorClient<InterceptedService<Channel, Bearer>>> {
        let (c, b) = channel(&self.url, OPERATOR).map_err(anyhow::Error::msg)?;
        Ok(OperatorClient::with_interceptor(c, b))
    }

    pub(crate) async fn worker(
        &self,
        id: &str,
    ) -> anyhow::Result<WorkerClient<InterceptedService<Channel, Bearer>>> {
        let (c, b) = channel(&self.url, WORKER).map_err(anyhow::Error::msg)?;
        let mut w = WorkerClient::with_interceptor(c, b);
        w.register(v1::RegisterRequest {
            worker_id: id.into(),
            hostname: "bench".into(),
            capabilities: Some(v1::Capabilities {
                backends: vec![v1::Backend::Vitis as i32],
                tools: [("vitis_hls".to_owned(), "2023.2".to_owned())]
                    .into_iter()
                    .collect(),
                hls4ml_version: "1.3.0".into(),
                slots: 64,
                memory_mib: 1 << 30,
                cores: 1 << 16,
                formats: vec!["keras_h5".into()],
                ..Default::default()
            }),
            version: "bench".into(),
        })
        .await?;
        Ok(w)
    }

    fn coordinator_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.coordinator.0.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// Uploads one small model (distinct per `tag`) and returns it.
pub(crate) async fn model(
    op: &mut OperatorClient<InterceptedService<Channel, Bearer>>,
    tag: &str,
) -> anyhow::Result<v1::ModelInput> {
    let bytes: Vec<u8> = format!("bench model {tag}")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(20_000)
        .collect();
    let sha = sha256_hex(&bytes);
    let name = format!("bench_{tag}.h5");
    op.upload_model(tokio_stream::iter(vec![v1::UploadChunk {
        name: name.clone(),
        sha256: sha.clone(),
        data: bytes.clone(),
    }]))
    .await?;
    Ok(v1::ModelInput {
        name,
        sha256: sha,
        size_bytes: bytes.len() as u64,
        companions: Default::default(),
    })
}

/// A convert-only sweep of `trials` points (reuse factors × clock periods) of one model.
pub(crate) fn sweep(model: v1::ModelInput, trials: u32) -> v1::SweepSpec {
    let clocks = trials.div_ceil(1000).max(1);
    let per_clock = trials / clocks;
    v1::SweepSpec {
        name: "bench".into(),
        models: vec![model],
        grid: Some(v1::SettingsGrid {
            reuse_factor: (1..=per_clock).collect(),
            clock_period_ns: (0..clocks).map(|c| 2.0 + f64::from(c) / 100.0).collect(),
            ..Default::default()
        }),
        stages: vec![v1::Stage::Convert as i32],
        priority: 1,
        toolchain: Some(v1::ToolchainSpec {
            hls4ml_version: "1.3.0".into(),
            tool: String::new(),
            tool_version: String::new(),
        }),
        ..Default::default()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn redis_info(url: &str, section: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("INFO").arg(section).query_async(&mut c).await?)
}

async fn redis_cmd(url: &str, args: &[&str]) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut c).await?;
    Ok(())
}

/// `cmdstat_<name>:calls=N,...` lines → (name, calls).
fn command_calls(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

fn info_field(info: &str, field: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}

/// Runs one benchmark.
pub async fn run(bench: Bench) -> anyhow::Result<i32> {
    match bench {
        Bench::Submit { trials, runs } => {
            let rig = Rig::start(&[])?;
            let mut op = rig.operator()?;
            let mut times = Vec::new();
            for run in 0..runs.max(1) {
                let m = model(&mut op, &format!("submit-{run}")).await?;
                let started = Instant::now();
                let r = op
                    .submit_sweep(v1::SubmitSweepRequest {
                        spec: Some(sweep(m, trials)),
                    })
                    .await?
                    .into_inner();
                let s = started.elapsed().as_secs_f64();
                println!(
                    "submit run {}: {} trials queued in {s:.3} s ({:.0} trials/s); coordinator RSS now {:.1} MiB",
                    run + 1,
                    r.queued,
                    f64::from(trials) / s,
                    rig.coordinator_rss_mib()
                );
                times.push(s);
            }
            println!(
                "submit: {trials} trials, median {:.3} s over {} runs (target ≤ 2 s for 100k)",
                median(times),
                runs.max(1)
            );
            let stats = redis_info(&rig.redis_url, "commandstats").await?;
            let usec: f64 = stats
                .lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:"))
                .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec=")))
                .filter_map(|v| v.parse::<f64>().ok())
                .sum();
            println!(
                "submit: Redis spent {:.3} s per run inside the scripts",
                usec / 1e6 / runs.max(1) as f64
            );
            let info = redis_info(&rig.redis_url, "memory").await?;
            println!(
                "memory with {} trials queued: coordinator RSS {:.1} MiB (target ≤ 200), redis used_memory {:.1} MiB",
                u64::from(trials) * runs.max(1) as u64,
                rig.coordinator_rss_mib(),
                info_field(&info, "used_memory").unwrap_or(0.0) / 1048576.0
            );
        }
        Bench::RedisCost { trials } => {
            let rig = Rig::start(&[])?;
            let mut op = rig.operator()?;
            let mut w = rig.worker("cost").await?;
            let m = model(&mut op, "cost").await?;
            // Warm-up (scripts loaded, connections open), then count a clean run.
            let warm = model(&mut op, "cost-warm").await?;
            op.submit_sweep(v1::SubmitSweepRequest {
                spec: Some(sweep(warm, 100)),
            })
            .await?;
            lifecycle(&mut w, 100).await?;
            redis_cmd(&rig.redis_url, &["CONFIG", "RESETSTAT"]).await?;
            let monitor = Monitor::start(&rig.redis_url)?;
            op.submit_sweep(v1::SubmitSweepRequest {
                spec: Some(sweep(m, trials)),
            })
            .await?;
            let done = lifecycle(&mut w, trials).await?;
            // The background loops (reaper, committer, aggregator) ran over the same stretch
            // of time, and are counted too.
            let (sent, in_scripts) = monitor.stop();
            let top_level: u64 = sent.values().sum();
            let per = |n: u64| n as f64 / f64::from(done.max(1));
            println!(
                "redis cost: commands sent per trial by name: {}",
                sent.iter()
                    .map(|(k, v)| format!("{k} {:.3}", per(*v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let info = redis_info(&rig.redis_url, "commandstats").await?;
            let calls = command_calls(&info);
            let scripts: u64 = calls
                .iter()
                .filter(|(n, _)| n == "evalsha" || n == "eval")
                .map(|(_, c)| c)
                .sum();
            let plain: u64 = calls
                .iter()
                .filter(|(n, _)| {
                    !matches!(n.as_str(), "evalsha" | "eval" | "config|resetstat" | "info")
                })
                .map(|(_, c)| c)
                .sum();
            println!(
                "redis cost: {done} trials (submit, lease 1 at a time, 1 heartbeat, complete, and the coordinator's background loops): {:.2} commands sent to Redis per trial (target ≤ 4; Celery 11, RQ 66), {:.2} more run inside the Lua scripts",
                top_level as f64 / f64::from(done.max(1)),
                in_scripts as f64 / f64::from(done.max(1))
            );
            println!(
                "redis cost: {:.2} script calls + {:.2} commands per trial counted by commandstats, which also counts the commands inside scripts",
                scripts as f64 / f64::from(done.max(1)),
                plain as f64 / f64::from(done.max(1))
            );
            let mut top: Vec<&(String, u64)> = calls.iter().collect();
            top.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
            println!(
                "redis cost: busiest commands per trial: {}",
                top.iter()
                    .take(10)
                    .map(|(n, c)| format!("{n} {:.2}", *c as f64 / f64::from(done.max(1))))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Bench::Cache { trials } => {
            let rig = Rig::start(&[])?;
            let mut op = rig.operator()?;
            let mut w = rig.worker("cache").await?;
            let m = model(&mut op, "cache").await?;
            op.submit_sweep(v1::SubmitSweepRequest {
                spec: Some(sweep(m.clone(), trials)),
            })
            .await?;
            let ran = complete_all(&mut w, &rig.store).await?;
            let started = Instant::now();
            let r = op
                .submit_sweep(v1::SubmitSweepRequest {
                    spec: Some(sweep(m, trials)),
                })
                .await?
                .into_inner();
            let s = started.elapsed().as_secs_f64();
            let rerun = complete_all(&mut w, &rig.store).await?;
            println!(
                "cache: first run ran {ran} trials; identical resubmit: {} reused, {} queued, {rerun} reruns, in {s:.3} s (target 0 reruns, ≤ 1 s for 1,000)",
                r.reused, r.queued
            );
        }
    }
    Ok(0)
}

/// Counts the commands Redis runs, from `MONITOR`: those clients send, and those scripts run
/// (`[0 lua]`).
struct Monitor {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(std::collections::BTreeMap<String, u64>, u64)>,
}

impl Monitor {
    fn start(url: &str) -> anyhow::Result<Monitor> {
        use std::io::{BufRead, Write};
        let addr = url
            .trim_start_matches("redis://")
            .split('/')
            .next()
            .unwrap_or("127.0.0.1:6379")
            .to_owned();
        let mut stream = std::net::TcpStream::connect(&addr)?;
        stream.write_all(b"MONITOR\r\n")?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut reader = std::io::BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut top, mut lua) = (std::collections::BTreeMap::<String, u64>::new(), 0u64);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        if line.contains(" lua] ") {
                            lua += 1;
                        } else if line.starts_with('+') {
                            let name = line
                                .split("] \"")
                                .nth(1)
                                .and_then(|r| r.split('"').next())
                                .unwrap_or("?")
                                .to_ascii_lowercase();
                            *top.entry(name).or_default() += 1;
                        }
                    }
                    Err(_) if flag.load(std::sync::atomic::Ordering::SeqCst) => break,
                    Err(_) => {}
                }
            }
            (top, lua)
        });
        Ok(Monitor { stop, thread })
    }

    fn stop(self) -> (std::collections::BTreeMap<String, u64>, u64) {
        std::thread::sleep(Duration::from_millis(300));
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// Leases one trial at a time, heartbeats it once, completes it (a failure: no files), until
/// none is left. Returns how many.
async fn lifecycle(
    w: &mut WorkerClient<InterceptedService<Channel, Bearer>>,
    max: u32,
) -> anyhow::Result<u32> {
    let mut n = 0;
    while n < max {
        let got = w
            .lease(v1::LeaseRequest {
                worker_id: "cost".into(),
                max_trials: 1,
                free_memory_mib: 1 << 30,
                free_cores: 1 << 16,
                wait_ms: 200,
                ..Default::default()
            })
            .await?
            .into_inner()
            .trials;
        let Some(t) = got.into_iter().next() else {
            break;
        };
        w.heartbeat(v1::HeartbeatRequest {
            worker_id: "cost".into(),
            trials: vec![v1::TrialProgress {
                token: t.token.clone(),
                stage: v1::Stage::Convert as i32,
                phase: String::new(),
            }],
            ..Default::default()
        })
        .await?;
        w.complete(v1::CompleteRequest {
            worker_id: "cost".into(),
            token: t.token,
            failure: Some(v1::Failure {
                class: v1::FailureClass::BadInput as i32,
                reason: "bench".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
        n += 1;
    }
    Ok(n)
}

/// Leases everything queued and completes it successfully with a staged result.json.
async fn complete_all(
    w: &mut WorkerClient<InterceptedService<Channel, Bearer>>,
    store: &Path,
) -> anyhow::Result<u32> {
    let mut n = 0;
    loop {
        let got = w
            .lease(v1::LeaseRequest {
                worker_id: "cache".into(),
                max_trials: 64,
                free_memory_mib: 1 << 30,
                free_cores: 1 << 16,
                wait_ms: 300,
                ..Default::default()
            })
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
    use hlsfarm_common::results::{ModelRef, RESULT_SCHEMA, TrialResult, TrialStatus};
    let r = TrialResult {
        schema: RESULT_SCHEMA.into(),
        trial_key: key.into(),
        model: ModelRef {
            name: model.into(),
            sha256: String::new(),
        },
        settings: Default::default(),
        stages: vec![hlsfarm_common::Stage::Convert],
        status: TrialStatus::Success,
        start_time: String::new(),
        end_time: String::new(),
        timings: Vec::new(),
        toolchain: hlsfarm_common::trial_key::Toolchain {
            hls4ml_version: "1.3.0".into(),
            tool: None,
        },
        fidelity: None,
        warnings: Vec::new(),
        effective_reuse_factor: Default::default(),
        reports: Default::default(),
        failure: None,
        kept_files: Vec::new(),
        tarball: None,
        kept_bytes: 0,
    };
    serde_json::to_string(&r).unwrap_or_default()
}
