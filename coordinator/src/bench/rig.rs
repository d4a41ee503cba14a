//! The benchmarks' rig: a `redis-server` and a coordinator of their own on free ports, and
//! what every benchmark needs of them (an operator client, a model, a sweep, Redis facts).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use hlsfarm_common::trial_key::sha256_hex;
use hlsfarm_proto::client::{Bearer, channel};
use hlsfarm_proto::v1::{self, operator_client::OperatorClient, worker_client::WorkerClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::{OPERATOR, WORKER};

/// A child process of the benchmarks: the tests' own ([`hlsfarm_rig::Process`]), its output
/// in files, killed when dropped.
pub(super) use hlsfarm_rig::Process as Proc;
pub(super) use hlsfarm_rig::free_port;

/// A folder for a benchmark's children and their logs: under `HLSFARM_BENCH_LOG` (kept, and
/// named on stderr) when it is set, else a temporary folder that goes with the run.
pub(super) fn log_dir(what: &str) -> anyhow::Result<tempfile::TempDir> {
    let Some(root) = std::env::var_os("HLSFARM_BENCH_LOG") else {
        return Ok(tempfile::tempdir()?);
    };
    std::fs::create_dir_all(&root)?;
    let mut dir = tempfile::Builder::new()
        .prefix(&format!("{what}-"))
        .tempdir_in(&root)?;
    dir.disable_cleanup(true);
    eprintln!("bench: {what} logs in {}", dir.path().display());
    Ok(dir)
}

/// Waits until something listens on `port` (at most 30 s).
pub(super) fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    hlsfarm_rig::wait_until(
        &format!("{what} to listen on port {port}"),
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    )
    .map(drop)
}

/// A Redis and a coordinator of our own.
pub(crate) struct Rig {
    _redis: hlsfarm_rig::RedisServer,
    pub(super) coordinator: Proc,
    /// More coordinators on the same Redis ([`Rig::add_coordinator`]), with their URLs.
    more: Vec<(Proc, String)>,
    /// The Redis URL.
    pub redis_url: String,
    /// The coordinator's URL.
    pub url: String,
    /// The store folder.
    pub store: PathBuf,
    /// The folder of the store, the children and their logs (dropped last, after them).
    dir: tempfile::TempDir,
}

impl Rig {
    pub(crate) fn start(extra_env: &[(&str, &str)]) -> anyhow::Result<Rig> {
        let dir = log_dir("rig")?;
        // The tests' own rig: a redis-server on a free port, answering PING.
        let redis = hlsfarm_rig::RedisServer::start(dir.path(), Default::default())?;
        let redis_url = redis.url();
        let store = dir.path().join("store");
        let (coordinator, url) =
            spawn_coordinator("coordinator", dir.path(), &redis_url, &store, extra_env)?;
        Ok(Rig {
            _redis: redis,
            coordinator,
            more: Vec::new(),
            redis_url,
            url,
            store,
            dir,
        })
    }

    /// Starts one more coordinator on the same Redis and store; returns its URL.
    pub(super) fn add_coordinator(&mut self) -> anyhow::Result<String> {
        let name = format!("coordinator-{}", self.more.len() + 2);
        let (proc, url) =
            spawn_coordinator(&name, self.dir.path(), &self.redis_url, &self.store, &[])?;
        self.more.push((proc, url.clone()));
        Ok(url)
    }

    /// Every coordinator's URL, the first one's first.
    pub(super) fn urls(&self) -> Vec<String> {
        std::iter::once(self.url.clone())
            .chain(self.more.iter().map(|(_, u)| u.clone()))
            .collect()
    }

    /// Every coordinator's process id.
    pub(super) fn coordinator_pids(&self) -> Vec<u32> {
        std::iter::once(&self.coordinator)
            .chain(self.more.iter().map(|(p, _)| p))
            .filter_map(Proc::pid)
            .collect()
    }

    /// Starts `command` as `name`, its logs in the rig's folder.
    pub(super) fn spawn(&self, name: &str, command: Command) -> anyhow::Result<Proc> {
        Proc::spawn(name, command, self.dir.path())
    }

    pub(crate) fn operator(
        &self,
    ) -> anyhow::Result<OperatorClient<InterceptedService<Channel, Bearer>>> {
        let (c, b) = channel(&self.url, OPERATOR, None).map_err(anyhow::Error::msg)?;
        Ok(OperatorClient::with_interceptor(c, b))
    }

