//! `gpuslice dra-driver`: the command-line side of the DRA driver (`gpuslice_k8s::dra`): its
//! settings and the process (logging, signals, the async runtime, the API server's client),
//! its metrics, `/healthz` and `/readyz` (`scrape`), and the log of processes outside
//! gpuslice's limits.

mod scrape;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use gpuslice_k8s::cdi::{Layout, is_device_template};
use gpuslice_k8s::dra::{self, files::ContainerFiles, gpus::NvmlSource, status::DriverStatus};
use gpuslice_ledger::Ledger;
use tokio::sync::watch;

use crate::cli::DraDriverArgs;
use crate::exit::{self, Failure, ResultExt};
use crate::shim_check::ShimError;
use scrape::DraSource;

/// How often the GPUs' processes are checked for ones outside gpuslice's limits (as the
/// device plugin's sweep does by default).
const UNENFORCED_INTERVAL: Duration = Duration::from_secs(30);

/// Runs `gpuslice dra-driver` until SIGTERM or SIGINT.
pub fn dra_driver(args: DraDriverArgs) -> Result<u8, Failure> {
    crate::logging::init(args.log_level, args.log_format);
    let node = args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            anyhow!(
                "the node's name is unknown: pass --node-name, or set NODE_NAME (in a pod, \
                 from the field spec.nodeName)"
            )
        })
        .usage()?;
    let layout = layout(&args).usage()?;
    let nvidia_cdi_device = match args.nvidia_cdi_device.as_str() {
        "" => None,
        t if is_device_template(t) => Some(t.to_string()),
        t => {
            return Err(anyhow!(
                "--nvidia-cdi-device {t:?} is not a CDI device name with {{uuid}} or {{index}}, \
                 such as nvidia.com/gpu={{uuid}}, nor \"\" to leave NVIDIA's device out"
            ))
            .usage();
        }
    };
    if !shim_in_place(&layout.shim_host).usage()? {
        tracing::warn!(
            "the shim {} does not exist here; containers will fail to start unless it exists \
             on the host",
            layout.shim_host.display()
        );
    }
    let ledger = Ledger::open(&layout.ledger_host).failed()?;
    fs::create_dir_all(&args.cdi_dir)
        .with_context(|| {
            format!(
                "could not create the CDI directory {}",
                args.cdi_dir.display()
            )
        })
        .failed()?;
    let settings = dra::Settings {
        node,
        plugins_dir: args.plugins_dir.clone(),
        registry_dir: args.registry_dir.clone(),
        health_interval: Duration::from_millis(args.health_interval_ms),
        nvidia_cdi_device,
    };
    let ledger_dir = layout.ledger_host.clone();
    let files = Arc::new(ContainerFiles::new(
        ledger.clone(),
        layout,
        args.cdi_dir.clone(),
        Box::new(|path: &Path| {
            // Asked at each claim, not only at start: the file may have been replaced since.
            shim_in_place(path).map(drop).map_err(|e| e.to_string())
        }),
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")
        .failed()?;
    runtime.block_on(async {
        let status = Arc::new(DriverStatus::new());
        if let Some(address) = args.metrics_listen.as_deref().filter(|a| !a.is_empty()) {
            // `Hostname` is the node's name as the driver knows it (its pool's).
            let source = DraSource::new(Arc::clone(&status), ledger_dir, settings.node.clone());
            start_metrics(address, source).await.usage()?;
        }
        let client = kube::Client::try_default()
            .await
            .context(
                "no Kubernetes API server to talk to (in a pod: its service account; \
                 elsewhere: $KUBECONFIG or ~/.kube/config)",
            )
            .usage()?;
        let shutdown = gpuslice_k8s::watch_signals("driver");
        let unenforced = tokio::spawn(log_unenforced(ledger.clone(), shutdown.clone()));
        tracing::info!(
            "DRA driver {} on node {}",
            dra::slice::DRIVER,
            settings.node
        );
        dra::run(
            settings,
            ledger,
            files,
            Box::new(NvmlSource::new()),
            client,
            status,
            shutdown,
        )
        .await;
        let _ = unenforced.await;
        Ok(exit::OK)
    })
}

/// Serves the metrics, `/healthz` and `/readyz` of `source` at `address`.
async fn start_metrics(address: &str, source: DraSource) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| {
            format!(
                "--metrics-listen {address:?}: could not listen there for metrics (expected an \
                 address and port such as 0.0.0.0:10400, or \"\" for no metrics)"
            )
        })?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!("serving metrics on http://{local}/metrics (and /healthz, /readyz)");
    }
    tokio::spawn(crate::metrics::serve::serve(listener, Arc::new(source)));
    Ok(())
}

/// Checks the GPUs' processes for ones outside gpuslice's limits every
/// [`UNENFORCED_INTERVAL`] until `stop` turns true, logging what it finds (each once) or
/// why it cannot check.
async fn log_unenforced(ledger: Ledger, mut stop: watch::Receiver<bool>) {
    let mut log = crate::unenforced::UnenforcedLog::default();
    loop {
        let l = ledger.clone();
        if let Ok(check) = tokio::task::spawn_blocking(move || crate::unenforced::check(&l)).await {
            log.log(&check);
        }
        tokio::select! {
            () = tokio::time::sleep(UNENFORCED_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Why the file the CDI specs mount as the shim is not the shim, if it is not: a container
/// that preloads anything else there (another file; a directory, which the dynamic loader
/// ignores) runs without limits. `Ok(false)` when nothing is there, which is left to the
/// container runtime: it refuses to mount it, and the container does not start.
fn shim_in_place(path: &Path) -> Result<bool, ShimError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        _ => crate::shim_check::identify(path).map(|_| true),
    }
}

/// Where the ledger and the shim are, on the host and in containers.
fn layout(args: &DraDriverArgs) -> anyhow::Result<Layout> {
    let ledger_host = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::locate::SYSTEM_LEDGER_DIR));
    let shim_host = match &args.shim {
        Some(path) => path.clone(),
        None => crate::locate::shim(None)?,
    };
    let layout = Layout {
        ledger_container: args
            .container_dir
            .clone()
            .unwrap_or_else(|| ledger_host.clone()),
        shim_container: args
            .container_shim
            .clone()
            .unwrap_or_else(|| shim_host.clone()),
        ledger_host,
        shim_host,
        preload: args.preload,
    };
    layout.check_paths()?;
    for (flag, path) in [
        ("--dir", &layout.ledger_host),
        ("--container-dir", &layout.ledger_container),
        ("--shim", &layout.shim_host),
        ("--container-shim", &layout.shim_container),
    ] {
        if !path.is_absolute() || path.to_str().is_none_or(|p| p.contains([' ', ':'])) {
            return Err(anyhow!(
                "{flag} {} is not an absolute path of UTF-8 text without spaces or ':' (a CDI \
                 spec cannot hold it as it is)",
                path.display()
            ));
        }
    }
    Ok(layout)
}
