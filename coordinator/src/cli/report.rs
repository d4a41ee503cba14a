//! `hlsfarm report PATH`: the figures of an hls4ml project folder, or of one report or log.

use std::fmt::Write as _;
use std::path::Path;

use hlsfarm_common::report::project::ProjectReport;
use hlsfarm_common::report::{HlsResources, VivadoResources};

/// Reads `path` and prints its report as JSON or text; returns the exit code.
pub fn run(path: &Path, json: bool) -> anyhow::Result<i32> {
    let (report, warnings) = ProjectReport::read(path)?;
    for warning in &warnings {
        eprintln!("hlsfarm: warning: {warning}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(0)
}

fn opt<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn used_of(used: Option<f64>, available: Option<f64>) -> String {
    match (used, available) {
        (Some(u), Some(a)) if a > 0.0 => format!("{u}/{a} ({:.1}%)", 100.0 * u / a),
        (Some(u), _) => format!("{u}"),
        (None, _) => "?".to_owned(),
    }
}

fn hls_resources(used: &HlsResources, available: &HlsResources) -> String {
    format!(
        "LUT {}, FF {}, DSP {}, BRAM_18K {}, URAM {}",
        used_of(used.lut, available.lut),
        used_of(used.ff, available.ff),
        used_of(used.dsp, available.dsp),
        used_of(used.bram_18k, available.bram_18k),
        used_of(used.uram, available.uram)
    )
}

fn vivado_resources(used: &VivadoResources, available: &VivadoResources) -> String {
    format!(
        "LUT {}, FF {}, DSP {}, BRAM tiles {}, URAM {}",
        used_of(used.lut, available.lut),
        used_of(used.ff, available.ff),
        used_of(used.dsp, available.dsp),
        used_of(used.bram_tiles, available.bram_tiles),
        used_of(used.uram, available.uram)
    )
}

/// The report as a few lines of text.
pub fn render_text(report: &ProjectReport) -> String {
    let mut out = String::new();
    if let Some(c) = &report.csynth {
        let _ = writeln!(
            out,
            "C synthesis       {} {}, part {}, top {}",
            opt(c.tool.as_deref()),
            opt(c.version.as_deref()),
            opt(c.part.as_deref()),
            opt(c.top.as_deref())
        );
        let _ = writeln!(
            out,
            "  clock           target {} ns, estimated {} ns, uncertainty {} ns",
            opt(c.target_clock_ns),
            opt(c.estimated_clock_ns),
            opt(c.clock_uncertainty_ns)
        );
        let _ = writeln!(
            out,
            "  latency         {}..{} cycles, interval {}..{} cycles",
            opt(c.latency_best_cycles),
            opt(c.latency_worst_cycles),
            opt(c.interval_min_cycles),
            opt(c.interval_max_cycles)
        );
        let _ = writeln!(
            out,
            "  resources       {}",
            hls_resources(&c.used, &c.available)
        );
    }
    if let Some(v) = &report.vivado_synth {
        let _ = writeln!(
            out,
            "Vivado synthesis  {}, device {}",
            opt(v.version.as_deref()),
            opt(v.device.as_deref())
        );
        let _ = writeln!(
            out,
            "  resources       {}",
            vivado_resources(&v.used, &v.available)
        );
    }
    if let Some(c) = &report.cosim {
        let _ = writeln!(
            out,
            "Co-simulation     {:?} ({}), latency {}/{}/{} cycles, interval {}/{}/{} (min/avg/max)",
            c.status,
            opt(c.rtl.as_deref()),
            opt(c.latency_min_cycles),
            opt(c.latency_avg_cycles),
            opt(c.latency_max_cycles),
            opt(c.interval_min_cycles),
            opt(c.interval_avg_cycles),
            opt(c.interval_max_cycles)
        );
    }
    for (name, log) in [("Log", &report.log), ("Vivado log", &report.vivado_log)] {
        let Some(log) = log else { continue };
        let warnings: u64 = log.warning_counts.values().sum();
        let _ = writeln!(
            out,
            "{name:<18}{} {}, {}, {} errors, {} warnings",
            opt(log.tool.as_deref()),
            opt(log.version.as_deref()),
            if log.completed {
                "completed"
            } else {
                "did not complete"
            },
            log.errors.len(),
            warnings
        );
        if let Some(f) = &log.failure {
            let _ = writeln!(out, "  failure         {}: {}", f.class, f.reason);
            if let Some(s) = &f.suggestion {
                let _ = writeln!(out, "  fix             {s}");
            }
        }
    }
    out
}
