//! The worker finds the tools on PATH and reads their versions from their banners; here the
//! tools are the stand-in's.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use hlsfarm_tests::path_with_standin;
use hlsfarm_worker::tools::detect_tools;

#[tokio::test]
async fn detects_every_tool_with_its_version() {
    let (found, failed) = detect_tools(&path_with_standin(), Duration::from_secs(20)).await;
    assert!(failed.is_empty(), "{failed:?}");
    let names: Vec<(&str, &str)> = found
        .iter()
        .map(|t| (t.name.as_str(), t.version.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("vitis-run", "2024.2"),
            ("vitis_hls", "2023.2"),
            ("vivado_hls", "2019.2"),
            ("vivado", "2023.2")
        ]
    );
}

#[tokio::test]
async fn absent_tools_are_left_out() {
    let (found, failed) =
        detect_tools(std::ffi::OsStr::new("/nonexistent"), Duration::from_secs(5)).await;
    assert!(found.is_empty() && failed.is_empty());
}
