//! Every Redis key the queue uses, built in this one place. All live under one hash tag,
//! `{prefix}`, so multi-key scripts stay in one Redis Cluster slot; the layout is documented
//! in `lua/prelude.lua`, which builds the same names inside the scripts.

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    base: String,
}

impl Keys {
    /// Keys under `{prefix}`.
    pub fn new(prefix: &str) -> Keys {
        Keys {
            base: format!("{{{prefix}}}"),
        }
    }

    /// The hash-tagged prefix every key starts with (`{hlsfarm}`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The sweeps by virtual time (zset).
    pub fn sweeps(&self) -> String {
        format!("{}:sweeps", self.base)
    }

    /// Sweeps whose last trial ended, waiting for their aggregate (zset).
    pub fn finished(&self) -> String {
        format!("{}:finished", self.base)
    }

    /// One trial (hash).
    pub fn trial(&self, key: &str) -> String {
        format!("{}:t:{key}", self.base)
    }

    /// Every sweep by submit time (zset).
    pub fn all_sweeps(&self) -> String {
        format!("{}:all", self.base)
    }

    /// One sweep's description (hash).
    pub fn sweep(&self, id: &str) -> String {
        format!("{}:sw:{id}", self.base)
    }

    /// One sweep's trials per state (hash).
    pub fn counts(&self, id: &str) -> String {
        format!("{}:n:{id}", self.base)
    }

    /// One sweep's own trials (set).
    pub fn members(&self, id: &str) -> String {
        format!("{}:members:{id}", self.base)
    }

    /// Trials a sweep shares from earlier results or other sweeps (set).
    pub fn reused(&self, id: &str) -> String {
        format!("{}:reused:{id}", self.base)
    }

    /// Registered workers' capabilities (hash).
    pub fn workers(&self) -> String {
        format!("{}:workers", self.base)
    }

    /// Workers by last contact, ms (zset).
    pub fn seen(&self) -> String {
        format!("{}:wseen", self.base)
    }

    /// Workers asked to drain (set).
    pub fn drain(&self) -> String {
        format!("{}:drain", self.base)
    }

    /// Leased trials by deadline (zset).
    pub fn leases(&self) -> String {
        format!("{}:leases", self.base)
    }

    /// Seats held per feature (hash).
    pub fn seats(&self) -> String {
        format!("{}:seats", self.base)
    }

    /// Recently failed trials (list).
    pub fn failures(&self) -> String {
        format!("{}:failures", self.base)
    }

    /// Capability classes: id -> requirement JSON (hash).
    pub fn classes(&self) -> String {
        format!("{}:classes", self.base)
    }

    /// The events stream.
    pub fn events(&self) -> String {
        format!("{}:events", self.base)
    }

    /// What accepted trials cost, newest first (a bounded list of observations).
    pub fn history(&self) -> String {
        format!("{}:hist", self.base)
    }

    /// How many observations were ever pushed to [`Keys::history`] (a counter).
    pub fn history_version(&self) -> String {
        format!("{}:histn", self.base)
    }

    /// The wake channel (pub/sub): work may have appeared.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new("hlsfarm");
        assert_eq!(keys.sweeps(), "{hlsfarm}:sweeps");
        assert_eq!(keys.trial("ab"), "{hlsfarm}:t:ab");
    }
}
