//! An hls4ml project folder, or one report or log file: finds what is there and parses it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::log::LogDigest;
use super::{
    CosimReport, CsynthReport, VivadoSynthReport, cosim, csynth_rpt, csynth_xml, log, utilization,
};

/// Everything the reports of one project (or one file) say; absent keys did not apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ProjectReport {
    /// C synthesis, from `<top>_csynth.xml` (or the `.rpt` when there is no XML).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csynth: Option<CsynthReport>,
    /// Vivado synthesis, from `vivado_synth.rpt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vivado_synth: Option<VivadoSynthReport>,
    /// Co-simulation, from `<top>_cosim.rpt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosim: Option<CosimReport>,
    /// The HLS tool's log (`vitis_hls.log`, `vivado_hls.log`), or the one log file given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogDigest>,
    /// Vivado's log (`vivado.log`), when Vivado synthesis ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vivado_log: Option<LogDigest>,
}

/// Why a path could not be reported on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The path does not exist or cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A folder without any report, log or `project.tcl`.
    #[error("{0} holds no hls4ml project (no project.tcl) and no report or log")]
    NothingFound(PathBuf),
    /// A file that is none of the reports or logs.
    #[error("{path} is not a csynth, cosim, utilization report or tool log: {reasons}")]
    Unrecognized {
        /// The file.
        path: PathBuf,
        /// Why each parser refused it.
        reasons: String,
    },
}

/// Reports that could not be parsed while the rest could: each names the file and why.
pub type Warnings = Vec<String>;

fn read(path: &Path) -> Result<String, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The top function name from `project.tcl` (`set project_name "myproject"`), with `_axi`
/// for the VivadoAccelerator backend, as hls4ml names it.
pub fn top_from_project_tcl(text: &str) -> Option<String> {
    let mut top = None;
    let mut accelerator = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("set project_name") {
            top = Some(rest.trim().trim_matches('"').to_owned());
        } else if let Some(rest) = line.strip_prefix("set backend") {
            accelerator = rest.contains("accelerator");
        }
    }
    top.filter(|t| !t.is_empty())
        .map(|t| if accelerator { format!("{t}_axi") } else { t })
}

/// The solution folder: the first solution the project file lists, else `solution1`.
fn solution_dir(project_dir: &Path) -> PathBuf {
    for app in ["hls.app", "vivado_hls.app"] {
        if let Ok(text) = std::fs::read_to_string(project_dir.join(app))
            && let Some(at) = text.find("<solution name=\"")
        {
            let rest = &text[at + 16..];
            if let Some(end) = rest.find('"') {
                return project_dir.join(&rest[..end]);
            }
        }
    }
    project_dir.join("solution1")
}

impl ProjectReport {
    /// Reads an hls4ml project folder or one file.
    pub fn read(path: &Path) -> Result<(ProjectReport, Warnings), Error> {
        let meta = std::fs::metadata(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.is_dir() {
            Self::read_folder(path)
        } else {
            Self::read_file(path).map(|r| (r, Vec::new()))
        }
    }

    fn read_folder(dir: &Path) -> Result<(ProjectReport, Warnings), Error> {
        let mut report = ProjectReport::default();
        let mut warnings = Warnings::new();
        let top = std::fs::read_to_string(dir.join("project.tcl"))
            .ok()
            .and_then(|t| top_from_project_tcl(&t));
        if let Some(top) = &top {
            let solution = solution_dir(&dir.join(format!("{top}_prj")));
            let xml = solution.join(format!("syn/report/{top}_csynth.xml"));
            let rpt = solution.join(format!("syn/report/{top}_csynth.rpt"));
            if xml.is_file() {
                match csynth_xml::parse(&read(&xml)?) {
                    Ok(r) => report.csynth = Some(r),
                    Err(e) => warnings.push(format!("{}: {e}", xml.display())),
                }
            }
            if report.csynth.is_none() && rpt.is_file() {
                match csynth_rpt::parse(&read(&rpt)?) {
                    Ok(r) => report.csynth = Some(r),
                    Err(e) => warnings.push(format!("{}: {e}", rpt.display())),
                }
            }
            let cosim_path = solution.join(format!("sim/report/{top}_cosim.rpt"));
            if cosim_path.is_file() {
                match cosim::parse(&read(&cosim_path)?) {
                    Ok(r) => report.cosim = Some(r),
                    Err(e) => warnings.push(format!("{}: {e}", cosim_path.display())),
                }
            }
        }
        let util = dir.join("vivado_synth.rpt");
        if util.is_file() {
            match utilization::parse(&read(&util)?) {
                Ok(r) => report.vivado_synth = Some(r),
                Err(e) => warnings.push(format!("{}: {e}", util.display())),
            }
        }
        for name in ["vitis_hls.log", "vivado_hls.log"] {
            let path = dir.join(name);
            if report.log.is_none() && path.is_file() {
                report.log = Some(log::parse(&read(&path)?));
            }
        }
        let vivado_log = dir.join("vivado.log");
        if vivado_log.is_file() {
            report.vivado_log = Some(log::parse(&read(&vivado_log)?));
        }
        if top.is_none() && report == ProjectReport::default() {
            return Err(Error::NothingFound(dir.to_owned()));
        }
        Ok((report, warnings))
    }

    fn read_file(path: &Path) -> Result<ProjectReport, Error> {
        let text = read(path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut report = ProjectReport::default();
        if name.ends_with(".log") || name.ends_with(".jou") {
            report.log = Some(log::parse(&text));
            return Ok(report);
        }
        // By name first, then by content, so a renamed report is still recognized.
        let mut reasons = Vec::new();
        if name.ends_with(".xml") || text.trim_start().starts_with('<') {
            match csynth_xml::parse(&text) {
                Ok(r) => {
                    report.csynth = Some(r);
                    return Ok(report);
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        if name.contains("cosim") {
            match cosim::parse(&text) {
                Ok(r) => {
                    report.cosim = Some(r);
                    return Ok(report);
                }
                Err(e) => reasons.push(e.to_string()),
            }
        }
        match csynth_rpt::parse(&text) {
            Ok(r) => {
                report.csynth = Some(r);
                return Ok(report);
            }
            Err(e) => reasons.push(e.to_string()),
        }
        match utilization::parse(&text) {
            Ok(r) => {
                report.vivado_synth = Some(r);
                return Ok(report);
            }
            Err(e) => reasons.push(e.to_string()),
        }
        match cosim::parse(&text) {
            Ok(r) => {
                report.cosim = Some(r);
                Ok(report)
            }
            Err(e) => {
                reasons.push(e.to_string());
                Err(Error::Unrecognized {
                    path: path.to_owned(),
                    reasons: reasons.join("; "),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn top_comes_from_project_tcl() {
        let tcl = "variable project_name\nset project_name \"myproject\"\nvariable backend\nset backend \"vitis\"\n";
        assert_eq!(top_from_project_tcl(tcl).as_deref(), Some("myproject"));
        let tcl = "set project_name \"net\"\nset backend \"vivadoaccelerator\"\n";
        assert_eq!(top_from_project_tcl(tcl).as_deref(), Some("net_axi"));
    }

    #[test]
    fn an_empty_folder_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProjectReport::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("holds no hls4ml project"), "{err}");
    }
}
