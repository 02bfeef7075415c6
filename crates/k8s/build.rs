//! Compiles the kubelet's DRA plugin API (`proto/dra/v1`, `proto/dra/v1beta1`) and plugin
//! registration API (`proto/pluginregistration/v1`) into Rust with protox, a protobuf
//! compiler in Rust, so building needs no `protoc`.

use std::error::Error;

const PROTOS: [&str; 3] = [
    "proto/dra/v1/api.proto",
    "proto/dra/v1beta1/api.proto",
    "proto/pluginregistration/v1/api.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo::rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
