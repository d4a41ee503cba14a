//! The trial key: the sha256 that names a trial's work (DESIGN §1).
//!
//! Equal keys mean equal work, so a stored result is reused under its key. The key hashes
//! canonical bytes: a domain tag (`hlsfarm-trial-key/v1`, a newline), then one JSON object
//! with sorted keys and no white space, holding
//! - `model`: the model file's sha256 and its companions' (weights, class file) by role;
//! - `settings`: the settings with the precision strings normalized (no white space,
//!   `ap_` prefix), the part lower-cased, and optional fields left out when unset;
//! - `stages`: the stages in pipeline order, without repeats;
//! - `emulation`: samples, seed and the sample-input file's sha256, only when `emulate` runs;
//! - `toolchain`: the hls4ml version, and the tool's name and version only when a tool stage
//!   runs (a convert-only trial does not depend on the Vivado version).
//!
//! What is left out when unset or irrelevant is what keeps keys stable when a field is added:
//! a new optional setting changes no existing key. Golden tests pin the bytes and the hashes.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::settings::Settings;
use crate::stage::{Stage, normalize_stages};

/// The domain tag in front of the canonical JSON; bump its version to change the encoding.
const DOMAIN_TAG: &[u8] = b"hlsfarm-trial-key/v1\n";

/// The sha256 naming one trial's work.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TrialKey([u8; 32]);

impl TrialKey {
    /// The key as 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for folder names and log lines.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }
}

impl fmt::Display for TrialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TrialKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrialKey({})", self.short())
    }
}

impl FromStr for TrialKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)
            .map_err(|_| format!("a trial key is 64 hex digits, got `{s}`"))?;
        Ok(TrialKey(bytes))
    }
}

impl TryFrom<String> for TrialKey {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<TrialKey> for String {
    fn from(key: TrialKey) -> String {
        key.to_hex()
    }
}

/// A tool and its version, e.g. `vitis_hls` `2023.2`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolVersion {
    /// The command's name (`vitis-run`, `vitis_hls`, `vivado_hls`).
    pub name: String,
    /// Its version as the banner prints it (`2024.2`).
    pub version: String,
}

/// What a trial's results depend on besides its inputs: hls4ml and the synthesis tool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    /// hls4ml's version (`1.3.0`).
    pub hls4ml_version: String,
    /// The synthesis tool, where one is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolVersion>,
}

/// The files of a model: the main file and its companions, each by sha256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDigest {
    /// sha256 of the main model file.
    pub sha256: String,
    /// sha256 of each companion file by role (`weights`, `class`, `inputs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub companions: BTreeMap<String, String>,
}

/// How emulation samples are chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulationSpec {
    /// Number of samples generated when no input file is given.
    pub samples: u32,
    /// Seed for generated samples.
    pub seed: u64,
}

impl Default for EmulationSpec {
    fn default() -> Self {
        EmulationSpec {
            samples: 100,
            seed: 0,
        }
    }
}

/// Everything a trial key is computed from.
#[derive(Debug, Clone, Copy)]
pub struct TrialKeyInput<'a> {
    /// The model's files.
    pub model: &'a ModelDigest,
    /// The settings.
    pub settings: &'a Settings,
    /// The stages (any order; repeats ignored).
    pub stages: &'a [Stage],
    /// The emulation samples.
    pub emulation: &'a EmulationSpec,
    /// hls4ml and the tool.
    pub toolchain: &'a Toolchain,
}

impl TrialKeyInput<'_> {
    /// The canonical bytes the key hashes (see the module docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let stages = normalize_stages(self.stages);
        let mut object = BTreeMap::new();
        object.insert("model", json!(self.model));
        object.insert("settings", canonical_settings(self.settings));
        object.insert(
            "stages",
            Value::from(stages.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        );
        if stages.contains(&Stage::Emulate) {
            object.insert("emulation", json!(self.emulation));
        }
        let mut toolchain = BTreeMap::new();
        toolchain.insert("hls4ml_version", json!(self.toolchain.hls4ml_version));
        if stages.iter().any(|s| s.needs_xilinx_tools())
            && let Some(tool) = &self.toolchain.tool
        {
            toolchain.insert("tool", json!(tool));
        }
        object.insert("toolchain", json!(toolchain));

        let mut bytes = DOMAIN_TAG.to_vec();
        // serde_json's `Map` is a `BTreeMap` (the `preserve_order` feature is off), so every
        // object's keys are written sorted, and `to_writer` writes no white space.
        serde_json::to_writer(&mut bytes, &object)
            .expect("serializing a map of JSON values into a Vec should not fail");
        bytes
    }

    /// The trial key.
    pub fn key(&self) -> TrialKey {
        TrialKey(Sha256::digest(self.canonical_bytes()).into())
    }
}

/// The settings as canonical JSON: precisions normalized, the part lower-cased.
fn canonical_settings(settings: &Settings) -> Value {
    let mut settings = settings.clone();
    settings.precision = normalize_precision(&settings.precision);
    settings.part = settings.part.trim().to_ascii_lowercase();
    for layer in settings.layers.values_mut() {
        for precision in layer.precision.values_mut() {
            *precision = normalize_precision(precision);
        }
    }
    json!(settings)
}

/// Writes a precision the one way the key uses: no white space, `ap_` in front.
pub fn normalize_precision(text: &str) -> String {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if t == "auto" || t.starts_with("ap_") {
        t
    } else {
        format!("ap_{t}")
    }
}

