//! One point of hls4ml configuration: what a trial converts and synthesizes with.
//!
//! Names and spellings follow hls4ml (`io_parallel`, `Resource`, `ap_fixed<16,6>`,
//! `MaximumSize`); parsing accepts hls4ml's capitalisation too, and every rejection lists
//! the allowed values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validation::ValidationErrors;

string_enum!(
    /// How hls4ml moves data between layers.
    IoType, "io_type", {
        /// Whole arrays as ports.
        Parallel => "io_parallel" | "parallel",
        /// AXI streams between layers.
        Stream => "io_stream" | "stream",
    }
);

string_enum!(
    /// hls4ml's implementation strategy.
    Strategy, "strategy", {
        /// Fully unrolled multiplications.
        Latency => "latency",
        /// Multipliers shared according to the reuse factor.
        Resource => "resource",
        /// Distributed arithmetic (hls4ml ≥ 1.1).
        DistributedArithmetic => "distributed_arithmetic" | "da",
    }
);

string_enum!(
    /// The hls4ml backend, which picks the synthesis tool.
    Backend, "backend", {
        /// Vitis HLS or unified Vitis (`vitis_hls`, `vitis-run`).
        Vitis => "vitis",
        /// Vivado HLS (`vivado_hls`).
        Vivado => "vivado",
    }
);

impl Strategy {
    /// The spelling hls4ml's config uses (`Latency`, `Resource`, `distributed_arithmetic`).
    pub fn hls4ml_name(self) -> &'static str {
        match self {
            Strategy::Latency => "Latency",
            Strategy::Resource => "Resource",
            Strategy::DistributedArithmetic => "distributed_arithmetic",
        }
    }
}

impl Backend {
    /// The spelling hls4ml's converters take (`Vitis`, `Vivado`).
    pub fn hls4ml_name(self) -> &'static str {
        match self {
            Backend::Vitis => "Vitis",
            Backend::Vivado => "Vivado",
        }
    }
}

/// The part the original script defaults to (a Zynq-7020, as on the PYNQ-Z2 board).
pub const DEFAULT_PART: &str = "xc7z020clg400-1";

/// Per-layer overrides of the model-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    /// Reuse factor for this layer (≥ 1); absent: the model-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reuse_factor: Option<u32>,
    /// Strategy for this layer; absent: the model-wide one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Precision per variable (`weight`, `bias`, `result`, `accum`, ...), as hls4ml type strings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub precision: BTreeMap<String, String>,
}

/// The hls4ml configuration of one trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How data moves between layers.
    pub io_type: IoType,
    /// Implementation strategy for the whole model.
    pub strategy: Strategy,
    /// Model-wide reuse factor (≥ 1).
    pub reuse_factor: u32,
    /// Model-wide default precision, e.g. `ap_fixed<16,6>`.
    pub precision: String,
    /// FPGA part, e.g. `xc7z020clg400-1`.
    pub part: String,
    /// Target clock period in nanoseconds.
    pub clock_period_ns: f64,
    /// The hls4ml backend.
    pub backend: Backend,
    /// hls4ml's `MaximumSize`: the largest array partitioned completely; absent: hls4ml's 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_partition_size: Option<u32>,
    /// Per-layer overrides keyed by layer name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub layers: BTreeMap<String, LayerOverride>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            io_type: IoType::Parallel,
            strategy: Strategy::Latency,
            reuse_factor: 1,
            precision: "ap_fixed<16,6>".to_owned(),
            part: DEFAULT_PART.to_owned(),
            clock_period_ns: 5.0,
            backend: Backend::Vitis,
            max_array_partition_size: None,
            layers: BTreeMap::new(),
        }
    }
}

/// Largest reuse factor accepted; hls4ml itself clamps to what a layer allows.
pub const MAX_REUSE_FACTOR: u32 = 1 << 20;

/// Merges a fix into a setting's JSON: objects key by key (a per-layer override keeps the
/// other layers'), numbers take the larger (several findings asking for one setting all
/// hold), anything else is replaced.
pub fn merge_fix(into: &mut serde_json::Value, fix: &serde_json::Value) {
    use serde_json::Value;
    match (into, fix) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge_fix(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into @ Value::Number(_), Value::Number(new)) => {
            if new.as_f64() > into.as_f64() {
                *into = fix.clone();
            }
        }
        (into, _) => *into = fix.clone(),
    }
}

