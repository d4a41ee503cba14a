//! `<top>_csynth.rpt`, the text C synthesis report.
//!
//! Vivado HLS (`== Vivado HLS Report for 'top'`, `DSP48E`, no URAM before 2018) and Vitis HLS
//! (`== Vitis HLS Report for 'top'`, `DSP`, URAM) layouts; latency tables with and without the
//! absolute-time columns (before and after 2019.1); SLR rows (`Available SLR`) on multi-die
//! parts; `-` and `~0` cells. Only the first summary table of each section is read.

use super::table::{is_border, row_cells};
use super::{CsynthReport, HlsResources, hls_tool_for_version, parse_cycles, parse_number};

/// Why a file is not a csynth text report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no `== Vivado HLS Report` / `== Vitis HLS Report` header: not a csynth report")]
pub struct NotCsynth;

/// The rows of the first table at or after line `start`: (header rows, data rows). Header rows
/// are those before the second border.
fn first_table(lines: &[&str], start: usize) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut borders = 0;
    let mut header = Vec::new();
    let mut data = Vec::new();
    let mut in_table = false;
    for line in lines.iter().skip(start) {
        if is_border(line) {
            in_table = true;
            borders += 1;
            continue;
        }
        match row_cells(line) {
            Some(cells) if in_table => {
                if borders < 2 {
                    header.push(cells);
                } else {
                    data.push(cells);
                }
            }
            Some(_) => {}
            None if in_table => break,
            None => {}
        }
    }
    (header, data)
}

fn find_line(lines: &[&str], from: usize, needle: &str) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| l.contains(needle))
        .map(|(i, _)| i)
}

