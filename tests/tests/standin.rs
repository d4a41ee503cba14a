//! The Xilinx stand-in writes what the real tools write, where they write it, in formats
//! hls4ml's own parser reads; and its failure knobs produce the real tools' error lines.
//!
//! Projects are real: hls4ml 1.3 writes them from `shared/models` (qkeras_3layer).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hlsfarm_tests::standin::{
    ALL_STEPS, edit, hls4ml_report, number, project, tool, write_build_opt,
};
use hlsfarm_tests::{TestDir, run_ok};

fn check_full_flow(project: &Path, hls_log: &str) {
    for file in [
        "myproject_prj/solution1/syn/report/myproject_csynth.rpt",
        "myproject_prj/solution1/syn/report/myproject_csynth.xml",
        "myproject_prj/solution1/sim/report/myproject_cosim.rpt",
        "myproject_prj/solution1/impl/ip/xilinx_com_hls_myproject_1_0_0.zip",
        "vivado_synth.rpt",
        "vivado.log",
        "vivado.jou",
        hls_log,
    ] {
        assert!(project.join(file).is_file(), "{file} not written");
    }
    let log = std::fs::read_to_string(project.join(hls_log)).unwrap();
    assert!(log.contains("INFO: [Common 17-206] Exiting"), "{log}");

    let report = hls4ml_report(project);
    let lut = number(&report, "CSynthesisReport", "LUT");
    let dsp = number(&report, "CSynthesisReport", "DSP");
    assert!(lut > 0.0 && dsp > 0.0, "{report}");
    assert_eq!(number(&report, "CSynthesisReport", "AvailableLUT"), 53200.0);
    assert_eq!(
        number(&report, "CSynthesisReport", "TargetClockPeriod"),
        5.0
    );
    let best = number(&report, "CSynthesisReport", "BestLatency");
    assert_eq!(report["CosimReport"]["Status"], "Pass", "{report}");
    assert_eq!(number(&report, "CosimReport", "LatencyMin"), best);
    let vivado_lut = number(&report, "VivadoSynthReport", "LUT");
    assert!(vivado_lut > 0.0 && vivado_lut <= lut, "{report}");
    assert_eq!(number(&report, "VivadoSynthReport", "DSP48E"), dsp);
}

#[test]
fn vitis_run_full_flow_parses_with_hls4ml() {
    let dir = TestDir::new("standin-vitis-run").unwrap();
    let project = project(&dir, "Vitis");
    write_build_opt(&project, ALL_STEPS);
    let output = run_ok(tool(
        &project,
        &["vitis-run", "--tcl", "build_prj.tcl", "--mode", "hls"],
    ))
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("vitis-run v2024.2"), "{stdout}");
    check_full_flow(&project, "vitis_hls.log");
}

#[test]
fn vitis_hls_full_flow_parses_with_hls4ml() {
    let dir = TestDir::new("standin-vitis-hls").unwrap();
    let project = project(&dir, "Vitis");
    write_build_opt(&project, ALL_STEPS);
    run_ok(tool(&project, &["vitis_hls", "-f", "build_prj.tcl"])).unwrap();
    check_full_flow(&project, "vitis_hls.log");
    assert!(project.join("myproject_prj/hls.app").is_file());
}

#[test]
fn vivado_hls_full_flow_takes_steps_from_arguments() {
    let dir = TestDir::new("standin-vivado-hls").unwrap();
    let project = project(&dir, "Vivado");
    // The Vivado backend's build_prj.tcl reads its steps from arguments, as hls4ml passes them.
    let steps = "reset=0 csim=1 synth=1 cosim=1 validation=1 export=1 vsynth=1 fifo_opt=0";
    run_ok(tool(
        &project,
        &["vivado_hls", "-f", "build_prj.tcl", steps],
    ))
    .unwrap();
    check_full_flow(&project, "vivado_hls.log");
    assert!(project.join("myproject_prj/vivado_hls.app").is_file());
    let xml = std::fs::read_to_string(
        project.join("myproject_prj/solution1/syn/report/myproject_csynth.xml"),
    )
    .unwrap();
    assert!(xml.contains("<DSP48E>"), "Vivado HLS names DSPs DSP48E");
}

