//! Finding the Xilinx tools and their versions.
//!
//! A tool is looked up on `PATH` (or at a configured path) and asked for its version; the
//! version is read from the banner every AMD tool prints (`... v2023.2 (64-bit)`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// The commands hls4ml's build flows run, in the order a Vitis backend prefers them.
pub const TOOL_NAMES: &[&str] = &["vitis-run", "vitis_hls", "vivado_hls", "vivado"];

/// A tool found on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetectedTool {
    /// Its command name.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// The version its banner names (`2023.2`).
    pub version: String,
}

/// Why a tool could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tool did not start.
    #[error("cannot run {path}: {source}")]
    Spawn {
        /// The tool.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// It ran but printed no version.
    #[error("{path} printed no version banner (expected a line like `... v2023.2 (64-bit)`)")]
    NoVersion {
        /// The tool.
        path: PathBuf,
    },
    /// It did not answer in time (a licence server that hangs, say).
    #[error("{path} did not print its version within {seconds} s")]
    Timeout {
        /// The tool.
        path: PathBuf,
        /// The limit.
        seconds: u64,
    },
}

/// Reads an AMD version (`2023.2`) from banner text: the first `v` followed by a year, a dot
/// and a digit.
pub fn parse_banner_version(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len()).find_map(|i| {
        if bytes[i] != b'v' || (i > 0 && bytes[i - 1].is_ascii_alphanumeric()) {
            return None;
        }
        let rest = &text[i + 1..];
        let year: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if year.len() != 4 || !rest[4..].starts_with('.') {
            return None;
        }
        let minor: String = rest[5..].chars().take_while(char::is_ascii_digit).collect();
        (!minor.is_empty()).then(|| format!("{year}.{minor}"))
    })
}

/// Asks the tool at `path` for its version (`-version`), waiting at most `timeout`.
pub async fn tool_version(path: &Path, timeout: Duration) -> Result<String, Error> {
    let mut command = tokio::process::Command::new(path);
    command.arg("-version").kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| Error::Timeout {
            path: path.to_owned(),
            seconds: timeout.as_secs(),
        })?
        .map_err(|source| Error::Spawn {
            path: path.to_owned(),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_banner_version(&text).ok_or_else(|| Error::NoVersion {
        path: path.to_owned(),
    })
}

/// Finds every tool of [`TOOL_NAMES`] on the given search path (`PATH`'s value) and reads its
/// version. Tools that are absent are left out; tools that fail to answer are reported. The
/// tools are asked at once, not one after another: a real Vivado takes seconds to print its
/// banner, and a host has up to four of them.
pub async fn detect_tools(
    search_path: &std::ffi::OsStr,
    timeout: Duration,
) -> (Vec<DetectedTool>, Vec<Error>) {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let asked: Vec<_> = TOOL_NAMES
        .iter()
        .filter_map(|name| {
            let path = which::which_in(name, Some(search_path), &cwd).ok()?;
            let asking = path.clone();
            let version = tokio::spawn(async move { tool_version(&asking, timeout).await });
            Some((*name, path, version))
        })
        .collect();
    let mut found = Vec::new();
    let mut failed = Vec::new();
    // In TOOL_NAMES' order, whichever answers first.
    for (name, path, version) in asked {
        match version.await {
            Ok(Ok(version)) => found.push(DetectedTool {
                name: name.to_owned(),
                path,
                version,
            }),
            Ok(Err(err)) => failed.push(err),
            Err(joined) => failed.push(Error::Spawn {
                path,
                source: std::io::Error::other(joined),
            }),
        }
    }
    (found, failed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn versions_come_from_real_banners() {
        let banners = [
            (
                "****** Vitis HLS - High-Level Synthesis from C, C++ and OpenCL v2023.2 (64-bit)\n  **** SW Build 4023990 on Oct 11 2023",
                "2023.2",
            ),
            (
                "****** Vivado(TM) HLS - High-Level Synthesis from C, C++ and SystemC v2019.2 (64-bit)",
                "2019.2",
            ),
            (
                "Vivado v2020.1 (64-bit)\nSW Build 2902540 on Wed May 27 19:54:35 MDT 2020",
                "2020.1",
            ),
            ("****** vitis-run v2024.2 (64-bit)", "2024.2"),
        ];
        for (banner, version) in banners {
            assert_eq!(
                parse_banner_version(banner).as_deref(),
                Some(version),
                "{banner}"
            );
        }
        assert_eq!(parse_banner_version("dev v1.2 no year"), None);
    }
}
