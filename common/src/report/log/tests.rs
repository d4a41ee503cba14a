#![allow(clippy::unwrap_used)]
use super::*;

const OK_LOG: &str = "\
****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2023.2 (64-bit)
  **** SW Build 4023990 on Oct 11 2023
INFO: [HLS 200-10] Running '/tools/Xilinx/Vitis_HLS/2023.2/bin/unwrapped/lnx64.o/vitis_hls'
ERROR: [HLS 200-642] The 'config_export -vivado_optimization_level' command is deprecated and will be removed.
WARNING: [HLS 200-885] The II Violation in module 'dense'
WARNING: [HLS 200-885] The II Violation in module 'relu'
WARNING: [XFORM 203-104] Completely partitioning array 'layer17_out.V'
INFO: [HLS 200-112] Total CPU user time: 30 seconds.
INFO: [Common 17-206] Exiting vitis_hls at Mon Nov 23 10:00:00 2026...
";

#[test]
fn a_completed_run_with_a_non_fatal_error() {
    let d = parse(OK_LOG);
    assert_eq!(d.tool.as_deref(), Some("vitis_hls"));
    assert_eq!(d.version.as_deref(), Some("2023.2"));
    assert!(d.completed);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].id, "HLS 200-642");
    assert_eq!(d.warning_counts["HLS 200-885"], 2);
    assert_eq!(d.warning_counts["XFORM 203-104"], 1);
    assert_eq!(d.failure, None);
}

fn class_of(log: &str) -> (FailureClass, String, Option<String>) {
    let d = parse(log);
    assert!(!d.completed, "{log}");
    let f = d.failure.unwrap();
    (f.class, f.reason, f.suggestion)
}

#[test]
fn exiting_after_a_fatal_error_is_not_success() {
    let log = "ERROR: [HLS 200-70] Compilation errors found: In file included from firmware/myproject.cpp:1:\n\
               INFO: [Common 17-206] Exiting vitis_hls at Mon Nov 23 10:00:00 2026...\n";
    let (class, reason, _) = class_of(log);
    assert_eq!(class, FailureClass::ToolError);
    assert!(reason.starts_with("C++ compilation failed"), "{reason}");
}

#[test]
fn each_known_failure_gets_its_class_and_fix() {
    let (class, _, fix) = class_of(
        "ERROR: [Common 17-345] A valid license was not found for feature 'HLS' and/or device 'xc7z020'. Please run the Vivado License Manager.\n",
    );
    assert_eq!(class, FailureClass::Licence);
    assert!(fix.unwrap().contains("XILINXD_LICENSE_FILE"));

    let (class, _, _) = class_of("INFO: [HLS 200-10] Starting\nKilled\n");
    assert_eq!(class, FailureClass::Oom);

    let (class, reason, _) =
        class_of("couldn't read file \"build_prj.tcl\": no such file or directory\n");
    // The scratch folder lost its build script: the host's fault, not the design's.
    assert_eq!(class, FailureClass::Infrastructure);
    assert!(reason.contains("build_prj.tcl"));

    let (class, _, fix) = class_of(
        "ERROR: [XFORM 203-504] Stop unrolling loop 'Product1' (firmware/nnet_utils/nnet_dense_latency.h:85) in function 'x' because it may cause large runtime.\n",
    );
    assert_eq!(class, FailureClass::ToolError);
    assert!(fix.unwrap().contains("reuse_factor"));

    let (class, _, fix) = class_of(
        "ERROR: [XFORM 203-103] Array 'mult.V' (firmware/nnet_utils/nnet_dense_latency.h:17): partitioned elements number (4608) has exeeded the threshold (4096), which may cause long run-time.\n",
    );
    assert_eq!(class, FailureClass::ToolError);
    assert!(fix.unwrap().contains("raise it to at least 4608"));
    let d = parse(
        "ERROR: [XFORM 203-103] Array 'mult.V' (firmware/nnet_utils/nnet_dense_latency.h:17): partitioned elements number (4608) has exeeded the threshold (4096), which may cause long run-time.\n",
    );
    assert_eq!(
        d.fix,
        Some(BTreeMap::from([(
            "max_array_partition_size".to_owned(),
            4608.into()
        )]))
    );

    let (class, reason, _) = class_of(
        "INFO: Test PASSED?\nERROR: Test failed\nERROR: - csim log:      ./tb_data/csim_results.log\n",
    );
    assert_eq!(class, FailureClass::ToolError);
    assert!(reason.contains("co-simulation failed"), "{reason}");

    let (class, _, _) = class_of("ERROR: [HLS 200-1023] Part 'ep4ce22f17c6' is not installed.\n");
    assert_eq!(class, FailureClass::BadInput);

    let (class, reason, _) =
        class_of("****** Vitis HLS v2023.2 (64-bit)\nINFO: [HLS 200-111] Finished Comm");
    assert_eq!(class, FailureClass::ToolError);
    assert!(reason.contains("ends before the tool finished"), "{reason}");
}

