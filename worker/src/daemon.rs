//! `hlsfarm worker`: the daemon on a synthesis host (DESIGN §2, §3).
//!
//! It finds the tools and the hls4ml venv, registers them as capabilities, then leases
//! trials that fit its free slots, memory and cores (never below the free-disk threshold),
//! runs each in its own scratch folder and process group, uploads the result and the pruned
//! tarball to the lease's staging prefix, and completes. Heartbeats run on their own task:
//! a stale answer kills and discards the trial, a cancel order kills it and reports it
//! cancelled. SIGTERM (or an operator's drain) stops leasing, lets running trials finish
//! within the drain deadline, and hands the rest back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hlsfarm_common::FailureClass;
use hlsfarm_common::Stage;
use hlsfarm_common::blob::{Blobs, RetryBudget};
use hlsfarm_common::config::{StoreConfig, WorkerConfig};
use hlsfarm_common::job::Fence;
use hlsfarm_common::plan::{WorkerCaps, model_format};
use hlsfarm_common::results::{ModelRef, TrialResult, TrialStatus};
use hlsfarm_common::settings::{Backend, Settings};
use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_proto::v1::{self, worker_client::WorkerClient};
use hlsfarm_proto::{FromWire, stages_from_wire};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::driver::{DriverEnv, ModelFiles};
use crate::tools::detect_tools;
use crate::trial::{TrialEnv, TrialSpec, run_trial};

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

use hlsfarm_proto::client::{Bearer, Unreachable, channel};

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

/// Where each no-op execution leaves an empty object (`<prefix>/<trial>/<attempt>-<epoch>`).
pub const NOOP_EXECUTIONS: &str = "noop-executions";

/// The no-op mode's knobs ([`Options::noop`]).
struct Noop {
    ms: u64,
    fail_percent: u32,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Free bytes on the file system holding `dir`.
pub fn free_disk_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() * s.fragment_size())
}

/// The folder a leased trial's hls4ml project and tools work in, inside its scratch folder
/// (beside `inputs/` and `out/`): where the trial runs and where heartbeats read its tool log.
fn trial_work_dir(scratch: &Path) -> PathBuf {
    scratch.join("work")
}

/// A `/proc/meminfo` figure (e.g. `MemTotal:`) in MiB.
pub fn meminfo_mib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".to_owned())
}

