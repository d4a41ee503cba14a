//! The Redis queue: the [`Queue`] trait on a real Redis, one Lua script per operation, each
//! one atomic step of the trial state machine (the scripts' shared prelude mirrors
//! `crate::job::state`). Redis is the source of truth: the coordinator holds nothing that a
//! restart would lose. Time for leases is Redis's own (`TIME`), so every coordinator agrees.
//!
//! Beyond the trait, the cluster coordinator uses: capability classes, memory/core admission
//! and licence seats at lease time ([`RedisQueue::lease_fitting`]), stage progress and drain
//! orders in heartbeats, result summaries and commit records at completion, the events
//! stream, claims for the work that must happen once (result copies, aggregates), and the
//! snapshot behind `hlsfarm status`.

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};
use serde::{Deserialize, Serialize};

use super::keys::Keys;
use crate::job::{Event, Fence, TransitionError, TrialState};
use crate::queue::{
    Counts, Error, Fit, HeartbeatReply, Lease, NewTrial, Outcome, Queue, QueueConfig, SweepMeta,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");
const SUBMIT: &str = include_str!("lua/submit.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

struct Scripts {
    submit: Script,
    lease: Script,
    heartbeat: Script,
    complete: Script,
    hand_back: Script,
    sweep_op: Script,
    reap: Script,
    claim: Script,
    register: Script,
    trials: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            submit: script(SUBMIT),
            lease: script(include_str!("lua/lease.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            complete: script(include_str!("lua/complete.lua")),
            hand_back: script(include_str!("lua/hand_back.lua")),
            sweep_op: script(include_str!("lua/sweep_op.lua")),
            reap: script(include_str!("lua/reap.lua")),
            claim: script(include_str!("lua/claim.lua")),
            register: script(include_str!("lua/register.lua")),
            trials: script(include_str!("lua/trials.lua")),
        }
    }
}

/// Trials sent to Redis per submit script call; the calls of one submit go in one pipeline.
const SUBMIT_CHUNK: usize = 2000;

/// The queue on Redis (see the module docs).
pub struct RedisQueue {
    client: redis::Client,
    connection: ConnectionManager,
    keys: Keys,
    config: QueueConfig,
    scripts: Scripts,
}

fn backend(e: redis::RedisError) -> Error {
    Error::Backend(e.to_string())
}

/// Turns a script's refusal (`stale:2:0`, `illegal:queued`, `unknown`) into the queue error
/// the embedded backend gives for the same event.
fn refusal(e: redis::RedisError, key: &str, event: Event, presented: Option<Fence>) -> Error {
    let text = e.to_string();
    if let Some(at) = text.find("stale:") {
        let mut parts = text[at + 6..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty());
        let attempt = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let epoch = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        return Error::Transition(TransitionError::StaleFence {
            presented: presented.unwrap_or(Fence {
                attempt: 0,
                epoch: 0,
            }),
            current: Fence { attempt, epoch },
        });
    }
    if let Some(at) = text.find("illegal:") {
        let state = text[at + 8..]
            .split(|c: char| !c.is_ascii_alphabetic())
            .next()
            .and_then(|s| s.parse::<TrialState>().ok())
            .unwrap_or(TrialState::Leased);
        return Error::Transition(TransitionError::Illegal { state, event });
    }
    if text.contains("unknown_sweep") {
        return Error::UnknownSweep(key.to_owned());
    }
    if text.contains("unknown") {
        return Error::UnknownTrial(key.to_owned());
    }
    backend(e)
}

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
}

impl TrialRecord {
    fn from_map(key: &str, map: HashMap<String, String>) -> Option<TrialRecord> {
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
    fn name(self) -> &'static str {
        match self {
            ClaimSet::Finished => "finished",
            ClaimSet::Commits => "commits",
        }
    }
}

impl RedisQueue {
    /// Connects to `url` and uses keys under the hash tag `{prefix}`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        config: QueueConfig,
    ) -> Result<RedisQueue, Error> {
        let client = redis::Client::open(url).map_err(backend)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(6)
            .set_max_delay(std::time::Duration::from_secs(2))
            // A 100k-trial submit is one pipeline of script calls: give it time.
            .set_response_timeout(Some(std::time::Duration::from_secs(60)));
        let connection = ConnectionManager::new_with_config(client.clone(), manager)
            .await
            .map_err(backend)?;
        Ok(RedisQueue {
            client,
            connection,
            keys: Keys::new(prefix),
            config,
            scripts: Scripts::load(),
        })
    }

    /// The queue's settings.
    pub fn config(&self) -> QueueConfig {
        self.config
    }

    /// The key names.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.key(self.keys.sweeps());
        invocation.arg(self.keys.base());
        invocation
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX)
    }

    fn backoff_ms(&self) -> u64 {
        u64::try_from(self.config.retry_backoff.as_millis()).unwrap_or(u64::MAX)
    }

    /// Submits a sweep's trials: a few script calls in one pipeline, however many trials.
    pub async fn submit_sweep(
        &self,
        sweep: &SweepSubmit,
        trials: &[NewTrial],
    ) -> Result<Submitted, Error> {
        let mut connection = self.connection.clone();
        // The script is loaded first, so the pipeline can use EVALSHA throughout.
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(format!("{PRELUDE}\n{SUBMIT}"))
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let chunks: Vec<&[NewTrial]> = if trials.is_empty() {
            vec![&[]]
        } else {
            trials.chunks(SUBMIT_CHUNK).collect()
        };
        let mut pipe = redis::pipe();
        for (i, chunk) in chunks.iter().enumerate() {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(self.scripts.submit.get_hash())
                .arg(1)
                .arg(self.keys.sweeps())
                .arg(self.keys.base())
                .arg(&sweep.id)
                .arg(sweep.priority.max(1))
                .arg(&sweep.name)
                .arg(if sweep.force { "1" } else { "0" })
                .arg(if i == 0 { sweep.plan.as_str() } else { "" });
            for trial in chunk.iter() {
                let payload = if trial.payload.is_null() {
                    String::new()
                } else {
                    trial.payload.to_string()
                };
                cmd.arg(&trial.key)
                    .arg(trial.cost)
                    .arg(payload)
                    .arg(&trial.needs.class)
                    .arg(trial.needs.memory_mib)
                    .arg(trial.needs.cores)
                    .arg(trial.needs.seats.join(","));
            }
        }
        let answers: Vec<(u64, u64)> = pipe.query_async(&mut connection).await.map_err(backend)?;
        Ok(answers
            .into_iter()
            .fold(Submitted::default(), |sum, (added, reused)| Submitted {
                added: sum.added + added,
                reused: sum.reused + reused,
            }))
    }

    /// Leases up to `max` trials that fit `fit` to `worker`.
    pub async fn lease_fitting(
        &self,
        worker: &str,
        max: usize,
        fit: &Fit,
    ) -> Result<Vec<Lease>, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.lease);
        let classes = match &fit.classes {
            None => "*".to_owned(),
            Some(list) if list.is_empty() => ",".to_owned(),
            Some(list) => list.join(","),
        };
        let limits = fit
            .seat_limits
            .iter()
            .map(|(f, n)| format!("{f}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        invocation
            .arg(worker)
            .arg(max)
            .arg(self.lease_ms())
            .arg(fit.memory_mib)
            .arg(fit.cores)
            .arg(classes)
            .arg(limits);
        let rows: Vec<(String, String, u32, u64, String, u64)> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|(key, sweep_id, attempt, epoch, payload, memory_mib)| {
                let payload = if payload.is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&payload)
                        .map_err(|e| Error::Backend(format!("stored payload is not JSON: {e}")))?
                };
                Ok(Lease {
                    key,
                    sweep_id,
                    fence: Fence { attempt, epoch },
                    payload,
                    memory_mib,
                })
            })
            .collect()
    }

    /// Extends `worker`'s leases, records their stage and phase; says which are stale, which
    /// are cancelled, whether the worker should drain, and whether Redis knows the worker
    /// (false after a flush or a failover to a fresh Redis: it must register again).
    pub async fn heartbeat_progress(
        &self,
        worker: &str,
        trials: &[Progress],
    ) -> Result<(HeartbeatReply, bool, bool), Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.heartbeat);
        invocation.arg(worker).arg(self.lease_ms());
        for t in trials {
            invocation
                .arg(&t.key)
                .arg(t.fence.attempt)
                .arg(t.fence.epoch)
                .arg(&t.stage)
                .arg(&t.phase);
        }
        let answers: Vec<String> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        let mut reply = HeartbeatReply::default();
        let mut drain = false;
        let mut registered = true;
        for answer in answers {
            match answer.split_once(':') {
                Some(("d", flag)) => drain = flag == "1",
                Some(("r", flag)) => registered = flag == "1",
                Some(("e", key)) => reply.extended.push(key.to_owned()),
                Some(("c", key)) => reply.cancel.push(key.to_owned()),
                Some((_, key)) => reply.stale.push(key.to_owned()),
                None => {
                    return Err(Error::Backend(format!(
                        "unexpected heartbeat answer `{answer}`"
                    )));
                }
            }
        }
        Ok((reply, drain, registered))
    }

    /// Records a finished attempt under its lease, with its result summary and the store
    /// prefix of its files; a stale fence is refused and changes nothing.
    pub async fn complete_with(
        &self,
        key: &str,
        fence: Fence,
        outcome: Outcome,
        completion: &Completion,
    ) -> Result<TrialState, Error> {
        let arg = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { retryable: false } => "failed",
            Outcome::Failed { retryable: true } => "failed_retryable",
            Outcome::Cancelled => "cancelled",
            Outcome::Refused => "refused",
        };
        let event = outcome.event(fence);
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.complete);
        invocation
            .arg(key)
            .arg(fence.attempt)
            .arg(fence.epoch)
            .arg(arg)
            .arg(self.config.max_attempts)
            .arg(self.backoff_ms())
            .arg(&completion.summary)
            .arg(&completion.prefix)
            .arg(completion.seconds)
            .arg(completion.memory_mib)
            .arg(self.config.max_refusals)
            .arg(self.config.refusal_backoff.as_millis() as u64)
            .arg(self.config.seat_hold.as_millis() as u64)
            .arg(&completion.refused_feature);
        let state: String = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, key, event, Some(fence)))?;
        state.parse().map_err(Error::Backend)
    }

    /// Gives a leased trial back unrun, saying why (for the events stream).
    pub async fn hand_back_with(
        &self,
        key: &str,
        fence: Fence,
        reason: &str,
    ) -> Result<TrialState, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.hand_back);
        invocation
            .arg(key)
            .arg(fence.attempt)
            .arg(fence.epoch)
            .arg(reason);
        let state: String = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, key, Event::HandBack(fence), Some(fence)))?;
        state.parse().map_err(Error::Backend)
    }

    /// Cancels a sweep's unfinished trials, or only `keys` of it: returns (dropped while
    /// queued, ordered to stop while running).
    pub async fn cancel(&self, sweep_id: &str, keys: &[String]) -> Result<(u64, u64), Error> {
        let n = self.sweep_op(sweep_id, "cancel", keys).await?;
        Ok((
            n.first().copied().unwrap_or(0),
            n.get(1).copied().unwrap_or(0),
        ))
    }

    /// Queues a sweep's failed, dead and cancelled trials again, or only `keys` of them.
    pub async fn retry(&self, sweep_id: &str, keys: &[String]) -> Result<u64, Error> {
        let n = self.sweep_op(sweep_id, "retry", keys).await?;
        Ok(n.first().copied().unwrap_or(0))
    }

    async fn sweep_op(&self, sweep_id: &str, op: &str, keys: &[String]) -> Result<Vec<u64>, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.sweep_op);
        invocation.arg(sweep_id).arg(op);
        for key in keys {
            invocation.arg(key);
        }
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, sweep_id, Event::Cancel, None))
    }

    /// Claims up to `max` entries of `set` whose time has come, holding them for `hold`.
    pub async fn claim(
        &self,
        set: ClaimSet,
        max: usize,
        hold: std::time::Duration,
    ) -> Result<Vec<String>, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.claim);
        invocation
            .arg(set.name())
            .arg(max)
            .arg(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX));
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)
    }

    /// Puts a claimed entry back, claimable again after `after` (a step that failed).
    pub async fn defer(
        &self,
        set: ClaimSet,
        member: &str,
        after: std::time::Duration,
    ) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let script = Script::new(
            "local t = redis.call('TIME') \
             local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
             return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])",
        );
        let _: i64 = script
            .key(format!("{}:{}", self.keys.base(), set.name()))
            .arg(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
            .arg(member)
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Marks a claimed entry done.
    pub async fn release(&self, set: ClaimSet, member: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let _: u64 = redis::cmd("ZREM")
            .arg(format!("{}:{}", self.keys.base(), set.name()))
            .arg(member)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Records a worker's capabilities (JSON).
    pub async fn register(&self, worker: &str, capabilities: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.register);
        invocation.arg(worker).arg(capabilities);
        let _: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// The capabilities a worker registered (JSON), if it did.
    pub async fn worker_capabilities(&self, worker: &str) -> Result<Option<String>, Error> {
        let mut connection = self.connection.clone();
        redis::cmd("HGET")
            .arg(self.keys.workers())
            .arg(worker)
            .query_async(&mut connection)
            .await
            .map_err(backend)
    }

    /// Asks a worker to drain (its next heartbeat says so). False when it never registered.
    pub async fn drain(&self, worker: &str) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let known: bool = redis::cmd("HEXISTS")
            .arg(self.keys.workers())
            .arg(worker)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        if known {
            let _: u64 = redis::cmd("SADD")
                .arg(self.keys.drain())
                .arg(worker)
                .query_async(&mut connection)
                .await
                .map_err(backend)?;
        }
        Ok(known)
    }

    /// The stored plan of a sweep (what [`SweepSubmit::plan`] held).
    pub async fn sweep_plan(&self, sweep_id: &str) -> Result<String, Error> {
        let mut connection = self.connection.clone();
        let plan: Option<String> = redis::cmd("HGET")
            .arg(self.keys.sweep(sweep_id))
            .arg("plan")
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        plan.ok_or_else(|| Error::UnknownSweep(sweep_id.to_owned()))
    }

    /// One trial's record.
    pub async fn trial(&self, key: &str) -> Result<TrialRecord, Error> {
        let mut connection = self.connection.clone();
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.trial(key))
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        TrialRecord::from_map(key, map).ok_or_else(|| Error::UnknownTrial(key.to_owned()))
    }

    /// Many trials' records, a thousand per script call.
    async fn trials(&self, keys: &[String]) -> Result<Vec<TrialRecord>, Error> {
        const FIELDS: [&str; 12] = [
            "s", "st", "a", "e", "p", "w", "stg", "ph", "r", "res", "t0", "c",
        ];
        let mut connection = self.connection.clone();
        let mut records = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(1000) {
            let mut invocation = self.invocation(&self.scripts.trials);
            for key in chunk {
                invocation.arg(key);
            }
            let rows: Vec<Vec<Option<String>>> = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(backend)?;
            records.extend(chunk.iter().zip(rows).filter_map(|(key, row)| {
                let map: HashMap<String, String> = FIELDS
                    .iter()
                    .zip(row)
                    .filter_map(|(f, v)| v.map(|v| ((*f).to_owned(), v)))
                    .collect();
                TrialRecord::from_map(key, map)
            }));
        }
        Ok(records)
    }

    /// Every trial of a sweep: its own, then those it shares (reused); the flag says which.
    pub async fn sweep_trials(&self, sweep_id: &str) -> Result<Vec<(TrialRecord, bool)>, Error> {
        let mut connection = self.connection.clone();
        let exists: bool = redis::cmd("EXISTS")
            .arg(self.keys.sweep(sweep_id))
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        if !exists {
            return Err(Error::UnknownSweep(sweep_id.to_owned()));
        }
        let (mut own, mut shared): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("SMEMBERS")
            .arg(self.keys.members(sweep_id))
            .cmd("SMEMBERS")
            .arg(self.keys.reused(sweep_id))
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        own.sort();
        shared.sort();
        let mut out: Vec<(TrialRecord, bool)> = self
            .trials(&own)
            .await?
            .into_iter()
            .map(|r| (r, false))
            .collect();
        out.extend(self.trials(&shared).await?.into_iter().map(|r| (r, true)));
        Ok(out)
    }

    /// One sweep's record.
    pub async fn sweep(&self, sweep_id: &str) -> Result<SweepRecord, Error> {
        self.sweeps(&[sweep_id.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| Error::UnknownSweep(sweep_id.to_owned()))
    }

    async fn sweeps(&self, ids: &[String]) -> Result<Vec<SweepRecord>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.keys.sweep(id));
            pipe.cmd("HGETALL").arg(self.keys.counts(id));
        }
        let maps: Vec<HashMap<String, String>> =
            pipe.query_async(&mut connection).await.map_err(backend)?;
        let mut out = Vec::new();
        for (id, pair) in ids.iter().zip(maps.chunks(2)) {
            let [meta, counts] = pair else { continue };
            if meta.is_empty() {
                continue;
            }
            let n = |s: &str| counts.get(s).and_then(|v| v.parse().ok()).unwrap_or(0);
            let m = |s: &str| meta.get(s).cloned().unwrap_or_default();
            out.push(SweepRecord {
                id: id.clone(),
                name: m("name"),
                priority: m("prio").parse().unwrap_or(1),
                submitted_ms: m("sub").parse().unwrap_or(0),
                counts: Counts {
                    queued: n("queued"),
                    leased: n("leased"),
                    succeeded: n("succeeded"),
                    failed: n("failed"),
                    cancelled: n("cancelled"),
                    dead: n("dead"),
                },
                reused: m("reused").parse().unwrap_or(0),
                seconds_total: m("dsum").parse().unwrap_or(0.0),
                attempts_finished: m("dn").parse().unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// The cluster: the newest `max_sweeps` sweeps (only unfinished ones unless
    /// `include_finished`), workers, leased trials, seats, recent failures.
    pub async fn snapshot(
        &self,
        include_finished: bool,
        max_sweeps: usize,
    ) -> Result<Snapshot, Error> {
        let mut connection = self.connection.clone();
        let last = isize::try_from(max_sweeps).unwrap_or(isize::MAX) - 1;
        #[allow(clippy::type_complexity)]
        let (time, all, active, workers, seen, drain, leased, seats, failures): (
            (i64, i64),
            Vec<String>,
            Vec<String>,
            HashMap<String, String>,
            Vec<(String, i64)>,
            Vec<String>,
            Vec<String>,
            HashMap<String, i64>,
            Vec<String>,
        ) = redis::pipe()
            .cmd("TIME")
            .cmd("ZREVRANGE")
            .arg(self.keys.all_sweeps())
            .arg(0)
            .arg(last)
            .cmd("ZRANGE")
            .arg(self.keys.sweeps())
            .arg(0)
            .arg(-1)
            .cmd("HGETALL")
            .arg(self.keys.workers())
            .cmd("ZRANGE")
            .arg(self.keys.seen())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("SMEMBERS")
            .arg(self.keys.drain())
            .cmd("ZRANGE")
            .arg(self.keys.leases())
            .arg(0)
            .arg(-1)
            .cmd("HGETALL")
            .arg(self.keys.seats())
            .cmd("LRANGE")
            .arg(self.keys.failures())
            .arg(0)
            .arg(19)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let ids: Vec<String> = if include_finished {
            all
        } else {
            let mut ids = active;
            ids.sort();
            ids
        };
        let mut sweeps = self.sweeps(&ids).await?;
        sweeps.sort_by_key(|s| std::cmp::Reverse(s.submitted_ms));
        let seen: HashMap<String, i64> = seen.into_iter().collect();
        let mut workers: Vec<WorkerRecord> = workers
            .into_iter()
            .map(|(id, capabilities)| WorkerRecord {
                seen_ms: seen.get(&id).copied().unwrap_or(0),
                draining: drain.contains(&id),
                id,
                capabilities,
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut failures_unique = failures;
        let mut seen_keys = std::collections::HashSet::new();
        failures_unique.retain(|k| seen_keys.insert(k.clone()));
        Ok(Snapshot {
            now_ms,
            sweeps,
            workers,
            leased: self.trials(&leased).await?,
            seats: seats
                .into_iter()
                .map(|(k, v)| (k, u32::try_from(v.max(0)).unwrap_or(0)))
                .collect(),
            failures: self.trials(&failures_unique).await?,
        })
    }

    /// Forgets workers not seen for `older_than`: their registration and drain order.
    pub async fn forget_workers(&self, older_than: std::time::Duration) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let (secs, micros): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let cutoff = secs * 1000 + micros / 1000
            - i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX / 2);
        let old: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.keys.seen())
            .arg("-inf")
            .arg(cutoff)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        for id in &old {
            let _: () = redis::pipe()
                .cmd("HDEL")
                .arg(self.keys.workers())
                .arg(id)
                .ignore()
                .cmd("ZREM")
                .arg(self.keys.seen())
                .arg(id)
                .ignore()
                .cmd("SREM")
                .arg(self.keys.drain())
                .arg(id)
                .ignore()
                .query_async(&mut connection)
                .await
                .map_err(backend)?;
        }
        Ok(old.len() as u64)
    }

    /// Records capability classes (id -> requirement JSON); ids never change meaning.
    pub async fn put_classes(&self, classes: &BTreeMap<String, String>) -> Result<(), Error> {
        if classes.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.classes());
        for (id, json) in classes {
            cmd.arg(id).arg(json);
        }
        let _: u64 = cmd.query_async(&mut connection).await.map_err(backend)?;
        Ok(())
    }

    /// Every capability class (id -> requirement JSON).
    pub async fn classes(&self) -> Result<HashMap<String, String>, Error> {
        let mut connection = self.connection.clone();
        redis::cmd("HGETALL")
            .arg(self.keys.classes())
            .query_async(&mut connection)
            .await
            .map_err(backend)
    }

    /// Adds an event of the coordinator's own (e.g. `aggregated`) to the stream.
    pub async fn note(&self, kind: &str, sweep: &str, message: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(100_000)
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("s")
            .arg(sweep)
            .arg("m")
            .arg(message)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// A reader of the events stream on its own connection (its reads block).
    pub async fn events(&self) -> Result<EventReader, Error> {
        let connection = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(backend)?;
        Ok(EventReader {
            connection,
            stream: self.keys.events(),
        })
    }

    /// The id of the newest event, or `0-0`.
    pub async fn last_event_id(&self) -> Result<String, Error> {
        let mut connection = self.connection.clone();
        let info: redis::Value = redis::cmd("XREVRANGE")
            .arg(self.keys.events())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        let entries = parse_stream_entries(info);
        Ok(entries
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |e| e.id))
    }
}

