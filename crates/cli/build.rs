//! Compiles the kubelet's device plugin API (`proto/deviceplugin/v1beta1/api.proto`) into Rust
//! with protox, a protobuf compiler in Rust, so building needs no `protoc`.

use std::error::Error;

const PROTO: &str = "proto/deviceplugin/v1beta1/api.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo::rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
