//! The harness for hlsfarm's cross-process tests: real servers and real binaries, each in a
//! temp folder with its own logs, and waits on predicates under deadlines (never fixed sleeps).
//!
//! - [`TestDir`]: a temp folder kept when the test fails (or when `HLSFARM_KEEP_TEST_DIRS=1`).
//! - [`RedisServer`]: a real `redis-server` on a free port, with or without AOF (from
//!   `hlsfarm-rig`, which the benchmarks use too, as [`Process`] and [`wait_until`]).
//! - [`S3Server`]: a real S3-compatible server (moto) on a free port, with a bucket.
//! - [`Process`]: any child process with captured stdout/stderr, killed on drop.
//! - [`hlsfarm_bin`], [`standin_bin_dir`], [`hls4ml_python`], [`shared_dir`]: where things are.
//! - [`wait_until`]: poll a predicate until it holds or a deadline passes.
//!
//! The tools come from `.ci/setup`, which writes `$HLSFARM_HOME/env`; `make test` sources it.
//! A missing tool is an error that says how to install it, never a silent skip.

#![deny(clippy::unwrap_used)]

pub use hlsfarm_rig::{
    Process, RedisOptions, RedisServer, SETUP_HINT, free_port, program, wait_until,
};

pub mod cluster;
pub mod proxy;
pub mod standin;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// The six files the original script kept per trial (its README), which hlsfarm keeps too.
pub const SEED_KEPT_FILES: &[&str] = &[
    "project.tcl",
    "vitis_hls.log",
    "vivado_synth.rpt",
    "vivado_synth.tcl",
    "vivado.jou",
    "vivado.log",
];

/// A temp folder for one test: removed when the test passes, kept (and its path printed) when
/// it fails or when `HLSFARM_KEEP_TEST_DIRS=1`.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Makes a new folder whose name starts with `name`.
    pub fn new(name: &str) -> Result<TestDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("hlsfarm-{name}-"))
            .tempdir()
            .context("creating a test folder")?;
        let path = dir.path().to_owned();
        Ok(TestDir {
            dir: Some(dir),
            path,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::thread::panicking()
            || std::env::var("HLSFARM_KEEP_TEST_DIRS").is_ok_and(|v| v == "1");
        if keep && let Some(dir) = self.dir.take() {
            let path = dir.keep();
            eprintln!("test folder kept: {}", path.display());
        }
    }
}

/// A real S3-compatible server (moto) on a free port, with one bucket; stopped when dropped.
pub struct S3Server {
    process: Process,
    port: u16,
    bucket: String,
    dir: PathBuf,
}

impl S3Server {
    /// Starts the server with its logs in `dir`, waits until it answers, and creates `bucket`.
    pub fn start(dir: &Path, bucket: &str) -> Result<S3Server> {
        let port = free_port()?;
        let process = Self::spawn(dir, port, bucket)?;
        Ok(S3Server {
            process,
            port,
            bucket: bucket.to_owned(),
            dir: dir.to_owned(),
        })
    }

    fn spawn(dir: &Path, port: u16, bucket: &str) -> Result<Process> {
        let mut command = Command::new(program("HLSFARM_MOTO_SERVER", "moto_server")?);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut process = Process::spawn(&format!("moto-{port}"), command, dir)?;
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_until(
            &format!("the S3 server at {endpoint} to answer"),
            Duration::from_secs(30),
            || {
                if let Ok(Some(status)) = process.try_status() {
                    return Some(Err(anyhow!(
                        "moto_server exited with {status}: {}",
                        process.stderr()
                    )));
                }
                ureq::get(&endpoint).call().ok().map(|_| Ok(()))
            },
        )??;
        // moto accepts unsigned requests: a plain PUT creates the bucket.
        ureq::put(&format!("{endpoint}/{bucket}"))
            .send_empty()
            .with_context(|| format!("creating bucket {bucket}"))?;
        Ok(process)
    }

