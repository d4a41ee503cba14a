//! `<top>_csynth.xml`, the machine-readable C synthesis report.
//!
//! Elements are found by name under their parents, in whatever order the version writes them.
//! DSPs are `DSP48E` in Vivado HLS and `DSP` in Vitis HLS. Latency and interval may be ranges
//! (`2 ~ 9`) or `undef`; utilization may pass 100 %.

use roxmltree::{Document, Node};

use super::{CsynthReport, HlsResources, hls_tool_for_version, parse_cycles, parse_number};

/// Why a file is not a csynth XML report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The text is not well-formed XML.
    #[error("not XML: {0}")]
    Xml(String),
    /// The XML has no `PerformanceEstimates` or `AreaEstimates`.
    #[error("XML without PerformanceEstimates or AreaEstimates: not a csynth report")]
    NotCsynth,
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn path<'a, 'i>(node: Node<'a, 'i>, names: &[&str]) -> Option<Node<'a, 'i>> {
    names.iter().try_fold(node, |n, name| child(n, name))
}

fn text(node: Node<'_, '_>, names: &[&str]) -> Option<String> {
    path(node, names)
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn resources(node: Option<Node<'_, '_>>) -> HlsResources {
    let Some(node) = node else {
        return HlsResources::default();
    };
    let value = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| child(node, n))
            .and_then(|n| n.text())
            .and_then(parse_number)
    };
    HlsResources {
        bram_18k: value(&["BRAM_18K"]),
        dsp: value(&["DSP", "DSP48E"]),
        ff: value(&["FF"]),
        lut: value(&["LUT"]),
        uram: value(&["URAM"]),
    }
}

