//! `hlsfarm worker`: the daemon on a synthesis host (DESIGN §2, §3).
//!
//! It finds the tools and the hls4ml venv, registers them as capabilities, then leases
//! trials that fit its free slots, memory and cores (never below the free-disk threshold),
//! runs each in its own scratch folder and process group, uploads the result and the pruned
//! tarball to the lease's staging prefix, and completes. Heartbeats run on their own task:
//! a stale answer kills and discards the trial, a cancel order kills it and reports it
//! cancelled. SIGTERM (or an operator's drain) stops leasing, lets running trials finish
//! within the drain deadline, and hands the rest back.
//!
//! By concern: `lease` (the lease loop and starting a trial), `run_one` (one trial: inputs,
//! run, upload, report), `heartbeat` (leases kept, stages and phases reported), `report`
//! (completions and hand-backs that outlive a coordinator restart); this file holds the
//! daemon's state and its start-up. Host facts are in [`crate::host`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hlsfarm_common::Stage;
use hlsfarm_common::blob::{Blobs, RetryBudget};
use hlsfarm_common::config::{StoreConfig, WorkerConfig};
use hlsfarm_common::job::Fence;
use hlsfarm_common::plan::WorkerCaps;
use hlsfarm_common::settings::Backend;
use hlsfarm_common::sync::lock;
use hlsfarm_proto::client::{Bearer, channel};
use hlsfarm_proto::v1::worker_client::WorkerClient;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::driver::DriverEnv;
use crate::tools::detect_tools;
use crate::trial::TrialEnv;

mod heartbeat;
mod lease;
mod report;
mod run_one;

use crate::host::{hostname, meminfo_mib};
use heartbeat::heartbeat_loop;
use lease::{lease_loop, register};
use run_one::Noop;

pub use run_one::NOOP_EXECUTIONS;

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something on this host is missing or wrong (venv, scratch folder, store).
    #[error("{0}")]
    Setup(String),
    /// The coordinator refused us for good (bad token, say).
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
}

/// How the daemon runs, beyond its config section.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `[worker]` config.
    pub config: WorkerConfig,
    /// The store (the worker's own credentials).
    pub store: StoreConfig,
    /// Exit when a lease call finds no work and nothing runs (batch schedulers).
    pub exit_when_idle: bool,
    /// This worker's id; default `<host>-<pid>`.
    pub worker_id: Option<String>,
    /// Benchmarks and fault tests only (`hlsfarm bench dispatch`): run every trial as a
    /// no-op that leaves an empty marker under [`NOOP_EXECUTIONS`] in the store (so
    /// executions can be counted), uploads an empty `result.json` and completes as usual.
    pub noop: bool,
    /// With `noop`: how long each no-op trial takes, ms (tests with faults need trials that
    /// are running when a fault lands).
    pub noop_ms: u64,
    /// With `noop`: the share of no-op attempts, in percent, that fail (half as `tool_error`,
    /// half as `oom`), chosen from the trial key and attempt, so a run can be repeated.
    pub noop_fail_percent: u32,
}

type Client = WorkerClient<InterceptedService<Channel, Bearer>>;

/// How a running trial is to end, besides finishing on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Normal,
    /// The lease is gone (another worker may have it): kill, report nothing.
    Discard,
    /// An operator cancelled it: kill, report it cancelled.
    Cancel,
    /// Drain deadline: kill, hand it back unrun.
    HandBack,
}

struct Running {
    fence: Fence,
    stage: Arc<Mutex<Option<Stage>>>,
    log: PathBuf,
    cancel: CancellationToken,
    ending: Ending,
    /// Uploading and reporting: the lease is still extended, but a stale or cancel answer
    /// from a heartbeat sent meanwhile is left to the completion's own answer.
    reporting: bool,
    memory_mib: u64,
    cores: u32,
}

