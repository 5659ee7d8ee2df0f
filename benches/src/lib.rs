//! Shared helpers for the stream-broker benchmarks.
