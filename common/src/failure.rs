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
