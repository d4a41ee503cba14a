//! `hlsfarm bench store`: results committed per second on S3-compatible servers (and the
//! local folder), with the commit before attempt folders beside the one now, in one run.
//!
//! Each trial is what a worker and the coordinator do with the store for one result: the
//! worker's checked uploads of `result.json` and a tarball (a put and a read-back each), then
//! the coordinator's check that the upload is there and its commit. Before: a HEAD, then the
//! staging folder listed, each file copied into `results/<key>/` and deleted (6 requests).
//! Now: a HEAD of each uploaded file, the attempt's `result.json` copied (3 requests).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_common::blob::{Blobs, RetryBudget};
use hlsfarm_common::config::{Secret, StoreConfig};
use hlsfarm_common::job::Fence;

use super::rig::{Proc, free_port, log_dir, wait_port};

/// One store to measure.
struct Target {
    name: String,
    blobs: Blobs,
    _server: Option<Proc>,
    _dir: tempfile::TempDir,
}

const ACCESS_KEY: &str = "benchkey";
const SECRET_KEY: &str = "benchsecret";
const BUCKET: &str = "bench";

fn s3_blobs(port: u16) -> anyhow::Result<Blobs> {
    Ok(Blobs::open(&StoreConfig {
        url: format!("s3://{BUCKET}/results"),
        s3_endpoint: format!("http://127.0.0.1:{port}"),
        s3_region: "us-east-1".into(),
        s3_allow_http: true,
        s3_access_key_id: Secret::new(ACCESS_KEY),
        s3_secret_access_key: Secret::new(SECRET_KEY),
    })?)
}

/// A program from `var` (the set-up's env file) or `PATH`.
fn program(var: &str, name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os(var)
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which::which(name).ok())
}

