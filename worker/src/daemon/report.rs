//! Reports to the coordinator that outlive a coordinator's restart: completions and
//! hand-backs, retried while it is unreachable, given up when the lease is gone.

use std::sync::Arc;
use std::time::Duration;

use hlsfarm_proto::v1;
use tonic::{Code, Status};

use super::Shared;

/// Reports a finished trial, retrying while the coordinator is unreachable. Returns true
/// when the coordinator accepted it.
pub(super) async fn complete(
    shared: &Arc<Shared>,
    token: v1::LeaseToken,
    result: Option<v1::TrialResult>,
    failure: Option<v1::Failure>,
    cancelled: bool,
) -> bool {
    let request = v1::CompleteRequest {
        worker_id: shared.id.clone(),
        token: Some(token),
        result,
        failure,
        cancelled,
    };
    let mut wait = Duration::from_millis(100);
    for _ in 0..12 {
        let mut client = shared.client.clone();
        let answer = tokio::time::timeout(CALL_TIMEOUT, client.complete(request.clone()))
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("no answer within 30 s")));
        match answer {
            Ok(_) => return true,
            Err(s) if s.code() == Code::FailedPrecondition || s.code() == Code::NotFound => {
                tracing::warn!(error = %s.message(), "completion refused: the lease was lost; result discarded");
                return false;
            }
            Err(s) if s.code() == Code::InvalidArgument || s.code() == Code::DataLoss => {
                tracing::error!(error = %s.message(), "completion rejected");
                return false;
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "cannot report the trial; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    false
}

/// How long a completion or hand-back waits for its answer before trying again.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn hand_back(shared: &Arc<Shared>, token: v1::LeaseToken, reason: &str) {
    let mut client = shared.client.clone();
    let call = client.hand_back(v1::HandBackRequest {
        worker_id: shared.id.clone(),
        tokens: vec![token],
        reason: reason.to_owned(),
    });
    if let Err(s) = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| Err(Status::unavailable("no answer within 30 s")))
    {
        tracing::warn!(error = %s.message(), "hand-back failed; the lease expires instead");
    }
}
