//! `hlsfarm run`, the one-host successor of parallel_hls_synthesis.py: the original flags and
//! defaults, the original output layout and JSON schema, the full flow through the stand-in,
//! resuming without rerunning finished trials, and clear errors for empty selections.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hlsfarm_tests::{
    SEED_KEPT_FILES, TestDir, hls4ml_python, hlsfarm_command, path_with_standin, run_ok,
};
use serde_json::Value;

/// Copies the example trials into a fresh input folder.
fn input_dir(dir: &TestDir) -> PathBuf {
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/trials");
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "h5") {
            std::fs::copy(&path, input.join(path.file_name().unwrap())).unwrap();
        }
    }
    input
}

fn run_cmd(with_tools: bool) -> Command {
    let mut command = hlsfarm_command().unwrap();
    command.env("HLSFARM_PYTHON", hls4ml_python().unwrap());
    if with_tools {
        command.env("PATH", path_with_standin());
    }
    command
}

#[test]
fn original_flags_full_flow_layout_and_resume() {
    let dir = TestDir::new("run-full").unwrap();
    let input = input_dir(&dir);
    let record = dir.join("tool-calls.jsonl");
    let mut command = run_cmd(true);
    command
        .args(["run", "--input_dir"])
        .arg(&input)
        .args([
            "--num_workers",
            "2",
            "--limit",
            "2",
            "--fpga_part",
            "xc7z020clg400-1",
        ])
        .args(["--emulation-samples", "20"])
        .env("STANDIN_RECORD", &record);
    let output = run_ok(command).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("stages convert,emulate,csynth,cosim,export,vsynth"),
        "{stderr}"
    );

    // The original layout, under the original default output folder.
    let out = input.join("hls_outputs");
    for trial in ["hls_model_trial_000", "hls_model_trial_001"] {
        for file in SEED_KEPT_FILES.iter().chain(&["result.json"]).copied() {
            assert!(
                out.join(trial).join(file).is_file(),
                "{trial}/{file} missing"
            );
        }
        assert!(out.join(format!("{trial}.tar.gz")).is_file());
    }
    assert!(
        !out.join("hls_model_trial_002").exists(),
        "--limit 2 ran a third model"
    );

    // synthesis_results.json in the original schema, extended.
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("synthesis_results.json")).unwrap())
            .unwrap();
    assert_eq!(summary["total"], 2);
    assert_eq!(summary["successful"], 2);
    assert_eq!(summary["failed"], 0);
    for entry in summary["results"].as_array().unwrap() {
        for key in [
            "h5_file",
            "status",
            "output_dir",
            "kept_files",
            "tarball",
            "start_time",
            "end_time",
            "error",
        ] {
            assert!(entry.get(key).is_some(), "{key} missing in {entry}");
        }
        assert_eq!(entry["status"], "success");
        assert!(entry["h5_file"].as_str().unwrap().ends_with(".h5"));
        assert!(entry["kept_files"].as_array().unwrap().len() >= 6);
        assert!(
            entry["result"]["reports"]["csynth"]["used"]["lut"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert!(
            entry["result"]["fidelity"]["max_abs_diff"]
                .as_f64()
                .is_some()
        );
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let calls_before = std::fs::read_to_string(&record).unwrap().lines().count();
    assert_eq!(
        calls_before,
        2 * 2,
        "2 trials x (one HLS start for the 4 stages + the vivado it runs)"
    );

    // Running again reruns nothing that finished.
    let mut again = run_cmd(true);
    again
        .args(["run", "--input-dir"])
        .arg(&input)
        .args([
            "--num-workers",
            "2",
            "--limit",
            "2",
            "--emulation-samples",
            "20",
        ])
        .env("STANDIN_RECORD", &record);
    let output = run_ok(again).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("(2 already done, 0 to run)"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap().lines().count(),
        calls_before
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.join("synthesis_results.json")).unwrap())
            .unwrap();
    assert_eq!(summary["results"][0]["reused"], true);
}

#[test]
fn a_grid_names_folders_by_setting_and_no_tarball_skips_tarballs() {
    let dir = TestDir::new("run-grid").unwrap();
    let input = input_dir(&dir);
    let out = dir.join("out");
    let mut command = run_cmd(false);
    command
        .args(["run", "--input-dir"])
        .arg(&input)
        .arg("--output-dir")
        .arg(&out)
        .args([
            "--limit",
            "1",
            "--reuse-factor",
            "2,4",
            "--strategy",
            "resource",
            "--stages",
            "convert",
            "--no_tarball",
        ]);
    let output = run_ok(command).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("1 models x 2 settings = 2 trials"),
        "{stderr}"
    );
    for name in ["hls_model_trial_000_rf2", "hls_model_trial_000_rf4"] {
        let result: Value =
            serde_json::from_slice(&std::fs::read(out.join(name).join("result.json")).unwrap())
                .unwrap();
        assert_eq!(result["status"], "success", "{result}");
        assert!(!out.join(format!("{name}.tar.gz")).exists());
    }

    // `hlsfarm results` reads the folder back in each format.
    let results = |format: &str| {
        let mut command = hlsfarm_command().unwrap();
        command.arg("results").arg(&out).args(["--format", format]);
        String::from_utf8(run_ok(command).unwrap().stdout).unwrap()
    };
    let table = results("table");
    assert!(
        table.contains("hls_model_trial_000_rf2") && table.contains("hls_model_trial_000_rf4"),
        "{table}"
    );
    assert!(
        table
            .trim_end()
            .ends_with("2 trials: 2 succeeded, 0 failed"),
        "{table}"
    );
    assert!(results("csv").starts_with("model,trial_key,status"));
    let json: Value = serde_json::from_str(&results("json")).unwrap();
    assert_eq!(json["total"], 2);
}

