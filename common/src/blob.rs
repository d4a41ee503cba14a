//! The object store: a local folder by default, any S3-compatible service in a cluster
//! (`object_store`), with the layout every hlsfarm process agrees on and uploads that retry
//! with backoff and check what they wrote.
//!
//! Layout (under the store URL's prefix):
//! - `inputs/<sha256>`: model files and companions, content-addressed.
//! - `staging/<trial key>/<attempt>-<epoch>/<file>`: a worker's upload under its lease.
//! - `results/<trial key>/<file>`: the committed result (`result.json`, `artifacts.tar.gz`).
//! - `sweeps/<sweep id>/<file>`: a sweep's aggregate.
//!
//! A result is committed from staging with create-only puts, so the first commit of a key
//! wins and a second (a worker that lost its lease) can never overwrite it.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};
use sha2::{Digest, Sha256};

use crate::config::StoreConfig;
use crate::job::Fence;
use crate::store_url::StoreUrl;

impl Error {
    /// True when the object is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Store(object_store::Error::NotFound { .. }))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL or its settings are wrong.
    #[error("store configuration: {0}")]
    Config(String),
    /// The store refused or failed, after the retries.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// What was read back is not what was written.
    #[error("checksum mismatch for {path}: wrote sha256 {wrote}, read back {read}")]
    Checksum {
        /// The object.
        path: String,
        /// The sha256 written.
        wrote: String,
        /// The sha256 read back.
        read: String,
    },
    /// The object exists already (a create-only put lost to an earlier one).
    #[error("{0} exists already")]
    AlreadyExists(String),
    /// A local file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How long uploads keep retrying before giving up.
#[derive(Debug, Clone, Copy)]
pub struct RetryBudget {
    /// Total time for one object's retries.
    pub max_elapsed: Duration,
    /// First wait between tries.
    pub initial: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            max_elapsed: Duration::from_secs(300),
            initial: Duration::from_millis(200),
        }
    }
}

/// The store with hlsfarm's layout.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blobs({}, prefix `{}`)", self.store, self.prefix)
    }
}

