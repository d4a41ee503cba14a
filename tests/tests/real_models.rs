//! Models shaped like the ones users have, made here (`tests/python/make_keras_models.py`,
//! `make_torch_model.py`, `make_qonnx_model.py`): several inputs and outputs, a QActivation
//! with a plain sigmoid, pruning wrappers, a QONNX export's input preprocessing, a model
//! whose float values overflow the default precision, a large io_parallel CNN under a memory
//! limit, a Git LFS pointer. Each goes through the worker's driver with real hls4ml.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::results::OutputKind;
use hlsfarm_common::settings::Settings;
use hlsfarm_common::stage::Stage;
use hlsfarm_common::trial_key::EmulationSpec;
use hlsfarm_tests::{
    TestDir, format_python, hls4ml_python, processes_under, run_ok, shared_dir, tests_dir,
};
use hlsfarm_worker::driver::{Converted, DriverEnv, Job, ModelFiles, StageFailure, convert};
use tokio_util::sync::CancellationToken;

/// The Keras models, generated once per test binary.
fn keras_models() -> PathBuf {
    static DIR: OnceLock<(TestDir, PathBuf)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = TestDir::new("real-models-keras").unwrap();
        let out = dir.join("models");
        let mut command = Command::new(hls4ml_python().unwrap());
        command
            .arg(tests_dir().join("python/make_keras_models.py"))
            .arg(&out);
        run_ok(command).unwrap();
        (dir, out)
    })
    .1
    .clone()
}

fn env(memory_limit_mib: u64) -> DriverEnv {
    DriverEnv {
        python: hls4ml_python().unwrap(),
        by_format: hlsfarm_worker::venv::format_pythons(),
        timeout: Duration::from_secs(900),
        memory_limit_mib: Some(memory_limit_mib),
        tolerance: Default::default(),
        strict: false,
        warm: None,
    }
}

async fn emulate_with(
    model: &ModelFiles,
    inputs: Option<&Path>,
    work: &Path,
    memory_limit_mib: u64,
) -> Result<Converted, StageFailure> {
    let emulation = EmulationSpec {
        samples: 40,
        seed: 3,
    };
    let job = Job {
        model,
        settings: &Settings::default(),
        emulate: true,
        emulation: &emulation,
        inputs,
        validation: None,
        work_dir: work,
        project_name: "myproject",
    };
    convert(&env(memory_limit_mib), &job, &CancellationToken::new()).await
}

async fn emulate(model: &ModelFiles, work: &Path) -> Result<Converted, StageFailure> {
    emulate_with(model, None, work, 8192).await
}

