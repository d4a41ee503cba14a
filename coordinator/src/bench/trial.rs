//! Real trials through a real worker: bytes kept and the overhead outside the tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_proto::v1;

use super::{OPERATOR, Rig, median};

/// The repository's root (this crate's parent), for the stand-in and the shared models.
pub(super) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Times (ms) of each trial's `leased` and `completed` events, from the Redis event stream.
pub(super) async fn lease_spans(
    redis_url: &str,
) -> anyhow::Result<std::collections::HashMap<String, (i64, i64)>> {
    let mut c = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg("{hlsfarm}:events")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await?;
    let mut spans = std::collections::HashMap::new();
    for (id, fields) in entries {
        let ms: i64 = id.split('-').next().unwrap_or("0").parse().unwrap_or(0);
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv.get(1))
                .cloned()
                .unwrap_or_default()
        };
        let entry = spans.entry(field("t")).or_insert((0, 0));
        match field("type").as_str() {
            "leased" => entry.0 = ms,
            "completed" => entry.1 = ms,
            _ => {}
        }
    }
    Ok(spans)
}

pub(super) async fn trial(
    model: Option<PathBuf>,
    trials: u32,
    path_tools: bool,
) -> anyhow::Result<()> {
    let model =
        model.unwrap_or_else(|| repo_root().join("../shared/models/keras/KERAS_3layer.json"));
    if !model.is_file() {
        bail!("no model at {} (--model)", model.display());
    }
    let rig = Rig::start(&[])?;
    let inputs = rig.store.with_file_name("inputs");
    std::fs::create_dir_all(&inputs)?;
    let name = model
        .file_name()
        .context("the model has no file name")?
        .to_owned();
    std::fs::copy(&model, inputs.join(&name))?;
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let weights = model.with_file_name(format!("{stem}_weights.h5"));
    if weights.is_file() {
        std::fs::copy(&weights, inputs.join(format!("{stem}_weights.h5")))?;
    }
    let mut path = std::ffi::OsString::new();
    if !path_tools {
        path.push(repo_root().join("tests/standin/bin"));
        path.push(":");
    }
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mut command = rig.worker_command("bench-trial", 1)?;
    command.env("PATH", &path);
    let worker = rig.spawn("bench-trial", command)?;
    // Wait for the worker (its venv probe imports hls4ml).
    let mut op = rig.operator()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = op
            .get_status(v1::GetStatusRequest::default())
            .await?
            .into_inner();
        if !s.workers.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the worker did not register within 180 s (is the hls4ml venv set up? `make setup`)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reuse: Vec<String> = (0..trials).map(|i| (1u32 << i).to_string()).collect();
    let out = Command::new(std::env::current_exe()?)
        .arg("submit")
        .arg("--input-dir")
        .arg(&inputs)
        .args(["--pattern", &name.to_string_lossy()])
        .args(["--reuse-factor", &reuse.join(",")])
        .args([
            "--stages",
            "convert,emulate,csynth,cosim,export,vsynth",
            "--wait",
        ])
        .env("HLSFARM_URL", &rig.url)
        .env("HLSFARM_TOKEN", OPERATOR)
        .stdin(Stdio::null())
        .output()?;
    let sweep = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if sweep.is_empty() {
        bail!(
            "submit failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    drop(worker);
    let results = op
        .get_results(v1::GetResultsRequest {
            sweep_id: sweep.clone(),
        })
        .await?
        .into_inner();
    let spans = lease_spans(&rig.redis_url).await?;
    let mut overheads = Vec::new();
    let mut walls = Vec::new();
    let mut kept = Vec::new();
    for t in &results.trials {
        let dir = rig.store.join("results").join(&t.trial_key);
        // The tarball stays in the attempt folder it was uploaded to (one attempt here).
        let attempt = std::fs::read_dir(dir.join("attempts"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path())
            .unwrap_or_default();
        let bytes = |f: &str| {
            std::fs::metadata(dir.join(f))
                .or_else(|_| std::fs::metadata(attempt.join(f)))
                .map_or(0, |m| m.len())
        };
        let json = std::fs::read(dir.join("result.json"))
            .with_context(|| format!("trial {} has no result.json", t.trial_key))?;
        let result: hlsfarm_common::results::TrialResult = serde_json::from_slice(&json)?;
        let stages: f64 = result.timings.iter().map(|x| x.seconds).sum();
        // Tools beside the emulation: convert, then the longer of the two.
        let critical = if result.tools_beside_emulation {
            let of = |s: hlsfarm_common::stage::Stage| -> f64 {
                result
                    .timings
                    .iter()
                    .filter(|x| x.stage == s)
                    .map(|x| x.seconds)
                    .sum()
            };
            let (convert, emulate) = (
                of(hlsfarm_common::stage::Stage::Convert),
                of(hlsfarm_common::stage::Stage::Emulate),
            );
            convert + emulate.max(stages - convert - emulate)
        } else {
            stages
        };
        let (leased, completed) = spans.get(&t.trial_key).copied().unwrap_or((0, 0));
        let wall = (completed - leased) as f64 / 1000.0;
        let overhead = wall - critical;
        let total = bytes("result.json") + bytes("artifacts.tar.gz");
        println!(
            "trial {} ({:?}): {} stages in {stages:.2} s{}, lease to completion {wall:.2} s, overhead {overhead:.3} s; kept {total} bytes (result.json {}, tarball {})",
            &t.trial_key[..12],
            result.status,
            result.timings.len(),
            if result.tools_beside_emulation {
                format!(" (tools beside the emulation: {critical:.2} s end to end)")
            } else {
                String::new()
            },
            bytes("result.json"),
            bytes("artifacts.tar.gz"),
        );
        overheads.push(overhead);
        walls.push(wall);
        kept.push(total as f64);
    }
    println!(
        "trial: {} trials of {} with every stage ({}): lease to completion median {:.2} s; overhead outside the tools and hls4ml median {:.3} s (target ≤ 0.3 s); bytes kept per trial median {:.0} ({:.2} MB; target ≤ 2 MB)",
        results.trials.len(),
        name.to_string_lossy(),
        if path_tools {
            "tools on PATH"
        } else {
            "the stand-in"
        },
        median(walls),
        median(overheads),
        median(kept.clone()),
        median(kept) / 1e6
    );
    Ok(())
}
