//! What a trial keeps: the essential files of its project, the tarball, their size, and a
//! failure caused by a full disk named as such.

use std::path::Path;

use hlsfarm_common::failure::FailureClass;
use hlsfarm_common::results::TrialFailure;
use hlsfarm_common::settings::Backend;

use crate::driver::{self};

use super::{PROJECT_NAME, hls_log_name};

/// The files kept from a project folder: (path in the project, name in the kept folder).
pub(super) fn keep_list(backend: Backend) -> Vec<(String, String)> {
    let top = PROJECT_NAME;
    let log = hls_log_name(backend);
    let mut list: Vec<(String, String)> = [
        "project.tcl",
        "vivado_synth.rpt",
        "vivado_synth.tcl",
        "vivado.jou",
        "vivado.log",
        "hls4ml_config.yml",
    ]
    .iter()
    .map(|f| ((*f).to_owned(), (*f).to_owned()))
    .collect();
    list.push((format!("{log}.all"), log.to_owned()));
    for report in [
        format!("{top}_prj/solution1/syn/report/{top}_csynth.rpt"),
        format!("{top}_prj/solution1/syn/report/{top}_csynth.xml"),
        format!("{top}_prj/solution1/sim/report/{top}_cosim.rpt"),
    ] {
        let name = report.rsplit('/').next().unwrap_or_default().to_owned();
        list.push((report, name));
    }
    list
}

/// Below this much free space on the scratch disk, a failure is blamed on the disk.
pub(super) const DISK_FULL_BYTES: u64 = 16 << 20;

/// A failure on a full scratch disk is the host's, not the trial's: it becomes
/// `infrastructure` (retried, elsewhere if this host stays full), whatever the tool made of
/// its `No space left on device`.
pub(super) fn disk_full(failure: &mut TrialFailure, scratch: &Path) {
    if !matches!(
        failure.class,
        FailureClass::BadInput | FailureClass::ToolError | FailureClass::Oom
    ) {
        return;
    }
    let dir = scratch.ancestors().find(|d| d.exists()).unwrap_or(scratch);
    let free = crate::host::free_disk_bytes(dir).unwrap_or(u64::MAX);
    let says_so = failure.reason.contains("No space left on device")
        || failure.log_tail.contains("No space left on device");
    if free >= DISK_FULL_BYTES && !says_so {
        return;
    }
    failure.reason = format!(
        "the scratch disk is full ({} MiB free at {}): {}",
        free / (1 << 20),
        dir.display(),
        failure.reason
    );
    failure.class = FailureClass::Infrastructure;
    failure.suggestion = Some(
        "free space on the worker's scratch disk (worker.scratch); the trial is retried".into(),
    );
}

/// True for a regular file, not through a symbolic link: a link in a project (to
/// `/etc/shadow`, say) must not carry another file's bytes into the kept files and tarball.
pub(super) fn is_regular_file(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            tracing::warn!(path = %path.display(), "not kept: a symbolic link");
            false
        }
        Ok(m) => m.is_file(),
        Err(_) => false,
    }
}

/// Copies the essential files into `output_dir` and returns their names (sorted).
pub(super) fn keep_files(
    project: &Path,
    work_dir: &Path,
    backend: Backend,
    output_dir: &Path,
) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(output_dir)?;
    let mut kept = Vec::new();
    for (from, to) in keep_list(backend) {
        let source = project.join(&from);
        if is_regular_file(&source) {
            std::fs::copy(&source, output_dir.join(&to))?;
            kept.push(to);
        }
    }
    let driver_log = work_dir.join(driver::LOG_FILE);
    if is_regular_file(&driver_log) {
        std::fs::copy(&driver_log, output_dir.join(driver::LOG_FILE))?;
        kept.push(driver::LOG_FILE.to_owned());
    }
    kept.sort();
    Ok(kept)
}

/// Writes `tarball` holding `output_dir`'s files under the folder's name.
pub(super) fn write_tarball(
    output_dir: &Path,
    files: &[String],
    tarball: &Path,
) -> std::io::Result<()> {
    let folder = output_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "trial".to_owned());
    let tmp = tarball.with_extension("tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::default(),
    ));
    for name in files {
        builder.append_path_with_name(output_dir.join(name), format!("{folder}/{name}"))?;
    }
    builder.into_inner()?.finish()?;
    std::fs::rename(tmp, tarball)
}

pub(super) fn dir_bytes(dir: &Path, files: &[String]) -> u64 {
    files
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
