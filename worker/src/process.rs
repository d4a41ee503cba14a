//! Running a tool as a process tree the worker can stop: its own process group, a time limit,
//! cancellation, and the tree's peak memory.
//!
//! On timeout or cancel the whole group gets SIGTERM, then SIGKILL after a grace period, so
//! the compilers and simulators a tool spawned die with it (DESIGN §3).
//!
//! Two more guards keep one trial from taking its host down:
//! - a memory limit on the group's summed resident memory, sampled every 100 ms: past it the
//!   group is killed (SIGKILL) and the run ends as [`Ending::MemoryLimit`] with its peak. It is
//!   a sampler rather than `RLIMIT_AS`, which counts address space, not memory: TensorFlow alone
//!   maps several GB it never touches, so an address-space limit near the real need kills the
//!   driver at import.
//! - a guard shell as the group's leader, started through util-linux's `setpriv --pdeathsig`:
//!   when the process that started it dies, even by SIGKILL, the kernel signals the guard, which
//!   kills its whole group. Without `setpriv` on the host the guard is left out (logged once).
//!   The kernel sends that signal when the *thread* that spawned the child exits, so trees are
//!   spawned from the runtime's worker threads, which live as long as the process, never from
//!   `spawn_blocking` threads, which exit when idle.

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// How a process tree ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It ran past its time limit and was killed.
    TimedOut,
    /// It was cancelled and killed.
    Cancelled,
    /// Its resident memory passed the limit (MiB) and it was killed.
    MemoryLimit(u64),
}

/// What running a process tree gave.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// How it ended.
    pub ending: Ending,
    /// Wall time.
    pub elapsed: Duration,
    /// Peak resident memory of the whole group, sampled, in MiB.
    pub peak_memory_mib: u64,
    /// CPU time of the group (user + system, reaped children included) at its last sample,
    /// seconds.
    pub cpu_seconds: f64,
}

/// One sample of a running group.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Resident memory now, MiB.
    pub rss_mib: u64,
    /// CPU time so far, seconds (never less than an earlier sample's).
    pub cpu_seconds: f64,
}

/// Why a process could not be run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It did not start.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Its log file could not be created.
    #[error("cannot create log file {path}: {source}")]
    Log {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// How long a tree gets between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// How often the tree's memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The limits of one process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall time.
    pub timeout: Duration,
    /// Summed resident memory of the group, MiB; `None`: no limit.
    pub memory_mib: Option<u64>,
}

impl Limits {
    /// A time limit only.
    pub fn time(timeout: Duration) -> Limits {
        Limits {
            timeout,
            memory_mib: None,
        }
    }
}

/// The guard shell that leads each tree (see the module's docs): SIGUSR2, the parent-death
/// signal, kills the whole group; SIGTERM and SIGINT only interrupt its `wait`, so a graceful
/// stop reaches the command and the guard outlives it; the command's exit status, or the
/// signal that ended it, becomes the guard's own.
const GUARD: &str = r#"trap 'kill -KILL 0' USR2
trap ':' TERM INT
"$@" &
child=$!
while :; do
    wait "$child"
    rc=$?
    kill -0 "$child" 2>/dev/null || break
done
if [ "$rc" -gt 128 ]; then
    trap - TERM INT
    kill -s "$((rc - 128))" "$$" 2>/dev/null || kill -KILL "$$"
fi
exit "$rc"
"#;

/// `setpriv`, where the host has one (util-linux).
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = which::which("setpriv").ok();
            if found.is_none() {
                tracing::warn!(
                    "setpriv (util-linux) not found: tool processes will not die with this process if it is killed"
                );
            }
            found
        })
        .as_deref()
}

/// `command` wrapped in the guard shell under `setpriv --pdeathsig USR2`, where possible.
fn guarded(command: Command) -> Command {
    let Some(setpriv) = setpriv() else {
        return command;
    };
    let std = command.as_std();
    let mut wrapped = std::process::Command::new(setpriv);
    wrapped
        .args([
            "--pdeathsig",
            "USR2",
            "--",
            "/bin/sh",
            "-c",
            GUARD,
            "hlsfarm-guard",
        ])
        .arg(std.get_program())
        .args(std.get_args());
    if let Some(dir) = std.get_current_dir() {
        wrapped.current_dir(dir);
    }
    for (key, value) in std.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    Command::from(wrapped)
}

