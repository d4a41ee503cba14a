//! A submitted sweep, planned: its models, grid points, stages and toolchains, expanded into
//! trials with keys, cost estimates and needs (DESIGN §1, §4). The coordinator stores the
//! plan once per sweep and rebuilds each leased trial from it and two indices.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::queue::Needs;
use crate::settings::{Backend, Settings, part_family};
use crate::stage::Stage;
use crate::trial_key::{EmulationSpec, ModelDigest, ToolVersion, Toolchain, TrialKeyInput};

/// A model file as a sweep names it, stored content-addressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanModel {
    /// Its file name (no folders).
    pub name: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its sha256 and its companions' (`weights`, `class`, `inputs`).
    pub digest: ModelDigest,
}

impl PlanModel {
    /// The format the file name says: `keras_h5`, `keras_json`, `pytorch` or `onnx`.
    pub fn format(&self) -> Result<&'static str, String> {
        model_format(&self.name)
    }
}

/// The format of a model file by its name.
pub fn model_format(name: &str) -> Result<&'static str, String> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".h5") || lower.ends_with(".hdf5") || lower.ends_with(".keras") {
        Ok("keras_h5")
    } else if lower.ends_with(".json") {
        Ok("keras_json")
    } else if lower.ends_with(".pt") || lower.ends_with(".pth") {
        Ok("pytorch")
    } else if lower.ends_with(".onnx") {
        Ok("onnx")
    } else {
        Err(format!(
            "`{name}` is not a model file hlsfarm converts: use .h5 (Keras/QKeras), .json with \
             a weights .h5, .pt/.pth (PyTorch) or .onnx (ONNX/QONNX)"
        ))
    }
}

pub use crate::sweep::TrialResources;

/// What a worker offers, as it registers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCaps {
    /// Backends it can synthesize with.
    pub backends: Vec<Backend>,
    /// Tool → version found.
    pub tools: BTreeMap<String, String>,
    /// hls4ml version of its venv.
    pub hls4ml_version: String,
    /// Part families it may synthesize (empty: any).
    pub part_families: Vec<String>,
    /// Model formats it converts.
    pub formats: Vec<String>,
    /// Trial slots.
    pub slots: u32,
    /// Memory for trials, MiB.
    pub memory_mib: u64,
    /// Cores for trials.
    pub cores: u32,
    /// Host name.
    #[serde(default)]
    pub hostname: String,
}

/// What a class of trials requires of a worker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    /// hls4ml version.
    pub hls4ml_version: String,
    /// Model format.
    pub format: String,
    /// The HLS tool, for trials with tool stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolVersion>,
    /// Vivado is needed (vsynth).
    #[serde(default)]
    pub vivado: bool,
    /// The part family, for trials with tool stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

impl Requirement {
    /// The class id: a short hash of the requirement.
    pub fn class_id(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        crate::trial_key::sha256_hex(&json)[..12].to_owned()
    }

    /// True when `caps` can run trials of this class.
    pub fn served_by(&self, caps: &WorkerCaps) -> bool {
        if caps.hls4ml_version != self.hls4ml_version {
            return false;
        }
        if !caps.formats.iter().any(|f| f == &self.format) {
            return false;
        }
        if let Some(tool) = &self.tool
            && caps.tools.get(&tool.name) != Some(&tool.version)
        {
            return false;
        }
        if self.vivado && !caps.tools.contains_key("vivado") {
            return false;
        }
        if let Some(family) = &self.family
            && !caps.part_families.is_empty()
            && !caps.part_families.iter().any(|f| f == family)
        {
            return false;
        }
        true
    }
}

/// A sweep ready to expand: everything a leased trial is rebuilt from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPlan {
    /// The sweep's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Models.
    pub models: Vec<PlanModel>,
    /// The settings grid; stored instead of its points, which it expands to in a fixed order.
    pub grid: crate::sweep::SettingsGrid,
    /// Settings points: the grid expanded ([`SweepPlan::expanded`] fills it after loading).
    #[serde(skip)]
    pub points: Vec<Settings>,
    /// Stages every trial runs.
    pub stages: Vec<Stage>,
    /// Emulation samples.
    pub emulation: EmulationSpec,
    /// The toolchain per backend (hls4ml plus the tool where tool stages run).
    pub toolchains: BTreeMap<Backend, Toolchain>,
    /// What each trial holds on its worker.
    pub resources: TrialResources,
    /// The sweep named its memory: a learned prediction does not replace it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory_set: bool,
    /// Whether a deterministic failure with a known fix also runs the fixed trial.
    #[serde(default)]
    pub on_failure: crate::sweep::OnFailure,
    /// The funnel's gates: trials are queued cut to the first gate's stage, and only those a
    /// gate selects go on (see [`crate::select`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<crate::select::Gate>,
    /// What the search recorded of each model, by model file name (joined to its results).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub search: BTreeMap<String, crate::results::SearchInfo>,
    /// More models may still be added (`submit --follow`): models only ever append, so a
    /// queued trial's indices stay valid; no gate decides and no aggregate is written until
    /// the sweep closes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open: bool,
}

