//! Domain types shared by every hlsfarm crate.
//!
//! - [`settings`]: one point of hls4ml configuration (io_type, strategy, reuse factor, ...).
//! - [`stage`]: the steps a trial runs, in pipeline order.
//! - [`sweep`]: what a user submits, parsed from TOML or JSON, and its expansion into trials.
//! - [`trial_key`]: the sha256 that names a trial's work (DESIGN §1).
//! - [`job`]: the trial state machine, the only code that changes a trial's state.
//! - [`estimate`]: trial durations and peak memory learned from earlier results.
//! - [`plan`]: a submitted sweep expanded into trials with keys, costs and worker needs.
//! - [`blob`]: the object store (folder or S3) with hlsfarm's layout, checked uploads, commits.
//! - [`aggregate`]: a sweep's `synthesis_results.json` and `results.csv`.
//! - [`queue`]: the trial queue trait, the embedded backend, and the conformance suite.
//! - `store` (feature `redis-queue`, the coordinator's): Redis: the key schema and the Redis
//!   queue backend.
//! - [`results`]: `result.json`, what one trial produced.
//! - [`report`]: parsers for the AMD tools' reports and logs.
//! - [`config`]: layered configuration (defaults, TOML file, `HLSFARM_*` env, flags).
//! - [`secret`]: tokens and passwords that never show in `Debug` or printed configs.
//! - [`sync`]: locks that a panicking holder does not poison for everyone after it.
//! - [`validation`]: the error type that names a bad field and what is allowed.

#![deny(clippy::unwrap_used)]

#[macro_use]
mod string_enum;

pub mod aggregate;
pub mod blob;
pub mod config;
pub mod estimate;
pub mod failure;
pub mod job;
pub mod plan;
pub mod queue;
pub mod report;
pub mod results;
pub mod search;
pub mod secret;
pub mod select;
pub mod settings;
pub mod stage;
#[cfg(feature = "redis-queue")]
pub mod store;
pub mod store_url;
pub mod sweep;
pub mod sync;
pub mod trial_key;
pub mod validation;

pub use failure::{Failure, FailureClass};
pub use settings::{Backend, IoType, LayerOverride, Settings, Strategy};
pub use stage::Stage;
pub use sweep::SweepSpec;
pub use trial_key::TrialKey;
pub use validation::{FieldError, ValidationErrors};
