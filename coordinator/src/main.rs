//! The `hlsfarm` binary: parse the command line, run it, turn the outcome into an exit code.

use clap::Parser;
use hlsfarm_coordinator::cli::{Cli, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("hlsfarm: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
