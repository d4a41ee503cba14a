//! A one-host run's history of what trials cost (DESIGN §4.3): one JSON line per trial in
//! the output folder's `.hlsfarm/history.jsonl`, read at the start of every run (a resumed
//! or later run in the same folder orders its trials by what the earlier ones cost), and
//! the estimator fitted on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use hlsfarm_common::estimate::{Estimator, HISTORY_LIMIT, History, Observation};
use hlsfarm_common::results::TrialResult;

/// The history and its fit.
pub(super) struct Learned {
    path: PathBuf,
    history: History,
    pub(super) estimator: Estimator,
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
}
