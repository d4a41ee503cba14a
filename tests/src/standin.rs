//! Helpers for tests that run the Xilinx stand-in on real hls4ml projects: projects written
//! by hls4ml from `shared/models`, the steps file, the tool command, and hls4ml's own report
//! parser to check what the stand-in (or hlsfarm) wrote.
//!
//! These helpers panic on set-up failures: they are for tests only.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::{TestDir, hls4ml_python, path_with_standin, run_ok, shared_dir, tests_dir};

/// Writes (once per test binary) a real hls4ml project for `backend` and returns its folder.
pub fn template(backend: &'static str) -> PathBuf {
    static VITIS: OnceLock<(TestDir, PathBuf)> = OnceLock::new();
    static VIVADO: OnceLock<(TestDir, PathBuf)> = OnceLock::new();
    let cell = if backend == "Vitis" { &VITIS } else { &VIVADO };
    cell.get_or_init(|| {
        let dir = TestDir::new(&format!("template-{backend}")).expect("test set-up");
        let project = dir.join("prj");
        let models = shared_dir().expect("test set-up").join("models/keras");
        let mut command = Command::new(hls4ml_python().expect("test set-up"));
        command
            .arg(tests_dir().join("python/write_project.py"))
            .arg(models.join("qkeras_3layer.json"))
            .arg(models.join("qkeras_3layer_weights.h5"))
            .arg(&project)
            .args([backend, "io_parallel", "xc7z020clg400-1", "Resource", "4"]);
        run_ok(command).expect("test set-up");
        (dir, project)
    })
    .1
    .clone()
}

/// Copies the template into a fresh test folder.
pub fn project(dir: &TestDir, backend: &'static str) -> PathBuf {
    let target = dir.join("prj");
    run_ok({
        let mut c = Command::new("cp");
        c.arg("-a").arg(template(backend)).arg(&target);
        c
    })
    .expect("test set-up");
    target
}

/// Writes `build_opt.tcl` with the given steps.
pub fn write_build_opt(project: &Path, steps: &[(&str, u8)]) {
    let mut text = String::from("array set opt {\n    reset      0\n");
    for (step, on) in steps {
        text.push_str(&format!("    {step:<10} {on}\n"));
    }
    text.push_str("}\n");
    std::fs::write(project.join("build_opt.tcl"), text).expect("test set-up");
}

/// Every step hls4ml's `build_prj.tcl` knows, all on but `fifo_opt`.
pub const ALL_STEPS: &[(&str, u8)] = &[
    ("csim", 1),
    ("synth", 1),
    ("cosim", 1),
    ("validation", 1),
    ("export", 1),
    ("vsynth", 1),
    ("fifo_opt", 0),
];

/// A command running the stand-in tool `args[0]` in `project`, with no knobs set.
pub fn tool(project: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(args[0]);
    command
        .args(&args[1..])
        .current_dir(project)
        .env("PATH", path_with_standin())
        .env("XILINX_LOCAL_USER_DATA", "no");
    for knob in [
        "STANDIN_FAIL",
        "STANDIN_AT",
        "STANDIN_HANG",
        "STANDIN_SLEEP",
        "STANDIN_WAIT_FOR",
        "STANDIN_SIGNAL",
        "STANDIN_TRUNCATE_LOG",
        "STANDIN_MEMORY_MB",
        "STANDIN_VERSION",
    ] {
        command.env_remove(knob);
    }
    command
}

/// hls4ml's `parse_vivado_report` on the project, as JSON.
pub fn hls4ml_report(project: &Path) -> Value {
    let mut command = Command::new(hls4ml_python().expect("test set-up"));
    command
        .arg(tests_dir().join("python/parse_report.py"))
        .arg(project);
    let output = run_ok(command).expect("test set-up");
    let stdout = String::from_utf8(output.stdout).expect("test set-up");
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("REPORT: "))
        .unwrap_or_else(|| panic!("no report printed:\n{stdout}"));
    serde_json::from_str(line).expect("test set-up")
}

/// A number from hls4ml's report dictionary (it keeps numbers as strings).
pub fn number(report: &Value, section: &str, key: &str) -> f64 {
    let value = &report[section][key];
    value
        .as_str()
        .map(|s| s.parse::<f64>().expect("test set-up"))
        .or_else(|| value.as_f64())
        .unwrap_or_else(|| panic!("{section}.{key} missing in {report}"))
}

/// Replaces `from` with `to` in one of the project's files (to make a variant of it).
pub fn edit(project: &Path, file: &str, from: &str, to: &str) {
    let path = project.join(file);
    let text = std::fs::read_to_string(&path).expect("test set-up: project file");
    assert!(text.contains(from), "test set-up: `{from}` not in {file}");
    std::fs::write(&path, text.replace(from, to)).expect("test set-up: project file");
}
