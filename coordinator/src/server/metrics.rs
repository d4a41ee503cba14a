//! Prometheus metrics (`GET /metrics`, all named `hlsfarm_*`).
//!
//! Three sources, so the figures survive a coordinator restart where they can:
//! - the cluster's state, read from Redis at each scrape: trials per sweep and state, seats,
//!   workers alive and draining;
//! - the Redis events stream, tailed by every coordinator: leases granted and expired,
//!   completions, and the recovery time from a lease's deadline to the trial's next lease;
//! - this process's own work: stage durations from accepted results, bytes stored and store
//!   errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hlsfarm_common::sync::lock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::Coordinator;
use crate::view::StatusJson;

/// A sweep and a trial state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SweepState {
    sweep: String,
    state: String,
}

/// A stage.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StageLabel {
    pub(super) stage: String,
}

/// How a trial ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

/// A licence feature (stage).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Feature {
    feature: String,
}

/// Who wrote to the store: `coordinator` (model uploads, commits) or `worker` (results and
/// tarballs, as the workers report them).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct Writer {
    pub(super) by: String,
}

fn stage_histogram() -> Histogram {
    // 0.1 s to about 2 days.
    Histogram::new(exponential_buckets(0.1, 2.0, 21))
}

/// The coordinator's metrics.
pub(super) struct Metrics {
    registry: Registry,
    leases_granted: Counter,
    leases_expired: Counter,
    completed: Family<Outcome, Counter>,
    recovery: Histogram,
    /// Seconds per stage, from accepted results.
    pub(super) stage_seconds: Family<StageLabel, Histogram, fn() -> Histogram>,
    /// Bytes written to the store.
    pub(super) store_bytes: Family<Writer, Counter>,
    /// Store writes that failed (past their retries).
    pub(super) store_errors: Family<Writer, Counter>,
    trials: Family<SweepState, Gauge>,
    seats_in_use: Family<Feature, Gauge>,
    seats_limit: Family<Feature, Gauge>,
    workers_alive: Gauge,
    workers_draining: Gauge,
    trials_running: Gauge,
    /// Deadline (ms) of each trial whose lease expired and that waits for its next lease.
    expired: Mutex<HashMap<String, i64>>,
    /// One scrape at a time (a scrape clears and refills the gauges).
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hlsfarm");
        let m = Metrics {
            leases_granted: Counter::default(),
            leases_expired: Counter::default(),
            completed: Family::default(),
            // 50 ms to about 14 minutes.
            recovery: Histogram::new(exponential_buckets(0.05, 2.0, 15)),
            stage_seconds: Family::new_with_constructor(stage_histogram),
            store_bytes: Family::default(),
            store_errors: Family::default(),
            trials: Family::default(),
            seats_in_use: Family::default(),
            seats_limit: Family::default(),
            workers_alive: Gauge::default(),
            workers_draining: Gauge::default(),
            trials_running: Gauge::default(),
            expired: Mutex::new(HashMap::new()),
            scrape: tokio::sync::Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "trials",
            "Trials per sweep and state (reused: results taken from identical earlier trials)",
            m.trials.clone(),
        );
        registry.register(
            "trials_running",
            "Trials leased to workers now",
            m.trials_running.clone(),
        );
        registry.register(
            "leases_granted",
            "Leases granted (cluster-wide, from the events stream since this coordinator started)",
            m.leases_granted.clone(),
        );
        registry.register(
            "leases_expired",
            "Leases that expired because their worker went silent",
            m.leases_expired.clone(),
        );
        registry.register(
            "trials_completed",
            "Attempts ended, by the trial's state after it",
            m.completed.clone(),
        );
        registry.register(
            "recovery_seconds",
            "From a lease's deadline passing to the trial's next lease",
            m.recovery.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Wall time of each stage, from accepted results",
            m.stage_seconds.clone(),
        );
        registry.register(
            "seats_in_use",
            "Licence seats held, per feature",
            m.seats_in_use.clone(),
        );
        registry.register(
            "seats_limit",
            "Licence seat limit per feature (0: unlimited)",
            m.seats_limit.clone(),
        );
        registry.register(
            "workers_alive",
            "Workers heard from within three lease periods",
            m.workers_alive.clone(),
        );
        registry.register(
            "workers_draining",
            "Workers draining",
            m.workers_draining.clone(),
        );
        registry.register(
            "store_upload_bytes",
            "Bytes written to the store: by the coordinator (models, commits) and by workers (results, tarballs)",
            m.store_bytes.clone(),
        );
        registry.register(
            "store_upload_errors",
            "Store writes that failed past their retries",
            m.store_errors.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts one event from the stream.
    fn observe(&self, kind: &str, trial: &str, state: &str, message: &str, time_ms: i64) {
        match kind {
            "leased" => {
                self.leases_granted.inc();
                let deadline = lock(&self.expired).remove(trial);
                if let Some(deadline) = deadline {
                    self.recovery
                        .observe((time_ms - deadline).max(0) as f64 / 1000.0);
                }
            }
            "expired" => {
                self.leases_expired.inc();
                if state == "queued" {
                    let deadline = message
                        .rsplit(' ')
                        .next()
                        .and_then(|d| d.parse::<i64>().ok())
                        .unwrap_or(time_ms);
                    let mut expired = lock(&self.expired);
                    if expired.len() < 100_000 {
                        expired.insert(trial.to_owned(), deadline);
                    }
                }
            }
            "completed" => {
                self.completed
                    .get_or_create(&Outcome {
                        outcome: state.to_owned(),
                    })
                    .inc();
                lock(&self.expired).remove(trial);
            }
            _ => {}
        }
    }

    /// The text exposition, with the state gauges refreshed from `status`.
    pub(super) async fn render(&self, status: &StatusJson, lease_ms: u64) -> String {
        let _one = self.scrape.lock().await;
        self.trials.clear();
        for s in &status.sweeps {
            for (state, n) in &s.counts {
                self.trials
                    .get_or_create(&SweepState {
                        sweep: s.id.clone(),
                        state: state.clone(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        self.seats_in_use.clear();
        self.seats_limit.clear();
        for seat in &status.seats {
            let f = Feature {
                feature: seat.feature.clone(),
            };
            self.seats_in_use
                .get_or_create(&f)
                .set(i64::from(seat.in_use));
            self.seats_limit
                .get_or_create(&f)
                .set(i64::from(seat.limit));
        }
        let alive_s = 3.0 * lease_ms as f64 / 1000.0;
        let count = |f: &dyn Fn(&crate::view::WorkerJson) -> bool| {
            i64::try_from(status.workers.iter().filter(|w| f(w)).count()).unwrap_or(0)
        };
        self.workers_alive
            .set(count(&|w| w.heartbeat_age_seconds <= alive_s));
        self.workers_draining.set(count(&|w| w.draining));
        self.trials_running.set(
            i64::try_from(status.workers.iter().map(|w| w.trials.len()).sum::<usize>())
                .unwrap_or(0),
        );
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Tails the events stream into the metrics until `stop`.
pub(super) async fn tail_events(c: Arc<Coordinator>, stop: CancellationToken) {
    let mut cursor = String::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut reader = match c.queue.events().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: cannot read events yet");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if cursor.is_empty() {
            cursor = match c.queue.last_event_id().await {
                Ok(id) => id,
                Err(_) => continue,
            };
        }
        loop {
            let events = tokio::select! {
                _ = stop.cancelled() => return,
                events = reader.read(&cursor, 5000, 1000) => events,
            };
            match events {
                Ok(events) => {
                    for e in events {
                        c.metrics
                            .observe(&e.kind, &e.trial, &e.state, &e.message, e.time_ms());
                        cursor = e.id;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: events stream unreadable; reconnecting");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    break;
                }
            }
        }
    }
}
