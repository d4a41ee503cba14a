//! HLS and Vivado logs: which tool and version ran, its errors and warnings, whether it
//! finished, and — when it did not — a failure class, a one-line reason and a fix.
//!
//! `Exiting vitis_hls` does not mean success (the tools print it after fatal errors too), and
//! some `ERROR:` lines are not fatal (`HLS 200-642` on Vitis 2023.2+). A run completed when
//! the exit line is there and no fatal error is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::failure::{Failure, FailureClass};

/// An `ERROR:` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogError {
    /// The message id (`HLS 200-70`), or empty for lines without one (`ERROR: Test failed`).
    pub id: String,
    /// The message after the id.
    pub text: String,
}

/// What a log says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogDigest {
    /// `vitis-run`, `vitis_hls`, `vivado_hls` or `vivado`, from the banner.
    pub tool: Option<String>,
    /// The version, from the banner.
    pub version: Option<String>,
    /// True when the tool reached its exit line with no fatal error.
    pub completed: bool,
    /// Every `ERROR:` line, fatal or not.
    pub errors: Vec<LogError>,
    /// `WARNING:` lines counted by id.
    pub warning_counts: BTreeMap<String, u64>,
    /// Why the run failed, when it did.
    pub failure: Option<Failure>,
}

/// Error ids the tools print without failing.
const NOT_FATAL: &[&str] = &[
    // Vitis HLS 2023.2+: deprecated or ignored options, reported as errors.
    "HLS 200-642",
];

/// Splits `ERROR: [HLS 200-70] text` into (`HLS 200-70`, `text`).
fn split_message(rest: &str) -> (String, String) {
    let rest = rest.trim();
    if let Some(inner) = rest.strip_prefix('[')
        && let Some((id, text)) = inner.split_once(']')
    {
        return (id.trim().to_owned(), text.trim().to_owned());
    }
    (String::new(), rest.to_owned())
}

fn banner(line: &str) -> Option<(&'static str, String)> {
    let version = banner_version(line)?;
    let tool = if line.contains("Vitis HLS") {
        "vitis_hls"
    } else if line.contains("Vivado(TM) HLS") || line.contains("Vivado HLS") {
        "vivado_hls"
    } else if line.contains("vitis-run") {
        "vitis-run"
    } else if line.contains("Vivado v") {
        "vivado"
    } else {
        return None;
    };
    Some((tool, version))
}

/// The `2023.2` of `... v2023.2 (64-bit)`: the first ` v` followed by a dotted version.
fn banner_version(line: &str) -> Option<String> {
    line.match_indices(" v").find_map(|(at, _)| {
        let version: String = line[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        (version.len() >= 6 && version.contains('.')).then_some(version)
    })
}

/// Parses a tool log.
pub fn parse(text: &str) -> LogDigest {
    let mut digest = LogDigest::default();
    let mut exited = false;
    let mut killed = false;
    let mut bad_alloc = false;
    let mut missing_script: Option<String> = None;
    let mut test_failed = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if digest.tool.is_none()
            && (trimmed.starts_with("******") || trimmed.starts_with("# Vivado v"))
            && let Some((tool, version)) = banner(trimmed)
        {
            digest.tool = Some(tool.to_owned());
            digest.version = Some(version);
        }
        if let Some(rest) = trimmed.strip_prefix("ERROR:") {
            let (id, text) = split_message(rest);
            if id.is_empty() && text.starts_with("Test failed") {
                test_failed = true;
            }
            digest.errors.push(LogError { id, text });
        } else if let Some(rest) = trimmed.strip_prefix("WARNING:") {
            let (id, _) = split_message(rest);
            *digest.warning_counts.entry(id).or_default() += 1;
        } else if trimmed.contains("[Common 17-206] Exiting") {
            exited = true;
        } else if trimmed == "Killed" || trimmed.ends_with(" Killed") {
            killed = true;
        } else if trimmed.contains("std::bad_alloc") || trimmed.contains("Out of memory") {
            bad_alloc = true;
        } else if trimmed.starts_with("couldn't read file") {
            missing_script = Some(trimmed.to_owned());
        }
    }
    let fatal: Vec<&LogError> = digest
        .errors
        .iter()
        .filter(|e| !NOT_FATAL.contains(&e.id.as_str()))
        .collect();
    digest.completed = exited && fatal.is_empty() && !killed && missing_script.is_none();
    digest.failure = classify(
        &fatal,
        killed || bad_alloc,
        missing_script,
        test_failed,
        exited,
    );
    digest
}

fn failure(class: FailureClass, reason: impl Into<String>, suggestion: Option<String>) -> Failure {
    Failure {
        class,
        reason: reason.into(),
        suggestion,
    }
}

