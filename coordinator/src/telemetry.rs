//! Tracing set-up: text or JSON lines on stderr, filtered by `RUST_LOG` or the config.

use hlsfarm_common::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber for this process.
pub fn init_tracing(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests that run the CLI in-process) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
