//! Configuration, layered: built-in defaults, then a TOML file (`--config` or `HLSFARM_CONFIG`),
//! then `HLSFARM_<SECTION>__<KEY>` environment variables (e.g.
//! `HLSFARM_COORDINATOR__LEASE_MS=8000`), then command-line flags. Unknown keys are errors,
//! and [`Config::validate`] names every bad field. Secrets never appear in `Debug` output or
//! in `--dump-config`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::secret::Secret;
use crate::validation::ValidationErrors;

/// The whole configuration of an hlsfarm process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The coordinator (`hlsfarm serve`).
    pub coordinator: CoordinatorConfig,
    /// The object store holding models, results and artifacts.
    pub store: StoreConfig,
    /// A worker daemon (`hlsfarm worker`).
    pub worker: WorkerConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Settings of the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Address the gRPC and HTTP server listens on. Default `127.0.0.1:7070`.
    pub listen: String,
    /// Redis URL (`redis://[:password@]host:port/db`). Default `redis://127.0.0.1:6379/0`.
    pub redis_url: Secret,
    /// Prefix of every Redis key, so several clusters can share one Redis. Default `hlsfarm`.
    pub key_prefix: String,
    /// Lease length in milliseconds: a worker silent this long loses its trials. Default 5000.
    pub lease_ms: u64,
    /// How often workers heartbeat, in milliseconds; below `lease_ms / 2`. Default 1000.
    pub heartbeat_ms: u64,
    /// Leases a trial may spend before retryable failures make it dead. Default 3.
    pub max_attempts: u32,
    /// How long a trial that failed in a retryable way (infrastructure, timeout, oom,
    /// licence) waits before it is leased again, in milliseconds. Default 5000.
    pub retry_backoff_ms: u64,
    /// Licence refusals (the licence server had no seat) a trial may have without spending
    /// an attempt; past them a refusal counts as a retryable failure. Default 10.
    pub max_licence_refusals: u32,
    /// The wait after a trial's first licence refusal, in milliseconds, doubled per refusal
    /// up to 10 minutes. Default 30000.
    pub licence_backoff_ms: u64,
    /// After a licence refusal, how long the refused feature's seats stay capped at the
    /// count in use then, in milliseconds. Default 300000.
    pub seat_hold_ms: u64,
    /// Bearer token of operators (submit, status, cancel, retry, drain). Required by `serve`.
    pub operator_token: Secret,
    /// Bearer token of workers (register, lease, heartbeat, complete, hand back). Required
    /// by `serve`.
    pub worker_token: Secret,
    /// Licence seats: at most this many trials running a stage at once, cluster-wide, by
    /// stage name (e.g. `{ vsynth = 8 }`). Stages not listed are unlimited. Default none.
    pub seats: std::collections::BTreeMap<String, u32>,
    /// Largest model file `UploadModel` accepts, in MiB. Default 512.
    pub max_upload_mib: u64,
    /// PEM certificate chain for TLS on the listening port (gRPC and HTTP); with
    /// `tls_key`. Empty: plain TCP (put TLS in front, or use only on a trusted network).
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// Time limits learned from history: on a trial's first attempt, a stage with its own
    /// fit is held to this multiple of the duration the fit puts at its 99.9th percentile
    /// (never below `learned_limit_floor_s`, never above the worker's own limit); a retry
    /// runs under the worker's limit. 0 turns them off. Default 4.
    pub learned_limit_multiple: f64,
    /// The least time a learned limit gives a stage, seconds. Default 1800.
    pub learned_limit_floor_s: u64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:7070".to_owned(),
            redis_url: Secret::new("redis://127.0.0.1:6379/0"),
            key_prefix: "hlsfarm".to_owned(),
            lease_ms: 5000,
            heartbeat_ms: 1000,
            max_attempts: 3,
            retry_backoff_ms: 5000,
            max_licence_refusals: 10,
            licence_backoff_ms: 30_000,
            seat_hold_ms: 300_000,
            operator_token: Secret::default(),
            worker_token: Secret::default(),
            seats: std::collections::BTreeMap::new(),
            max_upload_mib: 512,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            learned_limit_multiple: crate::estimate::LIMIT_MULTIPLE,
            learned_limit_floor_s: crate::estimate::LIMIT_FLOOR_S,
        }
    }
}

