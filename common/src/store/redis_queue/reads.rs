//! Reading the queue for status, results and planning: trials, sweeps, the snapshot behind
//! `hlsfarm status`, stored plans and capability classes.

use std::collections::{BTreeMap, HashMap};

use crate::queue::Counts;
use crate::queue::Error;

use super::records::{Snapshot, SweepRecord, TrialRecord, WorkerRecord};
use super::{RedisQueue, backend};

impl RedisQueue {
    /// The stored plan of a sweep (what [`super::SweepSubmit::plan`] held).
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
    pub(super) async fn trials(&self, keys: &[String]) -> Result<Vec<TrialRecord>, Error> {
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

    pub(super) async fn sweeps(&self, ids: &[String]) -> Result<Vec<SweepRecord>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut connection = self.connection.clone();
        // One transaction: counts read before a funnel queues its next phase and a pending
        // flag read after it (the submit clears it) would say the sweep had finished.
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ZMSCORE").arg(self.keys.finished()).arg(ids);
        for id in ids {
            pipe.cmd("HGETALL").arg(self.keys.sweep(id));
            pipe.cmd("HGETALL").arg(self.keys.counts(id));
        }
        let mut values: Vec<redis::Value> =
            pipe.query_async(&mut connection).await.map_err(backend)?;
        if values.is_empty() {
            return Err(Error::Backend("an empty answer to a sweep read".into()));
        }
        let pending: Vec<Option<f64>> =
            redis::from_redis_value(values.remove(0)).map_err(|e| Error::Backend(e.to_string()))?;
        let maps: Vec<HashMap<String, String>> = values
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Backend(e.to_string()))?;
        let mut out = Vec::new();
        for ((id, pair), pending) in ids.iter().zip(maps.chunks(2)).zip(pending) {
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
                pending: pending.is_some(),
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
}
