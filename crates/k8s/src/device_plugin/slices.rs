//! Slices: the devices the plugin advertises. GPU `G` cut into N slices is advertised as
//! `G-slice-0` .. `G-slice-<N-1>` (each resource its own range of them), so a device ID says
//! which GPU it is on, and k slices of one GPU are k/N of it.
//!
//! Also where the kubelet is told which slices to prefer: those that pack a container onto
//! one GPU.

use std::collections::BTreeMap;
use std::fmt;

use gpuslice_ledger::GpuUuid;

use super::api;
use super::config::Resource;
use crate::nvml::Gpu;

/// One slice of one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SliceId {
    /// The GPU.
    pub gpu: GpuUuid,
    /// The slice's index on it, 0..N.
    pub index: u32,
}

/// A GPU as a sortable key (its UUID's bytes), so choices are the same every time.
type GpuKey = [u8; 16];

/// What separates the GPU from the slice index in a device ID.
const SEPARATOR: &str = "-slice-";

impl SliceId {
    /// Slice `index` of `gpu`.
    pub fn new(gpu: GpuUuid, index: u32) -> SliceId {
        SliceId { gpu, index }
    }

    /// Parses a device ID, `GPU-<uuid>-slice-<index>`.
    pub fn parse(id: &str) -> Option<SliceId> {
        let (gpu, index) = id.rsplit_once(SEPARATOR)?;
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SliceId::new(GpuUuid::parse(gpu).ok()?, index.parse().ok()?))
    }
}

impl fmt::Display for SliceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{SEPARATOR}{}", self.gpu, self.index)
    }
}

/// The health of a GPU, as last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuState {
    /// The GPU.
    pub gpu: Gpu,
    /// `None` when healthy; otherwise why not.
    pub problem: Option<String>,
}

/// The kubelet's word for a healthy device.
pub const HEALTHY: &str = "Healthy";
/// The kubelet's word for an unhealthy device.
pub const UNHEALTHY: &str = "Unhealthy";

/// The devices `resource` advertises on these GPUs: its slices of each, healthy when
/// their GPU is.
pub fn devices(resource: &Resource, gpus: &[GpuState]) -> Vec<api::Device> {
    gpus.iter()
        .flat_map(|state| {
            let health = if state.problem.is_none() {
                HEALTHY
            } else {
                UNHEALTHY
            };
            (resource.first_slice..resource.first_slice + resource.slices).map(move |i| {
                api::Device {
                    id: SliceId::new(state.gpu.uuid, i).to_string(),
                    health: health.to_string(),
                    topology: None,
                }
            })
        })
        .collect()
}

