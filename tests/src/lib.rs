//! The harness for hlsfarm's cross-process tests: real servers and real binaries, each in a
//! temp folder with its own logs, and waits on predicates under deadlines (never fixed sleeps).
//!
//! - [`TestDir`]: a temp folder kept when the test fails (or when `HLSFARM_KEEP_TEST_DIRS=1`).
//! - [`RedisServer`]: a real `redis-server` on a free port, with or without AOF.
//! - [`S3Server`]: a real S3-compatible server (moto) on a free port, with a bucket.
//! - [`Process`]: any child process with captured stdout/stderr, killed on drop.
//! - [`hlsfarm_bin`], [`standin_bin_dir`], [`hls4ml_python`], [`shared_dir`]: where things are.
//! - [`wait_until`]: poll a predicate until it holds or a deadline passes.
//!
//! The tools come from `.ci/setup`, which writes `$HLSFARM_HOME/env`; `make test` sources it.
//! A missing tool is an error that says how to install it, never a silent skip.

#![deny(clippy::unwrap_used)]

pub mod cluster;
pub mod proxy;
pub mod standin;
pub mod tls;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

/// How to install what the tests need.
const SETUP_HINT: &str = "run `make setup` (or `bash .ci/setup`) and `source ~/.local/share/hlsfarm/env`, or use `make test`, which does both";

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

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A child process with stdout and stderr in files, killed (SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Starts `command` with its output captured in `dir/<name>.stdout` and `.stderr`.
    pub fn spawn(name: &str, mut command: Command, dir: &Path) -> Result<Process> {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Process {
            name: name.to_owned(),
            child: Some(child),
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("{} was already reaped", self.name),
        }
    }

    /// Waits for it to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        if self.child.is_none() {
            bail!("{name} was already reaped");
        }
        wait_until(&format!("{name} to exit"), timeout, || {
            self.try_status().ok().flatten()
        })
        .with_context(|| format!("{name} stderr:\n{}", self.stderr()))
    }

    /// Sends a signal (e.g. `SIGTERM`) to it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("{} is gone", self.name))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("signalling {}", self.name))
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Finds a program from an environment variable, else on PATH, else fails with the set-up hint.
fn program(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "{env} points at {}, which does not exist; {SETUP_HINT}",
            path.display()
        );
    }
    which(name).ok_or_else(|| anyhow!("{name} not found ({env} is unset); {SETUP_HINT}"))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Options for [`RedisServer::start`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisOptions {
    /// `appendonly yes` with `appendfsync everysec`, as the deploy docs recommend.
    pub aof: bool,
}

/// A real `redis-server` on a free port, stopped when dropped.
pub struct RedisServer {
    process: Process,
    port: u16,
    dir: PathBuf,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts a server with its data and log in `dir`, and waits until it answers PING.
    pub fn start(dir: &Path, options: RedisOptions) -> Result<RedisServer> {
        let port = free_port()?;
        let process = Self::spawn(dir, port, options)?;
        let server = RedisServer {
            process,
            port,
            dir: dir.to_owned(),
            options,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(dir: &Path, port: u16, options: RedisOptions) -> Result<Process> {
        let mut command = Command::new(program("REDIS_SERVER", "redis-server")?);
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if options.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        Process::spawn(&format!("redis-{port}"), command, dir)
    }

    fn wait_ready(&self) -> Result<()> {
        let url = self.url();
        wait_until(
            &format!("redis-server at {url} to answer PING"),
            Duration::from_secs(10),
            || (self.command(&["PING"]).ok()? == "+PONG").then_some(()),
        )
        .with_context(|| std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default())
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many commands this Redis has run, counting those run inside scripts (its
    /// `total_commands_processed`).
    pub fn commands_processed(&self) -> Result<u64> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")?;
        let mut reply = String::new();
        let mut chunk = [0u8; 4096];
        while !reply.contains("total_commands_processed:") || !reply.ends_with("\r\n") {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            reply.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        reply
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("INFO stats without total_commands_processed: {reply}"))
    }

    /// Sends one command in the inline protocol and returns the first reply line (`+OK`,
    /// `:1`, `$3` ...). Enough for harness checks; tests use the redis crate for real work.
    pub fn command(&self, args: &[&str]) -> Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte)? == 1 && byte[0] != b'\n' {
            reply.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
    }

    /// Stops the server cleanly (SIGTERM: with AOF, it fsyncs) and starts it again on the same
    /// port and folder.
    pub fn restart(&mut self) -> Result<()> {
        self.process.signal(nix::sys::signal::Signal::SIGTERM)?;
        self.process.wait(Duration::from_secs(10))?;
        self.process = Self::spawn(&self.dir, self.port, self.options)?;
        self.wait_ready()
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
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