/// Runs `command` in a new process group with stdout and stderr appended to `log`, until it
/// exits, `timeout` passes, or `cancel` fires; in the last two cases the whole group is
/// killed (SIGTERM, [`KILL_GRACE`], SIGKILL).
pub async fn run_tree(
    command: Command,
    log: &Path,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Outcome, Error> {
    run_tree_limited(command, log, Limits::time(timeout), cancel).await
}

/// [`run_tree`] with a memory limit as well: past it the group is killed at once (SIGKILL)
/// and the run ends as [`Ending::MemoryLimit`].
pub async fn run_tree_limited(
    command: Command,
    log: &Path,
    limits: Limits,
    cancel: &CancellationToken,
) -> Result<Outcome, Error> {
    run_tree_watched(command, log, limits, cancel, &mut |_| false).await
}

/// [`run_tree_limited`] with a watcher: at every sample (every 100 ms, and once when the
/// tree has exited, with no memory) it hears the group's resident memory and CPU time so
/// far; when it answers `true`
/// the group is killed as on a timeout and the run ends as [`Ending::TimedOut`]. A tool that
/// runs several steps in one process uses it to hold each step to its own limit.
pub async fn run_tree_watched(
    command: Command,
    log: &Path,
    limits: Limits,
    cancel: &CancellationToken,
    watch: &mut (dyn FnMut(Sample) -> bool + Send),
) -> Result<Outcome, Error> {
    let timeout = limits.timeout;
    let program = format!("{:?}", command.as_std().get_program());
    let mut command = guarded(command);
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| Error::Log {
                path: log.to_owned(),
                source,
            })
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0)
        .kill_on_drop(true);
    let start = Instant::now();
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;
    // The group id is the child's pid (process_group(0)); a child that already exited has none.
    let pgid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let mut peak_kib = 0u64;
    let mut cpu_ticks = 0u64;
    let deadline = tokio::time::Instant::now() + timeout;
    let ticks_per_second = procfs::ticks_per_second().max(1) as f64;
    let ending = loop {
        if let Some(pgid) = pgid {
            let (now_kib, ticks) = group_usage(pgid);
            peak_kib = peak_kib.max(now_kib);
            // Processes that ended and were reaped outside the group take their time along.
            cpu_ticks = cpu_ticks.max(ticks);
            if let Some(limit) = limits.memory_mib
                && now_kib / 1024 > limit
            {
                let _ = killpg(pgid, Signal::SIGKILL);
                let _ = child.wait().await;
                break Ending::MemoryLimit(limit);
            }
            if watch(Sample {
                rss_mib: now_kib / 1024,
                cpu_seconds: cpu_ticks as f64 / ticks_per_second,
            }) {
                kill_group(&mut child, Some(pgid)).await;
                break Ending::TimedOut;
            }
        }
        tokio::select! {
            status = child.wait() => {
                match status {
                    Ok(status) => break Ending::Exited(status),
                    Err(source) => return Err(Error::Spawn { program, source }),
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                kill_group(&mut child, pgid).await;
                break Ending::TimedOut;
            }
            () = cancel.cancelled() => {
                kill_group(&mut child, pgid).await;
                break Ending::Cancelled;
            }
            () = tokio::time::sleep(SAMPLE_EVERY) => {}
        }
    };
    // Whatever the leader's fate, nothing of the group may outlive the stage.
    if let Some(pgid) = pgid {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    // The watcher hears the end too (what the tree wrote last).
    let cpu_seconds = cpu_ticks as f64 / ticks_per_second;
    if matches!(ending, Ending::Exited(_)) {
        watch(Sample {
            rss_mib: 0,
            cpu_seconds,
        });
    }
    Ok(Outcome {
        ending,
        elapsed: start.elapsed(),
        peak_memory_mib: peak_kib / 1024,
        cpu_seconds,
    })
}

/// SIGTERM to the group, then SIGKILL after the grace period if the leader still runs.
async fn kill_group(child: &mut tokio::process::Child, pgid: Option<Pid>) {
    let Some(pgid) = pgid else {
        let _ = child.kill().await;
        return;
    };
    let _ = killpg(pgid, Signal::SIGTERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = killpg(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}

/// The summed resident memory (KiB) and CPU time (clock ticks: user + system, and of the
/// children each process has reaped) of every process in the group; 0 when unreadable.
fn group_usage(pgid: Pid) -> (u64, u64) {
    let Ok(processes) = procfs::process::all_processes() else {
        return (0, 0);
    };
    let page_kib = procfs::page_size() / 1024;
    processes
        .filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .filter(|stat| stat.pgrp == pgid.as_raw())
        .fold((0, 0), |(kib, ticks), stat| {
            let children = u64::try_from(stat.cutime.max(0) + stat.cstime.max(0)).unwrap_or(0);
            (
                kib + stat.rss * page_kib,
                ticks + stat.utime + stat.stime + children,
            )
        })
}

/// True when any process of the group `pgid` is still alive (used by tests and drains).
pub fn group_alive(pgid: i32) -> bool {
    procfs::process::all_processes().is_ok_and(|all| {
        all.filter_map(Result::ok)
            .filter_map(|p| p.stat().ok())
            .any(|stat| stat.pgrp == pgid && stat.state != 'Z')
    })
}

/// Kills (SIGKILL) every process group with a process working under `dir`, except this
/// process's own, and returns how many groups. A worker killed with SIGKILL cannot stop its
/// tools; the next worker on the same scratch folder (which it holds alone, see
/// `lock_scratch`) stops them before it leases anything.
pub fn kill_groups_under(dir: &Path) -> usize {
    let Ok(all) = procfs::process::all_processes() else {
        return 0;
    };
    let own = nix::unistd::getpgrp().as_raw();
    let mut groups: Vec<i32> = all
        .filter_map(Result::ok)
        .filter(|p| p.cwd().is_ok_and(|cwd| cwd.starts_with(dir)))
        .filter_map(|p| p.stat().ok())
        .map(|stat| stat.pgrp)
        .filter(|&g| g > 1 && g != own)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for &g in &groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
    groups.len()
}

/// Holds `dir/.hlsfarm-worker.lock` (an exclusive `flock`) for as long as the returned file
/// lives: two workers on one scratch folder would delete each other's trials.
pub fn lock_scratch(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = dir.join(".hlsfarm-worker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        format!(
            "another worker uses the scratch folder {}: give each worker its own (--scratch / worker.scratch)",
            dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[tokio::test]
    async fn exit_status_and_log_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let outcome = run_tree(
            sh("echo hello; exit 3"),
            &log,
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        match outcome.ending {
            Ending::Exited(status) => assert_eq!(status.code(), Some(3)),
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // A shell that starts a grandchild and ignores SIGTERM: only SIGKILL of the group ends it.
        let mut command = sh("trap '' TERM; sleep 1000 & echo $! > child.pid; wait");
        command.current_dir(dir.path());
        let outcome = run_tree(
            command,
            &log,
            Duration::from_millis(500),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(outcome.ending, Ending::TimedOut);
        assert!(outcome.elapsed >= Duration::from_millis(500));
        let grandchild: i32 = std::fs::read_to_string(dir.path().join("child.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was in the group: it is gone (or a zombie awaiting its reaper).
        let gone = (0..100).any(|_| {
            let alive = procfs::process::Process::new(grandchild)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.state != 'Z');
            if alive {
                std::thread::sleep(Duration::from_millis(20));
            }
            !alive
        });
        assert!(gone, "grandchild {grandchild} survived the timeout");
    }

    #[tokio::test]
    async fn cpu_time_counts_the_children_the_tree_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // A child spins about a CPU second and is reaped; the parent then idles.
        let spin = "python3 -c 'import time\nt=time.process_time()\nwhile time.process_time()-t<1.0: pass'";
        let mut command = sh(&format!("{spin}; sleep 0.5"));
        command.current_dir(dir.path());
        let outcome = run_tree(
            command,
            &log,
            Duration::from_secs(60),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(
            matches!(outcome.ending, Ending::Exited(s) if s.success()),
            "{outcome:?}"
        );
        assert!(
            outcome.cpu_seconds >= 0.9,
            "the reaped child's CPU second: {outcome:?}"
        );
        assert!(
            outcome.cpu_seconds <= outcome.elapsed.as_secs_f64() + 0.2,
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn cancel_kills_the_tree_and_memory_is_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            trigger.cancel();
        });
        let mut command = sh("exec sleep 1000");
        command.current_dir(dir.path());
        let outcome = run_tree(command, &log, Duration::from_secs(60), &cancel)
            .await
            .unwrap();
        assert_eq!(outcome.ending, Ending::Cancelled);
        assert!(outcome.elapsed < Duration::from_secs(30));
    }
    #[tokio::test]
    async fn a_tree_past_its_memory_limit_is_killed_with_its_peak() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // A shell that holds about 300 MB in a variable and would then sleep for long.
        let command = sh("x=$(head -c 300000000 /dev/zero | tr '\\0' a); sleep 600; echo ${#x}");
        let limits = Limits {
            timeout: Duration::from_secs(120),
            memory_mib: Some(100),
        };
        let outcome = run_tree_limited(command, &log, limits, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(outcome.ending, Ending::MemoryLimit(100));
        assert!(outcome.peak_memory_mib > 100, "{outcome:?}");
        assert!(outcome.elapsed < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn the_guard_passes_on_exit_codes_and_deaths_by_signal() {
        use std::os::unix::process::ExitStatusExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let outcome = run_tree(
            sh("kill -SEGV $$"),
            &log,
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        match outcome.ending {
            Ending::Exited(status) => assert_eq!(status.signal(), Some(11), "{status:?}"),
            other => panic!("{other:?}"),
        }
        // The arguments reach the program unchanged, spaces and quotes included.
        let log = dir.path().join("log2");
        let outcome = run_tree(
            {
                let mut c = Command::new("printf");
                c.args(["%s|", "a b", "\"c\"", "$HOME"]);
                c
            },
            &log,
            Duration::from_secs(10),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert!(matches!(outcome.ending, Ending::Exited(s) if s.success()));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "a b|\"c\"|$HOME|");
    }
}