    /// Stops the server, as an outage would (moto keeps nothing: a restart starts empty).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port, with the bucket.
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process = Self::spawn(&self.dir, self.port, &self.bucket)?;
        Ok(())
    }

    /// The endpoint URL (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The environment that points `hlsfarm serve` and `worker` at this server through
    /// `endpoint` (its own, or a proxy's), with moto's test keys.
    pub fn env_via(&self, endpoint: &str) -> Vec<(String, String)> {
        [
            ("HLSFARM_STORE__S3_ENDPOINT", endpoint),
            ("HLSFARM_STORE__S3_ALLOW_HTTP", "true"),
            ("HLSFARM_STORE__S3_ACCESS_KEY_ID", "test"),
            ("HLSFARM_STORE__S3_SECRET_ACCESS_KEY", "test"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    /// The store at `s3://<bucket>/<prefix>` on this server, as hlsfarm opens it.
    pub fn blobs(&self, prefix: &str) -> Result<hlsfarm_common::blob::Blobs> {
        use hlsfarm_common::config::{Secret, StoreConfig};
        Ok(hlsfarm_common::blob::Blobs::open(&StoreConfig {
            url: format!("s3://{}/{prefix}", self.bucket),
            s3_endpoint: self.endpoint(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: Secret::new("test"),
            s3_secret_access_key: Secret::new("test"),
            s3_allow_http: true,
        })?)
    }
}

/// The `hlsfarm` binary of this build (`target/<profile>/hlsfarm`), or `$HLSFARM_BIN`.
pub fn hlsfarm_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("HLSFARM_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Test binaries live in target/<profile>/deps/; the hlsfarm binary in target/<profile>/.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot locate the target folder from {}", exe.display()))?;
    let bin = profile_dir.join("hlsfarm");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build -p hlsfarm-coordinator` (cargo test --workspace does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A `Command` for the hlsfarm binary with a clean `HLSFARM_*` environment.
pub fn hlsfarm_command() -> Result<Command> {
    let mut command = Command::new(hlsfarm_bin()?);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HLSFARM_") {
            command.env_remove(key);
        }
    }
    Ok(command)
}

/// The folder holding the Xilinx stand-in's tool names (`vitis-run`, `vitis_hls`, ...).
pub fn standin_bin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("standin/bin")
}

/// A PATH value with the stand-in's tools first.
pub fn path_with_standin() -> std::ffi::OsString {
    let mut paths = vec![standin_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// The Python of the hls4ml venv (`$HLSFARM_PYTHON`).
pub fn hls4ml_python() -> Result<PathBuf> {
    let path = std::env::var_os("HLSFARM_PYTHON")
        .map(PathBuf::from)
        .ok_or_else(|| {
            anyhow!("HLSFARM_PYTHON (the hls4ml venv's python) is unset; {SETUP_HINT}")
        })?;
    if !path.is_file() {
        bail!(
            "HLSFARM_PYTHON points at {}, which does not exist; {SETUP_HINT}",
            path.display()
        );
    }
    Ok(path)
}

/// The Python of the ONNX or PyTorch venv (`$HLSFARM_PYTHON_ONNX`, `$HLSFARM_PYTHON_PYTORCH`).
pub fn format_python(format: &str) -> Result<PathBuf> {
    let var = format!("HLSFARM_PYTHON_{}", format.to_ascii_uppercase());
    let path = std::env::var_os(&var)
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("{var} (the {format} venv's python) is unset; {SETUP_HINT}"))?;
    if !path.is_file() {
        bail!(
            "{var} points at {}, which does not exist; {SETUP_HINT}",
            path.display()
        );
    }
    Ok(path)
}

/// The `shared/` folder beside the repository (`$HLSFARM_SHARED` overrides).
pub fn shared_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("HLSFARM_SHARED").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
        PathBuf::from,
    );
    if !dir.join("models").is_dir() {
        bail!(
            "{} has no models/: check out shared/ beside the repository or set HLSFARM_SHARED",
            dir.display()
        );
    }
    Ok(dir)
}

/// This crate's folder (`tests/`).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies the first `n` example trials (`examples/trials/model_trial_NNN.h5`) into
/// `dir/models` and returns that folder.
pub fn copy_example_trials(dir: &Path, n: usize) -> Result<PathBuf> {
    let models = dir.join("models");
    std::fs::create_dir_all(&models)?;
    let examples = tests_dir().join("../examples/trials");
    for i in 0..n {
        let name = format!("model_trial_{i:03}.h5");
        std::fs::copy(examples.join(&name), models.join(&name))?;
    }
    Ok(models)
}

/// Runs a command to completion and returns its output, failing with its stderr when it fails.
pub fn run_ok(mut command: Command) -> Result<std::process::Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// Every file under `dir`, recursively (empty when it does not exist).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Processes whose working folder is under `dir` (the tools a worker started there).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd"))
            && cwd.starts_with(&dir)
        {
            out.push(pid);
        }
    }
    out
}
