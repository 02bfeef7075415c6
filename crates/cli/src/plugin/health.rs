//! Watching the GPUs: a thread finds them through NVML, then asks after each one at every
//! interval, and publishes the list with each GPU's health whenever it changes. The kubelet's
//! `ListAndWatch` streams follow the published list.
//!
//! A GPU is unhealthy when NVML cannot find it by its UUID any more or cannot read its memory
//! (`NVML_ERROR_GPU_IS_LOST` after it fell off the bus, for example). GPUs are discovered
//! once: one that is gone stays listed, unhealthy, and one added later is seen after a
//! restart of the plugin. If NVML does not start at all (no driver yet), the thread says why
//! and tries again at every interval: the plugin advertises nothing meanwhile rather than
//! exiting into a crash loop.

use std::time::Duration;

use tokio::sync::watch;

use super::nvml::{Gpu, Nvml};
use super::slices::GpuState;

/// What the health thread publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Whether the GPUs have been discovered (until then the list is empty and means
    /// nothing about which GPUs exist).
    pub discovered: bool,
    /// Each GPU and its health.
    pub gpus: Vec<GpuState>,
}

impl Inventory {
    /// The GPU with this UUID.
    pub fn gpu(&self, uuid: &gpuslice_ledger::GpuUuid) -> Option<&GpuState> {
        self.gpus.iter().find(|g| g.gpu.uuid == *uuid)
    }
}

/// Starts the health thread; it ends when every receiver of `tx` is gone.
pub fn spawn(interval: Duration, tx: watch::Sender<Inventory>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gpu-health".into())
        .spawn(move || run(interval, &tx))
        .map(|_| ())
}

/// The thread's loop.
fn run(interval: Duration, tx: &watch::Sender<Inventory>) {
    let mut last_error = None;
    let (nvml, gpus) = loop {
        if tx.is_closed() {
            return;
        }
        match Nvml::open().and_then(|nvml| nvml.gpus().map(|gpus| (nvml, gpus))) {
            Ok(found) => break found,
            Err(e) => {
                let text = e.to_string();
                if last_error.as_ref() != Some(&text) {
                    tracing::error!(
                        "cannot list the GPUs, advertising none until it works: {text}"
                    );
                    last_error = Some(text);
                }
            }
        }
        std::thread::sleep(interval);
    };
    if gpus.is_empty() {
        tracing::warn!("NVML lists no GPU: nothing to advertise");
    }
    for gpu in &gpus {
        tracing::info!(
            "GPU {}: {}, {} MiB",
            gpu.index,
            gpu.uuid,
            gpu.memory_bytes >> 20
        );
    }
    loop {
        let inventory = check(&nvml, &gpus);
        tx.send_if_modified(|current| {
            if *current == inventory {
                return false;
            }
            for state in &inventory.gpus {
                let before = current.gpu(&state.gpu.uuid).map(|s| &s.problem);
                match (&state.problem, before) {
                    (Some(problem), Some(None) | None) => {
                        tracing::warn!("GPU {} is unhealthy: {problem}", state.gpu.uuid);
                    }
                    (None, Some(Some(_))) => {
                        tracing::info!("GPU {} is healthy again", state.gpu.uuid);
                    }
                    _ => {}
                }
            }
            *current = inventory;
            true
        });
        std::thread::sleep(interval);
        if tx.is_closed() {
            return;
        }
    }
}

/// Each GPU's health now.
fn check(nvml: &Nvml, gpus: &[Gpu]) -> Inventory {
    Inventory {
        discovered: true,
        gpus: gpus
            .iter()
            .map(|gpu| GpuState {
                gpu: *gpu,
                problem: nvml.problem(&gpu.uuid),
            })
            .collect(),
    }
}
