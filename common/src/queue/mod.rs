//! The trial queue: submit, lease, heartbeat, complete, hand back, cancel, retry, reap.
//!
//! One trait, two backends: [`embedded::EmbeddedQueue`] (in-process, for the one-host run)
//! and the Redis backend of the coordinator. Every state change goes through
//! [`crate::job::transition`]; both backends pass the suite in [`conformance`].
//!
//! Scheduling (DESIGN §4): active sweeps share workers by weighted round-robin (a sweep's
//! share is its priority), and within a sweep the trial with the largest cost estimate goes
//! first, so the longest trials start early and the makespan stays near its lower bound.

pub mod conformance;
pub mod embedded;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::job::{Fence, TransitionError, TrialState};

/// A sweep as the queue knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepMeta {
    /// Its id.
    pub id: String,
    /// Its share of workers against other sweeps (≥ 1).
    pub priority: u32,
    /// Run again trials that already succeeded (a forced resubmit); without it they are
    /// shared, not added.
    #[serde(default)]
    pub force: bool,
}

/// A trial to queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTrial {
    /// Its key (hex).
    pub key: String,
    /// Expected cost (any unit, larger runs longer): longest first within a sweep.
    pub cost: f64,
    /// What the worker needs to run it, opaque to the queue.
    pub payload: serde_json::Value,
    /// Which workers can take it and what it holds while it runs.
    #[serde(default)]
    pub needs: Needs,
}

/// What a trial needs from the worker that leases it (used by the Redis queue; the one-host
/// queue has one kind of worker and ignores it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    /// Its capability class: only workers that serve the class may lease it ("" for any).
    pub class: String,
    /// Memory it needs free on the worker, MiB.
    pub memory_mib: u64,
    /// Cores it needs free on the worker.
    pub cores: u32,
    /// Licence-seat features it holds while leased (e.g. `vsynth`).
    pub seats: Vec<String>,
}

/// What a worker offers when it asks for work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fit {
    /// Classes it serves; `None` for any.
    pub classes: Option<Vec<String>>,
    /// Free memory, MiB.
    pub memory_mib: u64,
    /// Free cores.
    pub cores: u32,
    /// Cluster-wide seat limits per feature; a feature not listed is unlimited.
    pub seat_limits: std::collections::BTreeMap<String, u32>,
}

impl Fit {
    /// A worker that fits anything.
    pub fn any() -> Fit {
        Fit {
            classes: None,
            memory_mib: u64::MAX / 4,
            cores: u32::MAX / 4,
            seat_limits: Default::default(),
        }
    }
}

/// A leased trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The trial's key.
    pub key: String,
    /// The sweep it belongs to.
    pub sweep_id: String,
    /// The lease's fence, presented in every later call.
    pub fence: Fence,
    /// The payload given at submit.
    pub payload: serde_json::Value,
    /// Memory reserved for it, MiB: its `Needs::memory_mib`, raised after an out-of-memory
    /// failure (0 where the queue keeps none).
    #[serde(default)]
    pub memory_mib: u64,
}

/// How a worker reports a finished trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every stage ran through.
    Succeeded,
    /// A stage failed; `retryable` comes from the failure class.
    Failed {
        /// True when trying again may succeed.
        retryable: bool,
    },
    /// The worker stopped it on a cancel order.
    Cancelled,
    /// The licence server refused a seat: not the trial's fault. It is queued again without
    /// spending an attempt (up to [`QueueConfig::max_refusals`]) after a growing backoff, and
    /// the refused feature's seats are held at the count then in use for
    /// [`QueueConfig::seat_hold`].
    Refused,
}

impl Outcome {
    /// The state machine's event for this outcome under `fence`.
    pub fn event(self, fence: Fence) -> crate::job::Event {
        use crate::job::Event;
        match self {
            Outcome::Succeeded => Event::Succeed(fence),
            Outcome::Failed { retryable } => Event::Fail { fence, retryable },
            Outcome::Cancelled => Event::CancelConfirmed(fence),
            Outcome::Refused => Event::Refused(fence),
        }
    }
}

/// What a heartbeat did for each lease presented.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Leases extended.
    pub extended: Vec<String>,
    /// Leases no longer the worker's: kill and discard.
    pub stale: Vec<String>,
    /// Leases an operator cancelled: kill, then complete as cancelled.
    pub cancel: Vec<String>,
}

/// Trials of a sweep per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Waiting.
    pub queued: u64,
    /// Running.
    pub leased: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed for good.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Out of attempts.
    pub dead: u64,
}

impl Counts {
    /// Adds one trial in `state`.
    pub fn add(&mut self, state: TrialState) {
        match state {
            TrialState::Queued => self.queued += 1,
            TrialState::Leased => self.leased += 1,
            TrialState::Succeeded => self.succeeded += 1,
            TrialState::Failed => self.failed += 1,
            TrialState::Cancelled => self.cancelled += 1,
            TrialState::Dead => self.dead += 1,
        }
    }

