//! The hlsfarm gRPC API (`hlsfarm/v1/*.proto`): generated prost messages and tonic services,
//! and the conversions between wire and domain types.
//!
//! Conversions from the wire reject what the domain cannot hold (an unspecified enum, a
//! missing message) with a [`WireError`] naming the field. [`client`] is the one way to
//! connect to the coordinator (channel, TLS, bearer token).

#![deny(clippy::unwrap_used)]

/// Generated code for package `hlsfarm.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("hlsfarm.v1");
}

pub mod client;
mod convert;

pub use convert::{FromWire, WireError, stages_from_wire};

/// The metadata key under which a coordinator's error names its kind (`lease-lost`,
/// `not-registered`, `precondition`, `corrupt`, …), so a client tells apart errors that
/// share a gRPC code without reading their prose.
pub const ERROR_KIND: &str = "hlsfarm-error";

/// The kind a coordinator's error names, when it names one (an older coordinator does not).
pub fn error_kind(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(ERROR_KIND)
        .and_then(|v| v.to_str().ok())
}
