//! The stream-broker client library. It will hold the producer, consumer and admin APIs and the `streamctl` CLI (issue: consumer groups and client).
