//! A whole trial through the worker's runner: hls4ml for real, every tool stage through the
//! stand-in, reports parsed, the essential files kept, a tarball, and `result.json`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::results::{ModelRef, TrialResult, TrialStatus};
use hlsfarm_common::settings::{Backend, Settings, Strategy};
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_tests::{SEED_KEPT_FILES, TestDir, hls4ml_python, path_with_standin, shared_dir};
use hlsfarm_worker::driver::{DriverEnv, ModelFiles};
use hlsfarm_worker::tools::detect_tools;
use hlsfarm_worker::trial::{TrialEnv, TrialSpec, run_trial};
use tokio_util::sync::CancellationToken;

async fn env(knobs: &[(&str, &str)], tool_timeout: Duration) -> TrialEnv {
    let (tools, failed) = detect_tools(&path_with_standin(), Duration::from_secs(20)).await;
    assert!(failed.is_empty(), "{failed:?}");
    TrialEnv {
        driver: DriverEnv {
            python: hls4ml_python().unwrap(),
            by_format: hlsfarm_worker::venv::format_pythons(),
            timeout: Duration::from_secs(600),
            memory_limit_mib: Some(8192),
            tolerance: Default::default(),
            strict: false,
            warm: None,
        },
        tools,
        tool_timeout,
        make_tarball: true,
        tool_env: knobs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        emulate_beside_tools: false,
    }
}

fn spec(dir: &TestDir, stages: &[Stage], backend: Backend) -> TrialSpec {
    let models = shared_dir().unwrap().join("models/keras");
    TrialSpec {
        trial_key: "0".repeat(64),
        model: ModelRef {
            name: "qkeras_3layer.json".into(),
            sha256: "0".repeat(64),
        },
        files: ModelFiles {
            weights: Some(models.join("qkeras_3layer_weights.h5")),
            ..ModelFiles::auto(models.join("qkeras_3layer.json"))
        },
        settings: Settings {
            strategy: Strategy::Resource,
            reuse_factor: 4,
            backend,
            ..Settings::default()
        },
        stages: stages.to_vec(),
        emulation: EmulationSpec {
            samples: 20,
            seed: 0,
        },
        inputs: None,
        validation: None,
        search: None,
        scratch: dir.join("scratch"),
        output_dir: dir.join("out/hls_qkeras_3layer"),
        tarball: dir.join("out/hls_qkeras_3layer.tar.gz"),
        derived_from: None,
        stage_limits: Vec::new(),
    }
}

