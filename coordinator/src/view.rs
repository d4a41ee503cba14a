//! The cluster as operators see it, in one JSON shape for every view: `hlsfarm status --json`,
//! `hlsfarm watch`, and the coordinator's web page and `/api` (built from the same gRPC
//! answers, so the three always agree).

use std::collections::BTreeMap;

use hlsfarm_common::results::ResultSummary;
use hlsfarm_proto::v1;
use serde::Serialize;

/// `hlsfarm status --json` and `GET /api/status`: the cluster now.
#[derive(Debug, Clone, Serialize)]
pub struct StatusJson {
    /// Sweeps.
    pub sweeps: Vec<SweepJson>,
    /// Workers.
    pub workers: Vec<WorkerJson>,
    /// Seats per feature.
    pub seats: Vec<SeatJson>,
    /// Recent failures.
    pub recent_failures: Vec<FailureJson>,
}

/// One sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepJson {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Priority.
    pub priority: u32,
    /// Trials per state, and `reused`.
    pub counts: BTreeMap<String, u64>,
    /// Seconds to go, when known.
    pub eta_seconds: Option<f64>,
    /// The standard deviation of `eta_seconds`, when it came from the learned estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_sd_seconds: Option<f64>,
    /// When it was submitted, ms since the Unix epoch.
    pub submitted_unix_ms: i64,
    /// A funnel's gate decisions, a line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<String>,
}

impl SweepJson {
    /// Trials in one state (or `reused`).
    pub fn count(&self, state: &str) -> u64 {
        self.counts.get(state).copied().unwrap_or(0)
    }

    /// All trials, reused ones included.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Trials that ended (reused ones included).
    pub fn ended(&self) -> u64 {
        ["succeeded", "failed", "cancelled", "dead", "reused"]
            .iter()
            .map(|s| self.count(s))
            .sum()
    }
}

/// A trial a worker runs now.
#[derive(Debug, Clone, Serialize)]
pub struct RunningJson {
    /// Trial key.
    pub trial: String,
    /// Sweep.
    pub sweep: String,
    /// Stage it is in (empty before the first heartbeat).
    pub stage: String,
    /// Where its tool is, from the tool's log (phase, quiet time, peak, last line).
    pub phase: String,
    /// Attempt.
    pub attempt: u32,
    /// Seconds since it was leased.
    pub seconds: Option<f64>,
    /// Its predicted wall time by the learned estimates, seconds.
    pub predicted_seconds: Option<f64>,
}

impl RunningJson {
    /// How long it has run against its prediction: `3m07s`, `3m07s of ~5m00s`.
    pub fn elapsed_text(&self) -> String {
        let ran = self.seconds.map(humantime_secs).unwrap_or_default();
        match self.predicted_seconds {
            Some(p) => format!("{ran} of ~{}", humantime_secs(p)),
            None => ran,
        }
    }
}

impl SweepJson {
    /// The ETA as text: `12m30s`, `12m30s ± 2m10s`, `…` when unknown.
    pub fn eta_text(&self) -> String {
        match (self.eta_seconds, self.eta_sd_seconds) {
            (Some(e), Some(sd)) if sd >= 1.0 => {
                format!("{} ± {}", humantime_secs(e), humantime_secs(sd))
            }
            (Some(e), _) => humantime_secs(e),
            (None, _) => "…".into(),
        }
    }
}

/// One worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerJson {
    /// Id.
    pub id: String,
    /// Host.
    pub hostname: String,
    /// Trials it runs.
    pub trials: Vec<RunningJson>,
    /// Seconds since it was last heard from.
    pub heartbeat_age_seconds: f64,
    /// Draining.
    pub draining: bool,
    /// Slots.
    pub slots: u32,
    /// Cores it offers.
    pub cores: u32,
    /// Memory it offers, MiB.
    pub memory_mib: u64,
    /// Model formats it converts.
    pub formats: Vec<String>,
    /// hls4ml version.
    pub hls4ml_version: String,
    /// Tools and versions.
    pub tools: BTreeMap<String, String>,
}

/// Seats of one feature.
#[derive(Debug, Clone, Serialize)]
pub struct SeatJson {
    /// Feature (stage).
    pub feature: String,
    /// Held.
    pub in_use: u32,
    /// Limit (0: none).
    pub limit: u32,
}

/// A recent failure.
#[derive(Debug, Clone, Serialize)]
pub struct FailureJson {
    /// Trial key.
    pub trial: String,
    /// Sweep.
    pub sweep: String,
    /// State.
    pub state: String,
    /// Class.
    pub class: String,
    /// Reason.
    pub reason: String,
}