/// The sha256 of some bytes, as 64 hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::{IoType, LayerOverride, Strategy};

    fn model() -> ModelDigest {
        ModelDigest {
            sha256: sha256_hex(b"model_trial_000.h5"),
            companions: BTreeMap::new(),
        }
    }

    fn toolchain() -> Toolchain {
        Toolchain {
            hls4ml_version: "1.3.0".into(),
            tool: Some(ToolVersion {
                name: "vitis_hls".into(),
                version: "2024.1".into(),
            }),
        }
    }

    fn key(settings: &Settings, stages: &[Stage]) -> String {
        TrialKeyInput {
            model: &model(),
            settings,
            stages,
            emulation: &EmulationSpec::default(),
            toolchain: &toolchain(),
        }
        .key()
        .to_hex()
    }

    /// The canonical bytes, written out: if this test fails, every stored result's key has
    /// changed. Bump the domain tag's version instead of editing the expectation.
    #[test]
    fn canonical_bytes_are_pinned() {
        let input = TrialKeyInput {
            model: &model(),
            settings: &Settings::default(),
            stages: &[Stage::Emulate, Stage::Convert],
            emulation: &EmulationSpec::default(),
            toolchain: &toolchain(),
        };
        let text = String::from_utf8(input.canonical_bytes()).unwrap();
        assert_eq!(
            text,
            "hlsfarm-trial-key/v1\n\
             {\"emulation\":{\"samples\":100,\"seed\":0},\
             \"model\":{\"sha256\":\"MODEL\"},\
             \"settings\":{\"backend\":\"vitis\",\"clock_period_ns\":5.0,\"io_type\":\"io_parallel\",\
             \"part\":\"xc7z020clg400-1\",\"precision\":\"ap_fixed<16,6>\",\"reuse_factor\":1,\
             \"strategy\":\"latency\"},\
             \"stages\":[\"convert\",\"emulate\"],\
             \"toolchain\":{\"hls4ml_version\":\"1.3.0\"}}"
                .replace("MODEL", &model().sha256)
        );
    }

    #[test]
    fn golden_keys_never_drift() {
        let full = Stage::FULL_FLOW;
        assert_eq!(
            key(&Settings::default(), &[Stage::Convert, Stage::Emulate]),
            "18bbc6bc5667ba213f4ce8fd8ebe3e19f33409fcb1e0657fe1acbdcde351568f"
        );
        assert_eq!(
            key(&Settings::default(), full),
            "38d9d8232cde6d6477294f3ea8f1645851fd684932e89b2e7a0a27f7919e3cdd"
        );
        let tuned = Settings {
            io_type: IoType::Stream,
            strategy: Strategy::Resource,
            reuse_factor: 4,
            precision: "fixed<8, 3>".into(),
            part: "XCU250-figd2104-2L-e".into(),
            clock_period_ns: 4.5,
            max_array_partition_size: Some(8192),
            layers: BTreeMap::from([(
                "conv1".to_owned(),
                LayerOverride {
                    reuse_factor: Some(3),
                    strategy: None,
                    precision: BTreeMap::from([("weight".to_owned(), "fixed<4,0>".to_owned())]),
                },
            )]),
            ..Settings::default()
        };
        assert_eq!(
            key(&tuned, full),
            "a1ab9ab15f4dc0dd9c39992a45c80a566bb19306af1343e7f2fcd3167d0119c8"
        );
    }

    #[test]
    fn equal_work_gives_equal_keys() {
        let spaced = Settings {
            precision: " fixed<16, 6> ".into(),
            part: "XC7Z020CLG400-1".into(),
            ..Settings::default()
        };
        assert_eq!(
            key(&spaced, &[Stage::Emulate, Stage::Convert, Stage::Convert]),
            key(&Settings::default(), &[Stage::Convert, Stage::Emulate])
        );
    }

    #[test]
    fn the_tool_matters_only_to_tool_stages() {
        let without_tool = Toolchain {
            tool: None,
            ..toolchain()
        };
        let stages = [Stage::Convert];
        let a = TrialKeyInput {
            model: &model(),
            settings: &Settings::default(),
            stages: &stages,
            emulation: &EmulationSpec::default(),
            toolchain: &without_tool,
        };
        assert_eq!(a.key().to_hex(), key(&Settings::default(), &stages));
        let csynth = [Stage::Convert, Stage::Csynth];
        let b = TrialKeyInput {
            stages: &csynth,
            ..a
        };
        assert_ne!(b.key().to_hex(), key(&Settings::default(), &csynth));
    }

    #[test]
    fn every_setting_changes_the_key() {
        let base = key(&Settings::default(), Stage::FULL_FLOW);
        let variants = [
            Settings {
                reuse_factor: 2,
                ..Settings::default()
            },
            Settings {
                clock_period_ns: 5.000001,
                ..Settings::default()
            },
            Settings {
                max_array_partition_size: Some(4096),
                ..Settings::default()
            },
            Settings {
                io_type: IoType::Stream,
                ..Settings::default()
            },
        ];
        for variant in variants {
            assert_ne!(key(&variant, Stage::FULL_FLOW), base, "{variant:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let k = TrialKeyInput {
            model: &model(),
            settings: &Settings::default(),
            stages: &[Stage::Convert],
            emulation: &EmulationSpec::default(),
            toolchain: &toolchain(),
        }
        .key();
        assert_eq!(k.to_hex().parse::<TrialKey>().unwrap(), k);
        assert!("abc".parse::<TrialKey>().is_err());
    }
}
