//! The stream-broker gRPC contract. It will hold the `.proto` files and the code `protox` + `tonic-prost-build` generate from them (issue: broker daemon).
