//! Watching the GPUs: a thread finds them through NVML, then asks after each one at every
//! interval and waits for their XID errors in between, and publishes the list with each
//! GPU's health whenever it changes. The kubelet's `ListAndWatch` streams follow the
//! published list.
//!
//! A GPU is unhealthy while NVML cannot find it by its UUID or cannot read its memory
//! (`NVML_ERROR_GPU_IS_LOST` after it fell off the bus, for example); it is healthy again as
//! soon as NVML answers. A GPU that reports a critical XID error (one the [`XidPolicy`] does
//! not ignore) is unhealthy until the plugin restarts, as with NVIDIA's device plugin: an
//! XID is an event, nothing says when the GPU is fine again, and the errors that count
//! (double-bit ECC, fallen off the bus, uncontained errors) need a GPU reset, after which
//! the driver, and so the plugin, start again. The marks outlive a change of settings (they
//! are the process's, not one run's). So does a GPU whose XID errors cannot be watched
//! (NVML cannot register them): it is unhealthy, as NVIDIA's plugin has it, unless every
//! XID is ignored (`DP_DISABLE_HEALTHCHECKS=all`), which leaves NVML's answers alone.
//!
//! GPUs are discovered once: one that is gone stays listed, unhealthy, and one added later
//! is seen after a restart of the plugin. If NVML does not start at all (no driver yet), the
//! thread says why and tries again at every interval: the plugin advertises nothing
//! meanwhile rather than exiting into a crash loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gpuslice_ledger::GpuUuid;
use tokio::sync::watch;

use super::slices::GpuState;
use super::xid::XidPolicy;
use crate::nvml::{Gpu, Nvml, XidEvent, XidWatch};

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

/// The GPUs made unhealthy by XID errors, for the life of the process, and the policy that
/// says which XIDs count.
#[derive(Debug, Default)]
pub struct XidHealth {
    policy: XidPolicy,
    marks: Mutex<HashMap<GpuUuid, String>>,
}

impl XidHealth {
    /// No GPU marked yet, under `policy`.
    pub fn new(policy: XidPolicy) -> XidHealth {
        XidHealth {
            policy,
            marks: Mutex::new(HashMap::new()),
        }
    }

    /// Marks `gpu` unhealthy for `why`, unless it already is (the first reason stays).
    fn mark(&self, gpu: GpuUuid, why: String) {
        self.marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(gpu)
            .or_insert(why);
    }

    /// Why `gpu` is marked unhealthy, if it is.
    fn problem(&self, gpu: &GpuUuid) -> Option<String> {
        self.marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(gpu)
            .cloned()
    }

    /// Marks what `event` calls for among `gpus`; returns what to log.
    fn handle(&self, event: XidEvent, gpus: &[Gpu]) -> String {
        let xid = event
            .xid
            .map_or_else(|| "an unknown XID".to_string(), |x| format!("XID {x}"));
        let on = event
            .gpu
            .map_or_else(|| "a GPU NVML cannot name".to_string(), |g| g.to_string());
        if !self.policy.counts(event.xid) {
            return format!("{on} reported {xid}, which is ignored ({})", self.policy);
        }
        let why = format!("it reported the critical {xid}; unhealthy until the plugin restarts");
        match event.gpu {
            Some(uuid) if gpus.iter().any(|g| g.uuid == uuid) => {
                self.mark(uuid, why);
                format!("{on} reported the critical {xid}")
            }
            Some(_) => format!("{on}, not a GPU of this plugin, reported {xid}"),
            // As NVIDIA's plugin does: without knowing which, every GPU is suspect.
            None => {
                for gpu in gpus {
                    self.mark(gpu.uuid, format!("{why} (NVML could not say which GPU)"));
                }
                format!("{on} reported the critical {xid}: every GPU is marked unhealthy")
            }
        }
    }
}

/// Starts the health thread; it ends when every receiver of `tx` is gone.
pub fn spawn(
    interval: Duration,
    tx: watch::Sender<Inventory>,
    xids: Arc<XidHealth>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("gpu-health".into())
        .spawn(move || run(interval, &tx, &xids))
        .map(|_| ())
}