/// One trial of a sweep (`GET /api/sweeps/{id}/trials`).
#[derive(Debug, Clone, Serialize)]
pub struct TrialJson {
    /// Trial key.
    pub key: String,
    /// Model file.
    pub model: String,
    /// The settings, in short.
    pub settings: String,
    /// State.
    pub state: String,
    /// Stage now (running) or last reached.
    pub stage: String,
    /// Where its tool is now, from the tool's log (running trials only).
    pub phase: String,
    /// Worker that holds or held it.
    pub worker: String,
    /// Attempt.
    pub attempt: u32,
    /// Reused from an earlier identical trial.
    pub reused: bool,
    /// Seconds of its last attempt, when ended.
    pub seconds: Option<f64>,
    /// Predicted seconds, by the estimates learned from earlier results.
    pub predicted_seconds: Option<f64>,
    /// Predicted peak memory with margin, MiB.
    pub predicted_memory_mib: Option<u64>,
    /// LUTs.
    pub lut: Option<f64>,
    /// Flip-flops.
    pub ff: Option<f64>,
    /// DSPs.
    pub dsp: Option<f64>,
    /// BRAM tiles.
    pub bram: Option<f64>,
    /// Worst-case latency, cycles.
    pub latency_cycles: Option<u64>,
    /// Worst-case latency, ns.
    pub latency_ns: Option<f64>,
    /// Largest |hls − float| in the emulation.
    pub max_abs_diff: Option<f64>,
    /// The emulation's figure for each output, by kind (agreement or relative error).
    pub fidelity: Option<String>,
    /// The emulation departs from the float model beyond tolerance.
    pub fidelity_warning: bool,
    /// Failure class, when failed.
    pub class: String,
    /// Failure reason, when failed.
    pub reason: String,
    /// The float model's accuracy on the validation set.
    pub float_accuracy: Option<f64>,
    /// The fixed-point emulation's accuracy on it.
    pub accuracy: Option<f64>,
    /// What each gate of a funnel decided for it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub selection: String,
    /// The search's hyperparameters and metrics for its model (metrics win a name both use).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub search: BTreeMap<String, serde_json::Value>,
}

/// The search's hyperparameters and metrics in one map, from `TrialInfo.search_json`.
fn search_columns(json: &str) -> BTreeMap<String, serde_json::Value> {
    let Ok(info) = serde_json::from_str::<hlsfarm_common::results::SearchInfo>(json) else {
        return BTreeMap::new();
    };
    let mut columns = info.hyperparameters;
    columns.extend(info.metrics);
    columns
}

/// A sweep and its trials (`GET /api/sweeps/{id}/trials`).
#[derive(Debug, Clone, Serialize)]
pub struct SweepTrialsJson {
    /// The sweep.
    pub sweep: Option<SweepJson>,
    /// Its trials.
    pub trials: Vec<TrialJson>,
}

/// A wire enum's name without its prefix, in lower case (`TRIAL_STATE_LEASED` → `leased`).
fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

/// A trial state's name.
pub fn state_name(raw: i32) -> String {
    v1::TrialState::try_from(raw)
        .map(|s| enum_name(s.as_str_name(), "TRIAL_STATE_"))
        .unwrap_or_default()
}

/// A stage's name (empty when unset).
pub fn stage_name(raw: i32) -> String {
    v1::Stage::try_from(raw)
        .ok()
        .filter(|s| *s != v1::Stage::Unspecified)
        .map(|s| enum_name(s.as_str_name(), "STAGE_"))
        .unwrap_or_default()
}

fn reason(f: Option<&v1::Failure>) -> String {
    f.map(|f| f.reason.clone()).unwrap_or_default()
}

fn class_name(f: Option<&v1::Failure>) -> String {
    f.and_then(|f| v1::FailureClass::try_from(f.class).ok())
        .map(|c| enum_name(c.as_str_name(), "FAILURE_CLASS_"))
        .unwrap_or_default()
}

