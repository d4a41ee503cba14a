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
    /// The tool's own peak memory, where it prints one (`[HLS 200-112] ... peak allocated
    /// memory: 1.1 GB`, `Memory (MB): peak = 1100.2`), MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<u64>,
    /// Things the log says that change what the figures mean, e.g. an option this tool
    /// version ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Settings that get past the failure where the log says enough: the
    /// `max_array_partition_size` a refused partition needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<BTreeMap<String, serde_json::Value>>,
}

/// Error ids the tools print without failing.
const NOT_FATAL: &[&str] = &[
    // Vitis HLS 2023.2+: deprecated or ignored options, reported as errors.
    "HLS 200-642",
];

/// An error the tool survives: listed ids, and `HLS 200-101` "Unknown option" for the
/// `config_array_partition -maximum_size` line hls4ml's build script writes, which Vitis HLS
/// 2024.1 rejects and goes on without.
fn not_fatal(e: &LogError) -> bool {
    NOT_FATAL.contains(&e.id.as_str()) || ignored_maximum_size(e)
}

/// Vitis HLS 2024.1's refusal of `config_array_partition -maximum_size`: the run goes on,
/// and max_array_partition_size has no effect.
fn ignored_maximum_size(e: &LogError) -> bool {
    e.id == "HLS 200-101" && e.text.contains("Unknown option") && e.text.contains("maximum_size")
}

/// `rdiArgs.sh: line 312: 4105 Killed   "$RDI_PROG" "$@"`: AMD's launcher reporting that the
/// program it started (a simulator, Vivado) was killed, usually by the OOM killer; the
/// calling tool often survives it and goes on to print its own errors.
fn launcher_killed(line: &str) -> bool {
    let Some((_, rest)) = line.split_once(": line ") else {
        return false;
    };
    let mut words = rest.split_whitespace();
    let _line_number = words.next();
    let pid = words.next().unwrap_or_default();
    !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()) && words.next() == Some("Killed")
}

/// The version in a path such as `/tools/Xilinx/Vivado/2018.3/bin/unwrapped/lnx64.o/vivado_hls`.
fn version_in_path(path: &str) -> Option<String> {
    path.split('/').find_map(|part| {
        let ok = part.len() >= 6
            && part.len() <= 7
            && part.contains('.')
            && part.chars().all(|c| c.is_ascii_digit() || c == '.')
            && part.starts_with("20");
        ok.then(|| part.to_owned())
    })
}

/// `peak allocated memory: 1.1 GB` / `Memory (MB): peak = 1100.2` in MiB.
fn peak_memory(line: &str) -> Option<u64> {
    if let Some(at) = line.find("peak allocated memory:") {
        let rest = line[at + "peak allocated memory:".len()..].trim();
        let mut words = rest.split_whitespace();
        let value: f64 = words.next()?.parse().ok()?;
        let unit = words.next().unwrap_or("MB").trim_end_matches('.');
        let mib = match unit {
            "GB" => value * 1024.0,
            "KB" => value / 1024.0,
            _ => value,
        };
        return Some(mib.round() as u64);
    }
    if let Some(at) = line.find("Memory (MB): peak =") {
        let rest = line[at + "Memory (MB): peak =".len()..].trim();
        let value: f64 = rest
            .split(|c: char| c == ';' || c.is_whitespace())
            .next()?
            .parse()
            .ok()?;
        return Some(value.round() as u64);
    }
    None
}

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

/// The tool a banner line names, if any.
fn banner_tool(line: &str) -> Option<&'static str> {
    if line.contains("Vitis HLS") || line.contains("Vitis(TM) HLS") {
        Some("vitis_hls")
    } else if line.contains("Vivado(TM) HLS") || line.contains("Vivado HLS") {
        Some("vivado_hls")
    } else if line.contains("vitis-run") {
        Some("vitis-run")
    } else if line.contains("Vivado v") {
        Some("vivado")
    } else {
        None
    }
}

