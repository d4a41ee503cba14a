//! `hlsfarm bench NAME`: figures users care about, printed one per line. Each run starts
//! its own `redis-server` (from `$REDIS_SERVER` or `PATH`) on a free port and its own
//! coordinator (this binary's `serve`) in a temporary folder, and removes them at the end.
//! Benchmarks print; they never fail on a slow machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hlsfarm_proto::v1;

mod dispatch;
mod learn;
mod lifecycle;
mod makespan;
mod pool;
mod recovery;
mod rig;
mod scale;
mod store;
mod trial;

use dispatch::dispatch;
use lifecycle::{beat, complete_all, failed, hold, lease_one, lease_request, lifecycle};
use makespan::makespan;
use recovery::recovery;
use rig::{Proc, Rig, command_calls, info_field, median, model, redis_cmd, redis_info, sweep};
use trial::trial;

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
    /// Makespan with estimates learned online: a generated sweep (MODELS models × 24 grid
    /// points: reuse factor, io type, precision, strategy) whose true durations and peaks
    /// follow its features with noise, through a coordinator whose estimator starts empty;
    /// lessees sleep each trial's true duration and report what it cost. Prints the
    /// estimator's error on generated histories, the makespan over its lower bound (target
    /// ≤ 1.05) with static-formula and FIFO order beside it (simulated on the same
    /// durations), and the ETA's error from 20 % finished (median, p90).
    Learn {
        /// Models (each runs the 24 grid points; 21 give 504 trials).
        #[arg(long, default_value_t = 21)]
        models: usize,
        /// Slots (concurrent lessees).
        #[arg(long, default_value_t = 8)]
        slots: u32,
        /// Median trial duration, ms.
        #[arg(long, default_value_t = 60)]
        median_ms: u64,
        /// Log-sd of the noise on each stage's true duration.
        #[arg(long, default_value_t = 0.25)]
        noise: f64,
        /// Seed.
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
    /// `hlsfarm run` beside what a user runs instead: a Python process pool doing the same
    /// work with the same venv (`tests/bench/seed_pool.py`, the one-host script rebuilt from
    /// its README: one import, a forked pool, one hls4ml `build()` per model), on N generated
    /// QKeras trials (`examples/make_trials.py`) with the Xilinx stand-in, one after the
    /// other in one run: prints each time, whether the results agree, and the speed ratio
    /// (targets: 1.2x without emulation, 1.5x with it). Needs the hls4ml venv (`make setup`).
    Pool {
        /// Trials.
        #[arg(long, default_value_t = 12)]
        trials: u32,
        /// Workers of both (the pool's processes, run's --num-workers).
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Compile and run the emulation too (the pool's --emulate, run's emulate stage).
        #[arg(long)]
        emulate: bool,
        /// The hls4ml venv's python [default: as `run` finds it].
        #[arg(long)]
        python: Option<PathBuf>,
        /// Run the tools found on PATH instead of the stand-in.
        #[arg(long)]
        path_tools: bool,
    },
    /// The cluster at scale, by simulation: N simulated workers in this process (each its own
    /// gRPC connection, registering, heartbeating and leasing as `hlsfarm worker` does)
    /// against one and two coordinators on one Redis, with trials that sleep log-normal
    /// durations. Prints, per run: idle Redis commands/s per worker (target ≤ 1.5), the
    /// first lease after a submit (p50, p99; target p50 ≤ 100 ms), trials/s sustained
    /// against the offered load, and coordinator and Redis CPU per trial.
    Scale {
        /// Simulated workers; a comma-separated list (`100,1000`) runs each count in turn.
        #[arg(long, value_delimiter = ',', default_values_t = [100, 1000])]
        workers: Vec<u32>,
        /// Slots per worker.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// Coordinators sharing the Redis; a comma-separated list (`1,2`) runs each in turn.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
        coordinators: Vec<u32>,
        /// Trials per run [default: 3 per slot].
        #[arg(long)]
        trials: Option<u32>,
        /// Median trial duration, ms (log-normal).
        #[arg(long, default_value_t = 1000)]
        trial_ms: u64,
        /// Log-normal sigma of the durations.
        #[arg(long, default_value_t = 0.5)]
        sigma: f64,
        /// Seconds over which the idle fleet's cost is measured.
        #[arg(long, default_value_t = 10)]
        idle_s: u64,
    },
    /// Results committed per second on the S3-compatible servers found (moto; s3s-fs, a Rust
    /// server `make bench-deps` builds) and the local folder: the commit into attempt folders
    /// (a HEAD per file, then one copy) beside the one before it (HEAD, list, copy and delete every
    /// file), interleaved in one run; each trial also does the worker's checked uploads.
    Store {
        /// Trials per run.
        #[arg(long, default_value_t = 300)]
        trials: u32,
        /// Trials at once (a fleet's completions arriving together).
        #[arg(long, default_value_t = 16)]
        concurrency: u32,
    },
    /// Resubmitting an identical sweep of N trials whose results are stored: reruns (target
    /// 0) and time (target ≤ 1 s for 1,000).
    Cache {
        /// Trials.
        #[arg(long, default_value_t = 1000)]
        trials: u32,
    },
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
        Bench::Scale {
            workers,
            slots,
            coordinators,
            trials,
            trial_ms,
            sigma,
            idle_s,
        } => {
            for &n in &workers {
                for &c in &coordinators {
                    scale::scale(scale::ScaleRun {
                        workers: n,
                        slots: slots.max(1),
                        coordinators: c,
                        trials: trials.unwrap_or(n * slots.max(1) * 3),
                        trial_ms,
                        sigma,
                        idle_s,
                    })
                    .await?;
                }
            }
        }
        Bench::Makespan {
            trials,
            slots,
            median_ms,
            sigma,
            seed,
        } => makespan(trials, slots, median_ms, sigma, seed).await?,
        Bench::Learn {
            models,
            slots,
            median_ms,
            noise,
            seed,
        } => learn::learn(models, slots, median_ms, noise, seed).await?,
        Bench::Recovery { lease_ms } => recovery(lease_ms).await?,
        Bench::Store {
            trials,
            concurrency,
        } => store::store(trials, concurrency).await?,
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
        Bench::Pool {
            trials,
            workers,
            emulate,
            python,
            path_tools,
        } => pool::pool(trials, workers, emulate, python, path_tools).await?,
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
