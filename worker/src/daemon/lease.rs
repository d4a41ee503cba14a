//! The lease loop: ask for as many trials as free slots, memory, cores and disk allow (a
//! long poll in the coordinator), start each on its own task, register again when the
//! coordinator forgot this worker, stop on drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use hlsfarm_common::blob::Blobs;
use hlsfarm_common::job::Fence;
use hlsfarm_common::plan::WorkerCaps;
use hlsfarm_common::plan::model_format;
use hlsfarm_common::settings::Backend;
use hlsfarm_proto::FromWire;
use hlsfarm_proto::client::Unreachable;
use hlsfarm_proto::v1;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::driver::ModelFiles;

use super::run_one::run_one;
use super::{Client, Ending, Error, Running, Shared, lock, trial_work_dir};
use crate::host::{free_disk_bytes, meminfo_mib};

pub(super) async fn register(
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

pub(super) async fn lease_loop(
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
            // next lease asks with what is free then. Idle, wait long: the call is parked in
            // the coordinator, which answers it when work appears and costs nothing meanwhile.
            wait_ms: if busy > 0 { 1_000 } else { 20_000 },
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
            Err(s)
                if hlsfarm_proto::error_kind(&s) == Some("not-registered")
                    || (hlsfarm_proto::error_kind(&s).is_none()
                        && s.code() == Code::FailedPrecondition) =>
            {
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

pub(super) fn start_trial(
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

/// A leased trial's files, fetched from the store.
pub(super) struct Fetched {
    /// The model and its weights or class file.
    pub(super) files: ModelFiles,
    /// Sample inputs for the emulation.
    pub(super) inputs: Option<PathBuf>,
    /// The labelled validation set.
    pub(super) validation: Option<PathBuf>,
}

/// Downloads the model and its companions into `dir`.
pub(super) async fn fetch_inputs(
    blobs: &Blobs,
    model: &v1::ModelInput,
    dir: &Path,
) -> Result<Fetched, String> {
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
    let mut validation = None;
    for (role, sha) in &model.companions {
        match role.as_str() {
            "weights" => {
                files.weights = Some(fetch(sha.clone(), format!("{stem}_weights.h5")).await?)
            }
            "class" => {
                files.class_file = Some(fetch(sha.clone(), format!("{stem}_model.py")).await?)
            }
            "inputs" => inputs = Some(fetch(sha.clone(), format!("{stem}_inputs.npy")).await?),
            "validation" => {
                validation = Some(fetch(sha.clone(), format!("{stem}_validation.npz")).await?)
            }
            _ => {}
        }
    }
    Ok(Fetched {
        files,
        inputs,
        validation,
    })
}
