//! Compiles the .proto files with protox (pure Rust; no protoc binary) and
//! generates prost messages and tonic services, with `bytes` fields as `Bytes`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/streambroker/v1/broker.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