fn banner(line: &str) -> Option<(&'static str, String)> {
    let version = banner_version(line)?;
    Some((banner_tool(line)?, version))
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

/// What one run of the tool (a log may hold several, appended) left.
#[derive(Default)]
struct Run {
    /// Index into the digest's errors where this run's start.
    first_error: usize,
    exited: bool,
    killed: bool,
    bad_alloc: bool,
    missing_script: Option<String>,
    test_failed: bool,
    /// `rdi::set_property core_revision ...` failed (the 2022 date bug).
    core_revision: bool,
}

/// Parses a tool log.
pub fn parse(text: &str) -> LogDigest {
    let mut digest = LogDigest::default();
    let mut run = Run::default();
    // A banner that names its tool on one line and its version on another (`Version 2016.4`).
    let mut tool_pending: Option<&'static str> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        let header = trimmed.trim_start_matches(['*', '=', '#', ' ']);
        if digest.tool.is_none() {
            if let Some((tool, version)) = banner(header) {
                digest.tool = Some(tool.to_owned());
                digest.version = Some(version);
            } else if let Some(tool) = banner_tool(header) {
                tool_pending = Some(tool);
            } else if let (Some(tool), Some(version)) =
                (tool_pending, header.strip_prefix("Version "))
            {
                digest.tool = Some(tool.to_owned());
                digest.version = Some(version.trim().to_owned());
            }
        }
        if let Some(rest) = trimmed.strip_prefix("INFO: [HLS 200-10] Running '") {
            // Each run of an HLS tool starts with the program it runs: a new run begins.
            let path = rest.trim_end_matches(['\'', '.']);
            if digest.tool.is_none() || digest.version.is_none() {
                let name = path.rsplit('/').next().unwrap_or_default();
                if ["vitis_hls", "vivado_hls", "vitis-run"].contains(&name) {
                    digest.tool.get_or_insert_with(|| name.to_owned());
                }
                if digest.version.is_none() {
                    digest.version = version_in_path(path);
                }
            }
            run = Run {
                first_error: digest.errors.len(),
                ..Run::default()
            };
        }
        if trimmed.contains("set_property core_revision") {
            run.core_revision = true;
        }
        if let Some(mib) = peak_memory(trimmed) {
            digest.peak_memory_mib = Some(digest.peak_memory_mib.map_or(mib, |m| m.max(mib)));
        }
        // `ERROR: [id] text`, and the vitis-run form without a colon, `ERROR [AP-1] text`.
        let error = trimmed.strip_prefix("ERROR:").or_else(|| {
            trimmed
                .strip_prefix("ERROR ")
                .filter(|r| r.starts_with('['))
        });
        if let Some(rest) = error {
            let (id, text) = split_message(rest);
            if id.is_empty() && text.starts_with("Test failed") {
                run.test_failed = true;
            }
            let error = LogError { id, text };
            if ignored_maximum_size(&error) {
                let note = "max_array_partition_size had no effect: this tool has no `config_array_partition -maximum_size` (HLS 200-101 Unknown option)".to_owned();
                if !digest.notes.contains(&note) {
                    digest.notes.push(note);
                }
            }
            if error.text.contains("Could not read script")
                || error.text.contains("does not exist") && error.text.contains("script")
            {
                run.missing_script = Some(error.text.clone());
            }
            digest.errors.push(error);
        } else if let Some(rest) = trimmed.strip_prefix("WARNING:") {
            let (id, _) = split_message(rest);
            *digest.warning_counts.entry(id).or_default() += 1;
        } else if let Some(at) = trimmed.find("[Common 17-206] Exiting ") {
            // An HLS tool's export runs Vivado inside it, which prints its own exit line: only
            // the log's own tool exiting ends the run.
            let who = trimmed[at + "[Common 17-206] Exiting ".len()..]
                .split_whitespace()
                .next()
                .unwrap_or_default();
            let own = match digest.tool.as_deref() {
                Some("vivado") => who.eq_ignore_ascii_case("vivado"),
                Some(_) => !who.eq_ignore_ascii_case("vivado"),
                None => true,
            };
            if own {
                run.exited = true;
            }
        } else if trimmed.contains("[HLS 200-112] Total CPU user time") {
            // Printed as an HLS tool ends, also in solution logs that have no exit line.
            run.exited = true;
        } else if trimmed == "Killed" || trimmed.ends_with(" Killed") || launcher_killed(trimmed) {
            run.killed = true;
        } else if trimmed.contains("std::bad_alloc") || trimmed.contains("Out of memory") {
            run.bad_alloc = true;
        } else if trimmed.starts_with("couldn't read file")
            || trimmed.contains("HLS Tcl script does not exist")
        {
            run.missing_script = Some(trimmed.to_owned());
        }
    }
    let fatal: Vec<&LogError> = digest.errors[run.first_error..]
        .iter()
        .filter(|e| !not_fatal(e))
        .collect();
    digest.completed =
        run.exited && fatal.is_empty() && !run.killed && run.missing_script.is_none();
    digest.failure = classify(
        &fatal,
        run.killed || run.bad_alloc,
        run.missing_script,
        run.test_failed,
        run.exited,
        run.core_revision,
    );
    digest.fix = fatal
        .iter()
        .find(|e| e.id == "XFORM 203-103" && e.text.contains("threshold"))
        .and_then(|e| number_after(&e.text, "partitioned elements number"))
        .map(|n| BTreeMap::from([("max_array_partition_size".to_owned(), n.into())]));
    if let Some(f) = &mut digest.failure
        && f.class == FailureClass::Oom
        && let Some(peak) = digest.peak_memory_mib
    {
        f.reason
            .push_str(&format!(" (the tool's own peak before it: {peak} MiB)"));
    }
    digest
}

