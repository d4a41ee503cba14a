//! Failure classes (DESIGN §3): why a trial failed, which decides whether it is retried.

use serde::{Deserialize, Serialize};

string_enum!(
    /// Why a trial failed.
    FailureClass, "failure class", {
        /// Corrupt or unsupported model, invalid settings: not retried.
        BadInput => "bad_input",
        /// The tool ran and failed; the log digest says why. Not retried.
        ToolError => "tool_error",
        /// A stage ran past its time limit.
        Timeout => "timeout",
        /// Out of memory (the OOM killer, `std::bad_alloc`).
        Oom => "oom",
        /// No licence seat could be checked out.
        Licence => "licence",
        /// Disk, network or store trouble.
        Infrastructure => "infrastructure",
    }
);

impl FailureClass {
    /// True when running the trial again may succeed, so it is retried (within max attempts).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureClass::Timeout
                | FailureClass::Oom
                | FailureClass::Licence
                | FailureClass::Infrastructure
        )
    }
}

/// A classified failure with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The class.
    pub class: FailureClass,
    /// One line saying what went wrong.
    pub reason: String,
    /// A fix, where one is known.
    pub suggestion: Option<String>,
}

/// The memory to reserve when retrying a trial whose stage ran out of memory at `peak_mib`:
/// twice the peak (at least 1 GiB more), within `largest_mib`, the most any worker offers.
/// `None` when that is not clearly more than the peak (10 % and 256 MiB): no worker can give
/// the retry room to finish, so retrying would fail the same way.
pub fn oom_reservation(peak_mib: u64, largest_mib: u64) -> Option<u64> {
    let wanted = peak_mib.saturating_mul(2).max(peak_mib + 1024);
    let reserve = wanted.min(largest_mib);
    (reserve >= peak_mib + (peak_mib / 10).max(256)).then_some(reserve)
}

/// How a stage that ran out of memory is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomRetry {
    /// As any retryable failure: no peak was measured.
    Again,
    /// With this much memory reserved (MiB).
    Reserve(u64),
    /// Not at all: nothing offers clearly more than the peak. The reason's tail and the fix.
    GiveUp {
        /// Appended to the failure's reason.
        note: String,
        /// The failure's new suggestion.
        fix: String,
    },
}

/// How to retry a stage that ran out of memory at `peak_mib` where the most on offer is
/// `largest_mib` ([`oom_reservation`]); `offers` says what offers it (e.g. "this host has
/// 24000 MiB") and `get_more` where more would come from, for the reason and the fix when
/// retrying cannot help.
pub fn oom_retry(
    peak_mib: Option<u64>,
    largest_mib: u64,
    offers: &str,
    get_more: &str,
) -> OomRetry {
    let Some(peak) = peak_mib.filter(|&p| p > 0) else {
        return OomRetry::Again;
    };
    match oom_reservation(peak, largest_mib) {
        Some(reserve) => OomRetry::Reserve(reserve),
        None => OomRetry::GiveUp {
            note: format!("; not retried: it peaked at {peak} MiB and {offers}"),
            fix: format!(
                "{get_more}, or shrink the design: a larger reuse_factor, io_stream, or a Resource strategy"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oom_retry_reserves_twice_the_peak_within_the_largest_worker() {
        assert_eq!(oom_reservation(6000, 64_000), Some(12_000));
        assert_eq!(
            oom_reservation(300, 64_000),
            Some(1324),
            "at least 1 GiB more"
        );
        assert_eq!(
            oom_reservation(6000, 8000),
            Some(8000),
            "capped by the largest worker"
        );
        assert_eq!(
            oom_reservation(6000, 6200),
            None,
            "no worker has clearly more"
        );
        assert_eq!(oom_reservation(30_000, 16_000), None);
    }
}
