//! Parsers for what the AMD tools write, from Vivado HLS 2018.3 to Vitis 2025.2.
//!
//! - [`csynth_xml`]: `<top>_csynth.xml` (tags in any order, `DSP48E` or `DSP`, ranges).
//! - [`csynth_rpt`]: `<top>_csynth.rpt` (Vivado HLS and Vitis HLS layouts, SLR rows).
//! - [`utilization`]: `vivado_synth.rpt` from `report_utilization` (7-series and UltraScale+).
//! - [`cosim`]: `<top>_cosim.rpt` (old and new layouts, `NA` cells).
//! - [`log`]: HLS and Vivado logs: tool, version, errors, warnings, completion, failure class.
//! - [`project`]: an hls4ml project folder: finds each report and parses it.
//!
//! Every parser takes text and never panics, whatever the bytes; a report that lacks a value
//! gives `None` for it, and only text that is not the report at all is an error.

pub mod cosim;
pub mod csynth_rpt;
pub mod csynth_xml;
pub mod log;
pub mod project;
mod table;
pub mod utilization;

use serde::{Deserialize, Serialize};

/// Resources as C synthesis counts them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HlsResources {
    /// 18 Kb block RAMs.
    pub bram_18k: Option<f64>,
    /// DSP slices (`DSP48E` in Vivado HLS, `DSP` in Vitis HLS).
    pub dsp: Option<f64>,
    /// Flip-flops.
    pub ff: Option<f64>,
    /// Look-up tables.
    pub lut: Option<f64>,
    /// UltraRAMs (absent in old reports and on parts without them).
    pub uram: Option<f64>,
}

/// The summary of a C synthesis report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CsynthReport {
    /// `vivado_hls` (≤ 2019.2) or `vitis_hls` (≥ 2020.1).
    pub tool: Option<String>,
    /// The tool version (`2023.2`).
    pub version: Option<String>,
    /// The part.
    pub part: Option<String>,
    /// The top function.
    pub top: Option<String>,
    /// Target clock period, ns.
    pub target_clock_ns: Option<f64>,
    /// Estimated clock period, ns.
    pub estimated_clock_ns: Option<f64>,
    /// Clock uncertainty, ns.
    pub clock_uncertainty_ns: Option<f64>,
    /// Best-case latency, cycles.
    pub latency_best_cycles: Option<u64>,
    /// Worst-case latency, cycles.
    pub latency_worst_cycles: Option<u64>,
    /// Smallest initiation interval, cycles.
    pub interval_min_cycles: Option<u64>,
    /// Largest initiation interval, cycles.
    pub interval_max_cycles: Option<u64>,
    /// What the design uses.
    pub used: HlsResources,
    /// What the part offers.
    pub available: HlsResources,
}

/// Resources as Vivado's `report_utilization` counts them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VivadoResources {
    /// Slice or CLB LUTs.
    pub lut: Option<f64>,
    /// Slice or CLB registers.
    pub ff: Option<f64>,
    /// Block RAM tiles (36 Kb; halves for 18 Kb).
    pub bram_tiles: Option<f64>,
    /// DSP slices.
    pub dsp: Option<f64>,
    /// UltraRAMs; absent on parts without them.
    pub uram: Option<f64>,
}

/// The summary of a Vivado synthesis utilization report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VivadoSynthReport {
    /// Vivado's version (`2023.2`).
    pub version: Option<String>,
    /// The device, as the report names it (`7z020clg400-1`).
    pub device: Option<String>,
    /// What the design uses.
    pub used: VivadoResources,
    /// What the device offers.
    pub available: VivadoResources,
    /// Used as a percentage of available.
    pub util_percent: VivadoResources,
}

/// The outcome of C/RTL co-simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CosimStatus {
    /// The RTL matched the C model.
    Pass,
    /// It did not.
    Fail,
    /// Not run for this language.
    Na,
}

/// The summary of a co-simulation report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CosimReport {
    /// Pass, fail or not run.
    pub status: CosimStatus,
    /// The RTL language simulated (`Verilog`, `VHDL`).
    pub rtl: Option<String>,
    /// Smallest latency seen, cycles.
    pub latency_min_cycles: Option<u64>,
    /// Average latency, cycles.
    pub latency_avg_cycles: Option<f64>,
    /// Largest latency, cycles.
    pub latency_max_cycles: Option<u64>,
    /// Smallest interval, cycles.
    pub interval_min_cycles: Option<u64>,
    /// Average interval, cycles.
    pub interval_avg_cycles: Option<f64>,
    /// Largest interval, cycles.
    pub interval_max_cycles: Option<u64>,
}

/// Parses a report number: `1,234`, `~0` (0), `-` (0 in utilization tables), `12.5 ns`.
/// Returns `None` for `NA`, `?`, `undef` and empty cells.
pub(crate) fn parse_number(cell: &str) -> Option<f64> {
    let cell = cell.trim().trim_start_matches('~').replace(',', "");
    if cell == "-" {
        return Some(0.0);
    }
    let number: String = cell
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-' || *c == 'e' || *c == '+')
        .collect();
    number.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Parses a cycle count; a range `a ~ b` gives `a` (`low`) or `b` (not `low`).
pub(crate) fn parse_cycles(cell: &str, low: bool) -> Option<u64> {
    let cell = cell.trim();
    let part = match cell.split_once('~') {
        Some((a, b)) if !a.trim().is_empty() => {
            if low {
                a
            } else {
                b
            }
        }
        _ => cell,
    };
    let value = parse_number(part)?;
    (value >= 0.0 && value.fract() == 0.0 && value < 1e18).then_some(value as u64)
}

/// The tool that wrote a C synthesis report of this version: AMD renamed Vivado HLS to
/// Vitis HLS at 2020.1.
pub(crate) fn hls_tool_for_version(version: &str) -> Option<String> {
    let year: u32 = version.split('.').next()?.trim().parse().ok()?;
    Some(
        if year <= 2019 {
            "vivado_hls"
        } else {
            "vitis_hls"
        }
        .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_cycles_parse_like_the_reports_write_them() {
        assert_eq!(parse_number(" 12.5 ns"), Some(12.5));
        assert_eq!(parse_number("~0"), Some(0.0));
        assert_eq!(parse_number("-"), Some(0.0));
        assert_eq!(parse_number("1,234"), Some(1234.0));
        assert_eq!(parse_number("NA"), None);
        assert_eq!(parse_number("?"), None);
        assert_eq!(parse_cycles("2 ~ 9", true), Some(2));
        assert_eq!(parse_cycles("2 ~ 9", false), Some(9));
        assert_eq!(parse_cycles("undef", true), None);
        assert_eq!(
            hls_tool_for_version("2019.2").as_deref(),
            Some("vivado_hls")
        );
        assert_eq!(hls_tool_for_version("2020.1").as_deref(), Some("vitis_hls"));
    }
}

#[cfg(test)]
mod fuzz;
