//! `hlsfarm results PATH`: a finished sweep's trials as a table, JSON or CSV, from its output
//! folder (`synthesis_results.json`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// How `results` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned table, one line per trial.
    Table,
    /// `synthesis_results.json` as it is.
    Json,
    /// `results.csv` as it is.
    Csv,
}

/// Prints the results of the sweep in `path` (its output folder, or its
/// `synthesis_results.json`); returns the exit code.
pub fn run(path: &Path, format: Format) -> anyhow::Result<i32> {
    let dir = if path.is_dir() {
        path.to_owned()
    } else {
        path.parent().map(Path::to_owned).unwrap_or_default()
    };
    let json_path = dir.join("synthesis_results.json");
    let text = std::fs::read_to_string(&json_path).with_context(|| {
        format!(
            "cannot read {}: give the output folder of a finished `hlsfarm run`",
            json_path.display()
        )
    })?;
    match format {
        Format::Json => print!("{text}"),
        Format::Csv => {
            let csv = dir.join("results.csv");
            print!(
                "{}",
                std::fs::read_to_string(&csv)
                    .with_context(|| format!("cannot read {}", csv.display()))?
            );
        }
        Format::Table => {
            let summary: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", json_path.display()))?;
            print!("{}", table(&summary));
        }
    }
    Ok(0)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::Number(n) => n
            .as_f64()
            .map(|f| {
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.4}")
                }
            })
            .unwrap_or_else(|| n.to_string()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A trial's emulation figures for the table: the figure that fits each output, and `(!)`
/// where the emulation departs beyond tolerance (the JSON and CSV say where and why).
fn fidelity_cell(v: &Value) -> String {
    match serde_json::from_value::<hlsfarm_common::results::Fidelity>(v.clone()) {
        Ok(f) if f.warning() => format!("{} (!)", f.figures()),
        Ok(f) => f.figures(),
        Err(_) => cell(&v["max_abs_diff"]),
    }
}

/// The summary as an aligned table.
pub fn table(summary: &Value) -> String {
    let header = [
        "trial", "status", "rf", "io", "strategy", "LUT", "FF", "DSP", "BRAM", "latency", "II",
        "fidelity", "failure",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for entry in summary["results"].as_array().into_iter().flatten() {
        let r = &entry["result"];
        let c = &r["reports"]["csynth"];
        let name = Path::new(entry["output_dir"].as_str().unwrap_or_default())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push(vec![
            name,
            cell(&entry["status"]),
            cell(&r["settings"]["reuse_factor"]),
            cell(&r["settings"]["io_type"]),
            cell(&r["settings"]["strategy"]),
            cell(&c["used"]["lut"]),
            cell(&c["used"]["ff"]),
            cell(&c["used"]["dsp"]),
            cell(&c["used"]["bram_18k"]),
            cell(&c["latency_worst_cycles"]),
            cell(&c["interval_max_cycles"]),
            fidelity_cell(&r["fidelity"]),
            r["failure"]["class"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(
        out,
        "{} trials: {} succeeded, {} failed",
        cell(&summary["total"]),
        cell(&summary["successful"]),
        cell(&summary["failed"])
    );
    out
}
