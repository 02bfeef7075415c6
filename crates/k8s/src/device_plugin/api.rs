//! The kubelet's device plugin API, v1beta1, generated at build time from
//! `proto/deviceplugin/v1beta1/api.proto`.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

tonic::include_proto!("v1beta1");
