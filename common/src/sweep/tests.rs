#![allow(clippy::unwrap_used)]
use super::*;

const SAMPLE: &str = r#"
name = "model2 4w0i"
stages = ["convert", "emulate", "csynth"]

[models]
dir = "results"
pattern = "model_trial_*.h5"

[grid]
io_type = "io_stream"
strategy = ["Resource", "latency"]
reuse_factor = [1, 2, 4]

[grid.layers.conv1]
reuse_factor = 3
precision = { weight = "ap_fixed<4,0>" }
"#;

#[test]
fn toml_and_json_give_the_same_sweep() {
    let from_toml = SweepSpec::from_toml(SAMPLE).unwrap();
    let json = serde_json::to_string(&from_toml).unwrap();
    assert_eq!(SweepSpec::from_json(&json).unwrap(), from_toml);
    from_toml.validate().unwrap();
    assert_eq!(from_toml.grid.len(), 6);
    let points = from_toml.grid.expand();
    assert_eq!(points.len(), 6);
    assert_eq!(points[0].strategy, Strategy::Resource);
    assert_eq!(points[0].reuse_factor, 1);
    assert_eq!(points[5].strategy, Strategy::Latency);
    assert_eq!(points[5].reuse_factor, 4);
    assert!(
        points
            .iter()
            .all(|p| p.layers["conv1"].reuse_factor == Some(3))
    );
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let err =
        SweepSpec::from_toml("models = { dir = \".\" }\n[grid]\nreuse_factr = 2\n").unwrap_err();
    assert!(err.contains("unknown field `reuse_factr`"), "{err}");
    let err = SweepSpec::from_json(r#"{"models": {"dir": "."}, "stagez": []}"#).unwrap_err();
    assert!(err.contains("unknown field `stagez`"), "{err}");
}

#[test]
fn bad_values_are_all_named() {
    let spec = SweepSpec::from_toml(
        "priority = 0\n[models]\ndir = \".\"\n[grid]\nreuse_factor = [4, 0]\npart = \"xc9q\"\nclock_period_ns = -5\n",
    )
    .unwrap();
    let err = spec.validate().unwrap_err();
    let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "priority",
            "grid.reuse_factor[1]",
            "grid.part[0]",
            "grid.clock_period_ns[0]"
        ]
    );
}

#[test]
fn selection_lists_matching_files_and_explains_no_match() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["model_trial_001.h5", "model_trial_000.h5", "notes.txt"] {
        std::fs::write(dir.path().join(name), b"x").unwrap();
    }
    let selection = ModelSelection {
        dir: Some(dir.path().to_owned()),
        ..ModelSelection::default()
    };
    let found = selection.resolve(Path::new("/")).unwrap();
    let names: Vec<_> = found
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(names, ["model_trial_000.h5", "model_trial_001.h5"]);

    let none = ModelSelection {
        pattern: Some("*.onnx".into()),
        ..selection
    };
    let err = none.resolve(Path::new("/")).unwrap_err().to_string();
    assert!(err.contains("matches `*.onnx`"), "{err}");
    assert!(err.contains("model_trial_000.h5"), "{err}");
}

#[test]
fn the_readme_sweep_file_parses_with_its_gates() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("### A sweep file")
        .nth(1)
        .expect("README has a sweep file section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a toml block");
    let spec = SweepSpec::from_toml(toml).unwrap();
    spec.validate().unwrap();
    assert_eq!(spec.select.len(), 2);
    assert_eq!(spec.select[0].after, Stage::Emulate);
    assert_eq!(spec.select[0].min["val_accuracy"], 0.85);
    assert_eq!(spec.select[1].tiers, 1);
    assert!(spec.validation.is_some() && spec.metrics.is_some());
}

#[test]
fn gates_out_of_stage_order_or_on_stages_not_run_are_named() {
    let spec = SweepSpec::from_toml(
        r#"
stages = ["convert", "emulate", "csynth"]
[models]
dir = "m"
[[select]]
after = "csynth"
objectives = ["lut:min"]
[[select]]
after = "emulate"
objectives = ["accuracy:max"]
[[select]]
after = "cosim"
objectives = ["accuracy:max"]
tiers = 0
"#,
    )
    .unwrap();
    let e = spec.validate().unwrap_err().to_string();
    assert!(
        e.contains("select[1].after") && e.contains("stage order"),
        "{e}"
    );
    assert!(
        e.contains("select[2].after") && e.contains("does not run"),
        "{e}"
    );
    assert!(e.contains("select[2]: tiers = 0"), "{e}");
    let bad = SweepSpec::from_toml("[models]\ndir = \"m\"\n[[select]]\nobjectives = [\"lut\"]\n");
    assert!(bad.unwrap_err().contains("METRIC:max"));
}