/// Writes an .npz with `python` (numpy in every venv): `arrays` maps names to shapes.
fn write_npz(path: &Path, arrays: &[(&str, &[usize])]) {
    let spec: Vec<String> = arrays
        .iter()
        .map(|(name, shape)| {
            format!(
                "'{name}': rng.uniform(-1, 1, size={:?}).astype('float32')",
                shape
            )
        })
        .collect();
    let script = format!(
        "import numpy as np\nrng = np.random.default_rng(0)\nnp.savez('{}', **{{{}}})\n",
        path.display(),
        spec.join(", ")
    );
    let mut command = Command::new(hls4ml_python().unwrap());
    command.args(["-c", &script]);
    run_ok(command).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn four_inputs_and_a_sigmoid_qactivation_convert_emulate_and_take_named_inputs() {
    let dir = TestDir::new("real-four-input").unwrap();
    let model = ModelFiles::auto(keras_models().join("four_input.h5"));
    let c = emulate(&model, &dir.join("generated")).await.unwrap();
    let names: Vec<&str> = c.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["x_profile", "z_global", "y_profile", "y_local"]);
    assert_eq!(c.inputs[0].shape, [21]);
    // hls4ml 1.3 refuses QActivation("sigmoid"); the driver rewrote it and says so.
    assert!(
        c.rewrites
            .iter()
            .any(|r| r.layer == "output" && r.to == "Activation(\"sigmoid\")"),
        "{:?}",
        c.rewrites
    );
    let f = c.fidelity.as_ref().unwrap();
    assert_eq!(f.outputs.len(), 1);
    let out = &f.outputs[0];
    assert_eq!(out.kind, OutputKind::Binary, "{f:?}");
    let agreement = out.agreement.unwrap();
    assert!(agreement >= 0.9, "{f:?}");
    assert_eq!(f.argmax_agreement, Some(agreement));
    assert!(out.max_abs_diff < 0.05, "{f:?}");
    assert!(!f.warning(), "{f:?}");
    println!("four-input QKeras: {}", f.headline());

    // The user's samples, one array per input name.
    let npz = dir.join("four_input_inputs.npz");
    write_npz(
        &npz,
        &[
            ("x_profile", &[30, 21]),
            ("z_global", &[30, 1]),
            ("y_profile", &[30, 13]),
            ("y_local", &[30, 1]),
        ],
    );
    let c = emulate_with(&model, Some(&npz), &dir.join("given"), 8192)
        .await
        .unwrap();
    let f = c.fidelity.unwrap();
    assert_eq!(f.samples, 30);
    assert_eq!(f.inputs.as_deref(), Some("four_input_inputs.npz"));

    // A wrong name is bad input that lists the model's inputs and shapes.
    let wrong = dir.join("wrong_inputs.npz");
    write_npz(&wrong, &[("x", &[10, 21])]);
    let e = emulate_with(&model, Some(&wrong), &dir.join("wrong"), 8192)
        .await
        .unwrap_err();
    assert_eq!(e.class, FailureClass::BadInput, "{e:?}");
    assert_eq!(e.stage, Stage::Emulate);
    assert!(
        e.reason.contains("x_profile [21]") && e.reason.contains("y_local [1]"),
        "{}",
        e.reason
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_outputs_get_the_figure_that_fits_each() {
    let dir = TestDir::new("real-two-output").unwrap();
    let c = emulate(
        &ModelFiles::auto(keras_models().join("two_output.h5")),
        dir.path(),
    )
    .await
    .unwrap();
    let f = c.fidelity.unwrap();
    let kinds: Vec<(&str, OutputKind)> = f
        .outputs
        .iter()
        .map(|o| (o.name.as_str(), o.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("reconstruction", OutputKind::Regression),
            ("label", OutputKind::Multiclass)
        ]
    );
    let recon = &f.outputs[0];
    assert!(recon.relative_error.unwrap() < 0.05, "{recon:?}");
    assert!(recon.agreement.is_none());
    assert!(f.outputs[1].agreement.unwrap() >= 0.8, "{f:?}");
    // Several outputs: no single top-level agreement, the top-level diffs cover both.
    assert_eq!(f.argmax_agreement, None);
    assert!(f.max_abs_diff >= recon.max_abs_diff);
    println!("two outputs: {}", f.headline());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validation_set_gives_keras_accuracy_of_the_softmax_output() {
    let dir = TestDir::new("real-two-output-validation").unwrap();
    let validation = keras_models().join("two_output_validation.npz");
    let emulation = EmulationSpec {
        samples: 40,
        seed: 3,
    };
    let job = Job {
        model: &ModelFiles::auto(keras_models().join("two_output.h5")),
        settings: &Settings::default(),
        emulate: true,
        emulation: &emulation,
        inputs: None,
        validation: Some(&validation),
        work_dir: dir.path(),
        project_name: "myproject",
    };
    let c = convert(&env(8192), &job, &CancellationToken::new())
        .await
        .unwrap();
    let keras: serde_json::Value = serde_json::from_slice(
        &std::fs::read(keras_models().join("two_output_validation.json")).unwrap(),
    )
    .unwrap();
    let a = c.accuracy.unwrap();
    // Only the softmax output has labels (`y_label`, one-hot): the reconstruction has none.
    assert_eq!(a.first.output, "label");
    assert_eq!(a.first.kind, OutputKind::Multiclass);
    assert_eq!(a.samples, 512);
    assert!(a.outputs.is_empty(), "{a:?}");
    let keras_accuracy = keras["label_accuracy"].as_f64().unwrap();
    assert!(
        (a.first.float - keras_accuracy).abs() < 1e-6,
        "float {} against Keras's {keras_accuracy}",
        a.first.float
    );
    let hls = a.first.hls.unwrap();
    assert!((a.first.drop.unwrap() - (a.first.float - hls)).abs() < 1e-12);
    assert!(hls > 0.5, "{a:?}");
    assert!(a.first.float_auc.is_none(), "AUC is for binary outputs");
    assert_eq!(
        c.parameters,
        Some(16 * 6 + 6 + 6 * 16 + 16 + 6 * 8 + 8 + 8 * 4 + 4)
    );
    // What the estimates learn from: the work per inference, the largest layer, CPU time
    // (emulation's includes its g++).
    assert_eq!(c.multiplications, Some(16 * 6 + 6 * 16 + 6 * 8 + 8 * 4));
    assert_eq!(c.largest_layer, Some(16 * 6));
    let cpu = |k: &str| c.cpu.get(k).copied().unwrap_or(0.0);
    assert!(cpu("convert") > 0.5, "{:?}", c.cpu);
    assert!(cpu("emulate") > 1.0, "g++ is counted: {:?}", c.cpu);
}

#[tokio::test(flavor = "multi_thread")]
async fn pruned_qkeras_cnn_is_stripped_and_its_departing_softmax_named() {
    let dir = TestDir::new("real-pruned").unwrap();
    let c = emulate(
        &ModelFiles::auto(keras_models().join("pruned_cnn.h5")),
        dir.path(),
    )
    .await
    .unwrap();
    let stripped: Vec<&str> = c
        .rewrites
        .iter()
        .filter(|r| r.from == "PruneLowMagnitude")
        .map(|r| r.layer.as_str())
        .collect();
    assert_eq!(stripped, ["conv1", "conv2", "dense"], "{:?}", c.rewrites);
    let f = c.fidelity.unwrap();
    // The QDense's inferred result type has 14 integer bits; the softmax's table, indexed by
    // the top bits, sees the whole batch as one value: a fidelity warning naming both.
    assert!(f.warning(), "{f:?}");
    let d = f.divergence.as_ref().unwrap();
    assert_eq!(d.layer.as_deref(), Some("softmax"), "{d:?}");
    assert!(d.message.contains("`dense`"), "{}", d.message);
    println!("pruned CNN: {}", f.headline());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overflowing_layer_is_named_with_the_integer_bits_it_needs() {
    let dir = TestDir::new("real-overflow").unwrap();
    let c = emulate(
        &ModelFiles::auto(keras_models().join("overflow.h5")),
        dir.path(),
    )
    .await
    .unwrap();
    let f = c.fidelity.unwrap();
    assert!(f.warning(), "{f:?}");
    let d = f.divergence.as_ref().unwrap();
    assert_eq!(d.layer.as_deref(), Some("wide_dense"), "{d:?}");
    assert_eq!(f.outputs[0].kind, OutputKind::Regression, "{f:?}");
    assert_eq!(d.precision.as_deref(), Some("ap_fixed<16,6>"));
    let needed = d.integer_bits_needed.unwrap();
    assert!((7..=9).contains(&needed), "{d:?}");
    assert!(d.float_max_abs.unwrap() > 32.0);
    assert!(d.message.contains("wraps around at ±32"), "{}", d.message);
    println!("overflow: {}", f.headline());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_git_lfs_pointer_is_named_as_one() {
    let dir = TestDir::new("real-lfs").unwrap();
    let e = emulate(
        &ModelFiles::auto(keras_models().join("lfs_pointer.h5")),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.class, FailureClass::BadInput);
    assert!(e.reason.contains("Git LFS pointer"), "{}", e.reason);
    assert!(
        e.suggestion.as_deref().unwrap().contains("git lfs pull"),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_io_parallel_cnn_is_held_under_its_memory_limit() {
    let dir = TestDir::new("real-big-cnn").unwrap();
    let work = dir.join("work");
    // 1.2 GB: TensorFlow's import fits, the emulation's compile does not.
    let e = emulate_with(
        &ModelFiles::auto(keras_models().join("big_cnn.h5")),
        None,
        &work,
        1200,
    )
    .await
    .unwrap_err();
    assert_eq!(e.class, FailureClass::Oom, "{e:?}");
    assert_eq!(e.stage, Stage::Emulate, "{e:?}");
    assert!(
        e.reason.contains("memory limit of 1200 MiB"),
        "{}",
        e.reason
    );
    assert!(e.reason.contains("peak"), "{}", e.reason);
    // The whole tree was killed: nothing is left working there once the kernel reaps it.
    hlsfarm_tests::wait_until("the killed tree to go", Duration::from_secs(10), || {
        processes_under(&work).is_empty().then_some(())
    })
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pytorch_model_with_two_inputs_emulates() {
    let dir = TestDir::new("real-torch-two").unwrap();
    let mut command = Command::new(format_python("pytorch").unwrap());
    command
        .arg(tests_dir().join("python/make_torch_model.py"))
        .arg(dir.join("gen"));
    run_ok(command).unwrap();
    let files = ModelFiles {
        class_file: Some(dir.join("gen/two_input.py")),
        ..ModelFiles::auto(dir.join("gen/two_input.pt"))
    };
    let c = emulate(&files, &dir.join("work")).await.unwrap();
    let names: Vec<&str> = c.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["x_profile", "y_profile"]);
    let f = c.fidelity.unwrap();
    assert_eq!(f.outputs.len(), 1);
    assert_eq!(f.outputs[0].kind, OutputKind::Binary, "{f:?}");
    assert!(f.max_abs_diff < 0.05, "{f:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn onnx_exports_with_input_preprocessing_or_two_inputs_convert() {
    let dir = TestDir::new("real-qonnx").unwrap();
    let mut command = Command::new(format_python("onnx").unwrap());
    command
        .arg(tests_dir().join("python/make_qonnx_model.py"))
        .arg(dir.join("gen"));
    run_ok(command).unwrap();
    let c = emulate(
        &ModelFiles::auto(dir.join("gen/qonnx_mlp.onnx")),
        &dir.join("work"),
    )
    .await
    .unwrap();
    // The input keeps the name users know; hls4ml 1.3 refuses the Unsqueeze on it
    // ("Unsupported operation type: Unsqueeze"), folded here into the input's shape, as is the
    // Reshape after it.
    assert_eq!(c.inputs[0].name, "image");
    assert_eq!(c.inputs[0].shape, [4, 4]);
    assert!(
        c.rewrites
            .iter()
            .any(|r| r.from == "Unsqueeze on input image"),
        "{:?}",
        c.rewrites
    );
    assert!(
        c.rewrites
            .iter()
            .any(|r| r.from == "Reshape on input image" && r.to == "input shape [16]"),
        "{:?}",
        c.rewrites
    );
    let f = c.fidelity.unwrap();
    assert_eq!(f.outputs[0].name, "probabilities");
    assert_eq!(f.outputs[0].kind, OutputKind::Multiclass);
    assert!(f.outputs[0].agreement.unwrap() >= 0.8, "{f:?}");

    // A graph with two named inputs, concatenated, and a sigmoid output.
    let c = emulate(
        &ModelFiles::auto(dir.join("gen/two_input.onnx")),
        &dir.join("two"),
    )
    .await
    .unwrap();
    let names: Vec<&str> = c.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["x_profile", "y_profile"]);
    let f = c.fidelity.unwrap();
    assert_eq!(f.outputs[0].kind, OutputKind::Binary, "{f:?}");
    assert!(f.max_abs_diff < 0.05, "{f:?}");
}

/// The seed's story: a layer partitioning 4,608 elements where the tools allow 4,096, found
/// after hours of synthesis. Preflight names it before any tool runs: `hlsfarm check`, every
/// trial's `result.json`, and `run --strict` refusing the trial; without --strict the tools
/// refuse it as predicted (the stand-in does as Vivado HLS does), and with the size raised
/// nothing is refused.
#[test]
fn preflight_names_a_partition_above_the_limit_before_synthesis() {
    use hlsfarm_tests::{hlsfarm_command, path_with_standin};
    let dir = TestDir::new("real-preflight").unwrap();
    let input = dir.join("input");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::copy(
        keras_models().join("big_cnn.h5"),
        input.join("model_trial_000.h5"),
    )
    .unwrap();
    let hlsfarm = || {
        let mut c = hlsfarm_command().unwrap();
        c.env("HLSFARM_PYTHON", hls4ml_python().unwrap())
            .env("PATH", path_with_standin());
        c
    };
    let output = hlsfarm()
        .args(["check", "--input-dir"])
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "layer `conv3` (Conv2D) partitions 4608 elements, above max_array_partition_size 4096"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("at least 4608"), "{stdout}");
    // `hlsfarm check FLAGS --input-dir input`: (exit code, stdout).
    let check = |flags: &[&str]| {
        let output = hlsfarm()
            .arg("check")
            .args(flags)
            .arg("--input-dir")
            .arg(&input)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), stdout)
    };
    let (code, stdout) = check(&["--max-array-partition-size", "16384"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("0 finding(s) the tools would refuse"),
        "{stdout}"
    );
    // For Vivado HLS the Dense layer's 11,520 multiplications at reuse factor 1 are past
    // the 4,096 it unrolls (XFORM 203-504): an error, fixed by that layer's reuse factor.
    let (code, stdout) = check(&["--backend", "vivado", "--max-array-partition-size", "16384"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("error unroll_limit: layer `classes` (Dense) unrolls 11520 multiplications per cycle at reuse factor 1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("give layer `classes` reuse_factor"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 finding(s) the tools would refuse"),
        "{stdout}"
    );
    assert!(
        stdout.contains("error unroll_limit: layer `conv3` (Conv2D) unrolls 4608"),
        "{stdout}"
    );

    // submit --preflight --strict: the same findings before anything is uploaded, and
    // nothing submitted (the coordinator named here is never reached).
    let output = hlsfarm()
        .args(["submit", "--preflight", "--strict", "--coordinator"])
        .arg("http://127.0.0.1:9")
        .args(["--token", "unused", "--input-dir"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("hlsfarm: preflight: model_trial_000.h5")
            && stderr.contains("error array_partition")
            && stderr.contains("nothing submitted (--strict)"),
        "{stderr}"
    );

    // --strict: refused at convert, no tool ever started.
    let record = dir.join("calls.jsonl");
    let output = hlsfarm()
        .args([
            "run",
            "--strict",
            "--stages",
            "convert,csynth",
            "--input-dir",
        ])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.join("strict"))
        .env("STANDIN_RECORD", &record)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad_input: preflight (--strict)"),
        "{stderr}"
    );
    assert!(!record.exists(), "a tool ran under --strict");

    // Without it the finding is recorded and C synthesis fails as predicted.
    let output = hlsfarm()
        .args(["run", "--stages", "convert,csynth", "--input-dir"])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.join("plain"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("plain/hls_model_trial_000/result.json")).unwrap(),
    )
    .unwrap();
    let preflight = result["preflight"].as_array().unwrap();
    assert!(
        preflight
            .iter()
            .any(|f| f["rule"] == "array_partition" && f["layer"] == "conv3"),
        "{result}"
    );
    assert_eq!(result["failure"]["stage"], "csynth", "{result}");
    assert!(
        result["failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("array partition above the limit"),
        "{result}"
    );

    // --on-failure apply-fix: the refused trial runs, fails as predicted, and its fix (the
    // size from the tool's log and preflight's, the larger) runs as a derived trial.
    let output = hlsfarm()
        .args([
            "run",
            "--on-failure",
            "apply-fix",
            "--stages",
            "convert,csynth",
            "--input-dir",
        ])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.join("applied"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "deriving hls_model_trial_000_fixed with {\"max_array_partition_size\":11520}"
        ),
        "{stderr}"
    );
    let original: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("applied/hls_model_trial_000/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        original["failure"]["fix"]["max_array_partition_size"], 11520,
        "{original}"
    );
    let applied: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("applied/hls_model_trial_000_fixed/result.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(applied["status"], "success", "{applied}");
    assert_eq!(applied["derived_from"]["trial_key"], original["trial_key"]);
    assert_eq!(applied["settings"]["max_array_partition_size"], 11520);
    let summary = std::fs::read_to_string(dir.join("applied/synthesis_results.json")).unwrap();
    assert!(summary.contains("hls_model_trial_000_fixed"), "{summary}");

    // --fix: derived before anything runs, with the size the largest partition needs (the
    // seed's hand edit of build_prj.tcl, done as a trial of its own), and synthesized.
    let output = hlsfarm()
        .args(["run", "--fix", "--stages", "convert,csynth", "--input-dir"])
        .arg(&input)
        .arg("--output-dir")
        .arg(dir.join("fixed"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("1 derived with a fix (--fix)"), "{stderr}");
    let folder = dir.join("fixed/hls_model_trial_000_fixed");
    let derived: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("result.json")).unwrap()).unwrap();
    assert_eq!(derived["status"], "success", "{derived}");
    assert_eq!(derived["settings"]["max_array_partition_size"], 11520);
    let from = &derived["derived_from"];
    assert_eq!(from["fix"]["max_array_partition_size"], 11520, "{derived}");
    assert_eq!(from["trial_key"], result["trial_key"], "{derived}");
    assert_ne!(from["trial_key"], derived["trial_key"]);
    assert_eq!(from["findings"].as_array().unwrap().len(), 2, "{derived}");
    let tcl = std::fs::read_to_string(folder.join("project.tcl")).unwrap();
    assert!(tcl.contains("set maximum_size 11520"), "{tcl}");
}

/// The float reference calls the model in inference mode on `predict`'s batches, without
/// `predict`'s tracing: its outputs are bit-identical to `predict`'s on every generated Keras
/// model (several inputs and outputs, QKeras, pruned, convolutional) and the example models.
#[test]
fn the_float_reference_equals_keras_predict_bit_for_bit() {
    let generated = keras_models();
    let examples = shared_dir().unwrap().join("models/keras");
    let mut command = Command::new(hls4ml_python().unwrap());
    command
        .env("TF_USE_LEGACY_KERAS", "1")
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .arg("-c")
        .arg(
            r#"
import glob, os, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import hlsfarm_driver as d
paths = sorted(glob.glob(os.path.join(sys.argv[2], "*.h5")))
paths += [os.path.join(sys.argv[3], n) for n in ("qkeras_3layer.json", "KERAS_3layer_batch_norm.json", "KERAS_conv1d_small.json", "KERAS_conv2d_model.json")]
checked = 0
for path in paths:
    if path.endswith("_weights.h5"):
        continue
    spec = {"path": path, "format": "auto"}
    weights = os.path.splitext(path)[0] + "_weights.h5"
    if path.endswith(".json") and os.path.exists(weights):
        spec["weights"] = weights
    try:
        p = d.prepare(spec, [])
    except d.Failure as e:
        print("not a model for this check:", os.path.basename(path), e.reason)
        continue
    if p.fmt not in ("keras_h5", "keras_json"):
        continue
    xs, _ = d.sample_inputs({"emulation": {"samples": 70, "seed": 3}}, p.inputs)
    ours = d.keras_reference(p.net, xs)
    theirs = p.net.predict(xs if len(xs) > 1 else xs[0], verbose=0)
    theirs = theirs if isinstance(theirs, list) else [theirs]
    same = len(ours) == len(theirs) and all(np.array_equal(a, np.asarray(b)) for a, b in zip(ours, theirs))
    print(("same" if same else "DIFFERENT"), os.path.basename(path), len(ours))
    checked += 1
print("checked", checked)
"#,
        )
        .arg(tests_dir().join("../worker/python"))
        .arg(&generated)
        .arg(&examples);
    let out = String::from_utf8_lossy(&run_ok(command).unwrap().stdout).into_owned();
    eprintln!("{out}");
    assert!(!out.contains("DIFFERENT"), "{out}");
    let checked: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("checked "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(checked >= 8, "{out}");
}
