//! The hlsfarm coordinator, and the `hlsfarm` command that users meet.
//!
//! - [`bench`]: `hlsfarm bench`, figures (submit time, Redis cost, cache) on a Redis and coordinator of its own.
//! - [`cli`]: the command line: global flags, config loading, and the subcommands that are
//!   only a client (`check`, `submit`, `status`, `cancel`, `retry`, `watch`, `results`,
//!   `report`).
//! - [`folder_watch`]: new models appearing in a folder, for `run --follow` and
//!   `submit --follow`.
//! - [`onehost`]: `hlsfarm run`, a sweep on this host through the embedded queue.
//! - [`pareto`]: the sweep's Pareto plot (SVG and PNG).
//! - [`progress`]: bars on a terminal, lines elsewhere, for `hlsfarm run`.
//! - [`ranking`]: the sweep's trials ranked by accuracy and resources (`ranking.csv`).
//! - [`server`]: `hlsfarm serve`, the cluster coordinator (gRPC on Redis and the store).
//! - [`telemetry`]: tracing set-up from the log config.
//! - [`view`]: the cluster as JSON, shared by `status --json`, `watch` and the web page.

#![deny(clippy::unwrap_used)]

pub mod bench;
pub mod cli;
pub mod folder_watch;
pub mod onehost;
pub mod pareto;
pub mod progress;
pub mod ranking;
pub mod server;
pub mod telemetry;
pub mod view;
