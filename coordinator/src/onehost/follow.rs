//! `hlsfarm run --follow`: the model folder watched while a search writes it (see
//! [`crate::folder_watch`] for when a file is taken and following ends), each new model's
//! trials queued on the run's slots as it arrives.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use super::{Planner, SearchSource};
use crate::folder_watch::FolderWatch;

/// What to follow and when to stop.
pub(super) struct Follow {
    pub(super) dir: PathBuf,
    pub(super) pattern: String,
    pub(super) count: Option<usize>,
    pub(super) stop: CancellationToken,
    /// Models taken (each model's index in the run).
    pub(super) taken: AtomicUsize,
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
        let mut watch = FolderWatch::new(&self.dir, &self.pattern, self.count)?;
        let why = loop {
            let look = watch.look()?;
            if !look.ready.is_empty() {
                let table = search.load_or_warn();
                for model in look.ready {
                    let index = self.taken.fetch_add(1, Ordering::SeqCst);
                    let plans = match planner.plan(index, &model, &table) {
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
            if let Some(end) = look.end {
                break end;
            }
            tokio::select! {
                () = self.stop.cancelled() => break "stopped".to_owned(),
                () = tokio::time::sleep(crate::folder_watch::EVERY) => {}
            }
        };
        runner.progress.println(&format!(
            "hlsfarm: no longer following {}: {why}; {} models taken",
            self.dir.display(),
            watch.taken()
        ));
        Ok(())
    }
}
