//! `hlsfarm bench NAME`: figures users care about, printed one per line. Each run starts
//! its own `redis-server` (from `$REDIS_SERVER` or `PATH`) on a free port and its own
//! coordinator (this binary's `serve`) in a temporary folder, and removes them at the end.
//! Benchmarks print; they never fail on a slow machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_common::trial_key::sha256_hex;
use hlsfarm_proto::client::{Bearer, channel};
use hlsfarm_proto::v1::{self, operator_client::OperatorClient, worker_client::WorkerClient};
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
    /// Makespan of N trials with heavy-tailed (log-normal) durations on S slots through the
    /// coordinator: lessees sleep each trial's duration; bigger models run longer, as the cost
    /// estimate assumes. Prints makespan / lower bound (max(total / slots, longest)), target
    /// ≤ 1.05, and FIFO order's ratio for the same durations (simulated) beside it.
    Makespan {
        /// Trials.
        #[arg(long, default_value_t = 200)]
        trials: u32,
        /// Slots (concurrent lessees).
        #[arg(long, default_value_t = 8)]
        slots: u32,
        /// Median trial duration, ms.
        #[arg(long, default_value_t = 100)]
        median_ms: u64,
        /// Log-normal sigma (spread of the tail).
        #[arg(long, default_value_t = 1.0)]
        sigma: f64,
        /// Seed of the durations.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Recovery: a lessee holding a trial is killed with SIGKILL; prints the time until the
    /// trial is leased again (target ≤ 5 s with the default 5 s lease). Then a live trial
    /// lasting 20 leases is watched for duplicate leases (target 0).
    Recovery {
        /// Lease length, ms (the default is the coordinator's default).
        #[arg(long, default_value_t = 5000)]
        lease_ms: u64,
    },
    /// (Used by `recovery`: a lessee process that holds one trial and heartbeats until killed.)
    #[command(hide = true)]
    Hold {
        /// Coordinator URL.
        url: String,
    },
    /// No-op trials end to end per second through the coordinator and Redis, with W real
    /// `hlsfarm worker` processes in their no-op mode (each trial: an empty marker and an
    /// empty `result.json` uploaded, the usual completion; completions counted from the
    /// sweep's counter in Redis, executions from the markers), in the three phases of the peer
    /// benchmark (`shared/bench/peers`): enqueue with no workers, drain, and end to end with
    /// warm workers. Prints CPU per trial for the coordinator, the workers and Redis.
    /// `tests/bench/dispatch-vs-celery.sh` runs Celery beside it and prints the ratio.
    Dispatch {
        /// Trials per phase.
        #[arg(long, default_value_t = 20_000)]
        trials: u32,
        /// Worker processes.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Slots per worker.
        #[arg(long, default_value_t = 8)]
        slots: u32,
    },
    /// Real trials through a real worker: a model converted and emulated by hls4ml, then
    /// synthesized (every stage) by the Xilinx stand-in (`tests/standin`, or the real tools
    /// with `--path-tools`). Prints, per trial, the bytes kept in the store (result.json and
    /// tarball; target ≤ 2 MB for the jet tagger) and the overhead outside the tools and
    /// hls4ml: lease to completion minus the stages' own time (target ≤ 0.3 s). Needs the
    /// hls4ml venv (`make setup`).
    Trial {
        /// A model file (a Keras JSON takes its `<stem>_weights.h5` along); default the
        /// 3-layer jet tagger from `shared/models`.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Trials (reuse factors 1, 2, 4, ...).
        #[arg(long, default_value_t = 4)]
        trials: u32,
        /// Run the tools found on PATH instead of the stand-in.
        #[arg(long)]
        path_tools: bool,
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

/// Where a child's log goes: the terminal with `HLSFARM_BENCH_LOG` set, else nowhere.
fn child_log() -> Stdio {
    if std::env::var_os("HLSFARM_BENCH_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

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
            .stderr(child_log());
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
        let (c, b) = channel(&self.url, OPERATOR, None).map_err(anyhow::Error::msg)?;
        Ok(OperatorClient::with_interceptor(c, b))
    }

    pub(crate) async fn worker(
        &self,
        id: &str,
    ) -> anyhow::Result<WorkerClient<InterceptedService<Channel, Bearer>>> {
        let (c, b) = channel(&self.url, WORKER, None).map_err(anyhow::Error::msg)?;
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

    /// `hlsfarm worker` against this rig: id, slots, scratch beside the store, no disk floor,
    /// the worker token, log level warn.
    fn worker_command(&self, id: &str, slots: u32) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([
                "worker",
                "--coordinator",
                &self.url,
                "--slots",
                &slots.to_string(),
                "--worker-id",
                id,
                "--min-free-disk-gib",
                "0",
            ])
            .arg("--store")
            .arg(&self.store)
            .arg("--scratch")
            .arg(self.store.with_file_name(format!("scratch-{id}")))
            .env("HLSFARM_WORKER__TOKEN", WORKER)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(child_log());
        Ok(command)
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
        Bench::Makespan {
            trials,
            slots,
            median_ms,
            sigma,
            seed,
        } => makespan(trials, slots, median_ms, sigma, seed).await?,
        Bench::Recovery { lease_ms } => recovery(lease_ms).await?,
        Bench::Hold { url } => hold(&url).await?,
        Bench::Dispatch {
            trials,
            workers,
            slots,
        } => dispatch(trials, workers, slots).await?,
        Bench::Trial {
            model,
            trials,
            path_tools,
        } => trial(model, trials, path_tools).await?,
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
async fn complete_all(
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
fn lease_request(id: &str, max: u32, wait_ms: u64) -> v1::LeaseRequest {
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
fn beat(id: &str, token: &Option<v1::LeaseToken>) -> v1::HeartbeatRequest {
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
fn failed(id: &str, token: Option<v1::LeaseToken>) -> v1::CompleteRequest {
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

/// Log-normal durations from a seeded generator (splitmix64 + Box-Muller), in ms.
fn lognormal_ms(n: u32, median_ms: u64, sigma: f64, seed: u64) -> Vec<f64> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u1, u2) = (next().max(1e-12), next());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            median_ms as f64 * (sigma * z).exp()
        })
        .collect()
}

/// List scheduling of `durations`, in the order given, on `slots`: the makespan.
fn list_schedule(durations: &[f64], slots: u32) -> f64 {
    let mut free = vec![0.0f64; slots.max(1) as usize];
    for d in durations {
        if let Some(earliest) = free.iter_mut().min_by(|a, b| a.total_cmp(b)) {
            *earliest += d;
        }
    }
    free.into_iter().fold(0.0, f64::max)
}

async fn makespan(
    trials: u32,
    slots: u32,
    median_ms: u64,
    sigma: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let rig = Rig::start(&[])?;
    let mut op = rig.operator()?;
    let durations = lognormal_ms(trials, median_ms, sigma, seed);
    let mut by_name = std::collections::HashMap::new();
    let mut models = Vec::new();
    for (i, d) in durations.iter().enumerate() {
        // The model's size tracks its duration: the coordinator's cost estimate sees it.
        let size = 1024 + (*d * 100.0) as usize;
        let bytes: Vec<u8> = format!("makespan {seed} {i} ")
            .into_bytes()
            .into_iter()
            .cycle()
            .take(size)
            .collect();
        let sha = sha256_hex(&bytes);
        let name = format!("m{i:04}.h5");
        op.upload_model(tokio_stream::iter(vec![v1::UploadChunk {
            name: name.clone(),
            sha256: sha.clone(),
            data: bytes.clone(),
        }]))
        .await?;
        by_name.insert(name.clone(), *d);
        models.push(v1::ModelInput {
            name,
            sha256: sha,
            size_bytes: bytes.len() as u64,
            companions: Default::default(),
        });
    }
    let mut spec = sweep(models.remove(0), 1);
    spec.models.extend(models);
    spec.grid = Some(v1::SettingsGrid::default());
    let by_name = std::sync::Arc::new(by_name);
    let mut lessees = Vec::new();
    for slot in 0..slots {
        lessees.push(rig.worker(&format!("slot-{slot}")).await?);
    }
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(slots as usize + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (slot, mut w) in lessees.into_iter().enumerate() {
        let by_name = by_name.clone();
        let go = go.clone();
        tasks.spawn(async move {
            let id = format!("slot-{slot}");
            go.wait().await;
            loop {
                let got = w
                    .lease(lease_request(&id, 1, 300))
                    .await?
                    .into_inner()
                    .trials;
                let Some(t) = got.into_iter().next() else {
                    return Ok::<(), anyhow::Error>(());
                };
                let d = t
                    .model
                    .as_ref()
                    .and_then(|m| by_name.get(&m.name))
                    .copied()
                    .unwrap_or(0.0);
                tokio::time::sleep(Duration::from_secs_f64(d / 1000.0)).await;
                w.complete(failed(&id, t.token)).await?;
            }
        });
    }
    // The clock starts when the sweep is accepted and the lessees are polling.
    op.submit_sweep(v1::SubmitSweepRequest { spec: Some(spec) })
        .await?;
    let started = Instant::now();
    go.wait().await;
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    // The last lease call of each lessee waits out its 300 ms poll for nothing: not work.
    let measured = started.elapsed().as_secs_f64() * 1000.0 - 300.0;
    let total: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    let bound = (total / f64::from(slots)).max(longest);
    let fifo = list_schedule(&durations, slots);
    let mut sorted = durations.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let lpt = list_schedule(&sorted, slots);
    println!(
        "makespan: {trials} trials (log-normal, median {median_ms} ms, sigma {sigma}, total {:.1} s, longest {:.2} s) on {slots} slots: {:.2} s measured, lower bound {:.2} s, ratio {:.3} (target ≤ 1.05)",
        total / 1000.0,
        longest / 1000.0,
        measured / 1000.0,
        bound / 1000.0,
        measured / bound
    );
    println!(
        "makespan: same durations simulated: FIFO order ratio {:.3}, longest-first ratio {:.3}",
        fifo / bound,
        lpt / bound
    );
    Ok(())
}

async fn recovery(lease_ms: u64) -> anyhow::Result<()> {
    let lease = lease_ms.to_string();
    let heartbeat = (lease_ms / 5).max(20).to_string();
    let rig = Rig::start(&[
        ("HLSFARM_COORDINATOR__LEASE_MS", lease.as_str()),
        ("HLSFARM_COORDINATOR__HEARTBEAT_MS", heartbeat.as_str()),
    ])?;
    let mut op = rig.operator()?;
    let m = model(&mut op, "recovery").await?;
    op.submit_sweep(v1::SubmitSweepRequest {
        spec: Some(sweep(m, 2)),
    })
    .await?;
    // A lessee process takes one trial and heartbeats; SIGKILL it.
    let mut holder = Proc(
        Command::new(std::env::current_exe()?)
            .args(["bench", "hold", &rig.url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let mut line = String::new();
    if let Some(out) = holder.0.stdout.take() {
        use std::io::BufRead;
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let held = line.trim().to_owned();
    if held.is_empty() {
        bail!("the lessee process leased nothing");
    }
    tokio::time::sleep(Duration::from_millis(lease_ms)).await;
    let _ = holder.0.kill();
    let killed = Instant::now();
    let mut w = rig.worker("rescuer").await?;
    let mut other = None;
    let (recovered, rescued) = loop {
        let got = w
            .lease(lease_request("rescuer", 1, 1000))
            .await?
            .into_inner()
            .trials;
        match got.into_iter().next() {
            Some(t) if t.token.as_ref().is_some_and(|k| k.trial_key == held) => {
                break (killed.elapsed(), t);
            }
            Some(t) => other = Some(t),
            None => {}
        }
        if killed.elapsed() > Duration::from_millis(lease_ms * 4 + 5000) {
            bail!("the killed lessee's trial was not leased again");
        }
    };
    println!(
        "recovery: SIGKILL of a lessee -> its trial leased again after {:.2} s (lease {:.1} s; target ≤ 5 s with the default)",
        recovered.as_secs_f64(),
        lease_ms as f64 / 1000.0
    );
    w.complete(failed("rescuer", rescued.token)).await?;
    // The other trial, held live for 20 leases with heartbeats: leased exactly once.
    let t = match other {
        Some(t) => t,
        None => lease_one(&mut w, "rescuer").await?,
    };
    let until = Instant::now() + Duration::from_millis(lease_ms * 20);
    let mut second = rig.worker("second").await?;
    let mut duplicates = 0;
    while Instant::now() < until {
        w.heartbeat(beat("rescuer", &t.token)).await?;
        let got = second
            .lease(lease_request("second", 1, lease_ms / 5))
            .await?
            .into_inner()
            .trials;
        duplicates += got.len();
    }
    println!(
        "recovery: a live trial heartbeating for 20 leases ({:.0} s) was leased again {duplicates} times (target 0)",
        (lease_ms * 20) as f64 / 1000.0
    );
    Ok(())
}

async fn lease_one(
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
async fn hold(url: &str) -> anyhow::Result<()> {
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

/// CPU seconds (user + system, with reaped children) of a process.
fn process_cpu_s(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    // After the command: field 3 (state) is index 0; utime..cstime are fields 14..17.
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    ticks as f64 / 100.0
}

/// CPU seconds of the coordinator, the workers, Redis and this process, for one phase.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    coordinator: f64,
    workers: f64,
    redis: f64,
    driver: f64,
}

impl Cpu {
    async fn sample(rig: &Rig, workers: &[Proc]) -> Cpu {
        let redis = redis_info(&rig.redis_url, "cpu").await.unwrap_or_default();
        Cpu {
            coordinator: process_cpu_s(rig.coordinator.0.id()),
            workers: workers.iter().map(|w| process_cpu_s(w.0.id())).sum(),
            redis: info_field(&redis, "used_cpu_user").unwrap_or(0.0)
                + info_field(&redis, "used_cpu_sys").unwrap_or(0.0),
            driver: process_cpu_s(std::process::id()),
        }
    }

    /// µs per trial between two samples, as a printable phrase.
    fn per_trial(&self, later: &Cpu, trials: u32) -> String {
        let us = |a: f64, b: f64| (b - a) * 1e6 / f64::from(trials.max(1));
        let total = (later.coordinator - self.coordinator)
            + (later.workers - self.workers)
            + (later.redis - self.redis)
            + (later.driver - self.driver);
        format!(
            "CPU µs per trial: coordinator {:.0}, workers {:.0}, redis {:.0}, driver {:.0}; {:.0} trials per CPU-second",
            us(self.coordinator, later.coordinator),
            us(self.workers, later.workers),
            us(self.redis, later.redis),
            us(self.driver, later.driver),
            f64::from(trials) / total.max(1e-9)
        )
    }
}

/// Polls a sweep's count of succeeded trials (one `HGET` on Redis) every 2 ms until it
/// reaches `n` (or nothing moves for 60 s); returns the time of the first and of the last
/// change seen and the count then.
async fn watch_succeeded(
    redis: &mut redis::aio::MultiplexedConnection,
    sweep: &str,
    n: u64,
) -> anyhow::Result<(Option<Instant>, Instant, u64)> {
    let key = hlsfarm_common::store::keys::Keys::new("hlsfarm").counts(sweep);
    let mut first = None;
    let mut last = Instant::now();
    let mut seen = 0u64;
    loop {
        let now: Option<u64> = redis::cmd("HGET")
            .arg(&key)
            .arg("succeeded")
            .query_async(redis)
            .await?;
        let now = now.unwrap_or(0);
        if now != seen {
            if first.is_none() {
                first = Some(Instant::now());
            }
            last = Instant::now();
            seen = now;
        }
        if seen >= n {
            return Ok((first, last, seen));
        }
        if last.elapsed() > Duration::from_secs(60) {
            bail!("no-op trials stopped at {seen} of {n} (nothing moved for 60 s)");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// No-op executions so far: each leaves one marker file in the store.
fn executions(store: &Path) -> u64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() { walk(&path) } else { 1 }
            })
            .sum()
    }
    walk(&store.join(hlsfarm_worker::daemon::NOOP_EXECUTIONS))
}

async fn dispatch(trials: u32, workers: u32, slots: u32) -> anyhow::Result<()> {
    let rig = Rig::start(&[])?;
    let mut op = rig.operator()?;
    let mut redis = redis::Client::open(rig.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let n = u64::from(trials);

    // 1. enqueue: one sweep of N trials, no worker running.
    let m = model(&mut op, "dispatch-1").await?;
    let cpu0 = Cpu::sample(&rig, &[]).await;
    let started = Instant::now();
    let first_sweep = op
        .submit_sweep(v1::SubmitSweepRequest {
            spec: Some(sweep(m, trials)),
        })
        .await?
        .into_inner()
        .sweep_id;
    let s = started.elapsed().as_secs_f64();
    let cpu1 = Cpu::sample(&rig, &[]).await;
    println!(
        "dispatch enqueue trials/s: {:.0}  [{trials} trials in one sweep in {s:.3} s; {}]",
        f64::from(trials) / s,
        cpu0.per_trial(&cpu1, trials)
    );

    // 2. drain: start the workers on the queued sweep; the clock starts at the first
    // completion, so start-up (the venv probe) is left out.
    let mut procs = Vec::new();
    for i in 0..workers {
        procs.push(Proc(
            rig.worker_command(&format!("bench-{i}"), slots)?
                .arg("--bench-noop")
                // Every trial asks for a core: offer one per slot.
                .env("HLSFARM_WORKER__CORES", slots.to_string())
                .spawn()?,
        ));
    }
    let (first, last, at_start) = watch_succeeded(&mut redis, &first_sweep, 1).await?;
    let cpu2 = Cpu::sample(&rig, &procs).await;
    let (_, end, _) = watch_succeeded(&mut redis, &first_sweep, n).await?;
    let cpu3 = Cpu::sample(&rig, &procs).await;
    let from = first.unwrap_or(last);
    let drained = n - at_start.min(n);
    println!(
        "dispatch drain trials/s: {:.0}  [{workers} workers × {slots} slots; {drained} trials after the first in {:.3} s; {}]",
        drained as f64 / (end - from).as_secs_f64().max(1e-9),
        (end - from).as_secs_f64(),
        cpu2.per_trial(&cpu3, u32::try_from(drained).unwrap_or(trials))
    );
    // Let the coordinator commit and aggregate the first sweep before the timed phase.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = executions(&rig.store);

    // 3. e2e: warm, idle workers; the clock runs from the submit to the last completion.
    let m = model(&mut op, "dispatch-3").await?;
    let cpu4 = Cpu::sample(&rig, &procs).await;
    let started = Instant::now();
    let response = op
        .submit_sweep(v1::SubmitSweepRequest {
            spec: Some(sweep(m, trials)),
        })
        .await?
        .into_inner();
    let (_, end, succeeded) = watch_succeeded(&mut redis, &response.sweep_id, n).await?;
    let cpu5 = Cpu::sample(&rig, &procs).await;
    let e2e = (end - started).as_secs_f64();
    println!(
        "dispatch noop trials/s: {:.0}  [e2e {trials} trials in {e2e:.3} s, submit included; {workers} workers × {slots} slots; {}]",
        f64::from(trials) / e2e,
        cpu4.per_trial(&cpu5, trials)
    );
    // Exactly once: the executions a second later (each leaves one marker).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = executions(&rig.store) - after;
    println!(
        "dispatch exactly once: drain phase ran {after} for {trials} trials, e2e phase ran {later} for {trials}; {succeeded} recorded as succeeded",
    );
    Ok(())
}

/// The repository's root (this crate's parent), for the stand-in and the shared models.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Times (ms) of each trial's `leased` and `completed` events, from the Redis event stream.
async fn lease_spans(
    redis_url: &str,
) -> anyhow::Result<std::collections::HashMap<String, (i64, i64)>> {
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("{hlsfarm}:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await?;
    let mut spans = std::collections::HashMap::new();
    for (id, fields) in entries {
        let ms: i64 = id.split('-').next().unwrap_or("0").parse().unwrap_or(0);
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv.get(1))
                .cloned()
                .unwrap_or_default()
        };
        let entry = spans.entry(field("t")).or_insert((0, 0));
        match field("type").as_str() {
            "leased" => entry.0 = ms,
            "completed" => entry.1 = ms,
            _ => {}
        }
    }
    Ok(spans)
}

async fn trial(model: Option<PathBuf>, trials: u32, path_tools: bool) -> anyhow::Result<()> {
    let model =
        model.unwrap_or_else(|| repo_root().join("../shared/models/keras/KERAS_3layer.json"));
    if !model.is_file() {
        bail!("no model at {} (--model)", model.display());
    }
    let rig = Rig::start(&[])?;
    let inputs = rig.store.with_file_name("inputs");
    std::fs::create_dir_all(&inputs)?;
    let name = model
        .file_name()
        .context("the model has no file name")?
        .to_owned();
    std::fs::copy(&model, inputs.join(&name))?;
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let weights = model.with_file_name(format!("{stem}_weights.h5"));
    if weights.is_file() {
        std::fs::copy(&weights, inputs.join(format!("{stem}_weights.h5")))?;
    }
    let mut path = std::ffi::OsString::new();
    if !path_tools {
        path.push(repo_root().join("tests/standin/bin"));
        path.push(":");
    }
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let worker = Proc(
        rig.worker_command("bench-trial", 1)?
            .env("PATH", &path)
            .spawn()?,
    );
    // Wait for the worker (its venv probe imports hls4ml).
    let mut op = rig.operator()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = op
            .get_status(v1::GetStatusRequest::default())
            .await?
            .into_inner();
        if !s.workers.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the worker did not register within 180 s (is the hls4ml venv set up? `make setup`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reuse: Vec<String> = (0..trials).map(|i| (1u32 << i).to_string()).collect();
    let out = Command::new(std::env::current_exe()?)
        .arg("submit")
        .arg("--input-dir")
        .arg(&inputs)
        .args(["--pattern", &name.to_string_lossy()])
        .args(["--reuse-factor", &reuse.join(",")])
        .args([
            "--stages",
            "convert,emulate,csynth,cosim,export,vsynth",
            "--wait",
        ])
        .env("HLSFARM_URL", &rig.url)
        .env("HLSFARM_TOKEN", OPERATOR)
        .stdin(Stdio::null())
        .output()?;
    let sweep = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if sweep.is_empty() {
        bail!(
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    drop(worker);
    let results = op
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.clone(),
        })
        .await?
        .into_inner();
    let spans = lease_spans(&rig.redis_url).await?;
    let mut overheads = Vec::new();
    let mut kept = Vec::new();
    for t in &results.trials {
        let dir = rig.store.join("results").join(&t.trial_key);
        let bytes = |f: &str| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
        let json = std::fs::read(dir.join("result.json"))
            .with_context(|| format!("trial {} has no result.json", t.trial_key))?;
        let result: hlsfarm_common::results::TrialResult = serde_json::from_slice(&json)?;
        let stages: f64 = result.timings.iter().map(|x| x.seconds).sum();
        let (leased, completed) = spans.get(&t.trial_key).copied().unwrap_or((0, 0));
        let wall = (completed - leased) as f64 / 1000.0;
        let overhead = wall - stages;
        let total = bytes("result.json") + bytes("artifacts.tar.gz");
        println!(
            "trial {} ({:?}): {} stages in {stages:.2} s, lease to completion {wall:.2} s, overhead {overhead:.3} s; kept {total} bytes (result.json {}, tarball {})",
            &t.trial_key[..12],
            result.status,
            result.timings.len(),
            bytes("result.json"),
            bytes("artifacts.tar.gz"),
        );
        overheads.push(overhead);
        kept.push(total as f64);
    }
    println!(
        "trial: {} trials of {} with every stage ({}): overhead outside the tools and hls4ml median {:.3} s (target ≤ 0.3 s); bytes kept per trial median {:.0} ({:.2} MB; target ≤ 2 MB)",
        results.trials.len(),
        name.to_string_lossy(),
        if path_tools {
            "tools on PATH"
        } else {
            "the stand-in"
        },
        median(overheads),
        median(kept.clone()),
        median(kept) / 1e6
    );
    Ok(())
}
