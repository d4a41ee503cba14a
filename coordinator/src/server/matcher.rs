//! Waiting costs nothing: a worker's lease call that finds no work parks here instead of
//! polling Redis, and one matching pass serves every parked call when work may have
//! appeared: a submit, a trial queued again (completion, hand-back, reap), a seat freed, a
//! funnel's promotion, in this coordinator or in another one sharing the Redis (the wake
//! channel), or when a trial held back by time (retry backoff, avoidance, a seat hold)
//! becomes eligible. A pass leases for the largest parked worker first, and skips a worker
//! that an earlier one of this pass shows cannot lease (no larger in memory, cores or
//! classes); a lease call whose classes were seen empty since the last wake parks without
//! asking Redis at all. Every 30 s a pass runs regardless, in case a wake was lost.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hlsfarm_common::plan::{Requirement, WorkerCaps};
use hlsfarm_common::queue::{Fit, Lease};
use hlsfarm_common::store::LeaseAnswer;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::{Coordinator, Error, lock};

/// A pass runs at least this often while calls are parked, wakes or not.
const SAFETY_PASS: Duration = Duration::from_secs(30);

/// The most parked calls one script call leases for.
const MAX_WAVE: usize = 256;

/// What a parked lease call asks for.
#[derive(Debug, Clone)]
pub(super) struct Ask {
    pub(super) worker: String,
    pub(super) caps: WorkerCaps,
    /// The capability classes the worker serves, sorted (computed again by each pass: a
    /// sweep may bring a class).
    pub(super) served: Vec<String>,
    pub(super) max: usize,
    pub(super) memory_mib: u64,
    pub(super) cores: u32,
}

impl Ask {
    /// Whether `self` can lease nothing that `other`, which leased nothing, could not.
    fn dominated_by(&self, other: &Ask) -> bool {
        self.memory_mib <= other.memory_mib
            && self.cores <= other.cores
            && self
                .served
                .iter()
                .all(|c| other.served.binary_search(c).is_ok())
    }
}

struct Parked {
    id: u64,
    ask: Ask,
    deadline: Instant,
    tx: oneshot::Sender<Vec<Lease>>,
}

/// The parked lease calls and what passes learnt about the queue since the last wake.
pub(super) struct Matcher {
    parked: Mutex<Vec<Parked>>,
    next_id: AtomicU64,
    /// Counts wakes: a fact learnt at one epoch holds until the next.
    epoch: AtomicU64,
    kick: Notify,
    /// The soonest due time moved: the loop sets its timer again (no pass).
    retimer: Notify,
    /// Class sets that had no queued trial at all, with the epoch when that was seen.
    empty: Mutex<HashMap<Vec<String>, u64>>,
    /// When the soonest trial held back by time may be leased.
    due: Mutex<Option<Instant>>,
}

/// A parked call's place in the matcher; leaving it (the call answered, timed out or
/// dropped with its client) unparks the call.
pub(super) struct Place<'a> {
    matcher: &'a Matcher,
    id: u64,
    rx: oneshot::Receiver<Vec<Lease>>,
}

