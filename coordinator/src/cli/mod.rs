//! The `hlsfarm` command line. Each subcommand is a thin call into the module or crate that
//! owns the behaviour; global flags load the layered configuration (see
//! `hlsfarm_common::config`).
//!
//! - [`check`]: `hlsfarm check`, preflight without synthesis.
//! - [`client`]: `hlsfarm submit`, `status`, `cancel`, `retry`: the operator side of the API.
//! - `submit_follow`: `submit --follow`, a folder's new models added to an open sweep.
//! - [`report`]: `hlsfarm report`, the figures of a project folder or report file.
//! - [`results`]: `hlsfarm results`, a finished sweep's trials as a table, JSON or CSV.
//! - [`sweep_args`]: the sweep a command's flags (or sweep file) describe, shared by `run`,
//!   `check` and `submit`.
//! - [`watch`]: `hlsfarm watch`, the cluster live in the terminal.
//!
//! `hlsfarm run` is [`crate::onehost`], `hlsfarm serve` [`crate::server`], `hlsfarm worker`
//! the worker crate's daemon, `hlsfarm bench` [`crate::bench`].

pub mod check;
pub mod client;
pub mod report;
pub mod results;
mod submit_follow;
pub mod sweep_args;
pub mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hlsfarm_common::config::{Config, LogFormat};

/// hlsfarm: hls4ml conversion, emulation and Vitis/Vivado synthesis of model sweeps.
#[derive(Debug, Parser)]
#[command(name = "hlsfarm", version)]
pub struct Cli {
    /// TOML config file (also `HLSFARM_CONFIG`). Precedence: defaults < file <
    /// `HLSFARM_<SECTION>__<KEY>` environment (e.g. `HLSFARM_COORDINATOR__LEASE_MS`) < flags.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets redacted) as TOML and exit.
    #[arg(long, global = true)]
    pub dump_config: bool,

