//! The conformance suite every queue backend passes: the same scenarios, run on the embedded
//! queue in this crate's tests and on the Redis queue against a real `redis-server`.
//!
//! Scenarios use real (short) time for leases, so they work for backends whose clock is not
//! the test's. Each returns `Err` naming what went wrong.

use std::future::Future;
use std::time::Duration;

use super::{Error, NewTrial, Outcome, Queue, SweepMeta};
use crate::job::{Fence, TransitionError, TrialState};

type Result = std::result::Result<(), String>;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn trial(key: &str, cost: f64) -> NewTrial {
    NewTrial {
        key: key.to_owned(),
        cost,
        payload: serde_json::json!({ "key": key }),
        needs: Default::default(),
    }
}

fn sweep(id: &str, priority: u32) -> SweepMeta {
    SweepMeta {
        id: id.to_owned(),
        priority,
        force: false,
    }
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Runs every scenario, each on a fresh queue from `make(lease)`.
pub async fn run_all<F, Fut, Q>(make: F) -> Result
where
    F: Fn(Duration) -> Fut,
    Fut: Future<Output = Q>,
    Q: Queue,
{
    let long = Duration::from_secs(60);
    lifecycle_longest_first(&make(long).await)
        .await
        .map_err(|e| format!("lifecycle: {e}"))?;
    duplicate_submit(&make(long).await)
        .await
        .map_err(|e| format!("duplicate submit: {e}"))?;
    failures_and_retry(&make(long).await)
        .await
        .map_err(|e| format!("failures: {e}"))?;
    hand_back(&make(long).await)
        .await
        .map_err(|e| format!("hand back: {e}"))?;
    licence_refusals(&make(long).await)
        .await
        .map_err(|e| format!("licence refusals: {e}"))?;
    fairness(&make(long).await)
        .await
        .map_err(|e| format!("fairness: {e}"))?;
    cancel(&make(long).await)
        .await
        .map_err(|e| format!("cancel: {e}"))?;
    let short = Duration::from_millis(300);
    expiry_and_fencing(&make(short).await)
        .await
        .map_err(|e| format!("expiry: {e}"))?;
    Ok(())
}

/// Submit, lease (longest first), heartbeat, complete; counts follow.
pub async fn lifecycle_longest_first<Q: Queue>(q: &Q) -> Result {
    let added = q
        .submit(
            sweep("s1", 1),
            vec![trial("a", 1.0), trial("b", 5.0), trial("c", 3.0)],
        )
        .await
        .map_err(err)?;
    check!(added == 3, "added {added}, expected 3");
    let leases = q.lease("w1", 2).await.map_err(err)?;
    let keys: Vec<&str> = leases.iter().map(|l| l.key.as_str()).collect();
    check!(
        keys == ["b", "c"],
        "leased {keys:?}, expected the longest first: [b, c]"
    );
    check!(
        leases[0].fence
            == Fence {
                attempt: 1,
                epoch: 0
            },
        "fence {:?}",
        leases[0].fence
    );
    check!(
        leases[0].payload["key"] == "b",
        "payload {}",
        leases[0].payload
    );
    let reply = q
        .heartbeat(
            "w1",
            &[("b".into(), leases[0].fence), ("c".into(), leases[1].fence)],
        )
        .await
        .map_err(err)?;
    check!(
        reply.extended.len() == 2 && reply.stale.is_empty(),
        "heartbeat {reply:?}"
    );
    let state = q
        .complete("b", leases[0].fence, Outcome::Succeeded)
        .await
        .map_err(err)?;
    check!(state == TrialState::Succeeded, "state {state}");
    let counts = q.counts("s1").await.map_err(err)?;
    check!(
        counts.succeeded == 1 && counts.leased == 1 && counts.queued == 1,
        "counts {counts:?}"
    );
    // A result is recorded once: completing again is refused.
    let again = q.complete("b", leases[0].fence, Outcome::Succeeded).await;
    check!(
        matches!(again, Err(Error::Transition(_))),
        "second complete: {again:?}"
    );
    Ok(())
}

/// The same key submitted twice is queued once.
pub async fn duplicate_submit<Q: Queue>(q: &Q) -> Result {
    q.submit(sweep("s1", 1), vec![trial("a", 1.0)])
        .await
        .map_err(err)?;
    let added = q
        .submit(sweep("s1", 1), vec![trial("a", 1.0), trial("b", 1.0)])
        .await
        .map_err(err)?;
    check!(added == 1, "added {added}, expected 1");
    let leases = q.lease("w1", 10).await.map_err(err)?;
    check!(leases.len() == 2, "leased {}", leases.len());
    Ok(())
}

/// Retryable failures requeue until attempts run out (dead); others fail at once; retry
/// brings them back.
pub async fn failures_and_retry<Q: Queue>(q: &Q) -> Result {
    q.submit(sweep("s1", 1), vec![trial("flaky", 2.0), trial("bad", 1.0)])
        .await
        .map_err(err)?;
    for attempt in 1..=3 {
        let leases = q.lease("w1", 1).await.map_err(err)?;
        check!(
            leases.len() == 1 && leases[0].key == "flaky",
            "attempt {attempt}: {leases:?}"
        );
        check!(
            leases[0].fence.attempt == attempt,
            "fence {:?}",
            leases[0].fence
        );
        q.complete(
            "flaky",
            leases[0].fence,
            Outcome::Failed { retryable: true },
        )
        .await
        .map_err(err)?;
    }
    check!(
        q.state("flaky").await.map_err(err)? == TrialState::Dead,
        "not dead after 3 attempts"
    );
    let leases = q.lease("w1", 1).await.map_err(err)?;
    check!(leases.len() == 1 && leases[0].key == "bad", "{leases:?}");
    let state = q
        .complete("bad", leases[0].fence, Outcome::Failed { retryable: false })
        .await
        .map_err(err)?;
    check!(state == TrialState::Failed, "state {state}");
    let requeued = q.retry_sweep("s1").await.map_err(err)?;
    check!(requeued == 2, "retried {requeued}");
    let leases = q.lease("w1", 5).await.map_err(err)?;
    check!(leases.len() == 2, "leased {} after retry", leases.len());
    check!(
        leases
            .iter()
            .all(|l| l.fence.attempt == 1 && l.fence.epoch == 1),
        "{leases:?}"
    );
    Ok(())
}

/// A handed-back trial is queued again without spending an attempt, under a new fence.
pub async fn hand_back<Q: Queue>(q: &Q) -> Result {
    q.submit(sweep("s1", 1), vec![trial("a", 1.0)])
        .await
        .map_err(err)?;
    let first = q.lease("w1", 1).await.map_err(err)?;
    q.hand_back("a", first[0].fence).await.map_err(err)?;
    let second = q.lease("w2", 1).await.map_err(err)?;
    check!(second.len() == 1, "not leased again");
    check!(
        second[0].fence.attempt == 1,
        "attempt spent: {:?}",
        second[0].fence
    );
    check!(
        second[0].fence != first[0].fence,
        "same fence after hand-back"
    );
    let stale = q.complete("a", first[0].fence, Outcome::Succeeded).await;
    check!(
        matches!(
            stale,
            Err(Error::Transition(TransitionError::StaleFence { .. }))
        ),
        "old fence accepted: {stale:?}"
    );
    Ok(())
}

/// A licence refusal is refunded like a hand-back (same attempt, new fence) up to the
/// queue's max refusals (10 in the conformance configs); past them each refusal spends an
/// attempt and the last makes the trial dead. The conformance configs wait no backoff.
pub async fn licence_refusals<Q: Queue>(q: &Q) -> Result {
    q.submit(sweep("s1", 1), vec![trial("a", 1.0)])
        .await
        .map_err(err)?;
    let mut fences = Vec::new();
    for n in 1..=10 {
        let lease = q.lease("w1", 1).await.map_err(err)?;
        check!(lease.len() == 1, "not leased again after refusal {}", n - 1);
        check!(
            lease[0].fence.attempt == 1,
            "refusal {n}: attempt spent: {:?}",
            lease[0].fence
        );
        check!(!fences.contains(&lease[0].fence), "a fence came back");
        fences.push(lease[0].fence);
        let state = q
            .complete("a", lease[0].fence, Outcome::Refused)
            .await
            .map_err(err)?;
        check!(state == TrialState::Queued, "refusal {n}: {state}");
    }
    for attempt in 1..=3 {
        let lease = q.lease("w1", 1).await.map_err(err)?;
        check!(lease.len() == 1, "not leased at attempt {attempt}");
        check!(
            lease[0].fence.attempt == attempt,
            "past the refunds, attempt {} instead of {attempt}",
            lease[0].fence.attempt
        );
        let state = q
            .complete("a", lease[0].fence, Outcome::Refused)
            .await
            .map_err(err)?;
        let want = if attempt == 3 {
            TrialState::Dead
        } else {
            TrialState::Queued
        };
        check!(state == want, "attempt {attempt}: {state}, not {want}");
    }
    let stale = q.complete("a", fences[0], Outcome::Refused).await;
    check!(
        matches!(stale, Err(Error::Transition(_))),
        "an old fence's refusal was accepted: {stale:?}"
    );
    Ok(())
}

/// Sweeps share workers round-robin by priority: a small sweep submitted after a large one
/// is not starved, and priority 3 gets three leases for each one of priority 1.
pub async fn fairness<Q: Queue>(q: &Q) -> Result {
    let big: Vec<NewTrial> = (0..100)
        .map(|i| trial(&format!("big{i:03}"), 1.0))
        .collect();
    q.submit(sweep("big", 1), big).await.map_err(err)?;
    let small: Vec<NewTrial> = (0..10).map(|i| trial(&format!("small{i}"), 1.0)).collect();
    q.submit(sweep("small", 1), small).await.map_err(err)?;
    let mut small_done_at = None;
    for n in 1..=40 {
        let lease = q.lease("w1", 1).await.map_err(err)?;
        check!(lease.len() == 1, "nothing to lease at {n}");
        q.complete(&lease[0].key, lease[0].fence, Outcome::Succeeded)
            .await
            .map_err(err)?;
        if q.counts("small").await.map_err(err)?.unfinished() == 0 && small_done_at.is_none() {
            small_done_at = Some(n);
        }
    }
    check!(
        small_done_at.is_some_and(|n| n <= 21),
        "the 10-trial sweep finished at lease {small_done_at:?}, expected by 21"
    );
    q.submit(
        sweep("heavy", 3),
        (0..40).map(|i| trial(&format!("h{i}"), 1.0)).collect(),
    )
    .await
    .map_err(err)?;
    let mut heavy = 0;
    for _ in 0..40 {
        let lease = q.lease("w1", 1).await.map_err(err)?;
        if lease[0].sweep_id == "heavy" {
            heavy += 1;
        }
        q.complete(&lease[0].key, lease[0].fence, Outcome::Succeeded)
            .await
            .map_err(err)?;
    }
    check!(
        (28..=32).contains(&heavy),
        "priority 3 got {heavy} of 40 leases, expected about 30"
    );
    Ok(())
}

/// Cancel ends queued trials at once and orders running ones to stop through heartbeats.
pub async fn cancel<Q: Queue>(q: &Q) -> Result {
    q.submit(sweep("s1", 1), vec![trial("run", 2.0), trial("wait", 1.0)])
        .await
        .map_err(err)?;
    let lease = q.lease("w1", 1).await.map_err(err)?;
    let touched = q.cancel_sweep("s1").await.map_err(err)?;
    check!(touched == 2, "touched {touched}");
    check!(
        q.state("wait").await.map_err(err)? == TrialState::Cancelled,
        "queued trial not cancelled"
    );
    check!(
        q.state("run").await.map_err(err)? == TrialState::Leased,
        "running trial ended before its worker stopped"
    );
    let reply = q
        .heartbeat("w1", &[("run".into(), lease[0].fence)])
        .await
        .map_err(err)?;
    check!(reply.cancel == ["run"], "heartbeat {reply:?}");
    let state = q
        .complete("run", lease[0].fence, Outcome::Cancelled)
        .await
        .map_err(err)?;
    check!(state == TrialState::Cancelled, "state {state}");
    check!(
        q.lease("w1", 5).await.map_err(err)?.is_empty(),
        "a cancelled trial was leased"
    );
    Ok(())
}

/// An expired lease is queued again for another worker; the old holder's heartbeat and
/// result are refused.
pub async fn expiry_and_fencing<Q: Queue>(q: &Q) -> Result {
    q.submit(sweep("s1", 1), vec![trial("a", 1.0)])
        .await
        .map_err(err)?;
    let old = q.lease("w1", 1).await.map_err(err)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Real time passes; the reaper runs as the coordinator's would.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if q.reap_expired().await.map_err(err)? == 1 {
            break;
        }
        check!(std::time::Instant::now() < deadline, "lease never expired");
    }
    let new = q.lease("w2", 1).await.map_err(err)?;
    check!(new.len() == 1 && new[0].fence.attempt == 2, "{new:?}");
    let reply = q
        .heartbeat("w1", &[("a".into(), old[0].fence)])
        .await
        .map_err(err)?;
    check!(reply.stale == ["a"], "old holder's heartbeat: {reply:?}");
    let late = q.complete("a", old[0].fence, Outcome::Succeeded).await;
    check!(
        matches!(late, Err(Error::Transition(_))),
        "old holder's result accepted: {late:?}"
    );
    let state = q
        .complete("a", new[0].fence, Outcome::Succeeded)
        .await
        .map_err(err)?;
    check!(state == TrialState::Succeeded, "state {state}");
    Ok(())
}
