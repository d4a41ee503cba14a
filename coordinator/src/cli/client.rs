//! The operator commands that talk to a coordinator: `submit`, `status`, `cancel`, `retry`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use hlsfarm_common::trial_key::sha256_hex;
use hlsfarm_proto::client::{Bearer, Unreachable, channel};
use hlsfarm_proto::v1::{self, operator_client::OperatorClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::sweep_args::{SweepArgs, sweep_spec};
use crate::view::{StatusJson, humantime_secs};

/// How to reach the coordinator.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The coordinator's URL.
    #[arg(long, env = "HLSFARM_URL", default_value = "http://127.0.0.1:7070")]
    pub coordinator: String,
    /// The operator token (coordinator.operator_token).
    #[arg(long, env = "HLSFARM_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM certificate of the CA that signed an `https://` coordinator's certificate (a
    /// private CA); the system's roots are trusted too.
    #[arg(long, env = "HLSFARM_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
}

pub(crate) type Client = OperatorClient<InterceptedService<Channel, Bearer>>;

pub(crate) fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let (channel, bearer) = channel(&args.coordinator, &args.token, args.ca_cert.as_deref())
        .map_err(anyhow::Error::msg)?;
    Ok(OperatorClient::with_interceptor(channel, bearer).max_decoding_message_size(256 << 20))
}

pub(crate) fn status_error(s: tonic::Status, url: &str) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unavailable if s.message().starts_with("coordinator backend") => {
            anyhow::anyhow!("the coordinator at {url} failed: {}", s.message())
        }
        tonic::Code::Unavailable => match Unreachable::of(&s) {
            why @ Unreachable::UntrustedCertificate(_) => {
                anyhow::anyhow!("cannot reach the coordinator at {url}: {why}")
            }
            why @ Unreachable::Other(_) => anyhow::anyhow!(
                "cannot reach the coordinator at {url} ({why}); is `hlsfarm serve` running there? (--coordinator / HLSFARM_URL)"
            ),
        },
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => anyhow::anyhow!(
            "{}: use the operator token (--token / HLSFARM_TOKEN)",
            s.message()
        ),
        _ => anyhow::anyhow!("{}", s.message()),
    }
}

/// Flags of `hlsfarm submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// Which models, settings and stages.
    #[command(flatten)]
    pub sweep: SweepArgs,
    /// The coordinator.
    #[command(flatten)]
    pub client: ClientArgs,
    /// A name for the sweep (shown in status).
    #[arg(long)]
    pub name: Option<String>,
    /// Share of workers against other sweeps (≥ 1).
    #[arg(long)]
    pub priority: Option<u32>,
    /// Wait until the sweep ends, showing progress; exit 1 when a trial failed.
    #[arg(long)]
    pub wait: bool,
    /// Before uploading, convert every trial here with hls4ml (no tools) and print what the
    /// tools would refuse or struggle with, as `hlsfarm check` does; needs the hls4ml venv
    /// on this machine.
    #[arg(long)]
    pub preflight: bool,
    /// With --preflight: submit nothing when a trial would be refused by the tools or does
    /// not convert (exit 1).
    #[arg(long, requires = "preflight")]
    pub strict: bool,
    /// Python of the hls4ml venv for --preflight [default: $HLSFARM_PYTHON, else the venv
    /// `make setup` made].
    #[arg(long, value_name = "PATH")]
    pub python: Option<std::path::PathBuf>,
    /// Keep watching the model folder and add each new model that matches the pattern to
    /// the sweep once its file is complete (its size unchanged for 2 s), so the cluster
    /// works while the search writes them; ends when trials_summary.json appears, after
    /// --follow-count models, or on Ctrl-C. The sweep's gates and aggregate wait until then,
    /// and apply to what arrived.
    #[arg(long, conflicts_with = "preflight")]
    pub follow: bool,
    /// With --follow: stop following after this many models.
    #[arg(long = "follow-count", value_name = "N", requires = "follow")]
    pub follow_count: Option<usize>,
}

/// What every model of a sweep is uploaded with: its companions, the validation set, and
/// the search's records.
pub(crate) struct Uploads<'a> {
    pub(crate) args: &'a SweepArgs,
    pub(crate) validation: Option<std::path::PathBuf>,
}