/// One trial of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTrial {
    /// Its key (hex).
    pub key: String,
    /// Index into [`SweepPlan::models`].
    pub model: usize,
    /// Index into [`SweepPlan::points`].
    pub point: usize,
    /// Cost estimate (larger runs longer).
    pub cost: f64,
    /// What it needs of a worker (`needs.class` names a requirement of [`Planned`]).
    pub needs: Needs,
}

/// A plan's trials and the requirements their classes stand for.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The trials.
    pub trials: Vec<PlannedTrial>,
    /// Class id → requirement.
    pub classes: BTreeMap<String, Requirement>,
}

/// The payload a planned trial carries in the queue: indices into the stored plan, stored as
/// the JSON array `[m, g]`, or `[m, g, p]` for phase `p` of a funnel (an object
/// `{"m":..,"g":..}` reads too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanIndex {
    /// Model index.
    pub m: usize,
    /// Point index.
    pub g: usize,
    /// The funnel's phase (0 without gates; the last phase runs every stage).
    #[serde(default)]
    pub p: usize,
}

/// What a derived trial's payload carries besides its [`PlanIndex`] (under `derived`): the
/// settings it runs, outside the grid, and the trial it was derived from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DerivedPoint {
    /// Its settings (the original's with the fix applied).
    pub settings: Settings,
    /// The original trial and the fix.
    pub from: crate::results::DerivedFrom,
}

impl DerivedPoint {
    /// The payload of a derived trial of model `m`, from grid point `g`.
    pub fn payload(&self, m: usize, g: usize) -> serde_json::Value {
        serde_json::json!({ "m": m, "g": g, "derived": self })
    }

    /// The derived point a payload carries, if any.
    pub fn of(payload: &serde_json::Value) -> Option<DerivedPoint> {
        serde_json::from_value(payload.get("derived")?.clone()).ok()
    }
}

/// A relative cost estimate: bigger models and smaller reuse factors take longer, and each
/// tool stage multiplies the work. The static formula: what orders trials before there is a
/// history to learn from ([`crate::estimate`]).
pub fn cost_estimate(size_bytes: u64, settings: &Settings, stages: &[Stage]) -> f64 {
    static_cost(size_bytes, settings.reuse_factor, stages)
}

/// [`cost_estimate`] from the two settings it reads.
pub fn static_cost(size_bytes: u64, reuse_factor: u32, stages: &[Stage]) -> f64 {
    let weight: f64 = stages
        .iter()
        .map(|s| match s {
            Stage::Convert | Stage::Emulate => 1.0,
            Stage::Csynth => 10.0,
            Stage::Cosim => 6.0,
            Stage::Export => 2.0,
            Stage::Vsynth => 12.0,
        })
        .sum();
    (size_bytes.max(1024) as f64) * weight.max(1.0) / f64::from(reuse_factor.max(1)).sqrt()
}

impl SweepPlan {
    /// The plan with its points expanded from its grid (after reading it from storage).
    pub fn expanded(mut self) -> SweepPlan {
        self.points = self.grid.expand();
        self
    }

    /// The toolchain trials with `backend` run with.
    pub fn toolchain(&self, backend: Backend) -> Option<&Toolchain> {
        self.toolchains.get(&backend)
    }

    /// The stages of phase `phase`: up to its gate's stage, every stage for the last.
    pub fn stages_for(&self, phase: usize) -> Vec<Stage> {
        match self.gates.get(phase) {
            Some(gate) => self
                .stages
                .iter()
                .copied()
                .filter(|s| *s <= gate.after)
                .collect(),
            None => self.stages.clone(),
        }
    }

