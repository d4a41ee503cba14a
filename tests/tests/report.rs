//! `hlsfarm report --json` reads what the tools write, and agrees with hls4ml's own
//! `parse_vivado_report` wherever both read the same file. The files come from the stand-in
//! running real hls4ml projects, in each tool's layout.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use hlsfarm_tests::standin::{ALL_STEPS, hls4ml_report, number, project, tool, write_build_opt};
use hlsfarm_tests::{TestDir, hlsfarm_command, run_ok};
use serde_json::Value;

fn hlsfarm_report(path: &Path) -> Value {
    let mut command = hlsfarm_command().unwrap();
    command.arg("report").arg(path).arg("--json");
    serde_json::from_slice(&run_ok(command).unwrap().stdout).unwrap()
}

fn f(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{pointer} missing in {v}"))
}

/// Every figure both parsers read, compared.
fn agree(ours: &Value, theirs: &Value) {
    let pairs = [
        ("/csynth/used/lut", "CSynthesisReport", "LUT"),
        ("/csynth/used/ff", "CSynthesisReport", "FF"),
        ("/csynth/used/dsp", "CSynthesisReport", "DSP"),
        ("/csynth/used/bram_18k", "CSynthesisReport", "BRAM_18K"),
        ("/csynth/available/lut", "CSynthesisReport", "AvailableLUT"),
        ("/csynth/available/dsp", "CSynthesisReport", "AvailableDSP"),
        (
            "/csynth/target_clock_ns",
            "CSynthesisReport",
            "TargetClockPeriod",
        ),
        (
            "/csynth/estimated_clock_ns",
            "CSynthesisReport",
            "EstimatedClockPeriod",
        ),
        (
            "/csynth/latency_best_cycles",
            "CSynthesisReport",
            "BestLatency",
        ),
        (
            "/csynth/latency_worst_cycles",
            "CSynthesisReport",
            "WorstLatency",
        ),
        (
            "/csynth/interval_min_cycles",
            "CSynthesisReport",
            "IntervalMin",
        ),
        (
            "/csynth/interval_max_cycles",
            "CSynthesisReport",
            "IntervalMax",
        ),
        ("/vivado_synth/used/lut", "VivadoSynthReport", "LUT"),
        ("/vivado_synth/used/ff", "VivadoSynthReport", "FF"),
        ("/vivado_synth/used/dsp", "VivadoSynthReport", "DSP48E"),
        ("/cosim/latency_min_cycles", "CosimReport", "LatencyMin"),
        ("/cosim/latency_max_cycles", "CosimReport", "LatencyMax"),
        ("/cosim/interval_min_cycles", "CosimReport", "IntervalMin"),
        ("/cosim/interval_max_cycles", "CosimReport", "IntervalMax"),
    ];
    for (pointer, section, key) in pairs {
        assert_eq!(
            f(ours, pointer),
            number(theirs, section, key),
            "{pointer} vs {section}.{key}"
        );
    }
    assert_eq!(ours["cosim"]["status"], "pass");
    assert_eq!(theirs["CosimReport"]["Status"], "Pass");
}

fn full_flow(name: &str, backend: &'static str, args: &[&str], tool_name: &str, version: &str) {
    let dir = TestDir::new(name).unwrap();
    let project = project(&dir, backend);
    write_build_opt(&project, ALL_STEPS);
    run_ok(tool(&project, args)).unwrap();
    let ours = hlsfarm_report(&project);
    agree(&ours, &hls4ml_report(&project));
    assert_eq!(ours["log"]["tool"], tool_name, "{ours}");
    assert_eq!(ours["log"]["version"], version);
    assert_eq!(ours["log"]["completed"], true);
    assert_eq!(ours["log"]["failure"], Value::Null);
    assert_eq!(ours["vivado_log"]["completed"], true);
    assert_eq!(ours["vivado_synth"]["version"], "2023.2");
    // Numbers are JSON numbers, never strings with units.
    assert!(ours["csynth"]["estimated_clock_ns"].is_f64());
    assert!(ours["csynth"]["latency_best_cycles"].is_u64());
}

#[test]
fn vitis_run_reports_agree_with_hls4ml() {
    full_flow(
        "report-vitis-run",
        "Vitis",
        &["vitis-run", "--tcl", "build_prj.tcl", "--mode", "hls"],
        "vitis-run",
        "2024.2",
    );
}