/// Merges the settings changes `fix` into `into`, key by key ([`merge_fix`]): several
/// findings' fixes held together.
pub fn merge_fixes(
    into: &mut BTreeMap<String, serde_json::Value>,
    fix: &BTreeMap<String, serde_json::Value>,
) {
    for (k, v) in fix {
        merge_fix(into.entry(k.clone()).or_insert(serde_json::Value::Null), v);
    }
}

impl Settings {
    /// These settings with `fix` merged in ([`merge_fix`] per key), or why it does not apply.
    pub fn with_fix(&self, fix: &BTreeMap<String, serde_json::Value>) -> Result<Settings, String> {
        let mut value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        for (k, v) in fix {
            merge_fix(&mut value[k.as_str()], v);
        }
        serde_json::from_value(value).map_err(|e| format!("the fix {fix:?} does not apply: {e}"))
    }

    /// Checks every field and reports all bad ones, each with what is allowed.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        check_reuse_factor(&mut errors, "reuse_factor", self.reuse_factor);
        if let Err(msg) = check_precision(&self.precision) {
            errors.push("precision", msg);
        }
        if let Err(msg) = part_family(&self.part) {
            errors.push("part", msg);
        }
        check_clock_period(&mut errors, "clock_period_ns", self.clock_period_ns);
        if let Some(size) = self.max_array_partition_size
            && size == 0
        {
            errors.push(
                "max_array_partition_size",
                "must be at least 1 (leave it out for hls4ml's default of 4096)",
            );
        }
        validate_layers(&mut errors, "layers", &self.layers);
        errors.into_result()
    }

    /// The part family, e.g. `zynq` for `xc7z020clg400-1`; see [`part_family`].
    pub fn part_family(&self) -> Option<&'static str> {
        part_family(&self.part).ok()
    }
}

/// Checks a reuse factor.
pub(crate) fn check_reuse_factor(errors: &mut ValidationErrors, field: &str, value: u32) {
    if value == 0 || value > MAX_REUSE_FACTOR {
        errors.push(
            field,
            format!("must be between 1 and {MAX_REUSE_FACTOR}, got {value}"),
        );
    }
}

/// Checks a clock period in nanoseconds.
pub(crate) fn check_clock_period(errors: &mut ValidationErrors, field: &str, value: f64) {
    if !(value.is_finite() && value > 0.0 && value <= 1000.0) {
        errors.push(
            field,
            format!("must be a period in ns above 0 and at most 1000, got {value}"),
        );
    }
}

/// Checks per-layer overrides.
pub(crate) fn validate_layers(
    errors: &mut ValidationErrors,
    field: &str,
    layers: &BTreeMap<String, LayerOverride>,
) {
    for (name, layer) in layers {
        let at = format!("{field}.{name}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            errors.push(
                &at,
                "layer names are letters, digits and `_` as hls4ml names them",
            );
        }
        if let Some(rf) = layer.reuse_factor {
            check_reuse_factor(errors, &format!("{at}.reuse_factor"), rf);
        }
        for (var, precision) in &layer.precision {
            if let Err(msg) = check_precision(precision) {
                errors.push(format!("{at}.precision.{var}"), msg);
            }
        }
    }
}