/// Where a running tool is, from its log so far: the phase of the latest marker the tools
/// print (C simulation, pre-synthesis, unrolling, scheduling, RTL generation, co-simulation,
/// IP export, Vivado's synth_design) and the tool's own peak memory where it printed one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The phase, when a marker was seen.
    pub phase: Option<&'static str>,
    /// The tool's own peak memory (MiB), where it printed one.
    pub peak_memory_mib: Option<u64>,
}

/// Reads the phase and the tool's peak memory from a log (or its tail).
pub fn progress(text: &str) -> Progress {
    const MARKERS: &[(&str, &str)] = &[
        ("C SIMULATION", "C simulation"),
        ("Running: csim_design", "C simulation"),
        ("Running: csynth_design", "pre-synthesis"),
        ("C/RTL SYNTHESIS", "pre-synthesis"),
        ("Starting code transformations", "pre-synthesis"),
        ("Unrolling loop", "unrolling"),
        ("unrolling", "unrolling"),
        ("Starting hardware synthesis", "scheduling"),
        ("[SCHED 204-", "scheduling"),
        ("Implementing module", "scheduling"),
        ("[BIND 205-", "binding"),
        ("-- Generating RTL", "RTL generation"),
        ("[RTGEN 206-", "RTL generation"),
        ("Finished Command csynth_design", "C synthesis done"),
        ("C/RTL SIMULATION", "co-simulation"),
        ("[COSIM 212-", "co-simulation"),
        ("EXPORT IP", "IP export"),
        ("Running: export_design", "IP export"),
        ("[IMPL 213-8]", "IP export"),
        ("Starting synth_design", "synth_design"),
        ("synth_design -", "synth_design"),
        ("Finished Writing Synthesis Report", "synth_design done"),
    ];
    let mut out = Progress::default();
    for line in text.lines() {
        if let Some((_, phase)) = MARKERS.iter().rev().find(|(m, _)| line.contains(m)) {
            out.phase = Some(phase);
        }
        if let Some(mib) = peak_memory(line) {
            out.peak_memory_mib = Some(out.peak_memory_mib.map_or(mib, |m| m.max(mib)));
        }
    }
    out
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
    core_revision: bool,
) -> Option<Failure> {
    let with_id = |id: &str| fatal.iter().find(|e| e.id == id);
    if let Some(e) = with_id("Common 17-345") {
        return Some(failure(
            FailureClass::Licence,
            format!("no licence: {}", first_sentence(&e.text)),
            Some("check XILINXD_LICENSE_FILE (or LM_LICENSE_FILE) and the licence server; lower the seat limit if seats run out".into()),
        ));
    }
    let in_cosim = test_failed || fatal.iter().any(|e| e.id.starts_with("COSIM"));
    if out_of_memory {
        return Some(failure(
            FailureClass::Oom,
            if in_cosim {
                "the RTL simulator was killed during co-simulation (out of memory: the OOM killer), and co-simulation failed after it"
            } else {
                "the tool ran out of memory (killed, or std::bad_alloc)"
            },
            Some("give trials more memory: fewer slots on this host, or a larger memory estimate for this model".into()),
        ));
    }
    if let Some(script) = missing_script {
        return Some(failure(
            FailureClass::Infrastructure,
            format!("the build script is missing: {script}"),
            Some("the hls4ml project folder has no build_prj.tcl where the tool ran: the convert stage must write it first (a scratch folder cleaned or moved under the run?)".into()),
        ));
    }
    if let Some(e) = with_id("Board 49-71") {
        return Some(failure(
            FailureClass::Infrastructure,
            format!("board files missing on this host: {}", first_sentence(&e.text)),
            Some("install the board's files in this Vivado (Vivado Store, or set board.repoPaths), or use a part instead of a board".into()),
        ));
    }
    if let Some(e) = fatal
        .iter()
        .find(|e| (e.id == "HLS 200-40" || e.id == "HLS 200-627") && e.text.contains("Cannot find"))
    {
        return Some(failure(
            FailureClass::BadInput,
            format!("the project lacks a file: {}", first_sentence(&e.text)),
            Some("write the hls4ml project again (the convert stage), or fix the add_files paths in the project's Tcl".into()),
        ));
    }
    if let Some(e) = with_id("IMPL 213-28").filter(|_| core_revision) {
        return Some(failure(
            FailureClass::Infrastructure,
            format!("IP export failed on the 2022 date bug of Vivado/Vitis HLS up to 2021.2 (core_revision): {}", first_sentence(&e.text)),
            Some("apply AMD's y2k22 patch (Answer Record 76960) to this installation, or run export on a host that has it".into()),
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
    if in_cosim {
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
mod tests;