/// Reads the events stream from a cursor on.
pub struct EventReader {
    connection: redis::aio::MultiplexedConnection,
    stream: String,
}

impl EventReader {
    /// Events after `cursor` (`0-0` for all kept, `$` for new ones only), waiting up to
    /// `block_ms` for the first.
    pub async fn read(
        &mut self,
        cursor: &str,
        block_ms: u64,
        count: usize,
    ) -> Result<Vec<StreamEvent>, Error> {
        let reply: redis::Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(cursor)
            .query_async(&mut self.connection)
            .await
            .map_err(backend)?;
        // XREAD answers [[stream, entries]] (RESP2), or nil on timeout.
        let entries = match reply {
            redis::Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    redis::Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .flat_map(parse_stream_entries)
                .collect(),
            _ => Vec::new(),
        };
        Ok(entries)
    }
}

fn text(value: &redis::Value) -> String {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

fn parse_stream_entries(value: redis::Value) -> Vec<StreamEvent> {
    let redis::Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let redis::Value::Array(parts) = entry else {
                return None;
            };
            let [id, redis::Value::Array(fields)] = parts.as_slice() else {
                return None;
            };
            let mut event = StreamEvent {
                id: text(id),
                ..StreamEvent::default()
            };
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                let value = text(value);
                match text(name).as_str() {
                    "type" => event.kind = value,
                    "t" => event.trial = value,
                    "s" => event.sweep = value,
                    "st" => event.state = value,
                    "w" => event.worker = value,
                    "m" => event.message = value,
                    _ => {}
                }
            }
            Some(event)
        })
        .collect()
}