#[test]
fn only_the_chosen_steps_run() {
    let dir = TestDir::new("standin-steps").unwrap();
    let project = project(&dir, "Vitis");
    write_build_opt(
        &project,
        &[
            ("csim", 0),
            ("synth", 1),
            ("cosim", 0),
            ("export", 0),
            ("vsynth", 0),
        ],
    );
    run_ok(tool(&project, &["vitis_hls", "-f", "build_prj.tcl"])).unwrap();
    assert!(
        project
            .join("myproject_prj/solution1/syn/report/myproject_csynth.xml")
            .is_file()
    );
    assert!(!project.join("myproject_prj/solution1/sim").exists());
    assert!(!project.join("vivado_synth.rpt").exists());
}

#[test]
fn figures_follow_the_project() {
    // Two projects that differ in reuse factor give different figures.
    let dir = TestDir::new("standin-figures").unwrap();
    let a = project(&dir, "Vitis");
    let b = dir.join("prj-rf1");
    run_ok({
        let mut c = Command::new("cp");
        c.arg("-a").arg(&a).arg(&b);
        c
    })
    .unwrap();
    edit(
        &b,
        "firmware/parameters.h",
        "reuse_factor = 4",
        "reuse_factor = 1",
    );
    for p in [&a, &b] {
        write_build_opt(p, &[("synth", 1)]);
        run_ok(tool(p, &["vitis_hls", "-f", "build_prj.tcl"])).unwrap();
    }
    let dsp_a = number(&hls4ml_report(&a), "CSynthesisReport", "DSP");
    let dsp_b = number(&hls4ml_report(&b), "CSynthesisReport", "DSP");
    assert!(
        dsp_b > dsp_a,
        "reuse factor 1 should use more DSPs: {dsp_b} vs {dsp_a}"
    );
}

/// Runs the stand-in with `knobs` set and returns (exit status, HLS log).
fn run_with_knobs(
    name: &str,
    knobs: &[(&str, &str)],
    steps: &[(&str, u8)],
) -> (std::process::ExitStatus, String, PathBuf, TestDir) {
    let dir = TestDir::new(name).unwrap();
    let project = project(&dir, "Vitis");
    write_build_opt(&project, steps);
    let mut command = tool(&project, &["vitis_hls", "-f", "build_prj.tcl"]);
    command.envs(knobs.iter().copied());
    let status = command.output().unwrap().status;
    let log = std::fs::read_to_string(project.join("vitis_hls.log")).unwrap_or_default();
    (status, log, project, dir)
}

#[test]
fn failure_knobs_write_the_real_error_lines_and_exit_non_zero() {
    let cases = [
        (
            "licence",
            "ERROR: [Common 17-345] A valid license was not found for feature 'HLS'",
        ),
        (
            "unroll",
            "ERROR: [XFORM 203-504] Stop unrolling loop 'Product1'",
        ),
        ("compile", "ERROR: [HLS 200-70] Compilation errors found"),
        ("partition", "ERROR: [XFORM 203-103] Array 'mult.V'"),
    ];
    for (kind, line) in cases {
        let (status, log, project, _dir) = run_with_knobs(
            &format!("standin-fail-{kind}"),
            &[("STANDIN_FAIL", kind)],
            &[("synth", 1), ("cosim", 1)],
        );
        assert_eq!(status.code(), Some(1), "{kind}: {log}");
        assert!(log.contains(line), "{kind}: expected `{line}` in:\n{log}");
        assert!(
            !project
                .join("myproject_prj/solution1/syn/report/myproject_csynth.xml")
                .exists(),
            "{kind}: a failed synthesis left a report"
        );
    }
}

#[test]
fn licence_failure_in_vivado_names_the_synthesis_feature() {
    let (status, _, project, _dir) = run_with_knobs(
        "standin-vivado-licence",
        &[("STANDIN_FAIL", "licence"), ("STANDIN_AT", "vsynth")],
        &[("synth", 1), ("vsynth", 1)],
    );
    assert_eq!(status.code(), Some(1));
    let vivado_log = std::fs::read_to_string(project.join("vivado.log")).unwrap();
    assert!(
        vivado_log.contains(
            "ERROR: [Common 17-345] A valid license was not found for feature 'Synthesis'"
        ),
        "{vivado_log}"
    );
    assert!(!project.join("vivado_synth.rpt").exists());
}

