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

/// The tools are asked at once: each of these answers only once all four have been asked, so
/// asked one after another the first would wait out its limit.
#[tokio::test]
async fn the_tools_are_asked_at_once_and_reported_in_order() {
    let dir = tempfile::tempdir().unwrap();
    for name in hlsfarm_worker::tools::TOOL_NAMES {
        let script = dir.path().join(name);
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ntouch '{d}/asked-{name}'\nwhile [ $(ls '{d}' | grep -c '^asked-') -lt 4 ]; do sleep 0.05; done\necho '****** {name} v2023.2 (64-bit)'\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (found, failed) = detect_tools(dir.path().as_os_str(), Duration::from_secs(20)).await;
    assert!(failed.is_empty(), "{failed:?}");
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, hlsfarm_worker::tools::TOOL_NAMES);
}