/// Checks an hls4ml precision string: `ap_fixed<W,I[,Q[,O[,N]]]>`, `ap_ufixed<...>`,
/// `ap_int<W>`, `ap_uint<W>`, the same without `ap_`, or `auto`.
pub fn check_precision(text: &str) -> Result<(), String> {
    let allowed = "allowed: ap_fixed<W,I>, ap_ufixed<W,I>, ap_int<W>, ap_uint<W> (with or without `ap_`, optional rounding and saturation modes), or auto";
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if t == "auto" {
        return Ok(());
    }
    let bad = || format!("`{text}` is not an hls4ml precision; {allowed}");
    let (kind, rest) = t.split_once('<').ok_or_else(bad)?;
    let args = rest.strip_suffix('>').ok_or_else(bad)?;
    let kind = kind.strip_prefix("ap_").unwrap_or(kind);
    let parts: Vec<&str> = args.split(',').collect();
    let number = |s: &str| s.parse::<i64>().map_err(|_| bad());
    match kind {
        "fixed" | "ufixed" => {
            if parts.len() < 2 || parts.len() > 5 {
                return Err(bad());
            }
            let width = number(parts[0])?;
            number(parts[1])?;
            const MODES: &[&str] = &[
                "RND",
                "RND_ZERO",
                "RND_MIN_INF",
                "RND_INF",
                "RND_CONV",
                "TRN",
                "TRN_ZERO",
                "AP_RND",
                "AP_RND_ZERO",
                "AP_RND_MIN_INF",
                "AP_RND_INF",
                "AP_RND_CONV",
                "AP_TRN",
                "AP_TRN_ZERO",
            ];
            const OVERFLOW: &[&str] = &[
                "SAT",
                "SAT_ZERO",
                "SAT_SYM",
                "WRAP",
                "WRAP_SM",
                "AP_SAT",
                "AP_SAT_ZERO",
                "AP_SAT_SYM",
                "AP_WRAP",
                "AP_WRAP_SM",
            ];
            if let Some(mode) = parts.get(2)
                && !MODES.contains(mode)
            {
                return Err(format!(
                    "`{text}`: unknown rounding mode `{mode}`; allowed: {}",
                    MODES.join(", ")
                ));
            }
            if let Some(mode) = parts.get(3)
                && !OVERFLOW.contains(mode)
            {
                return Err(format!(
                    "`{text}`: unknown saturation mode `{mode}`; allowed: {}",
                    OVERFLOW.join(", ")
                ));
            }
            if let Some(bits) = parts.get(4) {
                number(bits)?;
            }
            check_width(text, width)
        }
        "int" | "uint" => {
            if parts.len() != 1 {
                return Err(bad());
            }
            check_width(text, number(parts[0])?)
        }
        _ => Err(bad()),
    }
}

fn check_width(text: &str, width: i64) -> Result<(), String> {
    if (1..=1024).contains(&width) {
        Ok(())
    } else {
        Err(format!(
            "`{text}`: the width must be between 1 and 1024 bits, got {width}"
        ))
    }
}

/// Part-name prefixes and the AMD device family each belongs to. Longer prefixes come first
/// so that `xcvu9p` is matched as UltraScale+ before `xcvu` as UltraScale.
const PART_FAMILIES: &[(&str, &str)] = &[
    ("xc7z", "zynq"),
    ("xa7z", "zynq"),
    ("xq7z", "zynq"),
    ("xc7a", "artix7"),
    ("xa7a", "artix7"),
    ("xc7s", "spartan7"),
    ("xa7s", "spartan7"),
    ("xc7k", "kintex7"),
    ("xq7k", "kintex7"),
    ("xc7v", "virtex7"),
    ("xczu", "zynquplus"),
    ("xazu", "zynquplus"),
    ("xqzu", "zynquplus"),
    ("xck26", "zynquplus"),
    ("xck24", "zynquplus"),
    ("xcau", "artixuplus"),
    ("xcku", "kintexu"),
    ("xcvu", "virtexu"),
    ("xcu", "virtexuplus"),
    ("xcvc", "versal"),
    ("xcve", "versal"),
    ("xcvm", "versal"),
    ("xcvp", "versal"),
    ("xcvh", "versal"),
];

