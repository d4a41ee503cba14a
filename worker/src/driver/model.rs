//! A model as the driver loads it: its file, its format and the companion files beside it.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// A model as the driver loads it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFiles {
    /// The model file.
    pub path: PathBuf,
    /// `auto`, `keras_h5`, `keras_json`, `pytorch` or `onnx`.
    pub format: String,
    /// The weights of a Keras JSON model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// The Python file defining a PyTorch model's class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_file: Option<PathBuf>,
    /// The PyTorch model class's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// A PyTorch model's input shape, without the batch dimension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_shape: Option<Vec<u64>>,
}

/// The companion files found beside a model, by role: `weights` for a Keras JSON
/// (`<stem>_weights.h5`), `class` for a PyTorch file (`<stem>.py`: its class, `INPUT_SHAPE`),
/// `inputs` for sample inputs (`<stem>_inputs.npz`, one array per input name, or
/// `<stem>_inputs.npy` for one input).
pub fn companions(model: &Path) -> std::collections::BTreeMap<String, PathBuf> {
    let mut out = std::collections::BTreeMap::new();
    let Some(stem) = model.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
        return out;
    };
    let ext = model
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let beside = |name: String| Some(model.with_file_name(name)).filter(|p| p.is_file());
    if ext == "json"
        && let Some(p) = beside(format!("{stem}_weights.h5"))
    {
        out.insert("weights".to_owned(), p);
    }
    if (ext == "pt" || ext == "pth")
        && let Some(p) = beside(format!("{stem}.py"))
    {
        out.insert("class".to_owned(), p);
    }
    if let Some(p) =
        beside(format!("{stem}_inputs.npz")).or_else(|| beside(format!("{stem}_inputs.npy")))
    {
        out.insert("inputs".to_owned(), p);
    }
    out
}

impl ModelFiles {
    /// A model file whose format is told by its name, with no companions.
    pub fn auto(path: impl Into<PathBuf>) -> ModelFiles {
        ModelFiles {
            path: path.into(),
            format: "auto".into(),
            weights: None,
            class_file: None,
            class_name: None,
            input_shape: None,
        }
    }
}