/// The thread's loop.
fn run(interval: Duration, tx: &watch::Sender<Inventory>, xids: &XidHealth) {
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
            "GPU {}: {}, {}, {} MiB",
            gpu.index,
            gpu.uuid,
            gpu.model,
            gpu.memory_bytes >> 20
        );
    }
    let mut watch = watch_xids(&nvml, &gpus, xids);
    loop {
        publish(tx, check(&nvml, &gpus, xids));
        match &watch {
            Some(events) => match events.next(interval) {
                Ok(None) => {}
                Ok(Some(event)) => tracing::warn!("{}", xids.handle(event, &gpus)),
                Err(e) => {
                    tracing::error!(
                        "waiting for XID errors failed ({e}); every GPU is marked unhealthy"
                    );
                    for gpu in &gpus {
                        xids.mark(gpu.uuid, format!("waiting for its XID errors failed ({e})"));
                    }
                    watch = None;
                }
            },
            None => std::thread::sleep(interval),
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Starts watching the XID errors of `gpus` as the policy asks; a GPU whose errors cannot
/// be watched is marked unhealthy.
fn watch_xids<'n>(nvml: &'n Nvml, gpus: &[Gpu], xids: &XidHealth) -> Option<XidWatch<'n>> {
    if !xids.policy.watches() {
        tracing::info!("{}: GPU health is what NVML answers", xids.policy);
        return None;
    }
    match nvml.watch_xids(gpus) {
        Ok((watch, unwatched)) => {
            for (gpu, why) in unwatched {
                tracing::error!("cannot watch the XID errors of GPU {}: {why}", gpu.uuid);
                xids.mark(
                    gpu.uuid,
                    format!("its XID errors cannot be watched ({why})"),
                );
            }
            tracing::info!("watching the GPUs' XID errors; {}", xids.policy);
            Some(watch)
        }
        Err(e) => {
            tracing::error!("cannot watch XID errors ({e}); every GPU is marked unhealthy");
            for gpu in gpus {
                xids.mark(gpu.uuid, format!("its XID errors cannot be watched ({e})"));
            }
            None
        }
    }
}

/// Publishes `inventory` if it differs from what was published, logging each GPU whose
/// health changed.
fn publish(tx: &watch::Sender<Inventory>, inventory: Inventory) {
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
}

/// Each GPU's health now: its XID mark if it has one, else what NVML answers.
fn check(nvml: &Nvml, gpus: &[Gpu], xids: &XidHealth) -> Inventory {
    Inventory {
        discovered: true,
        gpus: gpus
            .iter()
            .map(|gpu| GpuState {
                gpu: gpu.clone(),
                problem: xids.problem(&gpu.uuid).or_else(|| nvml.problem(&gpu.uuid)),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> Vec<Gpu> {
        (0..2u8)
            .map(|i| Gpu {
                index: u32::from(i),
                uuid: GpuUuid([i; 16]),
                model: "test GPU".into(),
                memory_bytes: 1 << 30,
            })
            .collect()
    }

    fn event(gpu: Option<u8>, xid: Option<u64>) -> XidEvent {
        XidEvent {
            gpu: gpu.map(|i| GpuUuid([i; 16])),
            xid,
        }
    }

    #[test]
    fn a_critical_xid_marks_its_gpu_for_good_and_an_application_error_does_not() {
        let health = XidHealth::new(XidPolicy::default());
        let gpus = gpus();
        let said = health.handle(event(Some(1), Some(13)), &gpus);
        assert!(said.contains("ignored"), "{said}");
        assert_eq!(health.problem(&gpus[1].uuid), None);

        health.handle(event(Some(1), Some(79)), &gpus);
        let problem = health.problem(&gpus[1].uuid).unwrap();
        assert!(
            problem.contains("XID 79") && problem.contains("restarts"),
            "{problem}"
        );
        assert_eq!(health.problem(&gpus[0].uuid), None);
        // The first reason stays.
        health.handle(event(Some(1), Some(48)), &gpus);
        assert!(health.problem(&gpus[1].uuid).unwrap().contains("XID 79"));
    }

    #[test]
    fn an_xid_nvml_cannot_place_marks_every_gpu_and_a_stranger_none() {
        let gpus = gpus();
        let health = XidHealth::new(XidPolicy::default());
        health.handle(event(Some(9), Some(79)), &gpus);
        assert!(gpus.iter().all(|g| health.problem(&g.uuid).is_none()));
        health.handle(event(None, None), &gpus);
        assert!(gpus.iter().all(|g| health.problem(&g.uuid).is_some()));
    }

    #[test]
    fn with_every_xid_ignored_nothing_is_marked() {
        let policy = XidPolicy::from_values(Some("all".into()), None).unwrap();
        let health = XidHealth::new(policy);
        let gpus = gpus();
        health.handle(event(Some(0), Some(79)), &gpus);
        health.handle(event(None, None), &gpus);
        assert!(gpus.iter().all(|g| health.problem(&g.uuid).is_none()));
    }
}