impl Uploads<'_> {
    /// Uploads `models` with their companions; returns them as the wire names them, and the
    /// search's records of those `table` has.
    pub(crate) async fn models(
        &self,
        client: &mut Client,
        coordinator: &str,
        models: &[std::path::PathBuf],
        table: &hlsfarm_common::search::SearchTable,
    ) -> anyhow::Result<(Vec<v1::ModelInput>, SearchRecords)> {
        let mut inputs = Vec::new();
        let mut search = SearchRecords::new();
        for model in models {
            let (sha, size) = upload(client, model)
                .await
                .map_err(|e| e.context(format!("coordinator {coordinator}")))?;
            let mut roles = std::collections::HashMap::new();
            for (role, path) in crate::cli::sweep_args::model_companions(model, self.args)? {
                roles.insert(role, upload(client, &path).await?.0);
            }
            if let Some(v) = &self.validation {
                roles.insert("validation".to_owned(), upload(client, v).await?.0);
            }
            let name = model
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(info) = table.lookup(&name) {
                search.insert(name.clone(), info);
            }
            inputs.push(v1::ModelInput {
                name,
                sha256: sha,
                size_bytes: size,
                companions: roles,
            });
        }
        Ok((inputs, search))
    }
}

/// The search's records by model file name, as `search_json` carries them.
pub(crate) type SearchRecords =
    std::collections::BTreeMap<String, hlsfarm_common::results::SearchInfo>;

/// `search_json`: empty for no records.
pub(crate) fn search_json(search: &SearchRecords) -> anyhow::Result<String> {
    Ok(if search.is_empty() {
        String::new()
    } else {
        serde_json::to_string(search)?
    })
}

async fn upload(client: &mut Client, path: &Path) -> anyhow::Result<(String, u64)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sha = sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut chunks = Vec::new();
    let mut first = true;
    for piece in bytes
        .chunks(1 << 20)
        .chain(bytes.is_empty().then_some(&[][..]))
    {
        chunks.push(v1::UploadChunk {
            name: if first { name.clone() } else { String::new() },
            sha256: if first { sha.clone() } else { String::new() },
            data: piece.to_vec(),
        });
        first = false;
    }
    client
        .upload_model(tokio_stream::iter(chunks))
        .await
        .map_err(|s| anyhow::anyhow!("uploading {}: {}", path.display(), s.message()))?;
    Ok((sha, size))
}

