//! A one-host run's history of what trials cost (DESIGN §4.3): one JSON line per trial in
//! the output folder's `.hlsfarm/history.jsonl`, read at the start of every run (a resumed
//! or later run in the same folder orders its trials by what the earlier ones cost), and
//! the estimator fitted on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use hlsfarm_common::estimate::{
    Estimator, Features, HISTORY_LIMIT, History, LIMIT_FLOOR_S, LIMIT_MULTIPLE, Observation,
    StageLimit,
};
use hlsfarm_common::results::TrialResult;
use hlsfarm_common::stage::Stage;

/// The history and its fit.
pub(super) struct Learned {
    path: PathBuf,
    history: History,
    pub(super) estimator: Estimator,
    /// Multiple of a learned stage's 99.9th-percentile duration it may run on a first
    /// attempt (`--learned-limit-multiple`; 0: no learned limits).
    pub(super) limit_multiple: f64,
    /// The trial memory limit was given (`--trial-memory-mib`): predictions do not raise it.
    pub(super) memory_explicit: bool,
}

/// What a trial runs with by the estimates: its memory reservation and tool stages' limits.
pub(super) struct Admission {
    pub(super) memory_mib: u64,
    pub(super) stage_limits: Vec<StageLimit>,
}

impl Learned {
    /// The history at `path` (none yet when it does not exist; lines that do not parse are
    /// skipped). A file grown past twice the limit is rewritten with the newest.
    pub(super) fn load(path: &Path) -> Learned {
        let lines: Vec<Observation> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let long = lines.len() > 2 * HISTORY_LIMIT;
        let mut history = History::new(lines);
        if long {
            let text: String = history
                .iter()
                .filter_map(|o| serde_json::to_string(o).ok())
                .map(|l| l + "\n")
                .collect();
            if let Err(e) = std::fs::write(path, text) {
                tracing::warn!(path = %path.display(), error = %e, "cannot shorten the history");
            }
        }
        let estimator = history.fit();
        Learned {
            path: path.to_owned(),
            history,
            estimator,
            limit_multiple: LIMIT_MULTIPLE,
            memory_explicit: false,
        }
    }

    /// What attempt `attempt` of a trial with `features` running `stages` reserves and runs
    /// under: the larger of `default` and its predicted peak (unless the limit was given),
    /// within `total`; learned stage limits on a first attempt.
    pub(super) fn admit(
        &self,
        features: &Features,
        stages: &[Stage],
        attempt: u32,
        default: u64,
        total: u64,
    ) -> Admission {
        let prediction = self.estimator.predict(features, stages);
        let memory_mib = match prediction.memory_mib {
            Some(m) if !self.memory_explicit => default.max(m).min(total.max(default)),
            _ => default,
        };
        let stage_limits = if attempt <= 1 {
            self.estimator
                .stage_limits(features, stages, self.limit_multiple, LIMIT_FLOOR_S as f64)
        } else {
            Vec::new()
        };
        Admission {
            memory_mib,
            stage_limits,
        }
    }

    /// Records what `result` cost (a model of `size_bytes`) and refits.
    pub(super) fn observe(&mut self, result: &TrialResult, size_bytes: u64) {
        let Some(o) = Observation::from_result(result, size_bytes) else {
            return;
        };
        let appended = serde_json::to_string(&o)
            .map_err(std::io::Error::other)
            .and_then(|line| {
                if let Some(dir) = self.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?;
                writeln!(f, "{line}")
            });
        if let Err(e) = appended {
            // The estimates are an optimisation: the run goes on without this line.
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record what the trial cost");
        }
        self.history.push(o);
        self.estimator = self.history.fit();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use hlsfarm_common::results::{StageTiming, TrialResult};
    use hlsfarm_common::settings::Settings;
    use hlsfarm_common::stage::Stage;

    use super::Learned;

    #[test]
    fn the_history_survives_the_run_and_feeds_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".hlsfarm/history.jsonl");
        let mut learned = Learned::load(&path);
        assert_eq!(learned.estimator.observations, 0);
        for rf in 1..=10u32 {
            let mut r = TrialResult::noop(
                "k",
                "m.h5",
                Settings {
                    reuse_factor: rf,
                    ..Settings::default()
                },
            );
            r.timings = vec![StageTiming {
                stage: Stage::Convert,
                seconds: 10.0 / f64::from(rf),
                peak_memory_mib: 700,
                cpu_seconds: None,
            }];
            learned.observe(&r, 10_000);
        }
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).unwrap() + "not json\n",
        )
        .unwrap();
        let again = Learned::load(&path);
        assert_eq!(again.estimator.observations, 10);
        assert_eq!(again.estimator.learned_stages(), [Stage::Convert]);
    }

    #[test]
    fn a_trial_predicted_to_peak_high_reserves_its_prediction_and_a_first_try_gets_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut learned = Learned::load(&dir.path().join("history.jsonl"));
        let settings = |rf: u32| Settings {
            reuse_factor: rf,
            ..Settings::default()
        };
        for i in 0..12u32 {
            let mut r = TrialResult::noop("k", "m.h5", settings(1 << (i % 4)));
            r.timings = vec![
                StageTiming {
                    stage: Stage::Convert,
                    seconds: 5.0,
                    peak_memory_mib: 6000 + u64::from(i % 3) * 30,
                    cpu_seconds: None,
                },
                StageTiming {
                    stage: Stage::Csynth,
                    seconds: 60.0 + f64::from(i % 3),
                    peak_memory_mib: 9000 + u64::from(i % 3) * 30,
                    cpu_seconds: None,
                },
            ];
            learned.observe(&r, 10_000);
        }
        let stages = [Stage::Convert, Stage::Csynth];
        let features = learned.estimator.features("k", 10_000, &settings(2), "");
        let first = learned.admit(&features, &stages, 1, 4096, 65_536);
        assert!(first.memory_mib >= 9000, "{}", first.memory_mib);
        assert_eq!(first.stage_limits.len(), 1);
        assert_eq!(first.stage_limits[0].stage, Stage::Csynth);
        assert_eq!(first.stage_limits[0].seconds, 1800.0, "the floor");
        let retry = learned.admit(&features, &stages, 2, 4096, 65_536);
        assert!(retry.stage_limits.is_empty());
        assert_eq!(
            learned.admit(&features, &stages, 1, 4096, 8192).memory_mib,
            8192,
            "never above the host"
        );
        learned.memory_explicit = true;
        assert_eq!(
            learned
                .admit(&features, &stages, 1, 4096, 65_536)
                .memory_mib,
            4096
        );
        learned.limit_multiple = 0.0;
        assert!(
            learned
                .admit(&features, &stages, 1, 4096, 65_536)
                .stage_limits
                .is_empty()
        );
    }
}