#[test]
fn vitis_run_banner() {
    let d = parse("\n****** vitis-run v2024.2 (64-bit)\n  **** SW Build 5238294\n");
    assert_eq!(d.tool.as_deref(), Some("vitis-run"));
    assert_eq!(d.version.as_deref(), Some("2024.2"));
}

#[test]
fn vivado_banner_from_the_log_header() {
    let d = parse(
        "#-----\n# Vivado v2020.1 (64-bit)\n# SW Build 2902540\nINFO: [Common 17-206] Exiting Vivado at Thu...\n",
    );
    assert_eq!(d.tool.as_deref(), Some("vivado"));
    assert_eq!(d.version.as_deref(), Some("2020.1"));
    assert!(d.completed);
}
/// Vivado HLS whose simulator the OOM killer took during co-simulation: the launcher's
/// line, then the tool's own COSIM errors, and a normal exit.
#[test]
fn a_simulator_killed_in_cosim_is_oom_not_a_mismatch() {
    let log = "\
****** Vivado(TM) HLS - High-Level Synthesis from C, C++ and SystemC v2019.2 (64-bit)
INFO: [COSIM 212-47] Using XSIM for RTL simulation.
INFO: [COSIM 212-14] Instrumenting C test bench ...
INFO: [COSIM 212-302] Starting C TB testing ...
INFO: [COSIM 212-333] Generating C post check test bench ...
INFO: [COSIM 212-12] Generating RTL test bench ...
INFO: [COSIM 212-323] Starting verilog simulation.
INFO: [COSIM 212-15] Starting XSIM ...
/opt/Xilinx/Vivado/2019.2/bin/rdiArgs.sh: line 286: 30531 Killed                  \"$RDI_PROG\" \"$@\"
ERROR: [COSIM 212-303] Aborting co-simulation: RTL simulation failed.
ERROR: [COSIM 212-344] Rtl simulation failed.
INFO: [HLS 200-112] Total CPU user time: 4000 seconds. Total CPU system time: 90 seconds. Total elapsed time: 5000 seconds; peak allocated memory: 31.9 GB.
INFO: [Common 17-206] Exiting vivado_hls at Tue Nov 24 10:00:00 2026...
";
    let d = parse(log);
    assert!(!d.completed);
    let f = d.failure.unwrap();
    assert_eq!(f.class, FailureClass::Oom, "{f:?}");
    assert!(f.reason.contains("co-simulation"), "{}", f.reason);
    assert_eq!(d.peak_memory_mib, Some(32666));
    assert!(f.reason.contains("32666 MiB"), "{}", f.reason);
    assert!(launcher_killed(
        "/tools/Xilinx/2025.2/Vivado/bin/rdiArgs.sh: line 57: 3371451 Killed \"$RDI_PROG\" \"$@\""
    ));
    assert!(!launcher_killed(
        "/opt/Xilinx/Vivado/2023.2/bin/rdiArgs.sh: line 312:  4105 Aborted  \"$RDI_PROG\" \"$@\""
    ));
}

