//! Heartbeats: every running trial's lease extended on one task, with the stage and the
//! tool's phase from its log; a stale answer discards the trial, a cancel order stops it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hlsfarm_proto::v1;

use super::{Ending, Shared, lock};
use crate::host::{free_disk_bytes, meminfo_mib};

/// What a heartbeat reports of a running tool stage, from its log: the phase (the latest
/// marker in the last 64 KiB), how long the log has been quiet, the tool's own peak memory
/// where it printed one, and the last line, e.g. `scheduling · log quiet 12m04s · tool peak
/// 3301 MiB · INFO: [SCHED 204-11] Starting scheduling ...`.
pub(super) fn tool_phase(path: &Path) -> String {
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

/// Sends heartbeats every `period`, and acts on the answers (stale leases, cancels, drain).
///
/// A worker that has heard no answer for a whole `lease` fences itself: the coordinator has
/// expired its leases by then (its deadline is never later than ours, which starts at an
/// answer), so the trials still running are killed and their work discarded instead of
/// running on for hours to be refused. Trials already reporting are left to their
/// completion's answer.
///
/// With nothing running there is no lease to keep: the worker only says it is alive (and
/// hears a drain order), every `lease` (at most 5 s), so that an idle fleet costs Redis
/// little.
pub(super) async fn heartbeat_loop(shared: Arc<Shared>, period: Duration, lease: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_period = lease.min(Duration::from_secs(5)).max(period);
    let mut answered = tokio::time::Instant::now();
    let mut sent: Option<tokio::time::Instant> = None;
    loop {
        tick.tick().await;
        if lock(&shared.running).is_empty() {
            // No lease held: none can be lost to silence. A trial leased now starts with a
            // whole lease ahead of it.
            answered = tokio::time::Instant::now();
            if sent.is_some_and(|at| at.elapsed() + period / 2 < idle_period)
                && !shared.draining.is_cancelled()
            {
                continue;
            }
        }
        sent = Some(tokio::time::Instant::now());
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
