//! `hlsfarm serve`: the coordinator (DESIGN §2). Stateless: every fact lives in Redis, so it
//! can restart at any time and two of them can serve one cluster. It serves the Operator and
//! Worker gRPC services and the web page, and runs its loops: the reaper (expired leases), the
//! committer (the accepted attempt's `result.json` into `results/<key>/`), the aggregator (a
//! finished sweep's `synthesis_results.json`, once), the learner and the event tail.
//!
//! - The core, free of any transport: [`Coordinator`] and its calls in `operator` (upload,
//!   submit, status, watch, results, cancel, retry, drain), `workers` (register, lease,
//!   heartbeat, hand back) and `complete` (in its own steps), with `validate` (what a
//!   submitted spec must satisfy), `planning` (a sweep into trials), `matcher` (parked lease
//!   calls), `funnel`, `summary` and `learn`. Every call answers an [`Error`].
//! - The adapters, a few lines a call: `grpc` (the two services), `http` (the JSON API and
//!   the page), `auth` (bearer tokens); [`error`] holds the one map to gRPC codes and the one
//!   to HTTP statuses.
//! - `background` (the loops) and `metrics` (`/metrics`).

pub mod auth;
mod background;
mod complete;
pub mod error;
mod funnel;
mod grpc;
mod http;
mod learn;
mod matcher;
mod metrics;
mod operator;
mod planning;
mod summary;
mod validate;
mod workers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hlsfarm_common::blob::Blobs;
use hlsfarm_common::config::Config;
use hlsfarm_common::plan::{Requirement, SweepPlan, WorkerCaps};
use hlsfarm_common::queue::QueueConfig;
use hlsfarm_common::store::RedisQueue;
use hlsfarm_common::sync::lock;
use hlsfarm_proto::v1::operator_server::OperatorServer;
use hlsfarm_proto::v1::worker_server::WorkerServer;

pub use error::Error;

/// The coordinator's shared state: connections and caches of immutable facts.
pub struct Coordinator {
    queue: RedisQueue,
    blobs: Blobs,
    config: Config,
    /// Parked lease calls, matched to work when it may have appeared.
    matcher: matcher::Matcher,
    /// Wakes the claims loops (commits, aggregates) when a trial ends.
    claims: tokio::sync::watch::Sender<u64>,
    /// This process's name on the wake channel (its own messages are skipped).
    instance: String,
    /// Capability classes (immutable once written), refreshed from Redis.
    classes: Mutex<(Instant, HashMap<String, Requirement>)>,
    /// Workers' capabilities by id (a worker re-registers under a new id when they change).
    caps: Mutex<HashMap<String, WorkerCaps>>,
    /// Sweep plans by id with when they were read: immutable once submitted, except that an
    /// open sweep's (`submit --follow`) gains models, so it is read again after a second.
    plans: Mutex<HashMap<String, (Instant, Arc<SweepPlan>)>>,
    /// Cancelled when the process stops: long polls and watches end.
    stop: tokio_util::sync::CancellationToken,
    /// Prometheus metrics.
    metrics: metrics::Metrics,
    /// One funnel step at a time in this process (steps are idempotent across processes).
    funnel_lock: tokio::sync::Mutex<()>,
    /// Each funnel sweep's phase keys (computed from its immutable plan).
    funnel_keys: Mutex<HashMap<String, (usize, Arc<funnel::PhaseKeys>)>>,
    /// Ended trials' results, read once from the store.
    results: summary::ResultCache,
    /// The latest fit of the duration and memory estimates.
    learned: Mutex<learn::Learned>,
}

/// Seconds since `leased_at_ms` (ms since the Unix epoch), as a leased trial has run.
fn seconds_since(leased_at_ms: i64) -> f64 {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    (now_ms - leased_at_ms).max(0) as f64 / 1000.0
}

