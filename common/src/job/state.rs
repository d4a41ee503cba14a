//! The trial state machine: the only code that decides a trial's next state.
//!
//! ```text
//!             lease                 succeed
//!   queued ─────────► leased ───────────────────► succeeded
//!     ▲  ▲              │ fail (not retryable)  ─► failed
//!     │  │              │ fail / expire, no attempts left ─► dead
//!     │  └──────────────┘ fail (retryable) / expire / hand back / licence refused
//!     │                 │ cancel → cancel_requested; worker confirms ─► cancelled
//!     └─ retry ◄── failed | dead | cancelled        queued ── cancel ──► cancelled
//!     └─ rerun ◄── succeeded (a forced resubmit)
//! ```
//!
//! Every event about a leased trial carries the lease's [`Fence`] (attempt, epoch); a fence
//! that is not the current one is rejected and changes nothing, so a worker that lost its lease
//! can neither extend it nor record a result. `succeeded` changes only by a forced resubmit
//! (`Rerun`); the other terminal states only through `Retry`; both bump the epoch so that no
//! token from before stays valid. Every queue backend applies exactly this function (the embedded
//! one calls it; a backend that cannot must mirror it), and the conformance suite in
//! `crate::queue::conformance` runs every backend over the same scenarios.

use serde::{Deserialize, Serialize};

string_enum!(
    /// Where a trial is in its lifecycle.
    TrialState, "trial state", {
        /// Waiting for a worker.
        Queued => "queued",
        /// Held by a worker under a lease.
        Leased => "leased",
        /// Finished; its result is recorded.
        Succeeded => "succeeded",
        /// Finished with a failure that retrying will not fix.
        Failed => "failed",
        /// Stopped by an operator.
        Cancelled => "cancelled",
        /// Failed retryably until its attempts ran out.
        Dead => "dead",
    }
);

impl TrialState {
    /// True for states no worker event leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TrialState::Succeeded | TrialState::Failed | TrialState::Cancelled | TrialState::Dead
        )
    }
}

/// Identifies one lease of a trial: the attempt it was granted for and the trial's epoch then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// The attempt (1-based).
    pub attempt: u32,
    /// The epoch, bumped whenever the trial is queued again outside the attempt count.
    pub epoch: u64,
}

/// A trial's state with the counters the machine keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialStatus {
    /// The state.
    pub state: TrialState,
    /// Attempts spent: leases granted minus those handed back unrun.
    pub attempt: u32,
    /// Bumped by hand-backs and retries, so that older fences never match again.
    pub epoch: u64,
    /// An operator cancelled the trial while it was leased; its worker has not confirmed yet.
    pub cancel_requested: bool,
    /// Licence refusals refunded so far (reset by `Retry`).
    #[serde(default)]
    pub refusals: u32,
}

impl TrialStatus {
    /// A newly submitted trial.
    pub const NEW: TrialStatus = TrialStatus {
        state: TrialState::Queued,
        attempt: 0,
        epoch: 0,
        cancel_requested: false,
        refusals: 0,
    };

    /// The fence of the current lease (meaningful while leased).
    pub fn fence(&self) -> Fence {
        Fence {
            attempt: self.attempt,
            epoch: self.epoch,
        }
    }
}

/// Limits the machine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Leases a trial may spend before a retryable failure makes it dead (≥ 1).
    pub max_attempts: u32,
    /// Licence refusals refunded per trial; past them a refusal spends its attempt.
    pub max_refusals: u32,
}

/// Something that happens to a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A worker leases the trial.
    Lease,
    /// The holder extends its lease.
    Heartbeat(Fence),
    /// The holder reports a result.
    Succeed(Fence),
    /// The holder reports a failure; `retryable` comes from its failure class.
    Fail {
        /// The lease.
        fence: Fence,
        /// True when trying again may succeed (infrastructure, timeout, oom, licence).
        retryable: bool,
    },
    /// The lease ran out without a heartbeat.
    LeaseExpired(Fence),
    /// The holder gives the trial back unrun (draining, no room): no attempt is spent.
    HandBack(Fence),
    /// The holder reports that the licence server refused a seat: not the trial's fault, so
    /// the attempt is refunded (under a new epoch) up to the policy's `max_refusals`; past
    /// them it counts as a retryable failure.
    Refused(Fence),
    /// An operator cancels the trial.
    Cancel,
    /// The holder confirms it stopped a cancelled trial.
    CancelConfirmed(Fence),
    /// An operator queues a failed, dead or cancelled trial again, with fresh attempts (also
    /// what a resubmit of such a trial does).
    Retry,
    /// A forced resubmit (`force`) runs a succeeded trial again, with fresh attempts; its new
    /// result replaces the old when it succeeds. Without `force` a resubmit shares the result.
    Rerun,
}

