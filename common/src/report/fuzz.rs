//! The parsers never panic, whatever the bytes: property tests over arbitrary text and over
//! real-looking reports cut, spliced and garbled at random places. CI runs them with a
//! bounded number of cases (`PROPTEST_CASES` raises it for a longer local fuzz).

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::{cosim, csynth_rpt, csynth_xml, log, utilization};

const SEEDS: &[&str] = &[
    "<profile><ReportVersion><Version>2023.2</Version></ReportVersion><UserAssignments><Part>xc7z020</Part><TargetClockPeriod>5.00</TargetClockPeriod></UserAssignments><PerformanceEstimates><SummaryOfTimingAnalysis><EstimatedClockPeriod>4.1</EstimatedClockPeriod></SummaryOfTimingAnalysis><SummaryOfOverallLatency><Best-caseLatency>2 ~ 9</Best-caseLatency><Interval-max>undef</Interval-max></SummaryOfOverallLatency></PerformanceEstimates><AreaEstimates><Resources><DSP48E>3</DSP48E><LUT>~0</LUT></Resources></AreaEstimates></profile>",
    "== Vivado HLS Report for 'myproject'\n* Version:        2019.2 (Build)\n+ Timing: \n    +--------+-------+\n    |ap_clk  |  5.00 ns|  4.1 ns|  0.6 ns|\n    +--------+\n+ Latency: \n    +-----+-----+\n    |  Latency (cycles) |   Latency (absolute)  |\n    +-----+\n    |    9|    9| 1 ns| 2 ns| 1 ~ 3| ?| none|\n== Utilization Estimates\n* Summary: \n+---+---+\n| Name | BRAM_18K| DSP48E| FF | LUT | URAM|\n+---+\n|Total | - | ~0 | 12 | 1,234 | 0|\n|Available | 280 | 220 | 106400 | 53200 | 0|\n+---+\n",
    "| Tool Version : Vivado v.2023.2 (lin64)\n| Device : 7z020\n+---+\n| Site Type | Used | Fixed | Prohibited | Available | Util% |\n+---+\n| Slice LUTs* | 12 | 0 | 0 | 53200 | 0.02 |\n| Block RAM Tile | 0.5 | 0 | 0 | 140 | 0.36 |\n| DSPs | 3 | 0 | 0 | 220 | 1.36 |\n| URAM | NA |\n",
    "|          VHDL|      NA|   NA|   NA|   NA|   NA|   NA|   NA|\n|       Verilog|    Pass|   21| 21.5|   22|    9|    9|    9|   300|\n",
    "****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2023.2 (64-bit)\nERROR: [XFORM 203-103] Array 'mult.V': partitioned elements number (4608) has exeeded the threshold (4096), which may.\nWARNING: [HLS 200-885] x\nERROR: [\nERROR: Test failed\nKilled\nINFO: [Common 17-206] Exiting vitis_hls at x\n",
];

fn parse_all(text: &str) {
    let _ = csynth_xml::parse(text);
    let _ = csynth_rpt::parse(text);
    let _ = utilization::parse(text);
    let _ = cosim::parse(text);
    let _ = log::parse(text);
}

/// A seed with a random slice replaced by random text, or cut at a random byte.
fn mutated() -> impl Strategy<Value = String> {
    (
        prop::sample::select(SEEDS),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        ".{0,12}",
        any::<bool>(),
    )
        .prop_map(|(seed, a, b, insert, cut)| {
            let bytes = seed.as_bytes();
            let (mut i, mut j) = (a.index(bytes.len()), b.index(bytes.len()));
            if i > j {
                std::mem::swap(&mut i, &mut j);
            }
            let mut out = bytes[..i].to_vec();
            if !cut {
                out.extend_from_slice(insert.as_bytes());
                out.extend_from_slice(&bytes[j..]);
            }
            String::from_utf8_lossy(&out).into_owned()
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        parse_all(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn parsers_never_panic_on_garbled_reports(text in mutated()) {
        parse_all(&text);
    }

    #[test]
    fn parsers_never_panic_on_report_like_lines(lines in proptest::collection::vec(
        prop_oneof![
            Just("+---+---+".to_owned()),
            "\\|[ a-zA-Z0-9.~?,%*-]{0,10}(\\|[ a-zA-Z0-9.~?,%*-]{0,10}){0,8}\\|?",
            "(ERROR|WARNING): \\[[A-Za-z ]{0,6}[0-9-]{0,7}\\]? ?.{0,30}",
            "== (Vivado|Vitis) HLS Report for '.{0,5}",
            "\\* (Version|Target device|Summary): .{0,12}",
            "\\+ (Timing|Latency).{0,8}",
            ".{0,40}",
        ], 0..40)) {
        parse_all(&lines.join("\n"));
    }
}
