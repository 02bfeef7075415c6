//! Compiles the kubelet's device plugin API (`proto/deviceplugin/v1beta1/api.proto`) and pod
//! resources API (`proto/podresources/v1/api.proto`) into Rust with protox, a protobuf
//! compiler in Rust, so building needs no `protoc`.

use std::error::Error;

const PROTOS: [&str; 2] = [
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/podresources/v1/api.proto",
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
