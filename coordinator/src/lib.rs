//! The hlsfarm coordinator, and the `hlsfarm` command that users meet.
//!
//! - [`bench`]: `hlsfarm bench`, figures (submit time, Redis cost, cache) on a Redis and coordinator of its own.
//! - [`cli`]: the command line: global flags, config loading, subcommands.
//! - [`check_cmd`]: `hlsfarm check`, preflight without synthesis.
//! - [`client`]: `hlsfarm submit`, `status`, `cancel`, `retry`: the operator side of the API.
//! - [`onehost`]: `hlsfarm run`, a sweep on this host through the embedded queue.
//! - [`pareto`]: the sweep's Pareto plot (SVG and PNG).
//! - [`progress`]: bars on a terminal, lines elsewhere, for `hlsfarm run`.
//! - [`report_cmd`]: `hlsfarm report`, the figures of a project folder or report file.
//! - [`results_cmd`]: `hlsfarm results`, a finished sweep's trials as a table, JSON or CSV.
//! - [`sweep_args`]: the sweep a command's flags (or sweep file) describe, shared by `run`,
//!   `check` and `submit`.
//! - [`server`]: `hlsfarm serve`, the cluster coordinator (gRPC on Redis and the store).
//! - [`telemetry`]: tracing set-up from the log config.
//! - [`watch`]: `hlsfarm watch`, the cluster live in the terminal.
//! - [`view`]: the cluster as JSON, shared by `status --json`, `watch` and the web page.

#![deny(clippy::unwrap_used)]

pub mod bench;
pub mod check_cmd;
pub mod cli;
pub mod client;
pub mod folder_watch;
pub mod onehost;
pub mod pareto;
pub mod progress;
pub mod ranking;
pub mod report_cmd;
pub mod results_cmd;
pub mod server;
mod submit_follow;
pub mod sweep_args;
pub mod telemetry;
pub mod view;
pub mod watch;
