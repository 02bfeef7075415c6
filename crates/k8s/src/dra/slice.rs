//! The ResourceSlice this node publishes: one device per GPU that answers, with what a
//! DeviceClass or a claim can select on (attributes) and what claims consume (capacities).
//!
//! Each device has `allowMultipleAllocations: true` and two capacities, so that the
//! scheduler (consumable capacity, KEP-5075) can give one GPU to several claims as long as
//! their requests fit:
//!
//! - `memory`: the GPU's memory in bytes. A claim's share is its tenant's memory quota.
//! - `compute`: 100, the GPU's time in percent. A claim's share is its tenant's guaranteed
//!   compute share (what it gets when others want the GPU too; alone it may use more, up to
//!   a `computeLimit` set in the claim's opaque configuration).
//!
//! Each has a request policy: a claim that names neither gets the whole GPU (the default is
//! everything), and requests are rounded up to whole steps (256 MiB of memory, 1% of time),
//! so that a GPU is not cut into slivers nobody can use.
//!
//! A lost GPU is left out of the slice: the scheduler then allocates it to no new claim.
//! Claims already prepared on it keep their tenants until they are unprepared.

use std::collections::BTreeMap;

use gpuslice_ledger::GpuUuid;
use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device, DeviceAttribute, DeviceCapacity,
    ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::gpus::Gpu;

/// The driver's name: in ResourceSlices, DeviceClasses, allocation results and opaque
/// configuration.
pub const DRIVER: &str = "gpuslice.dev";
/// The memory capacity's name.
pub const MEMORY: &str = "memory";
/// The compute capacity's name.
pub const COMPUTE: &str = "compute";
/// A whole GPU's compute capacity: 100 percent.
pub const COMPUTE_TOTAL_PERCENT: u32 = 100;
/// The step memory requests are rounded up to, and the least a claim gets.
pub const MEMORY_STEP: u64 = 256 << 20;

/// The ResourceSlice's name for `node`: one per node, so that it is updated in place.
pub fn slice_name(node: &str) -> String {
    format!("{node}-{DRIVER}")
}

/// The device name of a GPU: its UUID in lower case (`gpu-fa4ec0da-...`), a DNS label that
/// stays the GPU's own when indices change.
pub fn device_name(uuid: &GpuUuid) -> String {
    uuid.to_string().to_ascii_lowercase()
}

/// The GPU a device name names; `None` for a name this driver does not publish.
pub fn gpu_of_device(name: &str) -> Option<GpuUuid> {
    let rest = name.strip_prefix("gpu-")?;
    let uuid = GpuUuid::parse(&format!("GPU-{rest}")).ok()?;
    (device_name(&uuid) == name).then_some(uuid)
}

