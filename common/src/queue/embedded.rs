//! The embedded queue: the whole queue in this process, behind one mutex, for the one-host
//! run. It keeps nothing on disk: a one-host run resumes from the trial results it wrote.
//!
//! Time is `tokio::time::Instant`, so tests can pause and advance it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};

use tokio::time::Instant;

use super::{
    Counts, Error, HeartbeatReply, Lease, NewTrial, Outcome, Queue, QueueConfig, SweepMeta,
};
use crate::job::{Event, Fence, TrialState, TrialStatus, transition};

struct Entry {
    sweep_id: String,
    status: TrialStatus,
    cost: f64,
    payload: serde_json::Value,
    worker: Option<String>,
    deadline: Option<Instant>,
    /// Not leased before this (the backoff after a retryable failure or a licence refusal).
    not_before: Option<Instant>,
}

/// A queued key, ordered by cost (largest first), then by arrival (earliest first).
struct Ready {
    cost: f64,
    seq: u64,
    key: String,
}

impl PartialEq for Ready {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ready {}
impl PartialOrd for Ready {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ready {
    fn cmp(&self, other: &Self) -> Ordering {
        self.cost
            .total_cmp(&other.cost)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

struct SweepQueue {
    priority: u32,
    /// Virtual time: leases granted divided by priority. The sweep with the least goes next.
    vtime: f64,
    ready: BinaryHeap<Ready>,
}

#[derive(Default)]
struct Inner {
    trials: HashMap<String, Entry>,
    sweeps: BTreeMap<String, SweepQueue>,
    seq: u64,
}

/// The in-process queue (see the module docs).
pub struct EmbeddedQueue {
    config: QueueConfig,
    inner: Mutex<Inner>,
}

impl EmbeddedQueue {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> EmbeddedQueue {
        EmbeddedQueue {
            config,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is one
        // assignment after the transition succeeded), so a poisoned lock is still usable.
        crate::sync::lock(&self.inner)
    }
}

impl Inner {
    fn push_ready(&mut self, key: &str) {
        let Some(entry) = self.trials.get(key) else {
            return;
        };
        self.seq += 1;
        let ready = Ready {
            cost: entry.cost,
            seq: self.seq,
            key: key.to_owned(),
        };
        if let Some(sweep) = self.sweeps.get_mut(&entry.sweep_id) {
            sweep.ready.push(ready);
        }
    }

    /// Applies `event` to the trial, and queues it again when it went back to queued.
    fn apply(
        &mut self,
        key: &str,
        event: Event,
        config: &QueueConfig,
    ) -> Result<TrialStatus, Error> {
        let entry = self
            .trials
            .get_mut(key)
            .ok_or_else(|| Error::UnknownTrial(key.to_owned()))?;
        let next = transition(entry.status, event, config.policy())?;
        entry.status = next;
        if next.state != TrialState::Leased {
            entry.worker = None;
            entry.deadline = None;
        }
        if next.state == TrialState::Queued {
            // The same waits as the Redis queue's: a retryable failure waits the retry
            // backoff, a licence refusal a backoff growing with the refusals; the rest none.
            let wait = match event {
                Event::Fail { .. } => config.retry_backoff,
                Event::Refused(_) => config.refusal_wait(next.refusals.max(1)),
                _ => std::time::Duration::ZERO,
            };
            entry.not_before = (!wait.is_zero()).then(|| Instant::now() + wait);
            self.push_ready(key);
        }
        Ok(next)
    }

    /// The active sweep with the least virtual time, dropping stale heap tops on the way.
    /// The next trial to lease: the least-served sweep's costliest queued trial whose
    /// backoff has passed. Entries still waiting out a backoff go back into their heaps.
    fn next_key(&mut self) -> Option<String> {
        let now = Instant::now();
        let mut waiting: Vec<(String, Ready)> = Vec::new();
        let mut found = None;
        while let Some(sweep_id) = self
            .sweeps
            .iter()
            .filter(|(_, s)| !s.ready.is_empty())
            .min_by(|a, b| a.1.vtime.total_cmp(&b.1.vtime))
            .map(|(id, _)| id.clone())
        {
            let Some(ready) = self.sweeps.get_mut(&sweep_id).and_then(|s| s.ready.pop()) else {
                break;
            };
            let Some(entry) = self.trials.get(&ready.key) else {
                continue;
            };
            if entry.status.state != TrialState::Queued || entry.sweep_id != sweep_id {
                continue;
            }
            if entry.not_before.is_some_and(|t| t > now) {
                waiting.push((sweep_id, ready));
                continue;
            }
            if let Some(sweep) = self.sweeps.get_mut(&sweep_id) {
                sweep.vtime += 1.0 / f64::from(sweep.priority.max(1));
            }
            found = Some(ready.key);
            break;
        }
        for (sweep_id, ready) in waiting {
            if let Some(sweep) = self.sweeps.get_mut(&sweep_id) {
                sweep.ready.push(ready);
            }
        }
        found
    }
}

impl Queue for EmbeddedQueue {
    async fn submit(&self, sweep: SweepMeta, trials: Vec<NewTrial>) -> Result<u64, Error> {
        let config = &self.config;
        let mut inner = self.lock();
        // A new sweep starts level with the busiest active one, not with a backlog of credit.
        let start = inner
            .sweeps
            .values()
            .filter(|s| !s.ready.is_empty())
            .map(|s| s.vtime)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.min(v))))
            .unwrap_or(0.0);
        inner
            .sweeps
            .entry(sweep.id.clone())
            .or_insert_with(|| SweepQueue {
                priority: sweep.priority.max(1),
                vtime: start,
                ready: BinaryHeap::new(),
            });
        let mut added = 0;
        for trial in trials {
            match inner.trials.get(&trial.key).map(|e| e.status.state) {
                Some(state) if !state.is_terminal() => continue,
                Some(TrialState::Succeeded) if !sweep.force => continue,
                Some(state) => {
                    // Moved into this sweep first, so it is queued in this sweep's heap.
                    let event = if state == TrialState::Succeeded {
                        Event::Rerun
                    } else {
                        Event::Retry
                    };
                    let entry = inner
                        .trials
                        .get_mut(&trial.key)
                        .ok_or_else(|| Error::UnknownTrial(trial.key.clone()))?;
                    // A refused event leaves the entry as it was.
                    transition(entry.status, event, config.policy())?;
                    entry.sweep_id = sweep.id.clone();
                    entry.payload = trial.payload;
                    entry.cost = trial.cost;
                    inner.apply(&trial.key, event, config)?;
                }
                None => {
                    inner.trials.insert(
                        trial.key.clone(),
                        Entry {
                            sweep_id: sweep.id.clone(),
                            status: TrialStatus::NEW,
                            cost: trial.cost,
                            payload: trial.payload,
                            worker: None,
                            deadline: None,
                            not_before: None,
                        },
                    );
                    inner.push_ready(&trial.key);
                }
            }
            added += 1;
        }
        Ok(added)
    }

