//! One state machine, three implementations: random event sequences are applied to the
//! transition function (`common/src/job/state.rs`), to the embedded queue, and to the Redis
//! queue's Lua scripts on a real `redis-server`, and after every event the three must agree:
//! the state, the fence a lease hands out, which events are refused and why (a stale fence
//! or an illegal move), what a heartbeat answers and what an operator's call touched
//! (`Rerun` stands for a forced resubmit of the trial). A change to one Lua branch (or to the
//! Rust table) that the others do not share fails this test with the sequence that shows it.
//!
//! `HLSFARM_DIFF_SEED=N` replays one run; `HLSFARM_DIFF_CASES` sets how many sequences.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hlsfarm_common::job::{Event, Fence, Policy, TransitionError, TrialState, TrialStatus};
use hlsfarm_common::queue::embedded::EmbeddedQueue;
use hlsfarm_common::queue::{Error, NewTrial, Outcome, Queue, QueueConfig, SweepMeta};
use hlsfarm_common::store::RedisQueue;
use hlsfarm_tests::{RedisOptions, RedisServer, TestDir};

const KEY: &str = "t";
const SWEEP: &str = "s";

/// The same limits for all three: a lease that is over as soon as it is granted (so
/// "expired" is a reap away), no waits after failures or refusals.
fn config() -> QueueConfig {
    QueueConfig {
        lease: Duration::ZERO,
        max_attempts: 3,
        retry_backoff: Duration::ZERO,
        max_refusals: 2,
        refusal_backoff: Duration::ZERO,
        ..QueueConfig::default()
    }
}

/// The one trial every sequence is about.
fn trial() -> NewTrial {
    NewTrial {
        key: KEY.to_owned(),
        cost: 1.0,
        payload: serde_json::Value::Null,
        needs: Default::default(),
    }
}

/// What an event did, in terms all three can say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A lease with this fence, or none.
    Leased(Option<Fence>),
    /// The event took effect; the trial is now in this state.
    Now(TrialState),
    /// Refused: the fence is stale.
    Stale,
    /// Refused: the event does not apply to the trial's state.
    Illegal,
    /// A heartbeat: extended, told to cancel, or stale.
    Beat(&'static str),
    /// An operator's call touched this many trials.
    Touched(u64),
}

fn refusal(e: &TransitionError) -> Answer {
    match e {
        TransitionError::StaleFence { .. } => Answer::Stale,
        TransitionError::Illegal { .. } => Answer::Illegal,
    }
}

/// The transition function alone: the reference.
fn model(status: &mut TrialStatus, event: Event, policy: Policy) -> Answer {
    let before = *status;
    let result = hlsfarm_common::job::transition(*status, event, policy);
    match event {
        Event::Lease => match result {
            Ok(next) => {
                *status = next;
                Answer::Leased(Some(next.fence()))
            }
            Err(_) => Answer::Leased(None),
        },
        Event::Heartbeat(_) => match result {
            Ok(next) if next.cancel_requested => Answer::Beat("cancel"),
            Ok(_) => Answer::Beat("extended"),
            Err(_) => Answer::Beat("stale"),
        },
        // A forced resubmit: a succeeded trial runs again, a failed, dead or cancelled one
        // is retried, a queued or running one is left alone.
        Event::Rerun => {
            let event = match status.state {
                TrialState::Succeeded => Event::Rerun,
                _ => Event::Retry,
            };
            match hlsfarm_common::job::transition(*status, event, policy) {
                Ok(next) => {
                    *status = next;
                    Answer::Touched(1)
                }
                Err(_) => Answer::Touched(0),
            }
        }
        Event::Cancel | Event::Retry => match result {
            Ok(next) => {
                *status = next;
                Answer::Touched(1)
            }
            Err(_) => Answer::Touched(0),
        },
        Event::LeaseExpired(_) => match result {
            Ok(next) => {
                *status = next;
                Answer::Touched(1)
            }
            Err(_) => Answer::Touched(0),
        },
        _ => match result {
            Ok(next) => {
                *status = next;
                Answer::Now(next.state)
            }
            Err(e) => {
                debug_assert_eq!(*status, before);
                refusal(&e)
            }
        },
    }
}

