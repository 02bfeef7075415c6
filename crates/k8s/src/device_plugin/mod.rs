//! The kubelet device plugin (`gpuslice device-plugin`) that hands out GPU slices.
//!
//! Each GPU is cut into N slices (`slicesPerGpu`), advertised as `gpuslice.dev/gpu` (or as
//! several resources that split each GPU's slices between them). A container that asks for
//! k slices gets a tenant whose quota is k/N of each GPU's memory and a k/N share of its
//! time, and a CDI device that puts the shim, the ledger and the tenant into it.
//!
//! ```text
//! health (thread)  NVML -> GPUs, their health and XID errors --watch--> ListAndWatch, ...
//! xid              which XID errors make a GPU unhealthy (NVIDIA's rule and variables)
//! kubelet          per resource: socket + gRPC server + registration, again on restart
//! server           DevicePlugin: options, ListAndWatch, GetPreferredAllocation, Allocate
//! allocate         slices -> tenant + quota (ledger) + CDI spec -> CDI device names
//! tenants          the plugin's tenants: names, records, cleanup
//! podresources     the kubelet's pod resources API: which devices containers still have
//! config           the settings: flags ([`Args`]) over gpuslice's or NVIDIA's config file
//! ```
//!
//! Nothing here exits on bad input from outside: a config file that does not parse is
//! reported and read again until it does (the previous configuration keeps running if there
//! was one), NVML that does not answer is retried, the kubelet is waited for, and a bad
//! request gets a gRPC error that says what was wrong.
//!
//! The process around these (logging, signals, the metrics server and its readiness, the
//! loop that reloads the config file) is the command's: `gpuslice device-plugin` in
//! `crates/cli/src/plugin/`.

pub mod allocate;
pub mod api;
pub mod config;
pub mod health;
pub mod kubelet;
pub mod nvidia_config;
pub mod nvidia_flags;
pub mod podresources;
pub mod server;
pub mod slices;
pub mod tenants;
pub mod xid;

pub use config::Args;
