//! From a hyperparameter search to the chosen design, on one host: the search's records and a
//! validation set joined to every trial, a selection gate that sends only its Pareto front to
//! synthesis and promotes a failed primary's backup, and `--follow` taking models while the
//! search writes them. The search folders are generated (Keras Tuner's layout, four-input
//! QKeras models), the tools are the stand-in.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hlsfarm_tests::{TestDir, hls4ml_python, hlsfarm_command, path_with_standin, run_ok};
use serde_json::Value;

/// A search folder of `count` four-input models with Keras Tuner's files and a validation set.
fn make_search(dir: &TestDir, name: &str, count: usize, seed: u64) -> PathBuf {
    let out = dir.join(name);
    let mut make = Command::new(hls4ml_python().unwrap());
    make.arg(hlsfarm_tests::tests_dir().join("python/make_keras_models.py"))
        .arg("--search")
        .arg(&out)
        .args(["--count", &count.to_string(), "--seed", &seed.to_string()]);
    run_ok(make).unwrap();
    out
}

fn run_cmd() -> Command {
    let mut command = hlsfarm_command().unwrap();
    command
        .env("HLSFARM_PYTHON", hls4ml_python().unwrap())
        .env("PATH", path_with_standin());
    command
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn folder(entry: &Value) -> String {
    Path::new(entry["output_dir"].as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Pareto tier by the longest chain of trials dominating it (more accuracy, fewer
/// parameters): an independent count of what the gate computes by peeling fronts.
fn brute_tiers(points: &[(f64, f64)]) -> Vec<u32> {
    let dominates = |a: (f64, f64), b: (f64, f64)| a.0 >= b.0 && a.1 <= b.1 && a != b;
    fn depth(
        i: usize,
        p: &[(f64, f64)],
        d: &dyn Fn((f64, f64), (f64, f64)) -> bool,
        memo: &mut Vec<Option<u32>>,
    ) -> u32 {
        if let Some(v) = memo[i] {
            return v;
        }
        let v = 1
            + (0..p.len())
                .filter(|&j| d(p[j], p[i]))
                .map(|j| depth(j, p, d, memo))
                .max()
                .unwrap_or(0);
        memo[i] = Some(v);
        v
    }
    let mut memo = vec![None; points.len()];
    (0..points.len())
        .map(|i| depth(i, points, &dominates, &mut memo))
        .collect()
}

/// Checks a funnel's sweep of six search models gated on `val_accuracy:max,parameters:min`
/// whose first C synthesis failed: the tiers against an independent count, the roles, the
/// failed primary's backup promoted, the tools run only for those (`record`: the stand-in's
/// calls), and every trial's search record and accuracies. `name_of` names an entry as
/// `promoted_for` does. Returns how many trials were synthesized and how many are on the
/// front.
fn check_funnel(
    entries: &[Value],
    record: &Path,
    name_of: impl Fn(&Value) -> String,
) -> (usize, usize) {
    assert_eq!(entries.len(), 6);
    // The gate's tiers against an independent count over the search's own figures.
    let points: Vec<(f64, f64)> = entries
        .iter()
        .map(|e| {
            let m = &e["result"]["search"]["metrics"];
            (
                m["val_accuracy"].as_f64().unwrap(),
                m["total_params"].as_f64().unwrap(),
            )
        })
        .collect();
    let tiers = brute_tiers(&points);
    let mut failed = Vec::new();
    let mut promoted = Vec::new();
    let mut synthesized = 0;
    for (entry, tier) in entries.iter().zip(&tiers) {
        let d = &entry["selection"][0];
        assert_eq!(d["tier"].as_u64().map(|t| t as u32), Some(*tier), "{d}");
        let role = d["role"].as_str().unwrap();
        let has_csynth = !entry["result"]["reports"]["csynth"].is_null();
        let stages: Vec<&str> = entry["result"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        match (*tier, role) {
            (1, "primary") if entry["status"] == "failed" => {
                assert_eq!(entry["result"]["failure"]["stage"], "csynth", "{entry}");
                failed.push(name_of(entry));
            }
            (1, "primary") => assert!(has_csynth, "a primary is synthesized: {entry}"),
            (2, "backup") => assert_eq!(stages, ["convert", "emulate"], "{entry}"),
            (2, "primary") => {
                assert!(has_csynth, "a promoted backup is synthesized: {entry}");
                promoted.push(d["promoted_for"].as_str().unwrap().to_owned());
            }
            (t, "held") if t > 2 => assert_eq!(stages, ["convert", "emulate"], "{entry}"),
            other => panic!("tier and role do not agree: {other:?}: {entry}"),
        }
        synthesized += usize::from(has_csynth || entry["status"] == "failed");
        // Every trial carries its search record and its accuracies on the validation set.
        let r = &entry["result"];
        let val = r["search"]["metrics"]["val_accuracy"].as_f64().unwrap();
        let float = r["accuracy"]["float"].as_f64().unwrap();
        assert!(
            (float - val).abs() < 1e-6,
            "float {float} against the search's {val}"
        );
        assert!(r["accuracy"]["hls"].is_number(), "{r}");
        assert!(r["accuracy"]["float_auc"].as_f64().unwrap() > 0.5, "{r}");
        assert_eq!(
            r["parameters"], r["search"]["metrics"]["total_params"],
            "{r}"
        );
        assert!(
            r["search"]["hyperparameters"]["branch_units"].is_number(),
            "{r}"
        );
    }
    assert_eq!(failed.len(), 1, "one primary failed: {entries:?}");
    assert_eq!(promoted, failed, "its backup was promoted for it");
    // The tools ran only for the gate's primaries and the promoted backup.
    let calls = std::fs::read_to_string(record).unwrap().lines().count();
    assert_eq!(calls, synthesized, "stand-in calls");
    let front = tiers.iter().filter(|t| **t == 1).count();
    assert_eq!(synthesized, front + 1);
    (synthesized, front)
}

#[test]
fn a_funnel_synthesizes_the_front_and_a_failed_primarys_backup() {
    let dir = TestDir::new("funnel-gate").unwrap();
    let input = make_search(&dir, "search", 6, 0);
    let record = dir.join("tool-calls.jsonl");
    let mut command = run_cmd();
    command
        .args(["run", "--input_dir"])
        .arg(&input)
        .arg("--validation")
        .arg(input.join("validation.npz"))
        .args(["--num_workers", "2", "--stages", "convert,emulate,csynth"])
        .args(["--select", "val_accuracy:max,parameters:min"])
        // The first C synthesis (a primary's) fails for good; its backup must go on.
        .env("STANDIN_FAIL", "unroll")
        .env("STANDIN_ONCE", dir.join("failed-once"))
        .env("STANDIN_RECORD", &record);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "one trial failed: {stderr}");
    assert!(stderr.contains("gate 1 (after emulate"), "{stderr}");
    assert!(stderr.contains("goes on in its place"), "{stderr}");

    let summary = read_json(&input.join("hls_outputs/synthesis_results.json"));
    let entries = summary["results"].as_array().unwrap();
    let (synthesized, front) = check_funnel(entries, &record, folder);
    assert!(
        stderr.contains(&format!(
            "the funnel ran {synthesized} of 6 tool-stage runs"
        )),
        "{stderr}"
    );

    // What the choice is made from: columns, the ranking and the plots.
    let out = input.join("hls_outputs");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for column in [
        "float_accuracy",
        "hls_accuracy",
        "selection",
        "val_accuracy",
        "hp_branch_units",
        "search_trial_id",
    ] {
        assert!(
            header.split(',').any(|c| c == column),
            "{column} in {header}"
        );
    }
    let ranking = std::fs::read_to_string(out.join("ranking.csv")).unwrap();
    assert!(
        ranking.starts_with("rank,tier,model,folder,trial_key,status,accuracy:max,lut:min"),
        "{ranking}"
    );
    assert_eq!(
        ranking
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .count(),
        front
    );
    let svg = std::fs::read_to_string(out.join("pareto.svg")).unwrap();
    assert!(svg.contains("accuracy against LUT") && svg.contains("accuracy against parameters"));
    let mut rank = hlsfarm_command().unwrap();
    rank.args(["results"])
        .arg(&out)
        .args(["--rank", "accuracy:max,dsp:min"]);
    let ranked = String::from_utf8(run_ok(rank).unwrap().stdout).unwrap();
    assert!(
        ranked.contains("ranked by accuracy:max, dsp:min"),
        "{ranked}"
    );
}

/// Copies a generated search into `input` as a running search writes it: a model every few
/// seconds, each in two pieces (only the whole file counts), its hyperparameters beside it,
/// and `trials_summary.json` last.
fn write_slowly(search: &Path, input: &Path, ids: &[&str]) -> std::thread::JoinHandle<()> {
    let (search, input) = (search.to_owned(), input.to_owned());
    let ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
    std::thread::spawn(move || {
        for id in ids {
            std::thread::sleep(Duration::from_secs(3));
            let bytes = std::fs::read(search.join(format!("model_trial_{id}.h5"))).unwrap();
            let target = input.join(format!("model_trial_{id}.h5"));
            let (head, tail) = bytes.split_at(bytes.len() / 2);
            std::fs::write(&target, head).unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(&target)
                .unwrap()
                .write_all(tail)
                .unwrap();
            std::fs::copy(
                search.join(format!("hyperparams_trial_{id}.json")),
                input.join(format!("hyperparams_trial_{id}.json")),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_secs(3));
        std::fs::copy(
            search.join("trials_summary.json"),
            input.join("trials_summary.json"),
        )
        .unwrap();
    })
}

#[test]
fn follow_takes_each_model_as_the_search_writes_it() {
    let dir = TestDir::new("funnel-follow").unwrap();
    let search = make_search(&dir, "search", 3, 5);
    let input = dir.join("live");
    std::fs::create_dir_all(&input).unwrap();
    let writer = write_slowly(&search, &input, &["00", "01", "02"]);
    let mut command = run_cmd();
    command
        .args(["run", "--follow", "--input_dir"])
        .arg(&input)
        .args(["--num_workers", "2", "--stages", "convert,emulate"]);
    let output = command.output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("hlsfarm: new model").count(), 3, "{stderr}");
    assert!(
        stderr.contains("the search wrote trials_summary.json; 3 models taken"),
        "{stderr}"
    );
    assert!(stderr.contains("3 trials: 3 succeeded"), "{stderr}");
    // The search's summary arrived last: it is joined all the same.
    let summary = read_json(&input.join("hls_outputs/synthesis_results.json"));
    for entry in summary["results"].as_array().unwrap() {
        assert!(
            entry["result"]["search"]["metrics"]["val_accuracy"].is_number(),
            "{entry}"
        );
    }
}

#[test]
fn a_metrics_table_and_bounds_choose_what_goes_on() {
    let dir = TestDir::new("funnel-metrics").unwrap();
    let input = make_search(&dir, "search", 3, 9);
    // A user's own table, keyed by file name, with a metric the search did not record.
    let table = dir.join("eval.csv");
    std::fs::write(
        &table,
        "model,background_rejection\nmodel_trial_00.h5,12.5\nmodel_trial_01.h5,40\nmodel_trial_02.h5,33\n",
    )
    .unwrap();
    let mut command = run_cmd();
    command
        .args(["run", "--input_dir"])
        .arg(&input)
        .arg("--metrics")
        .arg(&table)
        .args(["--num_workers", "2", "--stages", "convert,emulate,csynth"])
        .args([
            "--select-min",
            "background_rejection=30",
            "--select-after",
            "convert",
        ]);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("2 of 3 trials go on"), "{stderr}");
    assert!(
        stderr.contains("held back: 1 x background_rejection 12.5 is below 30"),
        "{stderr}"
    );
    let summary = read_json(&input.join("hls_outputs/synthesis_results.json"));
    for entry in summary["results"].as_array().unwrap() {
        let r = &entry["result"];
        let rejection = r["search"]["metrics"]["background_rejection"]
            .as_f64()
            .unwrap();
        assert_eq!(
            r["reports"]["csynth"].is_null(),
            rejection < 30.0,
            "{entry}"
        );
        // The table's record is merged with what the search left beside the models.
        assert!(
            r["search"]["metrics"]["val_accuracy"].is_number(),
            "{entry}"
        );
    }
    let csv = std::fs::read_to_string(input.join("hls_outputs/results.csv")).unwrap();
    assert!(
        csv.lines().next().unwrap().contains("background_rejection"),
        "{csv}"
    );
}

#[test]
fn the_same_funnel_runs_on_a_cluster_of_two_workers() {
    use hlsfarm_tests::cluster::{Cluster, ClusterOptions, wait_registered};
    let dir = TestDir::new("funnel-cluster").unwrap();
    let input = make_search(&dir, "search", 6, 0);
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let record = dir.join("tool-calls.jsonl");
    // The first C synthesis on either worker (a primary's) fails for good.
    let knobs = [
        ("STANDIN_FAIL", "unroll".to_owned()),
        (
            "STANDIN_ONCE",
            dir.join("failed-once").display().to_string(),
        ),
        ("STANDIN_RECORD", record.display().to_string()),
    ];
    let knobs: Vec<(&str, &str)> = knobs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|name| {
            cluster
                .start_worker(name, &["--slots", "1"], &knobs)
                .unwrap()
        })
        .collect();
    for w in &workers {
        wait_registered(w);
    }
    let mut submit = cluster.operator_command().unwrap();
    submit
        .args(["submit", "--wait", "--input-dir"])
        .arg(&input)
        .arg("--validation")
        .arg(input.join("validation.npz"))
        .args(["--stages", "convert,emulate,csynth"])
        .args(["--select", "val_accuracy:max,parameters:min"]);
    let output = submit.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "one trial failed: {stderr}");
    assert!(stderr.contains("gate 1 (after emulate"), "{stderr}");
    assert!(stderr.contains("goes on in its place"), "{stderr}");
    let sweep = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    let aggregate = cluster
        .store()
        .join(format!("sweeps/{sweep}/synthesis_results.json"));
    let summary = read_json(&aggregate);
    let entries = summary["results"].as_array().unwrap();
    let model = |e: &Value| e["h5_file"].as_str().unwrap().to_owned();
    let (synthesized, _) = check_funnel(entries, &record, model);
    // Both workers took part; the decisions are in the store and in status.
    let calls = std::fs::read_to_string(&record).unwrap();
    assert!(synthesized >= 2, "{calls}");
    assert!(
        cluster
            .store()
            .join(format!("sweeps/{sweep}/funnel.json"))
            .is_file()
    );
    let status = cluster.status().unwrap();
    let gates = status["sweeps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == sweep.as_str())
        .map(|s| s["gates"].to_string())
        .unwrap();
    assert!(gates.contains("wait as backups"), "{gates}");
    assert!(gates.contains("goes on in its place"), "{gates}");
    for name in ["results.csv", "ranking.csv", "pareto.svg"] {
        assert!(
            cluster
                .store()
                .join(format!("sweeps/{sweep}/{name}"))
                .is_file(),
            "{name}"
        );
    }
    let csv = std::fs::read_to_string(cluster.store().join(format!("sweeps/{sweep}/results.csv")))
        .unwrap();
    assert!(
        csv.lines().next().unwrap().contains("val_accuracy"),
        "{csv}"
    );

    // The web page's view: each trial's accuracies, search columns and gate decisions, and
    // the plot and ranking drawn from the results (the same while it runs).
    let trials = cluster.trials(&sweep).unwrap();
    assert_eq!(trials.len(), entries.len());
    for t in &trials {
        assert!(t["search"]["val_accuracy"].is_number(), "{t}");
        assert!(t["selection"].as_str().unwrap().contains("gate 1"), "{t}");
        if t["state"] == "succeeded" {
            let float = t["float_accuracy"].as_f64().unwrap();
            let searched = t["search"]["val_accuracy"].as_f64().unwrap();
            assert!((float - searched).abs() < 1e-6, "{t}");
            assert!(t["accuracy"].is_number(), "{t}");
        }
    }
    let base = format!("{}/api/sweeps/{sweep}", cluster.url(0));
    let mut svg = ureq::get(&format!("{base}/pareto.svg")).call().unwrap();
    assert_eq!(
        svg.headers().get("content-type").unwrap().to_str().unwrap(),
        "image/svg+xml"
    );
    let svg = svg.body_mut().read_to_string().unwrap();
    assert!(svg.starts_with("<svg"), "{svg:.200}");
    let ranking = ureq::get(&format!("{base}/ranking.csv"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let stored =
        std::fs::read_to_string(cluster.store().join(format!("sweeps/{sweep}/ranking.csv")))
            .unwrap();
    assert_eq!(
        ranking, stored,
        "the live ranking of an ended sweep is the stored one"
    );
    let missing = ureq::get(&format!("{}/api/sweeps/no-such/pareto.svg", cluster.url(0))).call();
    assert!(
        matches!(missing, Err(ureq::Error::StatusCode(404))),
        "{missing:?}"
    );
}

#[test]
fn submit_follow_adds_models_to_a_cluster_sweep_and_gates_what_arrived() {
    use hlsfarm_tests::cluster::{Cluster, ClusterOptions, wait_registered};
    let dir = TestDir::new("funnel-submit-follow").unwrap();
    let search = make_search(&dir, "search", 6, 0);
    let input = dir.join("live");
    std::fs::create_dir_all(&input).unwrap();
    // The validation set is there from the start; the models arrive one by one.
    std::fs::copy(search.join("validation.npz"), dir.join("validation.npz")).unwrap();
    let cluster = Cluster::start(dir.path(), ClusterOptions::default()).unwrap();
    let record = dir.join("tool-calls.jsonl");
    // The first C synthesis (a primary's) fails for good: its backup goes on.
    let once = dir.join("failed-once");
    let worker = cluster
        .start_worker(
            "w1",
            &["--slots", "2"],
            &[
                ("STANDIN_FAIL", "unroll"),
                ("STANDIN_ONCE", once.to_str().unwrap()),
                ("STANDIN_RECORD", record.to_str().unwrap()),
            ],
        )
        .unwrap();
    wait_registered(&worker);
    let ids = ["00", "01", "02", "03", "04", "05"];
    let writer = write_slowly(&search, &input, &ids);
    let mut submit = cluster.operator_command().unwrap();
    submit
        .args(["submit", "--follow", "--wait", "--input-dir"])
        .arg(&input)
        .arg("--validation")
        .arg(dir.join("validation.npz"))
        .args(["--stages", "convert,emulate,csynth"])
        .args(["--select", "val_accuracy:max,parameters:min"]);
    let output = submit.output().unwrap();
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "one trial failed: {stderr}");
    assert!(
        stderr.contains("the search wrote trials_summary.json; 6 models taken"),
        "{stderr}"
    );
    assert!(stderr.contains("gate 1 (after emulate"), "{stderr}");
    assert!(stderr.contains("goes on in its place"), "{stderr}");
    let sweep = String::from_utf8_lossy(&output.stdout).trim().to_owned();

    // Every model that arrived is in the aggregate, with the records the search wrote last
    // (val_accuracy, from trials_summary.json) and its gate decision.
    let summary = read_json(
        &cluster
            .store()
            .join(format!("sweeps/{sweep}/synthesis_results.json")),
    );
    let entries = summary["results"].as_array().unwrap();
    let mut models: Vec<String> = entries
        .iter()
        .map(|e| e["h5_file"].as_str().unwrap().to_owned())
        .collect();
    models.sort();
    let expected: Vec<String> = ids.iter().map(|i| format!("model_trial_{i}.h5")).collect();
    assert_eq!(models, expected);
    // The gate decided once, over all six (tiers against an independent count), and sent
    // only its front and the failed primary's backup to the tools.
    let model = |e: &Value| e["h5_file"].as_str().unwrap().to_owned();
    check_funnel(entries, &record, model);
    // A closed sweep takes no more models, and says why.
    let refused = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use hlsfarm_proto::v1::{self, operator_client::OperatorClient};
        let (channel, bearer) = hlsfarm_proto::client::channel(
            &cluster.url(0),
            hlsfarm_tests::cluster::OPERATOR_TOKEN,
            None,
        )
        .unwrap();
        OperatorClient::with_interceptor(channel, bearer)
            .add_models(v1::AddModelsRequest {
                sweep_id: sweep.clone(),
                done: true,
                ..Default::default()
            })
            .await
            .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("is closed"), "{refused:?}");
}
