//! `hlsfarm run --follow`: the model folder watched while a search writes it. A file matching
//! the pattern is taken once it is complete: not empty, and its size and modification time
//! unchanged over two looks at least 2 s after its last change. Following ends when the
//! search's `trials_summary.json` appears (and every file seen has been taken), after a
//! given number of models, or on Ctrl-C.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use super::{Planner, SearchSource};

/// How long a file must be unchanged before it is taken.
const SETTLE: Duration = Duration::from_secs(2);

/// What to follow and when to stop.
pub(super) struct Follow {
    pub(super) dir: PathBuf,
    pub(super) pattern: String,
    pub(super) count: Option<usize>,
    pub(super) stop: CancellationToken,
}

impl Follow {
    /// Follows the folder until it ends; the runner's slots end when its queue is empty.
    pub(super) async fn run(
        self,
        runner: Arc<Runner>,
        planner: Arc<Planner>,
        search: SearchSource,
        force: bool,
    ) -> anyhow::Result<()> {
        let outcome = self.follow(&runner, &planner, &search, force).await;
        runner.open.store(false, Ordering::SeqCst);
        outcome
    }

    async fn follow(
        &self,
        runner: &Runner,
        planner: &Planner,
        search: &SearchSource,
        force: bool,
    ) -> anyhow::Result<()> {
        let pattern = glob::Pattern::new(&self.pattern)
            .map_err(|e| anyhow::anyhow!("--pattern `{}`: {}", self.pattern, e.msg))?;
        let mut looked: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        let mut taken: HashSet<PathBuf> = HashSet::new();
        let why = loop {
            let mut ready = Vec::new();
            let mut pending = 0usize;
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&self.dir)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.dir.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.file_name()
                            .is_some_and(|n| pattern.matches(&n.to_string_lossy()))
                })
                .collect();
            entries.sort();
            for path in entries {
                if taken.contains(&path) {
                    continue;
                }
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let now = (
                    meta.len(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                );
                let settled = now.1.elapsed().is_ok_and(|age| age >= SETTLE);
                if now.0 > 0 && settled && looked.get(&path) == Some(&now) {
                    ready.push(path);
                } else {
                    looked.insert(path, now);
                    pending += 1;
                }
            }
            if !ready.is_empty() {
                let table = search.load_or_warn();
                for path in ready {
                    if self.count.is_some_and(|n| taken.len() >= n) {
                        break;
                    }
                    let model = path.canonicalize().unwrap_or(path.clone());
                    taken.insert(path);
                    let plans = match planner.plan(taken.len() - 1, &model, &table) {
                        Ok(plans) => plans,
                        Err(e) => {
                            runner.progress.println(&format!(
                                "hlsfarm: {}: not taken: {e:#}",
                                model.display()
                            ));
                            continue;
                        }
                    };
                    let n = plans.len();
                    let to_run: Vec<_> = {
                        let mut funnel = runner.funnel();
                        plans
                            .into_iter()
                            .filter_map(|p| funnel.add(p, force))
                            .collect()
                    };
                    runner.progress.println(&format!(
                        "hlsfarm: new model {}: {n} trials ({} to run)",
                        model.file_name().unwrap_or_default().to_string_lossy(),
                        to_run.len()
                    ));
                    runner.submit(to_run).await?;
                }
            }
            if let Some(n) = self.count
                && taken.len() >= n
            {
                break format!("{n} models taken (--follow-count)");
            }
            if pending == 0 && self.dir.join("trials_summary.json").is_file() {
                break "the search wrote trials_summary.json".to_owned();
            }
            tokio::select! {
                () = self.stop.cancelled() => break "stopped".to_owned(),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        runner.progress.println(&format!(
            "hlsfarm: no longer following {}: {why}; {} models taken",
            self.dir.display(),
            taken.len()
        ));
        Ok(())
    }
}
