//! The hlsfarm coordinator, and the `hlsfarm` command that users meet.
//!
//! - [`cli`]: the command line: global flags, config loading, subcommands.
//! - [`onehost`]: `hlsfarm run`, a sweep on this host through the embedded queue.
//! - [`report_cmd`]: `hlsfarm report`, the figures of a project folder or report file.
//! - [`telemetry`]: tracing set-up from the log config.

#![deny(clippy::unwrap_used)]

pub mod cli;
pub mod onehost;
pub mod report_cmd;
pub mod telemetry;
