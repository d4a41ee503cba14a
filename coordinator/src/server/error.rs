//! What a coordinator operation fails with, whatever carried the request (DESIGN §2): the
//! core returns [`Error`]; gRPC and HTTP each map it in one place ([`Error::status`],
//! [`Error::http_status`]), so a client can tell what to retry.

use hlsfarm_common::job::TransitionError;
use hlsfarm_common::queue::Error as QueueError;

use hlsfarm_proto::ERROR_KIND as KIND_KEY;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// What the request names does not exist (a sweep, a trial, a file).
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong; the message names the field and the fix.
    #[error("{0}")]
    Invalid(String),
    /// The state forbids it now (a model not uploaded, a closed sweep, no worker to name a
    /// toolchain, results not uploaded): the message says what to do first.
    #[error("{0}")]
    Precondition(String),
    /// The caller's lease on the trial is gone (another attempt holds it, or it ended):
    /// discard this attempt's work.
    #[error("lease no longer held ({0}): discard this trial's work")]
    LeaseLost(String),
    /// The worker is not registered, or was forgotten (a flushed or failed-over Redis, an
    /// hour of silence): register again.
    #[error(
        "worker `{0}` is not registered (or was forgotten after an hour of silence): register again"
    )]
    NotRegistered(String),
    /// No credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// The credentials do not allow it.
    #[error("{0}")]
    Denied(String),
    /// Redis or the store did not answer: nothing was changed, or the change is safe to
    /// repeat (every operation is idempotent under its fence); retry.
    #[error("coordinator backend: {0}")]
    Unavailable(String),
    /// Stored data does not read (corrupt, or written by a newer version): retrying will
    /// not help.
    #[error("stored data unreadable: {0}")]
    Corrupt(String),
    /// A fault of the coordinator itself (a figure it could not draw, an answer from its own
    /// scripts it did not expect): a bug to report, not the request's fault nor an outage.
    #[error("coordinator fault (please report it): {0}")]
    Internal(String),
}

impl Error {
    /// A wrong request.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::Invalid(message.into())
    }

    /// Something named that does not exist.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::NotFound(message.into())
    }

    /// A state that forbids it now.
    pub fn precondition(message: impl Into<String>) -> Error {
        Error::Precondition(message.into())
    }

    /// A backend failure.
    pub fn backend(e: impl std::fmt::Display) -> Error {
        Error::Unavailable(e.to_string())
    }

    /// A fault of the coordinator itself.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }

    /// Stored data that does not parse.
    pub fn corrupt(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
        Error::Corrupt(format!("{what}: {e}"))
    }

    /// The kind, as the status's metadata carries it ([`hlsfarm_proto::ERROR_KIND`]): a
    /// worker tells a lost lease (discard the work) from being forgotten (register again).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not-found",
            Error::Invalid(_) => "invalid",
            Error::Precondition(_) => "precondition",
            Error::LeaseLost(_) => "lease-lost",
            Error::NotRegistered(_) => "not-registered",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::Denied(_) => "denied",
            Error::Unavailable(_) => "unavailable",
            Error::Corrupt(_) => "corrupt",
            Error::Internal(_) => "internal",
        }
    }

    /// The gRPC status: the one map from errors to codes.
    pub fn status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Error::NotFound(_) => Code::NotFound,
            Error::Invalid(_) => Code::InvalidArgument,
            Error::Precondition(_) | Error::LeaseLost(_) | Error::NotRegistered(_) => {
                Code::FailedPrecondition
            }
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Denied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Corrupt(_) => Code::DataLoss,
            Error::Internal(_) => Code::Internal,
        };
        let mut status = tonic::Status::new(code, self.to_string());
        if let Ok(kind) = self.kind().parse() {
            status.metadata_mut().insert(KIND_KEY, kind);
        }
        status
    }

    /// The HTTP status: the one map from errors to HTTP.
    pub fn http_status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Precondition(_) | Error::LeaseLost(_) | Error::NotRegistered(_) => {
                StatusCode::CONFLICT
            }
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Denied(_) => StatusCode::FORBIDDEN,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Corrupt(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        e.status()
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Error {
        match e {
            QueueError::Transition(t @ TransitionError::StaleFence { .. }) => {
                Error::LeaseLost(t.to_string())
            }
            QueueError::Transition(t @ TransitionError::Illegal { .. }) => Error::Precondition(
                format!("{t}: the trial is not where this call expects it (ended already?)"),
            ),
            QueueError::UnknownTrial(k) => Error::NotFound(format!("unknown trial {k}")),
            QueueError::UnknownSweep(s) => Error::NotFound(format!("unknown sweep {s}")),
            QueueError::Backend(b) => Error::backend(b),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_error_has_one_code_and_a_worker_can_tell_the_preconditions_apart() {
        let lost = Error::LeaseLost("stale".into()).status();
        let forgotten = Error::NotRegistered("w1".into()).status();
        assert_eq!(lost.code(), tonic::Code::FailedPrecondition);
        assert_eq!(forgotten.code(), tonic::Code::FailedPrecondition);
        assert_eq!(lost.metadata().get(KIND_KEY).unwrap(), "lease-lost");
        assert_eq!(
            forgotten.metadata().get(KIND_KEY).unwrap(),
            "not-registered"
        );
        assert!(forgotten.message().contains("register again"));
        // Corrupt stored data is not retried as an outage would be.
        assert_eq!(
            Error::corrupt("plan of sweep s", "expected value")
                .status()
                .code(),
            tonic::Code::DataLoss
        );
        assert_eq!(
            Error::backend("connection refused").status().code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            Error::Invalid("x".into()).http_status(),
            axum::http::StatusCode::BAD_REQUEST
        );
        // A fault of the coordinator's own is neither stored data going bad nor an outage.
        let fault = Error::internal("cannot draw the plot: no font").status();
        assert_eq!(fault.code(), tonic::Code::Internal);
        assert_eq!(fault.metadata().get(KIND_KEY).unwrap(), "internal");
        assert!(fault.message().contains("please report it"));
    }
}