/// `hlsfarm submit`: uploads the models, submits the sweep, prints its id.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<i32> {
    let (mut spec, base) = sweep_spec(&args.sweep)?;
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    if let Some(p) = args.priority {
        spec.priority = p.max(1);
    }
    // The search's records (Keras Tuner's files beside the models, --metrics): joined to the
    // results and read by the gates on the coordinator.
    let source = crate::cli::sweep_args::SearchSource {
        dir: spec.models.dir.as_ref().map(|d| base.join(d)),
        metrics: spec.metrics.as_ref().map(|m| base.join(m)),
    };
    let table = source.load()?;
    let validation = crate::cli::sweep_args::validation_path(&spec, &base)?;
    if args.preflight {
        let checked =
            crate::cli::check::check_selection(&args.sweep, args.python.as_deref(), |line| {
                eprintln!("hlsfarm: preflight: {line}")
            })
            .await?;
        eprintln!("hlsfarm: preflight: {}", checked.summary());
        if args.strict && (checked.errors > 0 || checked.failed > 0) {
            eprintln!(
                "hlsfarm: nothing submitted (--strict): fix the settings above (or `hlsfarm run --fix` derives the fixed trials)"
            );
            return Ok(1);
        }
    }
    let mut client = connect(&args.client)?;
    let uploads = Uploads {
        args: &args.sweep,
        validation,
    };
    let mut follower = if args.follow {
        let dir = spec.models.dir.as_ref().map(|d| base.join(d)).ok_or_else(|| {
            anyhow::anyhow!(
                "--follow watches a model folder: give --input-dir (or models.dir in the sweep file)"
            )
        })?;
        let pattern = spec
            .models
            .pattern
            .clone()
            .unwrap_or_else(|| hlsfarm_common::sweep::DEFAULT_PATTERN.to_owned());
        Some(crate::cli::submit_follow::Follower::new(
            &dir,
            &pattern,
            args.follow_count,
        )?)
    } else {
        None
    };
    let (models, table) = match follower.as_mut() {
        // The search's files as they are once the first model is there.
        Some(f) => (f.first_models().await?, source.load_or_warn()),
        None => (spec.models.resolve(&base)?, table),
    };
    let (inputs, search) = uploads
        .models(&mut client, &args.client.coordinator, &models, &table)
        .await?;
    let wire = v1::SweepSpec {
        name: spec.name.clone(),
        models: inputs,
        grid: Some((&spec.grid).into()),
        stages: spec
            .normalized_stages()
            .into_iter()
            .map(|s| v1::Stage::from(s) as i32)
            .collect(),
        priority: spec.priority,
        force: spec.force,
        emulation_samples: spec.emulation.samples,
        emulation_seed: spec.emulation.seed,
        toolchain: spec.toolchain.as_ref().map(|t| v1::ToolchainSpec {
            hls4ml_version: t.hls4ml_version.clone(),
            tool: t.tool.clone(),
            tool_version: t.tool_version.clone(),
        }),
        resources: spec.resources.map(|r| v1::TrialResources {
            memory_mib: r.memory_mib,
            cores: r.cores,
        }),
        on_failure: if spec.on_failure.is_report() {
            String::new()
        } else {
            spec.on_failure.as_str().to_owned()
        },
        select_json: if spec.select.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&spec.select)?
        },
        search_json: search_json(&search)?,
        follow: args.follow,
    };
    let answer = client
        .submit_sweep(v1::SubmitSweepRequest { spec: Some(wire) })
        .await
        .map_err(|s| status_error(s, &args.client.coordinator))?
        .into_inner();
    eprintln!(
        "hlsfarm: sweep {}: {} models, {} trials ({} queued, {} reused)",
        answer.sweep_id,
        models.len(),
        answer.trials,
        answer.queued,
        answer.reused
    );
    println!("{}", answer.sweep_id);
    if let Some(follower) = follower {
        follower
            .run(
                &mut client,
                &args.client.coordinator,
                &answer.sweep_id,
                &uploads,
                &source,
                models,
            )
            .await?;
    }
    if !args.wait {
        return Ok(0);
    }
    wait_for(&mut client, &answer.sweep_id, answer.trials).await
}

fn count(s: &v1::SweepStatus, state: &str) -> u64 {
    s.counts.get(state).copied().unwrap_or(0)
}