/// The sha256 of bytes, hex.
fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Blobs {
    /// Opens the store a config names.
    pub fn open(config: &StoreConfig) -> Result<Blobs, Error> {
        match StoreUrl::parse(&config.url).map_err(Error::Config)? {
            StoreUrl::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::Config(format!("cannot create store folder {}: {e}", dir.display()))
                })?;
                let store = LocalFileSystem::new_with_prefix(&dir)?;
                Ok(Blobs {
                    store: Arc::new(store),
                    prefix: String::new(),
                })
            }
            StoreUrl::S3 { bucket, prefix } => {
                // A few quick retries inside each request; longer outages are ridden out by
                // the callers' own budgets (`put_checked`, the committer's next pass), which
                // keep leases alive meanwhile.
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..object_store::RetryConfig::default()
                };
                let mut builder = AmazonS3Builder::from_env()
                    .with_retry(retry)
                    .with_bucket_name(&bucket)
                    .with_region(&config.s3_region)
                    .with_allow_http(config.s3_allow_http);
                if !config.s3_endpoint.is_empty() {
                    builder = builder
                        .with_endpoint(&config.s3_endpoint)
                        .with_virtual_hosted_style_request(false);
                }
                if !config.s3_access_key_id.is_empty() {
                    builder = builder
                        .with_access_key_id(config.s3_access_key_id.expose())
                        .with_secret_access_key(config.s3_secret_access_key.expose());
                }
                Ok(Blobs {
                    store: Arc::new(builder.build()?),
                    prefix,
                })
            }
        }
    }

    fn path(&self, relative: &str) -> StorePath {
        if self.prefix.is_empty() {
            StorePath::from(relative)
        } else {
            StorePath::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// Where a content-addressed input lives.
    pub fn input_path(sha256: &str) -> String {
        format!("inputs/{sha256}")
    }

    /// The staging folder of one lease of a trial.
    pub fn staging_prefix(trial_key: &str, fence: Fence) -> String {
        format!("staging/{trial_key}/{}-{}", fence.attempt, fence.epoch)
    }

    /// The committed result folder of a trial.
    pub fn result_prefix(trial_key: &str) -> String {
        format!("results/{trial_key}")
    }

    /// Writes `bytes` at `relative`, retrying with exponential backoff within `budget`, then
    /// reads the object back and checks its sha256. Returns the sha256.
    pub async fn put_checked(
        &self,
        relative: &str,
        bytes: Vec<u8>,
        budget: RetryBudget,
    ) -> Result<String, Error> {
        let path = self.path(relative);
        let wrote = sha256(&bytes);
        let payload = PutPayload::from(bytes);
        let policy = backoff::ExponentialBackoff {
            initial_interval: budget.initial,
            max_elapsed_time: Some(budget.max_elapsed),
            ..backoff::ExponentialBackoff::default()
        };
        backoff::future::retry(policy, || async {
            self.store.put(&path, payload.clone()).await.map_err(|e| {
                tracing::warn!(error = %e, object = %path, "upload failed, retrying");
                backoff::Error::transient(e)
            })?;
            let read = self
                .store
                .get(&path)
                .await
                .map_err(backoff::Error::transient)?
                .bytes()
                .await
                .map_err(backoff::Error::transient)?;
            Ok(read)
        })
        .await
        .map_err(Error::Store)
        .and_then(|read| {
            let read = sha256(&read);
            if read == wrote {
                Ok(wrote.clone())
            } else {
                Err(Error::Checksum {
                    path: path.to_string(),
                    wrote: wrote.clone(),
                    read,
                })
            }
        })
    }

    /// Reads an object.
    pub async fn get(&self, relative: &str) -> Result<Vec<u8>, Error> {
        let bytes = self.store.get(&self.path(relative)).await?.bytes().await?;
        Ok(bytes.to_vec())
    }

    /// True when the object exists.
    pub async fn exists(&self, relative: &str) -> Result<bool, Error> {
        match self.store.head(&self.path(relative)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Copies the files under `staging` (a lease's staging prefix) into the trial's result
    /// folder, replacing what is there, then deletes the staged copies. Only the coordinator
    /// calls this, and only after Redis accepted that lease's completion: that is the fence.
    /// Returns the files copied, with their sizes in bytes.
    pub async fn promote(
        &self,
        staging: &str,
        trial_key: &str,
    ) -> Result<Vec<(String, u64)>, Error> {
        use futures_util::TryStreamExt;
        let from = self.path(staging);
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&from)).try_collect().await?;
        let result = Self::result_prefix(trial_key);
        let mut copied = Vec::new();
        for meta in &listed {
            let Some(name) = meta.location.as_ref().strip_prefix(from.as_ref()) else {
                continue;
            };
            let name = name.trim_start_matches('/');
            let to = self.path(&format!("{result}/{name}"));
            self.store.copy(&meta.location, &to).await?;
            copied.push((name.to_owned(), meta.size));
        }
        for meta in listed {
            self.store.delete(&meta.location).await?;
        }
        Ok(copied)
    }

    /// Deletes every object under `prefix` (a stale lease's staging folder, say).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        use futures_util::TryStreamExt;
        let listed: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.path(prefix)))
            .try_collect()
            .await?;
        for meta in &listed {
            self.store.delete(&meta.location).await?;
        }
        Ok(listed.len() as u64)
    }

    /// Commits the staged `files` of a lease as the trial's result, each with a create-only
    /// put: when a result is committed already, nothing is overwritten and
    /// [`Error::AlreadyExists`] says so.
    pub async fn commit(&self, trial_key: &str, fence: Fence, files: &[&str]) -> Result<(), Error> {
        let staging = Self::staging_prefix(trial_key, fence);
        let result = Self::result_prefix(trial_key);
        for file in files {
            let bytes = self.get(&format!("{staging}/{file}")).await?;
            let target = self.path(&format!("{result}/{file}"));
            match self
                .store
                .put_opts(&target, PutPayload::from(bytes), PutMode::Create.into())
                .await
            {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. }) => {
                    return Err(Error::AlreadyExists(target.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn local(dir: &std::path::Path) -> Blobs {
        Blobs::open(&StoreConfig {
            url: dir.display().to_string(),
            ..StoreConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn staged_results_commit_once() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = local(dir.path());
        let key = "ab".repeat(32);
        let winner = Fence {
            attempt: 2,
            epoch: 0,
        };
        let loser = Fence {
            attempt: 1,
            epoch: 0,
        };
        for (fence, text) in [(winner, "winner"), (loser, "loser")] {
            let path = format!("{}/result.json", Blobs::staging_prefix(&key, fence));
            blobs
                .put_checked(&path, text.into(), RetryBudget::default())
                .await
                .unwrap();
        }
        blobs.commit(&key, winner, &["result.json"]).await.unwrap();
        let late = blobs.commit(&key, loser, &["result.json"]).await;
        assert!(matches!(late, Err(Error::AlreadyExists(_))), "{late:?}");
        let stored = blobs
            .get(&format!("{}/result.json", Blobs::result_prefix(&key)))
            .await
            .unwrap();
        assert_eq!(stored, b"winner");
        assert!(
            dir.path()
                .join(format!("results/{key}/result.json"))
                .is_file()
        );
    }

    #[test]
    fn a_bad_url_is_a_config_error() {
        let err = Blobs::open(&StoreConfig {
            url: "gs://bucket".into(),
            ..StoreConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
    }
}
