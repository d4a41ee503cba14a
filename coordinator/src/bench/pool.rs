//! `bench pool`: `hlsfarm run` beside what a user runs instead on one host, a Python process
//! pool doing the same work with the same venv (`tests/bench/seed_pool.py`, the one-host script
//! as its README describes it), on the same generated trials, in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use super::trial::repo_root;

/// One timed command: its wall time, seconds, and the trials it reported.
struct Timed {
    seconds: f64,
    succeeded: usize,
    /// Each trial's row without times, paths and memory, by model file name.
    rows: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A result row as compared across runs: what a trial found (hlsfarm's `result`, the
/// pool's `report`), not when, where or how fast, nor its log's size.
fn comparable(row: &serde_json::Value) -> (String, serde_json::Value) {
    let name = row["h5_file"]
        .as_str()
        .and_then(|f| Path::new(f).file_name())
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut found = if row["result"].is_object() {
        row["result"].clone()
    } else {
        row["report"].clone()
    };
    if let Some(fields) = found.as_object_mut() {
        for k in [
            "start_time",
            "end_time",
            "timings",
            "kept_files",
            "tarball",
            "kept_bytes",
        ] {
            fields.remove(k);
        }
    }
    (name, found)
}

/// C synthesis's LUT, FF, DSP and best latency from either kind of row.
fn figures(found: &serde_json::Value) -> Option<[f64; 4]> {
    let number = |v: &serde_json::Value| v.as_f64().or_else(|| v.as_str()?.parse().ok());
    let csynth = &found["reports"]["csynth"];
    if csynth.is_object() {
        let used = &csynth["used"];
        return Some([
            number(&used["lut"])?,
            number(&used["ff"])?,
            number(&used["dsp"])?,
            number(&csynth["latency_best_cycles"])?,
        ]);
    }
    let report = &found["CSynthesisReport"];
    Some([
        number(&report["LUT"])?,
        number(&report["FF"])?,
        number(&report["DSP"])?,
        number(&report["BestLatency"])?,
    ])
}

fn timed(what: &str, mut command: Command, output: &Path) -> anyhow::Result<Timed> {
    let log = std::fs::File::create(output.with_extension("log"))?;
    command
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("cannot start {what}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "{what} failed ({status}); its output is in {}",
            output.with_extension("log").display()
        );
    }
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(output.join("synthesis_results.json"))
            .with_context(|| format!("{what} wrote no synthesis_results.json"))?,
    )?;
    let rows = results["results"].as_array().cloned().unwrap_or_default();
    let succeeded = rows.iter().filter(|r| r["status"] == "success").count();
    Ok(Timed {
        seconds,
        succeeded,
        rows: rows.iter().map(comparable).collect(),
    })
}

pub(super) async fn pool(
    trials: u32,
    workers: u32,
    emulate: bool,
    python: Option<PathBuf>,
    path_tools: bool,
) -> anyhow::Result<()> {
    let python =
        hlsfarm_worker::venv::find_python(python.as_deref()).map_err(anyhow::Error::msg)?;
    let dir = tempfile::Builder::new()
        .prefix("hlsfarm-bench-pool-")
        .tempdir()?;
    let inputs = dir.path().join("trials");
    let root = repo_root();
    let mut make = Command::new(&python);
    make.arg(root.join("examples/make_trials.py"))
        .arg(&inputs)
        .args(["--count", &trials.to_string()])
        .env("TF_USE_LEGACY_KERAS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let status = make
        .status()
        .context("cannot run examples/make_trials.py")?;
    if !status.success() {
        bail!(
            "examples/make_trials.py failed ({status}) with {}",
            python.display()
        );
    }
    let mut path = std::ffi::OsString::new();
    if !path_tools {
        path.push(root.join("tests/standin/bin"));
        path.push(":");
    }
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let hlsfarm = std::env::current_exe()?;
    let stages = if emulate {
        "convert,emulate,csynth,cosim,export,vsynth"
    } else {
        "convert,csynth,cosim,export,vsynth"
    };
    println!(
        "pool: {trials} generated QKeras trials (examples/make_trials.py), {workers} workers, stages {stages}, tools: {}",
        if path_tools { "PATH" } else { "the stand-in" }
    );
    let seed = |n: usize| {
        let out = dir.path().join(format!("seed-{n}"));
        let mut c = Command::new(&python);
        c.arg(root.join("tests/bench/seed_pool.py"))
            .arg("--input_dir")
            .arg(&inputs)
            .arg("--output_dir")
            .arg(&out)
            .args(["--num_workers", &workers.to_string()])
            .env("PATH", &path);
        if emulate {
            c.arg("--emulate");
        }
        (c, out)
    };
    let run = |n: usize, warm: bool| {
        let out = dir.path().join(format!("hlsfarm-{n}"));
        let mut c = Command::new(&hlsfarm);
        c.arg("run")
            .arg("--input-dir")
            .arg(&inputs)
            .arg("--output-dir")
            .arg(&out)
            .args(["--num-workers", &workers.to_string(), "--stages", stages])
            .arg("--python")
            .arg(&python)
            .env("PATH", &path);
        if !warm {
            c.arg("--no-warm-python");
        }
        (c, out)
    };
    // Interleaved, so that the machine's mood falls on both alike.
    let (c, out) = seed(1);
    let seed_time = timed("the seed-style pool", c, &out)?;
    let (c, out) = run(1, true);
    let warm_time = timed("hlsfarm run", c, &out)?;
    let (c, out) = run(2, false);
    let cold_time = timed("hlsfarm run --no-warm-python", c, &out)?;
    for (name, t) in [
        ("seed-style pool", &seed_time),
        ("hlsfarm run", &warm_time),
        ("hlsfarm run --no-warm-python", &cold_time),
    ] {
        println!(
            "pool: {name}: {:.1} s ({} of {trials} trials succeeded)",
            t.seconds, t.succeeded
        );
    }
    let same = |a: &Timed, b: &Timed, by_figures: bool| {
        a.rows
            .iter()
            .filter(|(name, found)| {
                b.rows.get(*name).is_some_and(|other| {
                    if by_figures {
                        figures(found).is_some() && figures(found) == figures(other)
                    } else {
                        *found == other
                    }
                })
            })
            .count()
    };
    println!(
        "pool: same results: warm = cold in {} of {trials} trials (keys, fidelity, reports, kept files); C synthesis figures = the pool's in {} of {trials}",
        same(&warm_time, &cold_time, false),
        same(&warm_time, &seed_time, true),
    );
    println!(
        "pool: hlsfarm / pool speed: {:.2}x (warm), {:.2}x (cold); target >= {}x",
        seed_time.seconds / warm_time.seconds,
        seed_time.seconds / cold_time.seconds,
        if emulate { "1.5" } else { "1.2" }
    );
    Ok(())
}
