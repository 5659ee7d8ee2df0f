//! `broker`: the stream-broker daemon as a library. `main.rs` only parses
//! flags, loads configuration, installs logging, binds and calls
//! [`server::run`]; tests start the same server in-process through
//! [`testing::TestBroker`].
//!
//! Map of the data path: an edge ([`grpc`], or the Kinesis-compatible
//! HTTP API in [`kinesis`]) decodes a request into a
//! [`service`] call, where a produce is validated and routed (MD5 hash
//! ranges, [`routing`]), admitted by the shard's token buckets
//! ([`quota`]), queued to the shard's single writer ([`shard`], run on the
//! [`writer_pool`]) which appends and group-commits with one fdatasync,
//! then acknowledged. Readers
//! read committed records through the log's sparse index and are woken by a
//! watch channel. Streams and their lifecycle live in [`catalog`], their
//! definitions in sled behind [`metadata`]; a stream's shard tree and the
//! crash-safe protocol of splits and merges in [`layout`].

pub mod allocator;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod console;
pub mod disk;
pub mod durable;
pub mod error;
pub mod group;
pub mod grpc;
pub mod http;
pub mod iterator;
pub mod kinesis;
pub mod layers;
pub mod layout;
pub mod listener;
pub mod metadata;
pub mod quota;
pub mod routing;
pub mod server;
pub mod service;
pub mod shard;
pub mod telemetry;
pub mod testing;
pub mod wire;
pub mod writer_pool;

pub use error::{BrokerError, Result};