#[test]
fn vitis_hls_reports_agree_with_hls4ml() {
    full_flow(
        "report-vitis-hls",
        "Vitis",
        &["vitis_hls", "-f", "build_prj.tcl"],
        "vitis_hls",
        "2023.2",
    );
}

#[test]
fn vivado_hls_reports_agree_with_hls4ml() {
    let steps = "reset=0 csim=1 synth=1 cosim=1 validation=1 export=1 vsynth=1 fifo_opt=0";
    full_flow(
        "report-vivado-hls",
        "Vivado",
        &["vivado_hls", "-f", "build_prj.tcl", steps],
        "vivado_hls",
        "2019.2",
    );
}

#[test]
fn single_files_are_recognized_by_content() {
    let dir = TestDir::new("report-files").unwrap();
    let project = project(&dir, "Vitis");
    write_build_opt(&project, ALL_STEPS);
    run_ok(tool(&project, &["vitis_hls", "-f", "build_prj.tcl"])).unwrap();
    let syn = project.join("myproject_prj/solution1/syn/report");
    let xml = hlsfarm_report(&syn.join("myproject_csynth.xml"));
    let rpt = hlsfarm_report(&syn.join("myproject_csynth.rpt"));
    // The text report carries the same figures as the XML.
    for key in ["lut", "ff", "dsp", "bram_18k"] {
        assert_eq!(
            xml["csynth"]["used"][key], rpt["csynth"]["used"][key],
            "{key}"
        );
        assert_eq!(
            xml["csynth"]["available"][key], rpt["csynth"]["available"][key],
            "{key}"
        );
    }
    assert_eq!(
        xml["csynth"]["latency_worst_cycles"],
        rpt["csynth"]["latency_worst_cycles"]
    );
    assert_eq!(
        xml["csynth"]["estimated_clock_ns"],
        rpt["csynth"]["estimated_clock_ns"]
    );
    // A renamed utilization report is still one.
    std::fs::copy(project.join("vivado_synth.rpt"), dir.join("renamed.txt")).unwrap();
    let util = hlsfarm_report(&dir.join("renamed.txt"));
    assert!(
        util["vivado_synth"]["used"]["lut"].as_f64().unwrap() > 0.0,
        "{util}"
    );
    assert!(util.get("csynth").is_none());
}

#[test]
fn failed_runs_report_class_reason_and_fix() {
    for (knob, class, needle) in [
        ("licence", "licence", "XILINXD_LICENSE_FILE"),
        ("partition", "tool_error", "max_array_partition_size"),
        ("unroll", "tool_error", "reuse_factor"),
    ] {
        let dir = TestDir::new(&format!("report-fail-{knob}")).unwrap();
        let project = project(&dir, "Vitis");
        write_build_opt(&project, &[("synth", 1)]);
        let mut command = tool(&project, &["vitis_hls", "-f", "build_prj.tcl"]);
        command.env("STANDIN_FAIL", knob);
        assert!(!command.output().unwrap().status.success());
        let ours = hlsfarm_report(&project);
        assert_eq!(ours["log"]["completed"], false, "{knob}: {ours}");
        assert_eq!(ours["log"]["failure"]["class"], class, "{knob}: {ours}");
        let fix = ours["log"]["failure"]["suggestion"].as_str().unwrap();
        assert!(fix.contains(needle), "{knob}: {fix}");
        assert!(
            ours.get("csynth").is_none(),
            "no report after a failed synthesis"
        );
    }
}

#[test]
fn a_missing_path_and_an_unrelated_file_are_clear_errors() {
    let dir = TestDir::new("report-errors").unwrap();
    let mut command = hlsfarm_command().unwrap();
    command.arg("report").arg(dir.join("nope"));
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot read") && stderr.contains("nope"),
        "{stderr}"
    );

    std::fs::write(dir.join("notes.txt"), "hello\n").unwrap();
    let mut command = hlsfarm_command().unwrap();
    command.arg("report").arg(dir.join("notes.txt"));
    let output = command.output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("is not a csynth, cosim, utilization report or tool log"),
        "{stderr}"
    );
}
