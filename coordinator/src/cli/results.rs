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
/// `synthesis_results.json`), ranked by `rank`'s objectives when given (empty: the default
/// objectives); returns the exit code.
pub fn run(path: &Path, format: Format, rank: Option<&str>) -> anyhow::Result<i32> {
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
    if let Some(objectives) = rank {
        let summary: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", json_path.display()))?;
        let objectives = if objectives.trim().is_empty() {
            None
        } else {
            Some(
                hlsfarm_common::select::parse_objectives(objectives)
                    .map_err(|e| anyhow::anyhow!("--rank: {e}"))?,
            )
        };
        let (table, _) = ranked(&summary, objectives)?;
        print!("{table}");
        return Ok(0);
    }
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

/// The trials of a summary, ranked by Pareto tier over `objectives` (default: accuracy, LUT
/// and latency where known) as a table, and the objectives used.
pub fn ranked(
    summary: &Value,
    objectives: Option<Vec<hlsfarm_common::select::Objective>>,
) -> anyhow::Result<(String, Vec<hlsfarm_common::select::Objective>)> {
    use hlsfarm_common::results::TrialResult;
    use hlsfarm_common::select::{default_objectives, metric, rank};
    let entries: Vec<&Value> = summary["results"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let results: Vec<TrialResult> = entries
        .iter()
        .map(|e| serde_json::from_value(e["result"].clone()))
        .collect::<Result<_, _>>()
        .context("synthesis_results.json holds a result this hlsfarm cannot read")?;
    let refs: Vec<&TrialResult> = results.iter().collect();
    let objectives = objectives.unwrap_or_else(|| default_objectives(&refs));
    if objectives.is_empty() {
        anyhow::bail!(
            "nothing to rank by: the trials have no accuracy, search metric, LUT or parameters; give --rank OBJECTIVES"
        );
    }
    let (order, left) = rank(&refs, &objectives);
    let mut header = vec!["rank".to_owned(), "tier".to_owned(), "trial".to_owned()];
    header.extend(objectives.iter().map(ToString::to_string));
    header.push("status".to_owned());
    let mut rows = vec![header];
    let row = |i: usize, place: Option<(usize, u32)>| {
        let name = Path::new(entries[i]["output_dir"].as_str().unwrap_or_default())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut out = vec![
            place.map_or("-".to_owned(), |(n, _)| n.to_string()),
            place.map_or("-".to_owned(), |(_, t)| t.to_string()),
            name,
        ];
        out.extend(objectives.iter().map(|o| {
            metric(&results[i], &o.metric)
                .map(|v| cell(&Value::from(v)))
                .unwrap_or_else(|| "-".to_owned())
        }));
        out.push(cell(&entries[i]["status"]));
        out
    };
    for (n, (i, tier)) in order.iter().enumerate() {
        rows.push(row(*i, Some((n + 1, *tier))));
    }
    let unranked = left.len();
    for i in left {
        rows.push(row(i, None));
    }
    let mut out = aligned(&rows);
    let _ = writeln!(
        out,
        "{} ranked by {}{}",
        order.len(),
        objectives
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if unranked > 0 {
            format!("; {unranked} not ranked (failed, or missing an objective)")
        } else {
            String::new()
        }
    );
    Ok((out, objectives))
}

fn aligned(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
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
    out
}

/// A trial's accuracy for the table: `float -> fixed` on the validation set.
fn accuracy_cell(v: &Value) -> String {
    match (v["float"].as_f64(), v["hls"].as_f64()) {
        (Some(f), Some(h)) => format!("{f:.4}->{h:.4}"),
        (Some(f), None) => format!("{f:.4}"),
        _ => "-".to_owned(),
    }
}

/// The summary as an aligned table.
pub fn table(summary: &Value) -> String {
    let entries: Vec<&Value> = summary["results"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let any = |f: &dyn Fn(&Value) -> bool| entries.iter().any(|e| f(e));
    let with_accuracy = any(&|e| !e["result"]["accuracy"].is_null());
    let with_search = any(&|e| !e["result"]["search"]["metrics"]["val_accuracy"].is_null());
    let with_selection = any(&|e| e["selection"].as_array().is_some_and(|s| !s.is_empty()));
    let mut header = vec![
        "trial", "status", "rf", "io", "strategy", "LUT", "FF", "DSP", "BRAM", "latency", "II",
        "fidelity",
    ];
    if with_search {
        header.push("val_accuracy");
    }
    if with_accuracy {
        header.push("accuracy");
    }
    if with_selection {
        header.push("selection");
    }
    header.push("failure");
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for entry in entries {
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
        ]);
        let row = rows.last_mut().expect("pushed above");
        if with_search {
            row.push(cell(&r["search"]["metrics"]["val_accuracy"]));
        }
        if with_accuracy {
            row.push(accuracy_cell(&r["accuracy"]));
        }
        if with_selection {
            row.push(
                entry["selection"]
                    .as_array()
                    .and_then(|s| s.last())
                    .map(|d| {
                        if d["promoted_for"].is_string() {
                            "promoted".to_owned()
                        } else {
                            cell(&d["role"])
                        }
                    })
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        row.push(r["failure"]["class"].as_str().unwrap_or("").to_owned());
    }
    let mut out = aligned(&rows);
    let _ = writeln!(
        out,
        "{} trials: {} succeeded, {} failed",
        cell(&summary["total"]),
        cell(&summary["successful"]),
        cell(&summary["failed"])
    );
    out
}