impl Place<'_> {
    /// Waits until a pass leases for this call, `deadline`, or `stop`.
    pub(super) async fn wait(
        mut self,
        deadline: Instant,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<Lease> {
        tokio::select! {
            leases = &mut self.rx => return leases.unwrap_or_default(),
            _ = tokio::time::sleep_until(deadline) => {}
            _ = stop.cancelled() => {}
        }
        if self.matcher.unpark(self.id) {
            return Vec::new();
        }
        // A pass holds this call right now: it answers with leases, or hangs up on seeing
        // the deadline passed. A lease sent after this call gave up is handed back.
        tokio::time::timeout(Duration::from_secs(2), &mut self.rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.matcher.unpark(self.id);
    }
}

impl Matcher {
    pub(super) fn new() -> Matcher {
        Matcher {
            parked: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            kick: Notify::new(),
            retimer: Notify::new(),
            empty: Mutex::new(HashMap::new()),
            due: Mutex::new(None),
        }
    }

    /// The current epoch (read before a lease attempt, to learn from its answer).
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Work may have appeared: what was learnt no longer holds, and a pass runs.
    pub(super) fn wake(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.kick.notify_one();
    }

    /// Whether `served` was seen without any queued trial since the last wake.
    pub(super) fn known_empty(&self, served: &[String], epoch: u64) -> bool {
        lock(&self.empty).get(served) == Some(&epoch) && epoch == self.epoch()
    }

    /// Keeps what an answer that leased nothing says of the queue.
    pub(super) fn learn(&self, served: &[String], epoch: u64, answer: &LeaseAnswer) {
        if !answer.queued_seen {
            let mut empty = lock(&self.empty);
            if empty.len() > 1024 {
                empty.clear();
            }
            empty.insert(served.to_vec(), epoch);
        }
        if let Some(after) = answer.retry_in {
            let at = Instant::now() + after.max(Duration::from_millis(20));
            let mut due = lock(&self.due);
            if due.is_none_or(|d| at < d) {
                *due = Some(at);
                self.retimer.notify_one();
            }
        }
    }

    /// Parks a lease call until `deadline`. The caller read `epoch` before its own attempt:
    /// a wake since then gets a pass at once.
    pub(super) fn park(&self, ask: Ask, deadline: Instant, epoch: u64) -> Place<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.parked).push(Parked {
            id,
            ask,
            deadline,
            tx,
        });
        if self.epoch() != epoch {
            self.kick.notify_one();
        }
        Place {
            matcher: self,
            id,
            rx,
        }
    }

    /// Removes a parked call; false when a pass holds it.
    fn unpark(&self, id: u64) -> bool {
        let mut parked = lock(&self.parked);
        match parked.iter().position(|p| p.id == id) {
            Some(i) => {
                parked.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn take(&self, id: u64) -> Option<Parked> {
        let mut parked = lock(&self.parked);
        let i = parked.iter().position(|p| p.id == id)?;
        Some(parked.swap_remove(i))
    }

    /// How many lease calls are parked.
    pub(super) fn parked(&self) -> usize {
        lock(&self.parked).len()
    }
}

impl Coordinator {
    /// Runs matching passes until the coordinator stops.
    pub(super) async fn match_loop(&self) {
        let m = &self.matcher;
        let mut last_full = Instant::now();
        loop {
            let due = *lock(&m.due);
            let safety = (m.parked() > 0).then(|| last_full + SAFETY_PASS);
            let next = match (due, safety) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timer = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = m.retimer.notified() => continue,
                _ = m.kick.notified() => {}
                _ = timer => {}
            }
            let now = Instant::now();
            if lock(&m.due).is_some_and(|d| d <= now) {
                *lock(&m.due) = None;
                // Time made trials eligible: what was learnt may be out of date.
                m.epoch.fetch_add(1, Ordering::SeqCst);
            }
            if now >= last_full + SAFETY_PASS {
                last_full = now;
                m.epoch.fetch_add(1, Ordering::SeqCst);
            }
            self.match_pass().await;
        }
        // Stopping: every parked call ends empty.
        lock(&m.parked).clear();
    }

    /// One pass over the parked calls, largest worker first.
    async fn match_pass(&self) {
        let m = &self.matcher;
        let epoch = m.epoch();
        let classes = match self.classes().await {
            Ok(c) => c,
            Err(status) => {
                tracing::warn!(error = %status, "matching parked leases: Redis unreachable; retrying in 1 s");
                *lock(&m.due) = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        };
        let mut order: Vec<(u64, Ask)> = lock(&m.parked)
            .iter()
            .map(|p| {
                let mut ask = p.ask.clone();
                ask.served = served(&classes, &ask.caps);
                (p.id, ask)
            })
            .collect();
        order.sort_by(|(_, a), (_, b)| {
            (b.memory_mib, b.cores, b.served.len()).cmp(&(a.memory_mib, a.cores, a.served.len()))
        });
        let mut fruitless: Vec<Ask> = Vec::new();
        let mut order = order.into_iter();
        // Waves of parked calls leased for in one script call: one first (an empty queue
        // costs one small script), then twice as many after each wave that leased, up to
        // MAX_WAVE.
        let mut wave_size = 1;
        loop {
            let mut wave = Vec::new();
            for (id, ask) in order.by_ref() {
                if fruitless.iter().any(|f| ask.dominated_by(f))
                    || m.known_empty(&ask.served, epoch)
                {
                    continue;
                }
                if let Some(parked) = m.take(id) {
                    wave.push((parked, ask));
                    if wave.len() == wave_size {
                        break;
                    }
                }
            }
            if wave.is_empty() {
                return;
            }
            let answers = match self.lease_wave(&wave).await {
                Ok(answers) => answers,
                Err(status) => {
                    tracing::warn!(error = %status, "matching parked leases: Redis unreachable; retrying in 1 s");
                    lock(&m.parked).extend(wave.into_iter().map(|(parked, _)| parked));
                    *lock(&m.due) = Some(Instant::now() + Duration::from_secs(1));
                    return;
                }
            };
            let mut leased_any = false;
            for ((parked, ask), answer) in wave.into_iter().zip(answers) {
                if !answer.leases.is_empty() {
                    leased_any = true;
                    if let Err(leases) = parked.tx.send(answer.leases) {
                        // The worker hung up meanwhile: nobody runs these.
                        self.give_back(&ask.worker, leases).await;
                    }
                    continue;
                }
                m.learn(&ask.served, epoch, &answer);
                if !answer.avoided {
                    fruitless.push(ask);
                }
                if parked.deadline <= Instant::now() || parked.tx.is_closed() {
                    // Given up while this pass held it: dropping the sender answers it.
                    continue;
                }
                lock(&m.parked).push(parked);
            }
            if leased_any {
                wave_size = (wave_size * 2).min(MAX_WAVE);
            }
        }
    }

    /// One script call leasing for every call of a wave, in order.
    async fn lease_wave(&self, wave: &[(Parked, Ask)]) -> Result<Vec<LeaseAnswer>, Error> {
        let fits: Vec<Fit> = wave.iter().map(|(_, ask)| self.fit(ask)).collect();
        let asks: Vec<(&str, usize, &Fit)> = wave
            .iter()
            .zip(&fits)
            .map(|((_, ask), fit)| (ask.worker.as_str(), ask.max, fit))
            .collect();
        let answers = self
            .queue
            .lease_batch(&asks)
            .await
            .map_err(Error::backend)?;
        if answers.len() != wave.len() {
            return Err(Error::Internal(format!(
                "the lease script answered {} of {} workers",
                answers.len(),
                wave.len()
            )));
        }
        Ok(answers)
    }

    fn fit(&self, ask: &Ask) -> Fit {
        Fit {
            classes: Some(ask.served.clone()),
            memory_mib: ask.memory_mib,
            cores: ask.cores,
            seat_limits: self.config.coordinator.seats.clone(),
        }
    }

    /// One lease attempt for `ask`.
    pub(super) async fn lease_for(&self, ask: &Ask) -> Result<LeaseAnswer, Error> {
        let fit = self.fit(ask);
        self.queue
            .lease_matching(&ask.worker, ask.max, &fit)
            .await
            .map_err(Error::backend)
    }

    /// Hands back leases nobody will run (their lease call ended before they reached it).
    async fn give_back(&self, worker: &str, leases: Vec<Lease>) {
        for lease in leases {
            match self
                .queue
                .hand_back_with(&lease.key, lease.fence, "the lease call ended first")
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(trial = %&lease.key[..12], worker, error = %e, "cannot hand back an unsent lease; it is queued again when its lease expires");
                }
            }
        }
        self.wake().await;
    }

    /// Work may have appeared (a trial queued, a seat or a lease freed): parked lease calls
    /// here and in every coordinator sharing the Redis are matched again, and the claims
    /// loops look for commits and aggregates.
    pub(super) async fn wake(&self) {
        self.woken();
        if let Err(e) = self.queue.publish_wake(&self.instance).await {
            tracing::warn!(error = %e, "cannot tell other coordinators of new work (the wake channel); they find it within 30 s");
        }
    }

    fn woken(&self) {
        // A sweep may have brought a new capability class.
        lock(&self.classes).0 = std::time::Instant::now() - Duration::from_secs(3600);
        self.matcher.wake();
        self.claims.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Listens on the wake channel until the coordinator stops; reconnects when the
    /// connection is lost, and counts a new subscription as a wake (messages sent while it
    /// was gone are lost).
    pub(super) async fn listen_for_wakes(&self) {
        use tokio_stream::StreamExt;
        let mut wait = Duration::from_millis(200);
        loop {
            let stream = tokio::select! {
                _ = self.stop.cancelled() => return,
                s = self.queue.wakes() => s,
            };
            match stream {
                Ok(stream) => {
                    wait = Duration::from_millis(200);
                    self.woken();
                    let mut stream = std::pin::pin!(stream);
                    loop {
                        let from = tokio::select! {
                            _ = self.stop.cancelled() => return,
                            from = stream.next() => from,
                        };
                        match from {
                            Some(from) if from == self.instance => {}
                            Some(_) => self.woken(),
                            None => break,
                        }
                    }
                    tracing::warn!("the wake channel's connection closed; subscribing again");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to the wake channel; retrying");
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
}

/// The classes of `classes` that `caps` serves, sorted.
pub(super) fn served(classes: &HashMap<String, Requirement>, caps: &WorkerCaps) -> Vec<String> {
    let set: BTreeSet<&String> = classes
        .iter()
        .filter(|(_, req)| req.served_by(caps))
        .map(|(id, _)| id)
        .collect();
    set.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(memory_mib: u64, cores: u32, served: &[&str]) -> Ask {
        Ask {
            worker: "w".into(),
            caps: WorkerCaps::default(),
            served: served.iter().map(|s| (*s).to_owned()).collect(),
            max: 1,
            memory_mib,
            cores,
        }
    }

    #[test]
    fn a_smaller_worker_of_fewer_classes_is_dominated() {
        let big = ask(64_000, 16, &["a", "b"]);
        assert!(ask(32_000, 8, &["a"]).dominated_by(&big));
        assert!(ask(64_000, 16, &["a", "b"]).dominated_by(&big));
        assert!(!ask(65_000, 8, &["a"]).dominated_by(&big), "more memory");
        assert!(!ask(32_000, 17, &["a"]).dominated_by(&big), "more cores");
        assert!(!ask(32_000, 8, &["c"]).dominated_by(&big), "another class");
    }

    #[test]
    fn an_empty_class_set_is_known_only_until_the_next_wake() {
        let m = Matcher::new();
        let served = vec!["a".to_owned()];
        let epoch = m.epoch();
        assert!(!m.known_empty(&served, epoch));
        m.learn(&served, epoch, &LeaseAnswer::default());
        assert!(m.known_empty(&served, epoch));
        assert!(!m.known_empty(&["b".to_owned()], epoch));
        m.wake();
        assert!(!m.known_empty(&served, m.epoch()));
        // A queue with trials held back is not empty, and is looked at again in time.
        let held = LeaseAnswer {
            queued_seen: true,
            retry_in: Some(Duration::from_secs(3)),
            ..LeaseAnswer::default()
        };
        m.learn(&served, m.epoch(), &held);
        assert!(!m.known_empty(&served, m.epoch()));
        assert!(lock(&m.due).is_some());
    }

    #[tokio::test]
    async fn a_parked_call_that_times_out_leaves_no_trace() {
        let m = Matcher::new();
        let stop = tokio_util::sync::CancellationToken::new();
        let place = m.park(ask(1, 1, &["a"]), Instant::now(), m.epoch());
        assert_eq!(m.parked(), 1);
        assert!(place.wait(Instant::now(), &stop).await.is_empty());
        assert_eq!(m.parked(), 0);
        let place = m.park(ask(1, 1, &["a"]), Instant::now(), m.epoch());
        drop(place);
        assert_eq!(
            m.parked(),
            0,
            "a dropped call (its client gone) is unparked"
        );
    }
}