/// What a heartbeat reports of a running tool stage, from its log: the phase (the latest
/// marker in the last 64 KiB), how long the log has been quiet, the tool's own peak memory
/// where it printed one, and the last line, e.g. `scheduling · log quiet 12m04s · tool peak
/// 3301 MiB · INFO: [SCHED 204-11] Starting scheduling ...`.
fn tool_phase(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let meta = file.metadata().ok();
    let len = meta.as_ref().map_or(0, std::fs::Metadata::len);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let tail = String::from_utf8_lossy(&bytes);
    let progress = hlsfarm_common::report::log::progress(&tail);
    let mut parts: Vec<String> = Vec::new();
    if let Some(phase) = progress.phase {
        parts.push(phase.to_owned());
    }
    if let Some(quiet) = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
        .filter(|q| q.as_secs() >= 60)
    {
        parts.push(format!(
            "log quiet {}m{:02}s",
            quiet.as_secs() / 60,
            quiet.as_secs() % 60
        ));
    }
    if let Some(peak) = progress.peak_memory_mib {
        parts.push(format!("tool peak {peak} MiB"));
    }
    if let Some(last) = tail.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        parts.push(last.chars().take(120).collect());
    }
    parts.join(" · ")
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
    let env = Arc::new(TrialEnv {
        driver: DriverEnv {
            python,
            by_format,
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

async fn register(
    client: &mut Client,
    id: &str,
    caps: &WorkerCaps,
) -> Result<v1::RegisterResponse, Error> {
    let request = v1::RegisterRequest {
        worker_id: id.to_owned(),
        hostname: caps.hostname.clone(),
        capabilities: Some(caps.into()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut wait = Duration::from_millis(200);
    loop {
        match client.register(request.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument
                ) =>
            {
                return Err(Error::Refused(s.message().to_owned()));
            }
            Err(s) => {
                tracing::warn!(error = %Unreachable::of(&s), "coordinator unreachable; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn lease_loop(
    shared: &Arc<Shared>,
    slots: u32,
    cores: u32,
    memory_mib: u64,
    exit_when_idle: bool,
    trials: &mut tokio::task::JoinSet<()>,
) {
    let min_free = shared.config.min_free_disk_gib * 1024 * 1024 * 1024;
    let mut warned_disk = false;
    let mut wait = Duration::from_millis(200);
    while !shared.draining.is_cancelled() {
        let (busy, used_mem, used_cores) = {
            let running = lock(&shared.running);
            (
                running.len() as u32,
                running.values().map(|r| r.memory_mib).sum::<u64>(),
                running.values().map(|r| r.cores).sum::<u32>(),
            )
        };
        // Every trial needs a core: with none free, nothing can be leased until one frees.
        // (A long-polling lease in flight would hold this worker idle past that moment.)
        if busy >= slots || (busy > 0 && used_cores >= cores) {
            tokio::select! {
                _ = shared.freed.notified() => {}
                _ = shared.draining.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let free_disk = free_disk_bytes(&shared.config.scratch).unwrap_or(u64::MAX);
        if free_disk < min_free {
            if !warned_disk {
                tracing::warn!(
                    free_gib = free_disk as f64 / 1073741824.0,
                    min_gib = shared.config.min_free_disk_gib,
                    scratch = %shared.config.scratch.display(),
                    "scratch disk below the free-space threshold: not leasing until space is freed (worker.min_free_disk_gib)"
                );
                warned_disk = true;
            }
            tokio::select! {
                _ = shared.draining.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            continue;
        }
        warned_disk = false;
        let free_mem = memory_mib
            .saturating_sub(used_mem)
            .min(meminfo_mib("MemAvailable:").unwrap_or(u64::MAX));
        let request = v1::LeaseRequest {
            worker_id: shared.id.clone(),
            max_trials: slots - busy,
            free_memory_mib: free_mem,
            free_cores: cores.saturating_sub(used_cores),
            free_disk_mib: free_disk / (1024 * 1024),
            // While trials run, a slot or core may free at any moment: poll briefly so the
            // next lease asks with what is free then. Idle, wait long (the coordinator
            // answers at once when work arrives).
            wait_ms: if busy > 0 { 1_000 } else { 10_000 },
        };
        let mut client = shared.client.clone();
        let leased = tokio::select! {
            _ = shared.draining.cancelled() => break,
            r = client.lease(request) => r,
        };
        let leased = match leased {
            Ok(r) => {
                wait = Duration::from_millis(200);
                r.into_inner().trials
            }
            Err(s) if s.code() == Code::FailedPrecondition => {
                // Forgotten (Redis flushed, or a fresh Redis after a failover): register again.
                tracing::warn!(error = %s.message(), "lease refused; registering again");
                let mut client = shared.client.clone();
                let registered = tokio::select! {
                    _ = shared.draining.cancelled() => break,
                    r = register(&mut client, &shared.id, &shared.caps) => r,
                };
                match registered {
                    Ok(_) => tracing::info!(worker = %shared.id, "registered again"),
                    Err(e) => {
                        tracing::warn!(error = %e, "registering again failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(10));
                    }
                }
                continue;
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "lease failed; coordinator unreachable? retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if leased.is_empty() {
            if exit_when_idle && lock(&shared.running).is_empty() {
                tracing::info!("no work and nothing running: exiting (--exit-when-idle)");
                break;
            }
            continue;
        }
        for trial in leased {
            start_trial(shared, trial, trials);
        }
    }
}

fn start_trial(
    shared: &Arc<Shared>,
    trial: v1::LeasedTrial,
    trials: &mut tokio::task::JoinSet<()>,
) {
    let Some(token) = trial.token.clone() else {
        return;
    };
    let key = token.trial_key.clone();
    let fence = Fence {
        attempt: token.attempt,
        epoch: token.epoch,
    };
    let resources = trial.resources.unwrap_or_default();
    let cancel = CancellationToken::new();
    let stage = Arc::new(Mutex::new(None));
    let scratch = shared.config.scratch.join(format!(
        "{}-{}-{}",
        &key[..key.len().min(16)],
        fence.attempt,
        fence.epoch
    ));
    let backend = trial
        .settings
        .as_ref()
        .and_then(|s| Backend::from_wire(s.backend).ok())
        .unwrap_or(Backend::Vitis);
    let log = crate::driver::project_dir(&trial_work_dir(&scratch), crate::trial::PROJECT_NAME)
        .join(match backend {
            Backend::Vitis => "vitis_hls.log",
            Backend::Vivado => "vivado_hls.log",
        });
    lock(&shared.running).insert(
        key.clone(),
        Running {
            fence,
            stage: stage.clone(),
            log,
            cancel: cancel.clone(),
            ending: Ending::Normal,
            reporting: false,
            memory_mib: resources.memory_mib,
            cores: resources.cores,
        },
    );
    let shared = shared.clone();
    trials.spawn(async move {
        let span = tracing::info_span!("trial", trial = %&key[..key.len().min(12)], sweep = %trial.sweep_id, attempt = fence.attempt, worker = %shared.id);
        let _ = tracing::Instrument::instrument(
            run_one(&shared, &key, fence, trial, scratch, cancel, stage),
            span,
        )
        .await;
        lock(&shared.running).remove(&key);
        shared.freed.notify_waiters();
    });
}

/// Downloads the model and its companions into `dir`.
async fn fetch_inputs(
    blobs: &Blobs,
    model: &v1::ModelInput,
    dir: &Path,
) -> Result<(ModelFiles, Option<PathBuf>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let fetch = |sha: String, name: String| async move {
        let bytes = blobs
            .get(&Blobs::input_path(&sha))
            .await
            .map_err(|e| format!("cannot fetch {name} ({sha}) from the store: {e}"))?;
        let got = hlsfarm_common::trial_key::sha256_hex(&bytes);
        if got != sha {
            return Err(format!("{name} from the store has sha256 {got}, not {sha}"));
        }
        let path = dir.join(&name);
        std::fs::write(&path, bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok::<PathBuf, String>(path)
    };
    let format = model_format(&model.name)?;
    let path = fetch(model.sha256.clone(), model.name.clone()).await?;
    let mut files = ModelFiles::auto(&path);
    files.format = format.to_owned();
    let stem = Path::new(&model.name)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned());
    let mut inputs = None;
    for (role, sha) in &model.companions {
        match role.as_str() {
            "weights" => {
                files.weights = Some(fetch(sha.clone(), format!("{stem}_weights.h5")).await?)
            }
            "class" => {
                files.class_file = Some(fetch(sha.clone(), format!("{stem}_model.py")).await?)
            }
            "inputs" => inputs = Some(fetch(sha.clone(), format!("{stem}_inputs.npy")).await?),
            _ => {}
        }
    }
    Ok((files, inputs))
}

fn wire_failure(
    class: FailureClass,
    reason: String,
    stage: Option<Stage>,
    tail: String,
) -> v1::Failure {
    v1::Failure {
        class: v1::FailureClass::from(class) as i32,
        reason,
        stage: stage.map_or(0, |s| v1::Stage::from(s) as i32),
        log_tail: tail,
        suggestion: String::new(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    shared: &Arc<Shared>,
    key: &str,
    fence: Fence,
    trial: v1::LeasedTrial,
    scratch: PathBuf,
    cancel: CancellationToken,
    stage: Arc<Mutex<Option<Stage>>>,
) {
    let token = v1::LeaseToken {
        trial_key: key.to_owned(),
        attempt: fence.attempt,
        epoch: fence.epoch,
    };
    let ending = || {
        lock(&shared.running)
            .get(key)
            .map_or(Ending::Normal, |r| r.ending)
    };
    let model = trial.model.clone().unwrap_or_default();
    if let Some(noop) = &shared.noop {
        noop_trial(shared, noop, token, &trial, &model.name).await;
        return;
    }
    let settings = trial
        .settings
        .clone()
        .map(Settings::try_from)
        .transpose()
        .ok()
        .flatten();
    let stages = stages_from_wire(&trial.stages).unwrap_or_default();
    let (Some(settings), false) = (settings, stages.is_empty()) else {
        complete(
            shared,
            token,
            None,
            Some(wire_failure(
                FailureClass::BadInput,
                "the lease carries no valid settings or stages (coordinator and worker versions differ?)".into(),
                None,
                String::new(),
            )),
            false,
        )
        .await;
        return;
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let (files, inputs) = match fetch_inputs(&shared.blobs, &model, &scratch.join("inputs")).await {
        Ok(f) => f,
        Err(reason) => {
            let class = if reason.contains("is not a model file") {
                FailureClass::BadInput
            } else {
                FailureClass::Infrastructure
            };
            tracing::warn!(%reason, "cannot fetch the inputs");
            complete(
                shared,
                token,
                None,
                Some(wire_failure(
                    class,
                    reason,
                    Some(Stage::Convert),
                    String::new(),
                )),
                false,
            )
            .await;
            return;
        }
    };
    let spec = TrialSpec {
        trial_key: key.to_owned(),
        model: ModelRef {
            name: model.name.clone(),
            sha256: model.sha256.clone(),
        },
        files,
        settings,
        stages,
        emulation: EmulationSpec {
            samples: trial.emulation_samples,
            seed: trial.emulation_seed,
        },
        inputs,
        scratch: trial_work_dir(&scratch),
        output_dir: scratch.join("out").join(format!(
            "hls_{}",
            Path::new(&model.name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        )),
        tarball: scratch.join("out").join("artifacts.tar.gz"),
        derived_from: (!trial.derived_from_json.is_empty())
            .then(|| serde_json::from_str(&trial.derived_from_json).ok())
            .flatten(),
    };
    tracing::info!(model = %model.name, "trial started");
    // The memory limit: the worker's share per slot, or the lease's reservation if larger.
    let reserved = lock(&shared.running).get(key).map_or(0, |r| r.memory_mib);
    let mut env = TrialEnv::clone(&shared.env);
    env.driver.memory_limit_mib = env.driver.memory_limit_mib.map(|m| m.max(reserved));
    let result = run_trial(&env, &spec, &cancel, &|s| {
        *lock(&stage) = Some(s);
    })
    .await;
    match ending() {
        Ending::Discard => {
            tracing::warn!("lease lost while running: work discarded");
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        Ending::HandBack => {
            hand_back(shared, token, "drain deadline").await;
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        Ending::Cancel => {
            tracing::info!("cancelled by an operator");
            complete(shared, token, None, None, true).await;
            let _ = std::fs::remove_dir_all(&scratch);
            return;
        }
        Ending::Normal => {}
    }
    if let Some(r) = lock(&shared.running).get_mut(key) {
        r.reporting = true;
    }
    // Upload result.json and the tarball to the staging prefix, then report.
    tracing::info!("trial ended: uploading its results and reporting");
    let staging = trial.staging_prefix.clone();
    let budget = shared.upload_budget();
    let mut uploaded = Ok(());
    let result_json = serde_json::to_string_pretty(&result).unwrap_or_default();
    if spec.tarball.is_file() {
        match std::fs::read(&spec.tarball) {
            Ok(bytes) => {
                if let Err(e) = shared
                    .blobs
                    .put_checked(&format!("{staging}/artifacts.tar.gz"), bytes, budget)
                    .await
                {
                    uploaded = Err(e.to_string());
                }
            }
            Err(e) => uploaded = Err(format!("cannot read {}: {e}", spec.tarball.display())),
        }
    }
    if uploaded.is_ok()
        && let Err(e) = shared
            .blobs
            .put_checked(
                &format!("{staging}/result.json"),
                result_json.clone().into_bytes(),
                budget,
            )
            .await
    {
        uploaded = Err(e.to_string());
    }
    if let Err(reason) = uploaded {
        tracing::warn!(%reason, "upload failed past its retry budget");
        complete(
            shared,
            token,
            None,
            Some(wire_failure(
                FailureClass::Infrastructure,
                format!("cannot upload the results to the store: {reason}"),
                None,
                String::new(),
            )),
            false,
        )
        .await;
        return;
    }
    let failure = result.failure.as_ref().map(|f| v1::Failure {
        class: v1::FailureClass::from(f.class) as i32,
        reason: f.reason.clone(),
        stage: f.stage.map_or(0, |s| v1::Stage::from(s) as i32),
        log_tail: f.log_tail.clone(),
        suggestion: f.suggestion.clone().unwrap_or_default(),
    });
    let wire_result = v1::TrialResult {
        result_json,
        artifacts: if spec.tarball.is_file() {
            vec!["artifacts.tar.gz".into(), "result.json".into()]
        } else {
            vec!["result.json".into()]
        },
        ..v1::TrialResult::default()
    };
    let accepted = complete(shared, token, Some(wire_result), failure, false).await;
    if accepted && result.status == TrialStatus::Success && !shared.config.keep_scratch {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    log_result(&result);
}

/// A no-op trial ([`Options::noop`]): an empty marker under [`NOOP_EXECUTIONS`], an empty
/// `result.json` uploaded to the staging prefix, and the usual completion.
async fn noop_trial(
    shared: &Arc<Shared>,
    noop: &Noop,
    token: v1::LeaseToken,
    trial: &v1::LeasedTrial,
    model: &str,
) {
    let failure = |reason: String| {
        Some(wire_failure(
            FailureClass::Infrastructure,
            reason,
            None,
            String::new(),
        ))
    };
    tokio::time::sleep(Duration::from_millis(noop.ms)).await;
    let draw = hlsfarm_common::trial_key::sha256_hex(
        format!("{}/{}", token.trial_key, token.attempt).as_bytes(),
    );
    let draw = u32::from_str_radix(&draw[..8], 16).unwrap_or(0) % 100;
    if draw < noop.fail_percent {
        // Half as a tool error (final), half as the OOM killer's (retried, within
        // max_attempts).
        let (class, what) = if draw < noop.fail_percent / 2 {
            (FailureClass::ToolError, "a tool error")
        } else {
            (FailureClass::Oom, "the tool killed by the OOM killer")
        };
        let failed = wire_failure(
            class,
            format!("no-op trial: injected failure, {what}"),
            Some(Stage::Csynth),
            String::new(),
        );
        complete(shared, token, None, Some(failed), false).await;
        return;
    }
    let settings = trial
        .settings
        .clone()
        .and_then(|s| Settings::try_from(s).ok())
        .unwrap_or_default();
    let result_json = serde_json::to_string(&TrialResult::noop(&token.trial_key, model, settings))
        .unwrap_or_default();
    // The no-op's one side effect, as the peer benchmarks' tasks have theirs: an empty
    // object per execution, so executions can be counted (exactly once, or re-runs after
    // faults) apart from the results committed.
    let marker = format!(
        "{NOOP_EXECUTIONS}/{}/{}-{}",
        token.trial_key, token.attempt, token.epoch
    );
    let path = format!("{}/result.json", trial.staging_prefix);
    for (path, bytes) in [
        (marker, Vec::new()),
        (path, result_json.clone().into_bytes()),
    ] {
        if let Err(e) = shared
            .blobs
            .put_checked(&path, bytes, shared.upload_budget())
            .await
        {
            complete(shared, token, None, failure(e.to_string()), false).await;
            return;
        }
    }
    let result = v1::TrialResult {
        result_json,
        artifacts: vec!["result.json".into()],
        ..v1::TrialResult::default()
    };
    complete(shared, token, Some(result), None, false).await;
}

fn log_result(result: &TrialResult) {
    let seconds: f64 = result.timings.iter().map(|t| t.seconds).sum();
    match &result.failure {
        None => tracing::info!(seconds, "trial succeeded"),
        Some(f) => tracing::warn!(seconds, class = %f.class, reason = %f.reason, "trial failed"),
    }
}

/// Reports a finished trial, retrying while the coordinator is unreachable. Returns true
/// when the coordinator accepted it.
async fn complete(
    shared: &Arc<Shared>,
    token: v1::LeaseToken,
    result: Option<v1::TrialResult>,
    failure: Option<v1::Failure>,
    cancelled: bool,
) -> bool {
    let request = v1::CompleteRequest {
        worker_id: shared.id.clone(),
        token: Some(token),
        result,
        failure,
        cancelled,
    };
    let mut wait = Duration::from_millis(100);
    for _ in 0..12 {
        let mut client = shared.client.clone();
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.complete(request.clone()))
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("no answer within 30 s")));
        match answer {
            Ok(_) => return true,
            Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::NotFound => {
                tracing::warn!(error = %s.message(), "completion refused: the lease was lost; result discarded");
                return false;
            }
            Err(s) if s.code() == Code::InvalidArgument => {
                tracing::error!(error = %s.message(), "completion rejected");
                return false;
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "cannot report the trial; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    false
}

/// How long a completion or hand-back waits for its answer before trying again.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn hand_back(shared: &Arc<Shared>, token: v1::LeaseToken, reason: &str) {
    let mut client = shared.client.clone();
    let call = client.hand_back(v1::HandBackRequest {
        worker_id: shared.id.clone(),
        tokens: vec![token],
        reason: reason.to_owned(),
    });
    if let Err(s) = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Status::unavailable("no answer within 30 s")))
    {
        tracing::warn!(error = %s.message(), "hand-back failed; the lease expires instead");
    }
}

/// Sends heartbeats every `period`, and acts on the answers (stale leases, cancels, drain).
///
/// A worker that has heard no answer for a whole `lease` fences itself: the coordinator has
/// expired its leases by then (its deadline is never later than ours, which starts at an
/// answer), so the trials still running are killed and their work discarded instead of
/// running on for hours to be refused. Trials already reporting are left to their
/// completion's answer.
async fn heartbeat_loop(shared: Arc<Shared>, period: Duration, lease: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut answered = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        if answered.elapsed() > lease {
            let mut running = lock(&shared.running);
            for (key, r) in running.iter_mut() {
                if r.ending == Ending::Normal && !r.reporting {
                    tracing::warn!(
                        trial = %&key[..key.len().min(12)],
                        silent_s = answered.elapsed().as_secs_f64(),
                        lease_s = lease.as_secs_f64(),
                        "no heartbeat answered for longer than the lease: the coordinator has given this trial to another worker; killing it and discarding its work"
                    );
                    r.ending = Ending::Discard;
                    r.cancel.cancel();
                }
            }
        }
        let trials: Vec<v1::TrialProgress> = {
            let running = lock(&shared.running);
            running
                .iter()
                .filter(|(_, r)| r.ending == Ending::Normal)
                .map(|(key, r)| {
                    let stage = *lock(&r.stage);
                    v1::TrialProgress {
                        token: Some(v1::LeaseToken {
                            trial_key: key.clone(),
                            attempt: r.fence.attempt,
                            epoch: r.fence.epoch,
                        }),
                        stage: stage.map_or(0, |s| v1::Stage::from(s) as i32),
                        phase: if stage.is_some_and(|s| s.needs_xilinx_tools()) {
                            tool_phase(&r.log)
                        } else {
                            String::new()
                        },
                    }
                })
                .collect()
        };
        let request = v1::HeartbeatRequest {
            worker_id: shared.id.clone(),
            trials,
            free_memory_mib: meminfo_mib("MemAvailable:").unwrap_or(0),
            free_disk_mib: free_disk_bytes(&shared.config.scratch).unwrap_or(0) / (1024 * 1024),
            draining: shared.draining.is_cancelled(),
        };
        let mut client = shared.client.clone();
        // A heartbeat lost in a cut network must not hold up the next one.
        let reply = match tokio::time::timeout(lease / 2, client.heartbeat(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                tracing::warn!(error = %s.message(), "heartbeat failed; coordinator unreachable?");
                continue;
            }
            Err(_) => {
                tracing::warn!(
                    timeout_s = (lease / 2).as_secs_f64(),
                    "heartbeat unanswered; coordinator unreachable?"
                );
                continue;
            }
        };
        answered = tokio::time::Instant::now();
        let mut running = lock(&shared.running);
        for t in reply.stale {
            if let Some(r) = running.get_mut(&t.trial_key)
                && r.fence.attempt == t.attempt
                && r.fence.epoch == t.epoch
                && !r.reporting
            {
                tracing::warn!(trial = %&t.trial_key[..t.trial_key.len().min(12)], "lease lost: killing the trial and discarding its work");
                r.ending = Ending::Discard;
                r.cancel.cancel();
            }
        }
        for t in reply.cancel {
            if let Some(r) = running.get_mut(&t.trial_key)
                && r.ending == Ending::Normal
                && !r.reporting
            {
                tracing::info!(trial = %&t.trial_key[..t.trial_key.len().min(12)], "cancel ordered: killing the trial");
                r.ending = Ending::Cancel;
                r.cancel.cancel();
            }
        }
        if reply.drain && !shared.draining.is_cancelled() {
            tracing::info!("an operator asked this worker to drain");
            shared.draining.cancel();
        }
    }
}
