//! What every trial of a one-host run is planned from: the sweep's settings, stages and tools,
//! and each model's files and digests, turned into [`Planned`] trials with their keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hlsfarm_common::results::{ModelRef, SearchInfo, TrialResult};
use hlsfarm_common::search::SearchTable;
use hlsfarm_common::settings::Settings;
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::{ModelDigest, ToolVersion, Toolchain, TrialKeyInput};
use hlsfarm_worker::trial::{TrialSpec, tool_command};

use super::planned::{Planned, suffix};
use crate::cli::sweep_args::{SweepArgs, file_sha256, model_files};

/// The result in `output_dir` with this key, successful or not.
pub(super) fn finished_or_failed(output_dir: &Path, key: &str) -> Option<TrialResult> {
    let bytes = std::fs::read(output_dir.join("result.json")).ok()?;
    let result: TrialResult = serde_json::from_slice(&bytes).ok()?;
    (result.trial_key == key).then_some(result)
}

/// What every trial of a model is planned from.
pub(super) struct Planner {
    pub(super) args: SweepArgs,
    pub(super) points: Vec<Settings>,
    pub(super) stages: Vec<Stage>,
    pub(super) emulation: hlsfarm_common::trial_key::EmulationSpec,
    pub(super) hls4ml: String,
    pub(super) tools: Vec<hlsfarm_worker::tools::DetectedTool>,
    pub(super) output_dir: PathBuf,
    pub(super) scratch_root: PathBuf,
    pub(super) validation: Option<PathBuf>,
    pub(super) fixes: HashMap<(usize, usize), crate::cli::check::Fixed>,
}

impl Planner {
    /// The search's record of a planned trial's model.
    pub(super) fn search_of(&self, plan: &Planned, table: &SearchTable) -> Option<SearchInfo> {
        table.lookup(&plan.spec.model.name)
    }

    /// The trials of one model: one per settings point, with its key, folders and files.
    pub(super) fn plan(
        &self,
        model_index: usize,
        model: &Path,
        table: &SearchTable,
    ) -> anyhow::Result<Vec<Planned>> {
        let (files, mut found) = model_files(model, &self.args)?;
        if let Some(v) = &self.validation {
            found.insert("validation".to_owned(), v.clone());
        }
        let sha = file_sha256(model)?;
        let mut companions = std::collections::BTreeMap::new();
        for (role, path) in &found {
            companions.insert(role.clone(), file_sha256(path)?);
        }
        let digest = ModelDigest {
            sha256: sha.clone(),
            companions,
        };
        let stem = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned());
        let model_name = model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let search = table.lookup(&model_name);
        let mut out = Vec::new();
        for (point_index, original) in self.points.iter().enumerate() {
            let toolchain_of = |point: &Settings| Toolchain {
                hls4ml_version: self.hls4ml.clone(),
                tool: tool_command(point.backend, &self.tools).map(|(t, _)| ToolVersion {
                    name: t.name.clone(),
                    version: t.version.clone(),
                }),
            };
            let key_of = |point: &Settings| {
                let toolchain = toolchain_of(point);
                TrialKeyInput {
                    model: &digest,
                    settings: point,
                    stages: &self.stages,
                    emulation: &self.emulation,
                    toolchain: &toolchain,
                }
                .key()
                .to_hex()
            };
            let (point, derived_from) = match self.fixes.get(&(model_index, point_index)) {
                Some((fixed, fix, findings)) => (
                    fixed,
                    Some(hlsfarm_common::results::DerivedFrom {
                        trial_key: key_of(original),
                        settings: original.clone(),
                        fix: fix.clone(),
                        findings: findings.clone(),
                    }),
                ),
                None => (original, None),
            };
            let key = key_of(point);
            let name = format!(
                "hls_{stem}{}{}",
                suffix(original, &self.points),
                if derived_from.is_some() { "_fixed" } else { "" }
            );
            out.push(Planned {
                key: key.clone(),
                model_path: model.to_owned(),
                spec: TrialSpec {
                    trial_key: key.clone(),
                    model: ModelRef {
                        name: model_name.clone(),
                        sha256: sha.clone(),
                    },
                    files: files.clone(),
                    settings: point.clone(),
                    stages: self.stages.clone(),
                    emulation: self.emulation.clone(),
                    inputs: found.get("inputs").cloned(),
                    validation: found.get("validation").cloned(),
                    search: search.clone(),
                    scratch: self.scratch_root.join(&key[..16]),
                    tarball: self.output_dir.join(format!("{name}.tar.gz")),
                    output_dir: self.output_dir.join(&name),
                    derived_from,
                    stage_limits: Vec::new(),
                },
                digest: digest.clone(),
                toolchain: toolchain_of(point),
            });
        }
        Ok(out)
    }
}
