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
