//! The `gpuslice` command, tested by running the real binary: `run` (exit codes, signals,
//! the environment it gives the command, tenant creation, joining and cleanup), `status`
//! (JSON and table, damaged files), and both over the real shim and the simulated GPU (the
//! `demo` is in the `timing` binary); `device-plugin` against a fake kubelet (`plugin`), its metrics naming the
//! pods that kubelet lists (`plugin_metrics`) and the Grafana dashboard's queries checked
//! against them (`dashboard`), its CDI specs in a real container runtime (`podman`), its
//! Kubernetes manifests rendered and decoded with the API types (`kustomize`), and the
//! image built from `deploy/Dockerfile` run as those manifests run it (`image`).

mod util;

mod cdi;
mod dashboard;
mod doctor;
mod dra;
mod dra_deploy;
mod end_to_end;
mod image;
mod kustomize;
mod logs;
mod metrics;
mod nvidia_config;
mod plugin;
mod plugin_metrics;
mod podman;
mod run;
mod run_fails_closed;
mod status;
mod tenant_cmd;
mod tenants;
mod top;
