//! A cluster in one test: a real `redis-server`, `hlsfarm serve` processes on free ports, a
//! store folder, and `hlsfarm worker` processes; tokens made up per cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::proxy::TcpProxy;
use crate::tls::TestCa;
use crate::{Process, RedisOptions, RedisServer, free_port, hlsfarm_command, wait_until};

/// The operator token of test clusters.
pub const OPERATOR_TOKEN: &str = "test-operator-token-3f9a";
/// The worker token of test clusters.
pub const WORKER_TOKEN: &str = "test-worker-token-b71c";

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Lease length, ms.
    pub lease_ms: u64,
    /// Heartbeat period, ms.
    pub heartbeat_ms: u64,
    /// Attempts per trial.
    pub max_attempts: u32,
    /// Backoff after a retryable failure, ms.
    pub retry_backoff_ms: u64,
    /// Seat limits (`vsynth=2`), joined into the TOML table.
    pub seats: Vec<(String, u32)>,
    /// Redis with AOF.
    pub aof: bool,
    /// A store URL instead of the cluster's folder (S3).
    pub store_url: Option<String>,
    /// Extra environment for coordinators and workers (S3 keys, say).
    pub env: Vec<(String, String)>,
    /// Serve over TLS with a test CA; clients trust it through `--ca-cert`.
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            lease_ms: 2000,
            heartbeat_ms: 300,
            max_attempts: 3,
            retry_backoff_ms: 100,
            seats: Vec::new(),
            aof: false,
            store_url: None,
            env: Vec::new(),
            tls: false,
        }
    }
}

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    /// The Redis server.
    pub redis: RedisServer,
    /// Coordinator processes (index = the order started).
    pub coordinators: Vec<(Process, u16)>,
    options: ClusterOptions,
    /// The test CA when serving over TLS.
    pub ca: Option<TestCa>,
}

impl Cluster {
    /// Starts Redis and one coordinator.
    pub fn start(dir: &Path, options: ClusterOptions) -> Result<Cluster> {
        let redis = RedisServer::start(dir, RedisOptions { aof: options.aof })?;
        let ca = if options.tls {
            Some(TestCa::write(dir)?)
        } else {
            None
        };
        let mut cluster = Cluster {
            dir: dir.to_owned(),
            redis,
            coordinators: Vec::new(),
            options,
            ca,
        };
        cluster.start_coordinator()?;
        Ok(cluster)
    }

