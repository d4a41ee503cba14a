//! `hlsfarm submit --follow`: the sweep is submitted open with the first models that arrive,
//! then each model the search writes is uploaded and added to it (`AddModels`) as it
//! arrives, so the cluster works while the search runs. When following ends (the search's
//! summary, `--follow-count`, Ctrl-C) the last call sends the search's records of every
//! model taken (a search writes its metrics late) and closes the sweep: only then do its
//! gates decide and its aggregate get written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hlsfarm_proto::v1;

use crate::cli::client::{Client, SearchRecords, Uploads, search_json, status_error};
use crate::cli::sweep_args::SearchSource;
use crate::folder_watch::{EVERY, FolderWatch};

/// How long a call is retried while the coordinator is unreachable (a restart, a blip).
const RETRY_FOR: Duration = Duration::from_secs(120);

/// The folder followed for a cluster sweep.
pub(crate) struct Follower {
    watch: FolderWatch,
    /// Why following ended, when it ended before the sweep was submitted.
    ended: Option<String>,
}

/// Waits for Ctrl-C (never, where the signal cannot be listened to).
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Follower {
    pub(crate) fn new(dir: &Path, pattern: &str, count: Option<usize>) -> anyhow::Result<Self> {
        Ok(Follower {
            watch: FolderWatch::new(dir, pattern, count)?,
            ended: None,
        })
    }

    /// The models the sweep is submitted with: the first that are complete (waiting for
    /// one to arrive).
    pub(crate) async fn first_models(&mut self) -> anyhow::Result<Vec<PathBuf>> {
        eprintln!(
            "hlsfarm: following {} (ends when trials_summary.json appears, on --follow-count, or on Ctrl-C); the sweep is submitted when the first model is complete",
            self.watch.dir().display()
        );
        loop {
            let look = self.watch.look()?;
            self.ended = look.end;
            if !look.ready.is_empty() {
                return Ok(look.ready);
            }
            if let Some(why) = &self.ended {
                anyhow::bail!(
                    "no model arrived in {} before following ended ({why}); nothing submitted",
                    self.watch.dir().display()
                );
            }
            tokio::select! {
                () = ctrl_c() => anyhow::bail!("stopped before any model arrived; nothing submitted"),
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// Adds each new model to `sweep` until following ends, then closes it.
    pub(crate) async fn run(
        mut self,
        client: &mut Client,
        coordinator: &str,
        sweep: &str,
        uploads: &Uploads<'_>,
        source: &SearchSource,
        mut taken: Vec<PathBuf>,
    ) -> anyhow::Result<()> {
        let why = loop {
            if let Some(why) = self.ended.take() {
                break why;
            }
            tokio::select! {
                () = ctrl_c() => break "stopped (Ctrl-C)".to_owned(),
                () = tokio::time::sleep(EVERY) => {}
            }
            let look = self.watch.look()?;
            if !look.ready.is_empty() {
                let table = source.load_or_warn();
                let (models, search) = uploads
                    .models(client, coordinator, &look.ready, &table)
                    .await?;
                let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
                let answer = add(client, coordinator, sweep, models, &search, false).await?;
                eprintln!(
                    "hlsfarm: new model{} {}: {} trials ({} queued, {} reused)",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    answer.trials,
                    answer.queued,
                    answer.reused
                );
                taken.extend(look.ready);
            }
            self.ended = look.end;
        };
        // The search's records of every model taken, as the search has them now.
        let table = source.load_or_warn();
        let search: SearchRecords = taken
            .iter()
            .filter_map(|p| {
                let name = p.file_name()?.to_string_lossy().into_owned();
                table.lookup(&name).map(|info| (name, info))
            })
            .collect();
        add(client, coordinator, sweep, Vec::new(), &search, true).await?;
        eprintln!(
            "hlsfarm: no longer following {}: {why}; {} models taken; sweep {sweep} closed (its gates and aggregate run when its trials end)",
            self.watch.dir().display(),
            taken.len()
        );
        Ok(())
    }
}

/// One `AddModels` call, retried while the coordinator is unreachable. A retry of a call
/// that did land finds its models in the sweep already, which counts as done.
async fn add(
    client: &mut Client,
    coordinator: &str,
    sweep: &str,
    models: Vec<v1::ModelInput>,
    search: &SearchRecords,
    done: bool,
) -> anyhow::Result<v1::SubmitSweepResponse> {
    let request = v1::AddModelsRequest {
        sweep_id: sweep.to_owned(),
        models,
        search_json: search_json(search)?,
        done,
    };
    let started = std::time::Instant::now();
    let mut retried = false;
    loop {
        match client.add_models(request.clone()).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(s)
                if retried
                    && s.code() == tonic::Code::InvalidArgument
                    && s.message().contains("in the sweep already") =>
            {
                return Ok(v1::SubmitSweepResponse {
                    sweep_id: sweep.to_owned(),
                    ..Default::default()
                });
            }
            Err(s)
                if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
                    && started.elapsed() < RETRY_FOR =>
            {
                tracing::warn!(error = %s.message(), "adding models: retrying in 2 s");
                retried = true;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(s) => return Err(status_error(s, coordinator)),
        }
    }
}
