//! Warm interpreters: the Python driver's frameworks (TensorFlow and hls4ml, PyTorch, ONNX)
//! imported once per host and model family, not once per trial.
//!
//! A warm interpreter is the driver run as a fork server (`hlsfarm_driver.py --serve SOCKET
//! FAMILY`, see its `serve`): it imports the family's frameworks, then listens on a Unix
//! socket and forks one child per trial. A trial still runs as its own process tree
//! ([`crate::process::run_tree_limited`]): the tree's process is the small stdlib-only client
//! `hlsfarm_warm_client.py`, which hands its stdio, folder, environment and process group to
//! the server; the forked child joins that group, so the time limit, cancel, the memory
//! sampler and the parent-death guard act on the trial's child exactly as on a cold driver,
//! and a crash or hang in one child cannot touch the server or another trial.
//!
//! Servers start lazily, on the first trial of their `(python, family)`, and a trial waits for
//! one that is starting. One that died is started again on the next trial; one that failed
//! before it was ready is not tried again (its log goes to the worker's log) and trials run
//! cold. The servers end with the pool (killed on drop) and, should this process die, by
//! themselves (they watch their parent).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::driver::DRIVER_SOURCE;

/// The client a trial runs instead of the cold driver.
pub const CLIENT_SOURCE: &str = include_str!("../python/hlsfarm_warm_client.py");

/// How long a trial waits for a starting server before it runs cold.
const START_LIMIT: Duration = Duration::from_secs(300);

/// The model family a driver format belongs to: what one warm interpreter imports.
pub fn family(format: &str) -> Option<&'static str> {
    match format {
        "keras_h5" | "keras_json" => Some("keras"),
        "pytorch" => Some("pytorch"),
        "onnx" => Some("onnx"),
        _ => None,
    }
}

/// The `(python, family)` pairs of these model files: the warm interpreters they will use.
pub fn families(
    models: &[PathBuf],
    python: &Path,
    by_format: &std::collections::BTreeMap<String, PathBuf>,
) -> std::collections::BTreeSet<(PathBuf, &'static str)> {
    models
        .iter()
        .filter_map(|m| {
            let format =
                hlsfarm_common::plan::model_format(&m.file_name()?.to_string_lossy()).ok()?;
            let python = by_format.get(format).map_or(python, |p| p.as_path());
            Some((python.to_owned(), family(format)?))
        })
        .collect()
}

