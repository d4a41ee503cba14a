//! `hlsfarm check`: preflight without synthesis. Each model of the selection is converted
//! with hls4ml for each settings point (no emulation, no tools), and what the tools would
//! refuse or struggle with is printed: arrays partitioned above `max_array_partition_size`,
//! reuse factors hls4ml changes, io_parallel designs too large to compile in reasonable time.

use std::collections::HashMap;
use std::time::Duration;

use hlsfarm_common::settings::{Settings, merge_fixes};

use hlsfarm_worker::driver::{self, DriverEnv, ModelFiles, Tolerance};

use crate::cli::sweep_args::{SweepArgs, model_files, sweep_spec};

/// Arguments of `hlsfarm check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Which models and settings (the same flags as `run`).
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// Python of the hls4ml venv [default: $HLSFARM_PYTHON, else the venv `make setup` made].
    #[arg(long, value_name = "PATH")]
    pub python: Option<std::path::PathBuf>,
}

/// The driver's environment for preflight: conversion only, no memory limit.
fn preflight_env(python: &std::path::Path) -> DriverEnv {
    DriverEnv {
        python: python.to_owned(),
        by_format: hlsfarm_worker::venv::format_pythons(),
        timeout: Duration::from_secs(1800),
        memory_limit_mib: None,
        tolerance: Tolerance::default(),
        strict: false,
        warm: None,
    }
}

/// Every (model, point) pair, with the id `model index/point index`.
fn preflight_items<'a>(
    files: &'a [ModelFiles],
    points: &'a [Settings],
) -> Vec<driver::PreflightItem<'a>> {
    let mut items = Vec::new();
    for (m, model) in files.iter().enumerate() {
        for (p, point) in points.iter().enumerate() {
            items.push(driver::PreflightItem {
                id: format!("{m}/{p}"),
                model,
                settings: point,
            });
        }
    }
    items
}

/// A settings point as the findings print it.
fn point_label(point: &Settings) -> String {
    format!(
        "{} {} rf{} {} {}{}",
        point.io_type,
        point.strategy,
        point.reuse_factor,
        point.precision,
        point.part,
        point
            .max_array_partition_size
            .map(|m| format!(" max{m}"))
            .unwrap_or_default()
    )
}

/// What preflight found over a selection.
pub(crate) struct Checked {
    /// (model, settings point) pairs checked.
    pub(crate) checked: usize,
    /// Findings the tools would refuse.
    pub(crate) errors: usize,
    /// Pairs that do not convert.
    pub(crate) failed: usize,
}

impl Checked {
    /// The closing line.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} checked: {} finding(s) the tools would refuse, {} not converting",
            self.checked, self.errors, self.failed
        )
    }
}

/// Preflight of every model and settings point of the selection, each finding given to
/// `say` as a line (with its fix on a line of its own).
pub(crate) async fn check_selection(
    sweep: &SweepArgs,
    python: Option<&std::path::Path>,
    say: impl Fn(&str),
) -> anyhow::Result<Checked> {
    let (spec, base) = sweep_spec(sweep)?;
    let models = spec.models.resolve(&base)?;
    let python = hlsfarm_worker::venv::find_python(python).map_err(anyhow::Error::msg)?;
    let env = preflight_env(&python);
    let scratch = tempfile::Builder::new()
        .prefix("hlsfarm-check-")
        .tempdir()?;
    let points = spec.grid.expand();
    let mut files = Vec::new();
    for model in &models {
        files.push(model_files(&model.canonicalize()?, sweep)?.0);
    }
    let items = preflight_items(&files, &points);
    let answers = driver::preflight_batch(&env, &items, scratch.path())
        .await
        .map_err(|f| anyhow::anyhow!("preflight failed: {}", f.reason))?;
    let (mut errors, mut failed) = (0usize, 0usize);
    for (m, model) in models.iter().enumerate() {
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (p, point) in points.iter().enumerate() {
            let label = format!("{name} [{}]", point_label(point));
            match answers.get(&format!("{m}/{p}")) {
                Some(Ok(findings)) if findings.is_empty() => say(&format!("{label}: ok")),
                Some(Ok(findings)) => {
                    for f in findings {
                        errors += usize::from(f.is_error());
                        say(&format!(
                            "{label}: {} {}: {}",
                            f.severity, f.rule, f.message
                        ));
                        if let Some(s) = &f.suggestion {
                            say(&format!("    fix: {s}"));
                        }
                    }
                }
                Some(Err(e)) => {
                    failed += 1;
                    say(&format!(
                        "{label}: does not convert ({}): {}",
                        e.class, e.reason
                    ));
                    if let Some(s) = &e.suggestion {
                        say(&format!("    fix: {s}"));
                    }
                }
                None => {
                    failed += 1;
                    say(&format!("{label}: no answer from the driver"));
                }
            }
        }
    }
    Ok(Checked {
        checked: models.len() * points.len(),
        errors,
        failed,
    })
}

/// Prints the findings per model and settings point; exit code 0 when nothing would be
/// refused, 1 when a finding is an error or a model does not convert.
pub async fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let checked = check_selection(&args.sweep, args.python.as_deref(), |line| {
        println!("{line}")
    })
    .await?;
    println!("{}", checked.summary());
    Ok(if checked.errors > 0 || checked.failed > 0 {
        1
    } else {
        0
    })
}

/// A settings point with preflight's fixes applied, what changed, and the findings answered.
pub(crate) type Fixed = (
    Settings,
    std::collections::BTreeMap<String, serde_json::Value>,
    Vec<String>,
);

/// `run --fix`: preflight of every (model, point) before anything is queued; for each point
/// whose findings the tools would refuse and that carry a fix (the max_array_partition_size
/// a partition needs, a layer's reuse factor within the unroll limit), the settings with the
/// fix applied, by
/// (model index, point index).
pub(crate) async fn preflight_fixes(
    files: &[ModelFiles],
    points: &[Settings],
    python: &std::path::Path,
    scratch: &std::path::Path,
) -> anyhow::Result<HashMap<(usize, usize), Fixed>> {
    let env = preflight_env(python);
    let items = preflight_items(files, points);
    let answers = driver::preflight_batch(&env, &items, scratch)
        .await
        .map_err(|f| anyhow::anyhow!("preflight failed: {}", f.reason))?;
    let mut out = HashMap::new();
    for m in 0..files.len() {
        for (p, point) in points.iter().enumerate() {
            let Some(Ok(findings)) = answers.get(&format!("{m}/{p}")) else {
                continue; // a model that does not convert fails as its trial runs
            };
            let mut fix = std::collections::BTreeMap::new();
            let mut answered = Vec::new();
            for f in findings.iter().filter(|f| f.is_error()) {
                let Some(changes) = &f.fix else { continue };
                merge_fixes(&mut fix, changes);
                answered.push(f.message.clone());
            }
            if fix.is_empty() {
                continue;
            }
            let fixed = point
                .with_fix(&fix)
                .map_err(|e| anyhow::anyhow!("preflight's {e}"))?;
            out.insert((m, p), (fixed, fix, answered));
        }
    }
    Ok(out)
}
