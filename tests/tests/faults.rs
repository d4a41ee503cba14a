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

/// The committed results (`results/<key>/result.json`), not the attempts' uploads.
fn result_files(cluster: &Cluster) -> Vec<PathBuf> {
    walk_files(&cluster.store().join("results"))
        .into_iter()
        .filter(|p| p.ends_with("result.json") && !p.to_string_lossy().contains("/attempts/"))
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

    // The killed worker's tool dies with it (the guard's parent-death signal), without
    // waiting for the next worker on that scratch folder.
    let died = Instant::now();
    wait_until(
        "the killed worker's tool to die",
        Duration::from_secs(10),
        || processes_under(&scratch).is_empty().then_some(()),
    )
    .unwrap();
    println!(
        "the killed worker's tool tree was gone {:.2} s after the check began",
        died.elapsed().as_secs_f64()
    );
    let w1b = cluster
        .start_worker("w1", &["--slots", "1"], &gated)
        .unwrap();
    wait_registered(&w1b);

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
    // The copy into results/ follows the accepted completion (the committer retries it).
    let committed = cluster.store().join(format!("results/{key}/result.json"));
    let committed = wait_until(
        "the result to be committed",
        Duration::from_secs(30),
        || std::fs::read(&committed).ok(),
    )
    .unwrap();
    // The refused lease's uploads were deleted when its completion was refused: what is left
    // is the accepted attempt's, and the committed result is its.
    let uploaded = walk_files(&cluster.store().join(format!("results/{key}/attempts")));
    assert!(
        uploaded
            .iter()
            .all(|p| p.to_string_lossy().contains("/attempts/2-")),
        "{uploaded:?}"
    );
    let accepted = uploaded
        .iter()
        .find(|p| p.ends_with("result.json"))
        .unwrap();
    assert_eq!(std::fs::read(accepted).unwrap(), committed);
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
    let env = s3.env_via(&s3.endpoint());
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
    let blobs = s3.blobs("c").unwrap();
    let result: serde_json::Value = serde_json::from_slice(
        &rt.block_on(blobs.get(&format!("results/{key}/result.json")))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(result["status"], "success", "{result}");
    // The tarball stays in the committed attempt's folder; the earlier attempt's uploads were
    // collected at the commit.
    let uploaded = rt
        .block_on(blobs.list_sizes(&format!("results/{key}/attempts")))
        .unwrap();
    let tarballs: Vec<&String> = uploaded
        .iter()
        .map(|(name, _)| name)
        .filter(|name| name.ends_with("/artifacts.tar.gz"))
        .collect();
    assert_eq!(tarballs.len(), 1, "{uploaded:?}");
    assert!(
        tarballs[0].starts_with(&format!("{attempt}-")),
        "{uploaded:?}"
    );
    let tarball = rt
        .block_on(blobs.get(&format!("results/{key}/attempts/{}", tarballs[0])))
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

#[test]
fn a_hanging_tool_is_killed_with_its_whole_tree_at_the_stage_timeout() {
    let dir = TestDir::new("faults-hang").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            max_attempts: 2,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    // C synthesis hangs, with a child process, until killed; the stage limit is 3 s.
    let worker = cluster
        .start_worker(
            "w1",
            &["--slots", "1"],
            &[
                ("STANDIN_HANG", "1"),
                ("HLSFARM_WORKER__STAGE_TIMEOUT_S", "3"),
            ],
        )
        .unwrap();
    wait_registered(&worker);
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "m", &[0]),
            &["--stages", "convert,csynth"],
        )
        .unwrap();
    let scratch = dir.join("scratch-w1");
    let mut tree = 0;
    wait_until(
        "the hanging tool and its child",
        Duration::from_secs(180),
        || {
            tree = processes_under(&scratch).len();
            (tree >= 2).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    let hung = Instant::now();
    wait_until("the tool tree to die", Duration::from_secs(30), || {
        processes_under(&scratch).is_empty().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    let killed_after = hung.elapsed();
    // A timeout is retryable: attempts are bounded by max_attempts, then the trial is dead.
    wait_count(&cluster, &sweep, "dead", 1, &[&worker]);
    let trial = only_trial(&cluster, &sweep);
    assert_eq!(
        (trial["class"].as_str(), trial["attempt"].as_u64()),
        (Some("timeout"), Some(2)),
        "{trial}"
    );
    assert!(processes_under(&scratch).is_empty(), "orphans left");
    println!(
        "hang: a tool tree of {tree} processes killed {:.1} s after it was seen (stage limit \
         3 s), no orphans; timeout retried once, then dead at attempt 2 ({})",
        killed_after.as_secs_f64(),
        trial["reason"]
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
    // An idle worker says it is alive once a lease (2 s here).
    assert!(
        worker["heartbeat_age_seconds"].as_f64().unwrap_or(0.0) < 3.0,
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

/// Runs `command`, which must fail; returns its stderr.
fn fails(mut command: std::process::Command) -> String {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{command:?} succeeded:\n{stderr}");
    stderr
}

#[test]
fn bad_input_gets_a_clear_error_no_retry_and_disturbs_nothing_else() {
    let dir = TestDir::new("faults-bad-input").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            env: vec![("HLSFARM_COORDINATOR__MAX_UPLOAD_MIB".into(), "1".into())],
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let worker = cluster.start_worker("w1", &["--slots", "2"], &[]).unwrap();
    wait_registered(&worker);

    // Model files that reach a worker: one good, three bad in different ways.
    let input = models(dir.path(), "m", &[0]);
    std::fs::write(input.join("corrupt.h5"), b"this is not an HDF5 file at all").unwrap();
    let good = std::fs::read(input.join("model_trial_000.h5")).unwrap();
    std::fs::write(input.join("truncated.h5"), &good[..good.len() / 2]).unwrap();
    let made = hlsfarm_tests::run_ok({
        let mut c = std::process::Command::new(hlsfarm_tests::hls4ml_python().unwrap());
        c.arg(hlsfarm_tests::tests_dir().join("python/make_unsupported_model.py"))
            .arg(&input);
        c
    });
    made.unwrap();
    let (sweep, _) = cluster
        .submit(&input, &["--pattern", "*.h5", "--stages", "convert"])
        .unwrap();
    let started = Instant::now();
    wait_until("every trial to end", Duration::from_secs(300), || {
        let c = cluster.counts(&sweep).ok()?;
        (c["succeeded"].as_u64()? + c["failed"].as_u64().unwrap_or(0) == 4).then_some(c)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    let trials = cluster.trials(&sweep).unwrap();
    let by_model = |name: &str| {
        trials
            .iter()
            .find(|t| t["model"] == name)
            .unwrap_or_else(|| panic!("no trial of {name}: {trials:?}"))
            .clone()
    };
    assert_eq!(by_model("model_trial_000.h5")["state"], "succeeded");
    let mut lines = Vec::new();
    for (name, says) in [
        ("corrupt.h5", "corrupt.h5"),
        ("truncated.h5", "truncated.h5"),
        ("unsupported_layer.h5", "GaussianNoise"),
    ] {
        let t = by_model(name);
        assert_eq!(t["state"], "failed", "{t}");
        assert_eq!(t["class"], "bad_input", "{t}");
        assert_eq!(
            t["attempt"].as_u64(),
            Some(1),
            "bad input is never retried: {t}"
        );
        let reason = t["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{name}: {reason}");
        lines.push(format!("{name}: {reason}"));
    }
    let ended = started.elapsed();

    // Refused at the door, before any trial exists.
    // `hlsfarm submit <flag> <path> <extra>`, which must fail; its stderr.
    let submit = |flag: &str, path: &Path, extra: &[&str]| {
        let mut c = cluster.operator_command().unwrap();
        c.args(["submit", flag]).arg(path).args(extra);
        fails(c)
    };
    let refused: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "ReuseFactor 0",
            vec!["--reuse-factor", "0"],
            "grid.reuse_factor[0]: must be between 1 and",
        ),
        (
            "unknown part",
            vec!["--fpga-part", "xc9nonsense"],
            "grid.part[0]: unknown FPGA part",
        ),
        (
            "negative clock",
            vec!["--clock-period=-5"],
            "grid.clock_period_ns[0]: must be a period in ns above 0",
        ),
        (
            "pattern matching nothing",
            vec!["--pattern", "*.onnx"],
            "matches `*.onnx`",
        ),
    ];
    for (what, extra, says) in &refused {
        let stderr = submit("--input-dir", &input, extra);
        assert!(stderr.contains(says), "{what}: {stderr}");
        lines.push(format!("{what}: {}", stderr.trim()));
    }
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let stderr = submit("--input-dir", &empty, &[]);
    assert!(stderr.contains("the folder has no files"), "{stderr}");
    lines.push(format!("empty folder: {}", stderr.trim()));
    let sweep_file = dir.join("sweep.toml");
    std::fs::write(
        &sweep_file,
        format!(
            "name = \"colours\"\ncolour = \"red\"\n[models]\ndir = \"{}\"\n",
            input.display()
        ),
    )
    .unwrap();
    let stderr = submit("--sweep", &sweep_file, &[]);
    assert!(
        stderr.contains("unknown field `colour`") && stderr.contains("sweep.toml"),
        "{stderr}"
    );
    lines.push(format!("unknown key: {}", stderr.trim()));
    let big = dir.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let mut bytes = good.clone();
    bytes.resize(2 * 1024 * 1024, 0);
    std::fs::write(big.join("model_trial_000.h5"), &bytes).unwrap();
    let stderr = submit("--input-dir", &big, &[]);
    assert!(
        stderr.contains("model_trial_000.h5") && stderr.contains("upload limit of 1 MiB"),
        "{stderr}"
    );
    lines.push(format!("over the size limit: {}", stderr.trim()));
    for url in ["ftp://host/farm", "s3://"] {
        let stderr = fails({
            let mut c = hlsfarm_tests::hlsfarm_command().unwrap();
            c.args(["serve", "--listen", "127.0.0.1:0", "--store", url]);
            c
        });
        assert!(stderr.contains("store.url"), "{url}: {stderr}");
        lines.push(format!("store URL {url}: {}", stderr.trim()));
    }

    // A model name that climbs out of its folder, straight at the API.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(async {
        let (c, b) = hlsfarm_proto::client::channel(
            &cluster.url(0),
            hlsfarm_tests::cluster::OPERATOR_TOKEN,
            None,
        )
        .unwrap();
        let mut op = hlsfarm_proto::v1::operator_client::OperatorClient::with_interceptor(c, b);
        op.upload_model(tokio_stream::iter(vec![hlsfarm_proto::v1::UploadChunk {
            name: "../../etc/evil.h5".into(),
            sha256: hlsfarm_common::trial_key::sha256_hex(b"x"),
            data: b"x".to_vec(),
        }]))
        .await
        .unwrap_err()
    });
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    lines.push(format!("model name with ../: {}", err.message()));

    // Nothing else was disturbed: still one sweep, four trials, and the worker serves.
    let status = cluster.status().unwrap();
    assert_eq!(status["sweeps"].as_array().unwrap().len(), 1, "{status}");
    let (again, _) = cluster
        .submit(&models(dir.path(), "n", &[1]), &["--stages", "convert"])
        .unwrap();
    wait_count(&cluster, &again, "succeeded", 1, &[&worker]);
    println!(
        "bad input: 3 bad models failed as bad_input on attempt 1 beside a good one ({:.1} s), \
         {} more refused before any trial:\n  {}",
        ended.as_secs_f64(),
        lines.len() - 3,
        lines.join("\n  ")
    );
}

/// The inodes of the TCP sockets process `pid` holds that are connected to local `port`.
fn sockets_to_port(pid: u32, port: u16) -> Vec<u64> {
    let held: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(inode)) = (f.get(2), f.get(9)) else {
                continue;
            };
            let remote_port = remote
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let inode: u64 = inode.parse().unwrap_or(0);
            if remote_port == Some(port) && held.contains(&inode) {
                found.push(inode);
            }
        }
    }
    found
}

/// `curl` with `args`; returns (exit code, HTTP status or body as printed).
fn curl(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl (installed by .ci/setup)");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn access_over_tls_tokens_and_no_secrets_where_they_do_not_belong() {
    use hlsfarm_proto::v1::{self, operator_client::OperatorClient, worker_client::WorkerClient};
    use hlsfarm_tests::cluster::{OPERATOR_TOKEN, WORKER_TOKEN};

    let dir = TestDir::new("faults-access").unwrap();
    let cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            tls: true,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    let ca = cluster.ca.clone().unwrap();
    let url = cluster.url(0);
    assert!(url.starts_with("https://"), "{url}");
    let worker = cluster.start_worker("w1", &["--slots", "1"], &[]).unwrap();
    wait_registered(&worker);

    // The whole path over TLS: the CLI uploads and submits, the worker leases, reports and
    // uploads, the CLI waits for the end.
    let input = models(dir.path(), "m", &[0]);
    let mut submit = cluster.operator_command().unwrap();
    submit.args(["submit", "--input-dir"]).arg(&input).args([
        "--stages",
        "convert,csynth",
        "--wait",
    ]);
    let out = hlsfarm_tests::run_ok(submit).unwrap();
    let sweep = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        cluster.counts(&sweep).unwrap()["succeeded"].as_u64(),
        Some(1)
    );

    // Without the CA the CLI refuses the server and says what to do.
    let mut status = hlsfarm_tests::hlsfarm_command().unwrap();
    status
        .env("HLSFARM_URL", &url)
        .env("HLSFARM_TOKEN", OPERATOR_TOKEN)
        .env_remove("HLSFARM_CA_CERT")
        .arg("status");
    let untrusted = fails(status);
    assert!(untrusted.contains("--ca-cert"), "{untrusted}");

    // HTTP on the same port: reads with the CA; nothing without it; writes need the operator.
    let cacert = ca.ca_cert.to_str().unwrap();
    let (code, body) = curl(&["--cacert", cacert, &format!("{url}/api/status")]);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains(&sweep), "{body}");
    let (code, body) = curl(&[&format!("{url}/api/status")]);
    assert_eq!(
        code, 60,
        "curl without the CA must reject the certificate: {body}"
    );
    let cancel = format!("{url}/api/sweeps/{sweep}/cancel");
    let mut http_codes = Vec::new();
    for (token, want) in [(None, "401"), (Some(WORKER_TOKEN), "403")] {
        let header = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["--cacert", cacert, "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend(["-X", "POST", &cancel]);
        if let Some(h) = &header {
            args.extend(["-H", h]);
        }
        let (code, body) = curl(&args);
        assert_eq!((code, body.as_str()), (0, want));
        http_codes.push(want);
    }

    // gRPC over TLS: each role only its own calls.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let codes = rt.block_on(async {
        let ch =
            |token: &str| hlsfarm_proto::client::channel(&url, token, Some(&ca.ca_cert)).unwrap();
        let (c, b) = ch("");
        let anonymous = OperatorClient::with_interceptor(c, b)
            .get_status(v1::GetStatusRequest::default())
            .await
            .unwrap_err()
            .code();
        let (c, b) = ch(WORKER_TOKEN);
        let mut as_worker = OperatorClient::with_interceptor(c, b);
        let submit = as_worker
            .submit_sweep(v1::SubmitSweepRequest::default())
            .await
            .unwrap_err()
            .code();
        let cancel = as_worker
            .cancel(v1::CancelRequest {
                sweep_id: sweep.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err()
            .code();
        let (c, b) = ch(OPERATOR_TOKEN);
        let lease = WorkerClient::with_interceptor(c, b)
            .lease(v1::LeaseRequest::default())
            .await
            .unwrap_err()
            .code();
        [anonymous, submit, cancel, lease]
    });
    use tonic::Code;
    assert_eq!(
        codes,
        [
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::PermissionDenied,
            Code::PermissionDenied
        ]
    );

    // Workers hold no Redis credentials and never connect to Redis; the coordinator does.
    let wpid = worker.pid().unwrap();
    let environ = std::fs::read(format!("/proc/{wpid}/environ")).unwrap();
    let cmdline = std::fs::read(format!("/proc/{wpid}/cmdline")).unwrap();
    for bytes in [&environ, &cmdline] {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("redis://") && !text.contains("REDIS_URL"),
            "{text}"
        );
    }
    let redis_port = cluster.redis.port();
    assert!(sockets_to_port(wpid, redis_port).is_empty());
    let cpid = cluster.coordinators[0].0.pid().unwrap();
    assert!(
        !sockets_to_port(cpid, redis_port).is_empty(),
        "the socket check must see the coordinator's Redis connections"
    );

    // The tarball's entries stay inside their folder and are regular files.
    let tarballs: Vec<PathBuf> = walk_files(&cluster.store().join("results"))
        .into_iter()
        .filter(|p| p.ends_with("artifacts.tar.gz"))
        .collect();
    assert_eq!(tarballs.len(), 1, "{tarballs:?}");
    let file = std::fs::File::open(&tarballs[0]).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut entries = 0;
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        assert!(entry.header().entry_type().is_file());
        let path = entry.path().unwrap().into_owned();
        assert!(
            path.components()
                .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{path:?}"
        );
        entries += 1;
    }
    assert!(entries > 3, "{entries} entries");

    // No token in any log or file the cluster wrote (logs, config, store).
    let files = walk_files(dir.path());
    let logs = files.iter().filter(|p| {
        p.extension()
            .is_some_and(|e| e == "stderr" || e == "stdout")
    });
    assert!(logs.count() >= 2);
    for path in &files {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        for token in [OPERATOR_TOKEN, WORKER_TOKEN] {
            assert!(!text.contains(token), "{} holds a token", path.display());
        }
    }
    println!(
        "access: TLS end to end (submit --wait, worker lease/report/upload); CLI without the CA: \
         {}; curl without the CA exit 60; HTTP cancel {}; gRPC no token {:?}, worker \
         token submit/cancel {:?}/{:?}, operator token lease {:?}; worker: 0 sockets to \
         Redis, no Redis URL in its environment; {entries} tar entries all inside their \
         folder; 0 tokens in {} files",
        untrusted.trim(),
        http_codes.join("/"),
        codes[0],
        codes[1],
        codes[2],
        codes[3],
        files.len()
    );
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWorker(usize),
    StoreBlip,
    CoordinatorRestart,
}