/// A server's key: the venv's Python and the model family.
type Key = (PathBuf, &'static str);

/// One server's state.
enum Slot {
    /// Never started, or died after it was ready: start one.
    Empty,
    /// Running (or starting: the socket appears when it is ready).
    Running {
        child: Box<tokio::process::Child>,
        socket: PathBuf,
    },
    /// Failed before it was ready: trials of this key run cold.
    Broken,
}

/// The warm interpreters of one process (one-host run or worker daemon).
pub struct WarmPool {
    dir: tempfile::TempDir,
    driver: PathBuf,
    client: PathBuf,
    slots: Mutex<HashMap<Key, Arc<Mutex<Slot>>>>,
    started: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for WarmPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// What a trial runs through a warm interpreter: `python -I -S CLIENT SOCKET`, then the cold
/// driver's command line (the client falls back to it).
#[derive(Debug, Clone)]
pub struct Warm {
    /// The client script.
    pub client: PathBuf,
    /// The server's socket.
    pub socket: PathBuf,
}

impl WarmPool {
    /// A pool with no server started yet; its sockets and scripts live in a private
    /// temporary folder (mode 0700) under `$TMPDIR`.
    pub fn new() -> std::io::Result<WarmPool> {
        // Only this user may reach the sockets (a request carries a trial's environment).
        let dir = {
            use std::os::unix::fs::PermissionsExt;
            tempfile::Builder::new()
                .prefix("hlsfarm-warm-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir()?
        };
        let driver = dir.path().join("hlsfarm_driver.py");
        let client = dir.path().join("hlsfarm_warm_client.py");
        std::fs::write(&driver, DRIVER_SOURCE)?;
        std::fs::write(&client, CLIENT_SOURCE)?;
        Ok(WarmPool {
            dir,
            driver,
            client,
            slots: Mutex::new(HashMap::new()),
            started: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many servers this pool has started (restarts included).
    pub fn servers_started(&self) -> u64 {
        self.started.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The pid of the running server of `(python, family)`, if one runs.
    pub async fn server_pid(&self, python: &Path, family: &'static str) -> Option<u32> {
        let slot = self
            .slots
            .lock()
            .await
            .get(&(python.to_owned(), family))?
            .clone();
        let slot = slot.lock().await;
        match &*slot {
            Slot::Running { child, .. } => child.id(),
            _ => None,
        }
    }

    async fn slot(&self, python: &Path, family: &'static str) -> Arc<Mutex<Slot>> {
        self.slots
            .lock()
            .await
            .entry((python.to_owned(), family))
            .or_insert_with(|| Arc::new(Mutex::new(Slot::Empty)))
            .clone()
    }

    /// Starts the servers of these `(python, family)` pairs in the background, so the first
    /// trials find them ready.
    pub fn prewarm(self: &Arc<Self>, keys: impl IntoIterator<Item = (PathBuf, &'static str)>) {
        for (python, family) in keys {
            let pool = self.clone();
            tokio::spawn(async move {
                pool.warm(&python, family, &CancellationToken::new()).await;
            });
        }
    }

    /// The warm interpreter for `(python, family)`, started (and waited for) if need be;
    /// `None` when there is none to be had (it failed to start, or `cancel` fired): the trial
    /// runs cold.
    pub async fn warm(
        &self,
        python: &Path,
        family: &'static str,
        cancel: &CancellationToken,
    ) -> Option<Warm> {
        let slot = self.slot(python, family).await;
        let mut slot = slot.lock().await;
        if let Slot::Running { child, .. } = &mut *slot
            && !matches!(child.try_wait(), Ok(None))
        {
            tracing::warn!(%family, python = %python.display(), "the warm interpreter died: starting another");
            *slot = Slot::Empty;
        }
        if matches!(*slot, Slot::Empty) {
            match self.start(python, family) {
                Ok(running) => *slot = running,
                Err(e) => {
                    tracing::warn!(%family, python = %python.display(), "cannot start a warm interpreter ({e}): trials run cold");
                    *slot = Slot::Broken;
                }
            }
        }
        let Slot::Running { child, socket } = &mut *slot else {
            return None;
        };
        let deadline = Instant::now() + START_LIMIT;
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log(family, python);
                tracing::warn!(%family, python = %python.display(), %status,
                    log = %crate::driver::log_tail(&log, 8),
                    "the warm interpreter ended before it was ready: trials of this family run cold");
                *slot = Slot::Broken;
                return None;
            }
            if Instant::now() > deadline {
                tracing::warn!(%family, "the warm interpreter is not ready after {} s: this trial runs cold", START_LIMIT.as_secs());
                return None;
            }
            tokio::select! {
                () = cancel.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        Some(Warm {
            client: self.client.clone(),
            socket: socket.clone(),
        })
    }

    fn log(&self, family: &str, python: &Path) -> PathBuf {
        let n = python_tag(python);
        self.dir.path().join(format!("{family}-{n}.log"))
    }

    fn start(&self, python: &Path, family: &'static str) -> std::io::Result<Slot> {
        let n = python_tag(python);
        let socket = self.dir.path().join(format!("{family}-{n}.sock"));
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(self.log(family, python))?;
        let mut command = crate::driver::python_command(python);
        command
            .arg(&self.driver)
            .arg("--serve")
            .arg(&socket)
            .arg(family)
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own group: a terminal's Ctrl-C or a trial's group kill does not reach it.
            .process_group(0)
            .kill_on_drop(true);
        let child = command.spawn()?;
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%family, python = %python.display(), pid = ?child.id(), "warm interpreter starting");
        Ok(Slot::Running {
            child: Box::new(child),
            socket,
        })
    }
}

/// A short stable name of a python path, for file names.
fn python_tag(python: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    python.hash(&mut hasher);
    format!("{:08x}", hasher.finish() as u32)
}