/// Parses the text of a `<top>_csynth.rpt`.
pub fn parse(text: &str) -> Result<CsynthReport, NotCsynth> {
    let lines: Vec<&str> = text.lines().collect();
    let mut report = CsynthReport::default();
    let header = lines
        .iter()
        .find(|l| l.contains("HLS Report for '"))
        .ok_or(NotCsynth)?;
    if header.contains("Vivado HLS") {
        report.tool = Some("vivado_hls".into());
    } else if header.contains("Vitis HLS") {
        report.tool = Some("vitis_hls".into());
    }
    report.top = header.split('\'').nth(1).map(str::to_owned);
    for line in &lines {
        let line = line.trim().trim_start_matches('*').trim();
        if let Some(rest) = line.strip_prefix("Version:") {
            report.version = rest.split_whitespace().next().map(str::to_owned);
        } else if let Some(rest) = line.strip_prefix("Target device:") {
            report.part = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    if report.tool.is_none() {
        report.tool = report.version.as_deref().and_then(hls_tool_for_version);
    }

    if let Some(timing) = find_line(&lines, 0, "+ Timing") {
        let (_, rows) = first_table(&lines, timing);
        if let Some(row) = rows.first().filter(|r| r.len() >= 4) {
            report.target_clock_ns = parse_number(&row[1]);
            report.estimated_clock_ns = parse_number(&row[2]);
            report.clock_uncertainty_ns = parse_number(&row[3]);
        }
    }

    if let Some(latency) = find_line(&lines, 0, "+ Latency") {
        let (header, rows) = first_table(&lines, latency);
        let absolute = header.iter().flatten().any(|c| c.contains("absolute"));
        if let Some(row) = rows.first() {
            let (i_min, i_max) = if absolute { (4, 5) } else { (2, 3) };
            let cell = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
            report.latency_best_cycles = parse_cycles(cell(0), true);
            report.latency_worst_cycles = parse_cycles(cell(1), false);
            report.interval_min_cycles = parse_cycles(cell(i_min), true);
            report.interval_max_cycles = parse_cycles(cell(i_max), false);
        }
    }

    if let Some(util) = find_line(&lines, 0, "== Utilization Estimates") {
        let summary = find_line(&lines, util, "* Summary").unwrap_or(util);
        let (header, rows) = first_table(&lines, summary);
        if let Some(names) = header.first() {
            let column = |wanted: &[&str]| names.iter().position(|n| wanted.contains(&n.as_str()));
            let columns = [
                column(&["BRAM_18K"]),
                column(&["DSP48E", "DSP", "DSP48"]),
                column(&["FF"]),
                column(&["LUT"]),
                column(&["URAM"]),
            ];
            let resources = |label: &str| {
                let row = rows.iter().find(|r| r.first().is_some_and(|c| c == label));
                let value = |col: Option<usize>| {
                    row.and_then(|r| r.get(col?)).and_then(|c| parse_number(c))
                };
                HlsResources {
                    bram_18k: value(columns[0]),
                    dsp: value(columns[1]),
                    ff: value(columns[2]),
                    lut: value(columns[3]),
                    uram: value(columns[4]),
                }
            };
            report.used = resources("Total");
            report.available = resources("Available");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Vivado HLS 2018.3: no absolute-latency columns, no URAM column.
    const VIVADO_HLS_2018: &str = "\
================================================================
== Vivado HLS Report for 'myproject'
================================================================
* Date:           Tue Mar 12 10:01:02 2019

* Version:        2018.3 (Build 2405991 on Thu Dec 06 23:56:15 MST 2018)
* Project:        myproject_prj
* Solution:       solution1
* Product family: virtexuplus
* Target device:  xcvu9p-flgb2104-2-e


================================================================
== Performance Estimates
================================================================
+ Timing (ns): 
    * Summary: 
    +--------+-------+----------+------------+
    |  Clock | Target| Estimated| Uncertainty|
    +--------+-------+----------+------------+
    |ap_clk  |   5.00|     4.166|        0.62|
    +--------+-------+----------+------------+

+ Latency (clock cycles): 
    * Summary: 
    +-----+-----+-----+-----+----------+
    |  Latency  |  Interval | Pipeline |
    | min | max | min | max |   Type   |
    +-----+-----+-----+-----+----------+
    |    9|    9|    1|    1| function |
    +-----+-----+-----+-----+----------+

================================================================
== Utilization Estimates
================================================================
* Summary: 
+-----------------+---------+-------+--------+--------+
|       Name      | BRAM_18K| DSP48E|   FF   |   LUT  |
+-----------------+---------+-------+--------+--------+
|DSP              |        -|      -|       -|       -|
|Expression       |        -|      -|       0|      ~0|
|Instance         |        -|   4062|   11230|   46588|
+-----------------+---------+-------+--------+--------+
|Total            |        0|   4062|   11233|   46588|
+-----------------+---------+-------+--------+--------+
|Available SLR    |     1440|   2280|  788160|  394080|
+-----------------+---------+-------+--------+--------+
|Utilization SLR (%)|      0|    178|       1|      11|
+-----------------+---------+-------+--------+--------+
|Available        |     4320|   6840| 2364480| 1182240|
+-----------------+---------+-------+--------+--------+
|Utilization (%)  |        0|     59|      ~0|       3|
+-----------------+---------+-------+--------+--------+

+ Detail: 
    * Instance: 
    +-----------------+---------+-------+--------+--------+
    |     Instance    | BRAM_18K| DSP48E|   FF   |   LUT  |
    +-----------------+---------+-------+--------+--------+
    |Total            |       99|     99|      99|      99|
    +-----------------+---------+-------+--------+--------+
";

    #[test]
    fn vivado_hls_2018_layout_with_slr_rows() {
        let r = parse(VIVADO_HLS_2018).unwrap();
        assert_eq!(r.tool.as_deref(), Some("vivado_hls"));
        assert_eq!(r.version.as_deref(), Some("2018.3"));
        assert_eq!(r.top.as_deref(), Some("myproject"));
        assert_eq!(r.part.as_deref(), Some("xcvu9p-flgb2104-2-e"));
        assert_eq!(r.target_clock_ns, Some(5.0));
        assert_eq!(r.estimated_clock_ns, Some(4.166));
        assert_eq!(r.clock_uncertainty_ns, Some(0.62));
        assert_eq!(
            (r.latency_best_cycles, r.latency_worst_cycles),
            (Some(9), Some(9))
        );
        assert_eq!(
            (r.interval_min_cycles, r.interval_max_cycles),
            (Some(1), Some(1))
        );
        assert_eq!(r.used.dsp, Some(4062.0));
        assert_eq!(
            r.used.lut,
            Some(46588.0),
            "the first table's Total, not the detail's"
        );
        assert_eq!(r.used.bram_18k, Some(0.0));
        assert_eq!(r.used.uram, None);
        assert_eq!(
            r.available.dsp,
            Some(6840.0),
            "`Available`, not `Available SLR`"
        );
    }

    #[test]
    fn vitis_layout_with_absolute_latency_and_uram() {
        let text = "\
== Vitis HLS Report for 'myproject'
* Version:        2022.2 (Build 3670227 on Oct 13 2022)
* Target device:  xcu250-figd2104-2L-e
+ Timing: 
    * Summary: 
    +--------+---------+----------+------------+
    |  Clock |  Target | Estimated| Uncertainty|
    +--------+---------+----------+------------+
    |ap_clk  |  4.00 ns|  3.512 ns|     1.08 ns|
    +--------+---------+----------+------------+
+ Latency: 
    * Summary: 
    +---------+---------+-----------+-----------+-----------+-----------+---------+
    |  Latency (cycles) |   Latency (absolute)  |        Interval       | Pipeline|
    |   min   |   max   |    min    |    max    |    min    |    max    |   Type  |
    +---------+---------+-----------+-----------+-----------+-----------+---------+
    |       12|       15|  48.000 ns|  60.000 ns|    2 ~ 4  |    2 ~ 4  | dataflow|
    +---------+---------+-----------+-----------+-----------+-----------+---------+
== Utilization Estimates
* Summary: 
+-----------------+---------+-------+--------+--------+-----+
|       Name      | BRAM_18K|  DSP  |   FF   |   LUT  | URAM|
+-----------------+---------+-------+--------+--------+-----+
|Total            |       12|     30|    4000|    9000|    1|
+-----------------+---------+-------+--------+--------+-----+
|Available        |     5376|  12288| 3456000| 1728000| 1280|
+-----------------+---------+-------+--------+--------+-----+
";
        let r = parse(text).unwrap();
        assert_eq!(r.tool.as_deref(), Some("vitis_hls"));
        assert_eq!(r.target_clock_ns, Some(4.0));
        assert_eq!(r.estimated_clock_ns, Some(3.512));
        assert_eq!(
            (r.latency_best_cycles, r.latency_worst_cycles),
            (Some(12), Some(15))
        );
        assert_eq!(
            (r.interval_min_cycles, r.interval_max_cycles),
            (Some(2), Some(4))
        );
        assert_eq!(r.used.uram, Some(1.0));
        assert_eq!(r.available.lut, Some(1728000.0));
    }

    #[test]
    fn other_text_is_not_a_report() {
        assert_eq!(parse("hello\nworld"), Err(NotCsynth));
    }
}
