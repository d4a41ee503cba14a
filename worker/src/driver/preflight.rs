//! Preflight of many points in one driver process per venv: hls4ml converts each (no project
//! written, nothing compiled) and the findings come back by id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hlsfarm_common::failure::{Failure, FailureClass};
use hlsfarm_common::results::PreflightFinding;
use hlsfarm_common::settings::Settings;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{
    DriverEnv, DriverFailure, LOG_FILE, ModelFiles, driver_command, failure, log_tail,
    model_python, write_driver,
};
use crate::process::run_tree_limited;

/// One point of a preflight batch: an id, a model and settings.
#[derive(Debug, Clone, Serialize)]
pub struct PreflightItem<'a> {
    /// The caller's name for this point.
    pub id: String,
    /// The model.
    pub model: &'a ModelFiles,
    /// The settings.
    pub settings: &'a Settings,
}

#[derive(Debug, Deserialize)]
struct PreflightAnswer {
    #[serde(default)]
    findings: Vec<PreflightFinding>,
    #[serde(default)]
    failure: Option<DriverFailure>,
}

#[derive(Debug, Deserialize)]
struct BatchResult {
    ok: bool,
    #[serde(default)]
    batch: BTreeMap<String, PreflightAnswer>,
    #[serde(default)]
    failure: Option<DriverFailure>,
}

/// Preflight of many points: hls4ml converts each (no project written, nothing compiled) in
/// one driver process per venv, each model loaded once; the findings (or the reason a point
/// does not convert) by id. What `hlsfarm check` and `run --fix` use before queueing.
pub async fn preflight_batch(
    env: &DriverEnv,
    items: &[PreflightItem<'_>],
    work_dir: &Path,
) -> Result<BTreeMap<String, Result<Vec<PreflightFinding>, Failure>>, Failure> {
    let infra = |what: &str, e: &dyn std::fmt::Display| {
        failure(FailureClass::Infrastructure, format!("{what}: {e}"), None)
    };
    let driver = write_driver(work_dir)?;
    let mut by_python: BTreeMap<&PathBuf, Vec<&PreflightItem<'_>>> = BTreeMap::new();
    for item in items {
        by_python
            .entry(model_python(env, item.model))
            .or_default()
            .push(item);
    }
    let mut out = BTreeMap::new();
    for (n, (python, group)) in by_python.into_iter().enumerate() {
        let request = work_dir.join(format!("preflight_request_{n}.json"));
        let result = work_dir.join(format!("preflight_result_{n}.json"));
        let bytes = serde_json::to_vec(&serde_json::json!({ "preflight_batch": group }))
            .map_err(|e| infra("cannot write the request", &e))?;
        std::fs::write(&request, bytes).map_err(|e| infra("cannot write the request", &e))?;
        let mut command = driver_command(python, &driver, &request);
        command.arg(&result).current_dir(work_dir);
        let log = work_dir.join(LOG_FILE);
        let outcome = run_tree_limited(command, &log, env.limits(), &CancellationToken::new())
            .await
            .map_err(|e| infra("cannot run the hls4ml driver", &e))?;
        let parsed: Option<BatchResult> = std::fs::read(&result)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let batch = match parsed {
            Some(b) if b.ok => b.batch,
            Some(b) => {
                let f = b.failure.map(|f| f.reason).unwrap_or_default();
                return Err(failure(FailureClass::ToolError, f, None));
            }
            None => {
                return Err(failure(
                    FailureClass::ToolError,
                    format!(
                        "the hls4ml driver ended ({:?}) without a preflight answer; log ends:\n{}",
                        outcome.ending,
                        log_tail(&log, 5)
                    ),
                    None,
                ));
            }
        };
        for (id, answer) in batch {
            let value = match answer.failure {
                Some(f) => Err(f.failure()),
                None => Ok(answer.findings),
            };
            out.insert(id, value);
        }
    }
    Ok(out)
}