fn tar_names(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn full_flow_keeps_the_essential_files_and_records_everything() {
    let dir = TestDir::new("trial-full").unwrap();
    let spec = spec(&dir, Stage::FULL_FLOW, Backend::Vitis);
    let heard = std::sync::Mutex::new(Vec::new());
    let result = run_trial(
        &env(&[], Duration::from_secs(120)).await,
        &spec,
        &CancellationToken::new(),
        &|stage| heard.lock().unwrap().push(stage),
    )
    .await;
    assert_eq!(result.status, TrialStatus::Success, "{:?}", result.failure);
    // One tool run for the four stages: C simulation (co-simulation's reference) comes first.
    assert_eq!(
        *heard.lock().unwrap(),
        [
            Stage::Convert,
            Stage::Cosim,
            Stage::Csynth,
            Stage::Cosim,
            Stage::Export,
            Stage::Vsynth
        ]
    );
    let stages: Vec<Stage> = result.timings.iter().map(|t| t.stage).collect();
    assert_eq!(stages, Stage::FULL_FLOW);
    // Every stage's CPU time is measured (the stand-in is a Python process; the driver's
    // g++ counts to emulate), and none exceeds what the host's cores could give.
    for t in &result.timings {
        let cpu = t.cpu_seconds.unwrap_or(-1.0);
        assert!(cpu >= 0.0, "{t:?}");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        assert!(cpu <= t.seconds * cores + 1.0, "{t:?}");
    }
    let emulate = result.timings.iter().find(|t| t.stage == Stage::Emulate);
    assert!(
        emulate.and_then(|t| t.cpu_seconds).unwrap() > 1.0,
        "{emulate:?}"
    );
    assert!(
        result.multiplications.is_some_and(|m| m > 0),
        "{:?}",
        result.multiplications
    );
    assert!(result.fidelity.is_some());
    let csynth = result.reports.csynth.as_ref().unwrap();
    assert!(csynth.used.lut.unwrap() > 0.0);
    assert!(
        result
            .reports
            .vivado_synth
            .as_ref()
            .unwrap()
            .used
            .lut
            .unwrap()
            > 0.0
    );
    assert_eq!(
        result.reports.cosim.as_ref().unwrap().status,
        hlsfarm_common::report::CosimStatus::Pass
    );
    assert!(result.latency_ns().unwrap() > 0.0);
    let tool = result.toolchain.tool.as_ref().unwrap();
    assert_eq!(
        (tool.name.as_str(), tool.version.as_str()),
        ("vitis-run", "2024.2")
    );
    assert_eq!(result.toolchain.hls4ml_version, "1.3.0");
    // The seed's six files, the reports and the config are kept; the project is not.
    let others = [
        "myproject_csynth.rpt",
        "myproject_csynth.xml",
        "myproject_cosim.rpt",
        "hls4ml_config.yml",
        "hls4ml.log",
    ];
    for file in SEED_KEPT_FILES.iter().chain(&others).copied() {
        assert!(
            result.kept_files.contains(&file.to_owned()),
            "{file} not kept: {:?}",
            result.kept_files
        );
        assert!(spec.output_dir.join(file).is_file());
    }
    // The kept HLS log covers every tool stage, not only the last run.
    let log = std::fs::read_to_string(spec.output_dir.join("vitis_hls.log")).unwrap();
    assert!(
        log.contains("C/RTL SYNTHESIS")
            && log.contains("EXPORT IP")
            && log.contains("VIVADO SYNTHESIS"),
        "{log}"
    );
    assert!(
        result.kept_bytes < 2 * 1024 * 1024,
        "kept {} bytes",
        result.kept_bytes
    );
    let names = tar_names(&spec.tarball);
    assert!(
        names.contains(&"hls_qkeras_3layer/vivado_synth.rpt".to_owned()),
        "{names:?}"
    );
    assert_eq!(names.len(), result.kept_files.len());
    // result.json on disk is the result returned.
    let on_disk: TrialResult =
        serde_json::from_slice(&std::fs::read(spec.output_dir.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk, result);
}

#[tokio::test(flavor = "multi_thread")]
async fn vivado_backend_runs_vivado_hls_with_argument_steps() {
    let dir = TestDir::new("trial-vivado").unwrap();
    let spec = spec(&dir, &[Stage::Convert, Stage::Csynth], Backend::Vivado);
    let result = run_trial(
        &env(&[], Duration::from_secs(120)).await,
        &spec,
        &CancellationToken::new(),
        &|_| {},
    )
    .await;
    assert_eq!(result.status, TrialStatus::Success, "{:?}", result.failure);
    assert_eq!(result.toolchain.tool.as_ref().unwrap().name, "vivado_hls");
    assert_eq!(
        result.reports.csynth.as_ref().unwrap().tool.as_deref(),
        Some("vivado_hls")
    );
    assert!(result.kept_files.contains(&"vivado_hls.log".to_owned()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_licence_failure_is_classified_with_the_log_tail() {
    let dir = TestDir::new("trial-licence").unwrap();
    let spec = spec(
        &dir,
        &[Stage::Convert, Stage::Csynth, Stage::Vsynth],
        Backend::Vitis,
    );
    let env = env(
        &[("STANDIN_FAIL", "licence"), ("STANDIN_AT", "vsynth")],
        Duration::from_secs(120),
    )
    .await;
    let result = run_trial(&env, &spec, &CancellationToken::new(), &|_| {}).await;
    assert_eq!(result.status, TrialStatus::Failed);
    let failure = result.failure.as_ref().unwrap();
    assert_eq!(failure.class, FailureClass::Licence, "{failure:?}");
    assert_eq!(failure.stage, Some(Stage::Vsynth));
    assert!(
        failure
            .suggestion
            .as_ref()
            .unwrap()
            .contains("XILINXD_LICENSE_FILE")
    );
    // What ran before the failure is kept and reported.
    assert!(result.reports.csynth.is_some());
    assert!(spec.output_dir.join("result.json").is_file());
}

/// As in real logs: the simulator is killed, the HLS tool survives it and prints COSIM
/// errors; that is `oom`, not an RTL mismatch.
#[tokio::test(flavor = "multi_thread")]
async fn a_simulator_killed_in_cosim_is_oom() {
    let dir = TestDir::new("trial-cosim-oom").unwrap();
    let spec = spec(
        &dir,
        &[Stage::Convert, Stage::Csynth, Stage::Cosim],
        Backend::Vitis,
    );
    let env = env(
        &[("STANDIN_FAIL", "cosim_oom"), ("STANDIN_AT", "cosim")],
        Duration::from_secs(120),
    )
    .await;
    let result = run_trial(&env, &spec, &CancellationToken::new(), &|_| {}).await;
    let failure = result.failure.as_ref().unwrap();
    assert_eq!(failure.class, FailureClass::Oom, "{failure:?}");
    assert_eq!(failure.stage, Some(Stage::Cosim));
    assert!(failure.reason.contains("co-simulation"), "{failure:?}");
    assert!(failure.reason.contains("MiB"), "{failure:?}");
    // The tool's own peak (31.9 GB) is the failure's: an oom retry reserves twice it.
    assert_eq!(failure.peak_memory_mib, Some(32666), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_tool_is_killed_with_its_whole_tree() {
    let dir = TestDir::new("trial-hang").unwrap();
    let record = dir.join("calls.jsonl");
    let spec = spec(&dir, &[Stage::Convert, Stage::Csynth], Backend::Vitis);
    let env = env(
        &[
            ("STANDIN_HANG", "1"),
            ("STANDIN_RECORD", record.to_str().unwrap()),
        ],
        Duration::from_secs(3),
    )
    .await;
    let result = run_trial(&env, &spec, &CancellationToken::new(), &|_| {}).await;
    let failure = result.failure.as_ref().unwrap();
    assert_eq!(failure.class, FailureClass::Timeout, "{failure:?}");
    assert_eq!(failure.stage, Some(Stage::Csynth));
    let calls = std::fs::read_to_string(&record).unwrap();
    let call: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    assert_eq!(call["env"]["XILINX_LOCAL_USER_DATA"], "no");
    let pid = call["pgid"].as_i64().unwrap() as i32;
    assert!(
        !hlsfarm_worker::process::group_alive(pid),
        "the tool's process group outlived the timeout"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_mid_run_stops_the_tool() {
    let dir = TestDir::new("trial-cancel").unwrap();
    let record = dir.join("calls.jsonl");
    let spec = spec(&dir, &[Stage::Convert, Stage::Csynth], Backend::Vitis);
    let env = env(
        &[
            ("STANDIN_HANG", "1"),
            ("STANDIN_RECORD", record.to_str().unwrap()),
        ],
        Duration::from_secs(600),
    )
    .await;
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let watched: PathBuf = record.clone();
    tokio::spawn(async move {
        // Cancel once the tool is running.
        while !watched.is_file() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trigger.cancel();
    });
    let start = std::time::Instant::now();
    let result = run_trial(&env, &spec, &cancel, &|_| {}).await;
    assert_eq!(result.status, TrialStatus::Cancelled);
    assert!(start.elapsed() < Duration::from_secs(120));
    let calls = std::fs::read_to_string(&record).unwrap();
    let call: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    assert!(!hlsfarm_worker::process::group_alive(
        call["pgid"].as_i64().unwrap() as i32
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_learned_limit_stops_its_stage_well_below_the_workers_limit() {
    let dir = TestDir::new("trial-learned-limit").unwrap();
    let mut spec = spec(&dir, &[Stage::Csynth, Stage::Cosim], Backend::Vitis);
    // The estimates expected csynth to take 0.5 s and allowed it 2 s; it takes 30.
    spec.stage_limits = vec![hlsfarm_common::estimate::StageLimit {
        stage: Stage::Csynth,
        seconds: 2.0,
        predicted_seconds: 0.5,
    }];
    let env = env(
        &[("STANDIN_SLEEP", "30"), ("STANDIN_AT", "synth")],
        Duration::from_secs(600),
    )
    .await;
    let start = std::time::Instant::now();
    let result = run_trial(&env, &spec, &CancellationToken::new(), &|_| {}).await;
    let failure = result.failure.as_ref().unwrap();
    assert_eq!(failure.class, FailureClass::Timeout, "{failure:?}");
    assert_eq!(failure.stage, Some(Stage::Csynth), "{failure:?}");
    assert!(
        failure
            .reason
            .contains("ran past its learned limit of 2.0 s (the estimates expected 0.5 s)"),
        "{failure:?}"
    );
    let fix = failure.suggestion.as_deref().unwrap_or_default();
    assert!(
        fix.contains("its retry runs under the worker's limit of 600 s"),
        "{fix}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(28),
        "stopped at the learned limit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tool_stages_run_in_one_tool_start_and_each_keeps_its_own_limit() {
    let dir = TestDir::new("trial-one-run").unwrap();
    let record = dir.join("calls.jsonl");
    let spec = spec(&dir, Stage::FULL_FLOW, Backend::Vitis);
    let heard = std::sync::Mutex::new(Vec::new());
    // Export takes 4 s against a 3 s limit per stage: the run as a whole (csynth, cosim and
    // export well inside 3 × 4 s) would not stop it, the stage's own clock does.
    let env = env(
        &[
            ("STANDIN_SLEEP", "4"),
            ("STANDIN_AT", "export"),
            ("STANDIN_RECORD", record.to_str().unwrap()),
        ],
        Duration::from_secs(3),
    )
    .await;
    let result = run_trial(&env, &spec, &CancellationToken::new(), &|stage| {
        heard.lock().unwrap().push(stage)
    })
    .await;
    let failure = result.failure.as_ref().unwrap();
    assert_eq!(failure.class, FailureClass::Timeout, "{failure:?}");
    assert_eq!(failure.stage, Some(Stage::Export), "{failure:?}");
    assert!(failure.reason.contains("stage export"), "{failure:?}");
    let calls: Vec<serde_json::Value> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hls: Vec<_> = calls.iter().filter(|c| c["tool"] != "vivado").collect();
    assert_eq!(hls.len(), 1, "one tool start for every stage: {calls:?}");
    for step in ["csim", "synth", "cosim", "validation", "export", "vsynth"] {
        assert_eq!(hls[0]["steps"][step], 1, "{step} in {:?}", hls[0]["steps"]);
    }
    assert!(
        !hlsfarm_worker::process::group_alive(hls[0]["pgid"].as_i64().unwrap() as i32),
        "the tool outlived its stage's limit"
    );
    // The stages before export finished and have their own figures; the reports they wrote
    // are read.
    let timed: Vec<Stage> = result.timings.iter().map(|t| t.stage).collect();
    assert_eq!(
        timed,
        [Stage::Convert, Stage::Emulate, Stage::Csynth, Stage::Cosim]
    );
    assert!(
        result
            .timings
            .iter()
            .filter(|t| t.stage.needs_xilinx_tools())
            .all(|t| t.seconds < 3.0),
        "{:?}",
        result.timings
    );
    assert!(result.reports.csynth.is_some());
    assert_eq!(
        *heard.lock().unwrap(),
        [
            Stage::Convert,
            Stage::Cosim,
            Stage::Csynth,
            Stage::Cosim,
            Stage::Export
        ]
    );
}

/// When the tool started (the stand-in's record) and when the driver ended (its result file).
fn tool_start_and_driver_end(record: &Path, scratch: &Path) -> (f64, f64) {
    let calls = std::fs::read_to_string(record).unwrap();
    let call: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    let started = call["started"].as_f64().unwrap();
    let ended = std::fs::metadata(scratch.join("convert_result.json"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    (started, ended)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tools_start_beside_the_emulation_with_the_same_results() {
    let stages = [Stage::Convert, Stage::Emulate, Stage::Csynth];
    let mut results = Vec::new();
    for beside in [false, true] {
        let dir = TestDir::new(if beside {
            "trial-beside"
        } else {
            "trial-after"
        })
        .unwrap();
        let record = dir.join("calls.jsonl");
        let mut env = env(
            &[("STANDIN_RECORD", record.to_str().unwrap())],
            Duration::from_secs(600),
        )
        .await;
        env.emulate_beside_tools = beside;
        let spec = spec(&dir, &stages, Backend::Vitis);
        let result = run_trial(&env, &spec, &CancellationToken::new(), &|_| {}).await;
        assert_eq!(result.status, TrialStatus::Success, "{:?}", result.failure);
        assert_eq!(result.tools_beside_emulation, beside);
        let (started, ended) = tool_start_and_driver_end(&record, &spec.scratch);
        if beside {
            // The emulation's compile takes seconds; the tool started well before its end.
            assert!(
                started < ended - 0.5,
                "the tool started {:.2} s after the driver ended",
                started - ended
            );
        } else {
            assert!(started >= ended, "the tool started before the driver ended");
        }
        // The project the tool read is the one the driver wrote: no trace copy left behind.
        assert!(!spec.scratch.join("myproject-trace").exists());
        results.push(result);
    }
    let (after, beside) = (&results[0], &results[1]);
    let stages_of = |r: &TrialResult| r.timings.iter().map(|t| t.stage).collect::<Vec<_>>();
    assert_eq!(stages_of(after), stages_of(beside));
    assert_eq!(
        serde_json::to_value(&after.fidelity).unwrap(),
        serde_json::to_value(&beside.fidelity).unwrap()
    );
    assert_eq!(
        serde_json::to_value(&after.reports.csynth).unwrap(),
        serde_json::to_value(&beside.reports.csynth).unwrap()
    );
    assert_eq!(after.kept_files, beside.kept_files);
}

/// An environment whose tool hangs in C synthesis, started beside the emulation, and the
/// stand-in's record of its calls.
async fn hanging_beside(dir: &TestDir) -> (TrialEnv, PathBuf) {
    let record = dir.join("calls.jsonl");
    let mut env = env(
        &[
            ("STANDIN_HANG", "1"),
            ("STANDIN_RECORD", record.to_str().unwrap()),
        ],
        Duration::from_secs(600),
    )
    .await;
    env.emulate_beside_tools = true;
    (env, record)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emulation_that_fails_stops_the_tools_beside_it() {
    let dir = TestDir::new("trial-beside-fails").unwrap();
    let (env, record) = hanging_beside(&dir).await;
    // A validation set that is not one: the emulate step fails once it reads it, after the
    // project is written and the tool has started beside it.
    let validation = dir.join("validation.npz");
    std::fs::write(&validation, b"not an npz archive").unwrap();
    let mut spec = spec(
        &dir,
        &[Stage::Convert, Stage::Emulate, Stage::Csynth],
        Backend::Vitis,
    );
    spec.validation = Some(validation);
    let start = std::time::Instant::now();
    let result = run_trial(&env, &spec, &CancellationToken::new(), &|_| {}).await;
    assert!(start.elapsed() < Duration::from_secs(300));
    assert_eq!(result.status, TrialStatus::Failed);
    let failure = result.failure.as_ref().unwrap();
    assert_eq!(failure.stage, Some(Stage::Emulate), "{failure:?}");
    let calls = std::fs::read_to_string(&record).expect("the tool never started beside it");
    let call: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    assert!(
        !hlsfarm_worker::process::group_alive(call["pgid"].as_i64().unwrap() as i32),
        "the hanging tool outlived the failed emulation"
    );
    assert!(result.timings.iter().all(|t| t.stage != Stage::Csynth));
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_beside_the_emulation_stops_both() {
    let dir = TestDir::new("trial-beside-cancel").unwrap();
    let (env, record) = hanging_beside(&dir).await;
    let spec = spec(
        &dir,
        &[Stage::Convert, Stage::Emulate, Stage::Csynth],
        Backend::Vitis,
    );
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let watched: PathBuf = record.clone();
    tokio::spawn(async move {
        // Cancel as soon as the tool runs (its record holds a whole line): the emulation is
        // still compiling beside it.
        while !std::fs::read_to_string(&watched).is_ok_and(|t| t.contains('\n')) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        trigger.cancel();
    });
    let result = run_trial(&env, &spec, &cancel, &|_| {}).await;
    assert_eq!(result.status, TrialStatus::Cancelled);
    // The driver was stopped mid-emulation: it never wrote its result.
    assert!(!spec.scratch.join("convert_result.json").exists());
    let calls = std::fs::read_to_string(&record).unwrap();
    let call: serde_json::Value = serde_json::from_str(calls.lines().next().unwrap()).unwrap();
    assert!(!hlsfarm_worker::process::group_alive(
        call["pgid"].as_i64().unwrap() as i32
    ));
}
