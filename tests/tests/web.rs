//! What operators watch, on a live cluster of real processes: the coordinator's status page
//! in headless Chromium (driven over WebDriver by chromedriver), Prometheus `/metrics`, and
//! `hlsfarm status --json` against the coordinator's `/api/status` and Redis itself.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use hlsfarm_tests::cluster::{Cluster, ClusterOptions, OPERATOR_TOKEN};
use hlsfarm_tests::{Process, TestDir, free_port, run_ok, wait_until};

fn copy_examples(dir: &Path, n: usize) -> PathBuf {
    hlsfarm_tests::copy_example_trials(dir, n).unwrap()
}

fn get(url: &str) -> (String, String) {
    let mut response = ureq::get(url).call().unwrap();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    (content_type, response.body_mut().read_to_string().unwrap())
}

/// A parsed scrape of `/metrics`.
struct Metrics(prometheus_parse::Scrape);

impl Metrics {
    fn scrape(base: &str) -> Metrics {
        let (content_type, body) = get(&format!("{base}/metrics"));
        assert!(content_type.contains("text"), "{content_type}");
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Metrics(prometheus_parse::Scrape::parse(lines).expect("the Prometheus text parser"))
    }

    /// The value of the sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        self.0
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
                Value::Summary(_) => f64::NAN,
            })
    }
}

/// chromedriver on a free port.
fn chromedriver(dir: &Path) -> (Process, u16) {
    let bin = std::env::var_os("HLSFARM_CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"));
    assert!(
        bin.is_file(),
        "{} is missing: run `bash .ci/setup` (it installs Debian's chromium and chromium-driver)",
        bin.display()
    );
    let port = free_port().unwrap();
    let mut command = Command::new(bin);
    command.arg(format!("--port={port}"));
    let process = Process::spawn("chromedriver", command, dir).unwrap();
    wait_until("chromedriver to listen", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .unwrap();
    (process, port)
}