/// Parses the text of a `<top>_csynth.xml`.
pub fn parse(xml: &str) -> Result<CsynthReport, Error> {
    let doc = Document::parse(xml).map_err(|e| Error::Xml(e.to_string()))?;
    let root = doc.root_element();
    let perf = child(root, "PerformanceEstimates");
    let area = child(root, "AreaEstimates");
    if perf.is_none() && area.is_none() {
        return Err(Error::NotCsynth);
    }
    let version = text(root, &["ReportVersion", "Version"]);
    let latency = |name: &str, low: bool| {
        perf.and_then(|p| text(p, &["SummaryOfOverallLatency", name]))
            .and_then(|t| parse_cycles(&t, low))
    };
    Ok(CsynthReport {
        tool: version.as_deref().and_then(hls_tool_for_version),
        part: text(root, &["UserAssignments", "Part"]),
        top: text(root, &["UserAssignments", "TopModelName"]),
        target_clock_ns: text(root, &["UserAssignments", "TargetClockPeriod"])
            .and_then(|t| parse_number(&t)),
        clock_uncertainty_ns: text(root, &["UserAssignments", "ClockUncertainty"])
            .and_then(|t| parse_number(&t)),
        estimated_clock_ns: perf
            .and_then(|p| text(p, &["SummaryOfTimingAnalysis", "EstimatedClockPeriod"]))
            .and_then(|t| parse_number(&t)),
        latency_best_cycles: latency("Best-caseLatency", true),
        latency_worst_cycles: latency("Worst-caseLatency", false),
        interval_min_cycles: latency("Interval-min", true),
        interval_max_cycles: latency("Interval-max", false),
        used: resources(area.and_then(|a| child(a, "Resources"))),
        available: resources(area.and_then(|a| child(a, "AvailableResources"))),
        version,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Vivado HLS 2019.2 layout: `DSP48E`, UserAssignments after PerformanceEstimates.
    const VIVADO_HLS_2019: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<profile>
  <ReportVersion><Version>2019.2</Version></ReportVersion>
  <PerformanceEstimates>
    <SummaryOfTimingAnalysis><unit>ns</unit><EstimatedClockPeriod>4.371</EstimatedClockPeriod></SummaryOfTimingAnalysis>
    <SummaryOfOverallLatency>
      <unit>clock cycles</unit>
      <Best-caseLatency>21</Best-caseLatency>
      <Average-caseLatency>21</Average-caseLatency>
      <Worst-caseLatency>23</Worst-caseLatency>
      <Interval-min>8</Interval-min>
      <Interval-max>9</Interval-max>
    </SummaryOfOverallLatency>
  </PerformanceEstimates>
  <UserAssignments>
    <unit>ns</unit>
    <ProductFamily>zynq</ProductFamily>
    <Part>xc7z020-clg400-1</Part>
    <TopModelName>myproject</TopModelName>
    <TargetClockPeriod>5.00</TargetClockPeriod>
    <ClockUncertainty>0.62</ClockUncertainty>
  </UserAssignments>
  <AreaEstimates>
    <Resources><BRAM_18K>4</BRAM_18K><DSP48E>243</DSP48E><FF>5432</FF><LUT>62345</LUT></Resources>
    <AvailableResources><BRAM_18K>280</BRAM_18K><DSP48E>220</DSP48E><FF>106400</FF><LUT>53200</LUT></AvailableResources>
  </AreaEstimates>
</profile>"#;

    #[test]
    fn vivado_hls_layout_with_dsp48e_and_values_over_100_percent() {
        let r = parse(VIVADO_HLS_2019).unwrap();
        assert_eq!(r.tool.as_deref(), Some("vivado_hls"));
        assert_eq!(r.version.as_deref(), Some("2019.2"));
        assert_eq!(r.part.as_deref(), Some("xc7z020-clg400-1"));
        assert_eq!(r.target_clock_ns, Some(5.0));
        assert_eq!(r.estimated_clock_ns, Some(4.371));
        assert_eq!(r.clock_uncertainty_ns, Some(0.62));
        assert_eq!(
            (r.latency_best_cycles, r.latency_worst_cycles),
            (Some(21), Some(23))
        );
        assert_eq!(
            (r.interval_min_cycles, r.interval_max_cycles),
            (Some(8), Some(9))
        );
        assert_eq!(r.used.dsp, Some(243.0), "more than the 220 available");
        assert_eq!(r.used.lut, Some(62345.0));
        assert_eq!(r.used.uram, None, "no URAM tag in this report");
        assert_eq!(r.available.dsp, Some(220.0));
    }

    #[test]
    fn vitis_layout_with_dsp_uram_ranges_and_undef() {
        let xml = r#"<profile><ReportVersion><Version>2023.2</Version></ReportVersion>
<UserAssignments><TopModelName>myproject</TopModelName><Part>xcvu9p-flga2104-2-e</Part><TargetClockPeriod>4.00</TargetClockPeriod></UserAssignments>
<AreaEstimates><AvailableResources><URAM>960</URAM><DSP>6840</DSP></AvailableResources>
<Resources><URAM>2</URAM><DSP>10</DSP><LUT>400</LUT><FF>300</FF><BRAM_18K>0</BRAM_18K></Resources></AreaEstimates>
<PerformanceEstimates><SummaryOfOverallLatency><Best-caseLatency>undef</Best-caseLatency>
<Worst-caseLatency>undef</Worst-caseLatency><Interval-min>2 ~ 5</Interval-min><Interval-max>2 ~ 5</Interval-max>
</SummaryOfOverallLatency></PerformanceEstimates></profile>"#;
        let r = parse(xml).unwrap();
        assert_eq!(r.tool.as_deref(), Some("vitis_hls"));
        assert_eq!(r.used.dsp, Some(10.0));
        assert_eq!(r.used.uram, Some(2.0));
        assert_eq!(r.available.uram, Some(960.0));
        assert_eq!(r.latency_best_cycles, None);
        assert_eq!(
            (r.interval_min_cycles, r.interval_max_cycles),
            (Some(2), Some(5))
        );
        assert_eq!(r.estimated_clock_ns, None);
    }

    #[test]
    fn other_xml_is_not_a_report() {
        assert_eq!(parse("<a><b/></a>").unwrap_err(), Error::NotCsynth);
        assert!(matches!(parse("not xml"), Err(Error::Xml(_))));
    }
}
