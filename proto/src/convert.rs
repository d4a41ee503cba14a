//! Wire ↔ domain conversions. `TryFrom` rejects unspecified enums and missing messages.

use std::collections::BTreeMap;

use hlsfarm_common::estimate::StageLimit;
use hlsfarm_common::job::TrialState;
use hlsfarm_common::plan::WorkerCaps;
use hlsfarm_common::sweep::{OneOrMany, SettingsGrid};
use hlsfarm_common::{Backend, FailureClass, IoType, LayerOverride, Settings, Stage, Strategy};

use crate::v1;

/// A wire message the domain cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field was unset.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// An enum field had an unspecified or unknown value.
    #[error("field `{field}` has no valid value ({value})")]
    BadEnum {
        /// The field.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
}

fn bad(field: &'static str, value: i32) -> WireError {
    WireError::BadEnum { field, value }
}

/// Converts a raw wire enum value into a domain enum.
pub trait FromWire: Sized {
    /// The domain value, or an error naming the field when the raw value is unspecified or unknown.
    fn from_wire(raw: i32) -> Result<Self, WireError>;
}

/// Converts one enum both ways; unknown and unspecified wire values are errors.
macro_rules! enum_conversion {
    ($domain:ty, $wire:ty, $field:literal, { $($d:ident <=> $w:ident),+ $(,)? }) => {
        impl From<$domain> for $wire {
            fn from(v: $domain) -> Self {
                match v { $(<$domain>::$d => <$wire>::$w),+ }
            }
        }

        impl FromWire for $domain {
            fn from_wire(raw: i32) -> Result<Self, WireError> {
                match <$wire>::try_from(raw) {
                    $(Ok(<$wire>::$w) => Ok(<$domain>::$d),)+
                    _ => Err(bad($field, raw)),
                }
            }
        }
    };
}

enum_conversion!(IoType, v1::IoType, "io_type", { Parallel <=> Parallel, Stream <=> Stream });
enum_conversion!(Strategy, v1::Strategy, "strategy", {
    Latency <=> Latency, Resource <=> Resource, DistributedArithmetic <=> DistributedArithmetic
});
enum_conversion!(Backend, v1::Backend, "backend", { Vitis <=> Vitis, Vivado <=> Vivado });
enum_conversion!(Stage, v1::Stage, "stage", {
    Convert <=> Convert, Emulate <=> Emulate, Csynth <=> Csynth,
    Cosim <=> Cosim, Export <=> Export, Vsynth <=> Vsynth
});

enum_conversion!(TrialState, v1::TrialState, "state", {
    Queued <=> Queued, Leased <=> Leased, Succeeded <=> Succeeded,
    Failed <=> Failed, Cancelled <=> Cancelled, Dead <=> Dead
});
enum_conversion!(FailureClass, v1::FailureClass, "class", {
    BadInput <=> BadInput, ToolError <=> ToolError, Timeout <=> Timeout,
    Oom <=> Oom, Licence <=> Licence, Infrastructure <=> Infrastructure
});

/// Converts a stage list from the wire.
pub fn stages_from_wire(raw: &[i32]) -> Result<Vec<Stage>, WireError> {
    raw.iter().map(|s| Stage::from_wire(*s)).collect()
}

impl From<&StageLimit> for v1::StageLimit {
    fn from(l: &StageLimit) -> Self {
        v1::StageLimit {
            stage: v1::Stage::from(l.stage) as i32,
            seconds: l.seconds,
            predicted_seconds: l.predicted_seconds,
        }
    }
}

impl TryFrom<&v1::StageLimit> for StageLimit {
    type Error = WireError;

    fn try_from(l: &v1::StageLimit) -> Result<Self, WireError> {
        Ok(StageLimit {
            stage: Stage::from_wire(l.stage)?,
            seconds: l.seconds,
            predicted_seconds: l.predicted_seconds,
        })
    }
}

impl From<&LayerOverride> for v1::LayerOverride {
    fn from(l: &LayerOverride) -> Self {
        v1::LayerOverride {
            reuse_factor: l.reuse_factor.unwrap_or(0),
            strategy: l.strategy.map_or(0, |s| v1::Strategy::from(s) as i32),
            precision: l.precision.clone().into_iter().collect(),
        }
    }
}

impl TryFrom<v1::LayerOverride> for LayerOverride {
    type Error = WireError;

    fn try_from(l: v1::LayerOverride) -> Result<Self, WireError> {
        Ok(LayerOverride {
            reuse_factor: (l.reuse_factor != 0).then_some(l.reuse_factor),
            strategy: if l.strategy == 0 {
                None
            } else {
                Some(Strategy::from_wire(l.strategy)?)
            },
            precision: l.precision.into_iter().collect(),
        })
    }
}

impl From<&Settings> for v1::Settings {
    fn from(s: &Settings) -> Self {
        v1::Settings {
            io_type: v1::IoType::from(s.io_type) as i32,
            strategy: v1::Strategy::from(s.strategy) as i32,
            reuse_factor: s.reuse_factor,
            precision: s.precision.clone(),
            part: s.part.clone(),
            clock_period_ns: s.clock_period_ns,
            backend: v1::Backend::from(s.backend) as i32,
            max_array_partition_size: s.max_array_partition_size.unwrap_or(0),
            layers: s
                .layers
                .iter()
                .map(|(k, v)| (k.clone(), v.into()))
                .collect(),
        }
    }
}

impl TryFrom<v1::Settings> for Settings {
    type Error = WireError;

