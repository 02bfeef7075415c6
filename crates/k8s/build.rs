//! Compiles the kubelet's APIs into Rust with protox, a protobuf compiler in Rust, so building
//! needs no `protoc`: the device plugin API (`proto/deviceplugin/v1beta1`), the pod resources
//! API (`proto/podresources/v1`), the DRA plugin API (`proto/dra/v1`, `proto/dra/v1beta1`) and
//! the plugin registration API (`proto/pluginregistration/v1`).

use std::error::Error;

const PROTOS: [&str; 5] = [
    "proto/deviceplugin/v1beta1/api.proto",
    "proto/podresources/v1/api.proto",
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