    /// Expands the plan into trials (a funnel's: their first phase). Each trial holds a
    /// licence seat of every tool stage it runs (`csynth`, `vsynth`, …) while leased: the
    /// coordinator's seat limits and the hold-down after a licence refusal apply to those
    /// features.
    pub fn trials(&self) -> Result<Planned, String> {
        let mut out = Vec::with_capacity(self.models.len() * self.points.len());
        let mut class_of: BTreeMap<Requirement, String> = BTreeMap::new();
        let stages = self.stages_for(0);
        for (m, model) in self.models.iter().enumerate() {
            let format = model.format()?;
            for (g, point) in self.points.iter().enumerate() {
                let requirement = self.requirement(format, point, &stages);
                let class = match class_of.get(&requirement) {
                    Some(id) => id.clone(),
                    None => {
                        let id = requirement.class_id();
                        class_of.insert(requirement, id.clone());
                        id
                    }
                };
                out.push(self.trial(m, g, point, class, &stages)?);
            }
        }
        Ok(Planned {
            trials: out,
            classes: class_of.into_iter().map(|(r, id)| (id, r)).collect(),
        })
    }

    /// One trial of model `m` with `settings` (a derived trial's, say, outside the grid; `g`
    /// is the grid point it came from), and the requirement its class stands for.
    pub fn trial_with(
        &self,
        m: usize,
        g: usize,
        settings: &Settings,
    ) -> Result<(PlannedTrial, Requirement), String> {
        let model = self
            .models
            .get(m)
            .ok_or_else(|| format!("no model {m} in the plan"))?;
        let requirement = self.requirement(model.format()?, settings, &self.stages);
        let trial = self.trial(m, g, settings, requirement.class_id(), &self.stages)?;
        Ok((trial, requirement))
    }

    /// Phase `phase` of model `m`'s trial at grid point `g`, and its requirement.
    pub fn phase_trial(
        &self,
        m: usize,
        g: usize,
        phase: usize,
    ) -> Result<(PlannedTrial, Requirement), String> {
        let model = self
            .models
            .get(m)
            .ok_or_else(|| format!("no model {m} in the plan"))?;
        let settings = self
            .points
            .get(g)
            .ok_or_else(|| format!("no point {g} in the plan"))?;
        let stages = self.stages_for(phase);
        let requirement = self.requirement(model.format()?, settings, &stages);
        let trial = self.trial(m, g, settings, requirement.class_id(), &stages)?;
        Ok((trial, requirement))
    }

    /// What a worker needs to run a trial of a model in `format` at `point`.
    fn requirement(&self, format: &str, point: &Settings, stages: &[Stage]) -> Requirement {
        let has_tools = stages.iter().any(|s| s.needs_xilinx_tools());
        let toolchain = self.toolchain(point.backend);
        Requirement {
            hls4ml_version: toolchain
                .map(|t| t.hls4ml_version.clone())
                .unwrap_or_default(),
            format: format.to_owned(),
            tool: if has_tools {
                toolchain.and_then(|t| t.tool.clone())
            } else {
                None
            },
            vivado: stages.contains(&Stage::Vsynth),
            family: if has_tools {
                part_family(&point.part).ok().map(str::to_owned)
            } else {
                None
            },
        }
    }