/// Settings of a worker daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The coordinator's URL. Default `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// The worker token (see `coordinator.worker_token`).
    pub token: Secret,
    /// Folder for trial projects. Default `/var/tmp/hlsfarm`.
    pub scratch: PathBuf,
    /// Trials run at once; 0 picks cores / 2 (at least 1). Default 0.
    pub slots: u32,
    /// No lease while free scratch disk is below this many GiB. Default 10.
    pub min_free_disk_gib: u64,
    /// Memory offered to trials, MiB; 0 takes the machine's total. Default 0.
    pub memory_mib: u64,
    /// Memory limit of one trial's processes (hls4ml's Python and g++, the Xilinx tools),
    /// MiB: past it they are killed and the trial fails as `oom` with its peak. 0 takes
    /// `memory_mib / slots` (at least 1024), raised to the lease's reservation when that is
    /// larger. Default 0.
    pub trial_memory_mib: u64,
    /// Cores offered to trials; 0 takes the machine's. Default 0.
    pub cores: u32,
    /// Emulation: the largest difference on an output, as a share of its scale (1 for
    /// probabilities, the float values' range otherwise), before the trial gets a fidelity
    /// warning and the layer where it departs is traced. Default 0.1.
    pub fidelity_max_error: f64,
    /// Emulation: the smallest agreement of a binary or multiclass output before a fidelity
    /// warning. Default 0.9.
    pub fidelity_min_agreement: f64,
    /// Refuse a trial (as `bad_input`, before any tool stage) when preflight predicts the
    /// tools will refuse it (e.g. an array partitioned above max_array_partition_size).
    /// Default false: the finding is recorded in `result.json` `preflight[]` and the tools run.
    pub preflight_strict: bool,
    /// The hls4ml venv's python; empty: `$HLSFARM_PYTHON` or the venv `make setup` made.
    pub python: PathBuf,
    /// Part families this host may synthesize (e.g. `["zynq", "virtexuplus"]`); empty: any.
    pub part_families: Vec<String>,
    /// On SIGTERM, how long running trials may take to finish before they are handed back,
    /// seconds. Default 300.
    pub drain_timeout_s: u64,
    /// Time limit of convert + emulate, seconds. Default 3600.
    pub convert_timeout_s: u64,
    /// Time limit of each tool stage, seconds. Default 86400.
    pub stage_timeout_s: u64,
    /// Keep a trial's scratch folder after it succeeded (always kept on failure). Default false.
    pub keep_scratch: bool,
    /// How long uploading one result file to the store may retry (with backoff, the lease
    /// kept alive) before the trial fails as `infrastructure` and goes back to be retried,
    /// seconds. Default 300.
    pub upload_retry_s: u64,
    /// PEM certificate(s) of the CA that signed the coordinator's certificate, for an
    /// `https://` coordinator with a private CA. Empty: the system's trusted roots.
    pub ca_cert: PathBuf,
    /// Run trials through warm interpreters: per model family the host uses, one Python that
    /// imported its frameworks once and forks a child per trial (started on the family's
    /// first trial). False: a fresh Python per trial. Default true.
    pub warm_python: bool,
    /// Start a trial's tool stages as soon as its project is written, beside its emulation,
    /// when the host has two cores per slot (each process keeps its own time and memory
    /// limit; the tools' memory limit is the trial's, so budget memory for g++ beside it).
    /// False: after the emulation. Default true.
    pub emulate_beside_synthesis: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "http://127.0.0.1:7070".to_owned(),
            token: Secret::default(),
            scratch: PathBuf::from("/var/tmp/hlsfarm"),
            slots: 0,
            min_free_disk_gib: 10,
            memory_mib: 0,
            trial_memory_mib: 0,
            cores: 0,
            fidelity_max_error: 0.1,
            fidelity_min_agreement: 0.9,
            preflight_strict: false,
            emulate_beside_synthesis: true,
            python: PathBuf::new(),
            part_families: Vec::new(),
            drain_timeout_s: 300,
            convert_timeout_s: 3600,
            stage_timeout_s: 24 * 3600,
            keep_scratch: false,
            upload_retry_s: 300,
            ca_cert: PathBuf::new(),
            warm_python: true,
        }
    }
}

/// Where models, results and artifacts are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `file:///abs/path` (or a plain path) for a local folder, or `s3://bucket/prefix`.
    /// Default `./hlsfarm-store`.
    pub url: String,
    /// S3 endpoint for S3-compatible services (MinIO, Garage, Ceph); empty: AWS.
    pub s3_endpoint: String,
    /// S3 region. Default `us-east-1`.
    pub s3_region: String,
    /// S3 access key id; empty: taken from the usual AWS environment variables.
    pub s3_access_key_id: Secret,
    /// S3 secret access key; empty: taken from the usual AWS environment variables.
    pub s3_secret_access_key: Secret,
    /// Allow plain HTTP to the S3 endpoint (test servers). Default false.
    pub s3_allow_http: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "./hlsfarm-store".to_owned(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".to_owned(),
            s3_access_key_id: Secret::default(),
            s3_secret_access_key: Secret::default(),
            s3_allow_http: false,
        }
    }
}

