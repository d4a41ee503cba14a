//! What the Redis queue takes and gives besides the [`crate::queue::Queue`] trait's types:
//! a sweep to submit, a completion, progress in heartbeats, and the records status and
//! results are read from.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::job::Fence;
use crate::queue::Counts;

/// A submitted sweep's description, as the coordinator stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepSubmit {
    /// The sweep's id and priority.
    pub id: String,
    /// Share of workers against other sweeps (≥ 1).
    pub priority: u32,
    /// Human name.
    pub name: String,
    /// Rerun trials that have a stored result.
    pub force: bool,
    /// What the coordinator needs to build leases (JSON), stored once per sweep.
    pub plan: String,
}

impl SweepSubmit {
    /// More trials for sweep `id`, submitted earlier (its name, priority and plan stay).
    pub fn more_of(id: &str) -> SweepSubmit {
        SweepSubmit {
            id: id.to_owned(),
            priority: 1,
            ..SweepSubmit::default()
        }
    }
}

/// What a submit did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Submitted {
    /// Trials queued.
    pub added: u64,
    /// Trials shared with an earlier result or a run in progress.
    pub reused: u64,
}

/// How a finished attempt is recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// A short JSON summary of the result, for status and results listings.
    pub summary: String,
    /// The store prefix holding the attempt's result files (its staging prefix); empty when
    /// nothing was uploaded.
    pub prefix: String,
    /// Seconds the attempt ran.
    pub seconds: f64,
    /// Memory to reserve for the trial from now on, MiB (0 keeps its reservation; it only
    /// grows): after an out-of-memory failure, so the retry goes to a worker with that free.
    pub memory_mib: u64,
    /// For a licence refusal, the feature refused (its seats are held down); empty for every
    /// seat feature of the trial.
    pub refused_feature: String,
    /// How long the reporting worker is not to lease the trial again (an infrastructure
    /// failure of its own: another worker should try); zero for none.
    pub avoid_worker_for: std::time::Duration,
}

/// One trial's progress in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The trial.
    pub key: String,
    /// Its lease.
    pub fence: Fence,
    /// The stage running (`csynth`), or empty.
    pub stage: String,
    /// A short phase from the tool's log, or empty.
    pub phase: String,
}

/// An event from the stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// Its stream id (`<ms>-<seq>`): the cursor to resume after it.
    pub id: String,
    /// What happened: `submitted`, `leased`, `stage`, `completed`, `expired`, `handed_back`,
    /// `cancel`, `retry`, `worker`.
    pub kind: String,
    /// The trial, if any.
    pub trial: String,
    /// The sweep, if any.
    pub sweep: String,
    /// The trial's state after it, if any.
    pub state: String,
    /// The worker, if any.
    pub worker: String,
    /// A few words.
    pub message: String,
}

impl StreamEvent {
    /// Milliseconds since the Unix epoch when it happened (from its id).
    pub fn time_ms(&self) -> i64 {
        self.id
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

/// One trial as Redis holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialRecord {
    /// Its key.
    pub key: String,
    /// The sweep running it.
    pub sweep: String,
    /// Its state.
    pub state: String,
    /// Its attempt.
    pub attempt: u32,
    /// Its epoch.
    pub epoch: u64,
    /// The payload given at submit.
    pub payload: String,
    /// The worker holding it, when leased.
    pub worker: String,
    /// The stage running, when leased.
    pub stage: String,
    /// The phase, when leased.
    pub phase: String,
    /// The result summary (JSON), when finished.
    pub summary: String,
    /// The store prefix of its committed result, when finished.
    pub result_prefix: String,
    /// Milliseconds since the epoch when its lease began.
    pub leased_at_ms: i64,
    /// A cancel was ordered.
    pub cancel_requested: bool,
    /// The memory it reserves, MiB (read by [`super::RedisQueue::trial`] only; 0 elsewhere).
    pub memory_mib: u64,
}

impl TrialRecord {
    pub(super) fn from_map(key: &str, map: HashMap<String, String>) -> Option<TrialRecord> {
        let get = |f: &str| map.get(f).cloned().unwrap_or_default();
        let state = map.get("st")?.clone();
        Some(TrialRecord {
            key: key.to_owned(),
            sweep: get("s"),
            state,
            attempt: get("a").parse().unwrap_or(0),
            epoch: get("e").parse().unwrap_or(0),
            payload: get("p"),
            worker: get("w"),
            stage: get("stg"),
            phase: get("ph"),
            summary: get("r"),
            result_prefix: get("res"),
            leased_at_ms: get("t0").parse().unwrap_or(0),
            cancel_requested: get("c") == "1",
            memory_mib: get("mem").parse().unwrap_or(0),
        })
    }
}

/// A sweep as Redis holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepRecord {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its priority.
    pub priority: u32,
    /// Milliseconds since the epoch when it was submitted.
    pub submitted_ms: i64,
    /// Trials per state.
    pub counts: Counts,
    /// Trials shared from earlier results.
    pub reused: u64,
    /// Seconds spent by finished attempts, and how many.
    pub seconds_total: f64,
    /// Finished attempts.
    pub attempts_finished: u64,
    /// Its last trial ended and its aggregate (or a funnel's next gate) has not run yet.
    pub pending: bool,
}

/// A worker as Redis holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerRecord {
    /// Its id.
    pub id: String,
    /// What it registered (JSON).
    pub capabilities: String,
    /// Milliseconds since the epoch of its last lease call or heartbeat.
    pub seen_ms: i64,
    /// An operator asked it to drain.
    pub draining: bool,
}

/// The cluster as Redis holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Redis's clock, ms since the epoch.
    pub now_ms: i64,
    /// Sweeps, newest first.
    pub sweeps: Vec<SweepRecord>,
    /// Registered workers.
    pub workers: Vec<WorkerRecord>,
    /// Leased trials.
    pub leased: Vec<TrialRecord>,
    /// Seats held per feature.
    pub seats: BTreeMap<String, u32>,
    /// Recently failed trials, newest first.
    pub failures: Vec<TrialRecord>,
}

/// Which of the once-only work sets to claim from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimSet {
    /// Sweeps whose last trial ended: write their aggregate.
    Finished,
    /// Trials whose result awaits its copy from staging into `results/`.
    Commits,
}

impl ClaimSet {
    pub(super) fn name(self) -> &'static str {
        match self {
            ClaimSet::Finished => "finished",
            ClaimSet::Commits => "commits",
        }
    }
}
