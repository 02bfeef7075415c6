//! The GPUs of this node and whether each still answers: found through NVML, looked at again
//! at every interval by a thread that publishes the list whenever it changes. The
//! ResourceSlice follows the published list, and prepare refuses a GPU that is not in it or
//! does not answer.
//!
//! NVML sits behind [`GpuSource`], so that the rest of the driver is tested with a list of
//! GPUs made up in the test. A GPU that NVML stops listing stays in the inventory with a
//! problem, so that the driver can say why it no longer publishes it; one that appears is
//! published at the next look.

use std::time::Duration;

use gpuslice_ledger::GpuUuid;
use tokio::sync::watch;

use crate::nvml::Nvml;

/// What the driver publishes of a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// NVML's index (`nvidia-smi -L`'s, and that of NVIDIA's CDI devices named by index).
    pub index: u32,
    /// The GPU's UUID, which names it everywhere in gpuslice.
    pub uuid: GpuUuid,
    /// The product name, as NVML reports it (`NVIDIA H100 80GB HBM3`).
    pub product_name: String,
    /// Its memory, as NVML reports the total.
    pub memory_bytes: u64,
    /// CUDA compute capability (major, minor).
    pub compute_capability: (u32, u32),
    /// The driver's version (`580.65.06`).
    pub driver_version: String,
}

/// A GPU and what is wrong with it, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuState {
    /// The GPU, as last seen answering.
    pub gpu: Gpu,
    /// Why it cannot be used now (lost, gone from NVML's list); `None` when it answers.
    pub problem: Option<String>,
}

/// The GPUs as the watch thread last saw them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Whether NVML has answered at least once (until then the list means nothing).
    pub discovered: bool,
    /// Every GPU seen since the driver started, in NVML's order.
    pub gpus: Vec<GpuState>,
}

impl Inventory {
    /// The GPU with this UUID, healthy or not.
    pub fn gpu(&self, uuid: &GpuUuid) -> Option<&GpuState> {
        self.gpus.iter().find(|g| g.gpu.uuid == *uuid)
    }

    /// The GPUs that answer: those the ResourceSlice lists.
    pub fn healthy(&self) -> impl Iterator<Item = &Gpu> {
        self.gpus
            .iter()
            .filter(|g| g.problem.is_none())
            .map(|g| &g.gpu)
    }

    /// The inventory after a look that found `found` (each GPU NVML listed, or why one at an
    /// index could not be read): GPUs not found keep their last description, with a problem.
    pub fn after_look(&self, found: &[Result<Gpu, String>]) -> Inventory {
        let mut gpus: Vec<GpuState> = found
            .iter()
            .filter_map(|f| f.as_ref().ok())
            .map(|gpu| GpuState {
                gpu: gpu.clone(),
                problem: None,
            })
            .collect();
        let unreadable: Vec<&str> = found
            .iter()
            .filter_map(|f| f.as_ref().err())
            .map(String::as_str)
            .collect();
        for known in &self.gpus {
            if gpus.iter().any(|g| g.gpu.uuid == known.gpu.uuid) {
                continue;
            }
            let problem = if unreadable.is_empty() {
                "NVML does not list it any more".to_string()
            } else {
                format!("NVML cannot read it: {}", unreadable.join("; "))
            };
            gpus.push(GpuState {
                gpu: known.gpu.clone(),
                problem: Some(problem),
            });
        }
        gpus.sort_by_key(|g| g.gpu.index);
        Inventory {
            discovered: true,
            gpus,
        }
    }
}

/// Where GPUs are found: NVML on a node, a list in tests.
pub trait GpuSource: Send + 'static {
    /// Every GPU listed now: each one described, or why the one at an index cannot be read.
    /// An error when nothing can be listed (no driver).
    fn look(&mut self) -> Result<Vec<Result<Gpu, String>>, String>;
}

/// NVML ([`crate::nvml`]), loaded at run time (`libnvidia-ml.so.1`), so that the driver
/// starts and says why it publishes nothing on a node without a driver.
#[derive(Debug, Default)]
pub struct NvmlSource {
    nvml: Option<Nvml>,
}

impl NvmlSource {
    /// A source that loads NVML at its first look.
    pub fn new() -> NvmlSource {
        NvmlSource { nvml: None }
    }

    /// NVML, loaded and initialized.
    fn nvml(&mut self) -> Result<&Nvml, String> {
        if self.nvml.is_none() {
            let nvml = Nvml::open().map_err(|e| format!("NVML cannot be used: {e}"))?;
            self.nvml = Some(nvml);
        }
        self.nvml
            .as_ref()
            .ok_or_else(|| "NVML is not loaded".to_string())
    }
}

