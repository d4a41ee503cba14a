//! Submit: a wire sweep validated at the edge, planned (toolchains, stages, resources),
//! expanded into trials and queued (DESIGN §1, §6).

use std::collections::BTreeMap;

use hlsfarm_common::Stage;
use hlsfarm_common::plan::{DerivedPoint, PlanModel, SweepPlan, TrialResources, WorkerCaps};
use hlsfarm_common::queue::NewTrial;
use hlsfarm_common::results::{DerivedFrom, TrialResult};
use hlsfarm_common::settings::Backend;
use hlsfarm_common::store::{Submitted, SweepSubmit};
use hlsfarm_common::sweep::OnFailure;
use hlsfarm_common::trial_key::{EmulationSpec, ToolVersion, Toolchain, sha256_hex};
use hlsfarm_common::validation::ValidationErrors;
use hlsfarm_proto::v1;

use super::validate::{Checked, checked, search_records, wire_models};
use super::{Coordinator, Error};
use hlsfarm_common::blob::Blobs;

/// Workers seen within this long count as live for choosing a sweep's toolchain.
const LIVE: i64 = 60_000;

/// The hls4ml version and tool most live workers have, for a backend.
fn toolchain_from_workers(
    workers: &[WorkerCaps],
    backend: Backend,
    tools_needed: bool,
) -> Option<Toolchain> {
    let mut votes: BTreeMap<(String, Option<ToolVersion>), usize> = BTreeMap::new();
    for w in workers {
        if w.hls4ml_version.is_empty() {
            continue;
        }
        let tool = if tools_needed {
            if !w.backends.contains(&backend) {
                continue;
            }
            let names: &[&str] = match backend {
                Backend::Vitis => &["vitis-run", "vitis_hls"],
                Backend::Vivado => &["vivado_hls"],
            };
            let Some((name, version)) = names
                .iter()
                .find_map(|n| w.tools.get(*n).map(|v| ((*n).to_owned(), v.clone())))
            else {
                continue;
            };
            Some(ToolVersion { name, version })
        } else {
            None
        };
        *votes.entry((w.hls4ml_version.clone(), tool)).or_default() += 1;
    }
    votes
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|((hls4ml_version, tool), _)| Toolchain {
            hls4ml_version,
            tool,
        })
}

/// The queue's trials for planned ones (each key once): `[model, point]` indices into the
/// stored plan, and the phase in a funnel.
fn new_trials(plan: &SweepPlan, planned: Vec<hlsfarm_common::plan::PlannedTrial>) -> Vec<NewTrial> {
    let mut seen = std::collections::HashSet::with_capacity(planned.len());
    planned
        .into_iter()
        .filter(|t| seen.insert(t.key.clone()))
        .map(|t| NewTrial {
            key: t.key,
            cost: t.cost,
            payload: if plan.gates.is_empty() {
                serde_json::json!([t.model, t.point])
            } else {
                serde_json::json!([t.model, t.point, 0])
            },
            needs: t.needs,
        })
        .collect()
}

