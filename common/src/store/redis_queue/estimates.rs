//! What the estimator reads and writes in Redis: the bounded history of what accepted trials
//! cost, and new estimates for queued trials (their order and reservations).

use crate::estimate::{HISTORY_LIMIT, Observation};
use crate::queue::Error;

use super::{RedisQueue, backend};

/// A queued trial's new estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Reestimate {
    /// The trial.
    pub key: String,
    /// Its cost (the lease order within its sweep: costliest first).
    pub cost: f64,
    /// The memory it reserves, MiB; None keeps what it has.
    pub memory_mib: Option<u64>,
}

impl RedisQueue {
    /// Appends an observation to the history, dropping the oldest beyond
    /// [`HISTORY_LIMIT`].
    pub async fn push_observation(&self, observation: &Observation) -> Result<(), Error> {
        let json = serde_json::to_string(observation)
            .map_err(|e| Error::Backend(format!("observation: {e}")))?;
        let mut connection = self.connection.clone();
        redis::pipe()
            .cmd("LPUSH")
            .arg(self.keys.history())
            .arg(json)
            .ignore()
            .cmd("LTRIM")
            .arg(self.keys.history())
            .arg(0)
            .arg(HISTORY_LIMIT - 1)
            .ignore()
            .cmd("INCR")
            .arg(self.keys.history_version())
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(backend)
    }

    /// How many observations were ever pushed: a fit is current while this is unchanged.
    pub async fn history_version(&self) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let n: Option<u64> = redis::cmd("GET")
            .arg(self.keys.history_version())
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(n.unwrap_or(0))
    }

    /// The active sweeps (those with trials queued or leased), least served first.
    pub async fn active_sweeps(&self) -> Result<Vec<String>, Error> {
        let mut connection = self.connection.clone();
        redis::cmd("ZRANGE")
            .arg(self.keys.sweeps())
            .arg(0)
            .arg(-1)
            .query_async(&mut connection)
            .await
            .map_err(backend)
    }

    /// The history, oldest first (entries that do not parse are skipped: a newer
    /// coordinator's, say).
    pub async fn observations(&self) -> Result<Vec<Observation>, Error> {
        let mut connection = self.connection.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.history())
            .arg(0)
            .arg(HISTORY_LIMIT - 1)
            .query_async(&mut connection)
            .await
            .map_err(backend)?;
        Ok(raw
            .iter()
            .rev()
            .filter_map(|j| serde_json::from_str(j).ok())
            .collect())
    }

    /// Gives queued trials new costs and reservations, a thousand per script call; trials
    /// no longer queued are left alone, and a trial that has run keeps its reservation.
    /// Returns how many changed.
    pub async fn reestimate(&self, estimates: &[Reestimate]) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let mut changed = 0;
        for chunk in estimates.chunks(1000) {
            let mut invocation = self.invocation(&self.scripts.reestimate);
            for e in chunk {
                invocation
                    .arg(&e.key)
                    .arg(e.cost)
                    .arg(e.memory_mib.map(|m| m.to_string()).unwrap_or_default());
            }
            let n: u64 = invocation
                .invoke_async(&mut connection)
                .await
                .map_err(backend)?;
            changed += n;
        }
        Ok(changed)
    }
}