/// A byte count as a Kubernetes quantity: `80Gi`, `256Mi`, or plain bytes.
pub fn bytes_quantity(bytes: u64) -> Quantity {
    let text = [(40u32, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")]
        .iter()
        .find(|(shift, _)| bytes != 0 && bytes.trailing_zeros() >= *shift)
        .map_or_else(
            || bytes.to_string(),
            |(shift, suffix)| format!("{}{suffix}", bytes >> shift),
        );
    Quantity(text)
}

/// A version for a version attribute (semantic versioning: no leading zeros): `580.65.06`
/// is `580.65.6`, `9.0` is `9.0.0`. `None` for text that is not one to three numbers.
pub fn semantic_version(text: &str) -> Option<String> {
    let parts: Vec<u64> = text
        .split('.')
        .map(|p| {
            (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let get = |i: usize| parts.get(i).copied().unwrap_or(0);
    Some(format!("{}.{}.{}", get(0), get(1), get(2)))
}

/// The memory capacity a GPU's device publishes: its memory, and at least one step, so that
/// the request range is never empty on a tiny (simulated) GPU.
pub fn memory_capacity(gpu: &Gpu) -> u64 {
    gpu.memory_bytes.max(MEMORY_STEP)
}

/// The device for a GPU.
pub fn device(gpu: &Gpu) -> Device {
    let text = |s: &str| DeviceAttribute {
        string: Some(s.to_string()),
        ..DeviceAttribute::default()
    };
    let version = |v: String| DeviceAttribute {
        version: Some(v),
        ..DeviceAttribute::default()
    };
    let mut attributes = BTreeMap::from([
        ("uuid".to_string(), text(&gpu.uuid.to_string())),
        ("productName".to_string(), text(&gpu.product_name)),
        (
            "index".to_string(),
            DeviceAttribute {
                int: Some(i64::from(gpu.index)),
                ..DeviceAttribute::default()
            },
        ),
        (
            "cudaComputeCapability".to_string(),
            version(format!(
                "{}.{}.0",
                gpu.compute_capability.0, gpu.compute_capability.1
            )),
        ),
    ]);
    attributes.insert(
        "driverVersion".to_string(),
        semantic_version(&gpu.driver_version).map_or_else(|| text(&gpu.driver_version), version),
    );
    let memory_total = memory_capacity(gpu);
    let capacity = BTreeMap::from([
        (
            MEMORY.to_string(),
            DeviceCapacity {
                value: bytes_quantity(memory_total),
                request_policy: Some(CapacityRequestPolicy {
                    default: Some(bytes_quantity(memory_total)),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: bytes_quantity(MEMORY_STEP),
                        max: Some(bytes_quantity(memory_total)),
                        step: Some(bytes_quantity(MEMORY_STEP)),
                    }),
                    valid_values: None,
                }),
            },
        ),
        (
            COMPUTE.to_string(),
            DeviceCapacity {
                value: Quantity(COMPUTE_TOTAL_PERCENT.to_string()),
                request_policy: Some(CapacityRequestPolicy {
                    default: Some(Quantity(COMPUTE_TOTAL_PERCENT.to_string())),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: Quantity("1".into()),
                        max: Some(Quantity(COMPUTE_TOTAL_PERCENT.to_string())),
                        step: Some(Quantity("1".into())),
                    }),
                    valid_values: None,
                }),
            },
        ),
    ]);
    Device {
        name: device_name(&gpu.uuid),
        attributes: Some(attributes),
        capacity: Some(capacity),
        allow_multiple_allocations: Some(true),
        ..Device::default()
    }
}

/// The slice of `node` listing `gpus`, at pool generation `generation`. An empty list is a
/// slice without devices (the pool exists, with nothing to allocate).
pub fn resource_slice<'a>(
    node: &str,
    gpus: impl IntoIterator<Item = &'a Gpu>,
    generation: i64,
) -> ResourceSlice {
    let devices: Vec<Device> = gpus.into_iter().map(device).collect();
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(node)),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "gpuslice".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        spec: ResourceSliceSpec {
            driver: DRIVER.to_string(),
            node_name: Some(node.to_string()),
            pool: ResourcePool {
                name: node.to_string(),
                generation,
                resource_slice_count: 1,
            },
            devices: Some(devices),
            ..ResourceSliceSpec::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::gpus::tests::gpu;
    use super::*;

    #[test]
    fn a_gpu_is_published_with_its_attributes_and_shareable_capacities() {
        let g = gpu(3, 80 << 30);
        let slice = resource_slice("node-a", [&g], 7);
        assert_eq!(slice.metadata.name.as_deref(), Some("node-a-gpuslice.dev"));
        let spec = &slice.spec;
        assert_eq!(spec.driver, "gpuslice.dev");
        assert_eq!(spec.node_name.as_deref(), Some("node-a"));
        assert_eq!(spec.pool.name, "node-a");
        assert_eq!(spec.pool.generation, 7);
        assert_eq!(spec.pool.resource_slice_count, 1);
        let device = &spec.devices.as_ref().unwrap()[0];
        assert_eq!(device.name, "gpu-fa4ec0da-0000-4000-8000-000000000003");
        assert_eq!(device.allow_multiple_allocations, Some(true));
        let attributes = device.attributes.as_ref().unwrap();
        assert_eq!(
            attributes["uuid"].string.as_deref(),
            Some("GPU-fa4ec0da-0000-4000-8000-000000000003")
        );
        assert_eq!(
            attributes["productName"].string.as_deref(),
            Some("NVIDIA H100 80GB HBM3")
        );
        assert_eq!(attributes["index"].int, Some(3));
        assert_eq!(
            attributes["cudaComputeCapability"].version.as_deref(),
            Some("9.0.0")
        );
        assert_eq!(
            attributes["driverVersion"].version.as_deref(),
            Some("580.65.6")
        );
        let capacity = device.capacity.as_ref().unwrap();
        let memory = &capacity["memory"];
        assert_eq!(memory.value.0, "80Gi");
        let policy = memory.request_policy.as_ref().unwrap();
        assert_eq!(policy.default.as_ref().unwrap().0, "80Gi", "a whole GPU");
        let range = policy.valid_range.as_ref().unwrap();
        assert_eq!(range.min.0, "256Mi");
        assert_eq!(range.step.as_ref().unwrap().0, "256Mi");
        assert_eq!(range.max.as_ref().unwrap().0, "80Gi");
        let compute = &capacity["compute"];
        assert_eq!(compute.value.0, "100");
        let range = compute
            .request_policy
            .as_ref()
            .unwrap()
            .valid_range
            .as_ref()
            .unwrap();
        assert_eq!(
            (
                range.min.0.as_str(),
                range.step.as_ref().unwrap().0.as_str()
            ),
            ("1", "1")
        );
    }

    #[test]
    fn device_names_round_trip_to_their_gpu_and_nothing_else_parses() {
        let g = gpu(1, 1 << 30);
        assert_eq!(gpu_of_device(&device_name(&g.uuid)), Some(g.uuid));
        for other in [
            "gpu-0",
            "GPU-fa4ec0da-0000-4000-8000-000000000001",
            "gpu-FA4EC0DA-0000-4000-8000-000000000001",
            "",
        ] {
            assert_eq!(gpu_of_device(other), None, "{other}");
        }
    }

    #[test]
    fn quantities_and_versions_are_written_as_kubernetes_reads_them() {
        assert_eq!(bytes_quantity(80 << 30).0, "80Gi");
        assert_eq!(bytes_quantity(1536 << 20).0, "1536Mi");
        assert_eq!(bytes_quantity(1000).0, "1000");
        assert_eq!(bytes_quantity(0).0, "0");
        assert_eq!(semantic_version("580.65.06").as_deref(), Some("580.65.6"));
        assert_eq!(semantic_version("9.0").as_deref(), Some("9.0.0"));
        assert_eq!(semantic_version("570.x"), None);
        assert_eq!(semantic_version("1.2.3.4"), None);
    }
}