    pub(crate) async fn worker(
        &self,
        id: &str,
    ) -> anyhow::Result<WorkerClient<InterceptedService<Channel, Bearer>>> {
        let (c, b) = channel(&self.url, WORKER, None).map_err(anyhow::Error::msg)?;
        let mut w = WorkerClient::with_interceptor(c, b);
        w.register(v1::RegisterRequest {
            worker_id: id.into(),
            hostname: "bench".into(),
            capabilities: Some(v1::Capabilities {
                backends: vec![v1::Backend::Vitis as i32],
                tools: [("vitis_hls".to_owned(), "2023.2".to_owned())]
                    .into_iter()
                    .collect(),
                hls4ml_version: "1.3.0".into(),
                slots: 64,
                memory_mib: 1 << 30,
                cores: 1 << 16,
                formats: vec!["keras_h5".into()],
                ..Default::default()
            }),
            version: "bench".into(),
        })
        .await?;
        Ok(w)
    }

    /// `hlsfarm worker` against this rig: id, slots, scratch beside the store, no disk floor,
    /// the worker token, log level warn.
    pub(super) fn worker_command(&self, id: &str, slots: u32) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args([
                "worker",
                "--coordinator",
                &self.url,
                "--slots",
                &slots.to_string(),
                "--worker-id",
                id,
                "--min-free-disk-gib",
                "0",
            ])
            .arg("--store")
            .arg(&self.store)
            .arg("--scratch")
            .arg(self.store.with_file_name(format!("scratch-{id}")))
            .env("HLSFARM_WORKER__TOKEN", WORKER)
            .env("RUST_LOG", "warn");
        Ok(command)
    }

    pub(super) fn coordinator_rss_mib(&self) -> f64 {
        let pid = self.coordinator.pid().unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// `hlsfarm serve` as `name` (its logs in `dir`) on a free port against `redis_url` and
/// `store`; returns it and its URL.
fn spawn_coordinator(
    name: &str,
    dir: &Path,
    redis_url: &str,
    store: &std::path::Path,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<(Proc, String)> {
    let port = free_port()?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            redis_url,
        ])
        .arg("--store")
        .arg(store)
        .env("HLSFARM_COORDINATOR__OPERATOR_TOKEN", OPERATOR)
        .env("HLSFARM_COORDINATOR__WORKER_TOKEN", WORKER)
        .env("RUST_LOG", "info");
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let coordinator = Proc::spawn(name, command, dir)?;
    wait_port(port, "the coordinator")
        .with_context(|| format!("{name} stderr:\n{}", coordinator.stderr()))?;
    Ok((coordinator, format!("http://127.0.0.1:{port}")))
}

/// Uploads one small model (distinct per `tag`) and returns it.
pub(crate) async fn model(
    op: &mut OperatorClient<InterceptedService<Channel, Bearer>>,
    tag: &str,
) -> anyhow::Result<v1::ModelInput> {
    upload_model(
        op,
        &format!("bench_{tag}.h5"),
        &format!("bench model {tag}"),
        20_000,
    )
    .await
}

/// Uploads a model file `name` of `size` bytes (`seed` repeated, so distinct seeds give
/// distinct files) and returns it.
pub(super) async fn upload_model(
    op: &mut OperatorClient<InterceptedService<Channel, Bearer>>,
    name: &str,
    seed: &str,
    size: usize,
) -> anyhow::Result<v1::ModelInput> {
    let bytes: Vec<u8> = seed.bytes().cycle().take(size).collect();
    let sha = sha256_hex(&bytes);
    op.upload_model(tokio_stream::iter(vec![v1::UploadChunk {
        name: name.to_owned(),
        sha256: sha.clone(),
        data: bytes.clone(),
    }]))
    .await?;
    Ok(v1::ModelInput {
        name: name.to_owned(),
        sha256: sha,
        size_bytes: bytes.len() as u64,
        companions: Default::default(),
    })
}

/// A convert-only sweep of `trials` points (reuse factors × clock periods) of one model.
pub(crate) fn sweep(model: v1::ModelInput, trials: u32) -> v1::SweepSpec {
    let clocks = trials.div_ceil(1000).max(1);
    let per_clock = trials / clocks;
    v1::SweepSpec {
        name: "bench".into(),
        models: vec![model],
        grid: Some(v1::SettingsGrid {
            reuse_factor: (1..=per_clock).collect(),
            clock_period_ns: (0..clocks).map(|c| 2.0 + f64::from(c) / 100.0).collect(),
            ..Default::default()
        }),
        stages: vec![v1::Stage::Convert as i32],
        priority: 1,
        toolchain: Some(v1::ToolchainSpec {
            hls4ml_version: "1.3.0".into(),
            tool: String::new(),
            tool_version: String::new(),
        }),
        ..Default::default()
    }
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(super) async fn redis_info(url: &str, section: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("INFO").arg(section).query_async(&mut c).await?)
}

pub(super) async fn redis_cmd(url: &str, args: &[&str]) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query_async(&mut c).await?;
    Ok(())
}

/// `cmdstat_<name>:calls=N,...` lines → (name, calls).
pub(super) fn command_calls(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

pub(super) fn info_field(info: &str, field: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
}
