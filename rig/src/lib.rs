//! The process rig that hlsfarm's cross-process tests and its benchmarks share: a real
//! `redis-server` on a free port, child processes with captured output that are killed when
//! dropped, and waits on predicates under deadlines (never fixed sleeps).

#![deny(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// How to install what the rig needs.
pub const SETUP_HINT: &str = "run `make setup` (or `bash .ci/setup`) and `source ~/.local/share/hlsfarm/env`, or use `make test`, which does both";

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
pub fn program(env: &str, name: &str) -> Result<PathBuf> {
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
