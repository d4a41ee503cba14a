//! Real hls4ml conversion and emulation through the worker's driver: example models from
//! `shared/models`, QKeras `.h5` trials the project generates, and bad inputs.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::settings::{IoType, LayerOverride, Settings, Strategy};
use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_tests::{TestDir, hls4ml_python, run_ok, shared_dir};
use hlsfarm_worker::driver::{Converted, DriverEnv, Job, ModelFiles, convert, project_dir};
use tokio_util::sync::CancellationToken;

fn env(timeout: Duration) -> DriverEnv {
    DriverEnv {
        python: hls4ml_python().unwrap(),
        by_format: hlsfarm_worker::venv::format_pythons(),
        timeout,
        memory_limit_mib: Some(8192),
        tolerance: Default::default(),
        strict: false,
        warm: None,
    }
}

fn keras_pair(name: &str) -> ModelFiles {
    let dir = shared_dir().unwrap().join("models/keras");
    ModelFiles {
        weights: Some(dir.join(format!("{name}_weights.h5"))),
        ..ModelFiles::auto(dir.join(format!("{name}.json")))
    }
}

async fn run(
    model: &ModelFiles,
    settings: &Settings,
    emulate: bool,
    dir: &Path,
) -> Result<Converted, hlsfarm_worker::driver::StageFailure> {
    let emulation = EmulationSpec {
        samples: 50,
        seed: 7,
    };
    let job = Job {
        model,
        settings,
        emulate,
        emulation: &emulation,
        inputs: None,
        validation: None,
        work_dir: dir,
        project_name: "myproject",
    };
    convert(
        &env(Duration::from_secs(600)),
        &job,
        &CancellationToken::new(),
    )
    .await
}

