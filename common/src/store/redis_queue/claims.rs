//! Claims on the work that must happen once across coordinators and crashes (result
//! copies, aggregates), and the workers' registry and drain orders.

use redis::Script;

use crate::queue::Error;

use super::records::ClaimSet;
use super::{RedisQueue, backend};

impl RedisQueue {
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

    /// Marks a claimed entry done, unless it was marked again since the claim: a sweep that
    /// finished again (a retried trial ended) or a trial committed again while its claimer
    /// worked stands at score 0, and removing it would lose that signal. An entry whose hold
    /// ran out is left too (another claimer may have it; the work is idempotent).
    pub async fn release(&self, set: ClaimSet, member: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let script = Script::new(
            "local t = redis.call('TIME') \
             local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
             local held = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') \
             if held > now then return redis.call('ZREM', KEYS[1], ARGV[1]) end \
             return 0",
        );
        let _: u64 = script
            .key(format!("{}:{}", self.keys.base(), set.name()))
            .arg(member)
            .invoke_async(&mut connection)
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
}
