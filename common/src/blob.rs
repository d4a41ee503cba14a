//! The object store: a local folder by default, any S3-compatible service in a cluster
//! (`object_store`), with the layout every hlsfarm process agrees on and uploads that retry
//! with backoff and check what they wrote.
//!
//! Layout (under the store URL's prefix):
//! - `inputs/<sha256>`: model files and companions, content-addressed.
//! - `results/<trial key>/attempts/<attempt>-<epoch>/<file>`: what a worker uploaded under
//!   one lease (`result.json`, `artifacts.tar.gz`), straight into the trial's results.
//! - `results/<trial key>/result.json`: the committed result, a copy of the winning
//!   attempt's; the trial record's result prefix names that attempt's folder, where the
//!   tarball is read from ([`Blobs::artifact_path`]).
//! - `sweeps/<sweep id>/<file>`: a sweep's aggregate.
//!
//! The fence is Redis: a completion is accepted only from the lease that holds the trial, and
//! the coordinator commits only the attempt Redis accepted ([`Blobs::commit_attempt`]: one
//! copy of a small file; the files of earlier attempts of the trial are deleted then). A
//! worker that lost its lease can upload, but its attempt is never committed, and is collected
//! when a later one is. Stores written before this layout (`staging/<key>/<attempt>-<epoch>/`,
//! committed by copying every file) are still committed and read.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
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

    /// The folder one lease of a trial uploads to.
    pub fn attempt_prefix(trial_key: &str, fence: Fence) -> String {
        format!(
            "{}/attempts/{}-{}",
            Self::result_prefix(trial_key),
            fence.attempt,
            fence.epoch
        )
    }

    /// The committed result folder of a trial: its `result.json`.
    pub fn result_prefix(trial_key: &str) -> String {
        format!("results/{trial_key}")
    }

    /// Where a committed trial's `file` is: `result.json` in its result folder, any other in
    /// the committed attempt's folder `result_prefix` (the trial record's), or in the result
    /// folder for results committed before attempt folders.
    pub fn artifact_path(trial_key: &str, result_prefix: &str, file: &str) -> String {
        if file != "result.json" && Self::attempt_fence(trial_key, result_prefix).is_some() {
            format!("{result_prefix}/{file}")
        } else {
            format!("{}/{file}", Self::result_prefix(trial_key))
        }
    }

    /// The fence of an attempt folder of this trial, `None` for any other prefix.
    fn attempt_fence(trial_key: &str, prefix: &str) -> Option<Fence> {
        let rest = prefix
            .strip_prefix(&Self::result_prefix(trial_key))?
            .strip_prefix("/attempts/")?;
        let (attempt, epoch) = rest.split_once('-')?;
        Some(Fence {
            attempt: attempt.parse().ok()?,
            epoch: epoch.parse().ok()?,
        })
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

    /// The object's size in bytes, `None` when it does not exist.
    pub async fn size(&self, relative: &str) -> Result<Option<u64>, Error> {
        match self.store.head(&self.path(relative)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// True when the object exists.
    pub async fn exists(&self, relative: &str) -> Result<bool, Error> {
        match self.store.head(&self.path(relative)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The files under `prefix` with their sizes in bytes (names relative to it).
    pub async fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        use futures_util::TryStreamExt;
        let from = self.path(prefix);
        let listed: Vec<object_store::ObjectMeta> =
            self.store.list(Some(&from)).try_collect().await?;
        Ok(listed
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.as_ref().strip_prefix(from.as_ref())?;
                Some((name.trim_start_matches('/').to_owned(), meta.size))
            })
            .collect())
    }

    /// Commits the attempt folder `prefix` (the trial record's result prefix, which Redis
    /// accepted: that is the fence; only the coordinator calls this) as the trial's result:
    /// its `result.json` is copied into the result folder, replacing an earlier commit (a
    /// forced re-run), and the files of the trial's earlier attempts are deleted. A first
    /// attempt's commit is one copy request. Returns how many objects were deleted.
    pub async fn commit_attempt(&self, prefix: &str, trial_key: &str) -> Result<u64, Error> {
        let Some(fence) = Self::attempt_fence(trial_key, prefix) else {
            // Staged before attempt folders: every file is copied.
            self.promote(prefix, trial_key).await?;
            return Ok(0);
        };
        let result = Self::result_prefix(trial_key);
        self.store
            .copy(
                &self.path(&format!("{prefix}/result.json")),
                &self.path(&format!("{result}/result.json")),
            )
            .await?;
        // Leases come in (epoch, attempt) order: a refund or a re-run starts a new epoch, a
        // lease after a lost one is the next attempt. Nothing precedes the first.
        if fence.epoch == 0 && fence.attempt <= 1 {
            return Ok(0);
        }
        let attempts = format!("{result}/attempts");
        let mut deleted = 0;
        for (name, _) in self.list_sizes(&attempts).await? {
            let folder = name.split('/').next().unwrap_or_default();
            let Some(other) = Self::attempt_fence(trial_key, &format!("{attempts}/{folder}"))
            else {
                continue;
            };
            if (other.epoch, other.attempt) < (fence.epoch, fence.attempt) {
                self.store
                    .delete(&self.path(&format!("{attempts}/{name}")))
                    .await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Copies the files under `staging` (a lease's staging prefix) into the trial's result
    /// folder, replacing what is there, then deletes the staged copies. Only the coordinator
    /// calls this, and only after Redis accepted that lease's completion: that is the fence.
    /// Returns the files copied, with their sizes in bytes. The commit of stores written before
    /// attempt folders ([`Blobs::commit_attempt`] calls it for them).
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
    async fn the_accepted_attempt_commits_with_one_copy_and_earlier_attempts_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = local(dir.path());
        let key = "ab".repeat(32);
        let fence = |attempt, epoch| Fence { attempt, epoch };
        let (lost, winner, rerun) = (fence(1, 0), fence(2, 0), fence(1, 1));
        for (f, text) in [(lost, "lost"), (winner, "winner"), (rerun, "rerun")] {
            let prefix = Blobs::attempt_prefix(&key, f);
            for file in ["result.json", "artifacts.tar.gz"] {
                blobs
                    .put_checked(
                        &format!("{prefix}/{file}"),
                        text.into(),
                        RetryBudget::default(),
                    )
                    .await
                    .unwrap();
            }
        }
        let read = |path: String| {
            let blobs = blobs.clone();
            async move { blobs.get(&path).await.ok() }
        };
        let winner_prefix = Blobs::attempt_prefix(&key, winner);
        // The lease that lost its trial (attempt 1) is collected when attempt 2 commits; the
        // re-run (a later epoch) is not touched.
        assert_eq!(blobs.commit_attempt(&winner_prefix, &key).await.unwrap(), 2);
        assert_eq!(
            read(format!("results/{key}/result.json")).await.unwrap(),
            b"winner"
        );
        let tarball = Blobs::artifact_path(&key, &winner_prefix, "artifacts.tar.gz");
        assert_eq!(tarball, format!("{winner_prefix}/artifacts.tar.gz"));
        assert_eq!(read(tarball.clone()).await.unwrap(), b"winner");
        assert!(
            read(format!("{}/result.json", Blobs::attempt_prefix(&key, lost)))
                .await
                .is_none()
        );
        // A forced re-run replaces the commit and collects the attempt before it.
        let rerun_prefix = Blobs::attempt_prefix(&key, rerun);
        assert_eq!(blobs.commit_attempt(&rerun_prefix, &key).await.unwrap(), 2);
        assert_eq!(
            read(format!("results/{key}/result.json")).await.unwrap(),
            b"rerun"
        );
        assert!(read(tarball).await.is_none());
        // A first attempt's commit lists nothing and deletes nothing.
        let first = "cd".repeat(32);
        let prefix = Blobs::attempt_prefix(&first, fence(1, 0));
        blobs
            .put_checked(
                &format!("{prefix}/result.json"),
                b"one".to_vec(),
                RetryBudget::default(),
            )
            .await
            .unwrap();
        assert_eq!(blobs.commit_attempt(&prefix, &first).await.unwrap(), 0);
        assert_eq!(
            read(format!("results/{first}/result.json")).await.unwrap(),
            b"one"
        );
    }

    #[tokio::test]
    async fn results_staged_before_attempt_folders_still_commit_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = local(dir.path());
        let key = "ef".repeat(32);
        let staging = format!("staging/{key}/1-0");
        for file in ["result.json", "artifacts.tar.gz"] {
            blobs
                .put_checked(
                    &format!("{staging}/{file}"),
                    file.into(),
                    RetryBudget::default(),
                )
                .await
                .unwrap();
        }
        blobs.commit_attempt(&staging, &key).await.unwrap();
        let tarball = Blobs::artifact_path(&key, &staging, "artifacts.tar.gz");
        assert_eq!(tarball, format!("results/{key}/artifacts.tar.gz"));
        assert_eq!(blobs.get(&tarball).await.unwrap(), b"artifacts.tar.gz");
        assert!(blobs.list_sizes(&staging).await.unwrap().is_empty());
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
