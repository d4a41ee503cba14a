//! A sweep's summary as it stands (the trials it lists with their stored results): what the
//! aggregate writes when the sweep ends, and what the web page's live plot and ranking show
//! while it runs. Results of ended trials are kept in memory by (key, state, attempt, epoch),
//! so a live view reads from the store only what changed since it last looked.

use std::collections::HashMap;
use std::sync::Arc;

use hlsfarm_common::aggregate::{SeedEntry, SeedSummary};
use hlsfarm_common::blob::Blobs;
use hlsfarm_common::plan::SweepPlan;
use hlsfarm_common::results::TrialResult;
use hlsfarm_common::store::TrialRecord;

use super::{Coordinator, lock};

/// Results kept before the cache is emptied (a bound, not a tuning knob).
const KEEP: usize = 50_000;

/// A result is the same while its trial's state, attempt and epoch are.
type Version = (String, u32, u64);

/// Ended trials' results by key.
#[derive(Default)]
pub(super) struct ResultCache(std::sync::Mutex<HashMap<String, (Version, Arc<TrialResult>)>>);

fn version(r: &TrialRecord) -> Version {
    (r.state.clone(), r.attempt, r.epoch)
}

fn ended(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "dead" | "cancelled")
}

/// A sweep's summary and, for a funnel, the tool-stage runs its gates saved and all there
/// would have been.
pub(super) struct SweepSummary {
    pub summary: SeedSummary,
    pub saved: Option<(usize, usize)>,
}

impl Coordinator {
    /// The sweep's summary now: every trial it lists (a funnel's latest phase of each) with
    /// its stored result, or what Redis knows of a trial that left none.
    pub(super) async fn sweep_summary(
        &self,
        sweep: &str,
        plan: &SweepPlan,
    ) -> anyhow::Result<SweepSummary> {
        let trials = self.queue.sweep_trials(sweep).await?;
        let saved = (!plan.gates.is_empty()).then(|| {
            super::funnel::saved_tool_stages(plan, &trials, &self.phase_keys(sweep, plan))
        });
        let listed = self.listed_trials(sweep, plan, trials).await?;
        let mut entries = Vec::with_capacity(listed.len());
        for (record, reused, decisions) in listed {
            // Trials that never produced a result.json (dead after lost leases, cancelled)
            // are listed too, with what Redis knows.
            let result = match self.cached_result(plan, &record).await? {
                Some(r) => r,
                None => super::background::unreported(plan, &record),
            };
            let dir = Blobs::result_prefix(&record.key);
            let tarball =
                Blobs::artifact_path(&record.key, &record.result_prefix, "artifacts.tar.gz");
            let mut entry = SeedEntry::new(
                std::path::Path::new(&result.model.name.clone()),
                std::path::Path::new(&dir),
                result,
                reused,
            );
            entry.tarball = entry.tarball.as_ref().map(|_| tarball);
            entry.selection = decisions;
            entries.push(entry);
        }
        Ok(SweepSummary {
            summary: SeedSummary::new(entries),
            saved,
        })
    }

    /// A trial's stored result, from memory when its trial has not changed since it was read.
    async fn cached_result(
        &self,
        plan: &SweepPlan,
        record: &TrialRecord,
    ) -> anyhow::Result<Option<TrialResult>> {
        let now = version(record);
        if let Some((seen, result)) = lock(&self.results.0).get(&record.key)
            && *seen == now
        {
            return Ok(Some(result.as_ref().clone()));
        }
        let result = self.stored_result(plan, record).await?;
        if let Some(r) = &result
            && ended(&record.state)
        {
            let mut cache = lock(&self.results.0);
            if cache.len() >= KEEP {
                cache.clear();
            }
            cache.insert(record.key.clone(), (now, Arc::new(r.clone())));
        }
        Ok(result)
    }
}