    fn try_from(s: v1::Settings) -> Result<Self, WireError> {
        let layers = s
            .layers
            .into_iter()
            .map(|(k, v)| Ok((k, LayerOverride::try_from(v)?)))
            .collect::<Result<BTreeMap<_, _>, WireError>>()?;
        Ok(Settings {
            io_type: IoType::from_wire(s.io_type)?,
            strategy: Strategy::from_wire(s.strategy)?,
            reuse_factor: s.reuse_factor,
            precision: s.precision,
            part: s.part,
            clock_period_ns: s.clock_period_ns,
            backend: Backend::from_wire(s.backend)?,
            max_array_partition_size: (s.max_array_partition_size != 0)
                .then_some(s.max_array_partition_size),
            layers,
        })
    }
}

fn list<T: Clone>(v: &Option<OneOrMany<T>>) -> Vec<T> {
    v.as_ref().map(OneOrMany::to_vec).unwrap_or_default()
}

fn some<T>(v: Vec<T>) -> Option<OneOrMany<T>> {
    (!v.is_empty()).then_some(OneOrMany::Many(v))
}

fn enums<T: FromWire>(raw: Vec<i32>) -> Result<Option<OneOrMany<T>>, WireError> {
    Ok(some(
        raw.into_iter()
            .map(T::from_wire)
            .collect::<Result<Vec<T>, WireError>>()?,
    ))
}

impl From<&SettingsGrid> for v1::SettingsGrid {
    fn from(g: &SettingsGrid) -> Self {
        v1::SettingsGrid {
            io_type: list(&g.io_type)
                .into_iter()
                .map(|v| v1::IoType::from(v) as i32)
                .collect(),
            strategy: list(&g.strategy)
                .into_iter()
                .map(|v| v1::Strategy::from(v) as i32)
                .collect(),
            reuse_factor: list(&g.reuse_factor),
            precision: list(&g.precision),
            part: list(&g.part),
            clock_period_ns: list(&g.clock_period_ns),
            backend: list(&g.backend)
                .into_iter()
                .map(|v| v1::Backend::from(v) as i32)
                .collect(),
            max_array_partition_size: list(&g.max_array_partition_size),
            layers: g
                .layers
                .iter()
                .map(|(k, v)| (k.clone(), v.into()))
                .collect(),
        }
    }
}

/// An empty wire list means "the default", as a field left out of a sweep file does.
impl TryFrom<v1::SettingsGrid> for SettingsGrid {
    type Error = WireError;

    fn try_from(g: v1::SettingsGrid) -> Result<Self, WireError> {
        Ok(SettingsGrid {
            io_type: enums(g.io_type)?,
            strategy: enums(g.strategy)?,
            reuse_factor: some(g.reuse_factor),
            precision: some(g.precision),
            part: some(g.part),
            clock_period_ns: some(g.clock_period_ns),
            backend: enums(g.backend)?,
            max_array_partition_size: some(g.max_array_partition_size),
            layers: g
                .layers
                .into_iter()
                .map(|(k, v)| Ok((k, LayerOverride::try_from(v)?)))
                .collect::<Result<BTreeMap<_, _>, WireError>>()?,
        })
    }
}

impl From<&WorkerCaps> for v1::Capabilities {
    fn from(c: &WorkerCaps) -> Self {
        v1::Capabilities {
            backends: c
                .backends
                .iter()
                .map(|b| v1::Backend::from(*b) as i32)
                .collect(),
            tools: c.tools.clone().into_iter().collect(),
            hls4ml_version: c.hls4ml_version.clone(),
            part_families: c.part_families.clone(),
            slots: c.slots,
            memory_mib: c.memory_mib,
            cores: c.cores,
            free_disk_mib: 0,
            formats: c.formats.clone(),
        }
    }
}

impl TryFrom<v1::Capabilities> for WorkerCaps {
    type Error = WireError;

    fn try_from(c: v1::Capabilities) -> Result<Self, WireError> {
        Ok(WorkerCaps {
            backends: c
                .backends
                .into_iter()
                .map(Backend::from_wire)
                .collect::<Result<_, _>>()?,
            tools: c.tools.into_iter().collect(),
            hls4ml_version: c.hls4ml_version,
            part_families: c.part_families,
            formats: c.formats,
            slots: c.slots,
            memory_mib: c.memory_mib,
            cores: c.cores,
            hostname: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn settings_round_trip_through_the_wire() {
        let settings = Settings {
            io_type: IoType::Stream,
            strategy: Strategy::Resource,
            reuse_factor: 4,
            max_array_partition_size: Some(8192),
            layers: BTreeMap::from([(
                "conv1".to_owned(),
                LayerOverride {
                    reuse_factor: Some(3),
                    strategy: Some(Strategy::Latency),
                    precision: BTreeMap::from([("weight".to_owned(), "ap_fixed<4,0>".to_owned())]),
                },
            )]),
            ..Settings::default()
        };
        let wire = v1::Settings::from(&settings);
        assert_eq!(Settings::try_from(wire).unwrap(), settings);
    }

    #[test]
    fn unspecified_enums_are_rejected_by_field() {
        let wire = v1::Settings {
            io_type: 0,
            ..v1::Settings::from(&Settings::default())
        };
        assert_eq!(
            Settings::try_from(wire).unwrap_err(),
            WireError::BadEnum {
                field: "io_type",
                value: 0
            }
        );
        assert_eq!(
            stages_from_wire(&[1, 99]).unwrap_err(),
            WireError::BadEnum {
                field: "stage",
                value: 99
            }
        );
    }
}