/// Why an event was refused. Refusals change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The event does not apply to the trial's state.
    #[error("illegal transition: {event:?} in state {state}")]
    Illegal {
        /// The state.
        state: TrialState,
        /// The event.
        event: Event,
    },
    /// The event's fence is not the current lease's.
    #[error(
        "stale lease: attempt {} epoch {} presented, current is attempt {} epoch {}",
        presented.attempt, presented.epoch, current.attempt, current.epoch
    )]
    StaleFence {
        /// The fence presented.
        presented: Fence,
        /// The current lease's fence.
        current: Fence,
    },
}

/// Computes the trial's next status after `event`, or why the event is refused.
pub fn transition(
    status: TrialStatus,
    event: Event,
    policy: Policy,
) -> Result<TrialStatus, TransitionError> {
    use TrialState::*;
    let illegal = Err(TransitionError::Illegal {
        state: status.state,
        event,
    });
    // Every fenced event needs the trial leased under exactly that fence.
    let fenced = |fence: Fence| -> Result<(), TransitionError> {
        if status.state != Leased {
            return Err(TransitionError::Illegal {
                state: status.state,
                event,
            });
        }
        if fence != status.fence() {
            return Err(TransitionError::StaleFence {
                presented: fence,
                current: status.fence(),
            });
        }
        Ok(())
    };
    let to = |state: TrialState| TrialStatus {
        state,
        cancel_requested: false,
        ..status
    };
    // A retryable end of a lease: queue again while attempts remain; a cancel order wins.
    let requeue_or_dead = || {
        if status.cancel_requested {
            to(Cancelled)
        } else if status.attempt >= policy.max_attempts {
            to(Dead)
        } else {
            to(Queued)
        }
    };

    // Queued again unrun: the attempt is refunded and the epoch bumped, so the old fence
    // never matches again.
    let refund = |refusals: u32| TrialStatus {
        state: Queued,
        attempt: status.attempt.saturating_sub(1),
        epoch: status.epoch + 1,
        cancel_requested: false,
        refusals,
    };

    match event {
        Event::Lease => match status.state {
            Queued => Ok(TrialStatus {
                state: Leased,
                attempt: status.attempt + 1,
                ..status
            }),
            _ => illegal,
        },
        Event::Heartbeat(fence) => fenced(fence).map(|()| status),
        Event::Succeed(fence) => fenced(fence).map(|()| to(Succeeded)),
        Event::Fail { fence, retryable } => fenced(fence).map(|()| {
            if retryable {
                requeue_or_dead()
            } else {
                to(Failed)
            }
        }),
        Event::LeaseExpired(fence) => fenced(fence).map(|()| requeue_or_dead()),
        Event::HandBack(fence) => fenced(fence).map(|()| {
            if status.cancel_requested {
                to(Cancelled)
            } else {
                refund(status.refusals)
            }
        }),
        Event::Refused(fence) => fenced(fence).map(|()| {
            if status.cancel_requested {
                to(Cancelled)
            } else if status.refusals < policy.max_refusals {
                refund(status.refusals + 1)
            } else {
                requeue_or_dead()
            }
        }),
        // A cancel already ordered is not ordered again: the repeat changes nothing.
        Event::Cancel => match status.state {
            Queued => Ok(to(Cancelled)),
            Leased if !status.cancel_requested => Ok(TrialStatus {
                cancel_requested: true,
                ..status
            }),
            _ => illegal,
        },
        Event::CancelConfirmed(fence) => fenced(fence).and_then(|()| {
            if status.cancel_requested {
                Ok(to(Cancelled))
            } else {
                illegal
            }
        }),
        Event::Retry | Event::Rerun => match (status.state, event) {
            (Failed | Dead | Cancelled, Event::Retry) | (Succeeded, Event::Rerun) => {
                Ok(TrialStatus {
                    state: Queued,
                    attempt: 0,
                    epoch: status.epoch + 1,
                    cancel_requested: false,
                    refusals: 0,
                })
            }
            _ => illegal,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    const POLICY: Policy = Policy {
        max_attempts: 3,
        max_refusals: 2,
    };

    fn run(events: &[Event]) -> TrialStatus {
        events
            .iter()
            .fold(TrialStatus::NEW, |s, e| transition(s, *e, POLICY).unwrap())
    }

    #[test]
    fn full_lifecycle_succeeds() {
        let f1 = Fence {
            attempt: 1,
            epoch: 0,
        };
        let s = run(&[Event::Lease, Event::Heartbeat(f1), Event::Succeed(f1)]);
        assert_eq!(s.state, TrialState::Succeeded);
        assert_eq!(s.attempt, 1);
    }

    #[test]
    fn expiry_requeues_until_attempts_run_out() {
        let mut s = TrialStatus::NEW;
        for attempt in 1..=3 {
            s = transition(s, Event::Lease, POLICY).unwrap();
            assert_eq!(s.attempt, attempt);
            s = transition(s, Event::LeaseExpired(s.fence()), POLICY).unwrap();
        }
        assert_eq!(s.state, TrialState::Dead);
    }

    #[test]
    fn stale_fences_are_refused() {
        let f1 = Fence {
            attempt: 1,
            epoch: 0,
        };
        let s = run(&[Event::Lease, Event::LeaseExpired(f1), Event::Lease]);
        let err = transition(s, Event::Succeed(f1), POLICY).unwrap_err();
        assert_eq!(
            err,
            TransitionError::StaleFence {
                presented: f1,
                current: Fence {
                    attempt: 2,
                    epoch: 0
                }
            }
        );
    }

    #[test]
    fn hand_back_refunds_the_attempt_but_not_the_fence() {
        let f1 = Fence {
            attempt: 1,
            epoch: 0,
        };
        let s = run(&[Event::Lease, Event::HandBack(f1), Event::Lease]);
        assert_eq!(
            s.fence(),
            Fence {
                attempt: 1,
                epoch: 1
            }
        );
        assert!(transition(s, Event::Heartbeat(f1), POLICY).is_err());
    }

    #[test]
    fn cancel_of_a_running_trial_waits_for_the_worker() {
        let f1 = Fence {
            attempt: 1,
            epoch: 0,
        };
        let s = run(&[Event::Lease, Event::Cancel]);
        assert_eq!(s.state, TrialState::Leased);
        assert!(s.cancel_requested);
        let s = transition(s, Event::CancelConfirmed(f1), POLICY).unwrap();
        assert_eq!(s.state, TrialState::Cancelled);
        // A dead worker's cancelled trial ends cancelled, not queued.
        let s = run(&[Event::Lease, Event::Cancel, Event::LeaseExpired(f1)]);
        assert_eq!(s.state, TrialState::Cancelled);
    }

    #[test]
    fn retry_gives_fresh_attempts_under_a_new_epoch() {
        let f1 = Fence {
            attempt: 1,
            epoch: 0,
        };
        let s = run(&[
            Event::Lease,
            Event::Fail {
                fence: f1,
                retryable: false,
            },
            Event::Retry,
        ]);
        assert_eq!(
            s,
            TrialStatus {
                state: TrialState::Queued,
                attempt: 0,
                epoch: 1,
                cancel_requested: false,
                refusals: 0,
            }
        );
    }

    #[test]
    fn licence_refusals_are_refunded_until_the_policy_says_enough() {
        let mut s = TrialStatus::NEW;
        for refusals in 1..=2 {
            s = transition(s, Event::Lease, POLICY).unwrap();
            assert_eq!(s.attempt, 1);
            let fence = s.fence();
            s = transition(s, Event::Refused(fence), POLICY).unwrap();
            assert_eq!(
                (s.state, s.attempt, s.refusals),
                (TrialState::Queued, 0, refusals)
            );
            assert!(transition(s, Event::Lease, POLICY).unwrap().fence() != fence);
        }
        // The third refusal spends the attempt, like any retryable failure.
        s = transition(s, Event::Lease, POLICY).unwrap();
        s = transition(s, Event::Refused(s.fence()), POLICY).unwrap();
        assert_eq!((s.state, s.attempt), (TrialState::Queued, 1));
    }

    fn any_fence() -> impl Strategy<Value = Fence> {
        (0u32..5, 0u64..3).prop_map(|(attempt, epoch)| Fence { attempt, epoch })
    }

    fn any_event() -> impl Strategy<Value = (Event, bool)> {
        // The bool asks for the current fence instead of the random one, so fenced events
        // are often valid and the walk goes deep.
        let event = prop_oneof![
            Just(Event::Lease),
            any_fence().prop_map(Event::Heartbeat),
            any_fence().prop_map(Event::Succeed),
            (any_fence(), any::<bool>())
                .prop_map(|(fence, retryable)| Event::Fail { fence, retryable }),
            any_fence().prop_map(Event::LeaseExpired),
            any_fence().prop_map(Event::HandBack),
            any_fence().prop_map(Event::Refused),
            Just(Event::Cancel),
            any_fence().prop_map(Event::CancelConfirmed),
            Just(Event::Retry),
            Just(Event::Rerun),
        ];
        (event, proptest::bool::weighted(0.7))
    }

    fn with_fence(event: Event, fence: Fence) -> Event {
        match event {
            Event::Heartbeat(_) => Event::Heartbeat(fence),
            Event::Succeed(_) => Event::Succeed(fence),
            Event::Fail { retryable, .. } => Event::Fail { fence, retryable },
            Event::LeaseExpired(_) => Event::LeaseExpired(fence),
            Event::HandBack(_) => Event::HandBack(fence),
            Event::Refused(_) => Event::Refused(fence),
            Event::CancelConfirmed(_) => Event::CancelConfirmed(fence),
            other => other,
        }
    }

    fn fence_of(event: Event) -> Option<Fence> {
        match event {
            Event::Heartbeat(f)
            | Event::Succeed(f)
            | Event::LeaseExpired(f)
            | Event::HandBack(f)
            | Event::Refused(f)
            | Event::CancelConfirmed(f)
            | Event::Fail { fence: f, .. } => Some(f),
            Event::Lease | Event::Cancel | Event::Retry | Event::Rerun => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Random event sequences never reach an illegal state, stale fences never change
        /// anything, succeeded moves only by Rerun, and other terminal states only by Retry.
        #[test]
        fn random_event_sequences_keep_the_invariants(
            events in proptest::collection::vec(any_event(), 0..60),
            max_attempts in 1u32..5,
            max_refusals in 0u32..3,
        ) {
            let policy = Policy { max_attempts, max_refusals };
            let mut status = TrialStatus::NEW;
            for (event, use_current) in events {
                let event = if use_current { with_fence(event, status.fence()) } else { event };
                match transition(status, event, policy) {
                    Ok(next) => {
                        if status.state == TrialState::Succeeded {
                            prop_assert_eq!(event, Event::Rerun, "succeeded changed by {:?}", event);
                        } else if status.state.is_terminal() {
                            prop_assert_eq!(event, Event::Retry);
                        }
                        if status.state.is_terminal() {
                            prop_assert_eq!(next.state, TrialState::Queued);
                            prop_assert!(next.epoch > status.epoch);
                        }
                        if let Some(fence) = fence_of(event) {
                            prop_assert_eq!(fence, status.fence(), "a stale fence was accepted");
                        }
                        prop_assert!(next.attempt <= max_attempts, "attempt {} past max {}", next.attempt, max_attempts);
                        prop_assert!(next.epoch >= status.epoch, "epoch went backwards");
                        if next.state == TrialState::Leased {
                            prop_assert!(next.attempt >= 1);
                        } else {
                            prop_assert!(!next.cancel_requested, "cancel_requested outside leased");
                        }
                        prop_assert!(next.refusals <= max_refusals, "refusals past the policy");
                        if next.state == TrialState::Dead {
                            prop_assert_eq!(next.attempt, max_attempts);
                        }
                        status = next;
                    }
                    Err(TransitionError::StaleFence { presented, current }) => {
                        prop_assert_ne!(presented, current);
                        prop_assert_eq!(status.state, TrialState::Leased);
                    }
                    Err(TransitionError::Illegal { state, .. }) => {
                        prop_assert_eq!(state, status.state);
                    }
                }
            }
        }
    }
}
