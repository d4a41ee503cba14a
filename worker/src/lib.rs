//! The hlsfarm worker: the daemon on each synthesis host.
//!
//! - [`tools`]: finds `vitis-run`, `vitis_hls`, `vivado_hls` and `vivado` and reads their
//!   versions from their banners.

#![deny(clippy::unwrap_used)]

pub mod tools;
