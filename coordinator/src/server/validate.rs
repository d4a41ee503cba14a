//! What a submitted sweep must satisfy before anything is planned: file names and digests, the
//! grid, the stages, resources, the failure policy, the selection gates and the search's
//! records. Every bad field is named at once ([`ValidationErrors`]).

use std::collections::BTreeMap;

use hlsfarm_common::Stage;
use hlsfarm_common::plan::PlanModel;
use hlsfarm_common::select::Gate;
use hlsfarm_common::sweep::{OnFailure, SettingsGrid};
use hlsfarm_common::trial_key::ModelDigest;
use hlsfarm_common::validation::ValidationErrors;
use hlsfarm_proto::stages_from_wire;
use hlsfarm_proto::v1;

use super::Error;

/// A file name as users give it: no folders, no traversal, printable, at most 255 bytes.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 255 {
        return Err("is longer than 255 bytes".into());
    }
    if name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(format!(
            "`{name}` must be a plain file name, without folders or `..`"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(())
}

pub(super) fn check_sha(sha: &str) -> Result<(), String> {
    if sha.len() == 64
        && sha
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_uppercase())
    {
        Ok(())
    } else {
        Err(format!("`{sha}` is not a lower-case hex sha256"))
    }
}

/// The wire's models as the plan keeps them, each checked (name, format, digests).
pub(super) fn wire_models(
    wire: &[v1::ModelInput],
    errors: &mut ValidationErrors,
) -> Vec<PlanModel> {
    let mut models = Vec::new();
    for (i, m) in wire.iter().enumerate() {
        if let Err(e) = check_name(&m.name) {
            errors.push(format!("models[{i}].name"), e);
        } else if let Err(e) = hlsfarm_common::plan::model_format(&m.name) {
            errors.push(format!("models[{i}].name"), e);
        }
        if let Err(e) = check_sha(&m.sha256) {
            errors.push(format!("models[{i}].sha256"), e);
        }
        for (role, sha) in &m.companions {
            if !["weights", "class", "inputs", "validation"].contains(&role.as_str()) {
                errors.push(
                    format!("models[{i}].companions.{role}"),
                    "is not a companion role (weights, class, inputs, validation)",
                );
            }
            if let Err(e) = check_sha(sha) {
                errors.push(format!("models[{i}].companions.{role}"), e);
            }
        }
        models.push(PlanModel {
            name: m.name.clone(),
            size_bytes: m.size_bytes,
            digest: ModelDigest {
                sha256: m.sha256.clone(),
                companions: m.companions.clone().into_iter().collect(),
            },
        });
    }
    models
}

/// The search's records from the wire (`search_json`).
pub(super) fn search_records(
    json: &str,
    errors: &mut ValidationErrors,
) -> BTreeMap<String, hlsfarm_common::results::SearchInfo> {
    if json.is_empty() {
        return BTreeMap::new();
    }
    serde_json::from_str(json).unwrap_or_else(|e| {
        errors.push(
            "search",
            format!("is not an object of the search's records by model name: {e}"),
        );
        BTreeMap::new()
    })
}

/// A submitted spec's parts, each checked.
pub(super) struct Checked {
    pub(super) models: Vec<PlanModel>,
    pub(super) grid: SettingsGrid,
    /// As given (normalized); empty for the default.
    pub(super) stages: Vec<Stage>,
    pub(super) on_failure: OnFailure,
    pub(super) gates: Vec<Gate>,
    pub(super) search: BTreeMap<String, hlsfarm_common::results::SearchInfo>,
}

/// Checks a submitted spec, naming every bad field at once.
pub(super) fn checked(spec: &v1::SweepSpec) -> Result<Checked, Error> {
    let mut errors = ValidationErrors::default();
    if spec.models.is_empty() {
        errors.push("models", "names no model: give at least one model file");
    }
    let models = wire_models(&spec.models, &mut errors);
    let grid = match spec.grid.clone().map(SettingsGrid::try_from).transpose() {
        Ok(grid) => grid.unwrap_or_default(),
        Err(e) => {
            errors.push("grid", e.to_string());
            SettingsGrid::default()
        }
    };
    if let Err(e) = grid.validate() {
        for field in e.0 {
            errors.push(format!("grid.{}", field.field), field.message);
        }
    }
    let stages = match stages_from_wire(&spec.stages) {
        Ok(s) => hlsfarm_common::stage::normalize_stages(&s),
        Err(e) => {
            errors.push("stages", e.to_string());
            Vec::new()
        }
    };
    if !stages.is_empty() && !stages.contains(&Stage::Convert) {
        errors.push(
            "stages",
            "must include convert: every later stage works on the converted project",
        );
    }
    if let Some(r) = &spec.resources
        && (r.memory_mib == 0 || r.cores == 0)
    {
        errors.push(
            "resources",
            "memory_mib and cores must be at least 1 (leave resources out for the default)",
        );
    }
    let on_failure = if spec.on_failure.is_empty() {
        OnFailure::default()
    } else {
        spec.on_failure.parse().unwrap_or_else(|e: String| {
            errors.push("on_failure", e);
            OnFailure::default()
        })
    };
    let gates: Vec<hlsfarm_common::select::Gate> = if spec.select_json.is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(&spec.select_json).unwrap_or_else(|e| {
            errors.push("select", format!("is not a list of gates: {e}"));
            Vec::new()
        })
    };
    for (i, gate) in gates.iter().enumerate() {
        if let Err(e) = gate.validate() {
            errors.push(format!("select[{i}]"), e);
        }
        if i > 0 && gate.after <= gates[i - 1].after {
            errors.push(
                format!("select[{i}].after"),
                "gates go in stage order, each after a later stage than the one before",
            );
        }
    }
    let search = search_records(&spec.search_json, &mut errors);
    errors
        .into_result()
        .map_err(|e| Error::invalid(format!("invalid sweep: {e}")))?;

    Ok(Checked {
        models,
        grid,
        stages,
        on_failure,
        gates,
        search,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert!(check_name("model.h5").is_ok());
        for bad in ["../x.h5", "a/b.h5", "..", "", "a\\b", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_sha(&"a".repeat(64)).is_ok());
        assert!(check_sha(&"A".repeat(64)).is_err());
        assert!(check_sha("abc").is_err());
    }
}