fn moto() -> anyhow::Result<Option<Target>> {
    let Some(moto) = program("HLSFARM_MOTO_SERVER", "moto_server") else {
        println!("store: moto_server not found (HLSFARM_MOTO_SERVER, or `make setup`): skipped");
        return Ok(None);
    };
    let dir = log_dir("moto")?;
    let port = free_port()?;
    let mut command = Command::new(moto);
    command
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path());
    let server = Proc::spawn("moto_server", command, dir.path())?;
    wait_port(port, "moto_server")
        .with_context(|| format!("moto_server stderr:\n{}", server.stderr()))?;
    // moto takes unsigned requests: a plain PUT makes the bucket.
    let mut made = false;
    for _ in 0..100 {
        if ureq::put(&format!("http://127.0.0.1:{port}/{BUCKET}"))
            .send_empty()
            .is_ok()
        {
            made = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !made {
        bail!("moto_server did not create bucket {BUCKET}");
    }
    Ok(Some(Target {
        name: "moto (Python)".into(),
        blobs: s3_blobs(port)?,
        _server: Some(server),
        _dir: dir,
    }))
}

fn s3s_fs() -> anyhow::Result<Option<Target>> {
    let installed = hlsfarm_worker::venv::home()
        .map(|home| home.join("s3s-fs/bin/s3s-fs"))
        .filter(|p| p.is_file());
    let Some(program) = program("HLSFARM_S3S_FS", "s3s-fs").or(installed) else {
        println!(
            "store: s3s-fs not found (HLSFARM_S3S_FS, PATH, or `make bench-deps`, which builds it from crates.io): skipped"
        );
        return Ok(None);
    };
    let dir = log_dir("s3s-fs")?;
    // s3s-fs serves the folders of its root as buckets.
    std::fs::create_dir_all(dir.path().join("buckets").join(BUCKET))?;
    let port = free_port()?;
    let mut command = Command::new(&program);
    command
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(dir.path().join("buckets"));
    let server = Proc::spawn("s3s-fs", command, dir.path())?;
    wait_port(port, "s3s-fs").with_context(|| format!("s3s-fs stderr:\n{}", server.stderr()))?;
    Ok(Some(Target {
        name: "s3s-fs (Rust)".into(),
        blobs: s3_blobs(port)?,
        _server: Some(server),
        _dir: dir,
    }))
}

fn local() -> anyhow::Result<Target> {
    let dir = tempfile::tempdir()?;
    let blobs = Blobs::open(&StoreConfig {
        url: dir.path().join("store").display().to_string(),
        ..StoreConfig::default()
    })?;
    Ok(Target {
        name: "local folder".into(),
        blobs,
        _server: None,
        _dir: dir,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// `staging/<key>/<attempt>-<epoch>/`, promoted by copying every file.
    Staging,
    /// `results/<key>/attempts/<attempt>-<epoch>/`, committed by copying `result.json`.
    Attempts,
}

/// One trial's uploads (the worker's part), then the coordinator's part timed apart.
async fn one(
    blobs: &Blobs,
    layout: Layout,
    key: &str,
    files: &[(&str, Vec<u8>)],
) -> anyhow::Result<Duration> {
    let fence = Fence {
        attempt: 1,
        epoch: 0,
    };
    let prefix = match layout {
        Layout::Staging => format!("staging/{key}/1-0"),
        Layout::Attempts => Blobs::attempt_prefix(key, fence),
    };
    for (name, bytes) in files {
        blobs
            .put_checked(
                &format!("{prefix}/{name}"),
                bytes.clone(),
                RetryBudget::default(),
            )
            .await?;
    }
    let started = Instant::now();
    match layout {
        Layout::Staging => {
            if !blobs.exists(&format!("{prefix}/result.json")).await? {
                bail!("{prefix}/result.json is missing");
            }
            blobs.promote(&prefix, key).await?;
        }
        Layout::Attempts => {
            for name in ["result.json", "artifacts.tar.gz"] {
                if blobs.size(&format!("{prefix}/{name}")).await?.is_none() {
                    bail!("{prefix}/{name} is missing");
                }
            }
            blobs.commit_attempt(&prefix, key).await?;
        }
    }
    Ok(started.elapsed())
}

struct Figures {
    trials_per_s: f64,
    commits_per_s: f64,
    commit_p50_ms: f64,
}

async fn measure(
    blobs: &Blobs,
    layout: Layout,
    trials: u32,
    concurrency: u32,
    round: u32,
) -> anyhow::Result<Figures> {
    // A result.json and a tarball of the sizes `bench trial` measures (4.5 and 4.8 kB).
    let files: Arc<Vec<(&str, Vec<u8>)>> = Arc::new(vec![
        ("artifacts.tar.gz", vec![7u8; 4_800]),
        ("result.json", vec![b' '; 4_500]),
    ]);
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (blobs, files, next) = (blobs.clone(), files.clone(), next.clone());
        set.spawn(async move {
            let mut commits = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= trials {
                    return anyhow::Ok(commits);
                }
                let key = hlsfarm_common::trial_key::sha256_hex(
                    format!("{round}-{i}-{}", layout == Layout::Staging).as_bytes(),
                );
                commits.push(one(&blobs, layout, &key, &files).await?);
            }
        });
    }
    let mut commits = Vec::new();
    while let Some(joined) = set.join_next().await {
        commits.extend(joined??);
    }
    let wall = started.elapsed().as_secs_f64();
    let busy: f64 = commits.iter().map(Duration::as_secs_f64).sum();
    commits.sort();
    let p50 = commits
        .get(commits.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(Figures {
        trials_per_s: f64::from(trials) / wall,
        // As many commits at once as `concurrency` workers' completions.
        commits_per_s: commits.len() as f64 * f64::from(concurrency.max(1)) / busy.max(1e-9),
        commit_p50_ms: p50,
    })
}

/// Runs the store benchmark.
pub(super) async fn store(trials: u32, concurrency: u32) -> anyhow::Result<()> {
    let mut targets = vec![local()?];
    targets.extend(tokio::task::block_in_place(moto)?);
    targets.extend(tokio::task::block_in_place(s3s_fs)?);
    println!(
        "store: {trials} trials per run, {concurrency} at once; each: the worker's checked uploads (result.json 4.5 kB, tarball 4.8 kB), then the coordinator's check and commit"
    );
    for target in &targets {
        // Interleaved, twice, so that the machine's mood falls on both alike.
        let mut rows: Vec<(&str, Vec<Figures>)> = vec![
            ("before (staging, copy all)", vec![]),
            ("now (attempt folder)", vec![]),
        ];
        for round in 0..2 {
            for (i, layout) in [Layout::Staging, Layout::Attempts].into_iter().enumerate() {
                let f = measure(&target.blobs, layout, trials, concurrency, round).await?;
                rows[i].1.push(f);
            }
        }
        for (label, runs) in &rows {
            let best = |get: fn(&Figures) -> f64| runs.iter().map(get).fold(f64::NAN, f64::max);
            println!(
                "store: {}: {label}: commits {:.0}/s (p50 {:.1} ms), whole trials {:.0}/s",
                target.name,
                best(|f| f.commits_per_s),
                runs.iter()
                    .map(|f| f.commit_p50_ms)
                    .fold(f64::NAN, f64::min),
                best(|f| f.trials_per_s),
            );
        }
    }
    Ok(())
}
