//! Bearer tokens, one per role, checked on every RPC (DESIGN §6). Tokens are compared by
//! their sha256, so the comparison's time says nothing about the token.

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Who may call a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Operators: submit, status, watch, results, cancel, retry, drain.
    Operator,
    /// Workers: register, lease, heartbeat, complete, hand back.
    Worker,
}

/// The two tokens, hashed.
#[derive(Clone)]
pub struct Tokens {
    operator: [u8; 32],
    worker: [u8; 32],
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Tokens from the config values.
    pub fn new(operator: &str, worker: &str) -> Tokens {
        Tokens {
            operator: digest(operator),
            worker: digest(worker),
        }
    }

    /// Which role a presented token has, if any.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let presented = digest(token);
        if presented == self.operator {
            Some(Role::Operator)
        } else if presented == self.worker {
            Some(Role::Worker)
        } else {
            None
        }
    }

    /// An interceptor letting through only calls that carry `role`'s token.
    pub fn interceptor(
        &self,
        role: Role,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + use<> {
        let tokens = self.clone();
        move |request: Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let Some(token) = header.strip_prefix("Bearer ") else {
                return Err(Status::unauthenticated(
                    "no bearer token: pass --token (or set HLSFARM_TOKEN)",
                ));
            };
            match tokens.role_of(token.trim()) {
                Some(r) if r == role => Ok(request),
                Some(Role::Worker) => Err(Status::permission_denied(
                    "a worker token may only register, lease, heartbeat, complete and hand back",
                )),
                Some(Role::Operator) => Err(Status::permission_denied(
                    "an operator token cannot act as a worker: give workers the worker token",
                )),
                None => Err(Status::unauthenticated(
                    "the bearer token is not valid for this coordinator",
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn each_role_reaches_only_its_service() {
        let tokens = Tokens::new("op", "wk");
        let mut operator = tokens.interceptor(Role::Operator);
        let mut worker = tokens.interceptor(Role::Worker);
        assert!(operator(call(Some("op"))).is_ok());
        assert!(worker(call(Some("wk"))).is_ok());
        assert_eq!(
            operator(call(Some("wk"))).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            worker(call(Some("op"))).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            operator(call(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            worker(call(Some("nope"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