/// Names the device family of an AMD/Xilinx part, or says why the name is not one.
///
/// UltraScale+ Kintex and Virtex parts end their device name in `p` (`xcku5p`, `xcvu9p`);
/// Alveo cards (`xcu250`) are Virtex UltraScale+.
pub fn part_family(part: &str) -> Result<&'static str, String> {
    let lower = part.trim().to_ascii_lowercase();
    let well_formed = lower.len() >= 8
        && lower.contains('-')
        && lower.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let prefixes: Vec<&str> = PART_FAMILIES.iter().map(|(p, _)| *p).collect();
    let unknown = || {
        format!(
            "unknown FPGA part `{part}`; expected an AMD part name such as xc7z020clg400-1 or xcvu9p-flga2104-2-e, starting with one of: {}",
            prefixes.join(", ")
        )
    };
    if !well_formed {
        return Err(unknown());
    }
    let (prefix, family) = PART_FAMILIES
        .iter()
        .find(|(prefix, _)| lower.starts_with(prefix))
        .ok_or_else(unknown)?;
    let device = lower.split('-').next().unwrap_or_default();
    // The device name is the leading letters and digits before the package code, e.g. `xcvu9p`
    // in `xcvu9pflga2104` or `xcvu9p` in `xcvu9p-flga2104-2-e`.
    let digits_end = device[prefix.len()..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(device.len(), |i| i + prefix.len());
    let plus = device[digits_end..].starts_with('p');
    Ok(match (*family, plus) {
        ("kintexu", true) => "kintexuplus",
        ("virtexu", true) => "virtexuplus",
        (family, _) => family,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fixes_merge_per_layer_and_keep_the_larger_number() {
        let mut settings = serde_json::json!({
            "reuse_factor": 1,
            "max_array_partition_size": 4096,
            "layers": { "fc1": { "precision": "ap_fixed<8,3>" } },
        });
        for fix in [
            serde_json::json!({ "max_array_partition_size": 11520 }),
            serde_json::json!({ "max_array_partition_size": 8192 }),
            serde_json::json!({ "layers": { "fc1": { "reuse_factor": 3 } } }),
            serde_json::json!({ "layers": { "conv3": { "reuse_factor": 4 } } }),
        ] {
            for (k, v) in fix.as_object().unwrap() {
                merge_fix(&mut settings[k.as_str()], v);
            }
        }
        assert_eq!(
            settings,
            serde_json::json!({
                "reuse_factor": 1,
                "max_array_partition_size": 11520,
                "layers": {
                    "fc1": { "precision": "ap_fixed<8,3>", "reuse_factor": 3 },
                    "conv3": { "reuse_factor": 4 },
                },
            })
        );
    }

    #[test]
    fn enums_parse_hls4ml_spellings_and_list_allowed_values() {
        assert_eq!("io_stream".parse::<IoType>().unwrap(), IoType::Stream);
        assert_eq!("Resource".parse::<Strategy>().unwrap(), Strategy::Resource);
        assert_eq!("Vitis".parse::<Backend>().unwrap(), Backend::Vitis);
        let err = "io_serial".parse::<IoType>().unwrap_err();
        assert_eq!(
            err,
            "unknown io_type `io_serial`; allowed: io_parallel, io_stream"
        );
    }

    #[test]
    fn precision_accepts_hls4ml_types_and_rejects_others() {
        for ok in [
            "ap_fixed<16,6>",
            "fixed<8, 3, RND_CONV, SAT>",
            "ap_ufixed<4,0>",
            "ap_int<8>",
            "uint<3>",
            "auto",
        ] {
            check_precision(ok).unwrap();
        }
        for bad in [
            "float",
            "ap_fixed<16>",
            "ap_fixed<0,0>",
            "ap_fixed<16,6,ROUND>",
            "ap_fixed16,6",
        ] {
            assert!(check_precision(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn part_families_cover_the_parts_users_name() {
        assert_eq!(part_family("xc7z020clg400-1").unwrap(), "zynq");
        assert_eq!(part_family("xcu250-figd2104-2L-e").unwrap(), "virtexuplus");
        assert_eq!(part_family("xcvu9p-flga2577-2-e").unwrap(), "virtexuplus");
        assert_eq!(part_family("xcku115-flvb2104-2-i").unwrap(), "kintexu");
        assert_eq!(part_family("xcku5p-ffvb676-2-e").unwrap(), "kintexuplus");
        assert_eq!(part_family("xczu9eg-ffvb1156-2-e").unwrap(), "zynquplus");
        let err = part_family("ep4ce22f17c6").unwrap_err();
        assert!(err.contains("unknown FPGA part `ep4ce22f17c6`"), "{err}");
    }

    #[test]
    fn validate_names_every_bad_field() {
        let settings = Settings {
            reuse_factor: 0,
            clock_period_ns: -5.0,
            part: "nonsense".into(),
            ..Settings::default()
        };
        let err = settings.validate().unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["reuse_factor", "part", "clock_period_ns"]);
        assert!(err.to_string().contains("must be between 1 and"), "{err}");
    }
}
