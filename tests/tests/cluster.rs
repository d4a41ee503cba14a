//! Whole clusters of real processes: `hlsfarm serve` on a real `redis-server`, `hlsfarm
//! worker` daemons running real hls4ml and the Xilinx stand-in, and the operator CLI.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hlsfarm_tests::cluster::{Cluster, ClusterOptions, wait_registered};
use hlsfarm_tests::{TestDir, processes_under, run_ok, wait_until, walk_files};
use nix::sys::signal::Signal;

fn copy_examples(dir: &Path, n: usize) -> PathBuf {
    hlsfarm_tests::copy_example_trials(dir, n).unwrap()
}

#[test]
fn a_sweep_runs_end_to_end_through_a_worker_daemon() {
    let dir = TestDir::new("cluster-e2e").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let mut worker = cluster.start_worker("w1", &["--slots", "2"], &[]).unwrap();
    wait_registered(&worker);
    let models = copy_examples(dir.path(), 2);
    let started = Instant::now();
    let (sweep, stderr) = cluster
        .submit(
            &models,
            &[
                "--stages",
                "convert,emulate,csynth",
                "--wait",
                "--name",
                "e2e",
            ],
        )
        .unwrap();
    println!("{stderr}");
    println!(
        "2 trials through one worker in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(stderr.contains("2 trials (2 queued, 0 reused)"), "{stderr}");
    assert!(
        stderr.contains("finished: 2 succeeded, 0 failed"),
        "{stderr}"
    );

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
        assert!(
            json["reports"]["csynth"]["latency_worst_cycles"].is_u64(),
            "{json}"
        );
        assert!(json["fidelity"]["max_abs_diff"].is_f64(), "{json}");
        // One attempt, uploaded straight into its folder; the commit copied its result.json.
        let attempts: Vec<_> = std::fs::read_dir(r.join("attempts"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(attempts.len(), 1, "{attempts:?}");
        assert_eq!(
            std::fs::read(attempts[0].join("result.json")).unwrap(),
            std::fs::read(r.join("result.json")).unwrap()
        );
        let tarball = std::fs::metadata(attempts[0].join("artifacts.tar.gz")).unwrap();
        assert!(tarball.len() > 100);
    }
    let aggregate = cluster
        .store()
        .join(format!("sweeps/{sweep}/synthesis_results.json"));
    wait_until("the aggregate", Duration::from_secs(10), || {
        aggregate.is_file().then_some(())
    })
    .unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&aggregate).unwrap()).unwrap();
    assert_eq!(
        (summary["total"].as_u64(), summary["successful"].as_u64()),
        (Some(2), Some(2))
    );
    // The same outputs as one host writes: the table and the Pareto plot too.
    for name in ["results.csv", "pareto.svg", "pareto.png"] {
        let path = cluster.store().join(format!("sweeps/{sweep}/{name}"));
        wait_until(name, Duration::from_secs(10), || {
            path.is_file().then_some(())
        })
        .unwrap();
    }

    // status --json agrees with the coordinator, and names the worker and its tools.
    let status = cluster.status().unwrap();
    let w = &status["workers"][0];
    assert_eq!(w["id"], "w1");
    assert_eq!(w["tools"]["vitis_hls"], "2023.2");
    assert_eq!(cluster.counts(&sweep).unwrap()["succeeded"], 2);

    // The same sweep again: every trial reused, nothing runs.
    let (_, stderr) = cluster
        .submit(&models, &["--stages", "convert,emulate,csynth", "--wait"])
        .unwrap();
    assert!(stderr.contains("(0 queued, 2 reused)"), "{stderr}");

    // A batch-scheduler worker finds nothing to do and exits on its own.
    let mut batch = cluster
        .start_worker("batch", &["--exit-when-idle"], &[])
        .unwrap();
    let status = batch.wait(Duration::from_secs(90)).unwrap();
    assert!(status.success(), "{}", batch.stderr());
    assert!(
        batch.stderr().contains("exit-when-idle"),
        "{}",
        batch.stderr()
    );

    // SIGTERM drains an idle worker at once.
    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", worker.stderr());
}

