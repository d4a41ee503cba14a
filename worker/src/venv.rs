//! The Python venv the driver runs in: where it is, its hls4ml version, and which model
//! formats it can convert (TensorFlow for Keras, torch for PyTorch, onnx for ONNX).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a venv offers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VenvInfo {
    /// hls4ml's version.
    pub hls4ml_version: String,
    /// Formats it converts: `keras_h5`, `keras_json`, `pytorch`, `onnx`.
    pub formats: Vec<String>,
}

/// Where `make setup` installs what hlsfarm needs: `$HLSFARM_HOME`, default
/// `~/.local/share/hlsfarm`.
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HLSFARM_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/hlsfarm")))
}

/// Finds the hls4ml venv's Python: `flag`, `$HLSFARM_PYTHON`, or the newest venv `make
/// setup` made under `$HLSFARM_HOME` (default `~/.local/share/hlsfarm`).
pub fn find_python(flag: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("HLSFARM_PYTHON") {
        return Ok(PathBuf::from(path));
    }
    let home = home();
    if let Some(home) = home
        && let Ok(entries) = std::fs::read_dir(home.join("venvs"))
    {
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("hls4ml-keras-"))
            .map(|e| e.path().join("bin/python"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(python) = found.pop() {
            return Ok(python);
        }
    }
    Err("no Python with hls4ml found: run `make setup` (it installs one), set HLSFARM_PYTHON, or pass --python".into())
}

/// Pythons of the format venvs `make setup` makes beside the Keras one
/// (`hls4ml-onnx-*`, `hls4ml-pytorch-*` under `$HLSFARM_HOME/venvs`), or named by
/// `$HLSFARM_PYTHON_ONNX` / `$HLSFARM_PYTHON_PYTORCH`.
pub fn format_pythons() -> std::collections::BTreeMap<String, PathBuf> {
    let mut out = std::collections::BTreeMap::new();
    let home = home();
    for (format, env, prefix) in [
        ("onnx", "HLSFARM_PYTHON_ONNX", "hls4ml-onnx-"),
        ("pytorch", "HLSFARM_PYTHON_PYTORCH", "hls4ml-pytorch-"),
    ] {
        if let Some(path) = std::env::var_os(env) {
            out.insert(format.to_owned(), PathBuf::from(path));
            continue;
        }
        let Some(home) = &home else { continue };
        let Ok(entries) = std::fs::read_dir(home.join("venvs")) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter(|e| e.path().join(".complete").is_file())
            .map(|e| e.path().join("bin/python"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            out.insert(format.to_owned(), p);
        }
    }
    out
}

const PROBE: &str = r#"
import importlib.metadata as m, importlib.util as u, json
formats = []
if u.find_spec("tensorflow"): formats += ["keras_h5", "keras_json"]
if u.find_spec("torch"): formats += ["pytorch"]
if u.find_spec("onnx"): formats += ["onnx"]
print(json.dumps({"hls4ml_version": m.version("hls4ml"), "formats": formats}))
"#;

/// Asks the venv for its hls4ml version and the formats it converts.
pub fn probe(python: &Path) -> Result<VenvInfo, String> {
    let output = std::process::Command::new(python)
        .args(["-c", PROBE])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} has no hls4ml ({}): run `make setup`, or pass --python with a venv that has hls4ml 1.3",
            python.display(),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
                .trim()
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{} answered the venv probe with something else ({e})",
            python.display()
        )
    })
}