    async fn lease(&self, worker: &str, max: usize) -> Result<Vec<Lease>, Error> {
        let config = &self.config;
        let deadline = Instant::now() + self.config.lease;
        let mut inner = self.lock();
        let mut leases = Vec::new();
        while leases.len() < max {
            let Some(key) = inner.next_key() else { break };
            let status = inner.apply(&key, Event::Lease, config)?;
            let entry = inner
                .trials
                .get_mut(&key)
                .ok_or_else(|| Error::UnknownTrial(key.clone()))?;
            entry.worker = Some(worker.to_owned());
            entry.deadline = Some(deadline);
            leases.push(Lease {
                key,
                sweep_id: entry.sweep_id.clone(),
                fence: status.fence(),
                payload: entry.payload.clone(),
                memory_mib: 0,
            });
        }
        Ok(leases)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[(String, Fence)],
    ) -> Result<HeartbeatReply, Error> {
        let config = &self.config;
        let deadline = Instant::now() + self.config.lease;
        let mut inner = self.lock();
        let mut reply = HeartbeatReply::default();
        for (key, fence) in leases {
            let holder_ok = inner
                .trials
                .get(key)
                .is_some_and(|e| e.worker.as_deref() == Some(worker));
            match inner.apply(key, Event::Heartbeat(*fence), config) {
                Ok(status) if holder_ok => {
                    if let Some(entry) = inner.trials.get_mut(key) {
                        entry.deadline = Some(deadline);
                    }
                    if status.cancel_requested {
                        reply.cancel.push(key.clone());
                    } else {
                        reply.extended.push(key.clone());
                    }
                }
                _ => reply.stale.push(key.clone()),
            }
        }
        Ok(reply)
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        outcome: Outcome,
    ) -> Result<TrialState, Error> {
        let event = outcome.event(fence);
        let mut inner = self.lock();
        Ok(inner.apply(key, event, &self.config)?.state)
    }

