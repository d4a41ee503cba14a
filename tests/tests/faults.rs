//! Faults, bad input and access (DESIGN §3 and §6), each with real processes: a real
//! `redis-server`, a real S3-compatible server, `hlsfarm serve` and `hlsfarm worker`, hls4ml,
//! and the Xilinx stand-in. Network cuts go through a TCP proxy the test severs; a full disk
//! is a small tmpfs. Each test prints what it measured.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hlsfarm_tests::cluster::{Cluster, ClusterOptions, wait_registered};
use hlsfarm_tests::{Process, S3Server, TestDir, processes_under, wait_until, walk_files};
use nix::sys::signal::Signal;

/// A folder `dir/<name>` holding the example trials `indices` (`model_trial_NNN.h5`).
fn models(dir: &Path, name: &str, indices: &[usize]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let examples = hlsfarm_tests::tests_dir().join("../examples/trials");
    for i in indices {
        let file = format!("model_trial_{i:03}.h5");
        std::fs::copy(examples.join(&file), out.join(&file)).unwrap();
    }
    out
}

/// Waits until `worker`'s log contains `text`.
fn wait_log(worker: &Process, text: &str, timeout: Duration) {
    wait_until(&format!("`{text}` in the log"), timeout, || {
        worker.stderr().contains(text).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
}

/// Waits until trial `key` runs `stage` on `worker`; returns the key.
fn wait_running(cluster: &Cluster, stage: &str, worker: &Process, id: &str) -> String {
    wait_until(
        &format!("a trial in {stage} on {id}"),
        Duration::from_secs(180),
        || {
            cluster
                .running_on()
                .ok()?
                .into_iter()
                .find(|(_, s, w)| s == stage && w == id)
                .map(|(k, _, _)| k)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()))
}

/// Waits until the sweep has `n` trials in `state`.
fn wait_count(cluster: &Cluster, sweep: &str, state: &str, n: u64, logs: &[&Process]) {
    wait_until(
        &format!("{n} {state} in {sweep}"),
        Duration::from_secs(180),
        || (cluster.counts(sweep).ok()?[state].as_u64() == Some(n)).then_some(()),
    )
    .unwrap_or_else(|e| {
        let logs: Vec<String> = logs.iter().map(|p| p.stderr()).collect();
        panic!(
            "{e}\ncounts: {:?}\n{}",
            cluster.counts(sweep).ok(),
            logs.join("\n----\n")
        )
    });
}

/// The one trial of a sweep, from the coordinator's trial table.
fn only_trial(cluster: &Cluster, sweep: &str) -> serde_json::Value {
    let trials = cluster.trials(sweep).unwrap();
    assert_eq!(trials.len(), 1, "{trials:?}");
    trials[0].clone()
}

fn result_files(cluster: &Cluster) -> Vec<PathBuf> {
    walk_files(&cluster.store().join("results"))
        .into_iter()
        .filter(|p| p.ends_with("result.json"))
        .collect()
}

#[test]
fn a_worker_killed_mid_trial_is_leased_again_within_one_lease() {
    let dir = TestDir::new("faults-kill-worker").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let lease = Duration::from_millis(2000);
    let gate = dir.join("gate");
    let gated = [("STANDIN_WAIT_FOR", gate.to_str().unwrap())];
    let mut w1 = cluster
        .start_worker("w1", &["--slots", "1"], &gated)
        .unwrap();
    wait_registered(&w1);
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "m", &[0]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    let key = wait_running(&cluster, "csynth", &w1, "w1");
    let w2 = cluster
        .start_worker("w2", &["--slots", "1"], &gated)
        .unwrap();
    wait_registered(&w2);
    let scratch = dir.join("scratch-w1");
    assert!(!processes_under(&scratch).is_empty(), "w1's tool runs");

    // kill -9: no goodbye, no hand-back; the lease must run out and the trial move on.
    let killed = Instant::now();
    w1.kill();
    wait_until("w2 to hold the trial", Duration::from_secs(30), || {
        cluster
            .running_on()
            .ok()?
            .into_iter()
            .any(|(k, _, w)| k == key && w == "w2")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w2.stderr()));
    let recovery = killed.elapsed();
    println!(
        "recovery after kill -9 of a worker: {:.2} s (lease {:.1} s, heartbeat 0.3 s)",
        recovery.as_secs_f64(),
        lease.as_secs_f64()
    );
    // The lease ends at most one lease after the last heartbeat; allow the status polls'
    // own latency on top.
    assert!(
        recovery < lease + Duration::from_millis(1500),
        "re-leased after {recovery:?}"
    );

    // The killed worker's tool outlived it; the next worker on that scratch folder stops it.
    assert!(
        !processes_under(&scratch).is_empty(),
        "the stand-in should have outlived its worker"
    );
    let w1b = cluster
        .start_worker("w1", &["--slots", "1"], &gated)
        .unwrap();
    wait_registered(&w1b);
    assert!(
        w1b.stderr().contains("killed tool processes left running"),
        "{}",
        w1b.stderr()
    );
    wait_until("the orphans to die", Duration::from_secs(10), || {
        processes_under(&scratch).is_empty().then_some(())
    })
    .unwrap();

    std::fs::write(&gate, "").unwrap();
    wait_count(&cluster, &sweep, "succeeded", 1, &[&w2, &w1b]);
    let trial = only_trial(&cluster, &sweep);
    assert_eq!(trial["attempt"].as_u64(), Some(2), "{trial}");
    assert_eq!(result_files(&cluster).len(), 1);
}

#[test]
fn a_worker_cut_off_fences_itself_and_its_late_result_is_refused() {
    let dir = TestDir::new("faults-partition").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let proxy = cluster.proxy_to(0).unwrap();
    let gate = dir.join("gate");
    let gated = [("STANDIN_WAIT_FOR", gate.to_str().unwrap())];
    let w1 = cluster
        .start_worker_at(
            &cluster.url_at(proxy.port()),
            "w1",
            &["--slots", "1"],
            &gated,
        )
        .unwrap();
    wait_registered(&w1);

    // 1. Cut after w1 finished its work but before it could report: the coordinator gives
    //    the trial to w2; once healed, w1's late completion is refused and w2's result stays.
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "a", &[0]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    let key = wait_running(&cluster, "csynth", &w1, "w1");
    let mut w2 = cluster
        .start_worker("w2", &["--slots", "1"], &gated)
        .unwrap();
    wait_registered(&w2);
    proxy.cut();
    let cut = Instant::now();
    std::fs::write(&gate, "").unwrap();
    wait_log(
        &w1,
        "uploading its results and reporting",
        Duration::from_secs(30),
    );
    wait_until("w2 to hold the trial", Duration::from_secs(30), || {
        cluster
            .running_on()
            .ok()?
            .into_iter()
            .any(|(k, _, w)| k == key && w == "w2")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w2.stderr()));
    let reassigned = cut.elapsed();
    proxy.heal();
    wait_log(&w1, "completion refused", Duration::from_secs(30));
    wait_count(&cluster, &sweep, "succeeded", 1, &[&w1, &w2]);
    let trial = only_trial(&cluster, &sweep);
    assert_eq!(trial["attempt"].as_u64(), Some(2), "{trial}");
    let committed = cluster.store().join(format!("results/{key}/result.json"));
    let committed = std::fs::read(&committed).unwrap();
    for staged in walk_files(&cluster.store().join(format!("staging/{key}"))) {
        if staged.ends_with("result.json") {
            assert_ne!(
                std::fs::read(&staged).unwrap(),
                committed,
                "the refused lease's result ({}) was committed",
                staged.display()
            );
        }
    }
    assert_eq!(result_files(&cluster).len(), 1);

    // 2. Cut mid-synthesis: with no heartbeat answered for a lease, w1 kills its own tool
    //    instead of running on for nothing; healed, it takes the trial again and finishes.
    std::fs::remove_file(&gate).unwrap();
    w2.signal(Signal::SIGTERM).unwrap();
    w2.wait(Duration::from_secs(30)).unwrap();
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "b", &[1]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    wait_running(&cluster, "csynth", &w1, "w1");
    let scratch = dir.join("scratch-w1");
    assert!(!processes_under(&scratch).is_empty());
    proxy.cut();
    let cut = Instant::now();
    wait_log(
        &w1,
        "no heartbeat answered for longer than the lease",
        Duration::from_secs(30),
    );
    let fenced = cut.elapsed();
    wait_until("w1's tool to die", Duration::from_secs(20), || {
        processes_under(&scratch).is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w1.stderr()));
    proxy.heal();
    std::fs::write(&gate, "").unwrap();
    wait_count(&cluster, &sweep, "succeeded", 1, &[&w1]);
    let trial = only_trial(&cluster, &sweep);
    assert_eq!(trial["attempt"].as_u64(), Some(2), "{trial}");
    println!(
        "partition: trial given to another worker {:.2} s after the cut; late result refused; \
         a worker cut off mid-synthesis killed its tool {:.2} s after the cut (lease 2.0 s)",
        reassigned.as_secs_f64(),
        fenced.as_secs_f64()
    );
    assert!(fenced < Duration::from_secs(4), "fenced after {fenced:?}");
}

#[test]
fn a_coordinator_killed_mid_sweep_loses_and_duplicates_nothing() {
    let dir = TestDir::new("faults-kill-coordinator").unwrap();
    let mut cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            lease_ms: 5000,
            heartbeat_ms: 500,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let gate = dir.join("gate");
    let w1 = cluster
        .start_worker(
            "w1",
            &["--slots", "2"],
            &[("STANDIN_WAIT_FOR", gate.to_str().unwrap())],
        )
        .unwrap();
    wait_registered(&w1);
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "m", &[0, 1, 2]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    wait_until("two trials in csynth", Duration::from_secs(180), || {
        (cluster
            .running()
            .iter()
            .filter(|(_, s)| s == "csynth")
            .count()
            == 2)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w1.stderr()));

    let killed = Instant::now();
    cluster.restart_coordinator(0).unwrap();
    let back = killed.elapsed();
    // Status carries on from Redis: the same sweep, the same two leases.
    let counts = cluster.counts(&sweep).unwrap();
    assert_eq!(
        (counts["leased"].as_u64(), counts["queued"].as_u64()),
        (Some(2), Some(1)),
        "{counts}"
    );
    std::fs::write(&gate, "").unwrap();
    wait_count(&cluster, &sweep, "succeeded", 3, &[&w1]);
    let trials = cluster.trials(&sweep).unwrap();
    let attempts: Vec<u64> = trials
        .iter()
        .map(|t| t["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, vec![1, 1, 1], "a trial ran twice: {trials:?}");
    assert_eq!(result_files(&cluster).len(), 3);
    let aggregate = cluster
        .store()
        .join(format!("sweeps/{sweep}/synthesis_results.json"));
    wait_until("the aggregate", Duration::from_secs(20), || {
        aggregate.is_file().then_some(())
    })
    .unwrap();
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&aggregate).unwrap()).unwrap();
    assert_eq!(summary["total"].as_u64(), Some(3));
    println!(
        "coordinator kill -9 and restart: serving again after {:.2} s; 3 trials, 3 results, every attempt 1",
        back.as_secs_f64()
    );
}

#[test]
fn a_store_outage_is_ridden_out_and_past_its_budget_nothing_is_half_committed() {
    let dir = TestDir::new("faults-store").unwrap();
    let s3 = S3Server::start(dir.path(), "farm").unwrap();
    let port: u16 = s3.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    let s3_proxy = hlsfarm_tests::proxy::TcpProxy::start(([127, 0, 0, 1], port).into()).unwrap();
    let keys = [
        ("HLSFARM_STORE__S3_ALLOW_HTTP", "true"),
        ("HLSFARM_STORE__S3_ACCESS_KEY_ID", "test"),
        ("HLSFARM_STORE__S3_SECRET_ACCESS_KEY", "test"),
    ];
    let mut env: Vec<(String, String)> = keys
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push(("HLSFARM_STORE__S3_ENDPOINT".into(), s3.endpoint()));
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            store_url: Some("s3://farm/c".into()),
            env,
            max_attempts: 5,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let gate = dir.join("gate");
    // The worker reaches the store through the proxy: the test takes the store down for it.
    let via_proxy = format!("http://127.0.0.1:{}", s3_proxy.port());
    let w1 = cluster
        .start_worker(
            "w1",
            &["--slots", "1"],
            &[
                ("STANDIN_WAIT_FOR", gate.to_str().unwrap()),
                ("HLSFARM_STORE__S3_ENDPOINT", &via_proxy),
                ("HLSFARM_WORKER__UPLOAD_RETRY_S", "8"),
            ],
        )
        .unwrap();
    wait_registered(&w1);

    // 1. Down for a few seconds while the results upload: retried, the lease kept alive by
    //    heartbeats well past its 2 s, then done on the first attempt.
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "a", &[0]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    wait_running(&cluster, "csynth", &w1, "w1");
    s3_proxy.down();
    let down = Instant::now();
    std::fs::write(&gate, "").unwrap();
    wait_until("two failed uploads", Duration::from_secs(30), || {
        (w1.stderr().matches("upload failed, retrying").count() >= 2).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", w1.stderr()));
    while down.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts = cluster.counts(&sweep).unwrap();
    assert_eq!(counts["leased"].as_u64(), Some(1), "lease lost: {counts}");
    let retries = w1.stderr().matches("upload failed, retrying").count();
    s3_proxy.heal();
    wait_count(&cluster, &sweep, "succeeded", 1, &[&w1]);
    assert_eq!(only_trial(&cluster, &sweep)["attempt"].as_u64(), Some(1));

    // 2. Down past the 8 s budget: the trial fails as infrastructure and goes back; with the
    //    store back it succeeds on a later attempt, and only that attempt is committed.
    std::fs::remove_file(&gate).unwrap();
    let before = w1.stderr().matches("upload failed, retrying").count();
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "b", &[1]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    let key = wait_running(&cluster, "csynth", &w1, "w1");
    s3_proxy.down();
    std::fs::write(&gate, "").unwrap();
    wait_log(
        &w1,
        "upload failed past its retry budget",
        Duration::from_secs(60),
    );
    let past_budget = w1.stderr().matches("upload failed, retrying").count() - before;
    s3_proxy.heal();
    wait_count(&cluster, &sweep, "succeeded", 1, &[&w1]);
    let trial = only_trial(&cluster, &sweep);
    let attempt = trial["attempt"].as_u64().unwrap();
    assert!(attempt >= 2, "{trial}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs = hlsfarm_common::blob::Blobs::open(&hlsfarm_common::config::StoreConfig {
        url: "s3://farm/c".into(),
        s3_endpoint: s3.endpoint(),
        s3_region: "us-east-1".into(),
        s3_access_key_id: hlsfarm_common::config::Secret::new("test"),
        s3_secret_access_key: hlsfarm_common::config::Secret::new("test"),
        s3_allow_http: true,
    })
    .unwrap();
    let result: serde_json::Value = serde_json::from_slice(
        &rt.block_on(blobs.get(&format!("results/{key}/result.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(result["status"], "success", "{result}");
    let tarball = rt
        .block_on(blobs.get(&format!("results/{key}/artifacts.tar.gz")))
        .unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&tarball[..]));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("/result.json") || n.ends_with(".rpt")),
        "{names:?}"
    );
    println!(
        "store outage: {retries} upload retries over 4.5 s with the lease kept (attempt 1 \
         succeeded); past the 8 s budget after {past_budget} retries: infrastructure failure, \
         succeeded at attempt {attempt}, one committed result"
    );
}

#[test]
fn tools_killed_by_signals_are_classified_and_retried_a_bounded_number_of_times() {
    let dir = TestDir::new("faults-signals").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    // The OOM killer's SIGKILL: `oom`, retried up to max_attempts (3), then dead.
    let mut w1 = cluster
        .start_worker("w1", &["--slots", "1"], &[("STANDIN_SIGNAL", "KILL")])
        .unwrap();
    wait_registered(&w1);
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "a", &[0]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    wait_count(&cluster, &sweep, "dead", 1, &[&w1]);
    let trial = only_trial(&cluster, &sweep);
    assert_eq!(
        (trial["class"].as_str(), trial["attempt"].as_u64()),
        (Some("oom"), Some(3)),
        "{trial}"
    );
    w1.signal(Signal::SIGTERM).unwrap();
    w1.wait(Duration::from_secs(30)).unwrap();

    // A crash (SIGSEGV): `tool_error`, final at once.
    let w2 = cluster
        .start_worker("w2", &["--slots", "1"], &[("STANDIN_SIGNAL", "SEGV")])
        .unwrap();
    wait_registered(&w2);
    let (sweep2, _) = cluster
        .submit(
            &models(dir.path(), "b", &[1]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    wait_count(&cluster, &sweep2, "failed", 1, &[&w2]);
    let crashed = only_trial(&cluster, &sweep2);
    assert_eq!(
        (crashed["class"].as_str(), crashed["attempt"].as_u64()),
        (Some("tool_error"), Some(1)),
        "{crashed}"
    );
    assert!(
        crashed["reason"].as_str().unwrap().contains("SIGSEGV")
            || crashed["reason"].as_str().unwrap().contains("signal"),
        "{crashed}"
    );
    println!(
        "signals: SIGKILL → oom, 3 attempts then dead ({}); SIGSEGV → tool_error, 1 attempt ({})",
        trial["reason"], crashed["reason"]
    );
}

/// Mounts a tmpfs of `mib` MiB at `dir` (root only), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, mib: u64) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_scratch_disk_takes_no_lease_and_hands_the_trial_back() {
    let dir = TestDir::new("faults-disk").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let scratch = dir.join("scratch-w1");
    let disk = Tmpfs::mount(&scratch, 64);
    let gate = dir.join("gate");
    let w1 = cluster
        .start_worker(
            "w1",
            &["--slots", "1", "--min-free-disk-gib", "1"],
            &[("STANDIN_WAIT_FOR", gate.to_str().unwrap())],
        )
        .unwrap();
    wait_registered(&w1);
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "m", &[0]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();

    // 64 MiB free is below the 1 GiB floor: no lease, and the worker keeps heartbeating.
    wait_log(
        &w1,
        "scratch disk below the free-space threshold",
        Duration::from_secs(30),
    );
    std::thread::sleep(Duration::from_secs(3));
    let status = cluster.status().unwrap();
    let worker = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "w1")
        .unwrap()
        .clone();
    assert!(worker["trials"].as_array().unwrap().is_empty(), "{worker}");
    assert!(
        worker["heartbeat_age_seconds"].as_f64().unwrap_or(0.0) < 2.0,
        "{worker}"
    );
    assert_eq!(cluster.counts(&sweep).unwrap()["queued"].as_u64(), Some(1));

    // Room again: it leases. Then the disk fills mid-synthesis: the tool's failure is blamed
    // on the disk, not the trial (infrastructure), and the trial goes back to the queue.
    disk.resize(1100);
    wait_running(&cluster, "csynth", &w1, "w1");
    let filler = scratch.join("filler");
    let out = std::process::Command::new("fallocate")
        .args(["-l", "1090m"])
        .arg(&filler)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", scratch.join("filler2").display()))
        .output();
    std::fs::write(&gate, "").unwrap();
    wait_until(
        "the trial back in the queue",
        Duration::from_secs(60),
        || {
            let t = cluster.trials(&sweep).ok()?.pop()?;
            (t["state"] == "queued"
                && t["attempt"].as_u64()? >= 1
                && t["class"] == "infrastructure")
                .then_some(t)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{:?}\n{}", cluster.trials(&sweep), w1.stderr()));
    let failed = cluster.trials(&sweep).unwrap().pop().unwrap();
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("scratch disk is full"),
        "{failed}"
    );
    // Space freed: the same worker takes it again and finishes.
    std::fs::remove_file(&filler).unwrap();
    let _ = std::fs::remove_file(scratch.join("filler2"));
    wait_count(&cluster, &sweep, "succeeded", 1, &[&w1]);
    println!(
        "disk full: no lease below the floor while heartbeating; filled mid-trial: {} → retried, succeeded at attempt {}",
        failed["reason"],
        only_trial(&cluster, &sweep)["attempt"]
    );
    drop(w1);
    drop(disk);
}