#[test]
fn cancel_kills_a_running_trial_and_drain_hands_back_the_rest() {
    let dir = TestDir::new("cluster-cancel-drain").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    // C synthesis hangs (with a child process) until killed.
    let mut worker = cluster
        .start_worker(
            "w1",
            &["--slots", "2"],
            &[
                ("STANDIN_HANG", "1"),
                ("HLSFARM_WORKER__DRAIN_TIMEOUT_S", "2"),
            ],
        )
        .unwrap();
    wait_registered(&worker);
    let models = copy_examples(dir.path(), 2);
    let (sweep, _) = cluster
        .submit(&models, &["--stages", "convert,emulate,csynth"])
        .unwrap();
    let both = wait_until("both trials in csynth", Duration::from_secs(180), || {
        let r = cluster.running();
        (r.len() == 2 && r.iter().all(|(_, s)| s == "csynth")).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    let scratch = dir.join("scratch-w1");
    wait_until("the hanging tools", Duration::from_secs(30), || {
        (processes_under(&scratch).len() >= 2).then_some(())
    })
    .unwrap();
    // Status shows where each tool is, from its log, through the heartbeats.
    let phase = wait_until(
        "the tools' phase in status",
        Duration::from_secs(30),
        || {
            let status = cluster.status().ok()?;
            let trials = status["workers"][0]["trials"].as_array()?.clone();
            let phases: Vec<String> = trials
                .iter()
                .filter_map(|t| t["phase"].as_str().map(str::to_owned))
                .filter(|p| p.starts_with("pre-synthesis"))
                .collect();
            (phases.len() == 2).then_some(phases)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    assert!(phase[0].contains("this one hangs"), "{phase:?}");

    // Cancel one trial: its tool tree dies, it ends cancelled; the other keeps running.
    let mut cancel = cluster.operator_command().unwrap();
    cancel.args(["cancel", &sweep, &both[0].0]);
    run_ok(cancel).unwrap();
    wait_until("the cancel", Duration::from_secs(30), || {
        (cluster.counts(&sweep).ok()?["cancelled"] == 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    assert_eq!(cluster.running().len(), 1);

    // SIGTERM: no new leases; after the 2 s drain deadline the hanging trial is handed back
    // (attempt refunded), its tools are killed, and the worker exits cleanly.
    worker.signal(Signal::SIGTERM).unwrap();
    let status = worker.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "{}", worker.stderr());
    let counts = cluster.counts(&sweep).unwrap();
    assert_eq!(
        (counts["queued"].as_u64(), counts["leased"].as_u64()),
        (Some(1), Some(0)),
        "{counts}"
    );
    let left = processes_under(&scratch);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(
        worker.stderr().contains("drain deadline"),
        "{}",
        worker.stderr()
    );
}

#[test]
fn a_worker_cut_off_past_its_lease_discards_its_work() {
    let dir = TestDir::new("cluster-stale").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    // w1's C synthesis takes 6 s; w2's is quick.
    let w1 = cluster
        .start_worker("w1", &["--slots", "1"], &[("STANDIN_SLEEP", "6")])
        .unwrap();
    wait_registered(&w1);
    let models = copy_examples(dir.path(), 1);
    let (sweep, _) = cluster
        .submit(&models, &["--stages", "convert,emulate,csynth"])
        .unwrap();
    wait_until("w1 in csynth", Duration::from_secs(180), || {
        cluster
            .running()
            .iter()
            .any(|(_, s)| s == "csynth")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w1.stderr()));
    let w2 = cluster.start_worker("w2", &["--slots", "1"], &[]).unwrap();
    wait_registered(&w2);
    // Freeze w1 past its lease (2 s): the coordinator gives the trial to w2.
    w1.signal(Signal::SIGSTOP).unwrap();
    wait_until("w2 to take the trial", Duration::from_secs(30), || {
        let status = cluster.status().ok()?;
        let w2 = status["workers"]
            .as_array()?
            .iter()
            .find(|w| w["id"] == "w2")?
            .clone();
        (!w2["trials"].as_array()?.is_empty()).then_some(())
    })
    .unwrap();
    w1.signal(Signal::SIGCONT).unwrap();
    wait_until("the trial to succeed", Duration::from_secs(180), || {
        (cluster.counts(&sweep).ok()?["succeeded"] == 1).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", w1.stderr(), w2.stderr()));
    // w1 learned it lost the lease (from a heartbeat or its refused completion) and
    // discarded its work; w2's result is the one committed.
    wait_until("w1 to discard", Duration::from_secs(30), || {
        let log = w1.stderr();
        (log.contains("lease lost") || log.contains("completion refused")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w1.stderr()));
    // w2 logs its success just after the coordinator counts it.
    wait_until("w2's success", Duration::from_secs(10), || {
        w2.stderr().contains("trial succeeded").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w2.stderr()));
    let results = walk_files(&cluster.store().join("results"));
    let committed = |p: &&std::path::PathBuf| {
        p.ends_with("result.json") && !p.to_string_lossy().contains("/attempts/")
    };
    assert_eq!(results.iter().filter(committed).count(), 1, "{results:?}");
    // The winner's attempt stays (its tarball is the result's); the loser's, refused as
    // stale, is deleted.
    assert!(
        results
            .iter()
            .any(|p| p.to_string_lossy().contains("/attempts/2-0/")),
        "{results:?}"
    );
    assert!(
        results
            .iter()
            .all(|p| !p.to_string_lossy().contains("/attempts/1-0/")),
        "the lost lease's uploads should have been collected: {results:?}"
    );
}

#[test]
fn results_go_to_a_real_s3_server() {
    let dir = TestDir::new("cluster-s3").unwrap();
    let s3 = hlsfarm_tests::S3Server::start(dir.path(), "farm").unwrap();
    let env = s3.env_via(&s3.endpoint());
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            store_url: Some("s3://farm/cluster".into()),
            env,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let worker = cluster.start_worker("w1", &["--slots", "1"], &[]).unwrap();
    wait_registered(&worker);
    let models = copy_examples(dir.path(), 1);
    let (sweep, stderr) = cluster
        .submit(&models, &["--stages", "convert,emulate,csynth", "--wait"])
        .unwrap();
    assert!(
        stderr.contains("finished: 1 succeeded"),
        "{stderr}\n{}",
        worker.stderr()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs = s3.blobs("cluster").unwrap();
    let summary = rt.block_on(async {
        for _ in 0..100 {
            if let Ok(b) = blobs
                .get(&format!("sweeps/{sweep}/synthesis_results.json"))
                .await
            {
                return b;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no aggregate in S3");
    });
    let summary: serde_json::Value = serde_json::from_slice(&summary).unwrap();
    let tarball = summary["results"][0]["tarball"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(tarball.starts_with("results/") && tarball.ends_with("artifacts.tar.gz"));
    let bytes = rt.block_on(blobs.get(&tarball)).unwrap();
    assert!(bytes.len() > 100);
    assert!(
        !dir.join("store").exists(),
        "nothing should land in a local folder"
    );
}

#[test]
fn a_redis_restart_mid_sweep_loses_no_trial() {
    let dir = TestDir::new("cluster-redis-restart").unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            aof: true,
            lease_ms: 5000,
            heartbeat_ms: 500,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    // C synthesis takes 8 s, so the restart lands while both trials are leased.
    let worker = cluster
        .start_worker("w1", &["--slots", "2"], &[("STANDIN_SLEEP", "8")])
        .unwrap();
    wait_registered(&worker);
    let models = copy_examples(dir.path(), 2);
    let (sweep, _) = cluster
        .submit(&models, &["--stages", "convert,emulate,csynth"])
        .unwrap();
    wait_until("both trials in csynth", Duration::from_secs(180), || {
        let r = cluster.running();
        (r.len() == 2 && r.iter().all(|(_, s)| s == "csynth")).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    // A clean restart (SIGTERM: the AOF is flushed); coordinator and worker reconnect.
    let restarted = std::time::Instant::now();
    cluster.redis.restart().unwrap();
    let down = restarted.elapsed();
    // Status answers again from the restarted Redis, with both leases kept.
    let back = wait_until(
        "status from the restarted Redis",
        Duration::from_secs(60),
        || {
            let c = cluster.counts(&sweep).ok()?;
            (c["leased"].as_u64()? + c["succeeded"].as_u64().unwrap_or(0) == 2).then_some(())
        },
    )
    .map(|()| restarted.elapsed())
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.coordinators[0].0.stderr()));
    wait_until("the sweep to finish", Duration::from_secs(120), || {
        let c = cluster.counts(&sweep).ok()?;
        (c["succeeded"] == 2).then_some(c)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            worker.stderr(),
            cluster.coordinators[0].0.stderr()
        )
    });
    // Each trial was leased once: the restart cost no attempt and no rerun.
    let results = walk_files(&cluster.store().join("results"));
    assert_eq!(
        results
            .iter()
            .filter(|p| p.ends_with("result.json") && !p.to_string_lossy().contains("/attempts/"))
            .count(),
        2
    );
    let log = cluster.coordinators[0].0.stderr();
    assert_eq!(
        log.matches("attempt=2").count(),
        0,
        "a trial ran twice:\n{log}"
    );
    println!(
        "redis restart (appendonly yes, appendfsync everysec): down {:.2} s, status with both \
         leases kept {:.2} s after the restart began; 2 results, every trial on attempt 1",
        down.as_secs_f64(),
        back.as_secs_f64()
    );
}

/// A coordinator's Redis flushed (a failover to a fresh Redis): the worker, forgotten, must
/// register again by itself, show in status, and run a sweep submitted afterwards.
#[test]
fn a_worker_forgotten_by_a_flushed_redis_registers_again() {
    let dir = TestDir::new("cluster-flush").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let mut worker = cluster.start_worker("w1", &["--slots", "1"], &[]).unwrap();
    wait_registered(&worker);
    let workers = |cluster: &Cluster| {
        cluster
            .status()
            .ok()
            .and_then(|s| s["workers"].as_array().map(Vec::len))
    };
    assert_eq!(workers(&cluster), Some(1));
    let mut flush = std::process::Command::new("redis-cli");
    flush
        .args(["-p", &cluster.redis.port().to_string(), "FLUSHALL"])
        .stdout(std::process::Stdio::null());
    run_ok(flush).unwrap();
    wait_until(
        "the worker to register again",
        Duration::from_secs(30),
        || (workers(&cluster) == Some(1)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    let models = copy_examples(dir.path(), 1);
    let (_, stderr) = cluster
        .submit(&models, &["--stages", "convert", "--wait"])
        .unwrap();
    assert!(stderr.contains("finished: 1 succeeded"), "{stderr}");
    assert!(
        worker.stderr().contains("registering again"),
        "{}",
        worker.stderr()
    );
    worker.signal(Signal::SIGTERM).unwrap();
    worker.wait(Duration::from_secs(30)).unwrap();
}

#[test]
fn a_worker_runs_an_out_of_memory_retry_under_the_larger_reservation() {
    let dir = TestDir::new("cluster-oom").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    // The worker offers 8000 MiB; co-simulation dies of memory with the tool saying its peak
    // was 3000 MB, every time.
    let mut worker = cluster
        .start_worker(
            "w1",
            &["--slots", "1"],
            &[
                ("HLSFARM_WORKER__MEMORY_MIB", "8000"),
                // A trial's limit: its reservation, when above this.
                ("HLSFARM_WORKER__TRIAL_MEMORY_MIB", "2000"),
                ("STANDIN_FAIL", "cosim_oom"),
                ("STANDIN_AT", "cosim"),
                ("STANDIN_PEAK_MB", "3000"),
            ],
        )
        .unwrap();
    wait_registered(&worker);
    let models = copy_examples(dir.path(), 1);
    let (sweep, _) = cluster
        .submit(&models, &["--stages", "convert,csynth,cosim"])
        .unwrap();
    let trial = wait_until(
        "the trial to run out of attempts",
        Duration::from_secs(300),
        || {
            let trial = cluster.trials(&sweep).ok()?.pop()?;
            (trial["state"] == "dead").then_some(trial)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    assert_eq!(trial["attempt"], 3, "{trial}");
    // Attempt 1 under the sweep's 4096 MiB; attempts 2 and 3 under twice the peak.
    let key = trial["key"].as_str().unwrap().to_owned();
    let committed = cluster.store().join(format!("results/{key}/result.json"));
    wait_until("the last attempt's result", Duration::from_secs(30), || {
        committed.is_file().then_some(())
    })
    .unwrap();
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cluster.store().join(format!("results/{key}/result.json"))).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    assert_eq!(result["failure"]["class"], "oom", "{result}");
    assert_eq!(result["failure"]["peak_memory_mib"], 3000, "{result}");
    assert_eq!(result["memory_limit_mib"], 6000, "{result}");
    worker.signal(Signal::SIGTERM).unwrap();
    worker.wait(Duration::from_secs(30)).unwrap();
}