impl Coordinator {
    /// Connects to Redis and the store named by `config`.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Coordinator>> {
        let c = &config.coordinator;
        let queue = RedisQueue::connect(
            c.redis_url.expose(),
            &c.key_prefix,
            QueueConfig {
                lease: Duration::from_millis(c.lease_ms),
                max_attempts: c.max_attempts,
                retry_backoff: Duration::from_millis(c.retry_backoff_ms),
                max_refusals: c.max_licence_refusals,
                refusal_backoff: Duration::from_millis(c.licence_backoff_ms),
                seat_hold: Duration::from_millis(c.seat_hold_ms),
            },
        )
        .await
        .context("cannot connect to Redis (coordinator.redis_url); is redis-server running?")?;
        let blobs = Blobs::open(&config.store).context("cannot open the store (store.url)")?;
        Ok(Arc::new(Coordinator {
            queue,
            blobs,
            config,
            matcher: matcher::Matcher::new(),
            claims: tokio::sync::watch::Sender::new(0),
            instance: format!(
                "{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ),
            classes: Mutex::new((Instant::now() - Duration::from_secs(3600), HashMap::new())),
            caps: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            stop: tokio_util::sync::CancellationToken::new(),
            metrics: metrics::Metrics::new(),
            funnel_lock: tokio::sync::Mutex::new(()),
            funnel_keys: Mutex::new(HashMap::new()),
            results: summary::ResultCache::default(),
            learned: Mutex::default(),
        }))
    }

    /// The Redis queue.
    pub fn queue(&self) -> &RedisQueue {
        &self.queue
    }

    async fn classes(&self) -> Result<HashMap<String, Requirement>, Error> {
        {
            let cached = lock(&self.classes);
            if cached.0.elapsed() < Duration::from_secs(1) {
                return Ok(cached.1.clone());
            }
        }
        let raw = self.queue.classes().await?;
        let parsed: HashMap<String, Requirement> = raw
            .into_iter()
            .filter_map(|(id, json)| serde_json::from_str(&json).ok().map(|r| (id, r)))
            .collect();
        *lock(&self.classes) = (Instant::now(), parsed.clone());
        Ok(parsed)
    }

    async fn worker_caps(&self, worker: &str) -> Result<WorkerCaps, Error> {
        if let Some(caps) = lock(&self.caps).get(worker) {
            return Ok(caps.clone());
        }
        let json = self
            .queue
            .worker_capabilities(worker)
            .await?
            .ok_or_else(|| Error::NotRegistered(worker.to_owned()))?;
        let caps: WorkerCaps = serde_json::from_str(&json)
            .map_err(|e| Error::corrupt(format!("capabilities of worker {worker}"), e))?;
        lock(&self.caps).insert(worker.to_owned(), caps.clone());
        Ok(caps)
    }

    /// The most memory any worker known here offers trials (MiB), counting `worker` (the one
    /// reporting) even if it is not cached: how much an out-of-memory retry may reserve.
    async fn largest_worker_memory(&self, worker: &str) -> u64 {
        let own = self.worker_caps(worker).await.map_or(0, |c| c.memory_mib);
        lock(&self.caps)
            .values()
            .map(|c| c.memory_mib)
            .fold(own, u64::max)
    }

    async fn plan(&self, sweep: &str) -> Result<Arc<SweepPlan>, Error> {
        if let Some((read, plan)) = lock(&self.plans).get(sweep)
            && (!plan.open || read.elapsed() < Duration::from_secs(1))
        {
            return Ok(plan.clone());
        }
        Ok(Arc::new(self.fresh_plan(sweep).await?))
    }

    /// A sweep's plan as Redis has it now (and cached).
    async fn fresh_plan(&self, sweep: &str) -> Result<SweepPlan, Error> {
        let json = self.queue.sweep_plan(sweep).await?;
        let plan: SweepPlan = serde_json::from_str(&json)
            .map_err(|e| Error::corrupt(format!("plan of sweep {sweep}"), e))?;
        let plan = plan.expanded();
        lock(&self.plans).insert(sweep.to_owned(), (Instant::now(), Arc::new(plan.clone())));
        Ok(plan)
    }

