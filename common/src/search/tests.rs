#![allow(clippy::unwrap_used)]
use super::*;

#[test]
fn trial_ids_read_from_names() {
    assert_eq!(trial_id_of("model_trial_007.h5").as_deref(), Some("7"));
    assert_eq!(trial_id_of("hp2q_model_trial_000.h5").as_deref(), Some("0"));
    assert_eq!(trial_id_of("trial_12").as_deref(), Some("12"));
    assert_eq!(
        trial_id_of("hyperparams_trial_3.json").as_deref(),
        Some("3")
    );
    assert_eq!(trial_id_of("model.h5"), None);
}

#[test]
fn keras_tuner_layout_joins_by_name_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("trials_summary.json"),
        r#"[{"trial_id": "003", "model_file": "/abs/path/model_trial_003.h5",
             "hyperparams_file": "hyperparams_trial_003.json",
             "hyperparameters": {"units": 32, "dropout": 0.1},
             "val_accuracy": 0.91, "rank": 1, "total_params": 1234}]"#,
    )
    .unwrap();
    std::fs::write(
        d.join("hyperparams_trial_5.json"),
        r#"{"units": 8, "lr": 0.001}"#,
    )
    .unwrap();
    std::fs::create_dir_all(d.join("tuner/proj/trial_05")).unwrap();
    std::fs::write(
        d.join("tuner/proj/trial_05/trial.json"),
        r#"{"trial_id": "05", "hyperparameters": {"space": [], "values": {"units": 8}},
            "metrics": {"metrics": {"val_accuracy": {"direction": "max",
              "observations": [{"value": [0.80], "step": 0}, {"value": [0.85], "step": 1},
                               {"value": [0.84], "step": 2}]}}},
            "best_step": 1, "score": 0.85, "status": "COMPLETED"}"#,
    )
    .unwrap();
    let table = SearchTable::discover(d).unwrap();
    let a = table.lookup("model_trial_003.h5").unwrap();
    assert_eq!(a.trial_id.as_deref(), Some("3"));
    assert_eq!(a.hyperparameters["units"], 32);
    assert_eq!(a.metrics["val_accuracy"], 0.91);
    assert_eq!(a.metrics["total_params"], 1234);
    assert!(!a.metrics.contains_key("model_file"));
    let b = table.lookup("model_trial_005.h5").unwrap();
    assert_eq!(b.hyperparameters["lr"], 0.001);
    assert_eq!(b.metrics["val_accuracy"], 0.85, "the best step's value");
    assert_eq!(b.metrics["status"], "COMPLETED");
    assert!(b.source.contains("hyperparams_trial_5.json"));
    assert!(b.source.contains("trial_05/trial.json"), "{}", b.source);
    assert!(table.lookup("model_trial_009.h5").is_none());
}

#[test]
fn metrics_tables_by_model_name() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("m.csv");
    std::fs::write(
        &csv,
        "file,val_auc,notes\nruns/a.h5,0.93,good\nb.onnx,0.81,\n",
    )
    .unwrap();
    let t = SearchTable::load_metrics(&csv).unwrap();
    assert_eq!(t.lookup("a.h5").unwrap().metrics["val_auc"], 0.93);
    assert_eq!(t.lookup("a.h5").unwrap().metrics["notes"], "good");
    assert!(!t.lookup("b.onnx").unwrap().metrics.contains_key("notes"));
    let json = dir.path().join("m.json");
    std::fs::write(&json, r#"{"a.h5": {"val_accuracy": 0.5}}"#).unwrap();
    let t = SearchTable::load_metrics(&json).unwrap();
    assert_eq!(t.lookup("a.h5").unwrap().metrics["val_accuracy"], 0.5);
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "x,y\n1,2\n").unwrap();
    let e = SearchTable::load_metrics(&bad).unwrap_err().to_string();
    assert!(e.contains("names no model") && e.contains("x, y"), "{e}");
}
