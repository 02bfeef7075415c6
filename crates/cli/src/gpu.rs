//! `--gpu`: which physical GPU a per-GPU quota is for.
//!
//! Quotas are keyed by GPU UUID, never by ordinal (`CUDA_VISIBLE_DEVICES` renumbers
//! devices). An index is accepted as a convenience only where `nvidia-smi -L` can turn it
//! into a UUID; it is nvidia-smi's index (PCI bus order), which CUDA follows only with
//! `CUDA_DEVICE_ORDER=PCI_BUS_ID`.

use std::process::Command;

use gpuslice_ledger::GpuUuid;

/// A `--gpu` value that names no GPU.
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
    /// An index, but nvidia-smi could not be asked for the UUIDs.
    #[error(
        "--gpu {index}: a GPU index needs `nvidia-smi -L` to find the GPU's UUID, and \
             {problem}; pass the UUID instead (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
    )]
    NoDiscovery {
        /// The index given.
        index: u32,
        /// What went wrong with nvidia-smi.
        problem: String,
    },
    /// An index nvidia-smi does not list.
    #[error("--gpu {index}: `nvidia-smi -L` lists {listed}; pass one of those or a GPU UUID")]
    NoSuchIndex {
        /// The index given.
        index: u32,
        /// The indexes it does list, in words.
        listed: String,
    },
}

/// The GPU that `value` names: a UUID (with or without `GPU-`), or an index that
/// `nvidia-smi -L` knows.
pub fn resolve(value: &str) -> Result<GpuUuid, GpuError> {
    if let Ok(uuid) = GpuUuid::parse(value) {
        return Ok(uuid);
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GpuError::Invalid {
            value: value.to_string(),
        });
    }
    let index: u32 = value.parse().map_err(|_| GpuError::Invalid {
        value: value.to_string(),
    })?;
    let no_discovery = |problem: String| GpuError::NoDiscovery { index, problem };
    let output = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .map_err(|e| no_discovery(format!("nvidia-smi could not be run ({e})")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(no_discovery(format!(
            "nvidia-smi failed ({}: {})",
            output.status,
            stderr.trim()
        )));
    }
    let gpus = parse_gpu_list(&String::from_utf8_lossy(&output.stdout));
    if let Some((_, uuid)) = gpus.iter().find(|(i, _)| *i == index) {
        return Ok(*uuid);
    }
    let listed = match gpus.as_slice() {
        [] => "no GPUs".to_string(),
        _ => format!(
            "GPUs {}",
            gpus.iter()
                .map(|(i, _)| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(GpuError::NoSuchIndex { index, listed })
}

/// The `(index, UUID)` of each GPU in `nvidia-smi -L` output, whose lines read
/// `GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f8c3a12-...)`. MIG devices (indented `MIG`
/// lines) and anything else are skipped.
fn parse_gpu_list(text: &str) -> Vec<(u32, GpuUuid)> {
    text.lines()
        .filter_map(|line| {
            let (index, rest) = line.strip_prefix("GPU ")?.split_once(':')?;
            let uuid = rest.split("(UUID: ").nth(1)?.split(')').next()?;
            Some((
                index.trim().parse().ok()?,
                GpuUuid::parse(uuid.trim()).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-00000000-1111-2222-3333-444444444444)
  MIG 1g.5gb      Device  0: (UUID: MIG-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee)
";

    #[test]
    fn nvidia_smi_list_gives_index_and_uuid_of_each_gpu() {
        let gpus = parse_gpu_list(LIST);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].0, 0);
        assert_eq!(
            gpus[0].1.to_string(),
            "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d"
        );
        assert_eq!(gpus[1].0, 1);
    }

    #[test]
    fn uuids_are_taken_as_they_are() {
        let uuid = resolve("GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d").unwrap();
        assert_eq!(uuid.0[0], 0x5f);
        assert!(matches!(
            resolve("MIG-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d"),
            Err(GpuError::Invalid { .. })
        ));
        assert!(matches!(resolve("-1"), Err(GpuError::Invalid { .. })));
    }
}
