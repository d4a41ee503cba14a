//! Facts about the host: free disk, memory, its name (the worker reports them; a trial checks
//! its disk; the one-host run sizes trials by memory).

use std::path::Path;

/// Free bytes on the file system holding `dir`.
pub fn free_disk_bytes(dir: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(s.blocks_available() * s.fragment_size())
}

/// A `/proc/meminfo` figure (e.g. `MemTotal:`) in MiB.
pub fn meminfo_mib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

/// The host's name (`worker` when it has none).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "worker".to_owned())
}