    /// Trials not yet finished.
    pub fn unfinished(&self) -> u64 {
        self.queued + self.leased
    }

    /// All trials.
    pub fn total(&self) -> u64 {
        self.unfinished() + self.succeeded + self.failed + self.cancelled + self.dead
    }
}

/// Why a queue call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event does not apply (unknown trial, illegal move, stale fence): nothing changed.
    #[error("{0}")]
    Transition(#[from] TransitionError),
    /// No trial has this key.
    #[error("unknown trial {0}")]
    UnknownTrial(String),
    /// No sweep has this id.
    #[error("unknown sweep {0}")]
    UnknownSweep(String),
    /// The backend failed (Redis unreachable, say); the call may or may not have taken effect.
    #[error("queue backend: {0}")]
    Backend(String),
}

/// The queue's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// Leases a trial may spend.
    pub max_attempts: u32,
    /// How long a trial that failed in a retryable way waits before it is leased again.
    pub retry_backoff: Duration,
    /// Licence refusals refunded per trial before a refusal spends an attempt.
    pub max_refusals: u32,
    /// The wait after a trial's first licence refusal, doubled per refusal.
    pub refusal_backoff: Duration,
    /// How long a refused feature's seats stay held at the count in use when it was refused.
    pub seat_hold: Duration,
}

impl QueueConfig {
    /// The state machine's limits.
    pub fn policy(&self) -> crate::job::Policy {
        crate::job::Policy {
            max_attempts: self.max_attempts,
            max_refusals: self.max_refusals,
        }
    }

    /// How long a trial refused a licence seat for the `refusals`-th time waits:
    /// `refusal_backoff` doubled per refusal, at most 10 minutes (the Lua of `complete` keeps
    /// the same rule).
    pub fn refusal_wait(&self, refusals: u32) -> Duration {
        (self.refusal_backoff * 2u32.saturating_pow(refusals.saturating_sub(1).min(16)))
            .min(MAX_REFUSAL_BACKOFF)
    }
}

/// The longest wait after a licence refusal.
pub const MAX_REFUSAL_BACKOFF: Duration = Duration::from_secs(600);

impl Default for QueueConfig {
    fn default() -> QueueConfig {
        QueueConfig {
            lease: Duration::from_secs(5),
            max_attempts: 3,
            retry_backoff: Duration::from_secs(5),
            max_refusals: 10,
            refusal_backoff: Duration::from_secs(30),
            seat_hold: Duration::from_secs(300),
        }
    }
}

/// A trial queue with leases (see the module docs).
pub trait Queue: Send + Sync {
    /// Adds a sweep's trials; trials whose key is already queued or running, or succeeded
    /// (unless `force`), are not added; failed, dead and cancelled ones are queued again in
    /// this sweep (`Retry`), succeeded ones with `force` too (`Rerun`). Returns how many
    /// were added.
    fn submit(
        &self,
        sweep: SweepMeta,
        trials: Vec<NewTrial>,
    ) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Leases up to `max` trials to `worker`: fair across sweeps, longest first within one.
    fn lease(
        &self,
        worker: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Lease>, Error>> + Send;

    /// Extends `worker`'s leases; says which are stale and which are cancelled.
    fn heartbeat(
        &self,
        worker: &str,
        leases: &[(String, Fence)],
    ) -> impl Future<Output = Result<HeartbeatReply, Error>> + Send;

    /// Records a finished trial under its lease; a stale fence is refused.
    fn complete(
        &self,
        key: &str,
        fence: Fence,
        outcome: Outcome,
    ) -> impl Future<Output = Result<TrialState, Error>> + Send;

    /// Gives a leased trial back unrun (no attempt spent).
    fn hand_back(&self, key: &str, fence: Fence) -> impl Future<Output = Result<(), Error>> + Send;

    /// Cancels every unfinished trial of a sweep: queued ones end, running ones are ordered
    /// to stop through heartbeats. Returns how many were touched.
    fn cancel_sweep(&self, sweep_id: &str) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Queues failed, dead and cancelled trials of a sweep again. Returns how many.
    fn retry_sweep(&self, sweep_id: &str) -> impl Future<Output = Result<u64, Error>> + Send;

    /// Queues again (or kills, when out of attempts) the trials whose lease ran out.
    /// Returns how many.
    fn reap_expired(&self) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The sweep's trials per state.
    fn counts(&self, sweep_id: &str) -> impl Future<Output = Result<Counts, Error>> + Send;

    /// The state of one trial.
    fn state(&self, key: &str) -> impl Future<Output = Result<TrialState, Error>> + Send;
}
