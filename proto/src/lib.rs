//! The stream-broker gRPC contract: messages and services generated from
//! `proto/streambroker/v1/*.proto`. Wire types stay here; the broker and the
//! client convert them to domain types at their edges.

pub mod codec;
pub mod wire;

/// Version 1 of the API.
pub mod v1 {
    #![allow(missing_docs, clippy::all, missing_debug_implementations)]
    tonic::include_proto!("streambroker.v1");
}