impl Coordinator {
    /// Every input of `models` must be stored already: workers fetch them from the store.
    async fn check_stored(&self, models: &[PlanModel]) -> Result<(), Error> {
        for m in models {
            let shas = std::iter::once(&m.digest.sha256).chain(m.digest.companions.values());
            for sha in shas {
                if !self
                    .blobs
                    .exists(&Blobs::input_path(sha))
                    .await
                    .map_err(Error::backend)?
                {
                    return Err(Error::precondition(format!(
                        "model `{}`: file {sha} is not in the store; upload it first (hlsfarm submit does)",
                        m.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Adds models to an open sweep (`submit --follow`) and queues their trials; `done`
    /// closes the sweep. Models only append to the plan, so the indices of queued trials
    /// stay valid; the plan is rewritten before the new trials are queued.
    pub(super) async fn extend_sweep(
        &self,
        request: v1::AddModelsRequest,
    ) -> Result<(u64, Submitted), Error> {
        let id = request.sweep_id;
        self.queue.sweep(&id).await.map_err(Error::from)?;
        let mut plan = self.fresh_plan(&id).await?;
        if !plan.open {
            return Err(Error::precondition(format!(
                "sweep {id} is closed: it was not submitted with --follow, or its follower said it was done; submit a new sweep"
            )));
        }
        let mut errors = ValidationErrors::default();
        let models = wire_models(&request.models, &mut errors);
        for (i, m) in models.iter().enumerate() {
            if plan.models.iter().any(|p| p.name == m.name) {
                errors.push(
                    format!("models[{i}].name"),
                    format!("`{}` is in the sweep already", m.name),
                );
            }
        }
        let search = search_records(&request.search_json, &mut errors);
        errors
            .into_result()
            .map_err(|e| Error::invalid(format!("invalid models: {e}")))?;
        self.check_stored(&models).await?;
        let first_new = plan.models.len();
        plan.models.extend(models);
        for (name, info) in search {
            if plan.models.iter().any(|m| m.name == name) {
                plan.search.insert(name, info);
            }
        }
        plan.open = !request.done;
        let planned = plan.trials().map_err(Error::invalid)?;
        let fresh: Vec<_> = planned
            .trials
            .into_iter()
            .filter(|t| t.model >= first_new)
            .collect();
        let classes: BTreeMap<String, String> = planned
            .classes
            .iter()
            .map(|(id, r)| (id.clone(), serde_json::to_string(r).unwrap_or_default()))
            .collect();
        let mut trials = new_trials(&plan, fresh);
        self.estimate_new(&plan, &mut trials);
        self.queue.put_classes(&classes).await?;
        let plan_json = serde_json::to_string(&plan).map_err(Error::internal)?;
        let submitted = self
            .queue
            .submit_sweep(
                &SweepSubmit {
                    plan: plan_json,
                    ..SweepSubmit::more_of(&id)
                },
                &trials,
            )
            .await?;
        self.forget_plan(&id);
        self.wake().await;
        tracing::info!(sweep = %id, models = plan.models.len() - first_new, trials = trials.len(), queued = submitted.added, closed = request.done, "models added");
        Ok((trials.len() as u64, submitted))
    }
}

impl Coordinator {
    async fn live_workers(&self) -> Result<Vec<WorkerCaps>, Error> {
        let snapshot = self.queue.snapshot(false, 0).await?;
        Ok(snapshot
            .workers
            .iter()
            .filter(|w| snapshot.now_ms - w.seen_ms < LIVE)
            .filter_map(|w| serde_json::from_str(&w.capabilities).ok())
            .collect())
    }

    /// Validates, plans and queues a sweep.
    pub(super) async fn submit(
        &self,
        spec: v1::SweepSpec,
    ) -> Result<(String, u64, Submitted), Error> {
        let Checked {
            models,
            grid,
            stages,
            on_failure,
            gates,
            search,
        } = checked(&spec)?;
        self.check_stored(&models).await?;

        let points = grid.expand();
        let (stages, toolchains) = self
            .stages_and_toolchains(&spec, &points, stages, &gates)
            .await?;
        let memory_set = spec.resources.is_some();
        let resources = spec.resources.map_or_else(
            || TrialResources::default_for(&stages),
            |r| TrialResources {
                memory_mib: r.memory_mib,
                cores: r.cores,
            },
        );
        let emulation = EmulationSpec {
            samples: if spec.emulation_samples == 0 {
                EmulationSpec::default().samples
            } else {
                spec.emulation_samples
            },
            seed: spec.emulation_seed,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let id = format!(
            "s{}-{}",
            now.as_secs(),
            &sha256_hex(format!("{spec:?}{}", now.as_nanos()).as_bytes())[..8]
        );
        let name = if spec.name.trim().is_empty() {
            id.clone()
        } else {
            spec.name.trim().to_owned()
        };
        // Only the records of the sweep's own models are kept.
        let search = search
            .into_iter()
            .filter(|(name, _)| models.iter().any(|m| &m.name == name))
            .collect();
        let plan = SweepPlan {
            id: id.clone(),
            name: name.clone(),
            models,
            grid,
            points,
            stages,
            emulation,
            toolchains,
            resources,
            memory_set,
            on_failure,
            search,
            gates,
            open: spec.follow,
        };
        let planning = std::time::Instant::now();
        let planned = plan.trials().map_err(Error::invalid)?;
        let classes: BTreeMap<String, String> = planned
            .classes
            .iter()
            .map(|(id, r)| (id.clone(), serde_json::to_string(r).unwrap_or_default()))
            .collect();
        let mut trials = new_trials(&plan, planned.trials);
        self.estimate_new(&plan, &mut trials);
        let total = trials.len() as u64;
        self.queue.put_classes(&classes).await?;
        let plan_json = serde_json::to_string(&plan).map_err(Error::internal)?;
        let plan_ms = planning.elapsed().as_millis();
        let queueing = std::time::Instant::now();
        let submitted = self
            .queue
            .submit_sweep(
                &SweepSubmit {
                    id: id.clone(),
                    priority: spec.priority.max(1),
                    name,
                    force: spec.force,
                    plan: plan_json,
                },
                &trials,
            )
            .await?;
        self.wake().await;
        tracing::info!(sweep = %id, trials = total, queued = submitted.added, reused = submitted.reused, plan_ms, redis_ms = queueing.elapsed().as_millis(), "sweep submitted");
        Ok((id, total, submitted))
    }

    /// The stages a sweep runs (as given, else the full flow where live workers have the
    /// tools, else convert and emulate) and the toolchain that names each backend's trials
    /// (the sweep's, else what most live workers have).
    async fn stages_and_toolchains(
        &self,
        spec: &v1::SweepSpec,
        points: &[hlsfarm_common::settings::Settings],
        stages: Vec<Stage>,
        gates: &[hlsfarm_common::select::Gate],
    ) -> Result<(Vec<Stage>, BTreeMap<Backend, Toolchain>), Error> {
        let backends: Vec<Backend> = {
            let mut b: Vec<Backend> = points.iter().map(|p| p.backend).collect();
            b.sort();
            b.dedup();
            b
        };
        let workers = if spec.toolchain.is_none() {
            self.live_workers().await?
        } else {
            Vec::new()
        };
        // Stages: as given, else the full flow where workers have the tools, else convert
        // and emulate.
        let stages = if !stages.is_empty() {
            stages
        } else if let Some(t) = &spec.toolchain {
            if t.tool.is_empty() {
                Stage::WITHOUT_TOOLS.to_vec()
            } else {
                Stage::FULL_FLOW.to_vec()
            }
        } else {
            Stage::defaults(
                backends
                    .iter()
                    .all(|b| toolchain_from_workers(&workers, *b, true).is_some()),
                workers.iter().any(|w| w.tools.contains_key("vivado")),
            )
        };
        if let Some(gate) = gates.iter().find(|g| !stages.contains(&g.after)) {
            return Err(Error::invalid(format!(
                "invalid sweep: select: a gate runs after `{}`, a stage the sweep does not run",
                gate.after
            )));
        }
        let tools_needed = stages.iter().any(|s| s.needs_xilinx_tools());
        let mut toolchains = BTreeMap::new();
        for backend in &backends {
            let toolchain = match &spec.toolchain {
                Some(t) => Toolchain {
                    hls4ml_version: t.hls4ml_version.clone(),
                    tool: (tools_needed && !t.tool.is_empty()).then(|| ToolVersion {
                        name: t.tool.clone(),
                        version: t.tool_version.clone(),
                    }),
                },
                None => toolchain_from_workers(&workers, *backend, tools_needed).ok_or_else(|| {
                    Error::precondition(format!(
                        "no live worker {} for the {} backend, so the trial keys cannot name a toolchain: start `hlsfarm worker` on a host with {}, or name it in the sweep (toolchain.hls4ml_version, toolchain.tool, toolchain.tool_version)",
                        if tools_needed { "has hls4ml and an HLS tool" } else { "has hls4ml" },
                        backend.as_str(),
                        if tools_needed { "hls4ml and the tools" } else { "hls4ml" },
                    ))
                })?,
            };
            if tools_needed && toolchain.tool.is_none() {
                return Err(Error::invalid(
                    "the stages run HLS tools but toolchain.tool is empty: name the tool and its version",
                ));
            }
            toolchains.insert(*backend, toolchain);
        }
        Ok((stages, toolchains))
    }
}

impl Coordinator {
    /// A sweep's `on_failure = "apply-fix"`: the failed trial's settings with its fix applied
    /// (`failure.fix`: from the tool's log or preflight), queued in the same sweep as a
    /// derived trial (its own key, `derived_from` naming the original). Nothing for a trial
    /// that is itself derived, or without a fix. Returns the derived trial's key.
    pub(super) async fn derive_fixed(&self, failed: &TrialResult) -> Result<Option<String>, Error> {
        let Some(failure) = failed.failure.as_ref() else {
            return Ok(None);
        };
        let Some(fix) = failure.fix.as_ref().filter(|f| !f.is_empty()) else {
            return Ok(None);
        };
        if failed.derived_from.is_some() {
            return Ok(None);
        }
        // Only now the queue is asked: most failures carry no fix.
        let Ok(record) = self.queue.trial(&failed.trial_key).await else {
            return Ok(None);
        };
        let sweep = record.sweep.as_str();
        let plan = self.plan(sweep).await?;
        if plan.on_failure != OnFailure::ApplyFix {
            return Ok(None);
        }
        let Some(m) = plan
            .models
            .iter()
            .position(|m| m.digest.sha256 == failed.model.sha256)
        else {
            return Ok(None);
        };
        let g = plan
            .points
            .iter()
            .position(|p| *p == failed.settings)
            .unwrap_or(0);
        let settings = match failed.settings.with_fix(fix) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(sweep, trial = %failed.trial_key, error = %e, "a failure's fix does not apply");
                return Ok(None);
            }
        };
        let (trial, requirement) = plan.trial_with(m, g, &settings).map_err(Error::internal)?;
        let point = DerivedPoint {
            settings,
            from: DerivedFrom {
                trial_key: failed.trial_key.clone(),
                settings: failed.settings.clone(),
                fix: fix.clone(),
                findings: vec![failure.reason.clone()],
            },
        };
        let classes = BTreeMap::from([(
            trial.needs.class.clone(),
            serde_json::to_string(&requirement).map_err(Error::internal)?,
        )]);
        self.queue.put_classes(&classes).await?;
        let mut derived = [NewTrial {
            key: trial.key.clone(),
            cost: trial.cost,
            payload: point.payload(m, g),
            needs: trial.needs,
        }];
        self.estimate_new(&plan, &mut derived);
        self.queue
            .submit_sweep(&SweepSubmit::more_of(sweep), &derived)
            .await?;
        self.wake().await;
        tracing::info!(sweep, from = %failed.trial_key, trial = %trial.key, fix = ?fix, "derived a trial with the fix applied (on_failure = apply-fix)");
        Ok(Some(trial.key))
    }
}