    /// Log line format: text or json.
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sweep on this host (the successor of parallel_hls_synthesis.py): convert,
    /// emulate and, where Vitis HLS / Vivado are installed, synthesize every model in a folder
    /// for every settings point; write OUTPUT_DIR/hls_<model>/ with the kept files, a tarball
    /// and result.json per trial, and synthesis_results.json and results.csv. Running it again
    /// reuses finished trials. Exit code: 0 all succeeded, 1 some failed, 130 interrupted.
    Run(Box<crate::onehost::RunArgs>),
    /// Preflight without synthesis: convert each model for each settings point (the same
    /// flags as `run`; no emulation, no tools) and print what the tools would refuse or
    /// struggle with: arrays partitioned above max_array_partition_size (with the size
    /// needed), reuse factors hls4ml changes, io_parallel designs too large to compile.
    /// Exit code: 0 nothing refused, 1 a finding the tools would refuse or a model that does
    /// not convert.
    Check(Box<crate::cli::check::CheckArgs>),
    /// Run the cluster coordinator: serves operators and workers over gRPC, keeps every fact
    /// in Redis (coordinator.redis_url), results in the store (store.url). Needs
    /// coordinator.operator_token and coordinator.worker_token. Stops on SIGTERM/Ctrl-C.
    Serve {
        /// Address to listen on (coordinator.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Redis URL (coordinator.redis_url).
        #[arg(long)]
        redis_url: Option<String>,
        /// Store URL: a folder or s3://bucket/prefix (store.url).
        #[arg(long)]
        store: Option<String>,
        /// PEM certificate chain: serve gRPC and HTTP over TLS (coordinator.tls_cert); with
        /// --tls-key.
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// PEM private key of --tls-cert (coordinator.tls_key).
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
    },
    /// Run a worker daemon on this host: registers its tools, hls4ml venv, cores and memory
    /// with the coordinator, leases trials that fit, runs them (convert, emulate, the tool
    /// stages), uploads the pruned results to the store and reports. SIGTERM drains: no new
    /// leases, running trials get worker.drain_timeout_s to finish, the rest go back.
    Worker(Box<WorkerArgs>),
    /// Submit a sweep to a coordinator: uploads the model files (and companions:
    /// `<stem>_weights.h5` of a Keras JSON, `<stem>.py` of a PyTorch file,
    /// `<stem>_inputs.npy`), queues every trial without a stored result, prints the sweep id.
    Submit(Box<crate::cli::client::SubmitArgs>),
    /// Show the cluster: sweeps with counts and ETA, workers and what they run, licence
    /// seats, recent failures. `--json` prints the same JSON as the coordinator's
    /// `/api/status`.
    Status {
        /// The coordinator.
        #[command(flatten)]
        client: crate::cli::client::ClientArgs,
        /// Include finished sweeps.
        #[arg(long)]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Watch the cluster live, full screen: sweeps with progress and ETA, workers with their
    /// trials and heartbeat age, seats, recent failures and queue events as they happen.
    /// q, Esc or Ctrl-C quits. The same view is a web page at the coordinator's address.
    Watch {
        /// The coordinator.
        #[command(flatten)]
        client: crate::cli::client::ClientArgs,
        /// Show only this sweep's events.
        #[arg(long)]
        sweep: Option<String>,
    },
    /// Cancel a sweep, or some of its trials: queued ones are dropped, running ones are
    /// killed on their workers.
    Cancel {
        /// The coordinator.
        #[command(flatten)]
        client: crate::cli::client::ClientArgs,
        /// The sweep id.
        sweep: String,
        /// Only these trial keys.
        trials: Vec<String>,
    },
    /// Queue a sweep's failed, dead and cancelled trials again (or only the keys given).
    Retry {
        /// The coordinator.
        #[command(flatten)]
        client: crate::cli::client::ClientArgs,
        /// The sweep id.
        sweep: String,
        /// Only these trial keys.
        trials: Vec<String>,
    },
    /// Measure: each benchmark starts its own redis-server and coordinator and prints its
    /// figures, one per line (see BENCHMARKS.md). Set HLSFARM_BENCH_LOG=<folder> to keep the
    /// children's logs there.
    #[command(subcommand)]
    Bench(crate::bench::Bench),
    /// Print a finished sweep's trials from its output folder (synthesis_results.json):
    /// settings, resources, latency, fidelity and failures.
    Results {
        /// The sweep's output folder (or its synthesis_results.json).
        path: PathBuf,
        /// table, json or csv.
        #[arg(long, value_enum, default_value = "table")]
        format: crate::cli::results::Format,
        /// Rank the successful trials by Pareto tier over these objectives, then by the
        /// first, e.g. `accuracy:max,lut:min,latency_ns:min` (metrics: accuracy,
        /// float_accuracy, accuracy_drop, auc, parameters, lut, ff, dsp, bram, latency_ns,
        /// latency_cycles, fmax_mhz, max_abs_diff, and the search's own metrics and
        /// hyperparameters); without a value: accuracy, LUT and latency where known.
        #[arg(long, value_name = "OBJECTIVES", num_args = 0..=1, default_missing_value = "")]
        rank: Option<String>,
    },
    /// Print the figures of an hls4ml project folder, or of one report or log file:
    /// C synthesis (`<top>_csynth.xml`/`.rpt`), Vivado synthesis (`vivado_synth.rpt`),
    /// co-simulation (`<top>_cosim.rpt`), and the tool logs with a failure class and fix.
    Report {
        /// An hls4ml project folder (with project.tcl), or one report or log file.
        path: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of `hlsfarm worker`; each overrides its `[worker]` config key.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The coordinator's URL (worker.coordinator), e.g. http://coord:7070 or
    /// https://coord:7070.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// PEM certificate of the CA that signed an https:// coordinator's certificate
    /// (worker.ca_cert); the system's roots are trusted too.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// The worker token (worker.token). Prefer HLSFARM_WORKER__TOKEN: flags show in `ps`.
    #[arg(long)]
    pub token: Option<String>,
    /// The store (store.url): the folder or s3://bucket/prefix the coordinator uses.
    #[arg(long)]
    pub store: Option<String>,
    /// Folder for trial projects (worker.scratch).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Trials at once (worker.slots); default cores / 2.
    #[arg(long)]
    pub slots: Option<u32>,
    /// The hls4ml venv's python (worker.python).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// No lease below this much free scratch disk, GiB (worker.min_free_disk_gib).
    #[arg(long)]
    pub min_free_disk_gib: Option<u64>,
    /// Exit when no work is left and nothing runs (for batch schedulers such as Slurm).
    #[arg(long)]
    pub exit_when_idle: bool,
    /// This worker's id; default `<host>-<pid>`.
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Benchmarks and fault tests only (`hlsfarm bench dispatch`): every trial is a no-op
    /// that uploads an empty result.json and completes.
    #[arg(long, hide = true)]
    pub bench_noop: bool,
    /// Benchmarks and fault tests only: how long each no-op trial takes, ms.
    #[arg(long, hide = true, default_value_t = 0)]
    pub bench_noop_ms: u64,
    /// Benchmarks and fault tests only: percent of no-op attempts that fail (half as
    /// tool_error, half as oom).
    #[arg(long, hide = true, default_value_t = 0)]
    pub bench_noop_fail_percent: u32,
}

impl Cli {
    /// Loads the configuration with this command line's flags as the top layer.
    pub fn load_config(&self) -> Result<Config, hlsfarm_common::config::Error> {
        // The flags that override config values, as a partial config for the last layer.
        let mut overrides = serde_json::json!({});
        if let Some(format) = self.log_format {
            overrides["log"] = serde_json::json!({ "format": format });
        }
        if let Some(Command::Serve {
            listen,
            redis_url,
            store,
            tls_cert,
            tls_key,
        }) = &self.command
        {
            if let Some(v) = listen {
                overrides["coordinator"]["listen"] = v.clone().into();
            }
            if let Some(v) = redis_url {
                overrides["coordinator"]["redis_url"] = v.clone().into();
            }
            if let Some(v) = store {
                overrides["store"]["url"] = v.clone().into();
            }
            if let Some(v) = tls_cert {
                overrides["coordinator"]["tls_cert"] = v.display().to_string().into();
            }
            if let Some(v) = tls_key {
                overrides["coordinator"]["tls_key"] = v.display().to_string().into();
            }
        }
        if let Some(Command::Worker(w)) = &self.command {
            let mut worker = serde_json::Map::new();
            if let Some(v) = &w.coordinator {
                worker.insert("coordinator".into(), v.clone().into());
            }
            if let Some(v) = &w.token {
                worker.insert("token".into(), v.clone().into());
            }
            if let Some(v) = &w.ca_cert {
                worker.insert("ca_cert".into(), v.display().to_string().into());
            }
            if let Some(v) = &w.scratch {
                worker.insert("scratch".into(), v.display().to_string().into());
            }
            if let Some(v) = w.slots {
                worker.insert("slots".into(), v.into());
            }
            if let Some(v) = &w.python {
                worker.insert("python".into(), v.display().to_string().into());
            }
            if let Some(v) = w.min_free_disk_gib {
                worker.insert("min_free_disk_gib".into(), v.into());
            }
            overrides["worker"] = worker.into();
            if let Some(v) = &w.store {
                overrides["store"] = serde_json::json!({ "url": v });
            }
        }
        Config::load(self.config.as_deref(), &overrides)
    }
}

/// Runs the command line; returns the process exit code.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    let config = cli.load_config()?;
    if cli.dump_config {
        print!("{}", toml::to_string(&config.redacted())?);
        return Ok(0);
    }
    crate::telemetry::init_tracing(&config.log);
    match cli.command {
        Some(Command::Report { path, json }) => crate::cli::report::run(&path, json),
        Some(Command::Run(args)) => crate::onehost::run(*args).await,
        Some(Command::Check(args)) => crate::cli::check::run(*args).await,
        Some(Command::Serve { .. }) => crate::server::serve(config).await,
        Some(Command::Bench(bench)) => crate::bench::run(bench).await,
        Some(Command::Submit(args)) => crate::cli::client::submit(*args).await,
        Some(Command::Status { client, all, json }) => {
            crate::cli::client::status(&client, all, json).await
        }
        Some(Command::Watch { client, sweep }) => crate::cli::watch::watch(&client, sweep).await,
        Some(Command::Cancel {
            client,
            sweep,
            trials,
        }) => crate::cli::client::cancel(&client, &sweep, &trials).await,
        Some(Command::Retry {
            client,
            sweep,
            trials,
        }) => crate::cli::client::retry(&client, &sweep, &trials).await,
        Some(Command::Worker(w)) => {
            if config.worker.token.is_empty() {
                anyhow::bail!(
                    "no worker token: set HLSFARM_WORKER__TOKEN (or --token, or worker.token)"
                );
            }
            Ok(
                hlsfarm_worker::daemon::run(hlsfarm_worker::daemon::Options {
                    config: config.worker.clone(),
                    store: config.store.clone(),
                    exit_when_idle: w.exit_when_idle,
                    worker_id: w.worker_id.clone(),
                    noop: w.bench_noop,
                    noop_ms: w.bench_noop_ms,
                    noop_fail_percent: w.bench_noop_fail_percent,
                })
                .await?,
            )
        }
        Some(Command::Results { path, format, rank }) => {
            crate::cli::results::run(&path, format, rank.as_deref())
        }
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(2)
        }
    }
}
