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

    /// One trial (hash).
    pub fn trial(&self, key: &str) -> String {
        format!("{}:t:{key}", self.base)
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