#[test]
fn inputs_and_host_set_up_are_not_tool_errors() {
    let (class, reason, fix) = class_of(
        "ERROR: [Board 49-71] The board_part definition was not found for xilinx.com:au280:part0:1.2. The project's board_part property was not set, but the project's part property was set to xcu280-fsvh2892-2L-e. Valid board_part values can be retrieved with the 'get_board_parts' Tcl command.\nINFO: [Common 17-206] Exiting Vivado at Thu Nov 26 10:00:00 2026...\n",
    );
    assert_eq!(class, FailureClass::Infrastructure);
    assert!(reason.contains("board files missing"), "{reason}");
    assert!(fix.unwrap().contains("board.repoPaths"));

    let (class, reason, _) = class_of(
        "INFO: [HLS 200-1510] Running: add_files -tb myproject_test.cpp\nWARNING: [HLS 200-40] Cannot find test bench file 'myproject_test.cpp'\nINFO: [HLS 200-1510] Running: csim_design\nERROR: [HLS 200-627] Cannot find C test bench.\nPlease specify test bench files using 'add_files -tb'.\n",
    );
    assert_eq!(class, FailureClass::BadInput);
    assert!(reason.contains("Cannot find C test bench"), "{reason}");

    let (class, _, _) = class_of(
        "ERROR: [HLS 200-40] Cannot find source file firmware/myproject.cpp; skipping it.\n",
    );
    assert_eq!(class, FailureClass::BadInput);

    // vitis-run's own errors have no colon after ERROR.
    let d = parse(
        "****** vitis-run v2024.2 (64-bit)\nERROR [AP-1] Could not read script '/scratch/t/myproject/build_prj.tcl'\n",
    );
    assert!(!d.completed);
    assert_eq!(d.errors[0].id, "AP-1");
    let f = d.failure.unwrap();
    assert_eq!(f.class, FailureClass::Infrastructure);
    assert!(f.reason.contains("build_prj.tcl"), "{}", f.reason);

    let (class, _, _) = class_of("HLS Tcl script does not exist: build_prj.tcl\n");
    assert_eq!(class, FailureClass::Infrastructure);
}

/// The core_revision bug of 2022: the export's Vivado fails on a date-based revision.
#[test]
fn the_2022_export_date_bug_names_its_patch() {
    let log = "\
****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2021.1 (64-bit)
INFO: [IMPL 213-8] Exporting RTL as a Vivado IP.
source run_ippack.tcl -notrace
bad lexical cast: source type value could not be interpreted as target
while executing
\"rdi::set_property core_revision 2210181547 {component component_1}\"
INFO: [Common 17-206] Exiting Vivado at Tue Oct 18 15:48:19 2022...
ERROR: [IMPL 213-28] Failed to generate IP.
INFO: [HLS 200-111] Finished Command export_design CPU user time: 26.12 seconds. CPU system time: 1.39 seconds. Elapsed time: 41.58 seconds; current allocated memory: 274.192 MB.
command 'ap_source' returned error code
";
    let (class, reason, fix) = class_of(log);
    assert_eq!(class, FailureClass::Infrastructure, "{reason}");
    assert!(reason.contains("core_revision"), "{reason}");
    assert!(fix.unwrap().contains("76960"));
}

/// A Vitis HLS solution log: every step finished, no exit line of its own (the nested
/// Vivado's does not count), and a second run of the tool appended after the first.
#[test]
fn a_complete_solution_log_with_a_second_run_is_complete() {
    let run = "\
INFO: [HLS 200-10] Running '/tools/Xilinx/Vitis_HLS/2022.2/bin/unwrapped/lnx64.o/vitis_hls'
INFO: [HLS 200-1510] Running: csim_design
INFO: [SIM 1] CSim done with 0 errors.
INFO: [HLS 200-111] Finished Command csim_design CPU user time: 10 seconds. CPU system time: 1 seconds. Elapsed time: 12 seconds; current allocated memory: 300.1 MB.
INFO: [HLS 200-1510] Running: csynth_design
INFO: [HLS 200-111] Finished Command csynth_design CPU user time: 49.61 seconds. CPU system time: 2.03 seconds. Elapsed time: 52.85 seconds; current allocated memory: 1.107 GB.
INFO: [HLS 200-1510] Running: cosim_design -setup
INFO: [HLS 200-111] Finished Command cosim_design CPU user time: 5 seconds. CPU system time: 1 seconds. Elapsed time: 7 seconds; current allocated memory: 1.2 GB.
INFO: [HLS 200-1510] Running: export_design -format ip_catalog
INFO: [Common 17-206] Exiting Vivado at Tue Nov 24 10:00:00 2026...
INFO: [HLS 200-802] Generated output file myproject_prj/solution1/impl/export.zip
INFO: [HLS 200-111] Finished Command export_design CPU user time: 60 seconds. CPU system time: 3 seconds. Elapsed time: 70 seconds; current allocated memory: 1.3 GB.
INFO: [HLS 200-112] Total CPU user time: 130 seconds. Total CPU system time: 8 seconds. Total elapsed time: 150 seconds; peak allocated memory: 1.4 GB.
";
    let d = parse(&format!("{run}{run}"));
    assert_eq!(d.tool.as_deref(), Some("vitis_hls"));
    assert_eq!(d.version.as_deref(), Some("2022.2"));
    assert!(d.completed, "{d:?}");
    assert_eq!(d.failure, None);
    // Cut inside the export, after the nested Vivado's exit line: not complete.
    let cut = &run[..run.find("INFO: [HLS 200-802]").unwrap()];
    let d = parse(cut);
    assert!(!d.completed);
    assert!(d.failure.unwrap().reason.contains("ends before"));
}

