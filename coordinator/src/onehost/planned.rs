//! One planned trial of a one-host run: its key, folders and spec, the folder name that says
//! which settings it runs, its line in the run's output, and a trial derived with a fix.

use std::path::{Path, PathBuf};

use hlsfarm_common::estimate::{Estimator, Features};
use hlsfarm_common::queue::NewTrial;
use hlsfarm_common::results::{TrialResult, TrialStatus};
use hlsfarm_common::settings::Settings;
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::{ModelDigest, Toolchain, TrialKeyInput};
use hlsfarm_worker::trial::TrialSpec;

/// One planned trial.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub(super) key: String,
    pub(super) model_path: PathBuf,
    pub(super) spec: TrialSpec,
    /// What its key is made of besides the settings: a derived trial's key needs them too.
    pub(super) digest: ModelDigest,
    pub(super) toolchain: Toolchain,
}

impl Planned {
    /// It as the embedded queue takes it: key and cost, the cost as `estimator` predicts
    /// it (the cluster's static formula before this output folder has any history), so both
    /// modes put a sweep's longest trials first alike.
    pub(super) fn queued(&self, estimator: &Estimator) -> NewTrial {
        NewTrial {
            key: self.key.clone(),
            cost: estimator
                .predict(&self.features(estimator), &self.spec.stages)
                .seconds,
            payload: serde_json::Value::Null,
            needs: Default::default(),
        }
    }

    /// Its features as `estimator` sees them.
    pub(super) fn features(&self, estimator: &Estimator) -> Features {
        let tool = hlsfarm_common::estimate::tool_label(&self.toolchain);
        estimator.features(
            &self.digest.sha256,
            self.model_size(),
            &self.spec.settings,
            &tool,
        )
    }

    /// The model file's size, bytes.
    pub(super) fn model_size(&self) -> u64 {
        std::fs::metadata(&self.model_path).map_or(1, |m| m.len())
    }

    /// The same trial cut to its stages up to `last` (a funnel's phase before a gate): its
    /// own key, the same folders.
    pub(super) fn up_to(&self, last: Stage) -> Planned {
        let stages: Vec<Stage> = self
            .spec
            .stages
            .iter()
            .copied()
            .filter(|s| *s <= last)
            .collect();
        let key = TrialKeyInput {
            model: &self.digest,
            settings: &self.spec.settings,
            stages: &stages,
            emulation: &self.spec.emulation,
            toolchain: &self.toolchain,
        }
        .key()
        .to_hex();
        let mut spec = self.spec.clone();
        spec.stages = stages;
        spec.trial_key = key.clone();
        Planned {
            key,
            model_path: self.model_path.clone(),
            spec,
            digest: self.digest.clone(),
            toolchain: self.toolchain.clone(),
        }
    }

    /// The folder name, e.g. `hls_model_trial_3_rf4`.
    pub(super) fn name(&self) -> String {
        self.spec
            .output_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    }

    /// `on_failure = "apply-fix"`: this failed trial's settings with `fix` applied, as a
    /// derived trial (its own key, its folder ending in `_fixed`, `derived_from` naming this
    /// one), or why the fix does not apply.
    pub(super) fn derive(
        &self,
        fix: &std::collections::BTreeMap<String, serde_json::Value>,
        reason: &str,
    ) -> Result<Planned, String> {
        let settings = self.spec.settings.with_fix(fix)?;
        let key = TrialKeyInput {
            model: &self.digest,
            settings: &settings,
            stages: &self.spec.stages,
            emulation: &self.spec.emulation,
            toolchain: &self.toolchain,
        }
        .key()
        .to_hex();
        let name = format!(
            "{}_fixed",
            self.spec
                .output_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
        );
        let parent = self.spec.output_dir.parent().unwrap_or(Path::new("."));
        let scratch_root = self.spec.scratch.parent().unwrap_or(Path::new("."));
        let mut spec = self.spec.clone();
        spec.derived_from = Some(hlsfarm_common::results::DerivedFrom {
            trial_key: self.key.clone(),
            settings: self.spec.settings.clone(),
            fix: fix.clone(),
            findings: vec![reason.to_owned()],
        });
        spec.settings = settings;
        spec.trial_key = key.clone();
        spec.scratch = scratch_root.join(&key[..16]);
        spec.tarball = parent.join(format!("{name}.tar.gz"));
        spec.output_dir = parent.join(&name);
        Ok(Planned {
            key,
            model_path: self.model_path.clone(),
            spec,
            digest: self.digest.clone(),
            toolchain: self.toolchain.clone(),
        })
    }
}

