//! `--gpu`: which physical GPU a per-GPU quota is for, checked to exist.
//!
//! Quotas are keyed by GPU UUID, never by ordinal (`CUDA_VISIBLE_DEVICES` renumbers
//! devices). A GPU is named by its UUID or by NVML's index (the order `nvidia-smi -L` lists
//! them in, PCI bus order, which CUDA follows only with `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
//! Either way NVML must list it: a quota on a GPU this machine does not have limits nothing,
//! and the command would use the real GPUs without any limit.

use gpuslice_ledger::GpuUuid;

use gpuslice_k8s::nvml::{Gpu, Nvml};

/// A `--gpu` value that names no GPU of this machine.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// Neither a UUID nor an index.
    #[error(
        "--gpu {value:?} is neither a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, \
             as `nvidia-smi -L` prints) nor a GPU index"
    )]
    Invalid {
        /// The value given.
        value: String,
    },
    /// NVML could not list the GPUs, so the GPU cannot be shown to exist.
    #[error(
        "--gpu {value}: cannot check that this machine has this GPU, since NVML cannot list \
         its GPUs ({problem}); a quota on a GPU that is not here would limit nothing"
    )]
    NoDiscovery {
        /// The value given.
        value: String,
        /// What NVML said.
        problem: String,
    },
    /// NVML lists no such GPU.
    #[error("--gpu {value}: this machine has no such GPU; NVML lists {listed}")]
    NoSuchGpu {
        /// The value given.
        value: String,
        /// The GPUs it does list, in words.
        listed: String,
    },
}

/// The GPU that `value` names (a UUID, with or without `GPU-`, or an index), as NVML lists
/// it on this machine.
pub fn resolve(value: &str) -> Result<GpuUuid, GpuError> {
    let wanted = parse(value)?;
    let no_discovery = |problem: String| GpuError::NoDiscovery {
        value: value.to_string(),
        problem,
    };
    let gpus = Nvml::open()
        .and_then(|nvml| nvml.gpus())
        .map_err(|e| no_discovery(e.to_string()))?;
    find(value, wanted, &gpus)
}

/// What a `--gpu` value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Uuid(GpuUuid),
    Index(u32),
}

/// Reads a `--gpu` value without asking NVML.
fn parse(value: &str) -> Result<Wanted, GpuError> {
    if let Ok(uuid) = GpuUuid::parse(value) {
        return Ok(Wanted::Uuid(uuid));
    }
    let invalid = || GpuError::Invalid {
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse().map(Wanted::Index).map_err(|_| invalid())
}

/// The GPU of `gpus` that `wanted` names.
fn find(value: &str, wanted: Wanted, gpus: &[Gpu]) -> Result<GpuUuid, GpuError> {
    let found = gpus.iter().find(|gpu| match wanted {
        Wanted::Uuid(uuid) => gpu.uuid == uuid,
        Wanted::Index(index) => gpu.index == index,
    });
    if let Some(gpu) = found {
        return Ok(gpu.uuid);
    }
    let listed = if gpus.is_empty() {
        "no GPUs".to_string()
    } else {
        gpus.iter()
            .map(|gpu| format!("{} {}", gpu.index, gpu.uuid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(GpuError::NoSuchGpu {
        value: value.to_string(),
        listed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: &str = "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d";
    const A100: &str = "GPU-00000000-1111-2222-3333-444444444444";

    fn gpus() -> Vec<Gpu> {
        [H100, A100]
            .iter()
            .zip(0..)
            .map(|(uuid, index)| Gpu {
                index,
                uuid: GpuUuid::parse(uuid).unwrap(),
                model: "test GPU".into(),
                memory_bytes: 80 << 30,
            })
            .collect()
    }

    fn resolve_in(value: &str, gpus: &[Gpu]) -> Result<GpuUuid, GpuError> {
        find(value, parse(value)?, gpus)
    }

    #[test]
    fn a_gpu_is_found_by_uuid_in_any_form_or_by_index() {
        let h100 = GpuUuid::parse(H100).unwrap();
        assert_eq!(resolve_in(H100, &gpus()).unwrap(), h100);
        assert_eq!(resolve_in(&H100[4..], &gpus()).unwrap(), h100);
        assert_eq!(resolve_in(&H100.to_uppercase(), &gpus()).unwrap(), h100);
        assert_eq!(
            resolve_in("1", &gpus()).unwrap(),
            GpuUuid::parse(A100).unwrap()
        );
    }

    #[test]
    fn a_gpu_this_machine_lacks_is_refused_naming_those_it_has() {
        for missing in ["GPU-fa4ec0da-0000-4000-8000-000000000000", "2"] {
            let err = resolve_in(missing, &gpus()).unwrap_err();
            assert!(matches!(err, GpuError::NoSuchGpu { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(H100) && msg.contains(A100), "{msg}");
        }
        let err = resolve_in(H100, &[]).unwrap_err().to_string();
        assert!(err.contains("no GPUs"), "{err}");
    }

    #[test]
    fn values_that_name_no_gpu_at_all_are_invalid() {
        for bad in [
            "MIG-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d",
            "-1",
            "",
            "GPU-nope",
            "99999999999",
        ] {
            assert!(
                matches!(parse(bad), Err(GpuError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
