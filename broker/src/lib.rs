//! The stream-broker daemon. It will hold the stream catalogue, routing, quotas, group commit, retention, consumer groups and the gRPC and HTTP edges, on top of `shardlog` (issue: broker daemon).