    async fn hand_back(&self, key: &str, fence: Fence) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.apply(key, Event::HandBack(fence), &self.config)?;
        Ok(())
    }

    async fn cancel_sweep(&self, sweep_id: &str) -> Result<u64, Error> {
        let config = &self.config;
        let mut inner = self.lock();
        if !inner.sweeps.contains_key(sweep_id) {
            return Err(Error::UnknownSweep(sweep_id.to_owned()));
        }
        let keys: Vec<String> = inner
            .trials
            .iter()
            .filter(|(_, e)| e.sweep_id == sweep_id && !e.status.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        // Trials whose cancel is already ordered are not touched again.
        let mut touched = 0;
        for key in &keys {
            if inner.apply(key, Event::Cancel, config).is_ok() {
                touched += 1;
            }
        }
        Ok(touched)
    }

    async fn retry_sweep(&self, sweep_id: &str) -> Result<u64, Error> {
        let config = &self.config;
        let mut inner = self.lock();
        let keys: Vec<String> = inner
            .trials
            .iter()
            .filter(|(_, e)| {
                e.sweep_id == sweep_id
                    && matches!(
                        e.status.state,
                        TrialState::Failed | TrialState::Dead | TrialState::Cancelled
                    )
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            inner.apply(key, Event::Retry, config)?;
        }
        Ok(keys.len() as u64)
    }

    async fn reap_expired(&self) -> Result<u64, Error> {
        let config = &self.config;
        let now = Instant::now();
        let mut inner = self.lock();
        let expired: Vec<(String, Fence)> = inner
            .trials
            .iter()
            .filter(|(_, e)| {
                e.status.state == TrialState::Leased && e.deadline.is_some_and(|d| d <= now)
            })
            .map(|(k, e)| (k.clone(), e.status.fence()))
            .collect();
        for (key, fence) in &expired {
            inner.apply(key, Event::LeaseExpired(*fence), config)?;
        }
        Ok(expired.len() as u64)
    }

    async fn counts(&self, sweep_id: &str) -> Result<Counts, Error> {
        let inner = self.lock();
        if !inner.sweeps.contains_key(sweep_id) {
            return Err(Error::UnknownSweep(sweep_id.to_owned()));
        }
        let mut counts = Counts::default();
        for entry in inner.trials.values().filter(|e| e.sweep_id == sweep_id) {
            counts.add(entry.status.state);
        }
        Ok(counts)
    }

    async fn state(&self, key: &str) -> Result<TrialState, Error> {
        self.lock()
            .trials
            .get(key)
            .map(|e| e.status.state)
            .ok_or_else(|| Error::UnknownTrial(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::queue::conformance;

    fn queue(lease: Duration) -> EmbeddedQueue {
        EmbeddedQueue::new(QueueConfig {
            lease,
            retry_backoff: Duration::ZERO,
            refusal_backoff: Duration::ZERO,
            ..QueueConfig::default()
        })
    }

    /// The shared conformance suite, run on the embedded backend.
    #[tokio::test]
    async fn conformance_suite() {
        conformance::run_all(|lease| async move { queue(lease) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
