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

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};

use super::keys::Keys;
use crate::job::{Event, Fence, TransitionError, TrialState};
use crate::queue::{
    Counts, Error, Fit, HeartbeatReply, Lease, NewTrial, Outcome, Queue, QueueConfig, SweepMeta,
};

mod claims;
mod estimates;
mod events;
mod reads;
mod records;
mod wakes;

pub use estimates::Reestimate;
pub use events::EventReader;
pub use records::{
    ClaimSet, Completion, Progress, Snapshot, StreamEvent, Submitted, SweepRecord, SweepSubmit,
    TrialRecord, WorkerRecord,
};

const PRELUDE: &str = include_str!("../lua/prelude.lua");
const SUBMIT: &str = include_str!("../lua/submit.lua");

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
    reestimate: Script,
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            submit: script(SUBMIT),
            lease: script(include_str!("../lua/lease.lua")),
            heartbeat: script(include_str!("../lua/heartbeat.lua")),
            complete: script(include_str!("../lua/complete.lua")),
            hand_back: script(include_str!("../lua/hand_back.lua")),
            sweep_op: script(include_str!("../lua/sweep_op.lua")),
            reap: script(include_str!("../lua/reap.lua")),
            claim: script(include_str!("../lua/claim.lua")),
            register: script(include_str!("../lua/register.lua")),
            trials: script(include_str!("../lua/trials.lua")),
            reestimate: script(include_str!("../lua/reestimate.lua")),
        }
    }
}

/// What one lease call found.
#[derive(Debug, Default)]
pub struct LeaseAnswer {
    /// The trials leased.
    pub leases: Vec<Lease>,
    /// Whether any queued trial of the worker's classes was looked at: when none was, no
    /// worker of those classes can lease until a trial is queued.
    pub queued_seen: bool,
    /// Whether a trial was left because this worker is to avoid it (another worker may
    /// take it: the answer says nothing of other workers).
    pub avoided: bool,
    /// When the soonest trial held back by time (retry backoff, avoidance, a seat hold) may
    /// be leased; `None` when none is.
    pub retry_in: Option<std::time::Duration>,
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
        Ok(self.lease_matching(worker, max, fit).await?.leases)
    }

    /// [`RedisQueue::lease_fitting`], with what a call that found nothing says of the queue.
    pub async fn lease_matching(
        &self,
        worker: &str,
        max: usize,
        fit: &Fit,
    ) -> Result<LeaseAnswer, Error> {
        let mut answers = self.lease_batch(&[(worker, max, fit)]).await?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// Leases for several workers in one script call, in the order given (a matching pass's
    /// wave); the seat limits are the first ask's (they are the cluster's).
    pub async fn lease_batch(
        &self,
        asks: &[(&str, usize, &Fit)],
    ) -> Result<Vec<LeaseAnswer>, Error> {
        let Some((_, _, first)) = asks.first() else {
            return Ok(Vec::new());
        };
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.lease);
        let limits = first
            .seat_limits
            .iter()
            .map(|(f, n)| format!("{f}={n}"))
            .collect::<Vec<_>>()
            .join(",");
        invocation.arg(self.lease_ms()).arg(limits);
        for (worker, max, fit) in asks {
            let classes = match &fit.classes {
                None => "*".to_owned(),
                Some(list) if list.is_empty() => ",".to_owned(),
                Some(list) => list.join(","),
            };
            invocation
                .arg(*worker)
                .arg(*max)
                .arg(fit.memory_mib)
                .arg(fit.cores)
                .arg(classes);
        }
        type Row = (String, String, u32, u64, String, u64);
        let answers: Vec<(Vec<Row>, u8, u8, i64)> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        answers
            .into_iter()
            .map(|(rows, seen, personal, wait)| {
                let leases = rows
                    .into_iter()
                    .map(|(key, sweep_id, attempt, epoch, payload, memory_mib)| {
                        let payload = if payload.is_empty() {
                            serde_json::Value::Null
                        } else {
                            serde_json::from_str(&payload).map_err(|e| {
                                Error::Backend(format!("stored payload is not JSON: {e}"))
                            })?
                        };
                        Ok(Lease {
                            key,
                            sweep_id,
                            fence: Fence { attempt, epoch },
                            payload,
                            memory_mib,
                        })
                    })
                    .collect::<Result<Vec<Lease>, Error>>()?;
                Ok(LeaseAnswer {
                    leases,
                    queued_seen: seen == 1,
                    avoided: personal == 1,
                    retry_in: u64::try_from(wait)
                        .ok()
                        .map(std::time::Duration::from_millis),
                })
            })
            .collect()
    }

    /// Ends the leases past their deadline (as [`Queue::reap_expired`]); also says in how
    /// long the soonest lease left expires (`None`: no trial is leased).
    pub async fn reap(&self) -> Result<(u64, Option<std::time::Duration>), Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.reap);
        invocation.arg(self.config.max_attempts);
        let (n, next): (u64, i64) = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok((
            n,
            u64::try_from(next)
                .ok()
                .map(std::time::Duration::from_millis),
        ))
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
            .arg(&completion.refused_feature)
            .arg(completion.avoid_worker_for.as_millis() as u64);
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
}

impl Queue for RedisQueue {
    async fn submit(&self, sweep: SweepMeta, trials: Vec<NewTrial>) -> Result<u64, Error> {
        let submitted = self
            .submit_sweep(
                &SweepSubmit {
                    id: sweep.id,
                    priority: sweep.priority,
                    force: sweep.force,
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
        Ok(self.reap().await?.0)
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
