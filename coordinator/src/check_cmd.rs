//! `hlsfarm check`: preflight without synthesis. Each model of the selection is converted
//! with hls4ml for each settings point (no emulation, no tools), and what the tools would
//! refuse or struggle with is printed: arrays partitioned above `max_array_partition_size`,
//! reuse factors hls4ml changes, io_parallel designs too large to compile in reasonable time.

use std::time::Duration;

use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_worker::driver::{self, DriverEnv, Job, ModelFiles, Tolerance};
use tokio_util::sync::CancellationToken;

use crate::onehost::{SweepArgs, model_companions, sweep_spec};

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

/// Prints the findings per model and settings point; exit code 0 when nothing would be
/// refused, 1 when a finding is an error or a model does not convert.
pub async fn run(args: CheckArgs) -> anyhow::Result<i32> {
    let (spec, base) = sweep_spec(&args.sweep)?;
    let models = spec.models.resolve(&base)?;
    let python =
        hlsfarm_worker::venv::find_python(args.python.as_deref()).map_err(anyhow::Error::msg)?;
    let env = DriverEnv {
        python,
        by_format: hlsfarm_worker::venv::format_pythons(),
        timeout: Duration::from_secs(1800),
        memory_limit_mib: None,
        tolerance: Tolerance::default(),
        strict: false,
    };
    let scratch = tempfile::Builder::new()
        .prefix("hlsfarm-check-")
        .tempdir()?;
    let points = spec.grid.expand();
    let emulation = EmulationSpec::default();
    let (mut errors, mut failed) = (0usize, 0usize);
    for (m, model) in models.iter().enumerate() {
        let companions = model_companions(model, &args.sweep)?;
        let files = ModelFiles {
            weights: companions.get("weights").cloned(),
            class_file: companions.get("class").cloned(),
            ..ModelFiles::auto(model.canonicalize()?)
        };
        let name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (p, point) in points.iter().enumerate() {
            let work = scratch.path().join(format!("{m}-{p}"));
            let job = Job {
                model: &files,
                settings: point,
                emulate: false,
                emulation: &emulation,
                inputs: None,
                work_dir: &work,
                project_name: "myproject",
            };
            let label = format!(
                "{name} [{} {} rf{} {} {}{}]",
                point.io_type,
                point.strategy,
                point.reuse_factor,
                point.precision,
                point.part,
                point
                    .max_array_partition_size
                    .map(|m| format!(" max{m}"))
                    .unwrap_or_default()
            );
            match driver::convert(&env, &job, &CancellationToken::new()).await {
                Ok(c) if c.preflight.is_empty() => println!("{label}: ok"),
                Ok(c) => {
                    for f in &c.preflight {
                        errors += usize::from(f.is_error());
                        println!("{label}: {} {}: {}", f.severity, f.rule, f.message);
                        if let Some(s) = &f.suggestion {
                            println!("    fix: {s}");
                        }
                    }
                }
                Err(e) => {
                    failed += 1;
                    println!("{label}: does not convert ({}): {}", e.class, e.reason);
                    if let Some(s) = &e.suggestion {
                        println!("    fix: {s}");
                    }
                }
            }
        }
    }
    let checked = models.len() * points.len();
    println!(
        "{checked} checked: {errors} finding(s) the tools would refuse, {failed} not converting"
    );
    Ok(if errors > 0 || failed > 0 { 1 } else { 0 })
}