async fn browser(port: u16, profile: &Path) -> fantoccini::Client {
    let chromium = std::env::var("HLSFARM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1500,1100",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// Waits until `css` matches at least `n` elements.
async fn wait_for(c: &fantoccini::Client, css: &str, n: usize, limit: Duration) {
    let started = Instant::now();
    loop {
        let found = c.find_all(Locator::Css(css)).await.unwrap().len();
        if found >= n {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "`{css}` matched {found} elements, not {n}, within {limit:?}; page text:\n{}",
            c.find(Locator::Css("body"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn js(c: &fantoccini::Client, script: &str) -> serde_json::Value {
    c.execute(script, Vec::new()).await.unwrap()
}

/// Where test artifacts (the screenshot) are kept: `target/test-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let dir = hlsfarm_tests::tests_dir().join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_status_page_metrics_and_status_json_follow_a_live_sweep() {
    let dir = TestDir::new("web").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let base = cluster.url(0);

    // Before any work: the page and its assets, all from the coordinator.
    let mut page_bytes = 0;
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let (content_type, body) = get(&format!("{base}{path}"));
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert!(
            !body.contains("http://") || path != "/",
            "the page must not load anything from elsewhere"
        );
        page_bytes += body.len();
    }
    let before = Metrics::scrape(&base);
    let granted_before = before
        .value("hlsfarm_leases_granted_total", &[])
        .expect("hlsfarm_leases_granted_total");
    assert_eq!(before.value("hlsfarm_workers_alive", &[]), Some(0.0));

    // One slot and a slow C synthesis: the sweep is visibly running for a while.
    let worker = cluster
        .start_worker("w1", &["--slots", "1"], &[("STANDIN_SLEEP", "4")])
        .unwrap();
    wait_until("the worker to register", Duration::from_secs(120), || {
        worker.stderr().contains("registered with").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));
    let models = copy_examples(dir.path(), 3);
    let mut submit = cluster.operator_command().unwrap();
    submit.arg("submit").arg("--input-dir").arg(&models).args([
        "--stages",
        "convert,emulate,csynth",
        "--name",
        "web-live",
    ]);
    let sweep = String::from_utf8(run_ok(submit).unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();

    let (_driver, driver_port) = chromedriver(dir.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let screenshot = artifacts_dir().join("status-page.png");
    runtime.block_on(async {
        let c = browser(driver_port, &dir.join("chromium-profile")).await;
        c.goto(&format!("{base}/")).await.unwrap();
        // The sweep shows, and its trials; no cancel button without the operator token.
        wait_for(
            &c,
            &format!("tr[data-sweep='{sweep}']"),
            1,
            Duration::from_secs(30),
        )
        .await;
        wait_for(
            &c,
            "#trials tbody tr[data-trial]",
            3,
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(
            js(&c, "return document.getElementById('live').textContent").await,
            "live"
        );
        assert!(
            c.find_all(Locator::XPath("//button[text()='Cancel']"))
                .await
                .unwrap()
                .is_empty()
        );
        // A mark that a reload would wipe.
        js(&c, "window.__sameDocument = true; return 1").await;
        wait_for(
            &c,
            "#trials tbody tr[data-state='leased']",
            1,
            Duration::from_secs(180),
        )
        .await;
        let worker_row = js(
            &c,
            "return document.querySelector(\"#workers tr[data-worker='w1']\").textContent",
        )
        .await;
        assert!(
            worker_row.as_str().unwrap().contains("1 / 1"),
            "{worker_row}"
        );
        // A trial completes: the page shows it without being reloaded.
        wait_for(
            &c,
            "#trials tbody tr[data-state='succeeded']",
            1,
            Duration::from_secs(240),
        )
        .await;
        assert_eq!(js(&c, "return window.__sameDocument === true").await, true);
        let row = js(
            &c,
            &format!("return document.querySelector(\"tr[data-sweep='{sweep}']\").textContent"),
        )
        .await;
        assert!(row.as_str().unwrap().contains("web-live"), "{row}");
        std::fs::write(&screenshot, c.screenshot().await.unwrap()).unwrap();

        // With the operator token the buttons appear, and Cancel works.
        c.find(Locator::Id("token"))
            .await
            .unwrap()
            .send_keys(OPERATOR_TOKEN)
            .await
            .unwrap();
        c.find(Locator::Id("use-token"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_for(&c, "#role", 1, Duration::from_secs(5)).await;
        let started = Instant::now();
        while js(&c, "return document.getElementById('role').textContent").await != "operator" {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the token was not accepted"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let cancel = format!("tr[data-sweep='{sweep}'] button");
        wait_for(&c, &cancel, 1, Duration::from_secs(10)).await;
        // Found and clicked in one script: the live table is redrawn between two WebDriver
        // calls, which left a found button stale.
        js(
            &c,
            &format!("document.querySelector(\"{cancel}\").click(); return null"),
        )
        .await;
        wait_for(
            &c,
            "#trials tbody tr[data-state='cancelled']",
            1,
            Duration::from_secs(60),
        )
        .await;
        c.close().await.unwrap();
    });
    let shot = std::fs::metadata(&screenshot).unwrap().len();
    println!(
        "status page: {page_bytes} bytes (html + js + css); screenshot {} ({shot} bytes)",
        screenshot.display()
    );
    assert!(shot > 10_000, "the screenshot is {shot} bytes");

    // Every trial ended (succeeded or cancelled): the figures are still now.
    wait_until("the sweep to end", Duration::from_secs(120), || {
        let counts = cluster.counts(&sweep).ok()?;
        let n = |k: &str| counts[k].as_u64().unwrap_or(0);
        (n("queued") + n("leased") == 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", worker.stderr()));

    // status --json is the coordinator's /api/status, and both are what Redis holds.
    let cli = cluster.status().unwrap();
    let (_, api) = get(&format!("{base}/api/status?all=true"));
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(cli["sweeps"], api["sweeps"]);
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].to_string())
            .collect()
    };
    assert_eq!(ids(&cli), ids(&api));
    let redis = cluster
        .redis
        .command(&["HGETALL", &format!("{{test}}:n:{sweep}")])
        .unwrap();
    let fields: Vec<&str> = redis.lines().collect();
    let counts = &cli["sweeps"][0]["counts"];
    for pair in fields.chunks(2) {
        if let [state, n] = pair {
            assert_eq!(
                counts[*state].as_u64(),
                Some(n.parse().unwrap()),
                "{state}: status --json {counts} vs Redis {redis}"
            );
        }
    }
    let succeeded = counts["succeeded"].as_u64().unwrap();
    assert!(succeeded >= 1, "{counts}");
    assert!(counts["cancelled"].as_u64().unwrap() >= 1, "{counts}");

    // The metrics moved with the sweep.
    let after = Metrics::scrape(&base);
    let granted = after.value("hlsfarm_leases_granted_total", &[]).unwrap();
    assert!(
        granted >= granted_before + succeeded as f64,
        "leases granted {granted}"
    );
    assert_eq!(
        after.value(
            "hlsfarm_trials",
            &[("sweep", &sweep), ("state", "succeeded")]
        ),
        Some(succeeded as f64)
    );
    assert_eq!(after.value("hlsfarm_workers_alive", &[]), Some(1.0));
    for stage in ["convert", "emulate", "csynth"] {
        let n = after
            .value("hlsfarm_stage_duration_seconds_count", &[("stage", stage)])
            .or_else(|| after.value("hlsfarm_stage_duration_seconds", &[("stage", stage)]))
            .unwrap_or(0.0);
        assert!(n >= succeeded as f64, "stage {stage}: {n} observations");
    }
    let uploaded = after
        .value("hlsfarm_store_upload_bytes_total", &[("by", "worker")])
        .unwrap();
    assert!(uploaded > 1000.0, "worker bytes {uploaded}");
    assert!(
        after
            .value("hlsfarm_store_upload_bytes_total", &[("by", "coordinator")])
            .unwrap()
            > 0.0
    );
    assert!(
        after
            .value(
                "hlsfarm_trials_completed_total",
                &[("outcome", "succeeded")]
            )
            .unwrap()
            >= succeeded as f64
    );
    println!(
        "metrics: {granted} leases granted, {succeeded} succeeded, {uploaded} bytes uploaded by workers"
    );
}

#[test]
fn the_page_refuses_changes_without_the_operator_token() {
    let dir = TestDir::new("web-auth").unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let base = cluster.url(0);
    let post = |path: &str, token: Option<&str>| {
        let mut request = ureq::post(&format!("{base}{path}"))
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(t) = token {
            request = request.header("Authorization", &format!("Bearer {t}"));
        }
        let mut response = request.send_empty().unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap(),
        )
    };
    let (code, body) = post("/api/sweeps/nope/cancel", None);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("operator token"), "{body}");
    let (code, body) = post(
        "/api/sweeps/nope/cancel",
        Some(hlsfarm_tests::cluster::WORKER_TOKEN),
    );
    assert_eq!(code, 403, "{body}");
    let (code, body) = post("/api/workers/nobody/drain", Some(OPERATOR_TOKEN));
    assert_eq!(code, 404, "{body}");
    let (code, body) = post("/api/sweeps/nope/retry", Some(OPERATOR_TOKEN));
    assert!(code == 404 || code == 400, "{code} {body}");
    // Artifacts: only the two files of a well-formed key.
    let response = ureq::get(&format!("{base}/api/trials/..%2F..%2Fetc/passwd"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let key = "0".repeat(64);
    let response = ureq::get(&format!("{base}/api/trials/{key}/project.tcl"))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
}
