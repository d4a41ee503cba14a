//! The Redis queue: the [`Queue`] trait on a real Redis, one Lua script per operation, each
//! one atomic step of the trial state machine (the scripts' shared prelude mirrors
//! `crate::job::state`). Redis is the source of truth: the coordinator holds nothing that a
//! restart would lose. Time for leases is Redis's own (`TIME`), so every coordinator agrees.

use redis::aio::ConnectionManager;
use redis::{Script, ScriptInvocation};

use super::keys::Keys;
use crate::job::{Event, Fence, TransitionError, TrialState};
use crate::queue::{
    Counts, Error, HeartbeatReply, Lease, NewTrial, Outcome, Queue, QueueConfig, SweepMeta,
};

const PRELUDE: &str = include_str!("lua/prelude.lua");

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
}

impl Scripts {
    fn load() -> Scripts {
        Scripts {
            submit: script(include_str!("lua/submit.lua")),
            lease: script(include_str!("lua/lease.lua")),
            heartbeat: script(include_str!("lua/heartbeat.lua")),
            complete: script(include_str!("lua/complete.lua")),
            hand_back: script(include_str!("lua/hand_back.lua")),
            sweep_op: script(include_str!("lua/sweep_op.lua")),
            reap: script(include_str!("lua/reap.lua")),
        }
    }
}

/// Trials sent to Redis per submit script call: large sweeps go in a few round trips.
const SUBMIT_CHUNK: usize = 2000;

/// The queue on Redis (see the module docs).
pub struct RedisQueue {
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
        let connection = ConnectionManager::new(client).await.map_err(backend)?;
        Ok(RedisQueue {
            connection,
            keys: Keys::new(prefix),
            config,
            scripts: Scripts::load(),
        })
    }

    fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut invocation = script.key(self.keys.sweeps());
        invocation.arg(self.keys.base());
        invocation
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.config.lease.as_millis()).unwrap_or(u64::MAX)
    }
}

impl Queue for RedisQueue {
    async fn submit(&self, sweep: SweepMeta, trials: Vec<NewTrial>) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let mut added = 0u64;
        // An empty sweep is still registered.
        let chunks: Vec<&[NewTrial]> = if trials.is_empty() {
            vec![&[]]
        } else {
            trials.chunks(SUBMIT_CHUNK).collect()
        };
        for chunk in chunks {
            let mut invocation = self.invocation(&self.scripts.submit);
            invocation.arg(&sweep.id).arg(sweep.priority.max(1));
            for trial in chunk {
                invocation
                    .arg(&trial.key)
                    .arg(trial.cost)
                    .arg(trial.payload.to_string());
            }
            let n: u64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(backend)?;
            added += n;
        }
        Ok(added)
    }

    async fn lease(&self, worker: &str, max: usize) -> Result<Vec<Lease>, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.lease);
        invocation.arg(worker).arg(max).arg(self.lease_ms());
        let rows: Vec<(String, String, u32, u64, String)> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        rows.into_iter()
            .map(|(key, sweep_id, attempt, epoch, payload)| {
                Ok(Lease {
                    key,
                    sweep_id,
                    fence: Fence { attempt, epoch },
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| Error::Backend(format!("stored payload is not JSON: {e}")))?,
                })
            })
            .collect()
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[(String, Fence)],
    ) -> Result<HeartbeatReply, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.heartbeat);
        invocation.arg(worker).arg(self.lease_ms());
        for (key, fence) in leases {
            invocation.arg(key).arg(fence.attempt).arg(fence.epoch);
        }
        let answers: Vec<String> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(backend)?;
        let mut reply = HeartbeatReply::default();
        for answer in answers {
            match answer.split_once(':') {
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
        Ok(reply)
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        outcome: Outcome,
    ) -> Result<TrialState, Error> {
        let arg = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { retryable: false } => "failed",
            Outcome::Failed { retryable: true } => "failed_retryable",
            Outcome::Cancelled => "cancelled",
        };
        let event = outcome.event(fence);
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.complete);
        invocation
            .arg(key)
            .arg(fence.attempt)
            .arg(fence.epoch)
            .arg(arg)
            .arg(self.config.max_attempts);
        let state: String = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, key, event, Some(fence)))?;
        state.parse().map_err(Error::Backend)
    }

    async fn hand_back(&self, key: &str, fence: Fence) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.hand_back);
        invocation.arg(key).arg(fence.attempt).arg(fence.epoch);
        let _: String = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, key, Event::HandBack(fence), Some(fence)))?;
        Ok(())
    }

    async fn cancel_sweep(&self, sweep_id: &str) -> Result<u64, Error> {
        self.sweep_op(sweep_id, "cancel").await
    }

    async fn retry_sweep(&self, sweep_id: &str) -> Result<u64, Error> {
        self.sweep_op(sweep_id, "retry").await
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
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.sweep_op);
        invocation.arg(sweep_id).arg("counts");
        let c: Vec<u64> = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, sweep_id, Event::Retry, None))?;
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

impl RedisQueue {
    async fn sweep_op(&self, sweep_id: &str, op: &str) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = self.invocation(&self.scripts.sweep_op);
        invocation.arg(sweep_id).arg(op);
        invocation
            .invoke_async(&mut connection)
            .await
            .map_err(|e| refusal(e, sweep_id, Event::Cancel, None))
    }
}