/// Shows a sweep's progress until it ends; 0 when every trial succeeded.
async fn wait_for(client: &mut Client, sweep: &str, total: u64) -> anyhow::Result<i32> {
    let progress = crate::progress::Progress::new(total);
    let mut last = String::new();
    loop {
        let status = client
            .get_results(v1::GetResultsRequest {
                sweep_id: sweep.to_owned(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        let s = status.sweep.unwrap_or_default();
        let done = count(&s, "succeeded")
            + count(&s, "failed")
            + count(&s, "cancelled")
            + count(&s, "dead");
        let line = format!(
            "{} succeeded, {} failed, {} running, {} queued{}",
            count(&s, "succeeded") + count(&s, "reused"),
            count(&s, "failed") + count(&s, "dead"),
            count(&s, "leased"),
            count(&s, "queued"),
            s.eta_seconds
                .filter(|e| *e > 0.0)
                .map(|e| format!(", ETA {}", humantime_secs(e)))
                .unwrap_or_default()
        );
        if line != last {
            progress.set(done + count(&s, "reused"), &line);
            last = line;
        }
        // Finished once nothing runs and the coordinator has aggregated it (a funnel's next
        // gate may queue more before that).
        if count(&s, "queued") + count(&s, "leased") == 0 && !s.pending {
            progress.done();
            for line in &s.gates {
                eprintln!("hlsfarm: {line}");
            }
            let failed: Vec<&v1::TrialInfo> = status
                .trials
                .iter()
                .filter(|t| t.failure.is_some())
                .collect();
            for t in &failed {
                if let Some(f) = &t.failure {
                    eprintln!(
                        "hlsfarm: {} {}: {}",
                        t.model_name,
                        &t.trial_key[..t.trial_key.len().min(12)],
                        f.reason
                    );
                }
            }
            eprintln!("hlsfarm: sweep {sweep} finished: {last}");
            let bad = count(&s, "failed") + count(&s, "dead") + count(&s, "cancelled");
            return Ok(if bad == 0 { 0 } else { 1 });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `hlsfarm status`.
pub async fn status(args: &ClientArgs, all: bool, json: bool) -> anyhow::Result<i32> {
    let mut client = connect(args)?;
    let s = client
        .get_status(v1::GetStatusRequest {
            include_finished: all,
        })
        .await
        .map_err(|s| status_error(s, &args.coordinator))?
        .into_inner();
    let out = StatusJson::from(&s);
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    println!("SWEEPS");
    if out.sweeps.is_empty() {
        println!("  none active (--all shows finished ones)");
    }
    for w in &out.sweeps {
        let c = |k: &str| w.counts.get(k).copied().unwrap_or(0);
        println!(
            "  {}  {:<24} prio {}  queued {}  running {}  succeeded {}  failed {}  dead {}  cancelled {}  reused {}{}",
            w.id,
            w.name,
            w.priority,
            c("queued"),
            c("leased"),
            c("succeeded"),
            c("failed"),
            c("dead"),
            c("cancelled"),
            c("reused"),
            w.eta_seconds
                .map(|_| format!("  ETA {}", w.eta_text()))
                .unwrap_or_default()
        );
        for line in &w.gates {
            println!("      {line}");
        }
    }
    println!("WORKERS");
    if out.workers.is_empty() {
        println!("  none registered");
    }
    for w in &out.workers {
        println!(
            "  {:<28} {} slots  heard {:.1} s ago{}  running {}  tools {}",
            w.id,
            w.slots,
            w.heartbeat_age_seconds,
            if w.draining { "  DRAINING" } else { "" },
            w.trials.len(),
            if w.tools.is_empty() {
                "none".to_owned()
            } else {
                w.tools
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        for t in &w.trials {
            println!(
                "      {}  {}  attempt {}  {}",
                &t.trial[..t.trial.len().min(12)],
                t.stage,
                t.attempt,
                t.elapsed_text()
            );
        }
    }
    if !out.seats.is_empty() {
        println!("SEATS");
        for x in &out.seats {
            println!(
                "  {:<8} {} in use of {}",
                x.feature,
                x.in_use,
                if x.limit == 0 {
                    "unlimited".to_owned()
                } else {
                    x.limit.to_string()
                }
            );
        }
    }
    if !out.recent_failures.is_empty() {
        println!("RECENT FAILURES");
        for f in out.recent_failures.iter().take(10) {
            println!(
                "  {}  {}  {}  {}: {}",
                &f.trial[..f.trial.len().min(12)],
                f.sweep,
                f.state,
                f.class,
                f.reason
            );
        }
    }
    Ok(0)
}

/// `hlsfarm cancel`.
pub async fn cancel(args: &ClientArgs, sweep: &str, keys: &[String]) -> anyhow::Result<i32> {
    let mut client = connect(args)?;
    let r = client
        .cancel(v1::CancelRequest {
            sweep_id: sweep.to_owned(),
            trial_keys: keys.to_vec(),
        })
        .await
        .map_err(|s| status_error(s, &args.coordinator))?
        .into_inner();
    eprintln!(
        "hlsfarm: {} queued trials dropped, {} running trials ordered to stop",
        r.dropped, r.stopping
    );
    Ok(0)
}

/// `hlsfarm retry`.
pub async fn retry(args: &ClientArgs, sweep: &str, keys: &[String]) -> anyhow::Result<i32> {
    let mut client = connect(args)?;
    let r = client
        .retry(v1::RetryRequest {
            sweep_id: sweep.to_owned(),
            trial_keys: keys.to_vec(),
        })
        .await
        .map_err(|s| status_error(s, &args.coordinator))?
        .into_inner();
    eprintln!("hlsfarm: {} trials queued again", r.requeued);
    if r.requeued == 0 {
        bail!("nothing to retry in sweep {sweep}: no failed, dead or cancelled trials");
    }
    Ok(0)
}