/// Each setting as it appears in a folder name.
pub(super) fn labels(s: &Settings) -> [String; 8] {
    let digits: Vec<&str> = s
        .precision
        .split(|c: char| !c.is_ascii_digit())
        .filter(|d| !d.is_empty())
        .collect();
    [
        s.io_type.as_str().trim_start_matches("io_").to_owned(),
        s.strategy.to_string(),
        format!("rf{}", s.reuse_factor),
        format!("p{}", digits.join("-")),
        s.part.to_ascii_lowercase(),
        format!("clk{}", s.clock_period_ns),
        s.backend.to_string(),
        format!("max{}", s.max_array_partition_size.unwrap_or(4096)),
    ]
}

/// The readable suffix naming a settings point among the others of its grid: only the
/// fields that vary, e.g. `_stream_rf4`.
pub(super) fn suffix(point: &Settings, points: &[Settings]) -> String {
    let mine = labels(point);
    let all: Vec<[String; 8]> = points.iter().map(labels).collect();
    let parts: Vec<&str> = (0..mine.len())
        .filter(|&i| all.iter().any(|l| l[i] != mine[i]))
        .map(|i| mine[i].as_str())
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("_{}", parts.join("_"))
    }
}

/// A previous successful result with this key in `output_dir`, if any.
pub(super) fn finished_result(output_dir: &Path, key: &str) -> Option<TrialResult> {
    let bytes = std::fs::read(output_dir.join("result.json")).ok()?;
    let result: TrialResult = serde_json::from_slice(&bytes).ok()?;
    (result.trial_key == key && result.status == TrialStatus::Success).then_some(result)
}

pub(super) fn line_for(result: &TrialResult) -> String {
    let mut parts = vec![format!("{:?}", result.status).to_lowercase()];
    let seconds = result.timings.iter().fold(0.0, |sum, t| sum + t.seconds);
    parts.push(format!("in {seconds:.1} s"));
    if let Some(c) = &result.reports.csynth {
        if let Some(lut) = c.used.lut {
            parts.push(format!("LUT {lut}"));
        }
        if let Some(lat) = c.latency_worst_cycles {
            parts.push(format!("latency {lat} cycles"));
        }
    }
    if let Some(f) = &result.fidelity {
        parts.push(f.headline());
    }
    for note in &result.notes {
        parts.push(format!("({note})"));
    }
    for finding in &result.preflight {
        parts.push(format!(
            "preflight {}: {}",
            finding.severity, finding.message
        ));
    }
    if let Some(f) = &result.failure {
        parts.push(format!("{}: {}", f.class, f.reason));
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use hlsfarm_common::settings::{IoType, Settings};

    use super::suffix;

    #[test]
    fn suffixes_name_only_what_varies() {
        let a = Settings {
            reuse_factor: 1,
            ..Settings::default()
        };
        let b = Settings {
            reuse_factor: 4,
            io_type: IoType::Stream,
            ..Settings::default()
        };
        let points = vec![a.clone(), b.clone()];
        assert_eq!(suffix(&a, &points), "_parallel_rf1");
        assert_eq!(suffix(&b, &points), "_stream_rf4");
        assert_eq!(suffix(&a, std::slice::from_ref(&a)), "");
    }
}
