//! `vivado_synth.rpt`: Vivado's `report_utilization`.
//!
//! Columns are found by their header names (Vivado 2022.2 added `Prohibited`); rows by their
//! labels, 7-series (`Slice LUTs`, `Slice Registers`) or UltraScale+ (`CLB LUTs`,
//! `CLB Registers`). Block RAM comes in tiles, possibly fractional; parts without UltraRAM have
//! no `URAM` row. The first matching row wins, so multi-SLR sections later in the report are
//! ignored (their tables have per-SLR columns, not `Used`).

use super::table::row_cells;
use super::{VivadoResources, VivadoSynthReport, parse_number};

/// Why a file is not a utilization report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no `Site Type | Used | ... | Available` table: not a report_utilization report")]
pub struct NotUtilization;

#[derive(Clone, Copy)]
enum Resource {
    Lut,
    Ff,
    Bram,
    Dsp,
    Uram,
}

fn resource_of(label: &str) -> Option<Resource> {
    match label.trim_end_matches('*').trim() {
        "Slice LUTs" | "CLB LUTs" => Some(Resource::Lut),
        "Slice Registers" | "CLB Registers" => Some(Resource::Ff),
        "Block RAM Tile" => Some(Resource::Bram),
        "DSPs" => Some(Resource::Dsp),
        "URAM" => Some(Resource::Uram),
        _ => None,
    }
}

fn slot(r: &mut VivadoResources, which: Resource) -> &mut Option<f64> {
    match which {
        Resource::Lut => &mut r.lut,
        Resource::Ff => &mut r.ff,
        Resource::Bram => &mut r.bram_tiles,
        Resource::Dsp => &mut r.dsp,
        Resource::Uram => &mut r.uram,
    }
}