#[test]
fn progress_follows_the_latest_marker_and_the_peak() {
    let log = "\
INFO: [HLS 200-1510] Running: csynth_design
INFO: [HLS 200-111] Finished Checking Pragmas Time (s): cpu = 00:00:01 ; elapsed = 00:00:01 . Memory (MB): peak = 1100.2 ; gain = 512.0
INFO: [XFORM 203-501] Unrolling loop 'Product1' (firmware/nnet_utils/nnet_dense_latency.h:85) in function 'dense' completely with a factor of 16.
INFO: [HLS 200-10] Starting hardware synthesis ...
INFO: [SCHED 204-11] Starting scheduling ...
INFO: [HLS 200-111] Finished Architecture Synthesis Time (s): cpu = 00:10:01 ; elapsed = 00:10:05 . Memory (MB): peak = 3300.5 ; gain = 2000.0
";
    let p = progress(log);
    assert_eq!(p.phase, Some("scheduling"));
    assert_eq!(p.peak_memory_mib, Some(3301));
    assert_eq!(
        progress("INFO: [COSIM 212-47] Using XSIM for RTL simulation.\n").phase,
        Some("co-simulation")
    );
    assert_eq!(
        progress("Starting synth_design\n").phase,
        Some("synth_design")
    );
    assert_eq!(progress("nothing yet\n"), Progress::default());
}

#[test]
fn banners_of_every_era() {
    let d = parse(
        "================================================================\n  Vivado(TM) HLS - High-Level Synthesis from C, C++ and SystemC\n  Version 2016.4\n  Build 1756540 on Mon Jan 23 19:31:01 MST 2017\n================================================================\n",
    );
    assert_eq!(d.tool.as_deref(), Some("vivado_hls"));
    assert_eq!(d.version.as_deref(), Some("2016.4"));
    // A log whose banner went to the terminal: the program's path says it.
    let d = parse(
        "INFO: [HLS 200-10] Running '/opt/Xilinx/Vivado/2018.3/bin/unwrapped/lnx64.o/vivado_hls'\n",
    );
    assert_eq!(d.tool.as_deref(), Some("vivado_hls"));
    assert_eq!(d.version.as_deref(), Some("2018.3"));
    // Vitis 2024.2 without the `****` lines.
    let d = parse("vitis-run v2024.2 (64-bit)\nSW Build 5238294 on Nov  8 2024\n");
    assert_eq!(d.tool.as_deref(), Some("vitis-run"));
    assert_eq!(d.version.as_deref(), Some("2024.2"));
    let d = parse("Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2024.2 (64-bit)\n");
    assert_eq!(d.tool.as_deref(), Some("vitis_hls"));
}

/// Vitis HLS 2024.1 rejects the `-maximum_size` line and goes on: not a failure, but the
/// setting had no effect, and the digest says so.
#[test]
fn an_ignored_maximum_size_is_noted_not_fatal() {
    let log = "\
****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2024.1 (64-bit)
INFO: [HLS 200-1510] Running: config_array_partition -maximum_size 8192
ERROR: [HLS 200-101] 'config_array_partition': Unknown option '-maximum_size'.
INFO: [HLS 200-1510] Running: csynth_design
INFO: [HLS 200-111] Finished Command csynth_design CPU user time: 9 seconds. CPU system time: 1 seconds. Elapsed time: 10 seconds; current allocated memory: 500.0 MB.
INFO: [Common 17-206] Exiting vitis_hls at Tue Nov 24 10:00:00 2026...
";
    let d = parse(log);
    assert!(d.completed, "{d:?}");
    assert_eq!(d.failure, None);
    assert_eq!(d.notes.len(), 1);
    assert!(d.notes[0].contains("max_array_partition_size had no effect"));
}
