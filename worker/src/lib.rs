//! The hlsfarm worker: the daemon on each synthesis host.
//!
//! - [`driver`]: the convert and emulate stages, through the Python driver.
//! - [`process`]: runs a tool as a process group with a time limit, cancel and peak memory.
//! - [`trial`]: one trial from start to end: stages, reports, kept files, `result.json`.
//! - [`tools`]: finds `vitis-run`, `vitis_hls`, `vivado_hls` and `vivado` and reads their
//!   versions from their banners.
//! - [`venv`]: the hls4ml venv: where it is, its version, the formats it converts.
//! - [`daemon`]: `hlsfarm worker`: register, lease, run, upload, report, drain.
//! - [`host`]: free disk, memory, the host's name.
//! - [`warm`]: warm interpreters: the frameworks imported once per host and family, a fork per
//!   trial.

#![deny(clippy::unwrap_used)]

pub mod daemon;
pub mod driver;
pub mod host;
pub mod process;
pub mod tools;
pub mod trial;
pub mod venv;
pub mod warm;