impl Queue for RedisQueue {
    async fn submit(&self, sweep: SweepMeta, trials: Vec<NewTrial>) -> Result<u64, Error> {
        let submitted = self
            .submit_sweep(
                &SweepSubmit {
                    id: sweep.id,
                    priority: sweep.priority,
                    ..SweepSubmit::default()
                },
                &trials,
            )
            .await?;
        Ok(submitted.added)
    }

    async fn lease(&self, worker: &str, max: usize) -> Result<Vec<Lease>, Error> {
        self.lease_fitting(worker, max, &Fit::any()).await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[(String, Fence)],
    ) -> Result<HeartbeatReply, Error> {
        let trials: Vec<Progress> = leases
            .iter()
            .map(|(key, fence)| Progress {
                key: key.clone(),
                fence: *fence,
                stage: String::new(),
                phase: String::new(),
            })
            .collect();
        Ok(self.heartbeat_progress(worker, &trials).await?.0)
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        outcome: Outcome,
    ) -> Result<TrialState, Error> {
        self.complete_with(key, fence, outcome, &Completion::default())
            .await
    }

    async fn hand_back(&self, key: &str, fence: Fence) -> Result<(), Error> {
        self.hand_back_with(key, fence, "").await.map(|_| ())
    }

    async fn cancel_sweep(&self, sweep_id: &str) -> Result<u64, Error> {
        let (dropped, stopping) = self.cancel(sweep_id, &[]).await?;
        Ok(dropped + stopping)
    }

    async fn retry_sweep(&self, sweep_id: &str) -> Result<u64, Error> {
        self.retry(sweep_id, &[]).await
    }

    async fn reap_expired(&self) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.reap);
        invocation.arg(self.config.max_attempts);
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)
    }

    async fn counts(&self, sweep_id: &str) -> Result<Counts, Error> {
        let c = self.sweep_op(sweep_id, "counts", &[]).await?;
        let at = |i: usize| c.get(i).copied().unwrap_or(0);
        Ok(Counts {
            queued: at(0),
            leased: at(1),
            succeeded: at(2),
            failed: at(3),
            cancelled: at(4),
            dead: at(5),
        })
    }

    async fn state(&self, key: &str) -> Result<TrialState, Error> {
        let mut connection = self.connection.clone();
        let state: Option<String> = redis::cmd("HGET")
            .arg(self.keys.trial(key))
            .arg("st")
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        state
            .ok_or_else(|| Error::UnknownTrial(key.to_owned()))?
            .parse()
            .map_err(Error::Backend)
    }
}