fn check_fidelity(converted: &Converted, max_diff: f64) {
    let f = converted.fidelity.as_ref().expect("emulation ran");
    assert_eq!(f.samples, 50);
    assert!(
        f.max_abs_diff.is_finite() && f.max_abs_diff < max_diff,
        "{f:?}"
    );
    assert!(f.mean_abs_diff <= f.max_abs_diff);
    assert!((0.0..=1.0).contains(&f.argmax_agreement.unwrap()));
    assert!(!f.collapsed, "emulated outputs collapsed: {f:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn qkeras_3layer_converts_and_emulates() {
    let dir = TestDir::new("convert-qkeras3").unwrap();
    let settings = Settings {
        strategy: Strategy::Resource,
        reuse_factor: 4,
        max_array_partition_size: Some(8192),
        ..Settings::default()
    };
    let c = run(&keras_pair("qkeras_3layer"), &settings, true, dir.path())
        .await
        .unwrap();
    assert_eq!(c.hls4ml_version, "1.3.0");
    assert_eq!(c.format, "keras_json");
    check_fidelity(&c, 0.5);
    assert_eq!(c.effective_reuse_factor["fc1"], 4);
    assert!(
        c.peak_memory_mib > 50,
        "peak memory {} MiB",
        c.peak_memory_mib
    );
    for step in ["load", "convert", "write", "compile", "predict"] {
        assert!(
            c.timings.contains_key(step),
            "{step} not timed: {:?}",
            c.timings
        );
    }
    let project = project_dir(dir.path(), "myproject");
    let tcl = std::fs::read_to_string(project.join("project.tcl")).unwrap();
    assert!(tcl.contains("set maximum_size 8192"), "{tcl}");
    assert!(tcl.contains("set part \"xc7z020clg400-1\""), "{tcl}");
    assert!(project.join("build_prj.tcl").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn float_keras_3layer_in_io_stream_does_not_collapse() {
    let dir = TestDir::new("convert-keras3").unwrap();
    let settings = Settings {
        io_type: IoType::Stream,
        ..Settings::default()
    };
    let c = run(&keras_pair("KERAS_3layer"), &settings, true, dir.path())
        .await
        .unwrap();
    check_fidelity(&c, 0.5);
}

#[tokio::test(flavor = "multi_thread")]
async fn conv2d_reports_hls4ml_adjusting_the_reuse_factor() {
    let dir = TestDir::new("convert-conv2d").unwrap();
    let settings = Settings {
        io_type: IoType::Stream,
        strategy: Strategy::Resource,
        reuse_factor: 4,
        ..Settings::default()
    };
    let c = run(
        &keras_pair("KERAS_conv2d_model"),
        &settings,
        true,
        dir.path(),
    )
    .await
    .unwrap();
    check_fidelity(&c, 0.5);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("Invalid ReuseFactor=4 in layer \"conv2d_1\"")),
        "{:?}",
        c.warnings
    );
    assert_eq!(c.effective_reuse_factor["conv2d_1"], 3);
}

/// Generates QKeras trials with the example script, as a user's search would have.
fn generated_trials(dir: &TestDir, count: u32) -> Vec<PathBuf> {
    let out = dir.join("trials");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/make_trials.py");
    let mut command = Command::new(hls4ml_python().unwrap());
    command
        .arg(script)
        .arg(&out)
        .args(["--count", &count.to_string()]);
    run_ok(command).unwrap();
    (0..count)
        .map(|i| out.join(format!("model_trial_{i:03}.h5")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_qkeras_h5_trial_converts_with_a_layer_override() {
    let dir = TestDir::new("convert-trial").unwrap();
    let trials = tokio::task::spawn_blocking({
        let dir_path = dir.path().to_owned();
        move || {
            let d = TestDir::new("gen").unwrap();
            let t = generated_trials(&d, 1);
            let target = dir_path.join("model_trial_000.h5");
            std::fs::copy(&t[0], &target).unwrap();
            target
        }
    })
    .await
    .unwrap();
    let settings = Settings {
        io_type: IoType::Stream,
        strategy: Strategy::Resource,
        reuse_factor: 2,
        layers: [(
            "fc1".to_owned(),
            LayerOverride {
                reuse_factor: Some(8),
                ..LayerOverride::default()
            },
        )]
        .into(),
        ..Settings::default()
    };
    let c = run(&ModelFiles::auto(&trials), &settings, true, dir.path())
        .await
        .unwrap();
    assert_eq!(c.format, "keras_h5");
    check_fidelity(&c, 0.5);
    assert_eq!(c.effective_reuse_factor["fc1"], 8);
    assert_eq!(c.effective_reuse_factor["output"], 2);
    // A trained model agrees with its emulation on most samples.
    assert!(c.fidelity.unwrap().argmax_agreement.unwrap() >= 0.8);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_are_classified_and_named() {
    let dir = TestDir::new("convert-bad").unwrap();
    let settings = Settings::default();

    std::fs::write(dir.join("corrupt.h5"), b"this is not an HDF5 file at all").unwrap();
    let err = run(
        &ModelFiles::auto(dir.join("corrupt.h5")),
        &settings,
        false,
        &dir.join("a"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, FailureClass::BadInput, "{err:?}");
    assert!(err.reason.contains("corrupt.h5"), "{err:?}");

    let real = shared_dir()
        .unwrap()
        .join("models/keras/KERAS_3layer_weights.h5");
    let bytes = std::fs::read(&real).unwrap();
    std::fs::write(dir.join("truncated.h5"), &bytes[..bytes.len() / 2]).unwrap();
    let err = run(
        &ModelFiles::auto(dir.join("truncated.h5")),
        &settings,
        false,
        &dir.join("b"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, FailureClass::BadInput, "{err:?}");

    // A weights-only .h5 names the fix.
    let err = run(&ModelFiles::auto(&real), &settings, false, &dir.join("c"))
        .await
        .unwrap_err();
    assert_eq!(err.class, FailureClass::BadInput, "{err:?}");
    assert!(err.reason.contains("weights only"), "{err:?}");

    let with_bad_layer = Settings {
        layers: [("no_such_layer".to_owned(), LayerOverride::default())].into(),
        ..Settings::default()
    };
    let err = run(
        &keras_pair("KERAS_3layer"),
        &with_bad_layer,
        false,
        &dir.join("d"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, FailureClass::BadInput, "{err:?}");
    assert!(err.reason.contains("no_such_layer"), "{err:?}");
    assert!(
        err.suggestion.as_deref().unwrap().contains("fc1"),
        "the suggestion lists the layers"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_conversion_past_its_time_limit_is_a_timeout() {
    let dir = TestDir::new("convert-timeout").unwrap();
    let emulation = EmulationSpec::default();
    let model = keras_pair("KERAS_3layer");
    let job = Job {
        model: &model,
        settings: &Settings::default(),
        emulate: true,
        emulation: &emulation,
        inputs: None,
        validation: None,
        work_dir: dir.path(),
        project_name: "myproject",
    };
    let start = std::time::Instant::now();
    let err = convert(
        &env(Duration::from_secs(2)),
        &job,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.class, FailureClass::Timeout, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(30));
}

fn generate(format: &str, script: &str, dir: &Path) {
    let mut command = Command::new(hlsfarm_tests::format_python(format).unwrap());
    command
        .arg(hlsfarm_tests::tests_dir().join("python").join(script))
        .arg(dir);
    run_ok(command).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn onnx_models_convert_and_emulate() {
    let dir = TestDir::new("convert-onnx").unwrap();
    let shared = shared_dir().unwrap().join("models/onnx");
    // An hls4ml example model (a Keras export, softmax output), and a CNN made here.
    generate("onnx", "make_onnx_model.py", &dir.join("gen"));
    for (model, max_diff) in [
        (shared.join("three_layer_keras.onnx"), 0.5),
        (dir.join("gen/tiny_cnn.onnx"), 0.1),
    ] {
        let work = dir.join(model.file_stem().unwrap());
        let c = run(&ModelFiles::auto(&model), &Settings::default(), true, &work)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", model.display()));
        assert_eq!(c.format, "onnx");
        check_fidelity(&c, max_diff);
        println!(
            "{}: max |diff| {:.4}, argmax agreement {:.2}",
            model.display(),
            c.fidelity.as_ref().unwrap().max_abs_diff,
            c.fidelity.as_ref().unwrap().argmax_agreement.unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pytorch_models_convert_and_emulate() {
    let dir = TestDir::new("convert-pytorch").unwrap();
    // An hls4ml example model saved whole (a Sequential MLP with softmax): its input size
    // comes from its first Linear layer.
    let whole = shared_dir()
        .unwrap()
        .join("models/pytorch/three_layer_model.pt");
    let c = run(
        &ModelFiles::auto(&whole),
        &Settings::default(),
        true,
        &dir.join("whole"),
    )
    .await
    .unwrap();
    assert_eq!(c.format, "pytorch");
    check_fidelity(&c, 0.5);
    // A state_dict made here, with its class and INPUT_SHAPE in the sidecar file; RF 4 on a
    // 3x3x3 conv is invalid and hls4ml picks another: the warning and the real RF are kept.
    generate("pytorch", "make_torch_model.py", &dir.join("gen"));
    let files = ModelFiles {
        class_file: Some(dir.join("gen/tiny_cnn.py")),
        ..ModelFiles::auto(dir.join("gen/tiny_cnn.pt"))
    };
    let settings = Settings {
        io_type: IoType::Stream,
        strategy: Strategy::Resource,
        reuse_factor: 4,
        ..Settings::default()
    };
    let c = run(&files, &settings, true, &dir.join("state"))
        .await
        .unwrap();
    check_fidelity(&c, 0.1);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("Invalid ReuseFactor=4")),
        "{:?}",
        c.warnings
    );
    assert_ne!(
        c.effective_reuse_factor["conv"], 4,
        "{:?}",
        c.effective_reuse_factor
    );
    // Without the sidecar a state_dict is bad input that says what is missing.
    let bare = run(
        &ModelFiles::auto(dir.join("gen/tiny_cnn.pt")),
        &settings,
        false,
        &dir.join("bare"),
    )
    .await
    .unwrap_err();
    assert_eq!(bare.class, FailureClass::BadInput);
    assert!(bare.reason.contains("state_dict"), "{}", bare.reason);
}

/// The driver's precompiled header (`precompiled_header`) and its `-Og` change how fast the
/// emulation compiles, not what it computes: hls4ml's own build, the PCH build and the PCH
/// build at `-Og` predict bit-identical outputs on a QKeras model (io_parallel) and a
/// convolutional one (io_stream), with the PCH built by the first and reused by the second
/// `pch` run, and one more set for `-Og`.
/// `-Og` is chosen where it pays: a small model predicting its comparison samples compiles at
/// `-Og`; the same model predicting a validation set of ten million rows (counted from the
/// file's header, not loaded) keeps hls4ml's `-O3`.
#[test]
fn the_emulation_compiles_at_og_only_where_its_slower_predictions_cost_less() {
    let dir = TestDir::new("convert-og").unwrap();
    let mut command = Command::new(hls4ml_python().unwrap());
    command
        .arg("-c")
        .arg(
            r#"
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import hlsfarm_driver as d
small = sys.argv[2] + "/small.npz"
np.savez(small, x=np.zeros((500, 16), dtype=np.float32))
big = sys.argv[2] + "/big.npy"
header = {"descr": "<f4", "fortran_order": False, "shape": (10_000_000, 16)}
with open(big, "wb") as f:
    np.lib.format.write_array_header_1_0(f, header)
print("rows", d.array_rows(small), d.array_rows(big), d.array_rows(sys.argv[2] + "/none.npz"))
xs = [np.zeros((100, 16))]
for validation in (None, small, big):
    request = {"emulation": {"validation": validation}}
    n = d.predicted_samples(request, xs)
    print("samples", n, "og", d.cheaper_compile_pays(4256, n))
print("cnn", d.cheaper_compile_pays(2_870_000, 100), d.cheaper_compile_pays(2_870_000, 100_000))
"#,
        )
        .arg(hlsfarm_tests::tests_dir().join("../worker/python"))
        .arg(dir.path());
    let out = String::from_utf8_lossy(&run_ok(command).unwrap().stdout).into_owned();
    for line in [
        "rows 500 10000000 None",
        "samples 100 og True",
        "samples 600 og True",
        "samples 10000100 og False",
        "cnn True False",
    ] {
        assert!(out.contains(line), "`{line}` not in:\n{out}");
    }
}

#[test]
fn the_precompiled_header_gives_bit_identical_predictions() {
    let dir = TestDir::new("convert-pch").unwrap();
    let models = shared_dir().unwrap().join("models/keras");
    for (model, io_type) in [
        ("qkeras_3layer.json", "io_parallel"),
        ("KERAS_conv1d_small.json", "io_stream"),
    ] {
        let mut command = Command::new(hls4ml_python().unwrap());
        command
            .arg(hlsfarm_tests::tests_dir().join("bench/emulation-flags.py"))
            .arg(models.join(model))
            .arg(dir.join(model))
            .args(["-O3", "pch", "pch", "pch:-Og"])
            .env("IO_TYPE", io_type);
        let out = String::from_utf8_lossy(&run_ok(command).unwrap().stdout).into_owned();
        assert_eq!(
            out.matches("pch: predictions bit-identical to -O3: True")
                .count(),
            2,
            "{model} ({io_type}):\n{out}"
        );
        assert!(
            out.contains("pch:-Og: predictions bit-identical to -O3: True"),
            "{model} ({io_type}) at -Og with the header:\n{out}"
        );
        let cache = dir.join(model).join("cache/pch");
        let sets: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().collect();
        assert_eq!(
            sets.len(),
            2,
            "a header set per level for {model}: {sets:?}"
        );
        for set in &sets {
            assert!(
                set.path().join("hlsfarm_pch.h.gch").is_file(),
                "the PCH was built for {model}"
            );
        }
    }
}
