//! Whole clusters of real processes: `hlsfarm serve` on a real `redis-server`, `hlsfarm
//! worker` daemons running real hls4ml and the Xilinx stand-in, and the operator CLI.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use hlsfarm_tests::cluster::{Cluster, ClusterOptions};
use hlsfarm_tests::{Process, TestDir, run_ok, wait_until};
use nix::sys::signal::Signal;

fn copy_examples(dir: &Path, n: usize) -> std::path::PathBuf {
    let models = dir.join("models");
    std::fs::create_dir_all(&models).unwrap();
    let examples = hlsfarm_tests::tests_dir().join("../examples/trials");
    for i in 0..n {
        let name = format!("model_trial_{i:03}.h5");
        std::fs::copy(examples.join(&name), models.join(&name)).unwrap();
    }
    models
}

fn wait_registered(worker: &Process) {
    wait_until("the worker to register", Duration::from_secs(120), || {
        worker.stderr().contains("registered with").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
}

fn submit(cluster: &Cluster, models: &Path, extra: &[&str]) -> (String, String) {
    let mut command = cluster.operator_command().unwrap();
    command
        .arg("submit")
        .arg("--input-dir")
        .arg(models)
        .args(extra);
    let out = run_ok(command).unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_sweep_runs_end_to_end_through_a_worker_daemon() {
    let dir = TestDir::new("cluster-e2e").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let mut worker = cluster.start_worker("w1", &["--slots", "2"], &[]).unwrap();
    wait_registered(&worker);
    let models = copy_examples(dir.path(), 2);
    let started = Instant::now();
    let (sweep, stderr) = submit(
        &cluster,
        &models,
        &["--stages", "convert,emulate,csynth", "--wait", "--name", "e2e"],
    );
    println!("{stderr}");
    println!("2 trials through one worker in {:.1} s", started.elapsed().as_secs_f64());
    assert!(stderr.contains("2 trials (2 queued, 0 reused)"), "{stderr}");
    assert!(stderr.contains("finished: 2 succeeded, 0 failed"), "{stderr}");

    // Results committed under each key, staging emptied, the aggregate in the seed schema.
    let results: Vec<_> = std::fs::read_dir(cluster.store().join("results"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(results.len(), 2);
    for r in &results {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(r.join("result.json")).unwrap()).unwrap();
        assert_eq!(json["status"], "success");
        assert!(json["reports"]["csynth"]["latency_worst_cycles"].is_u64(), "{json}");
        assert!(json["fidelity"]["max_abs_diff"].is_f64(), "{json}");
        let tarball = std::fs::metadata(r.join("artifacts.tar.gz")).unwrap();
        assert!(tarball.len() > 100);
    }
    let staged = walk_files(&cluster.store().join("staging"));
    assert!(staged.is_empty(), "left in staging: {staged:?}");
    let aggregate = cluster
        .store()
        .join(format!("sweeps/{sweep}/synthesis_results.json"));
    wait_until("the aggregate", Duration::from_secs(10), || {
        aggregate.is_file().then_some(())
    })
    .unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&aggregate).unwrap()).unwrap();
    assert_eq!((summary["total"].as_u64(), summary["successful"].as_u64()), (Some(2), Some(2)));

    // status --json agrees with the coordinator, and names the worker and its tools.
    let status = cluster.status().unwrap();
    let w = &status["workers"][0];
    assert_eq!(w["id"], "w1");
    assert_eq!(w["tools"]["vitis_hls"], "2023.2");
    assert_eq!(cluster.counts(&sweep).unwrap()["succeeded"], 2);

    // The same sweep again: every trial reused, nothing runs.
    let (_, stderr) = submit(
        &cluster,
        &models,
        &["--stages", "convert,emulate,csynth", "--wait"],
    );
    assert!(stderr.contains("(0 queued, 2 reused)"), "{stderr}");

    // SIGTERM drains an idle worker at once.
    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", worker.stderr());
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
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