/// The number in `(... N)` after `needle`, e.g. the element count of a partition error.
fn number_after(text: &str, needle: &str) -> Option<u64> {
    let rest = &text[text.find(needle)? + needle.len()..];
    let digits: String = rest
        .trim_start_matches([' ', '('])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn classify(
    fatal: &[&LogError],
    out_of_memory: bool,
    missing_script: Option<String>,
    test_failed: bool,
    exited: bool,
) -> Option<Failure> {
    let with_id = |id: &str| fatal.iter().find(|e| e.id == id);
    if let Some(e) = with_id("Common 17-345") {
        return Some(failure(
            FailureClass::Licence,
            format!("no licence: {}", first_sentence(&e.text)),
            Some("check XILINXD_LICENSE_FILE (or LM_LICENSE_FILE) and the licence server; lower the seat limit if seats run out".into()),
        ));
    }
    if out_of_memory {
        return Some(failure(
            FailureClass::Oom,
            "the tool ran out of memory (killed, or std::bad_alloc)",
            Some("give trials more memory: fewer slots on this host, or a larger memory estimate for this model".into()),
        ));
    }
    if let Some(script) = missing_script {
        return Some(failure(
            FailureClass::ToolError,
            script,
            Some("the project folder has no build script: run the convert stage first".into()),
        ));
    }
    if let Some(e) = with_id("HLS 200-1023") {
        return Some(failure(
            FailureClass::BadInput,
            e.text.clone(),
            Some(
                "choose a part this tool installation supports, or install its device files".into(),
            ),
        ));
    }
    if let Some(e) = with_id("XFORM 203-504") {
        return Some(failure(
            FailureClass::ToolError,
            format!("unroll limit: {}", first_sentence(&e.text)),
            Some(
                "raise reuse_factor or use strategy `resource` so the loop is not fully unrolled"
                    .into(),
            ),
        ));
    }
    if let Some(e) = fatal
        .iter()
        .find(|e| e.id == "XFORM 203-103" && e.text.contains("threshold"))
    {
        let elements = number_after(&e.text, "partitioned elements number");
        let threshold = number_after(&e.text, "threshold");
        let suggestion = match (elements, threshold) {
            (Some(n), Some(t)) => format!(
                "an array of {n} elements is above max_array_partition_size ({t}): raise it to at least {n}, or raise reuse_factor / use strategy `resource`"
            ),
            _ => "raise max_array_partition_size (hls4ml's MaximumSize), or raise reuse_factor"
                .into(),
        };
        return Some(failure(
            FailureClass::ToolError,
            format!(
                "array partition above the limit: {}",
                first_sentence(&e.text)
            ),
            Some(suggestion),
        ));
    }
    if let Some(e) = with_id("HLS 200-70") {
        return Some(failure(
            FailureClass::ToolError,
            format!("C++ compilation failed: {}", first_sentence(&e.text)),
            Some("the generated project does not compile: check for layers this hls4ml version does not support, and the log's first compiler error".into()),
        ));
    }
    if test_failed || fatal.iter().any(|e| e.id.starts_with("COSIM")) {
        return Some(failure(
            FailureClass::ToolError,
            "co-simulation failed: the RTL does not match the C model (Test failed)",
            Some("compare tb_data/csim_results.log with tb_data/rtl_cosim_results.log; a design with dataflow FIFOs too small can deadlock (try fifo_opt)".into()),
        ));
    }
    if let Some(e) = fatal.first() {
        let id = if e.id.is_empty() {
            String::new()
        } else {
            format!("[{}] ", e.id)
        };
        return Some(failure(
            FailureClass::ToolError,
            format!("{id}{}", first_sentence(&e.text)),
            None,
        ));
    }
    if !exited {
        return Some(failure(
            FailureClass::ToolError,
            "the log ends before the tool finished (the tool was killed, crashed, or the log was cut short)",
            Some("look at the end of the log and at the process's exit status".into()),
        ));
    }
    None
}

/// The text up to its first `. ` (messages run on over several sentences).
fn first_sentence(text: &str) -> String {
    let cut = text.find(". ").map_or(text.len(), |i| i + 1);
    text[..cut].trim().to_owned()
}

#[cfg(test)]
mod tests {
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
        assert_eq!(class, FailureClass::ToolError);
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

        let (class, reason, _) = class_of(
            "INFO: Test PASSED?\nERROR: Test failed\nERROR: - csim log:      ./tb_data/csim_results.log\n",
        );
        assert_eq!(class, FailureClass::ToolError);
        assert!(reason.contains("co-simulation failed"), "{reason}");

        let (class, _, _) =
            class_of("ERROR: [HLS 200-1023] Part 'ep4ce22f17c6' is not installed.\n");
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
}