    /// Forgets a cached plan (its sweep gained models).
    fn forget_plan(&self, sweep: &str) {
        lock(&self.plans).remove(sweep);
    }
}

/// The TLS identity from `coordinator.tls_cert` and `tls_key`, or `None` for plain TCP.
fn tls_config(
    c: &hlsfarm_common::config::CoordinatorConfig,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    if c.tls_cert.as_os_str().is_empty() {
        return Ok(None);
    }
    let read = |path: &std::path::Path, key: &str| {
        std::fs::read(path)
            .with_context(|| format!("cannot read {} (coordinator.{key})", path.display()))
    };
    let cert = read(&c.tls_cert, "tls_cert")?;
    let key = read(&c.tls_key, "tls_key")?;
    if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
        bail!(
            "{} (coordinator.tls_cert) holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            c.tls_cert.display()
        );
    }
    if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
        bail!(
            "{} (coordinator.tls_key) holds no PEM private key",
            c.tls_key.display()
        );
    }
    Ok(Some(
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key)),
    ))
}

/// Runs the coordinator until SIGTERM or Ctrl-C, on `coordinator.listen`.
pub async fn serve(config: Config) -> anyhow::Result<i32> {
    let listen: std::net::SocketAddr = config
        .coordinator
        .listen
        .parse()
        .context("coordinator.listen")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (coordinator.listen)"))?;
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    serve_on(config, listener, shutdown).await
}

/// Runs the coordinator on `listener` until `shutdown` completes (then new calls are refused,
/// running calls finish, the background loops stop): what `serve` runs, and what a test runs
/// in its own process.
pub async fn serve_on(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<i32> {
    let c = &config.coordinator;
    if c.operator_token.is_empty() || c.worker_token.is_empty() {
        bail!(
            "set both coordinator.operator_token and coordinator.worker_token (e.g. \
             HLSFARM_COORDINATOR__OPERATOR_TOKEN and HLSFARM_COORDINATOR__WORKER_TOKEN): every \
             call must carry one"
        );
    }
    let tokens = auth::Tokens::new(c.operator_token.expose(), c.worker_token.expose());
    let coordinator = Coordinator::connect(config.clone()).await?;
    let stop = coordinator.stop.clone();
    let mut loops = background::spawn(coordinator.clone(), stop.clone());
    loops.push(tokio::spawn(metrics::tail_events(
        coordinator.clone(),
        stop.clone(),
    )));

    let operator = OperatorServer::with_interceptor(
        grpc::OperatorApi::new(coordinator.clone()),
        tokens.interceptor(auth::Role::Operator),
    );
    let worker = WorkerServer::with_interceptor(
        grpc::WorkerApi::new(coordinator.clone()),
        tokens.interceptor(auth::Role::Worker),
    );
    let local = listener.local_addr()?;
    let tls = tls_config(c)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %local, tls = tls.is_some(), "coordinator listening");
    eprintln!(
        "hlsfarm: coordinator listening on {local} (gRPC; status page and /metrics at {scheme}://{local}/)"
    );
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("stopping: new calls refused, running calls finish");
            stop.cancel();
        }
    };
    // gRPC and the web page share the port: HTTP/1.1 for browsers and scrapers, HTTP/2 for
    // gRPC.
    let routes = tonic::service::Routes::new(operator)
        .add_service(worker)
        .into_axum_router()
        .merge(http::router(coordinator.clone(), tokens.clone()));
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .context("the TLS certificate or key (coordinator.tls_cert, tls_key)")?;
    }
    server
        .accept_http1(true)
        .trace_fn(|request| tracing::info_span!("rpc", path = %request.uri().path()))
        .add_routes(routes.into())
        .serve_with_incoming_shutdown(
            // Small request/response messages: without TCP_NODELAY, delayed ACKs add ~40 ms
            // to a lease or completion.
            tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(std::time::Duration::from_secs(60))),
            shutdown,
        )
        .await
        .context("the gRPC server failed")?;
    stop.cancel();
    for handle in loops {
        let _ = handle.await;
    }
    Ok(0)
}