/// Seconds as `42s`, `3m07s` or `2h05m`.
pub fn humantime_secs(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl From<&v1::SweepStatus> for SweepJson {
    fn from(w: &v1::SweepStatus) -> SweepJson {
        SweepJson {
            id: w.sweep_id.clone(),
            name: w.name.clone(),
            priority: w.priority,
            counts: w.counts.clone().into_iter().collect(),
            eta_seconds: w.eta_seconds,
            eta_sd_seconds: w.eta_sd_seconds,
            submitted_unix_ms: w.submitted_unix_ms,
            gates: w.gates.clone(),
        }
    }
}

impl From<&v1::GetStatusResponse> for StatusJson {
    fn from(s: &v1::GetStatusResponse) -> StatusJson {
        StatusJson {
            sweeps: s.sweeps.iter().map(SweepJson::from).collect(),
            workers: s
                .workers
                .iter()
                .map(|w| {
                    let caps = w.capabilities.clone().unwrap_or_default();
                    WorkerJson {
                        id: w.worker_id.clone(),
                        hostname: w.hostname.clone(),
                        trials: w
                            .trials
                            .iter()
                            .map(|t| RunningJson {
                                trial: t.trial_key.clone(),
                                sweep: t.sweep_id.clone(),
                                stage: stage_name(t.current_stage),
                                phase: t.phase.clone(),
                                attempt: t.attempt,
                                seconds: t.running_seconds,
                                predicted_seconds: t.predicted_seconds,
                            })
                            .collect(),
                        heartbeat_age_seconds: w.heartbeat_age_seconds,
                        draining: w.draining,
                        slots: caps.slots,
                        cores: caps.cores,
                        memory_mib: caps.memory_mib,
                        formats: caps.formats.clone(),
                        hls4ml_version: caps.hls4ml_version.clone(),
                        tools: caps.tools.into_iter().collect(),
                    }
                })
                .collect(),
            seats: s
                .seats
                .iter()
                .map(|x| SeatJson {
                    feature: x.feature.clone(),
                    in_use: x.in_use,
                    limit: x.limit,
                })
                .collect(),
            recent_failures: s
                .recent_failures
                .iter()
                .map(|t| FailureJson {
                    trial: t.trial_key.clone(),
                    sweep: t.sweep_id.clone(),
                    state: state_name(t.state),
                    class: class_name(t.failure.as_ref()),
                    reason: reason(t.failure.as_ref()),
                })
                .collect(),
        }
    }
}

/// Settings in short: `rf4 io_parallel latency ap_fixed<16,6> xc7z020clg400-1 5ns vitis`.
fn settings_label(s: Option<&v1::Settings>) -> String {
    let Some(s) = s else {
        return String::new();
    };
    let io = v1::IoType::try_from(s.io_type)
        .map(|v| enum_name(v.as_str_name(), "IO_TYPE_"))
        .unwrap_or_default();
    let strategy = v1::Strategy::try_from(s.strategy)
        .map(|v| enum_name(v.as_str_name(), "STRATEGY_"))
        .unwrap_or_default();
    let backend = v1::Backend::try_from(s.backend)
        .map(|v| enum_name(v.as_str_name(), "BACKEND_"))
        .unwrap_or_default();
    format!(
        "rf{} io_{io} {strategy} {} {} {}ns {backend}",
        s.reuse_factor, s.precision, s.part, s.clock_period_ns
    )
}

impl From<&v1::GetResultsResponse> for SweepTrialsJson {
    fn from(r: &v1::GetResultsResponse) -> SweepTrialsJson {
        SweepTrialsJson {
            sweep: r.sweep.as_ref().map(SweepJson::from),
            trials: r
                .trials
                .iter()
                .map(|t| {
                    let summary: Option<ResultSummary> = t
                        .result
                        .as_ref()
                        .and_then(|r| serde_json::from_str(&r.result_json).ok());
                    let summary = summary.unwrap_or_default();
                    TrialJson {
                        key: t.trial_key.clone(),
                        model: t.model_name.clone(),
                        settings: settings_label(t.settings.as_ref()),
                        state: if t.reused {
                            "reused".to_owned()
                        } else {
                            state_name(t.state)
                        },
                        stage: stage_name(t.current_stage),
                        phase: t.phase.clone(),
                        worker: t.worker_id.clone(),
                        attempt: t.attempt,
                        reused: t.reused,
                        seconds: (summary.seconds > 0.0).then_some(summary.seconds),
                        predicted_seconds: t.predicted_seconds,
                        predicted_memory_mib: t.predicted_memory_mib,
                        lut: summary.lut,
                        ff: summary.ff,
                        dsp: summary.dsp,
                        bram: summary.bram,
                        latency_cycles: summary.latency_cycles,
                        latency_ns: summary.latency_ns,
                        max_abs_diff: summary.max_abs_diff,
                        fidelity: summary.fidelity.clone(),
                        fidelity_warning: summary.fidelity_warning,
                        class: class_name(t.failure.as_ref()),
                        reason: reason(t.failure.as_ref()),
                        float_accuracy: summary.float_accuracy,
                        accuracy: summary.accuracy,
                        selection: t.selection.clone(),
                        search: search_columns(&t.search_json),
                    }
                })
                .collect(),
        }
    }
}