#[test]
fn without_tools_it_says_what_it_skips() {
    let dir = TestDir::new("run-notools").unwrap();
    let input = input_dir(&dir);
    assert!(input.ends_with("input"));
    // A relative input folder, as users type it: the tools run in their own scratch folders
    // and must still find the models.
    let mut command = run_cmd(false);
    command.current_dir(dir.path()).args([
        "run",
        "--input-dir",
        "input",
        "--limit",
        "1",
        "--emulation-samples",
        "10",
    ]);
    let output = run_ok(command).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("Vitis HLS / Vivado not found on PATH: running convert and emulate only"),
        "{stderr}"
    );
    let result: Value = serde_json::from_slice(
        &std::fs::read(input.join("hls_outputs/hls_model_trial_000/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["stages"], serde_json::json!(["convert", "emulate"]));
}

#[test]
fn empty_folders_and_patterns_matching_nothing_are_clear_errors() {
    let dir = TestDir::new("run-empty").unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let mut command = run_cmd(false);
    command.args(["run", "--input-dir"]).arg(dir.join("empty"));
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("matches `model_trial_*.h5`") && stderr.contains("the folder has no files"),
        "{stderr}"
    );

    let input = input_dir(&dir);
    let mut command = run_cmd(false);
    command
        .args(["run", "--input-dir"])
        .arg(&input)
        .args(["--pattern", "*.onnx"]);
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("matches `*.onnx`") && stderr.contains("model_trial_000.h5"),
        "{stderr}"
    );

    let mut command = run_cmd(false);
    command
        .args(["run", "--input-dir"])
        .arg(&input)
        .args(["--reuse-factor", "0"]);
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("grid.reuse_factor[0]: must be between 1 and"),
        "{stderr}"
    );

    // A validation file that is not there is named, with what it should hold, before any
    // trial runs (`submit` reads it through the same function).
    let mut command = run_cmd(false);
    command
        .args(["run", "--input-dir"])
        .arg(&input)
        .args(["--validation", "no-such-validation.npz"]);
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--validation ")
            && stderr.contains("no-such-validation.npz: no such file")
            && stderr.contains("one array per model input name"),
        "{stderr}"
    );
    assert!(
        !input.join("hls_outputs/synthesis_results.json").exists(),
        "a run with a missing validation file ran trials"
    );
}

/// The `TMPDIR` of the run in `dir`.
fn tmp_dir(dir: &TestDir) -> PathBuf {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    tmp
}

/// The warm interpreters' folders (`hlsfarm-warm-*`) left in the run's `TMPDIR`.
fn warm_folders(dir: &TestDir) -> Vec<String> {
    std::fs::read_dir(tmp_dir(dir))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with("hlsfarm-warm-"))
        .collect()
}

