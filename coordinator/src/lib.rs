//! The hlsfarm coordinator, and the `hlsfarm` command that users meet.
//!
//! - [`cli`]: the command line: global flags, config loading, subcommands.
//! - [`telemetry`]: tracing set-up from the log config.

#![deny(clippy::unwrap_used)]

pub mod cli;
pub mod telemetry;