#[test]
fn soak_2000_trials_under_random_faults_ends_every_trial_once() {
    const TRIALS: u64 = 2000;
    let seed = std::env::var("HLSFARM_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = TestDir::new("faults-soak").unwrap();
    let s3 = S3Server::start(dir.path(), "farm").unwrap();
    let port: u16 = s3.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    let s3_proxy = hlsfarm_tests::proxy::TcpProxy::start(([127, 0, 0, 1], port).into()).unwrap();
    // Coordinator and workers both reach the store through the proxy: a blip hits uploads
    // and commits alike.
    let env = s3.env_via(&format!("http://127.0.0.1:{}", s3_proxy.port()));
    let mut cluster = Cluster::start(
        dir.path(),
        ClusterOptions {
            store_url: Some("s3://farm/soak".into()),
            env,
            ..ClusterOptions::default()
        },
    )
    .unwrap();
    // No-op trials of 50 ms: a real lease, heartbeats, an upload to the store, a report and
    // a commit each; 4 % of attempts fail (half tool_error, final; half oom, retried).
    let flags = [
        "--slots",
        "8",
        "--bench-noop",
        "--bench-noop-ms",
        "50",
        "--bench-noop-fail-percent",
        "4",
    ];
    let start =
        |cluster: &Cluster, i: usize| cluster.start_worker(&format!("w{i}"), &flags, &[]).unwrap();
    let mut workers = vec![start(&cluster, 0), start(&cluster, 1)];
    for w in &workers {
        wait_registered(w);
    }
    // 4 models x 500 reuse factors: 2,000 distinct trials in one sweep.
    let rfs: Vec<String> = (1..=TRIALS / 4).map(|r| r.to_string()).collect();
    let began = Instant::now();
    let (sweep, _) = cluster
        .submit(
            &models(dir.path(), "m", &[0, 1, 2, 3]),
            &["--reuse-factor", &rfs.join(","), "--stages", "convert"],
        )
        .unwrap();

    // The fault plan: five faults in a random order, each at a random point of the run.
    let mut plan = vec![
        Fault::KillWorker(0),
        Fault::KillWorker(1),
        Fault::StoreBlip,
        Fault::StoreBlip,
        Fault::CoordinatorRestart,
    ];
    rng.shuffle(&mut plan);
    let mut at: Vec<u64> = (0..plan.len())
        .map(|_| rng.u64(TRIALS / 20..TRIALS * 3 / 4))
        .collect();
    at.sort_unstable();
    let mut injected = Vec::new();
    let terminal = |c: &serde_json::Value| {
        ["succeeded", "failed", "dead", "cancelled"]
            .iter()
            .map(|s| c[s].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let mut counts = serde_json::Value::Null;
    let deadline = Instant::now() + Duration::from_secs(240);
    while Instant::now() < deadline {
        if let Ok(c) = cluster.counts(&sweep) {
            counts = c;
        }
        let done = terminal(&counts);
        if done == TRIALS {
            break;
        }
        if let (Some(&fault), Some(&when)) = (plan.get(injected.len()), at.get(injected.len()))
            && done >= when
        {
            match fault {
                Fault::KillWorker(i) => {
                    workers[i].kill();
                    workers[i] = start(&cluster, i);
                }
                Fault::StoreBlip => {
                    s3_proxy.down();
                    std::thread::sleep(Duration::from_millis(1500));
                    s3_proxy.heal();
                }
                Fault::CoordinatorRestart => cluster.restart_coordinator(0).unwrap(),
            }
            injected.push(format!("{fault:?}@{done}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = began.elapsed();
    let done = terminal(&counts);
    let lost = TRIALS - done;
    assert_eq!(
        lost,
        0,
        "trials not terminal after 240 s (seed {seed}, faults {injected:?}): {counts}\n{}",
        workers
            .iter()
            .map(Process::stderr)
            .collect::<Vec<_>>()
            .join("\n----\n")
    );
    assert_eq!(
        injected.len(),
        plan.len(),
        "faults {injected:?} of {plan:?}"
    );

    // What the store holds: the aggregate lists every trial once, and one committed result
    // per succeeded trial, each under its own key.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let blobs = s3.blobs("soak").unwrap();
    let aggregate = wait_until("the sweep's aggregate", Duration::from_secs(60), || {
        let bytes = rt
            .block_on(blobs.get(&format!("sweeps/{sweep}/synthesis_results.json")))
            .ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok()
    })
    .unwrap();
    let entries = aggregate["results"].as_array().unwrap();
    let keys: std::collections::HashSet<&str> = entries
        .iter()
        .map(|e| e["trial_key"].as_str().unwrap())
        .collect();
    let twice = entries.len() - keys.len();
    let succeeded = counts["succeeded"].as_u64().unwrap();
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("farm")
        .with_endpoint(s3.endpoint())
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    // Paths under `prefix` (ending with `/result.json` when `results`).
    let listed = |prefix: &str, results: bool| {
        rt.block_on(async {
            use object_store::ObjectStore;
            use tokio_stream::StreamExt;
            let prefix = object_store::path::Path::from(prefix);
            let mut listed = store.list(Some(&prefix));
            let mut found = Vec::new();
            while let Some(meta) = listed.next().await {
                let meta = meta.unwrap();
                if !results || meta.location.as_ref().ends_with("/result.json") {
                    found.push(meta.location.to_string());
                }
            }
            found
        })
    };
    // Committed results only: `results/<key>/result.json`, not the attempts' uploads.
    let (uploads, committed): (Vec<String>, Vec<String>) = listed("soak/results", true)
        .into_iter()
        .partition(|p| p.contains("/attempts/"));
    // Uploads of attempts that were never committed and not collected (a lease lost while
    // its upload ran past the winner's commit, a trial failed for good then re-run...).
    let uncollected = uploads.len().saturating_sub(committed.len());
    for path in &committed {
        let key = path.split('/').rev().nth(1).unwrap();
        let result: serde_json::Value = serde_json::from_slice(
            &rt.block_on(blobs.get(&format!("results/{key}/result.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(result["trial_key"], key, "{path}");
    }
    // Every no-op execution that got as far as its upload left one marker.
    let executions = listed(
        &format!("soak/{}", hlsfarm_worker::daemon::NOOP_EXECUTIONS),
        false,
    )
    .len() as u64;
    // Lower bounds: a restarted process's log starts afresh.
    let upload_retries: usize = workers
        .iter()
        .map(|w| w.stderr().matches("upload failed, retrying").count())
        .sum();
    let commit_retries = cluster.coordinators[0]
        .0
        .stderr()
        .matches("commit failed; retrying")
        .count();
    let line = format!(
        "soak: {TRIALS} trials, 2 workers x 8 slots, seed {seed}, faults {injected:?}, \
         {:.1} s: {succeeded} succeeded, {} failed, {} dead, {lost} lost, {twice} recorded \
         twice; {} committed results; {executions} successful executions ({} re-run after \
         faults); {uncollected} attempts' uploads beside them; at least {upload_retries} upload \
         and {commit_retries} commit retries",
        elapsed.as_secs_f64(),
        counts["failed"].as_u64().unwrap_or(0),
        counts["dead"].as_u64().unwrap_or(0),
        committed.len(),
        executions.saturating_sub(succeeded),
    );
    println!("{line}");
    assert_eq!(twice, 0, "{line}");
    assert_eq!(entries.len() as u64, TRIALS, "{line}");
    assert_eq!(committed.len() as u64, succeeded, "{line}");
    assert!(succeeded >= TRIALS * 9 / 10, "{line}");
    assert!(executions >= succeeded, "{line}");
    assert_eq!(counts["cancelled"].as_u64().unwrap_or(0), 0, "{line}");
}