/// The slices a container should get: `must_include` first, then as few GPUs as possible.
///
/// It fills up the GPUs it already has slices on first; for the rest it takes one GPU that
/// can hold them all, the fullest such one (so emptier GPUs stay free for larger requests),
/// and only when no GPU can, spreads over the GPUs with the most free slices. Within a GPU
/// it takes the lowest indexes. IDs it cannot parse are used last, as given.
pub fn preferred(available: &[String], must_include: &[String], size: usize) -> Vec<String> {
    let mut chosen: Vec<String> = Vec::new();
    for id in must_include {
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    let mut free: BTreeMap<GpuKey, Vec<(u32, String)>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for id in available {
        if chosen.contains(id) {
            continue;
        }
        match SliceId::parse(id) {
            Some(s) => free.entry(s.gpu.0).or_default().push((s.index, id.clone())),
            None => unknown.push(id.clone()),
        }
    }
    for slices in free.values_mut() {
        slices.sort();
        slices.dedup();
    }
    let take =
        |free: &mut BTreeMap<GpuKey, Vec<(u32, String)>>, gpu: GpuKey, chosen: &mut Vec<String>| {
            if let Some(slices) = free.get_mut(&gpu) {
                let n = size.saturating_sub(chosen.len()).min(slices.len());
                chosen.extend(slices.drain(..n).map(|(_, id)| id));
            }
        };
    // The GPUs the required slices are on.
    let held: Vec<GpuKey> = chosen
        .iter()
        .filter_map(|id| SliceId::parse(id).map(|s| s.gpu.0))
        .collect();
    for gpu in held {
        take(&mut free, gpu, &mut chosen);
    }
    let need = size.saturating_sub(chosen.len());
    if need > 0 {
        let fits = free
            .iter()
            .filter(|(_, s)| s.len() >= need)
            .min_by_key(|(_, s)| s.len())
            .map(|(gpu, _)| *gpu);
        match fits {
            Some(gpu) => take(&mut free, gpu, &mut chosen),
            None => {
                let mut by_free: Vec<(usize, GpuKey)> =
                    free.iter().map(|(gpu, s)| (s.len(), *gpu)).collect();
                by_free.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                for (_, gpu) in by_free {
                    take(&mut free, gpu, &mut chosen);
                }
            }
        }
    }
    let need = size.saturating_sub(chosen.len());
    chosen.extend(unknown.into_iter().take(need));
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(i: u8) -> GpuUuid {
        GpuUuid::parse(&format!("GPU-fa4ec0da-0000-4000-8000-0000000000{i:02x}")).unwrap()
    }

    fn id(g: u8, i: u32) -> String {
        SliceId::new(gpu(g), i).to_string()
    }

    fn ids(list: &[(u8, u32)]) -> Vec<String> {
        list.iter().map(|&(g, i)| id(g, i)).collect()
    }

    #[test]
    fn device_ids_name_the_gpu_and_the_slice_and_parse_back() {
        let s = SliceId::new(gpu(1), 3);
        let text = s.to_string();
        assert_eq!(text, "GPU-fa4ec0da-0000-4000-8000-000000000001-slice-3");
        assert!(text.len() <= 63, "the kubelet's limit");
        assert_eq!(SliceId::parse(&text), Some(s));
        for bad in [
            "GPU-fa4ec0da-0000-4000-8000-000000000001",
            "GPU-fa4ec0da-0000-4000-8000-000000000001-slice-",
            "GPU-fa4ec0da-0000-4000-8000-000000000001-slice-x",
            "GPU-fa4ec0da-0000-4000-8000-000000000001-slice--1",
            "nvidia0-slice-1",
            "",
        ] {
            assert_eq!(SliceId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_container_is_packed_onto_the_fullest_gpu_that_fits_it() {
        // GPU 0 has 4 free slices, GPU 1 has 2.
        let available = ids(&[(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]);
        assert_eq!(preferred(&available, &[], 2), ids(&[(1, 2), (1, 3)]));
        assert_eq!(preferred(&available, &[], 1), ids(&[(1, 2)]));
        assert_eq!(
            preferred(&available, &[], 3),
            ids(&[(0, 0), (0, 1), (0, 2)])
        );
    }

    #[test]
    fn required_slices_come_first_and_their_gpu_is_filled_next() {
        let available = ids(&[(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]);
        let must = ids(&[(0, 1)]);
        assert_eq!(preferred(&available, &must, 2), ids(&[(0, 1), (0, 0)]));
        assert_eq!(
            preferred(&available, &must, 3),
            ids(&[(0, 1), (0, 0), (1, 0)])
        );
    }

    #[test]
    fn a_request_no_gpu_can_hold_spans_as_few_gpus_as_possible() {
        let available = ids(&[(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]);
        assert_eq!(
            preferred(&available, &[], 5),
            ids(&[(2, 0), (2, 1), (2, 2), (1, 0), (1, 1)])
        );
        assert_eq!(
            preferred(&available, &[], 9).len(),
            6,
            "never more than offered"
        );
    }

    #[test]
    fn unknown_ids_are_used_only_when_nothing_else_is_left() {
        let mut available = vec!["something-else".to_string()];
        available.extend(ids(&[(0, 0)]));
        assert_eq!(
            preferred(&available, &[], 2),
            vec![id(0, 0), "something-else".to_string()]
        );
    }

    #[test]
    fn devices_follow_their_gpus_health() {
        let resource = Resource {
            name: "gpuslice.dev/gpu".into(),
            first_slice: 1,
            slices: 2,
            priority: gpuslice_ledger::Priority::Normal,
            compute_limit: super::super::config::ComputeLimit::None,
            max_slices_per_container: None,
        };
        let state = |g: u8, problem: Option<&str>| GpuState {
            gpu: Gpu {
                index: u32::from(g),
                uuid: gpu(g),
                model: "test GPU".into(),
                memory_bytes: 1 << 30,
            },
            problem: problem.map(String::from),
        };
        let list = devices(&resource, &[state(0, None), state(1, Some("lost"))]);
        let got: Vec<(String, String)> = list.into_iter().map(|d| (d.id, d.health)).collect();
        assert_eq!(
            got,
            [
                (id(0, 1), "Healthy".into()),
                (id(0, 2), "Healthy".into()),
                (id(1, 1), "Unhealthy".into()),
                (id(1, 2), "Unhealthy".into()),
            ]
        );
    }
}
