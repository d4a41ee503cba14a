//! No-op dispatch end to end through real worker processes, with CPU per trial.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use hlsfarm_proto::v1;

use super::{Proc, Rig, info_field, model, redis_info, sweep};

/// CPU seconds (user + system, with reaped children) of a process.
pub(super) fn process_cpu_s(pid: u32) -> f64 {
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
pub(super) struct Cpu {
    coordinator: f64,
    workers: f64,
    redis: f64,
    driver: f64,
}

impl Cpu {
    async fn sample(rig: &Rig, workers: &[Proc]) -> Cpu {
        let redis = redis_info(&rig.redis_url, "cpu").await.unwrap_or_default();
        Cpu {
            coordinator: process_cpu_s(rig.coordinator.pid().unwrap_or_default()),
            workers: workers
                .iter()
                .filter_map(Proc::pid)
                .map(process_cpu_s)
                .sum(),
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
pub(super) async fn watch_succeeded(
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
pub(super) fn executions(store: &Path) -> u64 {
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

pub(super) async fn dispatch(trials: u32, workers: u32, slots: u32) -> anyhow::Result<()> {
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
        let name = format!("bench-{i}");
        let mut command = rig.worker_command(&name, slots)?;
        command
            .arg("--bench-noop")
            // Every trial asks for a core: offer one per slot.
            .env("HLSFARM_WORKER__CORES", slots.to_string());
        procs.push(rig.spawn(&name, command)?);
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
