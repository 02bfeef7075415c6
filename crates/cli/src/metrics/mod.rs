//! `gpuslice metrics`: the ledger as Prometheus metrics, served over HTTP or printed once.
//! The device plugin serves the same exposition with the pods and its slices added
//! (`plugin::scrape`).
//!
//! Every scrape reads the ledger afresh through [`crate::report::read_report`], so the numbers are
//! those `gpuslice status` would print at that moment, and a tenant whose files are damaged
//! is left out and counted in `gpuslice_ledger_errors` rather than failing the scrape. A
//! ledger that cannot be read at all leaves only `gpuslice_build_info`, the GPUs and
//! `gpuslice_ready 0` (and `/readyz` says why), so that the target stays up and the alert
//! is about what is wrong.
//!
//! ```text
//! render   what a scrape found -> the text format, labelled as DCGM labels GPUs
//! serve    /metrics, /healthz, /readyz over axum, with bounded connections
//! ```

pub mod render;
pub mod serve;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};

use crate::cli::MetricsArgs;
use crate::exit::{self, Failure, ResultExt};
use crate::locate;
use gpuslice_k8s::nvml::Nvml;
use render::{GpuInfo, Scrape};

/// Runs `gpuslice metrics`.
pub fn metrics(args: MetricsArgs) -> Result<u8, Failure> {
    let dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let hostname = node_name();
    if args.once {
        let report = crate::report::read_report_checked(&dir).usage()?;
        let gpus = nvml_gpus();
        let text = render::render(&Scrape {
            report: Some(&report),
            gpus: &gpus,
            ready: true,
            hostname: &hostname,
            ..Scrape::default()
        });
        return match io::stdout().lock().write_all(text.as_bytes()) {
            Ok(()) => Ok(exit::OK),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(exit::OK),
            Err(e) => Err(anyhow!("could not write to stdout: {e}")).failed(),
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("could not start the async runtime")
        .failed()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("could not listen on {}", args.listen))
            .usage()?;
        let address = listener
            .local_addr()
            .context("could not read the listening address")
            .failed()?;
        // On stdout, so that scripts (and the tests) listening on port 0 learn the port.
        println!(
            "gpuslice metrics: serving http://{address}/metrics (ledger {})",
            dir.display()
        );
        let source = Arc::new(LedgerSource { dir, hostname });
        serve::serve(listener, source).await;
        Ok(exit::OK)
    })
}

/// The metrics of a ledger directory, without a device plugin: no pods, no slices.
#[derive(Debug)]
struct LedgerSource {
    dir: PathBuf,
    hostname: String,
}

#[tonic::async_trait]
impl serve::Source for LedgerSource {
    async fn metrics(&self) -> String {
        let (dir, hostname) = (self.dir.clone(), self.hostname.clone());
        tokio::task::spawn_blocking(move || {
            let report = crate::report::read_report_checked(&dir).ok();
            let gpus = nvml_gpus();
            render::render(&Scrape {
                report: report.as_ref(),
                gpus: &gpus,
                ready: report.is_some(),
                hostname: &hostname,
                ..Scrape::default()
            })
        })
        .await
        .unwrap_or_default()
    }

    async fn readiness(&self) -> Result<(), String> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || ledger_readiness(&dir))
            .await
            .unwrap_or_else(|e| Err(format!("the readiness check failed: {e}")))
    }
}

/// `Ok` when the ledger at `dir` can be read; otherwise why not.
pub fn ledger_readiness(dir: &Path) -> Result<(), String> {
    crate::report::read_report(dir)
        .map(|_| ())
        .map_err(|e| format!("the ledger is not usable: {}", crate::message(&e)))
}

/// The GPUs NVML lists, for the labels; none where NVML cannot be used.
pub fn nvml_gpus() -> Vec<GpuInfo> {
    Nvml::open()
        .and_then(|nvml| nvml.gpus())
        .map(|gpus| {
            gpus.into_iter()
                .map(|g| GpuInfo {
                    index: g.index,
                    uuid: g.uuid,
                    model: g.model,
                    memory_bytes: g.memory_bytes,
                    healthy: None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The node's name, as DCGM's `Hostname` label has it: `NODE_NAME` (the DaemonSet sets it
/// from the pod's `spec.nodeName`), else the host name.
pub fn node_name() -> String {
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return name;
    }
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `buffer.len()` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}