#[test]
fn an_array_over_maximum_size_fails_partitioning_like_the_seed() {
    let dir = TestDir::new("standin-maxsize").unwrap();
    let project = project(&dir, "Vitis");
    // The seed's failure: a layer's multiplier array above `maximum_size` (Latency strategy).
    edit(
        &project,
        "project.tcl",
        "set maximum_size 4096",
        "set maximum_size 64",
    );
    edit(
        &project,
        "hls4ml_config.yml",
        "Strategy: Resource",
        "Strategy: Latency",
    );
    write_build_opt(&project, &[("synth", 1)]);
    let output = tool(&project, &["vitis_hls", "-f", "build_prj.tcl"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = std::fs::read_to_string(project.join("vitis_hls.log")).unwrap();
    assert!(log.contains("has exeeded the threshold (64)"), "{log}");
}

#[test]
fn cosim_mismatch_fails_validation() {
    let (status, log, project, _dir) = run_with_knobs(
        "standin-cosim",
        &[("STANDIN_FAIL", "cosim_mismatch"), ("STANDIN_AT", "cosim")],
        &[("csim", 1), ("synth", 1), ("cosim", 1), ("validation", 1)],
    );
    assert_eq!(status.code(), Some(1));
    assert!(log.contains("ERROR: Test failed"), "{log}");
    let report = hls4ml_report(&project);
    assert_eq!(report["CosimReport"]["Status"], "Fail", "{report}");
}

#[test]
fn death_by_signal_and_truncated_logs() {
    use std::os::unix::process::ExitStatusExt;
    let (status, log, _, _dir) = run_with_knobs(
        "standin-kill",
        &[("STANDIN_SIGNAL", "KILL")],
        &[("synth", 1)],
    );
    assert_eq!(status.signal(), Some(9), "{log}");
    assert!(log.trim_end().ends_with("Killed"), "{log}");

    let (status, log, _, _dir) = run_with_knobs(
        "standin-truncate",
        &[("STANDIN_TRUNCATE_LOG", "1")],
        &[("synth", 1)],
    );
    assert!(status.success());
    assert!(!log.ends_with('\n'), "the log should be cut mid-line");
    assert!(!log.contains("Exiting"), "{log}");
}

#[test]
fn missing_script_and_unknown_part_fail_like_the_tools() {
    let dir = TestDir::new("standin-missing").unwrap();
    let output = tool(dir.path(), &["vitis_hls", "-f", "build_prj.tcl"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("couldn't read file \"build_prj.tcl\""),
        "{stdout}"
    );

    let project = project(&dir, "Vitis");
    edit(&project, "project.tcl", "xc7z020clg400-1", "ep4ce22f17c6");
    write_build_opt(&project, &[("synth", 1)]);
    let output = tool(&project, &["vitis_hls", "-f", "build_prj.tcl"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = std::fs::read_to_string(project.join("vitis_hls.log")).unwrap();
    assert!(
        log.contains("ERROR: [HLS 200-1023] Part 'ep4ce22f17c6' is not installed."),
        "{log}"
    );
}

#[test]
fn versions_answer_like_the_banners() {
    let dir = TestDir::new("standin-version").unwrap();
    for (name, version) in [
        ("vitis-run", "2024.2"),
        ("vitis_hls", "2023.2"),
        ("vivado_hls", "2019.2"),
        ("vivado", "2023.2"),
    ] {
        let output = run_ok(tool(dir.path(), &[name, "-version"])).unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(
            text.contains(&format!("v{version} (64-bit)")),
            "{name}: {text}"
        );
    }
    let mut command = tool(dir.path(), &["vitis_hls", "-version"]);
    command.env("STANDIN_VERSION", "2020.1");
    let text = String::from_utf8(run_ok(command).unwrap().stdout).unwrap();
    assert!(text.contains("v2020.1"), "{text}");
}