/// `hlsfarm run` of one trial whose C synthesis hangs (with a child process), returned once
/// the tool runs, with the tool's own record of its start (pid, process group).
fn run_until_a_tool_hangs(dir: &TestDir, input: &Path) -> (hlsfarm_tests::Process, Value) {
    let record = dir.join("tool-calls.jsonl");
    let mut command = run_cmd(true);
    command
        .args(["run", "--input-dir"])
        .arg(input)
        .args(["--limit", "1", "--stages", "convert,csynth"])
        .env("STANDIN_HANG", "1")
        .env("STANDIN_RECORD", &record)
        // The warm interpreters' private folder, where the test can see it.
        .env("TMPDIR", tmp_dir(dir));
    let process = hlsfarm_tests::Process::spawn("hlsfarm-run", command, dir.path()).unwrap();
    let call: Value = hlsfarm_tests::wait_until(
        "the tool to start",
        std::time::Duration::from_secs(120),
        || {
            let text = std::fs::read_to_string(&record).ok()?;
            serde_json::from_str(text.lines().next()?).ok()
        },
    )
    .unwrap();
    (process, call)
}

#[test]
fn ctrl_c_kills_the_tools_and_the_next_run_resumes() {
    use std::time::Duration;
    let dir = TestDir::new("run-ctrlc").unwrap();
    let input = input_dir(&dir);
    // Wait until the (hanging) tool runs, then press Ctrl-C.
    let (mut process, call) = run_until_a_tool_hangs(&dir, &input);
    process.signal(nix::sys::signal::Signal::SIGINT).unwrap();
    let status = process.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(status.code(), Some(130), "{}", process.stderr());
    assert!(
        process.stderr().contains("interrupted"),
        "{}",
        process.stderr()
    );
    let pid = call["pgid"].as_i64().unwrap() as i32;
    assert!(
        !hlsfarm_worker::process::group_alive(pid),
        "the tool outlived Ctrl-C"
    );
    assert_eq!(
        warm_folders(&dir),
        Vec::<String>::new(),
        "Ctrl-C left a warm folder"
    );

    // The same command, without the hang, runs the interrupted trial.
    let mut again = run_cmd(true);
    again.args(["run", "--input-dir"]).arg(&input).args([
        "--limit",
        "1",
        "--stages",
        "convert,csynth",
    ]);
    let output = run_ok(again).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("(0 already done, 1 to run)"), "{stderr}");
    assert!(stderr.contains("1 trials: 1 succeeded"), "{stderr}");
}