struct Shared {
    id: String,
    /// What this worker registered with (again when the coordinator has forgotten it).
    caps: WorkerCaps,
    client: Client,
    blobs: Blobs,
    env: Arc<TrialEnv>,
    config: WorkerConfig,
    running: Mutex<HashMap<String, Running>>,
    /// A slot was freed.
    freed: Notify,
    /// Stop leasing (SIGTERM or an operator's drain).
    draining: CancellationToken,
    /// The no-op mode ([`Options::noop`]).
    noop: Option<Noop>,
}

impl Shared {
    /// How long one upload retries (worker.upload_retry_s).
    fn upload_budget(&self) -> RetryBudget {
        RetryBudget {
            max_elapsed: Duration::from_secs(self.config.upload_retry_s),
            ..RetryBudget::default()
        }
    }
}

/// The folder a leased trial's hls4ml project and tools work in, inside its scratch folder
/// (beside `inputs/` and `out/`): where the trial runs and where heartbeats read its tool log.
fn trial_work_dir(scratch: &Path) -> PathBuf {
    scratch.join("work")
}

/// Runs the daemon until drained; returns the exit code.
pub async fn run(options: Options) -> Result<i32, Error> {
    let config = options.config.clone();
    let python = crate::venv::find_python(Some(&config.python)).map_err(Error::Setup)?;
    let mut venv = crate::venv::probe(&python).map_err(Error::Setup)?;
    // Venvs of other formats (ONNX, PyTorch) widen what this worker converts.
    let by_format = crate::venv::format_pythons();
    for (format, other) in &by_format {
        match crate::venv::probe(other) {
            Ok(info)
                if info.formats.contains(format) && info.hls4ml_version == venv.hls4ml_version =>
            {
                venv.formats.push(format.clone());
            }
            Ok(info) => {
                tracing::warn!(python = %other.display(), hls4ml = %info.hls4ml_version, "the {format} venv does not fit (format missing or another hls4ml); not used")
            }
            Err(e) => tracing::warn!(error = %e, "the {format} venv is not usable"),
        }
    }
    venv.formats.sort();
    venv.formats.dedup();
    let (tools, tool_errors) = detect_tools(
        &std::env::var_os("PATH").unwrap_or_default(),
        Duration::from_secs(60),
    )
    .await;
    for e in &tool_errors {
        tracing::warn!(error = %e, "tool not usable");
    }
    std::fs::create_dir_all(&config.scratch).map_err(|e| {
        Error::Setup(format!(
            "cannot create the scratch folder {} (worker.scratch / --scratch): {e}",
            config.scratch.display()
        ))
    })?;
    let scratch = config
        .scratch
        .canonicalize()
        .map_err(|e| Error::Setup(format!("{}: {e}", config.scratch.display())))?;
    let _scratch_lock = crate::process::lock_scratch(&scratch).map_err(Error::Setup)?;
    let leftovers = crate::process::kill_groups_under(&scratch);
    if leftovers > 0 {
        tracing::warn!(
            groups = leftovers,
            scratch = %scratch.display(),
            "killed tool processes left running by a worker that died on this scratch folder"
        );
    }
    let blobs = Blobs::open(&options.store)
        .map_err(|e| Error::Setup(format!("cannot open the store (store.url): {e}")))?;
    let cores = if config.cores > 0 {
        config.cores
    } else {
        std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(1))
            .unwrap_or(1)
    };
    let memory_mib = if config.memory_mib > 0 {
        config.memory_mib
    } else {
        meminfo_mib("MemTotal:").unwrap_or(4096)
    };
    let slots = if config.slots > 0 {
        config.slots
    } else {
        (cores / 2).max(1)
    };
    let mut backends = Vec::new();
    if tools
        .iter()
        .any(|t| t.name == "vitis-run" || t.name == "vitis_hls")
    {
        backends.push(Backend::Vitis);
    }
    if tools.iter().any(|t| t.name == "vivado_hls") {
        backends.push(Backend::Vivado);
    }
    let caps = WorkerCaps {
        backends,
        tools: tools
            .iter()
            .map(|t| (t.name.clone(), t.version.clone()))
            .collect(),
        hls4ml_version: venv.hls4ml_version.clone(),
        part_families: config.part_families.clone(),
        formats: venv.formats.clone(),
        slots,
        memory_mib,
        cores,
        hostname: hostname(),
    };
    let id = options
        .worker_id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", caps.hostname, std::process::id()));
    let (channel, bearer) = channel(
        &config.coordinator,
        config.token.expose(),
        (!config.ca_cert.as_os_str().is_empty()).then_some(config.ca_cert.as_path()),
    )
    .map_err(Error::Setup)?;
    let mut client = WorkerClient::with_interceptor(channel, bearer);

    let registered = register(&mut client, &id, &caps).await?;
    tracing::info!(worker = %id, slots, cores, memory_mib, hls4ml = %venv.hls4ml_version, formats = ?venv.formats, tools = ?caps.tools, "worker registered");
    eprintln!(
        "hlsfarm: worker {id} registered with {}: {slots} slots, {cores} cores, {memory_mib} MiB, hls4ml {}, formats {}, tools {}",
        config.coordinator,
        venv.hls4ml_version,
        venv.formats.join(","),
        if tools.is_empty() {
            "none".to_owned()
        } else {
            tools
                .iter()
                .map(|t| format!("{} {}", t.name, t.version))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let warm = if config.warm_python {
        Some(Arc::new(crate::warm::WarmPool::new().map_err(|e| {
            Error::Setup(format!(
                "cannot create the warm interpreters' folder under $TMPDIR: {e} (or set worker.warm_python = false)"
            ))
        })?))
    } else {
        None
    };
    let env = Arc::new(TrialEnv {
        driver: DriverEnv {
            python,
            by_format,
            warm,
            timeout: Duration::from_secs(config.convert_timeout_s),
            // Per trial: at least its lease's reservation (see run_one).
            memory_limit_mib: Some(if config.trial_memory_mib > 0 {
                config.trial_memory_mib
            } else {
                (memory_mib / u64::from(slots)).max(1024)
            }),
            tolerance: crate::driver::Tolerance {
                max_error: config.fidelity_max_error,
                min_agreement: config.fidelity_min_agreement,
            },
            strict: config.preflight_strict,
        },
        tools,
        tool_timeout: Duration::from_secs(config.stage_timeout_s),
        make_tarball: true,
        tool_env: Vec::new(),
        emulate_beside_tools: config.emulate_beside_synthesis
            && crate::trial::room_beside(cores, slots),
    });
    let noop = options.noop.then_some(Noop {
        ms: options.noop_ms,
        fail_percent: options.noop_fail_percent,
    });
    let shared = Arc::new(Shared {
        id,
        caps: caps.clone(),
        client,
        blobs,
        env,
        config: WorkerConfig {
            scratch,
            ..config.clone()
        },
        running: Mutex::new(HashMap::new()),
        freed: Notify::new(),
        draining: CancellationToken::new(),
        noop,
    });
    {
        let draining = shared.draining.clone();
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!(
                "SIGTERM: draining (no new leases; running trials get the drain deadline)"
            );
            eprintln!("hlsfarm: worker draining");
            draining.cancel();
        });
    }
    let heartbeats = tokio::spawn(heartbeat_loop(
        shared.clone(),
        Duration::from_millis(registered.heartbeat_ms.max(50)),
        Duration::from_millis(registered.lease_ms.max(100)),
    ));
    let mut trials = tokio::task::JoinSet::new();
    lease_loop(
        &shared,
        slots,
        cores,
        memory_mib,
        options.exit_when_idle,
        &mut trials,
    )
    .await;

    // Drain: let running trials finish within the deadline, then hand back the rest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(config.drain_timeout_s);
    loop {
        if lock(&shared.running).is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                let mut running = lock(&shared.running);
                tracing::warn!(trials = running.len(), "drain deadline: stopping the trials still running and handing them back");
                for r in running.values_mut() {
                    r.ending = Ending::HandBack;
                    r.cancel.cancel();
                }
                break;
            }
            _ = trials.join_next() => {}
        }
    }
    while trials.join_next().await.is_some() {}
    heartbeats.abort();
    tracing::info!("worker stopped");
    Ok(0)
}