    /// The store folder.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn store_url(&self) -> String {
        self.options
            .store_url
            .clone()
            .unwrap_or_else(|| self.store().display().to_string())
    }

    fn config(&self) -> Result<PathBuf> {
        let path = self.dir.join("hlsfarm.toml");
        let seats: Vec<String> = self
            .options
            .seats
            .iter()
            .map(|(f, n)| format!("{f} = {n}"))
            .collect();
        let tls = self.ca.as_ref().map_or(String::new(), |ca| {
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                ca.server_cert.display(),
                ca.server_key.display()
            )
        });
        let text = format!(
            "[coordinator]\n{tls}redis_url = \"{}\"\nkey_prefix = \"test\"\nlease_ms = {}\nheartbeat_ms = {}\nmax_attempts = {}\nretry_backoff_ms = {}\nseats = {{ {} }}\n[store]\nurl = \"{}\"\n",
            self.redis.url(),
            self.options.lease_ms,
            self.options.heartbeat_ms,
            self.options.max_attempts,
            self.options.retry_backoff_ms,
            seats.join(", "),
            self.store_url(),
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts one more coordinator on a free port and waits until it listens.
    pub fn start_coordinator(&mut self) -> Result<usize> {
        let port = free_port()?;
        self.spawn_coordinator(port)?;
        Ok(self.coordinators.len() - 1)
    }

    fn spawn_coordinator(&mut self, port: u16) -> Result<()> {
        let mut command = hlsfarm_command()?;
        command
            .arg("--config")
            .arg(self.config()?)
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("HLSFARM_COORDINATOR__OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("HLSFARM_COORDINATOR__WORKER_TOKEN", WORKER_TOKEN)
            .env("RUST_LOG", "info");
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        let n = self.coordinators.len();
        let mut process = Process::spawn(&format!("coordinator-{n}"), command, &self.dir)?;
        wait_until("the coordinator to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .map_err(|e| {
            let _ = process.try_status();
            anyhow::anyhow!(
                "coordinator did not listen on {port}: {e}\n{}",
                process.stderr()
            )
        })?;
        self.coordinators.push((process, port));
        Ok(())
    }

    /// Kills coordinator `i` with SIGKILL and starts a new one on the same port.
    pub fn restart_coordinator(&mut self, i: usize) -> Result<()> {
        let (mut old, port) = self.coordinators.remove(i);
        // SIGKILL and reap.
        old.kill();
        self.spawn_coordinator(port)?;
        let last = self
            .coordinators
            .pop()
            .ok_or_else(|| anyhow::anyhow!("lost"))?;
        self.coordinators.insert(i, last);
        Ok(())
    }

    /// The URL of coordinator `i` (`https://localhost:PORT` with TLS).
    pub fn url(&self, i: usize) -> String {
        self.url_at(self.coordinators[i].1)
    }

    /// The URL of whatever listens on `port` here, with this cluster's scheme (a proxy's).
    pub fn url_at(&self, port: u16) -> String {
        if self.ca.is_some() {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        }
    }

    /// A proxy to coordinator `i` that the test can cut ([`TcpProxy`]).
    pub fn proxy_to(&self, i: usize) -> Result<TcpProxy> {
        TcpProxy::start(([127, 0, 0, 1], self.coordinators[i].1).into())
    }

    /// An `hlsfarm` command with the operator's URL and token for coordinator 0.
    pub fn operator_command(&self) -> Result<Command> {
        let mut command = hlsfarm_command()?;
        command
            .env("HLSFARM_URL", self.url(0))
            .env("HLSFARM_TOKEN", OPERATOR_TOKEN);
        if let Some(ca) = &self.ca {
            command.env("HLSFARM_CA_CERT", &ca.ca_cert);
        }
        Ok(command)
    }

    /// Starts a worker against coordinator 0 with the stand-in tools on PATH; `extra` are
    /// flags, `env` more environment (stand-in knobs).
    pub fn start_worker(
        &self,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Process> {
        self.start_worker_at(&self.url(0), name, extra, env)
    }

    /// [`Cluster::start_worker`] talking to the coordinator at `url` (through a proxy, say).
    pub fn start_worker_at(
        &self,
        url: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Process> {
        let scratch = self.dir.join(format!("scratch-{name}"));
        let mut command = hlsfarm_command()?;
        command
            .args(["worker", "--coordinator"])
            .arg(url)
            .arg("--store")
            .arg(self.store_url())
            .arg("--scratch")
            .arg(&scratch)
            .args(["--worker-id", name])
            .args(extra)
            // No disk floor unless a test sets one (a flag in `extra` wins).
            .env("HLSFARM_WORKER__MIN_FREE_DISK_GIB", "0")
            .env("HLSFARM_WORKER__TOKEN", WORKER_TOKEN)
            .env("HLSFARM_PYTHON", crate::hls4ml_python()?)
            .env("PATH", crate::path_with_standin())
            .env("RUST_LOG", "info");
        if let Some(ca) = &self.ca {
            command.env("HLSFARM_WORKER__CA_CERT", &ca.ca_cert);
        }
        for (k, v) in &self.options.env {
            command.env(k, v);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        Process::spawn(&format!("worker-{name}"), command, &self.dir)
    }

    /// `hlsfarm status --json --all`.
    pub fn status(&self) -> Result<serde_json::Value> {
        let mut command = self.operator_command()?;
        command.args(["status", "--json", "--all"]);
        let out = crate::run_ok(command)?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `hlsfarm submit --input-dir models` with `extra` flags; returns the sweep id (stdout)
    /// and stderr.
    pub fn submit(&self, models: &Path, extra: &[&str]) -> Result<(String, String)> {
        let mut command = self.operator_command()?;
        command
            .arg("submit")
            .arg("--input-dir")
            .arg(models)
            .args(extra);
        let out = crate::run_ok(command)?;
        Ok((
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Trial keys with the stage each runs and the worker running it, from `status --json`.
    pub fn running_on(&self) -> Result<Vec<(String, String, String)>> {
        let status = self.status()?;
        Ok(status["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| {
                let id = w["id"].as_str().unwrap_or_default().to_owned();
                w["trials"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |t| (id.clone(), t))
            })
            .filter_map(|(worker, t)| {
                Some((
                    t["trial"].as_str()?.to_owned(),
                    t["stage"].as_str()?.to_owned(),
                    worker,
                ))
            })
            .collect())
    }

    /// Trial keys with the stage each runs (empty when status cannot be read).
    pub fn running(&self) -> Vec<(String, String)> {
        self.running_on()
            .unwrap_or_default()
            .into_iter()
            .map(|(t, s, _)| (t, s))
            .collect()
    }

    /// The trials of a sweep from the coordinator's `/api/sweeps/<id>/trials` (key, state,
    /// worker, attempt, class, reason ...). Plain HTTP clusters only.
    pub fn trials(&self, sweep: &str) -> Result<Vec<serde_json::Value>> {
        let url = format!("{}/api/sweeps/{sweep}/trials", self.url(0));
        let text = ureq::get(&url).call()?.body_mut().read_to_string()?;
        let json: serde_json::Value = serde_json::from_str(&text)?;
        Ok(json["trials"].as_array().cloned().unwrap_or_default())
    }

    /// The folder the cluster lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The counts of one sweep from `status --json`.
    pub fn counts(&self, sweep: &str) -> Result<serde_json::Value> {
        let status = self.status()?;
        let Some(s) = status["sweeps"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == sweep))
        else {
            bail!("sweep {sweep} not in status: {status}");
        };
        Ok(s["counts"].clone())
    }
}

/// Waits until a worker logs that it registered (its venv is checked first: up to 2 min).
pub fn wait_registered(worker: &Process) {
    if let Err(e) = wait_until("the worker to register", Duration::from_secs(120), || {
        worker.stderr().contains("registered with").then_some(())
    }) {
        panic!("{e}\n{}", worker.stderr());
    }
}