impl GpuSource for NvmlSource {
    fn look(&mut self) -> Result<Vec<Result<Gpu, String>>, String> {
        let nvml = self.nvml()?;
        let driver_version = nvml.driver_version().map_err(|e| e.to_string())?;
        let found = nvml.each_gpu().map_err(|e| e.to_string())?;
        Ok(found
            .into_iter()
            .map(|gpu| {
                let gpu = gpu.map_err(|(index, e)| format!("GPU {index}: {e}"))?;
                let compute_capability = nvml
                    .compute_capability(&gpu.uuid)
                    .map_err(|e| format!("GPU {}: {e}", gpu.index))?;
                Ok(Gpu {
                    index: gpu.index,
                    uuid: gpu.uuid,
                    product_name: gpu.model,
                    memory_bytes: gpu.memory_bytes,
                    compute_capability,
                    driver_version: driver_version.clone(),
                })
            })
            .collect())
    }
}

/// Starts the thread that looks at the GPUs every `interval` and publishes on `tx`; it ends
/// when every receiver is gone.
pub fn spawn_watch(
    mut source: Box<dyn GpuSource>,
    interval: Duration,
    tx: watch::Sender<Inventory>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gpu-watch".into())
        .spawn(move || {
            let mut last_error: Option<String> = None;
            while !tx.is_closed() {
                match source.look() {
                    Ok(found) => {
                        if last_error.take().is_some() {
                            tracing::info!("NVML answers again");
                        }
                        publish(&tx, &found);
                    }
                    Err(e) => {
                        if last_error.as_ref() != Some(&e) {
                            tracing::error!("cannot list the GPUs, publishing none: {e}");
                            last_error = Some(e);
                        }
                    }
                }
                std::thread::sleep(interval);
            }
        })
        .map(|_| ())
}

/// Publishes the inventory after a look, logging what changed.
fn publish(tx: &watch::Sender<Inventory>, found: &[Result<Gpu, String>]) {
    tx.send_if_modified(|current| {
        let next = current.after_look(found);
        if *current == next {
            return false;
        }
        for state in &next.gpus {
            let before = current.gpu(&state.gpu.uuid);
            match (&state.problem, before.map(|b| &b.problem)) {
                (None, None) => tracing::info!(
                    "GPU {}: {} ({}), {} MiB",
                    state.gpu.index,
                    state.gpu.uuid,
                    state.gpu.product_name,
                    state.gpu.memory_bytes >> 20
                ),
                (Some(problem), Some(None) | None) => {
                    tracing::warn!("GPU {} cannot be used: {problem}", state.gpu.uuid);
                }
                (None, Some(Some(_))) => {
                    tracing::info!("GPU {} answers again", state.gpu.uuid);
                }
                _ => {}
            }
        }
        *current = next;
        true
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A made-up GPU `i` with `memory` bytes.
    pub fn gpu(i: u8, memory: u64) -> Gpu {
        Gpu {
            index: u32::from(i),
            uuid: GpuUuid::parse(&format!("GPU-fa4ec0da-0000-4000-8000-0000000000{i:02x}"))
                .unwrap(),
            product_name: "NVIDIA H100 80GB HBM3".into(),
            memory_bytes: memory,
            compute_capability: (9, 0),
            driver_version: "580.65.06".into(),
        }
    }

    #[test]
    fn a_gpu_nvml_stops_listing_stays_known_with_a_problem_and_comes_back() {
        let (a, b) = (gpu(0, 8 << 30), gpu(1, 8 << 30));
        let first = Inventory::default().after_look(&[Ok(a.clone()), Ok(b.clone())]);
        assert!(first.discovered);
        assert_eq!(first.healthy().count(), 2);
        let lost = first.after_look(&[Ok(a.clone()), Err("GPU 1: GPU is lost".into())]);
        assert_eq!(
            lost.healthy().cloned().collect::<Vec<_>>(),
            std::slice::from_ref(&a)
        );
        let problem = lost.gpu(&b.uuid).unwrap().problem.clone().unwrap();
        assert!(problem.contains("GPU is lost"), "{problem}");
        let gone = lost.after_look(&[Ok(a.clone())]);
        assert_eq!(
            gone.gpu(&b.uuid).unwrap().problem.as_deref(),
            Some("NVML does not list it any more")
        );
        let back = gone.after_look(&[Ok(a), Ok(b.clone())]);
        assert_eq!(back.healthy().count(), 2);
        assert_eq!(back.gpus[1].gpu, b, "in NVML's order");
    }
}