    /// Model `m`'s trial at `point` in `class`: its key, cost and needs.
    fn trial(
        &self,
        m: usize,
        g: usize,
        point: &Settings,
        class: String,
        stages: &[Stage],
    ) -> Result<PlannedTrial, String> {
        let model = &self.models[m];
        let toolchain = self
            .toolchain(point.backend)
            .ok_or_else(|| format!("no toolchain for the {} backend", point.backend.as_str()))?;
        let key = TrialKeyInput {
            model: &model.digest,
            settings: point,
            stages,
            emulation: &self.emulation,
            toolchain,
        }
        .key()
        .to_hex();
        Ok(PlannedTrial {
            key,
            model: m,
            point: g,
            cost: cost_estimate(model.size_bytes, point, stages),
            needs: Needs {
                class,
                memory_mib: self.resources.memory_mib,
                cores: self.resources.cores,
                // A seat of every tool stage it runs, held while leased.
                seats: stages
                    .iter()
                    .filter(|s| s.needs_xilinx_tools())
                    .map(|s| s.as_str().to_owned())
                    .collect(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(stages: Vec<Stage>) -> SweepPlan {
        let toolchain = Toolchain {
            hls4ml_version: "1.3.0".into(),
            tool: Some(ToolVersion {
                name: "vitis_hls".into(),
                version: "2023.2".into(),
            }),
        };
        SweepPlan {
            id: "s".into(),
            name: "n".into(),
            models: vec![PlanModel {
                name: "a.h5".into(),
                size_bytes: 10_000,
                digest: ModelDigest {
                    sha256: "ab".repeat(32),
                    companions: BTreeMap::new(),
                },
            }],
            grid: crate::sweep::SettingsGrid {
                reuse_factor: Some(crate::sweep::OneOrMany::Many(vec![1, 4])),
                part: Some(crate::sweep::OneOrMany::Many(vec![
                    "xc7z020clg400-1".into(),
                    "xcvu9p-flga2104-2-e".into(),
                ])),
                ..Default::default()
            },
            points: Vec::new(),
            gates: Vec::new(),
            search: BTreeMap::new(),
            open: false,
            resources: TrialResources::default_for(&stages),
            memory_set: false,
            stages,
            emulation: EmulationSpec::default(),
            toolchains: [(Backend::Vitis, toolchain)].into_iter().collect(),
            on_failure: Default::default(),
        }
    }

    #[test]
    fn trials_carry_keys_classes_and_seats() {
        let p = plan(Stage::FULL_FLOW.to_vec());
        let stored: SweepPlan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        let p = stored.expanded();
        // Points: (rf 1, zynq), (rf 1, virtex), (rf 4, zynq), (rf 4, virtex); keep 0 and 3.
        let all = p.trials().unwrap().trials;
        assert_eq!(all.len(), 4);
        let trials = [all[0].clone(), all[3].clone()];
        assert_ne!(trials[0].key, trials[1].key);
        // Different part families: different classes.
        assert_ne!(trials[0].needs.class, trials[1].needs.class);
        assert_eq!(
            trials[0].needs.seats,
            ["csynth", "cosim", "export", "vsynth"].map(String::from)
        );
        assert_eq!(trials[0].needs.memory_mib, 8192);
        // Smaller reuse factor: more work.
        assert!(trials[0].cost > trials[1].cost);
        let convert_only = plan(Stage::WITHOUT_TOOLS.to_vec()).expanded();
        let t = convert_only.trials().unwrap().trials;
        assert_eq!(t[0].needs.class, t[3].needs.class, "no tool: part is moot");
        assert!(t[0].needs.seats.is_empty());
    }

    #[test]
    fn a_derived_trial_has_its_own_key_and_the_original_class() {
        let p = plan(Stage::FULL_FLOW.to_vec()).expanded();
        let all = p.trials().unwrap();
        let fixed = Settings {
            max_array_partition_size: Some(8192),
            ..p.points[0].clone()
        };
        let (derived, requirement) = p.trial_with(0, 0, &fixed).unwrap();
        assert_ne!(derived.key, all.trials[0].key);
        assert_eq!(derived.needs, all.trials[0].needs);
        assert_eq!(all.classes[&derived.needs.class], requirement);
    }

    #[test]
    fn requirements_match_capabilities() {
        let p = plan(Stage::FULL_FLOW.to_vec()).expanded();
        let planned = p.trials().unwrap();
        let req =
            |i: usize| &planned.classes[&planned.trials[if i == 0 { 0 } else { 3 }].needs.class];
        let mut caps = WorkerCaps {
            hls4ml_version: "1.3.0".into(),
            formats: vec!["keras_h5".into()],
            tools: [
                ("vitis_hls".to_owned(), "2023.2".to_owned()),
                ("vivado".to_owned(), "2023.2".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..WorkerCaps::default()
        };
        assert!(req(0).served_by(&caps));
        caps.part_families = vec!["zynq".into()];
        assert!(req(0).served_by(&caps));
        assert!(!req(1).served_by(&caps), "virtex ultrascale+");
        caps.tools.remove("vivado");
        assert!(!req(0).served_by(&caps));
        caps.tools.insert("vivado".into(), "2023.2".into());
        caps.tools.insert("vitis_hls".into(), "2024.1".into());
        assert!(!req(0).served_by(&caps), "other tool version");
    }

    #[test]
    fn model_formats_by_name() {
        assert_eq!(model_format("m.H5").unwrap(), "keras_h5");
        assert_eq!(model_format("m.onnx").unwrap(), "onnx");
        assert_eq!(model_format("m.pt").unwrap(), "pytorch");
        assert!(model_format("m.txt").unwrap_err().contains(".onnx"));
    }
}
