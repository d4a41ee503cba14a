//! How closely the fixed-point emulation follows the float model: per-output fidelity, where
//! it departs, and accuracy on a labelled validation set.

use serde::{Deserialize, Serialize};

/// What kind of figure an output calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// One unit in [0, 1] (a sigmoid): agreement is "same side of 0.5".
    Binary,
    /// Softmax or several logits: agreement is "same argmax".
    Multiclass,
    /// Anything else (values, reconstructions): relative error.
    Regression,
}

impl OutputKind {
    /// Its name as `result.json` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputKind::Binary => "binary",
            OutputKind::Multiclass => "multiclass",
            OutputKind::Regression => "regression",
        }
    }
}

/// How one output of the emulated design compares with the float model's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputFidelity {
    /// The output's name in the model.
    pub name: String,
    /// Its kind, which decides the figure that fits it.
    pub kind: OutputKind,
    /// Values per sample.
    #[serde(default)]
    pub units: u64,
    /// Mean absolute difference.
    pub mean_abs_diff: f64,
    /// Largest absolute difference.
    pub max_abs_diff: f64,
    /// Binary: share on the same side of 0.5; multiclass: share with the same argmax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Regression: largest difference over the float output's scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_error: Option<f64>,
    /// Every emulated value equal while the float values differ.
    #[serde(default)]
    pub collapsed: bool,
    /// Within the sweep's tolerance for this kind.
    #[serde(default = "yes")]
    pub within_tolerance: bool,
    /// What is beyond the tolerance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

fn yes() -> bool {
    true
}

impl OutputFidelity {
    /// The figure that fits the kind: `label multiclass agree 0.98`, `recon regression rel.err 0.012`.
    pub fn headline(&self) -> String {
        let figure = match (self.kind, self.agreement, self.relative_error) {
            (OutputKind::Binary | OutputKind::Multiclass, Some(a), _) => format!("agree {a:.2}"),
            (_, _, Some(r)) => format!("rel.err {r:.3}"),
            _ => format!("max|diff| {:.4}", self.max_abs_diff),
        };
        format!("{} {} {figure}", self.name, self.kind.as_str())
    }
}

/// Where the fixed-point model departs from the float one, and what would hold it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// The first layer (in hls4ml's order) that departs, when one is found.
    #[serde(default)]
    pub layer: Option<String>,
    /// hls4ml's class of that layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_class: Option<String>,
    /// The largest magnitude the float model's values reach there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_max_abs: Option<f64>,
    /// The layer's result type (`ap_fixed<16,6>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Integer bits that would hold the float range, when the range is the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer_bits_needed: Option<u32>,
    /// One line saying where and why.
    pub message: String,
    /// What to change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

/// How the emulated design compares with the float model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fidelity {
    /// Samples compared.
    pub samples: u32,
    /// Where the samples came from (`generated uniform(-1, 1)` or the inputs file's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<String>,
    /// Mean absolute difference over all outputs.
    pub mean_abs_diff: f64,
    /// Largest absolute difference over all outputs.
    pub max_abs_diff: f64,
    /// For a one-output model, its agreement (binary: same side of 0.5; multiclass: same
    /// argmax; regression: same argmax, as before per-output figures); absent for several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argmax_agreement: Option<f64>,
    /// Every emulated output equal while the float outputs differ.
    pub collapsed: bool,
    /// One entry per model output, by kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputFidelity>,
    /// Every output within the tolerance of its kind; false is a fidelity warning.
    #[serde(default = "yes")]
    pub within_tolerance: bool,
    /// Where and why the emulation departs, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divergence: Option<Divergence>,
}

impl Fidelity {
    /// A fidelity warning: the trial ran, but its fixed-point model does not reproduce the
    /// float one within tolerance.
    pub fn warning(&self) -> bool {
        !self.within_tolerance || self.collapsed
    }

    /// The figures that fit each output, `; `-separated (`output binary agree 0.99`).
    pub fn figures(&self) -> String {
        if self.outputs.is_empty() {
            format!("max|diff| {:.4}", self.max_abs_diff)
        } else {
            self.outputs
                .iter()
                .map(OutputFidelity::headline)
                .collect::<Vec<_>>()
                .join("; ")
        }
    }

    /// [`Fidelity::figures`], with `WARNING` and the divergence where the emulation departs.
    pub fn headline(&self) -> String {
        let mut text = self.figures();
        if self.warning() {
            text.push_str(" WARNING: ");
            match &self.divergence {
                Some(d) => text.push_str(&d.message),
                None => text.push_str("beyond tolerance"),
            }
        }
        text
    }
}

/// Accuracy of one output on a labelled validation set: Keras's own figure (binary: the
/// prediction above 0.5 against 0/1 labels; multiclass: top-1 against integer or one-hot
/// labels) for the float model and for the compiled fixed-point emulation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputAccuracy {
    /// The output.
    pub output: String,
    /// `binary` or `multiclass`.
    pub kind: OutputKind,
    /// The float model's accuracy.
    pub float: f64,
    /// The emulated (fixed-point) model's accuracy, when the emulation compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<f64>,
    /// `float - hls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<f64>,
    /// Binary: the float model's ROC AUC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub float_auc: Option<f64>,
    /// Binary: the emulated model's ROC AUC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls_auc: Option<f64>,
}

/// A trial's accuracy on the validation set: its first labelled output's figures, and every
/// labelled output's when several have labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// The first labelled output's figures.
    #[serde(flatten)]
    pub first: OutputAccuracy,
    /// Samples in the validation set.
    pub samples: u64,
    /// The validation file's name.
    pub source: String,
    /// Each labelled output, when several have labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputAccuracy>,
}