string_enum!(
    /// How log lines are written.
    LogFormat, "log format", {
        /// Human-readable lines.
        Text => "text",
        /// One JSON object per line.
        Json => "json",
    }
);

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `hlsfarm_coordinator=debug`; `RUST_LOG` wins. Default `info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is missing, or a value does not parse, or a key is unknown.
    #[error("{0}")]
    Load(String),
    /// Values parse but are out of range.
    #[error("configuration: {0}")]
    Invalid(ValidationErrors),
}

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "HLSFARM_CONFIG";

impl Config {
    /// Loads the layers in order: defaults, `file` (or `$HLSFARM_CONFIG`), `HLSFARM_*` env,
    /// then `overrides` (the flags the user gave, as a partial config), and validates.
    pub fn load(file: Option<&Path>, overrides: &serde_json::Value) -> Result<Config, Error> {
        let file: Option<PathBuf> = file
            .map(Path::to_owned)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = &file {
            if !file.is_file() {
                return Err(Error::Load(format!(
                    "config file {} does not exist (given by --config or {CONFIG_ENV})",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment
            .merge(
                // Only `HLSFARM_<SECTION>__<KEY>` names are config: every key lives in a
                // section, and other HLSFARM_* variables (HLSFARM_CONFIG, HLSFARM_HOME, the
                // test harness's) are not config keys.
                Env::prefixed("HLSFARM_")
                    .filter(|key| key.as_str().contains("__"))
                    .split("__")
                    .lowercase(true),
            )
            .merge(Serialized::defaults(overrides));
        let config: Config = figment.extract().map_err(|err| {
            let mut text = String::new();
            for e in err {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&describe(&e));
            }
            Error::Load(text)
        })?;
        config.validate().map_err(Error::Invalid)?;
        Ok(config)
    }

    /// A copy with every secret replaced by `<redacted>`, for printing.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        config.coordinator.redis_url = config.coordinator.redis_url.redacted();
        config.coordinator.operator_token = config.coordinator.operator_token.redacted();
        config.coordinator.worker_token = config.coordinator.worker_token.redacted();
        config.worker.token = config.worker.token.redacted();
        config.store.s3_access_key_id = config.store.s3_access_key_id.redacted();
        config.store.s3_secret_access_key = config.store.s3_secret_access_key.redacted();
        config
    }

    /// Checks every field, naming each bad one.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let c = &self.coordinator;
        if c.listen.parse::<SocketAddr>().is_err() {
            errors.push(
                "coordinator.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:7070 or [::]:7070",
                    c.listen
                ),
            );
        }
        let redis = c.redis_url.expose();
        if !(redis.starts_with("redis://")
            || redis.starts_with("rediss://")
            || redis.starts_with("unix://"))
        {
            errors.push(
                "coordinator.redis_url",
                "must start with redis://, rediss:// or unix://",
            );
        }
        if c.key_prefix.is_empty()
            || !c
                .key_prefix
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_:.".contains(ch))
        {
            errors.push(
                "coordinator.key_prefix",
                "must be non-empty letters, digits, `-`, `_`, `:` or `.`",
            );
        }
        if !(100..=3_600_000).contains(&c.lease_ms) {
            errors.push(
                "coordinator.lease_ms",
                format!("must be between 100 and 3600000, got {}", c.lease_ms),
            );
        }
        if c.heartbeat_ms == 0 || c.heartbeat_ms * 2 > c.lease_ms {
            errors.push(
                "coordinator.heartbeat_ms",
                format!(
                    "must be above 0 and at most half of lease_ms ({}), got {}",
                    c.lease_ms, c.heartbeat_ms
                ),
            );
        }
        if !(c.learned_limit_multiple.is_finite()
            && (c.learned_limit_multiple == 0.0 || c.learned_limit_multiple >= 1.0))
        {
            errors.push(
                "coordinator.learned_limit_multiple",
                format!(
                    "must be 0 (off) or at least 1, got {}",
                    c.learned_limit_multiple
                ),
            );
        }
        if !(1..=100).contains(&c.max_attempts) {
            errors.push(
                "coordinator.max_attempts",
                format!("must be between 1 and 100, got {}", c.max_attempts),
            );
        }
        if !c.operator_token.is_empty() && c.operator_token == c.worker_token {
            errors.push(
                "coordinator.worker_token",
                "must differ from operator_token: a worker must not be able to submit or cancel",
            );
        }
        for (stage, limit) in &c.seats {
            if stage.parse::<crate::stage::Stage>().is_err() {
                errors.push(
                    format!("coordinator.seats.{stage}"),
                    "is not a stage (convert, emulate, csynth, cosim, export, vsynth)",
                );
            }
            if *limit == 0 {
                errors.push(
                    format!("coordinator.seats.{stage}"),
                    "must be at least 1 (leave the stage out for no limit)",
                );
            }
        }
        if c.tls_cert.as_os_str().is_empty() != c.tls_key.as_os_str().is_empty() {
            errors.push(
                "coordinator.tls_cert",
                "set both tls_cert and tls_key (PEM files), or neither for plain TCP",
            );
        }
        let w = &self.worker;
        if !(w.coordinator.starts_with("http://") || w.coordinator.starts_with("https://")) {
            errors.push(
                "worker.coordinator",
                format!("`{}` must start with http:// or https://", w.coordinator),
            );
        }
        if let Err(msg) = crate::store_url::StoreUrl::parse(&self.store.url) {
            errors.push("store.url", msg);
        }
        errors.into_result()
    }
}

/// Rewrites one figment error so it names the key path and, for environment variables, the
/// variable.
fn describe(err: &figment::Error) -> String {
    let path = err.path.join(".");
    let source = err
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(figment::Source::File(file)) => format!(" in {}", file.display()),
            _ => format!(" in {}", m.name),
        })
        .unwrap_or_default();
    if path.is_empty() {
        format!("configuration{source}: {}", err.kind)
    } else {
        format!("configuration key `{path}`{source}: {}", err.kind)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // figment::Jail's closures return its large error type; that is its API, not ours.
    #![allow(clippy::result_large_err)]
    use super::*;

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "hlsfarm.toml",
                "[coordinator]\nlease_ms = 9000\nheartbeat_ms = 2000\nkey_prefix = \"from-file\"\n[store]\nurl = \"/data/store\"\n",
            )?;
            jail.set_env("HLSFARM_COORDINATOR__HEARTBEAT_MS", "3000");
            jail.set_env("HLSFARM_COORDINATOR__KEY_PREFIX", "from-env");
            let flags = serde_json::json!({"coordinator": {"key_prefix": "from-flag"}});
            let config = Config::load(Some(Path::new("hlsfarm.toml")), &flags).unwrap();
            assert_eq!(config.coordinator.lease_ms, 9000, "file over default");
            assert_eq!(config.coordinator.heartbeat_ms, 3000, "env over file");
            assert_eq!(config.coordinator.key_prefix, "from-flag", "flag over env");
            assert_eq!(config.coordinator.max_attempts, 3, "default kept");
            assert_eq!(config.store.url, "/data/store");
            Ok(())
        });
    }

    #[test]
    fn config_file_from_env_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[log]\nformat = \"json\"\n")?;
            jail.set_env(CONFIG_ENV, "c.toml");
            // Other HLSFARM_* variables without a section are not config keys.
            jail.set_env("HLSFARM_HOME", "/somewhere");
            let config = Config::load(None, &serde_json::json!({})).unwrap();
            assert_eq!(config.log.format, LogFormat::Json);
            Ok(())
        });
    }

    #[test]
    fn a_typo_is_rejected_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[coordinator]\nleese_ms = 9000\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &serde_json::json!({}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field: found `leese_ms`"), "{err}");
            assert!(err.contains("lease_ms"), "lists the allowed keys: {err}");
            assert!(err.contains("bad.toml"), "names the file: {err}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_field_and_range() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("HLSFARM_COORDINATOR__HEARTBEAT_MS", "4000");
            jail.set_env("HLSFARM_LOG__FORMAT", "xml");
            let err = Config::load(None, &serde_json::json!({}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("log.format"), "{err}");
            assert!(err.contains("allowed: text, json"), "{err}");
            jail.set_env("HLSFARM_LOG__FORMAT", "text");
            let err = Config::load(None, &serde_json::json!({}))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("coordinator.heartbeat_ms: must be above 0 and at most half of lease_ms (5000), got 4000"),
                "{err}"
            );
            Ok(())
        });
    }

    /// Every sample config in `deploy/config/` parses, and the one with all defaults equals them.
    #[test]
    fn sample_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
        // Inside a jail: other tests set HLSFARM_* variables, and the jail serializes them.
        figment::Jail::expect_with(|_jail| {
            let mut seen = 0;
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    let config = Config::load(Some(&path), &serde_json::json!({}))
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    if path.ends_with("hlsfarm.toml") {
                        assert_eq!(config, Config::default());
                    }
                    seen += 1;
                }
            }
            assert!(seen >= 1, "no sample config in {}", dir.display());
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        let config = Config {
            coordinator: CoordinatorConfig {
                redis_url: Secret::new("redis://:hunter2@db:6379"),
                ..CoordinatorConfig::default()
            },
            ..Config::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        let printed = toml::to_string(&config.redacted()).unwrap();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("redis_url = \"<redacted>\""), "{printed}");
    }
}
