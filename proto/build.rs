//! Compiles the .proto files with protox (pure Rust; no protoc binary) and
//! generates prost messages and tonic services, with `bytes` fields as `Bytes`
//! and the codec of `src/codec.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/streambroker/v1/broker.proto", "proto/streambroker/v1/access.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    // The services decode through `crate::codec::BrokerCodec`: prost's codec
    // with produce-request decode errors reported as INVALID_ARGUMENT.
    tonic_prost_build::configure().bytes(".").codec_path("crate::codec::BrokerCodec").compile_fds(fds)?;
    Ok(())
}
