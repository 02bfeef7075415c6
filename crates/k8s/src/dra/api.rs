//! The kubelet's gRPC APIs a DRA driver serves, generated at build time from `proto/`: the
//! DRA plugin service in its v1 and v1beta1 versions, and plugin registration.

/// `k8s.io.kubelet.pkg.apis.dra.v1`: what kubelets of Kubernetes 1.34 and later call.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1");
}

/// `k8s.io.kubelet.pkg.apis.dra.v1beta1`: what kubelets of 1.32 and 1.33 call.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1beta1 {
    tonic::include_proto!("k8s.io.kubelet.pkg.apis.dra.v1beta1");
}

/// `pluginregistration`: how the kubelet learns what a plugin is and where it listens.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

/// The plugin type a DRA driver registers as.
pub const PLUGIN_TYPE: &str = "DRAPlugin";
/// The name of the v1 service in the registration's supported versions.
pub const V1_SERVICE: &str = "v1.DRAPlugin";
/// The name of the v1beta1 service in the registration's supported versions.
pub const V1BETA1_SERVICE: &str = "v1beta1.DRAPlugin";