/// The same event through a queue's API.
async fn apply<Q: Queue>(q: &Q, event: Event) -> Answer {
    let outcome = |r: Result<TrialState, Error>| match r {
        Ok(state) => Answer::Now(state),
        Err(Error::Transition(e)) => refusal(&e),
        Err(e) => panic!("backend error: {e}"),
    };
    match event {
        Event::Lease => Answer::Leased(q.lease("w", 1).await.unwrap().pop().map(|l| l.fence)),
        Event::Heartbeat(f) => {
            let reply = q.heartbeat("w", &[(KEY.to_owned(), f)]).await.unwrap();
            Answer::Beat(if !reply.cancel.is_empty() {
                "cancel"
            } else if !reply.extended.is_empty() {
                "extended"
            } else {
                "stale"
            })
        }
        Event::Succeed(f) => outcome(q.complete(KEY, f, Outcome::Succeeded).await),
        Event::Fail { fence, retryable } => {
            outcome(q.complete(KEY, fence, Outcome::Failed { retryable }).await)
        }
        Event::Refused(f) => outcome(q.complete(KEY, f, Outcome::Refused).await),
        Event::CancelConfirmed(f) => outcome(q.complete(KEY, f, Outcome::Cancelled).await),
        Event::HandBack(f) => match q.hand_back(KEY, f).await {
            Ok(()) => Answer::Now(q.state(KEY).await.unwrap()),
            Err(Error::Transition(e)) => refusal(&e),
            Err(e) => panic!("backend error: {e}"),
        },
        Event::Cancel => Answer::Touched(q.cancel_sweep(SWEEP).await.unwrap()),
        Event::Retry => Answer::Touched(q.retry_sweep(SWEEP).await.unwrap()),
        Event::Rerun => Answer::Touched(
            q.submit(
                SweepMeta {
                    id: SWEEP.to_owned(),
                    priority: 1,
                    force: true,
                },
                vec![trial()],
            )
            .await
            .unwrap(),
        ),
        // Every lease is over as soon as granted: a reap ends it (if the trial is leased).
        Event::LeaseExpired(_) => Answer::Touched(q.reap_expired().await.unwrap()),
    }
}

/// A random event; fenced ones mostly carry the current fence, sometimes a stale one. The
/// state steers the draw so that walks go deep: a queued trial is mostly leased, a leased
/// one mostly gets a worker's event (licence refusals often, so their limit is reached), a
/// finished one mostly retried.
fn event(rng: &mut fastrand::Rng, now: TrialStatus) -> Event {
    let current = now.fence();
    let fence = if rng.u8(..10) < 8 {
        current
    } else {
        Fence {
            attempt: rng.u32(0..4),
            epoch: rng.u64(0..3),
        }
    };
    let any = |rng: &mut fastrand::Rng| match rng.u8(..11) {
        0 | 1 => Event::Lease,
        2 => Event::Heartbeat(fence),
        3 => Event::Succeed(fence),
        4 => Event::Fail {
            fence,
            retryable: rng.bool(),
        },
        5 => Event::LeaseExpired(current),
        6 => Event::HandBack(fence),
        7 => Event::Refused(fence),
        8 => Event::Cancel,
        9 => Event::CancelConfirmed(fence),
        _ => Event::Retry,
    };
    match now.state {
        TrialState::Queued if rng.u8(..10) < 6 => Event::Lease,
        TrialState::Leased => match rng.u8(..12) {
            0..=2 => Event::Refused(fence),
            3 => Event::Fail {
                fence,
                retryable: true,
            },
            4 => Event::LeaseExpired(current),
            _ => any(rng),
        },
        s if s.is_terminal() && rng.u8(..10) < 5 => {
            if rng.bool() {
                Event::Retry
            } else {
                Event::Rerun
            }
        }
        _ => any(rng),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_event_sequences_agree_across_the_table_the_embedded_queue_and_the_lua() {
    let seed = std::env::var("HLSFARM_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let cases: u32 = std::env::var("HLSFARM_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = TestDir::new("state-differential").unwrap();
    let redis = RedisServer::start(dir.path(), RedisOptions::default()).unwrap();
    let policy = config().policy();
    let mut events_run = 0usize;
    for case in 0..cases {
        let embedded = EmbeddedQueue::new(config());
        let lua = RedisQueue::connect(&redis.url(), &format!("diff{case}"), config())
            .await
            .unwrap();
        let sweep = || SweepMeta {
            id: SWEEP.to_owned(),
            priority: 1,
            force: false,
        };
        embedded.submit(sweep(), vec![trial()]).await.unwrap();
        lua.submit(sweep(), vec![trial()]).await.unwrap();
        let mut status = TrialStatus::NEW;
        let mut history: Vec<String> = Vec::new();
        for _ in 0..rng.usize(10..50) {
            let event = event(&mut rng, status);
            let want = model(&mut status, event, policy);
            let got_embedded = apply(&embedded, event).await;
            let got_lua = apply(&lua, event).await;
            history.push(format!("{event:?} -> {want:?}"));
            let states = (
                status.state,
                embedded.state(KEY).await.unwrap(),
                lua.state(KEY).await.unwrap(),
            );
            assert!(
                got_embedded == want
                    && got_lua == want
                    && states.0 == states.1
                    && states.0 == states.2,
                "seed {seed}, case {case}: after {event:?} the table says {want:?} ({:?}), the \
                 embedded queue {got_embedded:?} ({:?}), the Lua {got_lua:?} ({:?}); the \
                 events so far:\n{}",
                states.0,
                states.1,
                states.2,
                history.join("\n")
            );
            events_run += 1;
        }
    }
    println!("state differential: seed {seed}, {cases} sequences, {events_run} events, all agree");
}