/// Parses the text of a `report_utilization` report.
pub fn parse(text: &str) -> Result<VivadoSynthReport, NotUtilization> {
    let mut report = VivadoSynthReport::default();
    let mut columns: Option<(usize, usize, Option<usize>)> = None;
    let mut saw_table = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix('|')
            && let Some((key, value)) = rest.split_once(':')
        {
            let value = value.trim();
            match key.trim() {
                "Tool Version" if report.version.is_none() => {
                    report.version = value
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("v."))
                        .map(str::to_owned);
                }
                "Device" if report.device.is_none() => {
                    report.device = value.split_whitespace().next().map(str::to_owned);
                }
                _ => {}
            }
        }
        let Some(cells) = row_cells(line) else {
            continue;
        };
        if cells.first().is_some_and(|c| c == "Site Type") {
            let find = |name: &str| cells.iter().position(|c| c == name);
            columns = match (find("Used"), find("Available")) {
                (Some(used), Some(available)) => {
                    saw_table = true;
                    Some((used, available, find("Util%")))
                }
                _ => None,
            };
            continue;
        }
        let (Some((used_col, avail_col, util_col)), Some(which)) =
            (columns, cells.first().and_then(|c| resource_of(c)))
        else {
            continue;
        };
        if slot(&mut report.used, which).is_some() {
            continue;
        }
        let used = cells.get(used_col).and_then(|c| parse_number(c));
        let available = cells.get(avail_col).and_then(|c| parse_number(c));
        let util = util_col
            .and_then(|i| cells.get(i))
            .and_then(|c| parse_number(c))
            .or_else(|| match (used, available) {
                (Some(u), Some(a)) if a > 0.0 => Some(100.0 * u / a),
                _ => None,
            });
        *slot(&mut report.used, which) = used;
        *slot(&mut report.available, which) = available;
        *slot(&mut report.util_percent, which) = util;
    }
    if saw_table {
        Ok(report)
    } else {
        Err(NotUtilization)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Vivado 2020.1, 7-series, no Prohibited column.
    const SEVEN_SERIES_2020: &str = "\
Copyright 1986-2020 Xilinx, Inc. All Rights Reserved.
------------------------------------------------------------------------------------
| Tool Version : Vivado v.2020.1 (lin64) Build 2902540 Wed May 27 19:54:35 MDT 2020
| Date         : Thu Jun 10 14:31:38 2021
| Command      : report_utilization -file vivado_synth.rpt
| Design       : myproject
| Device       : 7z020clg400-1
| Design State : Synthesized
------------------------------------------------------------------------------------

Table of Contents
-----------------
1. Slice Logic
2. Memory
3. DSP

1. Slice Logic
--------------

+----------------------------+-------+-------+-----------+-------+
|          Site Type         |  Used | Fixed | Available | Util% |
+----------------------------+-------+-------+-----------+-------+
| Slice LUTs*                | 12345 |     0 |     53200 | 23.20 |
|   LUT as Logic             | 12000 |     0 |     53200 | 22.56 |
| Slice Registers            |  5432 |     0 |    106400 |  5.11 |
+----------------------------+-------+-------+-----------+-------+

2. Memory
---------

+----------------+------+-------+-----------+-------+
|    Site Type   | Used | Fixed | Available | Util% |
+----------------+------+-------+-----------+-------+
| Block RAM Tile |  2.5 |     0 |       140 |  1.79 |
|   RAMB36/FIFO* |    2 |     0 |       140 |  1.43 |
+----------------+------+-------+-----------+-------+

3. DSP
------

+----------------+------+-------+-----------+--------+
|    Site Type   | Used | Fixed | Available | Util%  |
+----------------+------+-------+-----------+--------+
| DSPs           |  243 |     0 |       220 | 110.45 |
|   DSP48E1 only |  243 |       |           |        |
+----------------+------+-------+-----------+--------+
";

    #[test]
    fn seven_series_without_uram_and_with_fractional_bram() {
        let r = parse(SEVEN_SERIES_2020).unwrap();
        assert_eq!(r.version.as_deref(), Some("2020.1"));
        assert_eq!(r.device.as_deref(), Some("7z020clg400-1"));
        assert_eq!(r.used.lut, Some(12345.0));
        assert_eq!(r.used.ff, Some(5432.0));
        assert_eq!(r.used.bram_tiles, Some(2.5));
        assert_eq!(r.used.dsp, Some(243.0));
        assert_eq!(r.used.uram, None, "no URAM row on this part");
        assert_eq!(r.available.dsp, Some(220.0));
        assert_eq!(r.util_percent.dsp, Some(110.45));
    }

    /// Vivado 2023.2, UltraScale+, with the Prohibited column and an SLR section.
    #[test]
    fn ultrascale_plus_with_prohibited_column_and_slr_section() {
        let text = "\
| Tool Version : Vivado v.2023.2 (lin64) Build 4029153 Fri Oct 13 20:13:54 MDT 2023
| Device       : xcvu9p-flga2104-2-e
1. CLB Logic
+-------------------------+-------+-------+------------+-----------+-------+
|        Site Type        |  Used | Fixed | Prohibited | Available | Util% |
+-------------------------+-------+-------+------------+-----------+-------+
| CLB LUTs*               | 40000 |     0 |          0 |   1182240 |  3.38 |
| CLB Registers           | 30000 |     0 |          0 |   2364480 |  1.27 |
+-------------------------+-------+-------+------------+-----------+-------+
2. BLOCKRAM
+-------------------+------+-------+------------+-----------+-------+
|     Site Type     | Used | Fixed | Prohibited | Available | Util% |
+-------------------+------+-------+------------+-----------+-------+
| Block RAM Tile    |   10 |     0 |          0 |      2160 |  0.46 |
| URAM              |    3 |     0 |          0 |       960 |  0.31 |
+-------------------+------+-------+------------+-----------+-------+
3. ARITHMETIC
+----------------+------+-------+------------+-----------+-------+
|    Site Type   | Used | Fixed | Prohibited | Available | Util% |
+----------------+------+-------+------------+-----------+-------+
| DSPs           |  500 |     0 |          0 |      6840 |  7.31 |
+----------------+------+-------+------------+-----------+-------+
11. SLR CLB Logic and Dedicated Block Utilization
+----------------------------+-------+-------+-------+
|          Site Type         |  SLR0 |  SLR1 |  SLR2 |
+----------------------------+-------+-------+-------+
| CLB LUTs                   | 39000 |  1000 |     0 |
| DSPs                       |   400 |   100 |     0 |
+----------------------------+-------+-------+-------+
";
        let r = parse(text).unwrap();
        assert_eq!(r.version.as_deref(), Some("2023.2"));
        assert_eq!(r.used.lut, Some(40000.0), "not the SLR0 column");
        assert_eq!(
            r.available.lut,
            Some(1182240.0),
            "found by name past `Prohibited`"
        );
        assert_eq!(r.used.uram, Some(3.0));
        assert_eq!(r.used.dsp, Some(500.0));
        assert_eq!(r.util_percent.dsp, Some(7.31));
    }

    #[test]
    fn other_text_is_not_a_report() {
        assert_eq!(parse("| a | b |\n"), Err(NotUtilization));
    }
}
