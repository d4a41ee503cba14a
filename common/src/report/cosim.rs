//! `<top>_cosim.rpt`: the C/RTL co-simulation result table.
//!
//! Rows are found by their RTL language (`Verilog`, `VHDL`); the first row that ran (status
//! not `NA`) is the result. Old layouts end at the interval columns, newer ones add the total
//! execution time; `NA` cells give `None`. The header's date, in whatever locale, is not read.

use super::table::row_cells;
use super::{CosimReport, CosimStatus, parse_cycles, parse_number};

/// Why a file is not a co-simulation report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no `| Verilog |` or `| VHDL |` result row: not a cosim report")]
pub struct NotCosim;

fn status_of(cell: &str) -> CosimStatus {
    match cell.to_ascii_lowercase().as_str() {
        "pass" => CosimStatus::Pass,
        "fail" | "failed" => CosimStatus::Fail,
        _ => CosimStatus::Na,
    }
}

/// Parses the text of a `<top>_cosim.rpt`.
pub fn parse(text: &str) -> Result<CosimReport, NotCosim> {
    let rows: Vec<Vec<String>> = text
        .lines()
        .filter_map(row_cells)
        .filter(|cells| {
            cells.first().is_some_and(|c| {
                c.eq_ignore_ascii_case("verilog") || c.eq_ignore_ascii_case("vhdl")
            })
        })
        .collect();
    let row = rows
        .iter()
        .find(|r| r.get(1).is_some_and(|s| status_of(s) != CosimStatus::Na))
        .or_else(|| rows.first())
        .ok_or(NotCosim)?;
    let cell = |i: usize| row.get(i).map(String::as_str).unwrap_or("");
    Ok(CosimReport {
        status: status_of(cell(1)),
        rtl: Some(cell(0).to_owned()),
        latency_min_cycles: parse_cycles(cell(2), true),
        latency_avg_cycles: parse_number(cell(3)),
        latency_max_cycles: parse_cycles(cell(4), false),
        interval_min_cycles: parse_cycles(cell(5), true),
        interval_avg_cycles: parse_number(cell(6)),
        interval_max_cycles: parse_cycles(cell(7), false),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn old_layout_verilog_pass_with_vhdl_na() {
        let text = "\
================================================================
== Vivado HLS Report for 'myproject'
================================================================
* Date:           Mo 8. Jun 11:54:01 CEST 2020

* Version:        2019.2 (Build 2704478 on Wed Nov 06 22:10:23 MST 2019)
Result
+--------------+--------+-----+-----+-----+-----+-----+-----+
|              |        |      Latency      |      Interval     |
+      RTL     + Status +-----+-----+-----+-----+-----+-----+
|              |        | min | avg | max | min | avg | max |
+--------------+--------+-----+-----+-----+-----+-----+-----+
|          VHDL|      NA|   NA|   NA|   NA|   NA|   NA|   NA|
|       Verilog|    Pass|   21| 21.5|   22|    9|    9|    9|
+--------------+--------+-----+-----+-----+-----+-----+-----+
";
        let r = parse(text).unwrap();
        assert_eq!(r.status, CosimStatus::Pass);
        assert_eq!(r.rtl.as_deref(), Some("Verilog"));
        assert_eq!(
            (r.latency_min_cycles, r.latency_max_cycles),
            (Some(21), Some(22))
        );
        assert_eq!(r.latency_avg_cycles, Some(21.5));
        assert_eq!(r.interval_max_cycles, Some(9));
    }

    #[test]
    fn new_layout_with_total_time_and_a_failure() {
        let text = "\
+----------+--------+-----+-----+-----+-----+-----+-----+--------------------+
|   RTL    | Status | min | avg | max | min | avg | max | Total Execution Time|
+----------+--------+-----+-----+-----+-----+-----+-----+--------------------+
|   Verilog|    Fail|   NA|   NA|   NA|   NA|   NA|   NA|                  NA|
+----------+--------+-----+-----+-----+-----+-----+-----+--------------------+
";
        let r = parse(text).unwrap();
        assert_eq!(r.status, CosimStatus::Fail);
        assert_eq!(r.latency_min_cycles, None);
        assert_eq!(r.interval_avg_cycles, None);
    }

    #[test]
    fn nothing_ran() {
        let r = parse("|  VHDL| NA| NA| NA| NA| NA| NA| NA|\n").unwrap();
        assert_eq!(r.status, CosimStatus::Na);
        assert_eq!(parse("Result\n"), Err(NotCosim));
    }
}