#[test]
fn a_keras_tuner_search_folder_of_four_input_models_runs_with_binary_fidelity() {
    let dir = TestDir::new("run-search").unwrap();
    // Laid out as the original script's inputs: the search's models, its hyperparameters
    // and summary beside them (they must not be taken for models), a validation set.
    let input = dir.join("model2_quantized_4w0i_hyperparameter_results_20261202_120000");
    let mut make = Command::new(hls4ml_python().unwrap());
    make.arg(hlsfarm_tests::tests_dir().join("python/make_keras_models.py"))
        .arg("--search")
        .arg(&input)
        .args(["--count", "3"]);
    run_ok(make).unwrap();
    assert!(input.join("trials_summary.json").is_file());
    let mut command = run_cmd(false);
    command
        .args(["run", "--input_dir"])
        .arg(&input)
        .args(["--num_workers", "2"]);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("3 trials: 3 succeeded"), "{stderr}");
    let summary: Value = serde_json::from_slice(
        &std::fs::read(input.join("hls_outputs/synthesis_results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["successful"], 3, "{summary}");
    for entry in summary["results"].as_array().unwrap() {
        let r = &entry["result"];
        let outputs = r["fidelity"]["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{r}");
        assert_eq!(outputs[0]["kind"], "binary", "{r}");
        assert!(outputs[0]["agreement"].as_f64().unwrap() > 0.5, "{r}");
        assert_eq!(r["inputs"].as_array().unwrap().len(), 4, "{r}");
        assert_eq!(r["rewrites"][0]["layer"], "output", "{r}");
    }
    let csv = std::fs::read_to_string(input.join("hls_outputs/results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("fidelity"), "{csv}");
    assert!(csv.contains("output binary agree"), "{csv}");
}

#[test]
fn a_run_killed_with_sigkill_takes_its_tools_with_it() {
    use hlsfarm_tests::wait_until;
    use std::time::Duration;
    let dir = TestDir::new("run-sigkill").unwrap();
    let input = input_dir(&dir);
    let (mut process, call) = run_until_a_tool_hangs(&dir, &input);
    let group = call["pgid"].as_i64().unwrap() as i32;
    assert!(hlsfarm_worker::process::group_alive(group));
    // The warm interpreters' folder is this user's alone.
    let folders = warm_folders(&dir);
    assert_eq!(folders.len(), 1, "{folders:?}");
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(tmp_dir(&dir).join(&folders[0]))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode & 0o777, 0o700, "the warm folder's mode is {mode:o}");
    // No handler runs on SIGKILL: only the kernel's parent-death signal to the guard can
    // stop the tool (and the child it started).
    process.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = process.wait(Duration::from_secs(30)).unwrap();
    wait_until(
        "the tool tree to die with hlsfarm",
        Duration::from_secs(10),
        || (!hlsfarm_worker::process::group_alive(group)).then_some(()),
    )
    .unwrap();
    // Nor could it remove the warm interpreters' private folder: the interpreter, finding its
    // parent gone, does.
    wait_until(
        "the warm interpreters' folder to go with hlsfarm",
        Duration::from_secs(10),
        || warm_folders(&dir).is_empty().then_some(()),
    )
    .unwrap();
}

#[test]
fn with_hls_but_without_vivado_only_vsynth_is_skipped() {
    let dir = TestDir::new("run-novivado").unwrap();
    let input = input_dir(&dir);
    // A PATH with the stand-in's vitis_hls and nothing else of AMD's.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(
        hlsfarm_tests::standin_bin_dir().join("vitis_hls"),
        bin.join("vitis_hls"),
    )
    .unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut command = run_cmd(false);
    command
        .env("PATH", path)
        .args(["run", "--input-dir"])
        .arg(&input)
        .args(["--limit", "1", "--emulation-samples", "10"]);
    let output = run_ok(command).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("vivado not found on PATH: vsynth skipped"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stages convert,emulate,csynth,cosim,export;"),
        "{stderr}"
    );
    let out = input.join("hls_outputs/hls_model_trial_000");
    assert!(out.join("myproject_csynth.xml").is_file());
    assert!(!out.join("vivado_synth.rpt").exists());
}

/// Runs one example trial through convert, csynth and cosim with co-simulation killed for
/// memory, the tool printing `peak_mb` as its peak; returns (stderr, result.json, tool calls).
fn run_cosim_oom(dir: &TestDir, peak_mb: u64) -> (String, Value, usize) {
    let input = input_dir(dir);
    let record = dir.join("tool-calls.jsonl");
    let mut command = run_cmd(true);
    command
        .args(["run", "--input-dir"])
        .arg(&input)
        .args([
            "--limit",
            "1",
            "--num-workers",
            "1",
            "--trial-memory-mib",
            "2000",
        ])
        .args([
            "--stages",
            "convert,csynth,cosim",
            "--emulation-samples",
            "10",
        ])
        .env("STANDIN_FAIL", "cosim_oom")
        .env("STANDIN_AT", "cosim")
        .env("STANDIN_PEAK_MB", peak_mb.to_string())
        .env("STANDIN_RECORD", &record);
    let output = command.output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let result: Value = serde_json::from_slice(
        &std::fs::read(input.join("hls_outputs/hls_model_trial_000/result.json")).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{stderr}"));
    let cosims = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|call| {
            let cosim = &call["steps"]["cosim"];
            cosim == 1 || cosim == "1" || cosim == true
        })
        .count();
    (stderr, result, cosims)
}

#[test]
fn a_cosim_killed_for_memory_is_retried_with_twice_its_peak_or_named_when_no_host_has_it() {
    let dir = TestDir::new("run-oom").unwrap();
    let (stderr, result, cosims) = run_cosim_oom(&dir, 1500);
    // Attempt 1 under the 2000 MiB limit; attempts 2 and 3 with 3000 MiB (twice the peak).
    assert!(
        stderr.contains("retry hls_model_trial_000 with 3000 MiB reserved"),
        "{stderr}"
    );
    assert_eq!(cosims, 3, "{stderr}");
    assert_eq!(result["failure"]["class"], "oom", "{result}");
    assert_eq!(result["failure"]["peak_memory_mib"], 1500, "{result}");
    assert_eq!(result["memory_limit_mib"], 3000, "{result}");

    // A peak no host has twice of: not retried, and the result says so.
    let dir = TestDir::new("run-oom-huge").unwrap();
    let (stderr, result, cosims) = run_cosim_oom(&dir, 100_000_000);
    assert_eq!(cosims, 1, "{stderr}");
    let reason = result["failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not retried: it peaked at 100000000 MiB and this host has"),
        "{reason}"
    );
}
